//! Retrieve: which instances a request names, their bytes from whichever tier holds
//! them, and the record of the retrieval.
//!
//! [`Archive::retrieve`] resolves a retrieve identifier (PATIENT level by PatientID;
//! STUDY, SERIES and IMAGE levels by UID lists, PS3.4 C.4.2.2.1) to the served version
//! of each instance (of a study filed under several patients, only the series of the
//! PatientID the identifier names, if it names one), and returns a [`Retrieval`]: the adapter (C-MOVE, C-GET, later
//! WADO-RS) sends the items its own way, reading each through
//! [`RetrievalReader::read`], and ends with [`Retrieval::finish`], which records the
//! studies' last access (for the tiering policy) and writes the audit record. A
//! retrieval dropped without `finish` (a broken association) is audited as interrupted.
//!
//! [`RetrievalReader::read`] returns an object's Part-10 bytes whole, checked against its
//! id; a large object sent as stored is streamed from a file instead — its hot file, or
//! its cold copy staged on hot disk ([`RetrievalReader::open`]) — in bounded memory.
//! Objects read from a remote cold tier come a pack window at a time: the members of
//! one pack the retrieval reads next, with one ranged GET ([`PackReadAhead`]).

use super::principal::Role;
use super::{blocking, Archive, Error, Principal};
use crate::dicom::coerce::PatientModule;
use crate::dicom::metadata::InstanceMetadata;
use crate::index::{Index, InstanceEntry};
use crate::query::{tags as qtags, Level, Query};
use crate::tiering::ahead::PackReadAhead;
use crate::tiering::reader::ObjectReader;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use strata_tiers::ObjectId;

/// One instance to send: its served object and what a C-STORE of it needs.
#[derive(Debug, Clone)]
pub struct RetrieveItem {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub id: ObjectId,
    /// The object's Part-10 size, bytes.
    pub size: u64,
    /// The identity its patient is known by now, when the hospital changed it since the
    /// object was stored (docs/patients.md): the data set goes out with its patient
    /// module coerced to it ([`RetrievalReader::read_item`]). `None`: sent as stored.
    pub patient: Option<Arc<PatientModule>>,
}

/// Reads the objects of a [`Retrieval`]; cheap to clone into sending tasks.
#[derive(Clone)]
pub struct RetrievalReader {
    reader: ObjectReader,
    /// The retrieval's pack windows ([`Retrieval::in_pack_order`]): cold members it
    /// reads next come with one GET.
    ahead: Option<Arc<PackReadAhead>>,
}

impl RetrievalReader {
    /// Whether the object can be read now, cheaply: a hot file, or one byte of its first
    /// cold copy (one small ranged GET, which also asks S3 to restore an archived
    /// pack: [`Error::is_pending_restore`] until it is back). Never reads the object.
    pub async fn probe(&self, id: &ObjectId) -> Result<(), Error> {
        Ok(self.reader.probe(id).await?)
    }

    /// The object's metadata record ([`InstanceMetadata`]: its data set without bulk
    /// data, as DICOM JSON), from the index: never reads or recalls the object. `None`
    /// for an object indexed without one (before records existed, or a data set
    /// dicom-object cannot read): read the object instead.
    pub async fn metadata(&self, id: &ObjectId) -> Result<Option<InstanceMetadata>, Error> {
        let (index, id) = (self.reader.index.clone(), *id);
        blocking(move || {
            index
                .instance_metadata(&id)?
                .map(|bytes| InstanceMetadata::decode(&bytes).map_err(Error::Internal))
                .transpose()
        })
        .await
    }

    /// The object's Part-10 bytes, from hot disk or its cold pack, checked against its
    /// id. An archived pack answers [`Error::is_pending_restore`].
    ///
    /// An object read from a remote cold tier comes from a window of its pack fetched
    /// with the members of the same pack this retrieval reads next ([`PackReadAhead`],
    /// after [`Retrieval::in_pack_order`]), else by itself.
    pub async fn read(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        match self.reader.find(id).await? {
            Ok(bytes) => Ok(bytes),
            Err(elsewhere) => self.read_elsewhere(id, elsewhere).await,
        }
    }

    /// An object not on this node's hot disk: from a pack window when one applies, else
    /// by itself ([`ObjectReader::read_elsewhere`]: the holder node, then every copy).
    async fn read_elsewhere(
        &self,
        id: &ObjectId,
        elsewhere: crate::tiering::reader::Elsewhere,
    ) -> Result<Vec<u8>, Error> {
        if let Some(ahead) = &self.ahead {
            if let Some(bytes) = ahead.read(&self.reader, id, &elsewhere).await {
                return Ok(bytes);
            }
        }
        Ok(Box::pin(self.reader.read_elsewhere(id, elsewhere)).await?)
    }

    /// The Part-10 bytes an item goes out with: [`RetrievalReader::read`], with the
    /// patient module coerced to the patient's current identity when it changed
    /// ([`crate::dicom::coerce`]: only group 0010 is re-encoded). An object that cannot
    /// be coerced (a malformed patient module) is an error rather than sent under an
    /// identity the hospital has replaced.
    pub async fn read_item(&self, item: &RetrieveItem) -> Result<Vec<u8>, Error> {
        let bytes = self.read(&item.id).await?;
        coerced_item(bytes, item).await
    }

    /// An item ready to go in `target`, read the cheapest way ([`Opened`]):
    /// - in its own syntax, an object larger than [`STREAM_ABOVE`] is a file to stream
    ///   its data set from, in bounded memory — its hot file after re-hashing it against
    ///   its id, or, when it is not on this node's hot disk, the object staged into a
    ///   tmp file on it, checked on the way ([`ObjectReader::stage_elsewhere`]; removed
    ///   when the [`StreamFile`] is dropped). An object whose patient is known by
    ///   another identity now goes with its header up to group 0011 coerced in memory
    ///   ([`StreamFile::head`], [`crate::dicom::coerce::coerce_file_head`]) and the
    ///   rest — the pixel data — streamed as stored;
    /// - anything else is read whole ([`RetrievalReader::read_item`]); a smaller hot
    ///   file is read, checked and coerced in the same blocking call that finds it (one
    ///   hand-off to the blocking pool per object, not two). Converting to `target` is
    ///   the caller's.
    ///
    /// A hot copy that does not check out is read whole from its other copies (the read
    /// says what is wrong). An error: no copy could be read (an archived pack answers
    /// [`Error::is_pending_restore`]), or the object cannot be coerced.
    pub async fn open(&self, item: &RetrieveItem, target: &str) -> Result<Opened, Error> {
        // read_item's future is boxed: nested in callers' futures, its depth overflowed
        // the compiler's layout recursion limit
        if target != item.transfer_syntax_uid {
            return Ok(Opened::Whole(Box::pin(self.read_item(item)).await?));
        }
        let (reader, index, id) = (self.reader.clone(), self.reader.index.clone(), item.id);
        let patient = item.patient.clone();
        enum Found {
            Whole(Vec<u8>),
            Hot(std::path::PathBuf, u64),
            /// Large, and not on this node's hot disk: staged from another node's, or
            /// from cold.
            Elsewhere,
            /// Small, and not on this node's hot disk: read whole from where it is.
            SmallElsewhere(crate::tiering::reader::Elsewhere),
            ReadWhole,
        }
        let found = blocking(move || {
            let path = reader.hot.path_of(&id);
            if let Ok(m) = std::fs::metadata(&path) {
                if m.len() <= STREAM_ABOVE {
                    return match crate::tiering::reader::read_hot_blocking(&reader.hot, &id) {
                        Some(bytes) => Ok(Found::Whole(coerced(bytes, patient.as_deref(), &id)?)),
                        None => Ok(Found::ReadWhole),
                    };
                }
                return Ok(match reader.hot.rehash_blocking(&id) {
                    Ok((actual, _)) if actual == id => Found::Hot(path, m.len()),
                    _ => Found::ReadWhole,
                });
            }
            Ok(match index.object(&id)? {
                Some(r) if r.hot_on(&reader.node) => Found::ReadWhole,
                Some(r) if r.size > STREAM_ABOVE => Found::Elsewhere,
                Some(r) => Found::SmallElsewhere(reader.elsewhere_of(r)),
                None => Found::ReadWhole,
            })
        })
        .await?;
        let (path, size, staged) = match found {
            Found::Whole(bytes) => return Ok(Opened::Whole(bytes)),
            Found::ReadWhole => return Ok(Opened::Whole(Box::pin(self.read_item(item)).await?)),
            Found::SmallElsewhere(elsewhere) => {
                let bytes = Box::pin(self.read_elsewhere(&item.id, elsewhere)).await?;
                return Ok(Opened::Whole(coerced_item(bytes, item).await?));
            }
            Found::Hot(path, size) => (path, size, None),
            Found::Elsewhere => {
                let tmp = self.reader.stage_elsewhere(&item.id).await?;
                (tmp.path().to_path_buf(), tmp.len(), Some(tmp))
            }
        };
        let (head_of, patient, id) = (path.clone(), item.patient.clone(), item.id);
        let (dataset_start, head, offset) = blocking(move || match patient {
            Some(patient) => {
                crate::dicom::coerce::coerce_file_head(&head_of, &patient).map_err(|e| {
                    Error::Internal(format!(
                        "object {id}: cannot coerce its patient module: {e}"
                    ))
                })
            }
            None => {
                let (meta, _) = crate::dicom::part10::read_file_meta_blocking(&head_of)
                    .map_err(Error::Internal)?;
                let start = meta.dataset_offset as u64;
                Ok((start, Vec::new(), start))
            }
        })
        .await?;
        Ok(Opened::File(StreamFile {
            path,
            dataset_start,
            head,
            offset,
            len: size - offset,
            _staged: staged,
        }))
    }
}

/// `bytes` (a Part-10 object) with its patient module coerced to `patient`, when given
/// (blocking; see [`RetrievalReader::read_item`]).
fn coerced(
    bytes: Vec<u8>,
    patient: Option<&PatientModule>,
    id: &ObjectId,
) -> Result<Vec<u8>, Error> {
    let Some(patient) = patient else {
        return Ok(bytes);
    };
    crate::dicom::coerce::coerce_part10(&bytes, patient).map_err(|e| {
        Error::Internal(format!(
            "object {id}: cannot coerce its patient module: {e}"
        ))
    })
}

/// An item's Part-10 `bytes` with its patient module coerced ([`coerced`]) on the
/// blocking pool when its patient's identity changed; as they are otherwise.
async fn coerced_item(bytes: Vec<u8>, item: &RetrieveItem) -> Result<Vec<u8>, Error> {
    if item.patient.is_none() {
        return Ok(bytes);
    }
    let (patient, id) = (item.patient.clone(), item.id);
    blocking(move || coerced(bytes, patient.as_deref(), &id)).await
}

/// An item as [`RetrievalReader::open`] found it.
pub enum Opened {
    /// A large object in its own syntax: its data set streamed from a checked file.
    File(StreamFile),
    /// The object's Part-10 bytes, checked against its id (patient module coerced when
    /// the patient's identity changed), still in its stored syntax.
    Whole(Vec<u8>),
}

/// A file a large object's data set is streamed from: [`StreamFile::head`], then `len`
/// bytes of the file from `offset`. The object as sent in Part-10 form is the file's
/// first `dataset_start` bytes (its meta group), `head`, then that range.
pub struct StreamFile {
    pub path: std::path::PathBuf,
    /// Where the data set starts in the file.
    pub dataset_start: u64,
    /// Data-set bytes sent in place of the file's from `dataset_start` to `offset`: the
    /// header with its patient module coerced; empty when the object goes as stored
    /// (`offset` is then `dataset_start`).
    pub head: Vec<u8>,
    pub offset: u64,
    pub len: u64,
    /// The tmp file of a staged cold object, removed when this is dropped.
    _staged: Option<strata_tiers::TmpObject>,
}

/// How many items of a retrieval are prepared ahead of the one being sent, and how many
/// bytes of them at most (an item larger than that is prepared alone).
pub const READ_AHEAD: usize = 4;
pub const READ_AHEAD_BYTES: u64 = 16 << 20;

/// Prepares the items of a retrieval a few ahead of the one being sent (reading them —
/// hot: re-hashed; cold: fetched, decompressed, verified — and whatever the adapter
/// does next), so that reading overlaps sending: at most [`READ_AHEAD`] items and
/// [`READ_AHEAD_BYTES`] of them (by the weight the adapter gives each: its size as
/// stored, or the whole budget for one it converts, whose size it cannot know ahead)
/// in flight, each on its own task. Items come out in order. Dropping it stops the
/// preparations still ahead.
pub struct ReadAhead<T> {
    items: Arc<Vec<RetrieveItem>>,
    weights: Vec<u64>,
    prepare: Box<dyn Fn(RetrieveItem) -> futures::future::BoxFuture<'static, T> + Send + Sync>,
    ahead: std::collections::VecDeque<(usize, tokio::task::JoinHandle<T>)>,
    next: usize,
    in_flight: u64,
}

impl<T: Send + 'static> ReadAhead<T> {
    /// Over `items`, in order, each weighing `weight(item)` bytes and made into a `T` by
    /// `prepare`.
    pub fn new<F, Fut>(
        items: Arc<Vec<RetrieveItem>>,
        weight: impl Fn(&RetrieveItem) -> u64,
        prepare: F,
    ) -> Self
    where
        F: Fn(RetrieveItem) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        ReadAhead {
            weights: items.iter().map(weight).collect(),
            items,
            prepare: Box::new(move |item| Box::pin(prepare(item))),
            ahead: std::collections::VecDeque::new(),
            next: 0,
            in_flight: 0,
        }
    }

    /// The next item's index and what `prepare` made of it; `None` after the last. An
    /// `Err` says why its task ended without an answer (it panicked).
    pub async fn next(&mut self) -> Option<(usize, Result<T, String>)> {
        let items = self.items.clone();
        while self.next < items.len()
            && self.ahead.len() < READ_AHEAD
            && (self.ahead.is_empty()
                || self.in_flight + self.weights[self.next] <= READ_AHEAD_BYTES)
        {
            let item = items[self.next].clone();
            self.in_flight += self.weights[self.next];
            self.ahead
                .push_back((self.next, tokio::spawn((self.prepare)(item))));
            self.next += 1;
        }
        let (i, handle) = self.ahead.pop_front()?;
        self.in_flight -= self.weights[i];
        Some((
            i,
            handle.await.map_err(|e| format!("read task failed: {e}")),
        ))
    }
}

impl<T> Drop for ReadAhead<T> {
    fn drop(&mut self) {
        for (_, handle) in &self.ahead {
            handle.abort();
        }
    }
}

/// Objects larger than this (bytes) are streamed from their hot file when they go as
/// stored, instead of read whole: a multi-frame of gigabytes costs a few PDVs of memory.
pub const STREAM_ABOVE: u64 = 64 << 20;

/// A retrieval in progress; see the module docs.
pub struct Retrieval {
    archive: Archive,
    principal: Principal,
    what: String,
    items: Arc<Vec<RetrieveItem>>,
    /// Pack windows, for a retrieval that sends everything it names
    /// ([`Retrieval::in_pack_order`]).
    ahead: Option<Arc<PackReadAhead>>,
    finished: bool,
}

impl Archive {
    /// Resolves `query` (a C-MOVE or C-GET identifier, or its URL equivalent) for
    /// `principal`; `what` describes the request in the audit record ("C-MOVE to
    /// ARCHIVE2", "C-GET"). An identifier that names nothing it can resolve is
    /// [`Error::InvalidRequest`]. When it names instances, a `begin_transfer` audit record
    /// is written first; if that fails and `[audit] fail_closed`, the retrieval is refused
    /// with [`Error::Audit`] (nothing is sent).
    pub async fn retrieve(
        &self,
        principal: &Principal,
        query: &Query,
        what: &str,
    ) -> Result<Retrieval, Error> {
        self.authorize(principal, Role::Viewer, "retrieve", &[])?;
        let (index, q) = (self.index.clone(), query.clone());
        let patient = principal.grant.patient.clone();
        let items = blocking(move || resolve(index.as_ref(), &q, patient.as_deref())).await?;
        if !items.is_empty() {
            // on record before any pixel data goes (fail closed: [audit] fail_closed)
            let studies: BTreeSet<&str> = items.iter().map(|i| i.study_uid.as_str()).collect();
            self.audit_before_access(
                principal,
                studies.into_iter().map(str::to_string).collect(),
                format!("{what}: {} instances", items.len()),
            )
            .await?;
        }
        Ok(Retrieval {
            archive: self.clone(),
            principal: principal.clone(),
            what: what.to_string(),
            ahead: None,
            items: Arc::new(items),
            finished: false,
        })
    }
}

impl Retrieval {
    pub fn items(&self) -> &Arc<Vec<RetrieveItem>> {
        &self.items
    }

    /// For an adapter that sends every item (WADO-RS retrieve and rendered, C-MOVE,
    /// C-GET): each run of one study's items in the order its packs hold them (by object
    /// id, docs/formats.md), and readers that read cold members a pack window at a time
    /// ([`PackReadAhead`]), so that a study read from a remote cold tier goes through
    /// each pack front to back, one ranged GET per window. Without it (a thumbnail,
    /// metadata) items keep the index's order and cold members are read singly.
    pub fn in_pack_order(mut self) -> Self {
        let mut items = self.items.as_ref().clone();
        for study in items.chunk_by_mut(|a, b| a.study_uid == b.study_uid) {
            study.sort_by_key(|i| i.id);
        }
        self.ahead = Some(Arc::new(PackReadAhead::new(
            items.iter().map(|i| i.id).collect(),
            STREAM_ABOVE,
        )));
        self.items = Arc::new(items);
        self
    }

    pub fn reader(&self) -> RetrievalReader {
        RetrievalReader {
            reader: self.archive.reader.clone(),
            ahead: self.ahead.clone(),
        }
    }

    /// The distinct studies of the items.
    pub fn studies(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.items.iter().map(|i| i.study_uid.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Ends the retrieval: records the studies' last access and the audit record.
    pub async fn finish(mut self, completed: usize, failed: usize) {
        self.finished = true;
        let studies = self.studies();
        let index = self.archive.index.clone();
        let at = crate::index::rocks::unix_ms_now();
        let touched = studies.clone();
        match tokio::task::spawn_blocking(move || index.record_access(&touched, at)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record a study's last access"),
            Err(e) => tracing::warn!(error = %e, "could not record a study's last access"),
        }
        let outcome = format!("{}: {completed} sent, {failed} failed", self.what);
        self.archive
            .audit(&self.principal, "retrieve", studies, outcome)
            .await;
    }
}

impl Drop for Retrieval {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = format!("{}: interrupted", self.what);
            self.archive
                .audit_on_drop(&self.principal, "retrieve", self.studies(), outcome);
        }
    }
}

/// The served version of every instance the identifier names.
/// Who an entry's patient is now: its current PatientID, whether its study is filed
/// under several patients (a patient conflict), and the identity its data set is coerced
/// to on the way out when the hospital changed it since the object was stored.
pub(crate) struct EntryPatient {
    pub current: String,
    /// The current IssuerOfPatientID (empty: unknown).
    pub current_issuer: String,
    pub conflicted: bool,
    pub coerce_to: Option<Arc<PatientModule>>,
}

/// [`EntryPatient`] of each entry (each study record and patient link read once).
pub(crate) fn entry_patients(
    index: &dyn Index,
    entries: &[InstanceEntry],
) -> Result<Vec<EntryPatient>, Error> {
    let mut records: BTreeMap<String, Option<crate::index::StudyRecord>> = BTreeMap::new();
    let mut links: BTreeMap<String, Option<crate::index::PatientLink>> = BTreeMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if !records.contains_key(&e.study_uid) {
            records.insert(e.study_uid.clone(), index.study(&e.study_uid)?);
        }
        let (stored, conflicted) = match records.get(&e.study_uid) {
            Some(Some(study)) => (
                study.patient_of_series(&e.series_uid).key(),
                !study.other_patients.is_empty(),
            ),
            _ => (String::new(), false),
        };
        if !links.contains_key(&stored) {
            let (pid, issuer) = crate::index::split_patient_key(&stored);
            links.insert(stored.clone(), crate::query::link_of(index, pid, issuer)?);
        }
        let link = links[&stored].clone();
        let (pid, issuer) = crate::index::split_patient_key(&stored);
        out.push(EntryPatient {
            current: link
                .as_ref()
                .map_or_else(|| pid.to_string(), |l| l.patient_id.clone()),
            current_issuer: link
                .as_ref()
                .map_or_else(|| issuer.to_string(), |l| l.issuer.clone()),
            conflicted,
            coerce_to: link.map(|l| {
                Arc::new(PatientModule {
                    patient_id: l.patient_id,
                    issuer: l.issuer,
                    patient_name: l.patient_name,
                    patient_birth_date: l.patient_birth_date,
                    patient_sex: l.patient_sex,
                })
            }),
        });
    }
    Ok(out)
}

/// The instances `query` names; with `patient` (a patient-restricted caller), only that
/// patient's — another patient's study resolves to nothing, as if it were not held.
fn resolve(
    index: &dyn Index,
    query: &Query,
    patient: Option<&str>,
) -> Result<Vec<RetrieveItem>, Error> {
    let value = |t| {
        query
            .keys
            .iter()
            .find(|k| k.tag == t)
            .map(|k| k.value.clone())
            .filter(|v| !v.is_empty())
    };
    let list = |t| value(t).map(|v| v.split('\\').map(str::to_string).collect::<Vec<_>>());
    let needs = |what: &str| Error::InvalidRequest(what.to_string());
    let mut entries: Vec<InstanceEntry> = Vec::new();
    match query.level {
        Level::Patient => {
            let pid =
                value(qtags::PATIENT_ID).ok_or_else(|| needs("PATIENT level needs a PatientID"))?;
            for study in crate::query::studies_of_patient(index, &pid)? {
                entries.extend(index.instances_of_study(&study)?);
            }
        }
        Level::Study => {
            for study in list(qtags::STUDY_INSTANCE_UID)
                .ok_or_else(|| needs("STUDY level needs StudyInstanceUID"))?
            {
                entries.extend(index.instances_of_study(&study)?);
            }
        }
        Level::Series => {
            let wanted: BTreeSet<String> = list(qtags::SERIES_INSTANCE_UID)
                .ok_or_else(|| needs("SERIES level needs SeriesInstanceUID"))?
                .into_iter()
                .collect();
            // the study the identifier names (PS3.4 C.4.2.2.1: the unique keys above
            // the level); only a relational request without one is looked up — a series
            // UID may be in several studies (a corrected copy), each kept apart
            let studies: BTreeSet<String> = match list(qtags::STUDY_INSTANCE_UID) {
                Some(studies) => studies.into_iter().collect(),
                None => wanted
                    .iter()
                    .filter_map(|s| index.series(s).ok().flatten().map(|(study, _)| study))
                    .collect(),
            };
            for study in studies {
                entries.extend(
                    index
                        .instances_of_study(&study)?
                        .into_iter()
                        .filter(|i| wanted.contains(&i.series_uid)),
                );
            }
        }
        Level::Image => {
            let sops = list(qtags::SOP_INSTANCE_UID)
                .ok_or_else(|| needs("IMAGE level needs SOPInstanceUID"))?;
            match list(qtags::STUDY_INSTANCE_UID) {
                // within the named study (and series): never the same SOP Instance UID
                // held by another study
                Some(studies) => {
                    let wanted: BTreeSet<&String> = sops.iter().collect();
                    let series: Option<BTreeSet<String>> =
                        list(qtags::SERIES_INSTANCE_UID).map(|s| s.into_iter().collect());
                    for study in studies {
                        entries.extend(index.instances_of_study(&study)?.into_iter().filter(|i| {
                            wanted.contains(&i.sop_instance_uid)
                                && series.as_ref().is_none_or(|s| s.contains(&i.series_uid))
                        }));
                    }
                }
                None => {
                    for sop in sops {
                        entries.extend(index.instance(&sop)?);
                    }
                }
            }
        }
    }
    // instances an IOCM rejection note hid are not sent (PS3.3 A.35.4; IHE IOCM)
    let mut rejected: BTreeMap<String, std::collections::HashSet<(String, String)>> =
        BTreeMap::new();
    for e in &entries {
        if !rejected.contains_key(&e.study_uid) {
            rejected.insert(
                e.study_uid.clone(),
                crate::query::rejected_of(index, &e.study_uid)?,
            );
        }
    }
    entries.retain(|e| {
        !rejected[&e.study_uid].contains(&(e.series_uid.clone(), e.sop_instance_uid.clone()))
    });
    let patients = entry_patients(index, &entries)?;
    let mut entries: Vec<(InstanceEntry, EntryPatient)> =
        entries.into_iter().zip(patients).collect();
    if let Some(patient) = patient {
        entries.retain(|(_, p)| p.current == patient);
    }
    // A study filed under several patients (a patient conflict, `StudyRecord::
    // other_patients`): an identifier naming a PatientID gets only that patient's series,
    // as C-FIND showed them. Other studies are sent whole, as before.
    if let Some(pid) = value(qtags::PATIENT_ID) {
        entries.retain(|(_, p)| !p.conflicted || p.current == pid);
    }
    // A PATIENT-level identifier names one patient: with IssuerOfPatientID, only that
    // issuer's (or an unknown issuer's); without it, a PatientID that several issuers'
    // patients share is refused rather than sending two patients' images as one.
    if query.level == Level::Patient {
        let pid = value(qtags::PATIENT_ID).unwrap_or_default();
        // (a study stored under the PatientID but merged away since is another's now)
        entries.retain(|(_, p)| p.current == pid);
        match value(qtags::ISSUER_OF_PATIENT_ID) {
            Some(issuer) => {
                entries.retain(|(_, p)| crate::index::issuers_agree(&p.current_issuer, &issuer))
            }
            None => {
                let issuers: BTreeSet<&str> = entries
                    .iter()
                    .filter(|(_, p)| !p.current_issuer.is_empty())
                    .map(|(_, p)| p.current_issuer.as_str())
                    .collect();
                if issuers.len() > 1 {
                    return Err(Error::InvalidRequest(format!(
                        "PatientID {pid} names patients of several issuers ({}): give IssuerOfPatientID (0010,0021)",
                        issuers.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    }
    entries
        .into_iter()
        .map(|(i, p)| {
            let current = i
                .record
                .current()
                .ok_or_else(|| Error::Internal("instance without versions".into()))?;
            Ok(RetrieveItem {
                patient: p.coerce_to,
                id: ObjectId::from_hex(&current.id)
                    .ok_or_else(|| Error::Internal("malformed object id in the index".into()))?,
                size: current.size,
                study_uid: i.study_uid,
                series_uid: i.series_uid,
                sop_instance_uid: i.sop_instance_uid,
                sop_class_uid: i.record.sop_class_uid,
                transfer_syntax_uid: i.record.transfer_syntax_uid,
            })
        })
        .collect()
}
