//! The tiering policy: one pass ([`Tiering::run_pass`]) and the background loop that runs
//! passes in `strata serve` ([`run_worker`]).
//!
//! A pass:
//! 1. **Age**: takes the access queue (studies ordered by last access, persisted in the
//!    index) up to `now - hot_max_age`; an entry older than its study's last access is
//!    stale and dropped; a due study is moved to cold and its entry removed only once
//!    the move completed. So nothing is lost or repeated across restarts.
//! 2. **Watermarks**: while the hot filesystem is fuller than the high watermark, moves
//!    the least recently accessed studies to cold (same copy-verify-record-delete path)
//!    until it is below the low watermark.
//! 3. **Archive class**: packs older than `archive_after` move to the archive storage
//!    class in place (S3 only).
//! 4. **Orphan uploads**: packs in the cold tier that no index record names and that are
//!    older than `orphan_grace` are deleted.
//!
//! A failing cold tier stops the pass with a transient error; the loop backs off
//! (doubling up to `max_backoff`) and tries again. Ingest never waits on any of this.

use super::mover::MoveReport;
use super::{blocking, Tiering, TieringError};
use crate::index::rocks::unix_ms_now;
use crate::index::Tier;
use std::collections::HashSet;
use std::sync::Arc;
use strata_tiers::cold::is_archive_class;
use strata_tiers::BlobStore;
use tokio::sync::{watch, Notify};

/// What one pass did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PassReport {
    pub moved: Vec<MoveReport>,
    pub stale_entries: usize,
    pub packs_archived: usize,
    pub orphans_deleted: usize,
    /// Multipart uploads left incomplete (a crash, or a failed complete and abort)
    /// aborted after `orphan_grace`.
    #[serde(default)]
    pub uploads_aborted: usize,
    /// Studies that could not be moved, with the reason (they stay queued).
    pub failed: Vec<(String, String)>,
    /// Due studies another node was moving (it held their lease).
    #[serde(default)]
    pub leased_elsewhere: usize,
}

/// Where the tiers stand (`strata tier status`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TierStatus {
    pub hot_objects: u64,
    pub hot_bytes: u64,
    /// Objects with only cold copies.
    pub cold_only_objects: u64,
    pub cold_only_bytes: u64,
    /// Objects with a cold copy (hot or not).
    pub objects_with_cold_copy: u64,
    pub studies_hot: u64,
    pub studies_cold: u64,
    /// Studies with objects in both tiers.
    pub studies_mixed: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub packs_by_storage_class: std::collections::BTreeMap<String, u64>,
    pub queue_length: u64,
    /// Queue entries whose study is due for aging now.
    pub queue_due: u64,
    /// When the longest-waiting due entry became due (ms since the epoch).
    pub oldest_due_since_ms: Option<u64>,
    pub hot_fs_used_percent: f64,
    pub cold_url: String,
    /// `ok`, or what is wrong with the cold tier (its preflight: bucket, credentials, a
    /// test object written, read and deleted).
    #[serde(default)]
    pub cold_check: String,
    /// Multipart uploads begun and never completed nor aborted (they cost storage and
    /// hold no pack; a policy pass aborts them after `orphan_grace`).
    #[serde(default)]
    pub incomplete_uploads: u64,
}

impl Tiering {
    fn hot_used_percent_blocking(&self) -> Result<f64, TieringError> {
        let (free, total) = self.hot.space_blocking()?;
        Ok(if total == 0 {
            0.0
        } else {
            100.0 * (total - free.min(total)) as f64 / total as f64
        })
    }

    /// One policy pass now, orphan collection included (`strata tier run`). A transient
    /// cold-tier failure ends it with an error.
    pub async fn run_pass(&self) -> Result<PassReport, TieringError> {
        self.run_pass_with(true).await
    }

    /// One policy pass; `orphans_now` or, in the background, once the last orphan scan is
    /// older than `[tiering] orphan_scan_interval`: that scan LISTs the whole bucket and
    /// its multipart uploads, which costs requests an idle archive should not pay every
    /// `scan_interval`.
    pub async fn run_pass_with(&self, orphans_now: bool) -> Result<PassReport, TieringError> {
        let _busy = self.busy.lock().await;
        let mut report = PassReport::default();
        let now = unix_ms_now();
        let max_age = self.config.tiering.hot_max_age.as_millis() as u64;
        let mut handled: HashSet<String> = HashSet::new();

        // 1. age
        let index = self.index.clone();
        let due = blocking(move || Ok(index.accessed_before(now.saturating_sub(max_age), 10_000)?))
            .await?;
        for (at, study) in due {
            self.age_entry(at, &study, &mut report, &mut handled)
                .await?;
        }

        // 2. watermarks
        let t = &self.config.tiering;
        let this = self.clone();
        if blocking(move || this.hot_used_percent_blocking()).await?
            > t.hot_high_watermark_percent as f64
        {
            let index = self.index.clone();
            let oldest = blocking(move || Ok(index.accessed_before(u64::MAX, 10_000)?)).await?;
            for (at, study) in oldest {
                let this = self.clone();
                if blocking(move || this.hot_used_percent_blocking()).await?
                    <= t.hot_low_watermark_percent as f64
                {
                    break;
                }
                tracing::info!(study = %study, "hot disk above the high watermark: moving early");
                self.age_entry(at, &study, &mut report, &mut handled)
                    .await?;
            }
        }

        // 3. archive class: packs past `archive_after`, and packs whose move to an
        // archive class [cold] storage_class was cut short by a crash
        if self.cold.supports_storage_classes() {
            let archive_before = (!t.archive_after.is_zero())
                .then(|| now.saturating_sub(t.archive_after.as_millis() as u64));
            let index = self.index.clone();
            let packs = blocking(move || Ok(index.packs()?)).await?;
            for (id, pack) in packs {
                let target = if archive_before.is_some_and(|before| pack.created_ms <= before) {
                    &t.archive_storage_class
                } else {
                    &self.config.cold.storage_class
                };
                // only ever towards an archive class: an archived pack cannot be copied
                if is_archive_class(target) && !is_archive_class(&pack.storage_class) {
                    self.set_pack_class(&id, target).await?;
                    report.packs_archived += 1;
                }
            }
        }

        // 4. orphan uploads, not every pass
        let last = self
            .last_orphan_scan_ms
            .load(std::sync::atomic::Ordering::Acquire);
        let every = self.config.tiering.orphan_scan_interval.as_millis() as u64;
        if orphans_now || last == 0 || now.saturating_sub(last) >= every {
            // one node scans the bucket at a time; another scans on its next turn
            let lease = match self.take_lease("orphans").await {
                Ok(lease) => Some(lease),
                Err(TieringError::LeasedElsewhere(_)) => None,
                Err(e) => return Err(e),
            };
            if lease.is_some() {
                report.orphans_deleted =
                    self.collect_orphans(now).await? + self.collect_orphan_replicas(now).await?;
                report.uploads_aborted = self.abort_stale_uploads(now).await?;
            }
            self.last_orphan_scan_ms
                .store(now, std::sync::atomic::Ordering::Release);
        }
        Ok(report)
    }

    async fn age_entry(
        &self,
        at: u64,
        study: &str,
        report: &mut PassReport,
        handled: &mut HashSet<String>,
    ) -> Result<(), TieringError> {
        if handled.contains(study) {
            // dealt with earlier in this pass (moved, or failed and left queued)
            return Ok(());
        }
        let index = self.index.clone();
        let uid = study.to_string();
        let last = blocking(move || Ok(index.last_access(&uid)?)).await?;
        if last.is_some_and(|last| last > at) {
            let index = self.index.clone();
            let uid = study.to_string();
            blocking(move || Ok(index.dequeue(at, &uid)?)).await?;
            report.stale_entries += 1;
            return Ok(());
        }
        let outcome = self.move_to_cold(study).await;
        if let Err(TieringError::LeasedElsewhere(_)) = &outcome {
            // another node is moving it now; it stays queued for whoever finishes
            handled.insert(study.to_string());
            report.leased_elsewhere += 1;
            return Ok(());
        }
        if !matches!(&outcome, Ok(m) if m.packs_recorded + m.objects_evicted == 0) {
            self.audit_move(
                crate::audit::Actor::system("tiering"),
                study,
                "aged to cold",
                &outcome,
            )
            .await;
        }
        if !matches!(&outcome, Err(e) if e.is_transient()) {
            handled.insert(study.to_string());
        }
        match outcome {
            Ok(moved) => {
                let held_elsewhere = moved.hot_on_other_nodes;
                if moved.packs_recorded + moved.objects_evicted > 0 {
                    tracing::info!(
                        study = %study,
                        packs = moved.packs_recorded,
                        objects = moved.objects_packed,
                        bytes = moved.bytes_uploaded,
                        evicted = moved.objects_evicted,
                        "study moved to cold"
                    );
                    report.moved.push(moved);
                }
                if held_elsewhere == 0 {
                    let index = self.index.clone();
                    let uid = study.to_string();
                    blocking(move || Ok(index.dequeue(at, &uid)?)).await?;
                }
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(TieringError::UnknownStudy(_)) => {
                let index = self.index.clone();
                let uid = study.to_string();
                blocking(move || Ok(index.dequeue(at, &uid)?)).await?;
                Ok(())
            }
            Err(e) => {
                tracing::error!(study = %study, error = %e, "study could not be moved to cold; it stays hot and queued");
                report.failed.push((study.to_string(), e.to_string()));
                Ok(())
            }
        }
    }

    /// Deletes cold packs that no index record names, once older than the grace period.
    /// Aborts multipart uploads under the cold tier's prefix begun more than
    /// `orphan_grace` ago and never completed (no pack can be in one: a pack exists only
    /// once its upload completed, was read back and recorded). Returns how many.
    pub async fn abort_stale_uploads(&self, now_ms: u64) -> Result<usize, TieringError> {
        let grace = self.config.tiering.orphan_grace.as_millis() as i64;
        let mut aborted = 0;
        for (key, upload_id, initiated_ms) in self.cold.incomplete_uploads().await? {
            if (now_ms as i64) - initiated_ms < grace {
                continue;
            }
            tracing::warn!(key, upload_id, "aborting an incomplete multipart upload");
            self.cold.abort_upload(&key, &upload_id).await?;
            aborted += 1;
        }
        Ok(aborted)
    }

    pub async fn collect_orphans(&self, now_ms: u64) -> Result<usize, TieringError> {
        let grace = self.config.tiering.orphan_grace.as_millis() as i64;
        let listed = self.cold.list_detailed().await?;
        let index = self.index.clone();
        let candidates: Vec<_> = listed
            .into_iter()
            .filter(|(_, _, modified)| (now_ms as i64) - modified >= grace)
            .collect();
        let unrecorded = blocking(move || {
            let mut out = Vec::new();
            for (id, size, _) in candidates {
                if index.pack(&id)?.is_none() {
                    out.push((id, size));
                }
            }
            Ok(out)
        })
        .await?;
        let mut deleted = 0;
        for (id, size) in unrecorded {
            // An unrecorded pack may still hold the only copy of something (a pack that
            // `reindex` could not read, say): delete it only when every member has a hot
            // copy or a copy in a recorded pack.
            let manifest = match self.read_manifest(&id).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(pack = %id, error = %e, "unrecorded pack kept: its manifest cannot be read");
                    continue;
                }
            };
            let (index, pack_hex, hot) = (self.index.clone(), id.to_hex(), self.hot.clone());
            let safe = blocking(move || {
                let tombstones = index.tombstones()?;
                for m in &manifest.members {
                    let Some(member) = strata_tiers::ObjectId::from_hex(&m.blake3) else {
                        return Ok(false);
                    };
                    if let Some(study) = index.deleted_object(&member)? {
                        // its study was deleted on purpose, and this pack with it (a
                        // deletion to finish); a pack the deletion did not name holds
                        // the object stored again since: not an orphan
                        let named = tombstones
                            .iter()
                            .any(|t| t.study_uid == study && t.packs.contains(&pack_hex));
                        if named {
                            continue;
                        }
                        return Ok(false);
                    }
                    let Some(record) = index.object(&member)? else {
                        return Ok(false);
                    };
                    let hot_ok = record.tier == Tier::Hot
                        && hot
                            .rehash_blocking(&member)
                            .is_ok_and(|(actual, _)| actual == member);
                    let elsewhere = hot_ok || record.cold.iter().any(|c| c.pack != pack_hex);
                    if !elsewhere {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await?;
            if !safe {
                tracing::warn!(pack = %id, "unrecorded pack kept: it holds objects with no other copy (run `strata reindex`)");
                continue;
            }
            tracing::warn!(pack = %id, size, "deleting an unrecorded upload (orphan pack)");
            self.cold.delete(&id).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Records a tier move in the audit log.
    pub async fn audit_move(
        &self,
        actor: crate::audit::Actor,
        study: &str,
        why: &str,
        outcome: &Result<MoveReport, TieringError>,
    ) {
        if let Some(log) = &self.audit {
            let outcome = match outcome {
                Ok(m) => format!(
                    "{why}: {} packs, {} objects packed, {} evicted, {} recalled",
                    m.packs_recorded, m.objects_packed, m.objects_evicted, m.objects_recalled
                ),
                Err(e) => format!("{why}: failed: {e}"),
            };
            log.record_async(vec![crate::audit::Event {
                actor,
                action: "tier_move",
                uids: vec![study.to_string()],
                outcome,
            }])
            .await;
        }
    }

    /// Sets the per-tier gauges from the index's running totals (no scan: an idle
    /// archive of any size costs a few reads per pass).
    pub async fn publish_status(&self) {
        let t = self.clone();
        match tokio::task::spawn_blocking(move || t.gauges_blocking()).await {
            Ok(Ok(status)) => self.publish(&status),
            Ok(Err(e)) => tracing::warn!(error = %e, "tier status for metrics failed"),
            Err(e) => tracing::warn!(error = %e, "tier status task failed"),
        }
    }

    /// Sets the per-tier gauges from a status.
    fn publish(&self, s: &TierStatus) {
        let Some(m) = &self.metrics else { return };
        m.objects
            .with_label_values(&["hot"])
            .set(s.hot_objects as i64);
        m.objects
            .with_label_values(&["cold_only"])
            .set(s.cold_only_objects as i64);
        m.bytes.with_label_values(&["hot"]).set(s.hot_bytes as i64);
        m.bytes
            .with_label_values(&["cold_only"])
            .set(s.cold_only_bytes as i64);
        m.bytes
            .with_label_values(&["packs"])
            .set(s.pack_bytes as i64);
        m.packs.set(s.packs as i64);
        m.queue_length.set(s.queue_length as i64);
        m.queue_due.set(s.queue_due as i64);
    }

    /// Reads a pack's manifest: the first tar header, then the manifest member (two
    /// ranged reads).
    pub async fn read_manifest(
        &self,
        pack: &strata_tiers::ObjectId,
    ) -> Result<super::pack::Manifest, TieringError> {
        let header = self.cold.read_range(pack, 0..512).await?;
        let (name, size) = super::pack::parse_tar_header(&header)?
            .ok_or_else(|| TieringError::Other("empty pack".into()))?;
        if name != "manifest.json" {
            return Err(TieringError::Other(format!(
                "first member of pack {pack} is {name:?}"
            )));
        }
        let json = self.cold.read_range(pack, 512..512 + size).await?;
        Ok(super::pack::Manifest::parse(&json)?)
    }

    /// The gauges' figures without a scan (blocking): per-tier objects and bytes and the
    /// packs from the index's running totals, the queue length from them too, and the
    /// due entries from the head of the access queue (only those past `hot_max_age`).
    /// `studies_*` and `packs_by_storage_class` stay zero: [`Tiering::status_blocking`]
    /// counts those.
    pub fn gauges_blocking(&self) -> Result<TierStatus, TieringError> {
        let t = self.index.tier_totals()?;
        let now = unix_ms_now();
        let max_age = self.config.tiering.hot_max_age.as_millis() as u64;
        let due = self
            .index
            .accessed_before(now.saturating_sub(max_age).saturating_add(1), usize::MAX)?;
        Ok(TierStatus {
            cold_url: self.cold.describe().to_string(),
            hot_objects: t.hot_objects,
            hot_bytes: t.hot_bytes,
            cold_only_objects: t.cold_only_objects,
            cold_only_bytes: t.cold_only_bytes,
            objects_with_cold_copy: t.objects_with_cold_copy,
            packs: t.packs,
            pack_bytes: t.pack_bytes,
            queue_length: t.queued_studies,
            queue_due: due.len() as u64,
            oldest_due_since_ms: due.first().map(|(at, _)| at + max_age),
            hot_fs_used_percent: self.hot_used_percent_blocking()?,
            ..Default::default()
        })
    }

    /// Everything [`Tiering::gauges_blocking`] says, plus the studies per tier and the
    /// packs per storage class, which take a scan of the objects and packs (blocking;
    /// `strata tier status`, not the metrics).
    pub fn status_blocking(&self) -> Result<TierStatus, TieringError> {
        let mut s = self.gauges_blocking()?;
        let mut studies: std::collections::HashMap<String, (bool, bool)> = Default::default();
        self.index.for_each_object(&mut |_, r| {
            let entry = studies.entry(r.study_uid.clone()).or_default();
            match r.tier {
                Tier::Hot => entry.0 = true,
                Tier::Cold => entry.1 = true,
            }
            true
        })?;
        for (hot, cold) in studies.values() {
            match (hot, cold) {
                (true, false) => s.studies_hot += 1,
                (false, true) => s.studies_cold += 1,
                _ => s.studies_mixed += 1,
            }
        }
        for (_, p) in self.index.packs()? {
            *s.packs_by_storage_class.entry(p.storage_class).or_default() += 1;
        }
        Ok(s)
    }
}

/// Forces one study to `to` (`cold`, `hot` or `archive`) now; the caller holds
/// [`Tiering::busy`] and writes the audit record ([`Tiering::audit_move`]).
pub async fn force_move_locked(
    tiering: &Tiering,
    study_uid: &str,
    to: &str,
) -> Result<MoveReport, TieringError> {
    match to {
        "cold" => tiering.move_to_cold(study_uid).await,
        "hot" => tiering.move_to_hot(study_uid).await,
        "archive" => {
            let class = tiering.config.tiering.archive_storage_class.clone();
            let mut report = tiering.move_to_cold(study_uid).await?;
            report.packs_archived = tiering.move_to_archive_class(study_uid, &class).await?;
            Ok(report)
        }
        other => Err(TieringError::Other(format!(
            "unknown tier {other:?}: expected cold, hot or archive"
        ))),
    }
}

/// The background loop of `strata serve`: a pass every `scan_interval`, or at once when
/// `trigger` is notified, with backoff while the cold tier fails; stops when `stop`
/// turns true.
pub async fn run_worker(tiering: Tiering, trigger: Arc<Notify>, stop: watch::Receiver<bool>) {
    // the per-tier gauges from the first second, whatever the first pass meets
    tiering.publish_status().await;
    let t = &tiering.config.tiering;
    super::run_passes(
        "tiering",
        t.scan_interval,
        t.max_backoff,
        trigger,
        stop,
        || async {
            let outcome = tiering.run_pass_with(false).await;
            if let Some(m) = &tiering.metrics {
                match &outcome {
                    Ok(report) => m
                        .failures
                        .with_label_values(&["study"])
                        .inc_by(report.failed.len() as u64),
                    Err(_) => m.failures.with_label_values(&["transient"]).inc(),
                }
            }
            let report = outcome?;
            for (study, reason) in &report.failed {
                tracing::warn!(study = %study, reason = %reason, "tiering: study not moved");
            }
            tiering.publish_status().await;
            Ok(())
        },
    )
    .await
}
