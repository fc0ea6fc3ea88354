//! Integrity: verify every copy against its id, repair what can be repaired from
//! another verified copy, and answer storage commitment (DESIGN promises 4 and 8).
//!
//! - [`Archive::verify_blocking`] re-hashes hot objects and cold packs and checks index
//!   and objects against each other both ways; audited as `verify`.
//! - [`Archive::repair_blocking`] (`verify --repair`) restores a corrupt or missing hot
//!   copy from its cold pack member (quarantining the bad file, never deleting it) and
//!   replaces a bad pack from its members' hot copies; with no good copy left it says
//!   so and changes nothing. Each repair is audited. It works while the server runs
//!   (through the admin API) and holds the tiering lock, so no move races it.
//! - [`Archive::commitment`] answers a Storage Commitment request (PS3.4 J.3): an
//!   instance is committed only if its served object is durable right now: a hot copy
//!   re-hashes to its id, or a cold-only one has pack copies (verified when recorded).
//!
//! Verify and repair block: call them on the blocking pool of a runtime (cold packs are
//! read with the runtime's handle).

use super::principal::Role;
use super::{Archive, Error, Principal};
use crate::index::{Index, ObjectRecord, Tier};
use crate::storage::quarantine;
use crate::tiering::reader::download_pack_blocking;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use strata_tiers::ObjectId;

type Result<T> = std::result::Result<T, Error>;

impl Archive {
    /// Re-hashes every indexed object (hot files, cold packs or both, `workers` threads
    /// for the hot files) and checks index and objects against each other both ways.
    /// Audited as `verify` with a one-line outcome.
    pub fn verify_blocking(
        &self,
        principal: &Principal,
        workers: usize,
        scope: VerifyScope,
    ) -> Result<VerifyReport> {
        self.authorize(principal, Role::Auditor, "verify", &[])?;
        let report = verify(self, workers, scope);
        let checked = match scope {
            VerifyScope::Hot => "hot tier only",
            VerifyScope::Cold => "cold tier only",
            VerifyScope::All => "hot and cold tiers",
        };
        let outcome = match &report {
            Ok(r) if r.is_clean() => format!(
                "clean ({checked}: {} objects, {} packs)",
                r.objects_checked, r.packs_checked
            ),
            Ok(r) => format!(
                "{} missing, {} corrupt, {} bad packs{} ({checked})",
                r.missing.len(),
                r.corrupt.len(),
                r.bad_packs.len(),
                r.cold_not_checked
                    .as_ref()
                    .map(|why| format!("; cold tier not checked: {why}"))
                    .unwrap_or_default()
            ),
            Err(e) => format!("failed: {e}"),
        };
        self.audit_blocking(principal, "verify", Vec::new(), outcome);
        report
    }

    /// `verify --repair` (see the module docs): what was found, and what was repaired or
    /// could not be. Needs a writable archive; holds the tiering lock throughout. Each
    /// repair, and each problem left unrepaired, is audited (synced) as `repair`.
    pub fn repair_blocking(
        &self,
        principal: &Principal,
        workers: usize,
    ) -> Result<(VerifyReport, RepairReport)> {
        self.authorize(principal, Role::Admin, "repair", &[])?;
        self.ingest()?;
        let _busy = self.tiering.busy.blocking_lock();
        let (found, report) = repair(self, workers)?;
        for line in &report.repaired {
            self.audit_synced(principal, "repair", Vec::new(), format!("repaired: {line}"))?;
        }
        for line in &report.unrepairable {
            self.audit_synced(
                principal,
                "repair",
                Vec::new(),
                format!("NOT repaired: {line}"),
            )?;
        }
        Ok((found, report))
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Problem {
    pub id: String,
    pub path: String,
    pub study_uid: String,
    pub sop_instance_uid: String,
    pub detail: String,
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub seconds: f64,
    /// Indexed objects whose file is gone.
    pub missing: Vec<Problem>,
    /// Indexed objects whose bytes no longer hash to their id (or differ in size).
    pub corrupt: Vec<Problem>,
    /// Files in the hot tier that the index does not know.
    pub orphans: Vec<Problem>,
    /// Instance versions that point at an object the index does not hold.
    pub dangling: Vec<Problem>,
    /// Files under `objects/` whose name or place is not an object id's.
    pub strays: Vec<String>,
    /// Objects recorded hot whose file is gone but which have a verified cold copy (a
    /// move to cold that stopped mid-delete; the next tiering pass finishes it).
    pub pending_eviction: Vec<Problem>,
    /// Files of deleted studies not removed yet (a deletion interrupted after its
    /// tombstone; the next start finishes it). Not a loss.
    pub pending_deletion: usize,
    pub packs_checked: usize,
    pub pack_bytes_checked: u64,
    /// Recorded packs that are missing from the cold tier, or whose bytes, structure,
    /// manifest or members do not check out.
    pub bad_packs: Vec<PackProblem>,
    /// Cold-only objects without a cold copy, or whose copies name no recorded pack.
    pub unreachable: Vec<Problem>,
    /// Packs in the cold tier that no record names (uploads cut short by a crash;
    /// the tiering worker deletes them after `orphan_grace`). Not a loss.
    pub unrecorded_packs: Vec<String>,
    /// Multipart uploads begun and never completed nor aborted, as `key (upload id)`:
    /// they cost storage and hold no pack; the tiering worker aborts them after
    /// `orphan_grace`. Not a loss.
    #[serde(default)]
    pub incomplete_uploads: Vec<String>,
    /// Why the cold tier could not be checked at all (no bucket, no credentials, no
    /// answer): the hot tier was checked; the report is not clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_not_checked: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PackProblem {
    pub pack: String,
    pub key: String,
    pub study_uid: String,
    pub detail: String,
    /// SOP Instance UIDs of the objects with a copy in this pack.
    pub instances: Vec<String>,
}

/// Which tiers `verify` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyScope {
    Hot,
    Cold,
    All,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.corrupt.is_empty()
            && self.orphans.is_empty()
            && self.dangling.is_empty()
            && self.strays.is_empty()
            && self.bad_packs.is_empty()
            && self.unreachable.is_empty()
            && self.cold_not_checked.is_none()
    }
}

/// Re-hashes every indexed object (hot files, cold packs or both) and checks index ↔
/// objects both ways.
fn verify(archive: &Archive, workers: usize, scope: VerifyScope) -> Result<VerifyReport> {
    let started = Instant::now();
    let index = archive.index.as_ref();
    let mut all: Vec<(ObjectId, ObjectRecord)> = Vec::new();
    index.for_each_object(&mut |id, rec| {
        all.push((id, rec));
        true
    })?;
    let known: HashSet<ObjectId> = all.iter().map(|(id, _)| *id).collect();
    let mut report = if scope == VerifyScope::Cold {
        VerifyReport::default()
    } else {
        verify_hot(archive, workers, &all, &known)?
    };
    if scope != VerifyScope::Hot {
        verify_cold(archive, &all, &mut report)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The cold half of `verify`: every recorded pack read back whole, its blake3 checked
/// against its id and every member against the manifest's blake3 and sha256; every
/// cold copy must name a recorded pack and a member at its offset.
fn verify_cold(
    archive: &Archive,
    all: &[(ObjectId, ObjectRecord)],
    report: &mut VerifyReport,
) -> Result<()> {
    let index = archive.index.as_ref();
    let rt = super::current_runtime()?;
    // a cold tier that cannot be reached at all is one finding, not one per pack
    if let Err(e) = rt.block_on(archive.cold.check_bucket()) {
        report.cold_not_checked = Some(e.to_string());
        return Ok(());
    }
    let packs: BTreeMap<ObjectId, crate::index::PackRecord> = index.packs()?.into_iter().collect();
    // pack -> (object, offset, sop)
    let mut copies: BTreeMap<ObjectId, Vec<(ObjectId, u64, String)>> = BTreeMap::new();
    for (id, rec) in all {
        for c in &rec.cold {
            match c.pack_id().filter(|p| packs.contains_key(p)) {
                Some(p) => {
                    copies
                        .entry(p)
                        .or_default()
                        .push((*id, c.offset, rec.sop_instance_uid.clone()))
                }
                None => report.unreachable.push(Problem {
                    id: id.to_hex(),
                    path: c.pack.clone(),
                    study_uid: rec.study_uid.clone(),
                    sop_instance_uid: rec.sop_instance_uid.clone(),
                    detail: format!("cold copy names pack {} that is not recorded", c.pack),
                }),
            }
        }
        if rec.tier == Tier::Cold && rec.cold.is_empty() {
            report.unreachable.push(Problem {
                id: id.to_hex(),
                path: String::new(),
                study_uid: rec.study_uid.clone(),
                sop_instance_uid: rec.sop_instance_uid.clone(),
                detail: "recorded cold-only but has no cold copy".into(),
            });
        }
    }
    let tmp_dir = archive.data_dir.join("tmp-packs");
    std::fs::create_dir_all(&tmp_dir).ok();
    for (pack_id, record) in &packs {
        let members = copies.get(pack_id).cloned().unwrap_or_default();
        let problem = |detail: String| PackProblem {
            pack: pack_id.to_hex(),
            key: archive.cold.key_of(pack_id),
            study_uid: record.study_uid.clone(),
            detail,
            instances: members.iter().map(|m| m.2.clone()).collect(),
        };
        match check_pack(archive, &rt, pack_id, &tmp_dir) {
            Ok((size, manifest)) => {
                report.packs_checked += 1;
                report.pack_bytes_checked += size;
                let listed: HashSet<(String, u64)> = manifest
                    .members
                    .iter()
                    .map(|m| (m.blake3.clone(), m.offset))
                    .collect();
                if let Some((id, offset, _)) = members
                    .iter()
                    .find(|(id, o, _)| !listed.contains(&(id.to_hex(), *o)))
                {
                    report.bad_packs.push(problem(format!(
                        "the index places object {id} at offset {offset}, the manifest does not"
                    )));
                } else if size != record.size {
                    report.bad_packs.push(problem(format!(
                        "{size} bytes, the index says {}",
                        record.size
                    )));
                }
            }
            Err(detail) => report.bad_packs.push(problem(detail)),
        }
    }
    report.incomplete_uploads = rt
        .block_on(archive.cold.incomplete_uploads())?
        .into_iter()
        .map(|(key, id, _)| format!("{key} ({id})"))
        .collect();
    for (id, _, _) in rt.block_on(archive.cold.list_detailed())? {
        if !packs.contains_key(&id) && index.pack(&id)?.is_none() {
            report.unrecorded_packs.push(archive.cold.key_of(&id));
        }
    }
    Ok(())
}

/// Downloads a pack to a temporary file, hashing it, then reads it through
/// [`pack::read_all`](crate::tiering::pack::read_all). Returns its size and manifest,
/// or what is wrong with it.
fn check_pack(
    archive: &Archive,
    rt: &tokio::runtime::Handle,
    pack_id: &ObjectId,
    tmp_dir: &Path,
) -> std::result::Result<(u64, crate::tiering::pack::Manifest), String> {
    let file = download_pack_blocking(&archive.cold, rt, pack_id, tmp_dir)?;
    let size = file.as_file().metadata().map_err(|e| e.to_string())?.len();
    let reader = std::io::BufReader::new(file.reopen().map_err(|e| e.to_string())?);
    let manifest =
        crate::tiering::pack::read_all(reader, &mut |_, _| Ok(())).map_err(|e| e.to_string())?;
    Ok((size, manifest))
}

/// The hot half of `verify`.
fn verify_hot(
    archive: &Archive,
    workers: usize,
    all: &[(ObjectId, ObjectRecord)],
    known: &HashSet<ObjectId>,
) -> Result<VerifyReport> {
    let index = archive.index.as_ref();
    let hot = &archive.hot;
    // this node's hot disk: another node's objects are that node's to verify
    let node = archive.node_id();
    let objects: Vec<&(ObjectId, ObjectRecord)> =
        all.iter().filter(|(_, r)| r.hot_on(&node)).collect();
    let report = Mutex::new(VerifyReport::default());
    let next = AtomicUsize::new(0);
    let problem = |id: &ObjectId, rec: &ObjectRecord, detail: String| Problem {
        id: id.to_hex(),
        path: hot.path_of(id).display().to_string(),
        study_uid: rec.study_uid.clone(),
        sop_instance_uid: rec.sop_instance_uid.clone(),
        detail,
    };
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, rec)) = objects.get(i).copied() else {
                    break;
                };
                let outcome = hot.rehash_blocking(id);
                let mut r = report.lock().expect("verify report lock");
                r.objects_checked += 1;
                match outcome {
                    Ok((actual, size)) => {
                        r.bytes_checked += size;
                        if actual != *id {
                            r.corrupt
                                .push(problem(id, rec, format!("bytes hash to {actual}")));
                        } else if size != rec.size {
                            r.corrupt.push(problem(
                                id,
                                rec,
                                format!("size {size}, index says {}", rec.size),
                            ));
                        }
                    }
                    Err(e) if e.is_not_found() && !rec.cold.is_empty() => {
                        r.pending_eviction.push(problem(
                            id,
                            rec,
                            "hot file is missing; its cold copy is verified".into(),
                        ))
                    }
                    Err(e) if e.is_not_found() => {
                        r.missing.push(problem(id, rec, "file is missing".into()))
                    }
                    Err(e) => r.corrupt.push(problem(id, rec, format!("unreadable: {e}"))),
                }
            });
        }
    });
    let mut report = report.into_inner().expect("verify report lock");

    let (ids, strays) = hot.list_blocking()?;
    let mut suspects: Vec<ObjectId> = ids.into_iter().filter(|id| !known.contains(id)).collect();
    // A running server renames an object into place a little before its index record
    // commits: catch up with the primary a few times before calling anything an orphan.
    let retries = if crate::storage::writer_active(&archive.data_dir) {
        10
    } else {
        0
    };
    for _ in 0..retries {
        if suspects.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        index.refresh()?;
        let mut still = Vec::with_capacity(suspects.len());
        for id in suspects {
            if !index.has_object(&id)? {
                still.push(id);
            }
        }
        suspects = still;
    }
    for id in suspects {
        if index.deleted_object(&id)?.is_some() {
            report.pending_deletion += 1;
            continue;
        }
        report.orphans.push(Problem {
            id: id.to_hex(),
            path: hot.path_of(&id).display().to_string(),
            study_uid: String::new(),
            sop_instance_uid: String::new(),
            detail: "not in the index".into(),
        });
    }
    report.strays = strays
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();

    // instance records that point nowhere
    for (study_uid, _) in index.studies()? {
        for e in index.instances_of_study(&study_uid)? {
            for v in &e.record.versions {
                let ok = match ObjectId::from_hex(&v.id) {
                    Some(id) => known.contains(&id) || index.has_object(&id)?,
                    None => false,
                };
                if !ok {
                    report.dangling.push(Problem {
                        id: v.id.clone(),
                        path: String::new(),
                        study_uid: e.study_uid.clone(),
                        sop_instance_uid: e.sop_instance_uid.clone(),
                        detail: "instance version without an object record".into(),
                    });
                }
            }
        }
    }
    Ok(report)
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct RepairReport {
    /// What was fixed, one line each.
    pub repaired: Vec<String>,
    /// What could not be fixed because no good copy is left (nothing was changed).
    pub unrepairable: Vec<String>,
}

/// `strata verify --repair`: finds the problems `verify` finds, then
/// restores each corrupt or missing copy from another verified copy — a hot object from
/// its cold pack member (the corrupt file is quarantined, never deleted), a bad pack by
/// re-packing its members from their hot copies. With no good copy left it says so and
/// changes nothing for that object.
fn repair(archive: &Archive, workers: usize) -> Result<(VerifyReport, RepairReport)> {
    let found = verify(archive, workers, VerifyScope::All)?;
    let tiering = &archive.tiering;
    let reader = &archive.reader;
    let rt = super::current_runtime()?;
    let mut report = RepairReport::default();
    let index = archive.index.clone();

    // hot copies: corrupt or missing, restored from a cold copy; that includes files
    // recorded hot whose cold copy is safe (verify counts those as pending eviction)
    let mut gone_with_cold_copy = Vec::new();
    let node = archive.node_id();
    index.for_each_object(&mut |id, r| {
        if r.hot_on(&node) && !r.cold.is_empty() && !archive.hot.path_of(&id).exists() {
            gone_with_cold_copy.push(Problem {
                id: id.to_hex(),
                path: archive.hot.path_of(&id).display().to_string(),
                study_uid: r.study_uid.clone(),
                sop_instance_uid: r.sop_instance_uid.clone(),
                detail: "hot file is missing".into(),
            });
        }
        true
    })?;
    for p in found
        .corrupt
        .iter()
        .chain(found.missing.iter())
        .chain(gone_with_cold_copy.iter())
    {
        let Some(id) = ObjectId::from_hex(&p.id) else {
            continue;
        };
        let copies = index.object(&id)?.map(|r| r.cold).unwrap_or_default();
        match rt.block_on(reader.read_cold(&id, &copies)) {
            Ok(bytes) => {
                let path = archive.hot.path_of(&id);
                let damaged = if path.exists() {
                    let aside = quarantine(&archive.data_dir, &path)?;
                    format!(
                        "the damaged file ({}: not its id) is kept at {}",
                        p.detail,
                        aside.display()
                    )
                } else {
                    format!("before: {}", p.detail)
                };
                use strata_tiers::BlobStore;
                rt.block_on(archive.hot.put(&id, bytes::Bytes::from(bytes)))?;
                report.repaired.push(format!(
                    "object {id} (study {}, instance {}): hot copy restored from its cold pack, verified against its id; {damaged}",
                    p.study_uid, p.sop_instance_uid
                ));
            }
            Err(e) => report.unrepairable.push(format!(
                "object {id} (study {}, instance {}): {} and no good cold copy ({e})",
                p.study_uid, p.sop_instance_uid, p.detail
            )),
        }
    }

    // bad packs: re-packed from the members' hot copies when every member has one
    for bad in &found.bad_packs {
        let Some(pack) = ObjectId::from_hex(&bad.pack) else {
            continue;
        };
        let mut members = Vec::new();
        index.for_each_object(&mut |id, r| {
            if r.cold.iter().any(|c| c.pack == bad.pack) {
                members.push((id, r));
            }
            true
        })?;
        let without_copy: Vec<String> = members
            .iter()
            .filter(|(id, r)| {
                let hot_ok = r.tier == crate::index::Tier::Hot
                    && archive
                        .hot
                        .rehash_blocking(id)
                        .is_ok_and(|(actual, _)| actual == *id);
                let other_pack = r.cold.iter().any(|c| c.pack != bad.pack);
                !(hot_ok || other_pack)
            })
            .map(|(_, r)| r.sop_instance_uid.clone())
            .collect();
        if !without_copy.is_empty() {
            report.unrepairable.push(format!(
                "pack {} (study {}): {}; {} instance(s) have no other good copy: {}",
                bad.pack,
                bad.study_uid,
                bad.detail,
                without_copy.len(),
                without_copy.join(", ")
            ));
            continue;
        }
        index.drop_pack(&pack)?;
        {
            use strata_tiers::BlobStore;
            rt.block_on(archive.cold.delete(&pack))?;
        }
        let hot_members: Vec<_> = members
            .into_iter()
            .filter(|(_, r)| r.tier == crate::index::Tier::Hot)
            .map(|(id, mut r)| {
                r.cold.retain(|c| c.pack != bad.pack);
                (id, r)
            })
            .filter(|(_, r)| r.cold.is_empty())
            .collect();
        if !hot_members.is_empty() {
            rt.block_on(tiering.pack_and_record(&bad.study_uid, &hot_members))?;
        }
        report.repaired.push(format!(
            "pack {} (study {}): {}; replaced by a new pack of its {} members' hot copies",
            bad.pack,
            bad.study_uid,
            bad.detail,
            hot_members.len()
        ));
    }
    Ok((found, report))
}

/// The answer to a storage commitment request: (SOP class, SOP instance) pairs, and for
/// failures the FailureReason (PS3.4 J.3.3.1.1).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Commitment {
    pub committed: Vec<(String, String)>,
    pub failed: Vec<(String, String, u16)>,
}

/// FailureReason values (PS3.4 J.3.3.1.1, C.4.1.1.4).
mod failure_reason {
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
}

impl Archive {
    /// Storage commitment (PS3.4 J.3): an instance is committed only if it is indexed
    /// under the requested SOP class *and* its served object is durable right now — a
    /// hot object re-hashes to its id (on this node; one on another node's hot disk is
    /// that node's to keep), a cold-only one has recorded pack copies (read back and
    /// verified before they were recorded). Otherwise FailureReason 0x0112 (no
    /// such instance), 0x0119 (class conflict) or 0x0110 (missing or corrupt). Audited
    /// as `commitment` with the transaction and the counts.
    pub async fn commitment(
        &self,
        principal: &Principal,
        transaction_uid: &str,
        refs: Vec<(String, String)>,
    ) -> Result<Commitment> {
        let transaction = [transaction_uid.to_string()];
        self.authorize(principal, Role::Uploader, "commitment", &transaction)?;
        let (index, hot, node) = (self.index.clone(), self.hot.clone(), self.node_id());
        let outcome =
            super::blocking(move || Ok(commitment_blocking(index.as_ref(), &hot, &node, refs)))
                .await?;
        self.audit(
            principal,
            "commitment",
            vec![transaction_uid.to_string()],
            format!(
                "{} committed, {} failed",
                outcome.committed.len(),
                outcome.failed.len()
            ),
        )
        .await;
        Ok(outcome)
    }
}

fn commitment_blocking(
    index: &dyn Index,
    hot: &strata_tiers::HotDisk,
    node: &str,
    refs: Vec<(String, String)>,
) -> Commitment {
    use failure_reason::*;
    let mut out = Commitment::default();
    for (class, sop) in refs {
        let entry = match index.instance(&sop) {
            Ok(Some(e)) => e,
            Ok(None) => {
                out.failed.push((class, sop, NO_SUCH_OBJECT_INSTANCE));
                continue;
            }
            Err(_) => {
                out.failed.push((class, sop, PROCESSING_FAILURE));
                continue;
            }
        };
        if entry.record.sop_class_uid != class {
            out.failed.push((class, sop, CLASS_INSTANCE_CONFLICT));
            continue;
        }
        let durable = entry
            .record
            .current()
            .and_then(|v| ObjectId::from_hex(&v.id))
            .is_some_and(|id| match index.object(&id) {
                Ok(Some(r)) if r.tier == Tier::Cold => !r.cold.is_empty(),
                // on another node's hot disk, which that node verifies
                Ok(Some(r)) if r.hot_elsewhere(node).is_some() => true,
                _ => hot
                    .rehash_blocking(&id)
                    .is_ok_and(|(actual, _)| actual == id),
            });
        if durable {
            out.committed.push((class, sop));
        } else {
            tracing::error!(sop, "storage commitment refused: object missing or corrupt");
            out.failed.push((class, sop, PROCESSING_FAILURE));
        }
    }
    out
}
