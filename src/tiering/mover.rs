//! Moving one study between tiers, by copy, verify, record, then delete (promise 4).
//!
//! [`Tiering::move_to_cold`] does, for the study's objects that have a hot copy:
//!
//! 1. **pack** the objects without a cold copy (sorted, deterministic; each hot copy is
//!    re-hashed on the way and a corrupt one stops the move), splitting at
//!    `pack_max_mb`;
//! 2. **upload** each pack under its own blake3 (skipped when already there);
//! 3. **verify** by reading the whole pack back and re-hashing it — the upload call's
//!    success is not trusted — and checking its size;
//! 4. **record** the pack and each member's cold copy in one synced index batch;
//! 5. **delete** the hot files (each unlink followed by a directory fsync), then record
//!    the objects as cold-only.
//!
//! On nodes sharing an index, a move holds the study's lease (`tier/<StudyInstanceUID>`,
//! [`Tiering::take_lease`]) so that no two nodes pack one study; objects hot on another
//! node are fetched from it to be packed, and each node deletes only its own hot files
//! (the study stays queued while a live node still holds some).
//!
//! A crash after 2 or 3 leaves an unrecorded upload; the next pass rebuilds the same
//! pack (same objects, same bytes, same key), finds it present, verifies and records
//! it, so no pack is uploaded or counted twice. A crash in 5 leaves objects recorded
//! hot whose file may be gone; readers fall back to the cold copy and the next pass
//! finishes the deletes. Failpoints (`STRATA_FAILPOINT`) sit between the steps for the
//! crash tests.

use super::pack::{self, Source};
use super::{blocking, failpoint, Tiering, TieringError};
use crate::index::rocks::unix_ms_now;
use crate::index::{ColdCopy, NewObject, ObjectRecord, PackRecord, PackedObject, Tier};
use strata_tiers::cold::is_archive_class;
use strata_tiers::{BlobStore, ObjectId};

/// What a move did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveReport {
    pub study_uid: String,
    /// Packs uploaded by this move (a pack found already uploaded counts here once,
    /// when it is recorded).
    pub packs_recorded: usize,
    pub objects_packed: usize,
    pub bytes_uploaded: u64,
    /// Hot copies deleted.
    pub objects_evicted: usize,
    /// Objects brought back to hot disk (moves to hot).
    pub objects_recalled: usize,
    /// Packs moved to the archive storage class.
    pub packs_archived: usize,
    /// Objects of the study (with cold copies now) still hot on other nodes' disks:
    /// those nodes evict them when they take the study.
    #[serde(default)]
    pub hot_on_other_nodes: usize,
}

/// Every object (every kept version) of a study with its record.
fn study_objects_blocking(
    t: &Tiering,
    study_uid: &str,
) -> Result<Vec<(ObjectId, ObjectRecord)>, TieringError> {
    let instances = t.index.instances_of_study(study_uid)?;
    if instances.is_empty() {
        return Err(TieringError::UnknownStudy(study_uid.to_string()));
    }
    let mut out = Vec::new();
    for entry in instances {
        for version in &entry.record.versions {
            let id = ObjectId::from_hex(&version.id).ok_or_else(|| {
                TieringError::Other(format!("bad object id {:?} in the index", version.id))
            })?;
            if let Some(record) = t.index.object(&id)? {
                out.push((id, record));
            }
        }
    }
    Ok(out)
}

impl Tiering {
    /// Copies the study's hot objects to cold, verifies, records, and deletes the hot
    /// copies. Idempotent: safe to run again after any interruption.
    pub async fn move_to_cold(&self, study_uid: &str) -> Result<MoveReport, TieringError> {
        // one node at a time per study: no study is packed twice (docs/scale-out.md)
        let _lease = self.take_lease(&format!("tier/{study_uid}")).await?;
        let mut report = MoveReport {
            study_uid: study_uid.to_string(),
            ..Default::default()
        };
        let this = self.clone();
        let study = study_uid.to_string();
        let objects = blocking(move || study_objects_blocking(&this, &study)).await?;
        let mut to_pack: Vec<(ObjectId, ObjectRecord)> = objects
            .iter()
            .filter(|(_, r)| r.tier == Tier::Hot && r.cold.is_empty())
            .cloned()
            .collect();
        // The split must come out the same on a retry, so that the same packs are built.
        to_pack.sort_by_key(|(id, _)| *id);

        let limit = self.config.tiering.pack_max_mb * 1024 * 1024;
        for chunk in split_by_size(&to_pack, limit) {
            let (bytes, n) = self.pack_and_record(study_uid, chunk).await?;
            report.packs_recorded += 1;
            report.objects_packed += n;
            report.bytes_uploaded += bytes;
        }

        // Step 5: every hot object now has a verified, recorded cold copy; replicas
        // written before the pack are no longer counted on, and go
        let this = self.clone();
        let study = study_uid.to_string();
        let objects = blocking(move || study_objects_blocking(&this, &study)).await?;
        let replicated: Vec<ObjectId> = objects
            .iter()
            .filter(|(_, r)| r.replica && !r.cold.is_empty())
            .map(|(id, _)| *id)
            .collect();
        self.drop_replicas(&replicated).await?;
        // Only this node's hot files are deleted here; another node's are deleted by
        // that node when it takes the study (the study stays queued until then).
        let (mine, theirs): (Vec<_>, Vec<_>) = objects
            .iter()
            .filter(|(_, r)| r.tier == Tier::Hot && !r.cold.is_empty())
            .partition(|(_, r)| r.hot_on(&self.node));
        // a node that is down keeps its hot copies (readers use the cold ones meanwhile)
        // and does not hold the study back
        let alive = self.alive_nodes().await?;
        let theirs: Vec<_> = theirs
            .into_iter()
            .filter(|(_, r)| r.hot_node.as_ref().is_some_and(|n| alive.contains(n)))
            .collect();
        let evict: Vec<ObjectId> = mine.iter().map(|(id, _)| *id).collect();
        for (n, id) in evict.iter().enumerate() {
            self.hot.delete(id).await?;
            if n == 0 {
                failpoint("mid-delete");
            }
        }
        let (index, ids) = (self.index.clone(), evict.clone());
        blocking(move || Ok(index.set_tier(&ids, Tier::Cold, None)?)).await?;
        report.objects_evicted = evict.len();
        report.hot_on_other_nodes = theirs.len();
        if let Some(m) = &self.metrics {
            m.uploads.inc_by(report.packs_recorded as u64);
            m.uploaded_bytes.inc_by(report.bytes_uploaded);
            m.evicted_objects.inc_by(report.objects_evicted as u64);
        }
        Ok(report)
    }

    /// Steps 1-4 for one pack's worth of objects. Returns (pack bytes, members).
    pub(crate) async fn pack_and_record(
        &self,
        study_uid: &str,
        objects: &[(ObjectId, ObjectRecord)],
    ) -> Result<(u64, usize), TieringError> {
        // objects hot on another node's disk are staged here first (fetched, checked)
        let mut staged = std::collections::HashMap::new();
        let reader = self.reader();
        for (id, r) in objects {
            if !r.hot_on(&self.node) {
                let tmp = reader.stage_elsewhere(id).await?;
                staged.insert(*id, tmp);
            }
        }
        let sources: Vec<Source> = objects
            .iter()
            .map(|(id, r)| Source {
                id: *id,
                path: staged
                    .get(id)
                    .map(|tmp| tmp.path().to_path_buf())
                    .unwrap_or_else(|| self.hot.path_of(id)),
                study_uid: r.study_uid.clone(),
                series_uid: r.series_uid.clone(),
                sop_instance_uid: r.sop_instance_uid.clone(),
                sop_class_uid: r.sop_class_uid.clone(),
                transfer_syntax_uid: r.transfer_syntax_uid.clone(),
            })
            .collect();
        let level = self.config.tiering.zstd_level;
        let tmp = self.config.pack_tmp_dir();
        let study = study_uid.to_string();
        let built =
            blocking(move || Ok(pack::build_blocking(&study, &sources, level, &tmp)?)).await?;
        drop(staged);

        let (index, pack_id) = (self.index.clone(), built.id);
        if blocking(move || Ok(index.pack(&pack_id)?)).await?.is_some() {
            // Recorded by an earlier pass that stopped before its deletes.
            return Ok((built.size, built.manifest.members.len()));
        }
        // An object in an archive class cannot be read back, so such packs are
        // uploaded in STANDARD, verified and recorded, and only then moved to their class.
        let wanted = &self.config.cold.storage_class;
        let class = (self.cold.supports_storage_classes() && !is_archive_class(wanted))
            .then_some(wanted.as_str());
        // never a pack into a prefix another archive claimed (once per process)
        if let Some(claim) = &self.claim {
            self.claimed
                .get_or_try_init(|| async { claim().await.map_err(TieringError::Other) })
                .await?;
        }
        self.cold
            .put_file(&built.id, built.head.clone(), built.body.path(), class)
            .await?;
        failpoint("after-upload");

        let checked = match self.cold.verify(&built.id).await {
            Ok(size) if size == built.size => Ok(()),
            Ok(size) => Err(format!("it reads back as {size} bytes, not {}", built.size)),
            Err(e) if e.is_remote() => return Err(e.into()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = checked {
            // Never trusted, never recorded: remove it so that the next pass uploads
            // a good copy; the hot copies stay.
            tracing::error!(pack = %built.id, study = study_uid, %why, "uploaded pack failed verification; deleting it, hot copies kept");
            self.cold.delete(&built.id).await?;
            return Err(TieringError::Other(format!(
                "pack {} failed verification ({why}); hot copies kept, the next pass uploads it again",
                built.id
            )));
        }
        failpoint("after-verify");

        let record = pack_record(
            &built.manifest,
            built.size,
            class.unwrap_or("STANDARD"),
            unix_ms_now(),
        );
        let members = packed_objects(&built.id, &built.manifest, &mut |_| None);
        let (index, pack_id) = (self.index.clone(), built.id);
        blocking(move || Ok(index.record_pack(&pack_id, &record, &members)?)).await?;
        failpoint("after-commit");
        if self.cold.supports_storage_classes() && is_archive_class(wanted) {
            // A crash before this is repaired by the next pass (see the worker).
            self.set_pack_class(&built.id, wanted).await?;
        }
        Ok((built.size, built.manifest.members.len()))
    }

    /// Brings a study's cold-only objects back to hot disk (each checked against its
    /// id by the hot tier's put), then records them hot. The cold copies stay, so the
    /// study can be evicted again without another upload. Memory stays bounded: small
    /// objects come back in batches of at most 64 objects and 256 MiB, each large one
    /// (above `STREAM_MEMBER_ABOVE`) streamed from its pack into a tmp file, checked,
    /// and made durable under its id without ever being held whole.
    pub async fn move_to_hot(&self, study_uid: &str) -> Result<MoveReport, TieringError> {
        let this = self.clone();
        let study = study_uid.to_string();
        let objects = blocking(move || study_objects_blocking(&this, &study)).await?;
        let cold_only: Vec<&(ObjectId, ObjectRecord)> = objects
            .iter()
            .filter(|(_, r)| r.tier == Tier::Cold)
            .collect();
        let reader = self.reader();
        let mut recalled = Vec::new();
        let large = |r: &ObjectRecord| r.size > super::pack::STREAM_MEMBER_ABOVE;
        for (id, record) in cold_only.iter().filter(|(_, r)| large(r)) {
            let tmp = reader.stage_cold(id, &record.cold).await?;
            let (hot, oid) = (self.hot.clone(), *id);
            blocking(move || {
                hot.persist_batch_blocking(vec![(tmp, oid)])
                    .pop()
                    .expect("one result per item")?;
                Ok(())
            })
            .await?;
            let (index, marked) = (self.index.clone(), vec![*id]);
            let node = self.node.clone();
            blocking(move || Ok(index.set_tier(&marked, Tier::Hot, Some(&node))?)).await?;
            recalled.push(*id);
        }
        let mut batches: Vec<Vec<ObjectId>> = Vec::new();
        let mut bytes = 0u64;
        for (id, record) in cold_only.iter().filter(|(_, r)| !large(r)) {
            match batches.last_mut() {
                Some(b) if b.len() < 64 && bytes + record.size <= 256 << 20 => {
                    b.push(*id);
                    bytes += record.size;
                }
                _ => {
                    batches.push(vec![*id]);
                    bytes = record.size;
                }
            }
        }
        for batch in &batches {
            let mut fetched = Vec::new();
            let failed = reader
                .read_many(batch, &mut |id, bytes| {
                    fetched.push((id, bytes));
                    Ok(())
                })
                .await?;
            if let Some((id, e)) = failed.into_iter().next() {
                return Err(TieringError::Unreadable {
                    id: id.to_hex(),
                    detail: e.to_string(),
                });
            }
            let mut ids = Vec::new();
            for (id, bytes) in fetched {
                self.hot.put(&id, bytes::Bytes::from(bytes)).await?;
                ids.push(id);
            }
            let (index, marked) = (self.index.clone(), ids.clone());
            let node = self.node.clone();
            blocking(move || Ok(index.set_tier(&marked, Tier::Hot, Some(&node))?)).await?;
            recalled.extend(ids);
        }
        // back in the access queue: it ages again from now
        let (index, study) = (self.index.clone(), study_uid.to_string());
        blocking(move || Ok(index.record_access(&[study], unix_ms_now())?)).await?;
        Ok(MoveReport {
            study_uid: study_uid.to_string(),
            objects_recalled: recalled.len(),
            ..Default::default()
        })
    }

    /// Moves one pack to `class` in place (S3 only) and records it.
    pub async fn set_pack_class(&self, pack: &ObjectId, class: &str) -> Result<(), TieringError> {
        let (index, id) = (self.index.clone(), *pack);
        let Some(mut record) = blocking(move || Ok(index.pack(&id)?)).await? else {
            return Err(TieringError::Other(format!("pack {pack} is not recorded")));
        };
        if record.storage_class == class {
            return Ok(());
        }
        self.cold.set_storage_class(pack, class).await?;
        record.storage_class = class.to_string();
        let (index, id) = (self.index.clone(), *pack);
        blocking(move || Ok(index.update_pack(&id, &record)?)).await
    }

    /// Moves a study's packs to `class` in place (S3 only) and records it.
    pub async fn move_to_archive_class(
        &self,
        study_uid: &str,
        class: &str,
    ) -> Result<usize, TieringError> {
        let index = self.index.clone();
        let packs = blocking(move || Ok(index.packs()?)).await?;
        let mut moved = 0;
        for (id, record) in packs.into_iter().filter(|(_, r)| r.study_uid == study_uid) {
            if record.storage_class != class {
                self.set_pack_class(&id, class).await?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// Splits objects into runs whose total size stays within `limit` (an object larger
/// than the limit gets a pack of its own).
fn split_by_size(
    objects: &[(ObjectId, ObjectRecord)],
    limit: u64,
) -> Vec<&[(ObjectId, ObjectRecord)]> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0u64);
    for (i, (_, r)) in objects.iter().enumerate() {
        if i > start && total + r.size > limit {
            out.push(&objects[start..i]);
            start = i;
            total = 0;
        }
        total += r.size;
    }
    if start < objects.len() {
        out.push(&objects[start..]);
    }
    out
}

/// The index record of a verified pack.
pub fn pack_record(
    manifest: &pack::Manifest,
    size: u64,
    storage_class: &str,
    created_ms: u64,
) -> PackRecord {
    PackRecord {
        study_uid: manifest.study_uid.clone(),
        size,
        members: manifest.members.len() as u64,
        original_bytes: manifest.members.iter().map(|m| m.original_size).sum(),
        storage_class: storage_class.to_string(),
        created_ms,
    }
}

/// A pack's members as the index records them; `attrs_of` supplies the attributes of
/// members that may not be indexed yet (reindex), `None` otherwise.
pub fn packed_objects(
    pack_id: &ObjectId,
    manifest: &pack::Manifest,
    attrs_of: &mut dyn FnMut(&pack::Member) -> Option<NewObject>,
) -> Vec<PackedObject> {
    manifest
        .members
        .iter()
        .filter_map(|m| {
            Some(PackedObject {
                id: ObjectId::from_hex(&m.blake3)?,
                copy: ColdCopy {
                    pack: pack_id.to_hex(),
                    offset: m.offset,
                    stored_size: m.stored_size,
                    compression: m.compression,
                },
                new: attrs_of(m),
            })
        })
        .collect()
}
