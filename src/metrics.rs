//! Every Prometheus metric of the service, in one place. Names carry the `strata_` prefix
//! and their unit; label values come from fixed enums, never from network input.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub instances_stored: IntCounter,
    pub bytes_stored: IntCounter,
    pub duplicates: IntCounter,
    /// Objects stored under another PatientID than their study was filed under.
    pub patient_conflicts: IntCounter,
    pub rejections: IntCounterVec,
    pub store_seconds: Histogram,
    pub commit_batch_size: Histogram,
    pub commit_seconds: HistogramVec,
    pub active_associations: IntGauge,
    pub associations_rejected: IntCounterVec,
    /// TLS handshakes that did not complete, by service (`http`, `dicom`).
    pub tls_handshake_failures: IntCounterVec,
    pub hot_free_bytes: IntGauge,
    /// HTTP requests by route template (e.g. `/dicom-web/studies/{study}`), method and
    /// status code.
    pub http_requests: IntCounterVec,
    /// HTTP latency by route template, from the request to the response's head (a
    /// streamed body may go on after it).
    pub http_seconds: HistogramVec,
    pub tier: TierMetrics,
}

/// The tiering worker's and the cold reader's metrics.
#[derive(Clone)]
pub struct TierMetrics {
    /// Objects per tier (`hot`: with a hot file; `cold_only`), as of the last pass.
    pub objects: IntGaugeVec,
    /// Bytes per tier (`hot`, `cold_only`: Part-10 bytes; `packs`: bytes in the bucket).
    pub bytes: IntGaugeVec,
    pub packs: IntGauge,
    pub queue_length: IntGauge,
    pub queue_due: IntGauge,
    pub uploads: IntCounter,
    pub uploaded_bytes: IntCounter,
    pub evicted_objects: IntCounter,
    /// Failed passes (`transient`: the cold tier failed) and studies not moved (`study`).
    pub failures: IntCounterVec,
    pub recall_seconds: Histogram,
    /// Objects fetched, checked, from another node's hot disk (docs/scale-out.md).
    pub peer_fetches: IntCounter,
    /// Objects this node received that have no replica in the cold tier yet, and how
    /// long the oldest of them has waited (seconds; 0 when none wait).
    pub replication_pending: IntGauge,
    pub replication_lag_seconds: prometheus::Gauge,
    /// Replicas written, read back and recorded.
    pub replicated_objects: IntCounter,
    pub scrub_objects: IntCounter,
    pub scrub_bytes: IntCounter,
    pub scrub_failures: IntCounter,
    /// Fraction of the current scrub cycle done.
    pub scrub_progress: prometheus::Gauge,
}

impl TierMetrics {
    fn new(registry: &Registry) -> Self {
        let gauge_vec = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["tier"]).expect("metric")
        };
        let t = TierMetrics {
            objects: gauge_vec(
                "strata_tier_objects",
                "Objects per tier, as of the last pass",
            ),
            bytes: gauge_vec("strata_tier_bytes", "Bytes per tier, as of the last pass"),
            packs: IntGauge::new("strata_tier_packs", "Study packs in the cold tier")
                .expect("metric"),
            queue_length: IntGauge::new("strata_tier_queue_length", "Studies in the access queue")
                .expect("metric"),
            queue_due: IntGauge::new(
                "strata_tier_queue_due",
                "Studies in the access queue that are due for aging",
            )
            .expect("metric"),
            uploads: IntCounter::new(
                "strata_tier_pack_uploads_total",
                "Packs uploaded, verified and recorded",
            )
            .expect("metric"),
            uploaded_bytes: IntCounter::new(
                "strata_tier_uploaded_bytes_total",
                "Bytes of packs uploaded, verified and recorded",
            )
            .expect("metric"),
            evicted_objects: IntCounter::new(
                "strata_tier_evicted_objects_total",
                "Hot copies deleted after their cold copy was recorded",
            )
            .expect("metric"),
            failures: IntCounterVec::new(
                Opts::new(
                    "strata_tier_failures_total",
                    "Tiering failures: transient (cold tier failing) or study (not moved)",
                ),
                &["kind"],
            )
            .expect("metric"),
            recall_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "strata_tier_recall_duration_seconds",
                    "Time to read one object or one pack span from the cold tier",
                )
                .buckets(vec![
                    0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0,
                ]),
            )
            .expect("metric"),
            peer_fetches: IntCounter::new(
                "strata_peer_fetches_total",
                "Objects fetched and checked from another node's hot disk",
            )
            .expect("metric"),
            replication_pending: IntGauge::new(
                "strata_replication_pending",
                "Objects received by this node with no replica in the cold tier yet",
            )
            .expect("metric"),
            replication_lag_seconds: prometheus::Gauge::new(
                "strata_replication_lag_seconds",
                "How long the oldest object without a replica has waited (0: none waits)",
            )
            .expect("metric"),
            replicated_objects: IntCounter::new(
                "strata_replicated_objects_total",
                "Replicas of objects written to the cold tier, read back and recorded",
            )
            .expect("metric"),
            scrub_objects: IntCounter::new(
                "strata_scrub_objects_total",
                "Objects re-hashed by the scrubber",
            )
            .expect("metric"),
            scrub_bytes: IntCounter::new(
                "strata_scrub_bytes_total",
                "Bytes re-hashed by the scrubber",
            )
            .expect("metric"),
            scrub_failures: IntCounter::new(
                "strata_scrub_failures_total",
                "Objects whose hot or cold copy failed the scrubber's check",
            )
            .expect("metric"),
            scrub_progress: prometheus::Gauge::new(
                "strata_scrub_cycle_progress",
                "Fraction of the current scrub cycle done",
            )
            .expect("metric"),
        };
        for c in [
            Box::new(t.scrub_objects.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(t.scrub_bytes.clone()),
            Box::new(t.scrub_failures.clone()),
            Box::new(t.scrub_progress.clone()),
            Box::new(t.objects.clone()),
            Box::new(t.bytes.clone()),
            Box::new(t.packs.clone()),
            Box::new(t.queue_length.clone()),
            Box::new(t.queue_due.clone()),
            Box::new(t.uploads.clone()),
            Box::new(t.uploaded_bytes.clone()),
            Box::new(t.evicted_objects.clone()),
            Box::new(t.failures.clone()),
            Box::new(t.recall_seconds.clone()),
            Box::new(t.peer_fetches.clone()),
            Box::new(t.replication_pending.clone()),
            Box::new(t.replication_lag_seconds.clone()),
            Box::new(t.replicated_objects.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        t
    }
}

/// Why a store was refused (the `reason` label of `strata_store_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    OutOfSpace,
    DatasetMismatch,
    Unparseable,
    SopClassNotSupported,
    ConflictingVersion,
    InternalError,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfSpace => "out_of_space",
            RejectReason::DatasetMismatch => "dataset_mismatch",
            RejectReason::Unparseable => "unparseable",
            RejectReason::SopClassNotSupported => "sop_class_not_supported",
            RejectReason::ConflictingVersion => "conflicting_version",
            RejectReason::InternalError => "internal_error",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_registry(Registry::new())
    }

    /// The metrics of the node `node_id`: every series carries the label `node`, so that
    /// the nodes sharing one index can be told apart in one Prometheus.
    pub fn for_node(node_id: &str) -> Self {
        let labels = std::collections::HashMap::from([("node".to_string(), node_id.to_string())]);
        Self::with_registry(Registry::new_custom(None, Some(labels)).expect("the node label"))
    }

    fn with_registry(registry: Registry) -> Self {
        let instances_stored = IntCounter::new(
            "strata_instances_stored_total",
            "Objects newly stored (instances and new versions)",
        )
        .expect("metric");
        let bytes_stored =
            IntCounter::new("strata_stored_bytes_total", "Bytes of newly stored objects")
                .expect("metric");
        let duplicates = IntCounter::new(
            "strata_duplicate_stores_total",
            "Stores of bytes already held (acknowledged, stored once)",
        )
        .expect("metric");
        let patient_conflicts = IntCounter::new(
            "strata_patient_conflicts_total",
            "Objects stored under another PatientID than their study was filed under \
             (kept under their own identity, logged and audited)",
        )
        .expect("metric");
        let rejections = IntCounterVec::new(
            Opts::new("strata_store_rejections_total", "Stores refused, by reason"),
            &["reason"],
        )
        .expect("metric");
        let store_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "strata_cstore_duration_seconds",
                "C-STORE latency from the command's arrival to the response",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )
        .expect("metric");
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "strata_commit_batch_size",
                "Objects made durable per group commit",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("metric");
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "strata_commit_phase_seconds",
                "Time per phase of a store. Per instance: receive (C-STORE-RQ to its last data \
                 fragment), admit (tmp file finished, header checked, metadata record made, \
                 handed to the group committer), answer (from then until durable, indexed \
                 and audited). Per group commit: files (journal append + fdatasync, or sync + \
                 rename in place), place (journaled files renamed once written), index \
                 (batch)",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
            &["phase"],
        )
        .expect("metric");
        let active_associations = IntGauge::new(
            "strata_active_associations",
            "DICOM associations currently open",
        )
        .expect("metric");
        let associations_rejected = IntCounterVec::new(
            Opts::new(
                "strata_associations_rejected_total",
                "Associations refused, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "strata_tls_handshake_failures_total",
                "TLS handshakes refused or abandoned, by service",
            ),
            &["service"],
        )
        .expect("metric");
        let hot_free_bytes = IntGauge::new(
            "strata_hot_free_bytes",
            "Free bytes on the hot tier's filesystem",
        )
        .expect("metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "strata_http_requests_total",
                "HTTP requests by route template, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "strata_http_request_duration_seconds",
                "HTTP latency by route template, to the response head",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("metric");
        for c in [
            Box::new(instances_stored.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests.clone()),
            Box::new(http_seconds.clone()),
            Box::new(bytes_stored.clone()),
            Box::new(duplicates.clone()),
            Box::new(patient_conflicts.clone()),
            Box::new(rejections.clone()),
            Box::new(store_seconds.clone()),
            Box::new(commit_batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(active_associations.clone()),
            Box::new(associations_rejected.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(hot_free_bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            instances_stored,
            bytes_stored,
            duplicates,
            patient_conflicts,
            rejections,
            store_seconds,
            commit_batch_size,
            commit_seconds,
            active_associations,
            associations_rejected,
            tls_handshake_failures,
            hot_free_bytes,
            http_requests,
            http_seconds,
            tier: TierMetrics::new(&registry),
            registry,
        }
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejections.with_label_values(&[reason.as_str()]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
