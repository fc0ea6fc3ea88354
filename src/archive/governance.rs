//! Governance: deleting studies, legal holds and the retention rule (DESIGN promises 3
//! and 8: nothing is deleted except by an explicit, audited request or the retention
//! policy).
//!
//! Each use case needs a writable archive — the server's (reached through the admin
//! API while it runs) or a CLI command's own — and holds the tiering lock while it
//! works, so no move of the same study runs meanwhile. Index writes are serialised by
//! the index itself, so stores may go on: an instance stored again after its study was
//! deleted lives again.
//!
//! Holds and tombstones are also appended to the governance log
//! ([`crate::storage::governance_log`]), from which `reindex` restores them.
//!
//! ## Crash consistency of a delete
//! The request is audited (synced) first, then one synced index batch replaces the study
//! by a tombstone (UIDs, object ids, who, why, when), the tombstone is appended (synced)
//! to the governance log, and only then are its hot files and cold packs removed. A crash after the tombstone is finished by the next start (or
//! reindex), never undone; a crash before it leaves the study whole.

use super::principal::Role;
use super::{blocking, Archive, Error, Principal};
use crate::dicom::da;
use crate::dicom::part10::is_valid_uid;
use crate::index::{HoldRecord, IndexError, Tombstone};
use crate::storage::governance_log::GovernanceRecord;
use serde::Serialize;
use strata_tiers::{BlobStore, ObjectId};

type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct DeleteReport {
    pub study_uid: String,
    pub objects: usize,
    pub hot_files_deleted: usize,
    pub packs_deleted: usize,
}

/// Instances of a study that IOCM rejection notes ask to delete ([`RetentionReport`]).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RejectedInstances {
    pub study_uid: String,
    /// `(series, SOP Instance UID)` of each.
    pub instances: Vec<(String, String)>,
    /// The notes and their codes.
    pub why: String,
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct RetentionReport {
    /// (study, StudyDate) of the studies the rule selects.
    pub due: Vec<(String, String)>,
    /// (study, why) of the studies IOCM rejection notes ask to delete: every instance
    /// held rejected as "Incorrect Modality Worklist Entry" (113038) or "Data Retention
    /// Policy Expired" (113039).
    #[serde(default)]
    pub rejected: Vec<(String, String)>,
    /// Studies some of whose instances (not all) IOCM rejection notes ask to delete:
    /// those instances are deleted, the study stays.
    #[serde(default)]
    pub rejected_instances: Vec<RejectedInstances>,
    pub deleted: Vec<String>,
    /// (study, instances deleted) of the partial deletions done.
    #[serde(default)]
    pub instances_deleted: Vec<(String, usize)>,
    /// Selected but under a legal hold: kept.
    pub held: Vec<String>,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// Where the governance log's records are copied in the cold tier: one object per
/// record, `governance/<seq, 20 digits>.json`, holding the record's line.
const COLD_PREFIX: &str = "governance";

impl Archive {
    /// Copies to the cold tier every governance record it does not hold yet, so that
    /// the bucket alone restores holds and tombstones (DESIGN promise 5; `reindex` reads
    /// them back). Returns how many were copied. Called after each governance action
    /// and when the server starts; a failure leaves the records to the next call.
    pub async fn sync_governance(&self) -> Result<usize> {
        let log = self.governance.clone();
        let lines = blocking(move || Ok(log.lines()?)).await?;
        if lines.is_empty() {
            return Ok(0);
        }
        let present: std::collections::HashSet<String> = self
            .cold
            .get_named_under(COLD_PREFIX)
            .await?
            .into_iter()
            .map(|(key, _)| key.rsplit('/').next().unwrap_or("").to_string())
            .collect();
        let mut copied = 0;
        for (seq, line) in lines {
            let name = format!("{seq:020}.json");
            if !present.contains(&name) {
                self.cold
                    .put_named(&format!("{COLD_PREFIX}/{name}"), line.into())
                    .await?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// [`Archive::sync_governance`], logging instead of failing (the action it follows
    /// already took effect and is in the local log).
    pub async fn sync_governance_or_log(&self) {
        if let Err(e) = self.sync_governance().await {
            tracing::warn!(error = %e, "governance records not copied to the cold tier yet");
        }
    }

    /// Deletes a study from every tier, unless it is under a legal hold ([`Error::Held`],
    /// audited as refused). `reason` is kept in the tombstone and the audit log.
    pub async fn delete_study(
        &self,
        principal: &Principal,
        study_uid: &str,
        reason: &str,
    ) -> Result<DeleteReport> {
        self.authorize(principal, Role::Admin, "delete", &[study_uid.to_string()])?;
        self.ingest()?;
        if !is_valid_uid(study_uid) {
            return Err(Error::InvalidRequest(format!(
                "{study_uid:?} is not a valid Study Instance UID"
            )));
        }
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "say why with --reason: it is kept in the tombstone and the audit log".into(),
            ));
        }
        let _busy = self.tiering.busy.lock().await;
        let (this, p, study, why) = (
            self.clone(),
            principal.clone(),
            study_uid.to_string(),
            reason.to_string(),
        );
        let (tombstone, packs) =
            blocking(move || this.tombstone_blocking(&p, &study, &why, None)).await?;
        crate::tiering::failpoint("delete-after-tombstone");
        self.finish_deletion(principal, &tombstone, &packs).await
    }

    /// Deletes some instances `(series, sop)` of a study that lives on — those IHE IOCM
    /// rejection notes ask to delete (`strata retention`) — from every tier, unless the
    /// study is under a legal hold ([`Error::Held`], audited as refused). The study's
    /// cold-only objects are recalled to hot disk first (copy, verify, record: the
    /// study's packs hold the deleted instances too, and go); then, as for a whole
    /// study, the audit record of the request, a partial tombstone in the index and the
    /// governance log, the hot files and packs removed, the `deleted` record and the
    /// audit record of the outcome. The objects kept are hot-only until the tiering
    /// rules age them to cold again, in a new pack. `reason` is kept in the tombstone.
    pub async fn delete_instances(
        &self,
        principal: &Principal,
        study_uid: &str,
        instances: &[(String, String)],
        reason: &str,
    ) -> Result<DeleteReport> {
        self.authorize(principal, Role::Admin, "delete", &[study_uid.to_string()])?;
        self.ingest()?;
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest("a deletion needs a reason".into()));
        }
        let _busy = self.tiering.busy.lock().await;
        let (index, study) = (self.index.clone(), study_uid.to_string());
        let cold_only = blocking(move || {
            for e in index.instances_of_study(&study)? {
                for v in &e.record.versions {
                    let record = ObjectId::from_hex(&v.id)
                        .map(|id| index.object(&id))
                        .transpose()?
                        .flatten();
                    if record.is_some_and(|r| r.tier != crate::index::Tier::Hot) {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })
        .await?;
        if cold_only {
            self.tiering.move_to_hot(study_uid).await?;
        }
        let (this, p, study, why, named) = (
            self.clone(),
            principal.clone(),
            study_uid.to_string(),
            reason.to_string(),
            instances.to_vec(),
        );
        let (tombstone, packs) =
            blocking(move || this.tombstone_blocking(&p, &study, &why, Some(&named))).await?;
        crate::tiering::failpoint("delete-instances-after-tombstone");
        self.finish_deletion(principal, &tombstone, &packs).await
    }

    /// The part of a deletion after its tombstone: the objects' replicas, the hot files
    /// and the packs it names removed, then the `deleted` governance record and the audit record of the
    /// outcome. A crash in it leaves files the start-up recovery removes (their objects
    /// are marked deleted) and packs the tiering worker deletes as orphans.
    async fn finish_deletion(
        &self,
        principal: &Principal,
        tombstone: &Tombstone,
        packs: &[ObjectId],
    ) -> Result<DeleteReport> {
        let study_uid = tombstone.study_uid.as_str();
        let mut report = DeleteReport {
            study_uid: study_uid.to_string(),
            objects: tombstone.objects.len(),
            ..Default::default()
        };
        let ids: Vec<ObjectId> = tombstone
            .objects
            .iter()
            .filter_map(|(_, _, id)| ObjectId::from_hex(id))
            .collect();
        // replicas in the cold tier (nodes that replicate); deleting one that is not
        // there is a no-op
        if self.config.replicates() {
            use strata_tiers::BlobStore;
            let replicas = self.cold.replicas();
            for id in &ids {
                replicas.delete(id).await?;
            }
        }
        let hot = self.hot.clone();
        report.hot_files_deleted = blocking(move || {
            let mut deleted = 0;
            for id in ids {
                let path = hot.path_of(&id);
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &path)(e)),
                }
            }
            Ok(deleted)
        })
        .await?;
        for pack in packs {
            self.cold.delete(pack).await?;
            report.packs_deleted += 1;
        }
        // finished: whatever of it is found later was stored again (reindex reads this)
        let (log, finished) = (
            self.governance.clone(),
            GovernanceRecord::Deleted {
                study_uid: study_uid.to_string(),
                deleted_at_ms: tombstone.deleted_at_ms,
            },
        );
        blocking(move || log.append(finished).map_err(Error::from)).await?;
        let (this, p, study) = (self.clone(), principal.clone(), study_uid.to_string());
        let outcome = format!(
            "done: {}{} objects, {} hot files, {} packs",
            if tombstone.partial {
                "instances of a study that stays: "
            } else {
                ""
            },
            report.objects,
            report.hot_files_deleted,
            report.packs_deleted
        );
        blocking(move || this.audit_synced(&p, "delete", vec![study], outcome)).await?;
        self.sync_governance_or_log().await;
        Ok(report)
    }

    /// The synced part of a delete: the hold check, the audit record of the request and
    /// the tombstone (whose objects and packs the index reads under its write
    /// serialisation, where it also checks the hold again). Returns the tombstone and
    /// the study's packs.
    fn tombstone_blocking(
        &self,
        principal: &Principal,
        study_uid: &str,
        reason: &str,
        instances: Option<&[(String, String)]>,
    ) -> Result<(Tombstone, Vec<ObjectId>)> {
        let index = self.index.as_ref();
        let refuse = |holds: Vec<HoldRecord>| -> Result<(Tombstone, Vec<ObjectId>)> {
            let all = describe_holds(&holds);
            self.audit_synced(
                principal,
                "delete",
                vec![study_uid.into()],
                format!("refused: under legal hold: {all}"),
            )?;
            // (the index refused for a hold lifted again since: still a refusal)
            let first = holds.into_iter().next().unwrap_or(HoldRecord {
                who: String::new(),
                why: "a hold placed and lifted while the delete ran".into(),
                since_ms: 0,
            });
            Err(Error::Held {
                study_uid: study_uid.to_string(),
                who: first.who,
                since: rfc3339(first.since_ms),
                why: first.why,
                holds: all,
            })
        };
        let standing = index.holds(study_uid)?;
        if !standing.is_empty() {
            return refuse(standing);
        }
        let study = index
            .study(study_uid)?
            .ok_or_else(|| Error::NotFound(format!("no study {study_uid} in the archive")))?;
        let packs: Vec<String> = index
            .packs()?
            .into_iter()
            .filter(|(_, p)| p.study_uid == study_uid)
            .map(|(id, _)| id.to_hex())
            .collect();
        let asked = Tombstone {
            study_uid: study_uid.to_string(),
            patient_id: study.patient_id.clone(),
            objects: Vec::new(),
            packs,
            who: principal.name(),
            why: reason.to_string(),
            deleted_at_ms: crate::index::rocks::unix_ms_now(),
            partial: instances.is_some(),
        };
        let what = match instances {
            Some(named) => format!(
                "requested, {} instances ({}): {reason}",
                named.len(),
                named
                    .iter()
                    .map(|(_, sop)| sop.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("requested: {reason}"),
        };
        self.audit_synced(principal, "delete", vec![study_uid.into()], what)?;
        let tombstoned = match instances {
            Some(named) => index.tombstone_instances(&asked, named),
            None => index.tombstone_study(&asked),
        };
        let tombstone = match tombstoned {
            Ok(t) => t,
            // a hold placed since the check above
            Err(IndexError::Held { .. }) => return refuse(index.holds(study_uid)?),
            Err(e) => return Err(e.into()),
        };
        // outside the index too, before any file or pack is removed
        self.governance
            .append(GovernanceRecord::Tombstone(tombstone.clone()))?;
        let packs = tombstone
            .packs
            .iter()
            .filter_map(|p| ObjectId::from_hex(p))
            .collect();
        Ok((tombstone, packs))
    }

    /// Places a legal hold on a study for the matter `reason` — one more hold: a study
    /// may have several, one per matter (placing one for a matter that already has one
    /// is refused) — or, with `release`, lifts one: the hold whose reason is `matter`, or
    /// the only one standing. `reason` is required either way and kept in the
    /// governance and audit logs. Synced; returns the hold placed or lifted.
    ///
    /// Errors: [`Error::NotFound`] for an unknown study or a study without the hold to
    /// lift; [`Error::InvalidRequest`] for an empty reason, a hold already placed for
    /// the matter, or several holds standing and no `matter` naming one.
    pub fn hold_blocking(
        &self,
        principal: &Principal,
        study_uid: &str,
        reason: &str,
        release: bool,
        matter: Option<&str>,
    ) -> Result<HoldRecord> {
        self.authorize(principal, Role::Admin, "hold", &[study_uid.to_string()])?;
        self.ingest()?;
        if self.index.study(study_uid)?.is_none() {
            return Err(Error::NotFound(format!(
                "no study {study_uid} in the archive"
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::InvalidRequest(if release {
                "say why the hold is lifted with --reason: it is kept in the governance and audit logs".into()
            } else {
                "name the matter with --reason: it identifies the hold and is kept in the governance and audit logs".into()
            }));
        }
        let standing = self.index.holds(study_uid)?;
        let now = crate::index::rocks::unix_ms_now();
        let (record, changed, outcome) = if release {
            let chosen: Vec<&HoldRecord> = standing
                .iter()
                .filter(|h| matter.is_none_or(|m| h.why == m))
                .collect();
            let hold = match (chosen.as_slice(), matter) {
                ([one], _) => (*one).clone(),
                ([], None) => {
                    return Err(Error::NotFound(format!(
                        "study {study_uid} is under no legal hold: nothing to lift"
                    )))
                }
                ([], Some(m)) => {
                    return Err(Error::NotFound(format!(
                        "study {study_uid} has no legal hold for {m:?}; its holds: {}",
                        describe_holds(&standing)
                    )))
                }
                (_, _) => {
                    return Err(Error::InvalidRequest(format!(
                        "study {study_uid} is under {} legal holds: {}; say which to lift with --hold \"<its reason>\"",
                        standing.len(),
                        describe_holds(&standing)
                    )))
                }
            };
            let rest: Vec<HoldRecord> = standing.into_iter().filter(|h| *h != hold).collect();
            let record = GovernanceRecord::Release {
                study_uid: study_uid.to_string(),
                matter: Some(hold.why.clone()),
                who: principal.name(),
                why: reason.to_string(),
                at_ms: now,
            };
            let outcome = format!("released {:?}: {reason}", hold.why);
            (record, (hold, rest), outcome)
        } else {
            if let Some(h) = standing.iter().find(|h| h.why == reason) {
                return Err(Error::InvalidRequest(format!(
                    "study {study_uid} is already under a legal hold for {reason:?} (placed by {} at {})",
                    h.who,
                    rfc3339(h.since_ms)
                )));
            }
            let hold = HoldRecord {
                who: principal.name(),
                why: reason.to_string(),
                since_ms: now,
            };
            let all = crate::storage::governance_log::with_hold(&standing, &hold);
            let record = GovernanceRecord::Hold {
                study_uid: study_uid.to_string(),
                hold: hold.clone(),
            };
            (record, (hold, all), format!("placed: {reason}"))
        };
        // outside the index first (promise 5), then the index
        self.governance.append(record)?;
        let (hold, now_standing) = changed;
        self.index.set_holds(study_uid, &now_standing)?;
        self.audit_synced(principal, "hold", vec![study_uid.into()], outcome)?;
        Ok(hold)
    }

    /// Applies the retention rule `age` (`[retention] study_age` of the configuration
    /// the command was run with): deletes the studies whose StudyDate is older,
    /// except those under a legal hold; with `dry_run`, only says which. Studies without
    /// a real StudyDate are never selected. Deleting holds the `retention` lease: while
    /// another node applies retention, this is [`crate::tiering::TieringError::LeasedElsewhere`] (409).
    pub async fn retention(
        &self,
        principal: &Principal,
        age: std::time::Duration,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        self.authorize(principal, Role::Admin, "retention", &[])?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let cutoff = da::date_of_unix_secs(now.saturating_sub(age.as_secs()));
        let index = self.index.clone();
        let mut report = blocking(move || {
            let mut report = RetentionReport::default();
            // the age rule, unless it is off ("0s")
            for (uid, s) in index.studies()? {
                let date = s.study_date.trim();
                if !age.is_zero() && da::is_valid_date(date) && *date < *cutoff {
                    if !index.holds(&uid)?.is_empty() {
                        report.held.push(uid.clone());
                    }
                    report.due.push((uid, date.to_string()));
                }
            }
            // IHE IOCM: studies wholly rejected for a wrong worklist entry or an expired
            // retention (their notes ask for deletion; other rejections only hide)
            let mut studies: Vec<String> = index.rejections()?.into_iter().map(|r| r.0).collect();
            studies.dedup();
            for uid in studies {
                let rejections = index.rejections_of_study(&uid)?;
                // the notes themselves (stored in the study they reject) do not count
                let notes: std::collections::HashSet<&str> =
                    rejections.iter().map(|(_, _, r)| r.note.as_str()).collect();
                let held: Vec<_> = index
                    .instances_of_study(&uid)?
                    .into_iter()
                    .filter(|e| !notes.contains(e.sop_instance_uid.as_str()))
                    .collect();
                let deleting = |code: &str| matches!(code, "113038" | "113039");
                let doomed: Vec<(&crate::index::InstanceEntry, &crate::index::RejectionRecord)> =
                    held.iter()
                        .filter_map(|e| {
                            rejections
                                .iter()
                                .find(|(series, sop, r)| {
                                    *series == e.series_uid
                                        && *sop == e.sop_instance_uid
                                        && deleting(&r.code)
                                })
                                .map(|(_, _, r)| (e, r))
                        })
                        .collect();
                if doomed.is_empty() || report.due.iter().any(|(d, _)| *d == uid) {
                    continue;
                }
                if !index.holds(&uid)?.is_empty() {
                    report.held.push(uid.clone());
                }
                let mut notes: Vec<String> = doomed
                    .iter()
                    .map(|(_, r)| format!("{} ({}, DCM, \"{}\")", r.note, r.code, r.meaning))
                    .collect();
                notes.dedup();
                let why = format!("IOCM rejection note {}", notes.join(", "));
                if doomed.len() == held.len() {
                    report.rejected.push((uid, why));
                } else {
                    let instances = doomed
                        .iter()
                        .map(|(e, _)| (e.series_uid.clone(), e.sop_instance_uid.clone()))
                        .collect();
                    report.rejected_instances.push(RejectedInstances {
                        study_uid: uid,
                        instances,
                        why,
                    });
                }
            }
            Ok(report)
        })
        .await?;
        if dry_run {
            return Ok(report);
        }
        // one node applies retention at a time (docs/scale-out.md "Leases")
        let _lease = self.tiering.take_lease("retention").await?;
        for (uid, date) in report.due.clone() {
            if report.held.contains(&uid) {
                continue;
            }
            let why = format!(
                "retention: StudyDate {date} is older than {}",
                humantime::format_duration(age)
            );
            self.delete_study(principal, &uid, &why).await?;
            report.deleted.push(uid);
        }
        for (uid, why) in report.rejected.clone() {
            if report.held.contains(&uid) {
                continue;
            }
            self.delete_study(principal, &uid, &format!("retention: {why}"))
                .await?;
            report.deleted.push(uid);
        }
        for r in report.rejected_instances.clone() {
            if report.held.contains(&r.study_uid) {
                continue;
            }
            let why = format!("retention: {}", r.why);
            let done = self
                .delete_instances(principal, &r.study_uid, &r.instances, &why)
                .await?;
            report.instances_deleted.push((r.study_uid, done.objects));
        }
        Ok(report)
    }
}

/// Holds as the error messages name them: `"<why>" (<who>, <since>)`.
fn describe_holds(holds: &[HoldRecord]) -> String {
    holds
        .iter()
        .map(|h| format!("{:?} ({}, {})", h.why, h.who, rfc3339(h.since_ms)))
        .collect::<Vec<_>>()
        .join(", ")
}
