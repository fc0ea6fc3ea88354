//! Every Prometheus metric of the service, in one place. Names carry the `strata_` prefix
//! and their unit; label values come from fixed enums, never from network input.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub instances_stored: IntCounter,
    pub bytes_stored: IntCounter,
    pub duplicates: IntCounter,
    pub rejections: IntCounterVec,
    pub store_seconds: Histogram,
    pub commit_batch_size: Histogram,
    pub commit_seconds: HistogramVec,
    pub active_associations: IntGauge,
    pub associations_rejected: IntCounterVec,
    pub hot_free_bytes: IntGauge,
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
        let registry = Registry::new();
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
                "Time per group commit phase: files (sync + rename) and index (synced batch)",
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
        let hot_free_bytes = IntGauge::new(
            "strata_hot_free_bytes",
            "Free bytes on the hot tier's filesystem",
        )
        .expect("metric");
        for c in [
            Box::new(instances_stored.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes_stored.clone()),
            Box::new(duplicates.clone()),
            Box::new(rejections.clone()),
            Box::new(store_seconds.clone()),
            Box::new(commit_batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(active_associations.clone()),
            Box::new(associations_rejected.clone()),
            Box::new(hot_free_bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            instances_stored,
            bytes_stored,
            duplicates,
            rejections,
            store_seconds,
            commit_batch_size,
            commit_seconds,
            active_associations,
            associations_rejected,
            hot_free_bytes,
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
