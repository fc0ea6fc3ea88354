//! Index record types and their versioned encoding.
//!
//! Every value is stored as one format-version byte followed by the record's JSON. A
//! reader accepts each version it knows (only 1 so far) and refuses others with a clear
//! error instead of guessing. JSON keeps records inspectable with `ldb`; they are small.
//! Within a version, fields are only ever added, with a default for records written
//! before them (`ObjectRecord::cold`); a change of meaning takes a new version.

use crate::dicom::header::InstanceAttrs;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use strata_tiers::ObjectId;

/// The current record format version.
pub const RECORD_VERSION: u8 = 1;

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    serde_json::to_writer(&mut out, record).expect("index records serialise");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&1, json)) => serde_json::from_slice(json).map_err(|e| format!("bad v1 record: {e}")),
        Some((v, _)) => Err(format!("unknown record format version {v}")),
        None => Err("empty record".into()),
    }
}

/// How a member is stored in a study pack. Defined here rather than in
/// `tiering::pack` (which re-exports it) so that the index does not import the tiering
/// layer that imports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// Whether an object has a hot copy. Cold copies are listed in [`ObjectRecord::cold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The object's file is on hot disk (it may also have cold copies).
    Hot,
    /// Only cold copies remain.
    Cold,
}

/// Where a copy of an object sits in a cold study pack: one ranged read away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdCopy {
    /// Pack id (64 hex digits, the blake3 of the pack).
    pub pack: String,
    /// Offset of the member's data in the pack.
    pub offset: u64,
    pub stored_size: u64,
    pub compression: Compression,
}

impl ColdCopy {
    pub fn pack_id(&self) -> Option<ObjectId> {
        ObjectId::from_hex(&self.pack)
    }
}

/// A study pack in the cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    pub study_uid: String,
    pub size: u64,
    pub members: u64,
    /// Sum of the members' Part-10 sizes.
    pub original_bytes: u64,
    /// Storage class asked for at upload or by a later archive move (`STANDARD` when none).
    pub storage_class: String,
    pub created_ms: u64,
}

/// What remains of a deleted study: enough to tell a deletion from a loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub study_uid: String,
    pub patient_id: String,
    /// (series UID, SOP Instance UID, object id) of every deleted object version.
    pub objects: Vec<(String, String, String)>,
    /// Cold packs of the study, deleted with it.
    pub packs: Vec<String>,
    /// Who asked (CLI user, or "retention").
    pub who: String,
    pub why: String,
    pub deleted_at_ms: u64,
    /// Some instances of a study that lives on (IOCM rejection notes asking for their
    /// deletion), not the whole study: `objects` are those instances' versions, `packs`
    /// every pack the study had (its other objects were recalled to hot disk first, and
    /// age to cold again by the tiering rules). Absent: the whole study.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl Tombstone {
    /// Its key in the index's `tombstones` family: the study UID for a whole study;
    /// `study\0deleted_at_ms` (20 digits) for some of its instances, so that a study
    /// keeps every partial deletion it had beside a later whole one.
    pub fn key(&self) -> Vec<u8> {
        match self.partial {
            false => self.study_uid.as_bytes().to_vec(),
            true => format!("{}\0{:020}", self.study_uid, self.deleted_at_ms).into_bytes(),
        }
    }
}

/// When an object was last re-hashed by the scrubber, and what came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixityRecord {
    pub verified_at_ms: u64,
    pub ok: bool,
    /// `hot` or the pack id the copy was read from, and what was wrong, if anything.
    pub detail: String,
}

/// A legal hold: the study cannot be deleted while it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub who: String,
    pub why: String,
    pub since_ms: u64,
}

/// Running totals over the objects, the packs and the access queue, updated by every
/// index write in the same atomic batch as the records it changes: `strata tier status`
/// and the per-tier metrics read one record instead of scanning the index. An index
/// written before them gets them from one scan when opened for writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTotals {
    /// Objects with a hot file, and their Part-10 bytes.
    pub hot_objects: u64,
    pub hot_bytes: u64,
    /// Objects with only cold copies, and their Part-10 bytes.
    pub cold_only_objects: u64,
    pub cold_only_bytes: u64,
    /// Objects with at least one recorded cold copy (hot or not).
    pub objects_with_cold_copy: u64,
    /// Recorded packs and their bytes in the cold tier.
    pub packs: u64,
    pub pack_bytes: u64,
    /// Entries in the tiering policy's access queue (one per study).
    pub queued_studies: u64,
}

impl TierTotals {
    /// Adds (`sign` 1) or removes (`sign` -1) one object's share, as signed deltas.
    pub fn object_delta(record: &ObjectRecord, sign: i64) -> [i64; 8] {
        let size = record.size as i64 * sign;
        let hot = record.tier == Tier::Hot;
        [
            sign * hot as i64,
            if hot { size } else { 0 },
            sign * !hot as i64,
            if hot { 0 } else { size },
            sign * !record.cold.is_empty() as i64,
            0,
            0,
            0,
        ]
    }

    /// One pack's share, as signed deltas.
    pub fn pack_delta(pack: &PackRecord, sign: i64) -> [i64; 8] {
        [0, 0, 0, 0, 0, sign, pack.size as i64 * sign, 0]
    }

    /// Applies signed deltas (never below zero).
    pub fn apply(&mut self, delta: &[i64; 8]) {
        let fields = [
            &mut self.hot_objects,
            &mut self.hot_bytes,
            &mut self.cold_only_objects,
            &mut self.cold_only_bytes,
            &mut self.objects_with_cold_copy,
            &mut self.packs,
            &mut self.pack_bytes,
            &mut self.queued_studies,
        ];
        for (field, d) in fields.into_iter().zip(delta) {
            *field = field.saturating_add_signed(*d);
        }
    }
}

/// An object recorded as a member of a pack. `new` carries the object's attributes for
/// `reindex`, when the object may not be indexed yet.
#[derive(Debug, Clone)]
pub struct PackedObject {
    pub id: ObjectId,
    pub copy: ColdCopy,
    pub new: Option<NewObject>,
}

/// When and from whom an object came. Not derivable from the object; lost on reindex
/// (which records the file's modification time and `calling_ae = "reindex"`, or
/// `"recovered"` for objects adopted by start-up recovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub received_at_ms: u64,
    /// Calling AE title, or `import` / `reindex` for objects that did not come over DICOM.
    pub calling_ae: String,
    /// Peer address (`ip:port`) or the imported file's path.
    pub source: String,
    /// The node that received it (`[cluster] node_id`), whose hot disk its file went to;
    /// empty in records written before nodes were named.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// A persisted object to be indexed.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub id: ObjectId,
    pub size: u64,
    pub attrs: InstanceAttrs,
    pub provenance: Provenance,
    /// The data-set hash (64 hex digits, `docs/formats.md`), when ingest computed it: for
    /// a SOP Instance UID already stored under other bytes.
    pub dataset: Option<String>,
    /// The object's metadata record ([`crate::dicom::metadata`], encoded), kept beside
    /// its object record; `None` when it could not be captured.
    pub metadata: Option<Vec<u8>>,
    /// Queue the object, in the same commit, for a replica in the cold tier by the node
    /// that received it ([`crate::index::Placement::replication_queue`]).
    pub replicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new instance.
    Stored,
    /// The same bytes were already stored; nothing changed.
    AlreadyPresent,
    /// A known SOP Instance UID with a different data set: kept as a new version.
    NewVersion,
    /// A known SOP Instance UID with other bytes but the same data set (data-set hash) as
    /// the stored version `as_id`: the bytes are not kept, no version is made, the served
    /// version is unchanged. Said by ingest; the index never returns it.
    SameDataSet { as_id: ObjectId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub size: u64,
    pub tier: Tier,
    /// Verified copies in cold packs (absent in records written before tiering: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold: Vec<ColdCopy>,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub provenance: Provenance,
    /// While `tier` is `Hot`: the node whose hot disk holds the file (`[cluster]
    /// node_id`). `None` in records written before nodes were named: the archive's one
    /// node. Other nodes fetch it from that node (docs/scale-out.md "Reading another
    /// node's objects").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_node: Option<String>,
    /// A verified replica of the object itself is in the cold tier
    /// (`objects/ab/<id>.dcm`, the Part-10 file as stored): written within a bounded lag
    /// of the store on nodes that replicate (docs/scale-out.md "Durability across
    /// nodes"), deleted once the object is in a recorded pack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
}

impl ObjectRecord {
    /// Whether the object's hot file is on `node`'s hot disk by this record: hot, and
    /// held by `node` (or by no node named, the one node of an archive).
    pub fn hot_on(&self, node: &str) -> bool {
        self.tier == Tier::Hot && self.hot_node.as_deref().is_none_or(|n| n == node)
    }

    /// The other node whose hot disk holds the file, when it is hot there and not on
    /// `node`.
    pub fn hot_elsewhere(&self, node: &str) -> Option<&str> {
        match (&self.tier, self.hot_node.as_deref()) {
            (Tier::Hot, Some(holder)) if holder != node => Some(holder),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    /// Object id (64 hex digits).
    pub id: String,
    pub size: u64,
    pub received_at_ms: u64,
    /// The data-set hash (64 hex digits), when computed at ingest (absent in records
    /// written before it, and for a first version nothing was compared with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub sop_class_uid: String,
    pub instance_number: String,
    pub transfer_syntax_uid: String,
    /// Every kept version, oldest first; the last one is served.
    pub versions: Vec<VersionRef>,
}

impl InstanceRecord {
    pub fn current(&self) -> Option<&VersionRef> {
        self.versions.last()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub study_uid: String,
    pub modality: String,
    pub series_number: String,
    pub series_description: String,
    /// Distinct SOP Instance UIDs.
    pub instances: u64,
    /// Bytes of every kept object version.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub patient_id: String,
    /// IssuerOfPatientID (0010,0021) of the study's own patient: from the data set, else
    /// the configured default of the sender (docs/patients.md); empty when unknown, and in
    /// records written before it until the start-up migration filled it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_of_patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_id: String,
    pub study_description: String,
    pub referring_physician_name: String,
    /// ModalitiesInStudy, sorted, distinct.
    pub modalities: Vec<String>,
    pub series: u64,
    /// Distinct SOP Instance UIDs.
    pub instances: u64,
    /// Stored objects (instances plus extra versions).
    pub objects: u64,
    pub bytes: u64,
    /// Other patients some of the study's series were sent under: a **patient conflict**
    /// (PS3.3 C.7.2.1: a study belongs to one patient). The record's own `patient_*`
    /// fields are the identity the study was first received with; each series whose
    /// first instance named another PatientID is listed here under that identity, and
    /// stays findable by it (`docs/conformance-dimse.md`, "Patient conflicts"). Empty
    /// for most studies, and in records written before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_patients: Vec<OtherPatient>,
}

impl StudyRecord {
    /// The identity a series was received under: one of [`StudyRecord::other_patients`]
    /// when it lists the series, else the study's own.
    pub fn patient_of_series(&self, series_uid: &str) -> PatientIdentity<'_> {
        self.other_patients
            .iter()
            .find(|o| o.series.iter().any(|s| s == series_uid))
            .map(OtherPatient::identity)
            .unwrap_or_else(|| self.identity())
    }

    /// The study's own (first received) patient identity.
    pub fn identity(&self) -> PatientIdentity<'_> {
        PatientIdentity {
            patient_id: &self.patient_id,
            issuer: &self.issuer_of_patient_id,
            patient_name: &self.patient_name,
            patient_birth_date: &self.patient_birth_date,
            patient_sex: &self.patient_sex,
        }
    }
}

/// A patient identity (the Patient module's matching keys) borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatientIdentity<'a> {
    pub patient_id: &'a str,
    /// IssuerOfPatientID; empty when unknown.
    pub issuer: &'a str,
    pub patient_name: &'a str,
    pub patient_birth_date: &'a str,
    pub patient_sex: &'a str,
}

impl PatientIdentity<'_> {
    /// The key of this identity among patients ([`patient_key`]).
    pub fn key(&self) -> String {
        patient_key(self.patient_id, self.issuer)
    }
}

/// The key of the patient (PatientID, IssuerOfPatientID) in the index's patient links:
/// the PatientID alone when the issuer is unknown (empty), else `PatientID\Issuer`.
/// Neither value can hold a backslash (both are LO, PS3.5 §6.2: `\` is the value
/// delimiter), so the key is unambiguous; a patient without an issuer keeps the key it
/// had before issuers were part of it.
pub fn patient_key(patient_id: &str, issuer: &str) -> String {
    match issuer.is_empty() {
        true => patient_id.to_string(),
        false => format!("{patient_id}\\{issuer}"),
    }
}

/// The (PatientID, IssuerOfPatientID) of a [`patient_key`].
pub fn split_patient_key(key: &str) -> (&str, &str) {
    key.split_once('\\').unwrap_or((key, ""))
}

/// Whether two issuers of one PatientID can name the same patient: equal, or either
/// unknown (empty). Two different known issuers are two patients.
pub fn issuers_agree(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b
}

/// A second patient a study's series arrived under (see [`StudyRecord::other_patients`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherPatient {
    pub patient_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_of_patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    /// Series Instance UIDs received under this identity, in arrival order.
    pub series: Vec<String>,
    /// When the first of them was received (ms since the Unix epoch).
    pub first_seen_ms: u64,
}

impl OtherPatient {
    pub fn identity(&self) -> PatientIdentity<'_> {
        PatientIdentity {
            patient_id: &self.patient_id,
            issuer: &self.issuer_of_patient_id,
            patient_name: &self.patient_name,
            patient_birth_date: &self.patient_birth_date,
            patient_sex: &self.patient_sex,
        }
    }
}

/// The current identity of patients received under a PatientID that the hospital has
/// since corrected, merged away or renamed (HL7 ADT A08/A31/A40/A47,
/// `strata patient merge`): the stored objects keep the identity they arrived with;
/// queries answer with this one (docs/patients.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientLink {
    /// The PatientID the patient is known by now (the survivor of a merge, the new ID
    /// of a change; the same ID after a demographics update).
    pub patient_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    /// When the link was made (ms since the epoch), and the HL7 message control id (or
    /// the CLI's request) that made it.
    pub changed_at_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub control_id: String,
}

/// An instance rejected by an IHE IOCM rejection note (a Key Object Selection whose
/// title is one of the rejection codes): hidden from query and retrieve; the stored
/// object stays (docs/patients.md "Rejection notes").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// The note's title, CID 7011: `113001` (Rejected for Quality Reasons), `113037`
    /// (Rejected for Patient Safety Reasons), `113038` (Incorrect Modality Worklist
    /// Entry), `113039` (Data Retention Policy Expired); scheme DCM.
    pub code: String,
    pub meaning: String,
    /// The SOP Instance UID of the rejection note.
    pub note: String,
    pub rejected_at_ms: u64,
    /// Who sent the note (the caller's name).
    pub by: String,
}

/// A node of the archive (`strata serve` on one machine) as it last said it was alive:
/// the nodes sharing one index each keep theirs (`strata cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// The build (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When this run of the node started, and when it last said it was alive (ms since
    /// the Unix epoch).
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    /// How often it says so (ms): a node silent for three of these is down.
    pub heartbeat_interval_ms: u64,
    /// Its DICOM and HTTP ports (as configured).
    pub dicom_port: u16,
    pub http_port: u16,
    /// Bytes in use and free on its hot disk's file system.
    pub hot_used_bytes: u64,
    pub hot_free_bytes: u64,
    /// Whether it stopped cleanly (SIGTERM) rather than went silent.
    #[serde(default)]
    pub stopped: bool,
    /// The base URL other nodes reach its HTTP port at (`[cluster] advertise_url`);
    /// empty in records of builds before it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Objects it received that have no replica in the cold tier yet, and how long the
    /// oldest has waited (ms), as of this heartbeat (docs/scale-out.md).
    #[serde(default)]
    pub replication_pending: u64,
    #[serde(default)]
    pub replication_lag_ms: u64,
}

/// A node's lease on a job (a study to move to cold, the scrubber's cycle), in CF
/// `leases` keyed by the job's name ([`crate::index::WorkQueue::claim`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub node: String,
    /// When the node first took it, and until when it holds it (ms since the epoch).
    pub taken_ms: u64,
    pub until_ms: u64,
}

impl NodeRecord {
    /// Whether the node counts as alive at `now_ms`: not stopped, and heard from within
    /// three heartbeat intervals.
    pub fn alive(&self, now_ms: u64) -> bool {
        !self.stopped
            && now_ms.saturating_sub(self.heartbeat_ms) <= 3 * self.heartbeat_interval_ms.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRecord {
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub studies: u64,
}

/// An instance with its place in the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEntry {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub record: InstanceRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 study record as written by format version 1; it must keep decoding.
    #[test]
    fn v1_study_record_decodes() {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(
            br#"{"patient_id":"P1","patient_name":"DOE^JANE","patient_birth_date":"19700101","patient_sex":"F","study_date":"20240102","study_time":"101010","accession_number":"A1","study_id":"S1","study_description":"CT","referring_physician_name":"","modalities":["CT"],"series":1,"instances":2,"objects":3,"bytes":100}"#,
        );
        let study: StudyRecord = decode(&bytes).unwrap();
        assert_eq!(study.patient_name, "DOE^JANE");
        assert_eq!(study.objects, 3);
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = encode(&Tier::Hot);
        bytes[0] = 9;
        assert!(decode::<Tier>(&bytes).unwrap_err().contains("version 9"));
        assert!(decode::<Tier>(&[]).is_err());
    }
}
