//! # C-FIND matching (PS3.4 C.2.2.2) over the index
//!
//! A query is the identifier of a C-FIND-RQ: a QueryRetrieveLevel and a set of keys,
//! each either empty (return it) or a value to match. Matching, per key:
//!
//! - **universal**: an empty value matches everything;
//! - **single value**: exact, except that `*` (any run) and `?` (one character) are
//!   wildcards for text VRs; PN values match **case-insensitively**, with trailing empty
//!   `^` components ignored on both sides (so `DOE^JOHN` matches `Doe^John^^`), and by
//!   component group (see [`pn_matches`]); values are Unicode, the identifier's decoded
//!   with its own Specific Character Set;
//! - **UID list**: a UI key with several values (`a\b\c`) matches any of them;
//! - **ranges**: DA/TM/DT keys `from-to`, `-to` or `from-` (inclusive); an empty value is
//!   in no range;
//! - multi-valued attributes (ModalitiesInStudy) match if any value matches.
//!
//! Attributes the index does not keep as columns (Rows, BodyPartExamined, …) are read
//! from the metadata record ([`InstanceMetadata`]) of the instance at image level, of the
//! series' first instance at series level and of the study's first instance at study
//! level, and then matched and returned like the others.
//!
//! Candidates come from the secondary indexes when the query allows it (PatientID,
//! AccessionNumber or StudyDate as a single value or a date range, StudyInstanceUID as a
//! UID list), otherwise from a scan. Series and image level queries are hierarchical: they
//! need the Study (and, for images, Series) Instance UID.

use crate::dicom::framing::{read_identifier, Encoding};
use crate::dicom::metadata::InstanceMetadata;
use crate::index::{
    Index, IndexError, InstanceEntry, PatientIdentity, SecondaryKey, SeriesRecord, StudyRecord,
};
use std::collections::BTreeMap;
use strata_tiers::ObjectId;

pub mod tags {
    pub const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
    pub const STUDY_DATE: u32 = 0x0008_0020;
    pub const STUDY_TIME: u32 = 0x0008_0030;
    pub const ACCESSION_NUMBER: u32 = 0x0008_0050;
    pub const QUERY_RETRIEVE_LEVEL: u32 = 0x0008_0052;
    pub const RETRIEVE_AE_TITLE: u32 = 0x0008_0054;
    pub const MODALITIES_IN_STUDY: u32 = 0x0008_0061;
    pub const MODALITY: u32 = 0x0008_0060;
    pub const SOP_CLASS_UID: u32 = 0x0008_0016;
    pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
    pub const REFERRING_PHYSICIAN_NAME: u32 = 0x0008_0090;
    pub const STUDY_DESCRIPTION: u32 = 0x0008_1030;
    pub const SERIES_DESCRIPTION: u32 = 0x0008_103E;
    pub const PATIENT_NAME: u32 = 0x0010_0010;
    pub const PATIENT_ID: u32 = 0x0010_0020;
    pub const ISSUER_OF_PATIENT_ID: u32 = 0x0010_0021;
    pub const PATIENT_BIRTH_DATE: u32 = 0x0010_0030;
    pub const PATIENT_SEX: u32 = 0x0010_0040;
    pub const NUMBER_OF_PATIENT_RELATED_STUDIES: u32 = 0x0020_1200;
    pub const NUMBER_OF_PATIENT_RELATED_SERIES: u32 = 0x0020_1202;
    pub const NUMBER_OF_PATIENT_RELATED_INSTANCES: u32 = 0x0020_1204;
    pub const NUMBER_OF_STUDY_RELATED_SERIES: u32 = 0x0020_1206;
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: u32 = 0x0020_1208;
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: u32 = 0x0020_1209;
    pub const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
    pub const SERIES_INSTANCE_UID: u32 = 0x0020_000E;
    pub const STUDY_ID: u32 = 0x0020_0010;
    pub const SERIES_NUMBER: u32 = 0x0020_0011;
    pub const INSTANCE_NUMBER: u32 = 0x0020_0013;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    PatientRoot,
    StudyRoot,
}

impl Model {
    pub const PATIENT_ROOT_FIND: &'static str = "1.2.840.10008.5.1.4.1.2.1.1";
    pub const STUDY_ROOT_FIND: &'static str = "1.2.840.10008.5.1.4.1.2.2.1";

    pub fn of_sop_class(uid: &str) -> Option<Model> {
        match uid {
            Self::PATIENT_ROOT_FIND => Some(Model::PatientRoot),
            Self::STUDY_ROOT_FIND => Some(Model::StudyRoot),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    /// The QueryRetrieveLevel (0008,0052) value (PS3.4 C.6).
    pub fn keyword(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// One key of a query: its tag, VR and (decoded) value; empty means "return it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    pub keys: Vec<Key>,
    /// Relational queries were negotiated (extended negotiation): SERIES and IMAGE
    /// levels may then omit the higher-level unique keys.
    pub relational: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("identifier is malformed: {0}")]
    Malformed(String),
    #[error("identifier lacks a valid QueryRetrieveLevel")]
    MissingLevel,
    #[error("{0}")]
    Unsupported(String),
    /// The index could not be read: not the requester's fault.
    #[error("index error: {0}")]
    Index(#[from] IndexError),
}

/// The VR of an attribute, from the request (explicit syntaxes) or the dictionary.
/// The dictionary VR of a tag (`UN` when unknown), as two ASCII bytes.
pub fn vr_of_tag(tag: u32) -> [u8; 2] {
    vr_of(tag, None)
}

fn vr_of(tag: u32, given: Option<[u8; 2]>) -> [u8; 2] {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if let Some(vr) = given {
        return vr;
    }
    let t = dicom_core::Tag((tag >> 16) as u16, (tag & 0xFFFF) as u16);
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(t)
        .map(|e| {
            let s = e.vr().relaxed().to_string();
            let b = s.as_bytes();
            [b[0], b[1]]
        })
        .unwrap_or(*b"UN")
}

/// The width of one value of a binary numeric VR (PS3.5 6.2: US, SS, UL, SL, FL, FD,
/// UV, SV), `None` for the others.
pub fn binary_number_width(vr: &[u8; 2]) -> Option<usize> {
    match vr {
        b"US" | b"SS" => Some(2),
        b"UL" | b"SL" | b"FL" => Some(4),
        b"FD" | b"UV" | b"SV" => Some(8),
        _ => None,
    }
}

/// A binary numeric value (`raw`, in the identifier's byte order) as the text C-FIND
/// matching uses: each value in decimal, separated by `\`; `None` for other VRs.
fn binary_numbers_text(vr: &[u8; 2], raw: &[u8], big: bool) -> Option<String> {
    let width = binary_number_width(vr)?;
    let values: Vec<String> = raw
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            if big {
                b[..width].reverse();
            }
            match vr {
                b"US" => u16::from_le_bytes([b[0], b[1]]).to_string(),
                b"SS" => i16::from_le_bytes([b[0], b[1]]).to_string(),
                b"UL" => u32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
                b"SL" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
                b"FL" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
                b"FD" => f64::from_le_bytes(b).to_string(),
                b"UV" => u64::from_le_bytes(b).to_string(),
                _ => i64::from_le_bytes(b).to_string(),
            }
        })
        .collect();
    Some(values.join("\\"))
}

/// The text of a binary numeric value (decimal values separated by `\`) encoded in
/// `vr`, little or big endian; values that do not parse are left out. `None` for VRs
/// that are not binary numbers. The inverse of what [`Query::parse`] reads.
pub fn binary_numbers_bytes(vr: &[u8; 2], text: &str, big: bool) -> Option<Vec<u8>> {
    binary_number_width(vr)?;
    let mut out = Vec::new();
    for v in text.split('\\').map(str::trim).filter(|v| !v.is_empty()) {
        let mut le: Vec<u8> = match vr {
            b"US" => v.parse::<u16>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"SS" => v.parse::<i16>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"UL" => v.parse::<u32>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"SL" => v.parse::<i32>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"FL" => v.parse::<f32>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"FD" => v.parse::<f64>().ok().map(|n| n.to_le_bytes().to_vec()),
            b"UV" => v.parse::<u64>().ok().map(|n| n.to_le_bytes().to_vec()),
            _ => v.parse::<i64>().ok().map(|n| n.to_le_bytes().to_vec()),
        }
        .unwrap_or_default();
        if big {
            le.reverse();
        }
        out.extend_from_slice(&le);
    }
    Some(out)
}

impl Query {
    /// A query built from attribute values rather than an encoded identifier (the way
    /// URL parameters build one, e.g. QIDO-RS): each `(tag, value)` becomes a key with
    /// the dictionary's VR; an empty value asks for the attribute to be returned.
    pub fn from_keys(level: Level, keys: &[(u32, &str)]) -> Query {
        Query {
            level,
            keys: keys
                .iter()
                .map(|(tag, value)| Key {
                    tag: *tag,
                    vr: vr_of(*tag, None),
                    value: value.to_string(),
                })
                .collect(),
            relational: false,
        }
    }

    /// Parses an identifier encoded in `ts` (the presentation context's syntax).
    pub fn parse(bytes: &[u8], ts: &str) -> Result<Query, QueryError> {
        let inflated;
        let (bytes, enc) = match ts {
            "1.2.840.10008.1.2" => (bytes, Encoding::ImplicitLittle),
            "1.2.840.10008.1.2.1" => (bytes, Encoding::ExplicitLittle),
            "1.2.840.10008.1.2.2" => (bytes, Encoding::ExplicitBig),
            // deflated explicit VR LE (PS3.5 A.5); an identifier is small: capped at 1 MiB
            _ if crate::dicom::framing::Encoding::is_deflated(ts) => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(bytes)
                    .take(1 << 20)
                    .read_to_end(&mut out)
                    .map_err(|e| QueryError::Malformed(format!("cannot inflate: {e}")))?;
                inflated = out;
                (&inflated[..], Encoding::ExplicitLittle)
            }
            // a compressed syntax compresses pixel data only: an identifier under it is
            // explicit VR little endian (PS3.5 A.4), as an SCU proposing only compressed
            // syntaxes sends it
            other => match Encoding::of_transfer_syntax(other) {
                Some(enc) => (bytes, enc),
                None => {
                    return Err(QueryError::Unsupported(format!(
                        "identifier in transfer syntax {other}"
                    )))
                }
            },
        };
        let elements = read_identifier(bytes, enc).map_err(QueryError::Malformed)?;
        // the identifier's values are in *its* character set (PS3.4 C.4.1.1.3.1 and
        // PS3.5 §6.1): decoded to Unicode before any matching
        let charset = elements
            .iter()
            .find(|(tag, _, _)| *tag == tags::SPECIFIC_CHARACTER_SET)
            .map(|(_, _, raw)| {
                String::from_utf8_lossy(raw)
                    .trim_matches(['\0', ' '])
                    .to_string()
            })
            .unwrap_or_default();
        let mut level = None;
        let mut keys = Vec::new();
        for (tag, vr, raw) in elements {
            // a sequence or binary key is not text (in implicit VR a defined-length
            // sequence arrives as its raw items): no sequence matching, so it is a
            // universal key, its attribute returned empty or left out
            let binary = matches!(
                &vr_of(tag, vr),
                b"SQ" | b"OB" | b"OW" | b"OF" | b"OD" | b"OL" | b"OV" | b"UN"
            );
            let value = if binary {
                String::new()
            } else if let Some(text) =
                binary_numbers_text(&vr_of(tag, vr), &raw, enc == Encoding::ExplicitBig)
            {
                text
            } else if raw.iter().all(|b| *b < 0x80 && *b != 0x1B) {
                String::from_utf8_lossy(&raw).into_owned()
            } else {
                crate::dicom::charset::decode(&raw, &charset).map_err(|why| {
                    QueryError::Malformed(format!(
                        "({:04X},{:04X}) cannot be read in the identifier's character set \
                         {charset:?}: {why}",
                        tag >> 16,
                        tag & 0xFFFF
                    ))
                })?
            };
            let value = value.trim_matches(['\0', ' ']).to_string();
            match tag {
                tags::QUERY_RETRIEVE_LEVEL => {
                    level = Some(match value.as_str() {
                        "PATIENT" => Level::Patient,
                        "STUDY" => Level::Study,
                        "SERIES" => Level::Series,
                        "IMAGE" => Level::Image,
                        _ => return Err(QueryError::MissingLevel),
                    })
                }
                tags::SPECIFIC_CHARACTER_SET => {}
                _ if tag >> 16 == 0 || tag >> 16 == 2 => {}
                _ => keys.push(Key {
                    tag,
                    vr: vr_of(tag, vr),
                    value,
                }),
            }
        }
        Ok(Query {
            level: level.ok_or(QueryError::MissingLevel)?,
            keys,
            relational: false,
        })
    }

    fn value(&self, tag: u32) -> Option<&str> {
        self.keys
            .iter()
            .find(|k| k.tag == tag)
            .map(|k| k.value.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// `*` and `?` wildcard matching (iterative, no backtracking blow-up).
fn wildcard(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            p += 1;
            mark = t;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

fn in_range(q: &str, v: &str, normalise: fn(&str) -> String) -> bool {
    match q.split_once('-') {
        Some((from, to)) => {
            // an empty value is unknown, not the start of the day (PS3.4 C.2.2.2.5): it
            // is in no range (normalising it first made an empty StudyTime "000000")
            if v.trim().is_empty() {
                return false;
            }
            let v = normalise(v);
            (from.is_empty() || v >= normalise(from)) && (to.is_empty() || v <= normalise(to))
        }
        None => normalise(v) == normalise(q),
    }
}

fn time_norm(t: &str) -> String {
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).take(6).collect();
    format!("{digits:0<6}")
}

fn pn_norm(s: &str) -> String {
    s.trim_end_matches(['^', '=']).to_uppercase()
}

/// PN matching, case-insensitive, by component group (alphabetic `=` ideographic `=`
/// phonetic, PS3.5 §6.2.1): a key of several groups matches group by group, its empty
/// groups matching anything; a key of one group (no `=`) matches a value any of whose
/// groups it matches, so `山田^太郎` finds `Yamada^Tarou=山田^太郎=やまだ^たろう`.
fn pn_matches(q: &str, v: &str) -> bool {
    let one = |q: &str, g: &str| {
        let (p, t): (Vec<char>, Vec<char>) =
            (pn_norm(q).chars().collect(), pn_norm(g).chars().collect());
        wildcard(&p, &t)
    };
    let groups: Vec<&str> = v.split('=').collect();
    if !q.contains('=') {
        return groups.iter().any(|g| one(q, g));
    }
    q.split('=')
        .enumerate()
        .all(|(i, qg)| qg.is_empty() || groups.get(i).is_some_and(|g| one(qg, g)))
}

/// Whether a candidate `value` (possibly multi-valued) matches query `key`.
pub fn matches(key: &Key, value: &str) -> bool {
    let q = key.value.as_str();
    if q.is_empty() {
        return true;
    }
    let values: Vec<&str> = value.split('\\').collect();
    let queries: Vec<&str> = q.split('\\').collect();
    values.iter().any(|v| {
        queries.iter().any(|q| match &key.vr {
            b"UI" => *v == *q,
            b"DA" => in_range(q, v, |s| s.replace('.', "")),
            b"TM" => in_range(q, v, time_norm),
            b"DT" => in_range(q, v, |s| s.to_string()),
            b"PN" => pn_matches(q, v),
            _ => {
                let (p, t): (Vec<char>, Vec<char>) = (q.chars().collect(), v.chars().collect());
                wildcard(&p, &t)
            }
        })
    })
}

/// One match: the identifier's attributes (tag → value) to return.
pub type Answer = BTreeMap<u32, String>;

/// A study as seen under one patient it was received under: nearly every study has one
/// view; a study with a patient conflict ([`StudyRecord::other_patients`]) has one per
/// PatientID, each counting only the series received under it.
struct StudyView {
    /// PatientID, PatientName, PatientBirthDate, PatientSex.
    patient: Answer,
    series: u64,
    instances: u64,
}

fn patient_attrs(p: PatientIdentity<'_>) -> Answer {
    BTreeMap::from([
        (tags::PATIENT_ID, p.patient_id.to_string()),
        (tags::ISSUER_OF_PATIENT_ID, p.issuer.to_string()),
        (tags::PATIENT_NAME, p.patient_name.to_string()),
        (tags::PATIENT_BIRTH_DATE, p.patient_birth_date.to_string()),
        (tags::PATIENT_SEX, p.patient_sex.to_string()),
    ])
}

/// The views of a study (see [`StudyView`]); reads the study's series only when it has a
/// patient conflict. A view with no series left is not shown. `links`: whether the
/// archive holds any patient link ([`crate::index::Governance::any_patient_links`]);
/// without one, no identity changed and none is looked up.
fn study_views(
    index: &dyn Index,
    links: bool,
    uid: &str,
    s: &StudyRecord,
) -> Result<Vec<StudyView>, IndexError> {
    let current_patient = |attrs: Answer| match links {
        true => current_patient(index, attrs),
        false => Ok(attrs),
    };
    if s.other_patients.is_empty() {
        return Ok(vec![StudyView {
            patient: current_patient(patient_attrs(s.identity()))?,
            series: s.series,
            instances: s.instances,
        }]);
    }
    let mut views: Vec<StudyView> = std::iter::once(s.identity())
        .chain(s.other_patients.iter().map(|o| o.identity()))
        .map(|p| StudyView {
            patient: patient_attrs(p),
            series: 0,
            instances: 0,
        })
        .collect();
    for (series_uid, rec) in index.series_of_study(uid)? {
        let key = s.patient_of_series(&series_uid).key();
        if let Some(v) = views.iter_mut().find(|v| answer_key(&v.patient) == key) {
            v.series += 1;
            v.instances += rec.instances;
        }
    }
    views.retain(|v| v.series > 0);
    // each view under the identity its patient is known by now; two views whose
    // patients were merged are one
    let mut current: Vec<StudyView> = Vec::with_capacity(views.len());
    for v in views {
        let patient = current_patient(v.patient)?;
        match current
            .iter_mut()
            .find(|c| answer_key(&c.patient) == answer_key(&patient))
        {
            Some(c) => {
                c.series += v.series;
                c.instances += v.instances;
            }
            None => current.push(StudyView { patient, ..v }),
        }
    }
    Ok(current)
}

/// The patient key ([`crate::index::patient_key`]) of an answer's PatientID and
/// IssuerOfPatientID.
fn answer_key(attrs: &Answer) -> String {
    let get = |tag| attrs.get(&tag).map_or("", String::as_str);
    crate::index::patient_key(get(tags::PATIENT_ID), get(tags::ISSUER_OF_PATIENT_ID))
}

/// The [`crate::index::PatientLink`] of the stored patient (PatientID, IssuerOfPatientID),
/// if the hospital changed its identity (a merge, an ID change, a demographics update).
/// The link is the one of exactly that patient: another issuer's patient of the same
/// PatientID is another patient (docs/patients.md "The identity model").
pub fn link_of(
    index: &dyn Index,
    patient_id: &str,
    issuer: &str,
) -> Result<Option<crate::index::PatientLink>, IndexError> {
    if patient_id.is_empty() {
        return Ok(None);
    }
    index.patient_link(&crate::index::patient_key(patient_id, issuer))
}

/// A stored patient's attributes as the patient is known by now: those of its
/// [`crate::index::PatientLink`] when the hospital changed them, else as stored.
fn current_patient(index: &dyn Index, mut attrs: Answer) -> Result<Answer, IndexError> {
    let get = |tag| attrs.get(&tag).map_or("", String::as_str);
    if let Some(link) = link_of(
        index,
        get(tags::PATIENT_ID),
        get(tags::ISSUER_OF_PATIENT_ID),
    )? {
        attrs.insert(tags::PATIENT_ID, link.patient_id);
        attrs.insert(tags::ISSUER_OF_PATIENT_ID, link.issuer);
        attrs.insert(tags::PATIENT_NAME, link.patient_name);
        attrs.insert(tags::PATIENT_BIRTH_DATE, link.patient_birth_date);
        attrs.insert(tags::PATIENT_SEX, link.patient_sex);
    }
    Ok(attrs)
}

/// The studies filed under the patient known now as `patient_id`: those stored under it
/// and under every PatientID linked to it (the caller matches each study's current
/// identity, which excludes studies of an ID since merged away).
pub fn studies_of_patient(index: &dyn Index, patient_id: &str) -> Result<Vec<String>, IndexError> {
    let mut ids: Vec<String> = index
        .patient_aliases(patient_id)?
        .iter()
        .map(|key| crate::index::split_patient_key(key).0.to_string())
        .collect();
    ids.push(patient_id.to_string());
    ids.sort();
    ids.dedup();
    let mut studies = Vec::new();
    for id in ids {
        studies.extend(index.studies_by(SecondaryKey::PatientId, &id)?);
    }
    Ok(studies)
}

/// The (PatientID, IssuerOfPatientID) a stored patient is known by now.
pub fn current_identity(
    index: &dyn Index,
    stored: PatientIdentity<'_>,
) -> Result<(String, String), IndexError> {
    Ok(
        link_of(index, stored.patient_id, stored.issuer)?.map_or_else(
            || (stored.patient_id.to_string(), stored.issuer.to_string()),
            |l| (l.patient_id, l.issuer),
        ),
    )
}

fn study_attrs(uid: &str, s: &StudyRecord, view: &StudyView) -> Answer {
    let mut attrs = BTreeMap::from([
        (tags::STUDY_INSTANCE_UID, uid.to_string()),
        (tags::STUDY_DATE, s.study_date.clone()),
        (tags::STUDY_TIME, s.study_time.clone()),
        (tags::ACCESSION_NUMBER, s.accession_number.clone()),
        (tags::STUDY_ID, s.study_id.clone()),
        (tags::STUDY_DESCRIPTION, s.study_description.clone()),
        (
            tags::REFERRING_PHYSICIAN_NAME,
            s.referring_physician_name.clone(),
        ),
        (tags::MODALITIES_IN_STUDY, s.modalities.join("\\")),
        (
            tags::NUMBER_OF_STUDY_RELATED_SERIES,
            view.series.to_string(),
        ),
        (
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            view.instances.to_string(),
        ),
    ]);
    attrs.extend(view.patient.clone());
    attrs
}

fn series_attrs(study_uid: &str, uid: &str, s: &SeriesRecord) -> Answer {
    BTreeMap::from([
        (tags::STUDY_INSTANCE_UID, study_uid.to_string()),
        (tags::SERIES_INSTANCE_UID, uid.to_string()),
        (tags::MODALITY, s.modality.clone()),
        (tags::SERIES_NUMBER, s.series_number.clone()),
        (tags::SERIES_DESCRIPTION, s.series_description.clone()),
        (
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
            s.instances.to_string(),
        ),
    ])
}

fn image_attrs(e: &InstanceEntry) -> Answer {
    BTreeMap::from([
        (tags::STUDY_INSTANCE_UID, e.study_uid.clone()),
        (tags::SERIES_INSTANCE_UID, e.series_uid.clone()),
        (tags::SOP_INSTANCE_UID, e.sop_instance_uid.clone()),
        (tags::SOP_CLASS_UID, e.record.sop_class_uid.clone()),
        (tags::INSTANCE_NUMBER, e.record.instance_number.clone()),
    ])
}

/// The keys of `query` an answer lacks that a metadata record may hold: attributes the
/// index does not keep (sequences are never matched; RetrieveAETitle is the service's).
fn missing_keys(query: &Query, attrs: &Answer) -> Vec<u32> {
    query
        .keys
        .iter()
        .filter(|k| {
            k.vr != *b"SQ" && k.tag != tags::RETRIEVE_AE_TITLE && !attrs.contains_key(&k.tag)
        })
        .map(|k| k.tag)
        .collect()
}

/// Adds the `wanted` attributes found in the metadata record of `entry`'s served object
/// ([`InstanceMetadata`]) to `attrs`. An instance without a record (indexed before
/// records existed) adds nothing: its keys are then only returned, not matched.
fn fill_from_metadata(
    index: &dyn Index,
    entry: Option<&InstanceEntry>,
    wanted: &[u32],
    attrs: &mut Answer,
) -> Result<(), IndexError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let Some(id) = entry
        .and_then(|e| e.record.current())
        .and_then(|v| ObjectId::from_hex(&v.id))
    else {
        return Ok(());
    };
    let Some(bytes) = index.instance_metadata(&id)? else {
        return Ok(());
    };
    match InstanceMetadata::decode(&bytes) {
        Ok(m) => attrs.extend(m.attribute_text(wanted)),
        Err(e) => tracing::warn!(object = %id, error = %e, "unreadable metadata record"),
    }
    Ok(())
}

/// Whether every key the record knows matches (keys it does not know are only returned).
fn all_match(query: &Query, attrs: &Answer) -> bool {
    query
        .keys
        .iter()
        .all(|k| attrs.get(&k.tag).is_none_or(|v| matches(k, v)))
}

/// Visits the studies worth looking at: from a secondary index or a UID list when the
/// query names one, else every study (streamed from the index, never all in memory).
/// `visit` returns false to stop.
fn for_each_candidate_study(
    index: &dyn Index,
    query: &Query,
    visit: &mut dyn FnMut(&str, StudyRecord) -> bool,
) -> Result<(), IndexError> {
    let exact = |tag| query.value(tag).filter(|v| !v.contains(['*', '?', '\\']));
    let uids: Option<Vec<String>> = if let Some(list) = query.value(tags::STUDY_INSTANCE_UID) {
        Some(list.split('\\').map(str::to_string).collect())
    } else if let Some(pid) = exact(tags::PATIENT_ID) {
        Some(studies_of_patient(index, pid)?)
    } else if let Some(acc) = exact(tags::ACCESSION_NUMBER) {
        Some(index.studies_by(SecondaryKey::AccessionNumber, acc)?)
    } else if let Some(date) = query.value(tags::STUDY_DATE).filter(|d| !d.contains('\\')) {
        Some(match date.split_once('-') {
            Some((from, to)) => index.studies_by_date_range(from, to)?,
            None => index.studies_by(SecondaryKey::StudyDate, date)?,
        })
    } else {
        None
    };
    // a study every held instance of which a rejection note hid is not shown at all
    // (looked for study by study only in an archive that has rejections)
    let rejections = index.any_rejections()?;
    let mut failure = None;
    let mut visible = |uid: &str, s: StudyRecord| -> bool {
        if !rejections {
            return visit(uid, s);
        }
        match wholly_rejected(index, uid) {
            Ok(true) => true,
            Ok(false) => visit(uid, s),
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    };
    match uids {
        Some(mut uids) => {
            uids.sort();
            uids.dedup();
            // the records in a few round trips, not one per study
            'chunks: for chunk in uids.chunks(256) {
                for (uid, s) in chunk.iter().zip(index.studies_many(chunk)?) {
                    if let Some(s) = s {
                        if !visible(uid, s) {
                            break 'chunks;
                        }
                    }
                }
            }
        }
        None => index.for_each_study(&mut visible)?,
    }
    failure.map_or(Ok(()), Err)
}

/// The instances of a study hidden by IOCM rejection notes: `(series, sop)`.
pub fn rejected_of(
    index: &dyn Index,
    study_uid: &str,
) -> Result<std::collections::HashSet<(String, String)>, IndexError> {
    Ok(index
        .rejections_of_study(study_uid)?
        .into_iter()
        .map(|(series, sop, _)| (series, sop))
        .collect())
}

/// Whether every instance the archive holds of a study was rejected (one prefix scan
/// when none was, the usual case).
fn wholly_rejected(index: &dyn Index, study_uid: &str) -> Result<bool, IndexError> {
    let rejected = rejected_of(index, study_uid)?;
    if rejected.is_empty() {
        return Ok(false);
    }
    Ok(index
        .instances_of_study(study_uid)?
        .iter()
        .all(|e| rejected.contains(&(e.series_uid.clone(), e.sop_instance_uid.clone()))))
}

/// Runs a query against the index and hands each match to `emit` as it is found;
/// `emit` returns false to stop (a cancelled C-FIND).
pub fn find_each(
    index: &dyn Index,
    model: Model,
    query: &Query,
    emit: &mut dyn FnMut(Answer) -> bool,
) -> Result<(), QueryError> {
    let storage = QueryError::Index;
    // patients' identities are looked up only in an archive where one ever changed
    let links = index.any_patient_links().map_err(storage)?;
    match query.level {
        Level::Patient => {
            if model != Model::PatientRoot {
                return Err(QueryError::Unsupported(
                    "PATIENT level needs the Patient Root model".into(),
                ));
            }
            // per patient (PatientID and issuer): (attributes, studies, series, instances)
            let mut by_patient: BTreeMap<String, (Answer, u64, u64, u64)> = BTreeMap::new();
            let mut failure = None;
            for_each_candidate_study(index, query, &mut |uid, s| {
                let views = match study_views(index, links, uid, &s) {
                    Ok(v) => v,
                    Err(e) => {
                        failure = Some(storage(e));
                        return false;
                    }
                };
                for v in views {
                    let e = by_patient
                        .entry(answer_key(&v.patient))
                        .or_insert((v.patient, 0, 0, 0));
                    e.1 += 1;
                    e.2 += v.series;
                    e.3 += v.instances;
                }
                true
            })
            .map_err(storage)?;
            if let Some(e) = failure {
                return Err(e);
            }
            for (_, (mut attrs, studies, series, instances)) in by_patient {
                attrs.extend([
                    (tags::NUMBER_OF_PATIENT_RELATED_STUDIES, studies.to_string()),
                    (tags::NUMBER_OF_PATIENT_RELATED_SERIES, series.to_string()),
                    (
                        tags::NUMBER_OF_PATIENT_RELATED_INSTANCES,
                        instances.to_string(),
                    ),
                ]);
                if all_match(query, &attrs) && !emit(attrs) {
                    break;
                }
            }
        }
        Level::Study => {
            if model == Model::PatientRoot && query.value(tags::PATIENT_ID).is_none() {
                return Err(QueryError::Unsupported(
                    "Patient Root STUDY level needs a PatientID".into(),
                ));
            }
            let mut failure = None;
            for_each_candidate_study(index, query, &mut |uid, s| {
                let views = match study_views(index, links, uid, &s) {
                    Ok(v) => v,
                    Err(e) => {
                        failure = Some(storage(e));
                        return false;
                    }
                };
                // attributes the index does not keep: from the study's first instance
                let mut extra = Answer::new();
                if let Some(v) = views.first() {
                    let mut wanted = missing_keys(query, &study_attrs(uid, &s, v));
                    // a study filed under several patients: the first instance is one
                    // patient's, so none of its patient attributes answer for the others
                    if !s.other_patients.is_empty() {
                        wanted.retain(|t| t >> 16 != 0x0010);
                    }
                    if !wanted.is_empty() {
                        let filled = index.first_instance(uid, None).and_then(|first| {
                            fill_from_metadata(index, first.as_ref(), &wanted, &mut extra)
                        });
                        if let Err(e) = filled {
                            failure = Some(storage(e));
                            return false;
                        }
                    }
                }
                views.iter().all(|v| {
                    let mut attrs = study_attrs(uid, &s, v);
                    attrs.extend(extra.iter().map(|(t, v)| (*t, v.clone())));
                    !all_match(query, &attrs) || emit(attrs)
                })
            })
            .map_err(storage)?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Level::Series | Level::Image => {
            let hierarchical = query.value(tags::STUDY_INSTANCE_UID).is_some()
                && (query.level == Level::Series
                    || query.value(tags::SERIES_INSTANCE_UID).is_some());
            if !hierarchical && !query.relational {
                return Err(QueryError::Unsupported(
                    "SERIES level needs a StudyInstanceUID, IMAGE level a SeriesInstanceUID too \
                     (or negotiate relational queries)"
                        .into(),
                ));
            }
            // Walk the candidate studies (from the UID list, a secondary index or a scan);
            // relational answers carry the study and series attributes as well.
            let mut failure = None;
            for_each_candidate_study(index, query, &mut |study_uid, study| {
                // the study as seen under each of its patients, those that match
                let study_level: Vec<Answer> = match study_views(index, links, study_uid, &study) {
                    Ok(views) => views
                        .iter()
                        .map(|v| study_attrs(study_uid, &study, v))
                        .filter(|a| all_match(query, a))
                        .collect(),
                    Err(e) => {
                        failure = Some(storage(e));
                        return false;
                    }
                };
                if study_level.is_empty() {
                    return true;
                }
                let series = match index.series_of_study(study_uid) {
                    Ok(s) => s,
                    Err(e) => {
                        failure = Some(storage(e));
                        return false;
                    }
                };
                let rejected = match rejected_of(index, study_uid) {
                    Ok(r) => r,
                    Err(e) => {
                        failure = Some(storage(e));
                        return false;
                    }
                };
                let instances = if query.level == Level::Image || !rejected.is_empty() {
                    match index.instances_of_study(study_uid) {
                        Ok(i) => i,
                        Err(e) => {
                            failure = Some(storage(e));
                            return false;
                        }
                    }
                } else {
                    Vec::new()
                };
                let hidden = |e: &InstanceEntry| {
                    rejected.contains(&(e.series_uid.clone(), e.sop_instance_uid.clone()))
                };
                for (series_uid, rec) in series {
                    // a series whose every instance was rejected is not shown
                    if !rejected.is_empty()
                        && instances
                            .iter()
                            .filter(|e| e.series_uid == series_uid)
                            .all(&hidden)
                    {
                        continue;
                    }
                    // the series under the patient it was received with, as that
                    // patient is known now (the study-level answers carry current IDs)
                    let stored = study.patient_of_series(&series_uid);
                    let patient = match current_identity(index, stored) {
                        Ok((pid, issuer)) => crate::index::patient_key(&pid, &issuer),
                        Err(e) => {
                            failure = Some(storage(e));
                            return false;
                        }
                    };
                    let Some(own) = study_level.iter().find(|a| answer_key(a) == patient) else {
                        continue;
                    };
                    let mut attrs = own.clone();
                    attrs.extend(series_attrs(study_uid, &series_uid, &rec));
                    if query.level == Level::Series {
                        // attributes the index does not keep: from the series' first instance
                        let wanted = missing_keys(query, &attrs);
                        if !wanted.is_empty() {
                            let filled = index
                                .first_instance(study_uid, Some(&series_uid))
                                .and_then(|first| {
                                    fill_from_metadata(index, first.as_ref(), &wanted, &mut attrs)
                                });
                            if let Err(e) = filled {
                                failure = Some(storage(e));
                                return false;
                            }
                        }
                    }
                    if !all_match(query, &attrs) {
                        continue;
                    }
                    if query.level == Level::Series {
                        if !emit(attrs) {
                            return false;
                        }
                        continue;
                    }
                    for e in instances
                        .iter()
                        .filter(|e| e.series_uid == series_uid && !hidden(e))
                    {
                        let mut image = attrs.clone();
                        image.extend(image_attrs(e));
                        let wanted = missing_keys(query, &image);
                        if let Err(err) = fill_from_metadata(index, Some(e), &wanted, &mut image) {
                            failure = Some(storage(err));
                            return false;
                        }
                        if all_match(query, &image) && !emit(image) {
                            return false;
                        }
                    }
                }
                true
            })
            .map_err(storage)?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// [`find_each`], collecting every match.
pub fn find(index: &dyn Index, model: Model, query: &Query) -> Result<Vec<Answer>, QueryError> {
    let mut answers = Vec::new();
    find_each(index, model, query, &mut |a| {
        answers.push(a);
        true
    })?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u32, vr: &[u8; 2], value: &str) -> Key {
        Key {
            tag,
            vr: *vr,
            value: value.into(),
        }
    }

    /// A study sent under two PatientIDs (issue 11 field case: P601 with three
    /// instances, then P602 with two): each PatientID finds it, answered with its own
    /// identity and the instances sent under it (PS3.4 C.4.1.2.2: matching on
    /// PatientID); a universal query sees both.
    #[test]
    fn a_study_under_two_patients_is_found_under_each() {
        use crate::index::conformance::object;
        use crate::index::prelude::*;
        let index = crate::index::MemoryIndex::new();
        let sent_as = |patient: &str, series: &str, n: u32| {
            let sop = format!("{series}.{n}");
            let mut o = object("9.1", series, &sop, sop.as_bytes(), n as u64);
            o.attrs.patient_id = patient.into();
            o.attrs.patient_name = format!("NAME^{patient}");
            o
        };
        let mut objects: Vec<_> = (1..=3).map(|n| sent_as("P601", "9.1.1", n)).collect();
        objects.extend((4..=5).map(|n| sent_as("P602", "9.1.2", n)));
        index.commit(&objects).unwrap();
        let study = |pid: &str| {
            let q = Query::from_keys(
                Level::Study,
                &[
                    (tags::PATIENT_ID, pid),
                    (tags::STUDY_INSTANCE_UID, ""),
                    (tags::PATIENT_NAME, ""),
                    (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, ""),
                ],
            );
            find(&index, Model::StudyRoot, &q)
                .unwrap()
                .into_iter()
                .map(|a| {
                    (
                        a[&tags::PATIENT_ID].clone(),
                        a[&tags::PATIENT_NAME].clone(),
                        a[&tags::NUMBER_OF_STUDY_RELATED_INSTANCES].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let p = |id: &str, name: &str, n: &str| (id.to_string(), name.to_string(), n.to_string());
        assert_eq!(study("P601"), vec![p("P601", "NAME^P601", "3")]);
        assert_eq!(study("P602"), vec![p("P602", "NAME^P602", "2")]);
        assert_eq!(study("P6*").len(), 2);
        assert_eq!(study("").len(), 2, "a universal query sees both identities");
        // series and image answers carry the identity their series was sent with
        let q = Query::from_keys(
            Level::Image,
            &[
                (tags::STUDY_INSTANCE_UID, "9.1"),
                (tags::SERIES_INSTANCE_UID, "9.1.2"),
                (tags::SOP_INSTANCE_UID, ""),
                (tags::PATIENT_ID, ""),
            ],
        );
        let images = find(&index, Model::StudyRoot, &q).unwrap();
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|a| a[&tags::PATIENT_ID] == "P602"));
        let q = Query::from_keys(
            Level::Series,
            &[
                (tags::STUDY_INSTANCE_UID, "9.1"),
                (tags::PATIENT_ID, "P601"),
                (tags::SERIES_INSTANCE_UID, ""),
            ],
        );
        let series = find(&index, Model::StudyRoot, &q).unwrap();
        assert_eq!(series.len(), 1, "P601 sees only its own series");
        assert_eq!(series[0][&tags::SERIES_INSTANCE_UID], "9.1.1");
        // PATIENT level: each patient has the study once
        let q = Query::from_keys(
            Level::Patient,
            &[
                (tags::PATIENT_ID, "P602"),
                (tags::NUMBER_OF_PATIENT_RELATED_STUDIES, ""),
                (tags::NUMBER_OF_PATIENT_RELATED_INSTANCES, ""),
            ],
        );
        let patients = find(&index, Model::PatientRoot, &q).unwrap();
        assert_eq!(patients.len(), 1);
        assert_eq!(patients[0][&tags::NUMBER_OF_PATIENT_RELATED_STUDIES], "1");
        assert_eq!(patients[0][&tags::NUMBER_OF_PATIENT_RELATED_INSTANCES], "2");
    }

    /// Binary numeric keys (PS3.5 6.2, e.g. Rows US) are read as decimal text for
    /// matching and written back as binary values, in either byte order.
    #[test]
    fn binary_numbers_round_trip_as_text() {
        for big in [false, true] {
            for (vr, text) in [
                (*b"US", "512\\64"),
                (*b"SS", "-3"),
                (*b"UL", "4000000000"),
                (*b"SL", "-70000"),
                (*b"FL", "2.5"),
                (*b"FD", "-0.125"),
                (*b"UV", "18000000000000000000"),
                (*b"SV", "-9000000000"),
            ] {
                let bytes = binary_numbers_bytes(&vr, text, big).unwrap();
                assert_eq!(bytes.len() % binary_number_width(&vr).unwrap(), 0);
                assert_eq!(binary_numbers_text(&vr, &bytes, big).unwrap(), text);
            }
        }
        assert_eq!(binary_numbers_bytes(b"US", "", false), Some(vec![]));
        assert_eq!(binary_numbers_bytes(b"US", "64", true), Some(vec![0, 64]));
        assert!(binary_numbers_bytes(b"LO", "64", false).is_none());
    }

    #[test]
    fn matching_rules() {
        assert!(matches(&key(0, b"LO", ""), "anything"));
        assert!(matches(&key(0, b"LO", "AB*"), "ABC"));
        assert!(matches(&key(0, b"LO", "A?C"), "ABC"));
        assert!(!matches(&key(0, b"LO", "A?C"), "ABBC"));
        assert!(matches(&key(0, b"LO", "*"), ""));
        assert!(
            !matches(&key(0, b"LO", "abc"), "ABC"),
            "text is case-sensitive"
        );
        assert!(
            matches(&key(0, b"PN", "doe^j*"), "DOE^JOHN^^"),
            "PN is case-insensitive"
        );
        assert!(matches(&key(0, b"PN", "DOE^JOHN"), "Doe^John^^"));
        // component groups (PS3.5 §6.2.1): one group matches any; several, group by group
        let japanese = "Yamada^Tarou=山田^太郎=やまだ^たろう";
        assert!(matches(&key(0, b"PN", "山田^太郎"), japanese));
        assert!(matches(&key(0, b"PN", "yamada^*"), japanese));
        assert!(matches(&key(0, b"PN", "=山田^太郎"), japanese));
        assert!(!matches(&key(0, b"PN", "=山田^花子"), japanese));
        assert!(!matches(
            &key(0, b"PN", "Wang^XiaoDong=王^小明"),
            "Wang^XiaoDong=王^小东"
        ));
        // an empty value is unknown, in no range (PS3.4 C.2.2.2.5)
        assert!(!matches(&key(0, b"TM", "-0930"), ""));
        assert!(matches(&key(0, b"TM", "-0930"), "0800"));
        assert!(matches(&key(0, b"UI", "1.2\\1.3"), "1.3"));
        assert!(!matches(&key(0, b"UI", "1.2"), "1.2.3"));
        assert!(matches(&key(0, b"DA", "20240101-20240131"), "20240115"));
        assert!(!matches(&key(0, b"DA", "20240101-20240131"), "20240201"));
        assert!(matches(&key(0, b"DA", "-20240131"), "19990101"));
        assert!(matches(&key(0, b"DA", "20240101-"), "20250101"));
        assert!(!matches(&key(0, b"DA", "20240101-"), ""));
        assert!(matches(&key(0, b"TM", "0800-1200"), "101500.123"));
        assert!(
            matches(&key(0, b"CS", "MR"), "CT\\MR"),
            "multi-valued attributes"
        );
        // many stars against a long text: linear-ish, and right
        let long = "a".repeat(2000);
        assert!(matches(&key(0, b"LO", "*a*b"), &format!("{long}b")));
        assert!(!matches(
            &key(0, b"LO", &"*a".repeat(50)),
            &"b".repeat(2000)
        ));
    }
}
