//! IHE IOCM rejection notes: a Key Object Selection Document (PS3.3 A.35.4) whose
//! title (ConceptNameCodeSequence, CID 7011) says the instances it references are
//! rejected hides those instances from query and retrieve. The note itself is stored
//! like any object, and so are the instances it rejects: nothing stored is deleted, and
//! the auditor finds both (docs/patients.md "Rejection notes").
//!
//! A note is recognised when it is stored (C-STORE, STOW-RS, import): read with
//! dicom-object, its CurrentRequestedProcedureEvidenceSequence (0040,A375) gives each
//! referenced study, series and instance. The rejection is appended, synced, to the
//! governance log (replayed by `reindex`), written to the index (`rejected`), and
//! audited (`reject`, naming the instances and the sender), before the note's store is
//! acknowledged.

use super::{Archive, Error, Principal};
use crate::index::{unix_ms_now, RejectionRecord};
use crate::storage::governance_log::GovernanceRecord;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Key Object Selection Document Storage.
pub const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";

/// The rejection titles (CID 7011, scheme DCM) and their meanings.
pub const REJECTION_CODES: [(&str, &str); 4] = [
    ("113001", "Rejected for Quality Reasons"),
    ("113037", "Rejected for Patient Safety Reasons"),
    ("113038", "Incorrect Modality Worklist Entry"),
    ("113039", "Data Retention Policy Expired"),
];

/// What a rejection note says: its title (code, meaning), and the instances it
/// rejects `(study, series, sop)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionNote {
    pub code: String,
    pub meaning: String,
    pub instances: Vec<(String, String, String)>,
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<InMemDicomObject> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default()
}

/// The rejection note a data set is, if it is one (a KOS titled with a CID 7011 code).
pub fn rejection_note_of(obj: &InMemDicomObject) -> Option<RejectionNote> {
    if text(obj, tags::SOP_CLASS_UID)? != KEY_OBJECT_SELECTION {
        return None;
    }
    let title = items(obj, tags::CONCEPT_NAME_CODE_SEQUENCE)
        .into_iter()
        .next()?;
    let code = text(&title, tags::CODE_VALUE)?;
    let scheme = text(&title, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default();
    let (_, meaning) = REJECTION_CODES.iter().find(|(c, _)| *c == code)?;
    if scheme != "DCM" {
        return None;
    }
    let mut instances = Vec::new();
    for study in items(obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE) {
        let Some(study_uid) = text(&study, tags::STUDY_INSTANCE_UID) else {
            continue;
        };
        for series in items(&study, tags::REFERENCED_SERIES_SEQUENCE) {
            let Some(series_uid) = text(&series, tags::SERIES_INSTANCE_UID) else {
                continue;
            };
            for sop in items(&series, tags::REFERENCED_SOP_SEQUENCE) {
                if let Some(uid) = text(&sop, tags::REFERENCED_SOP_INSTANCE_UID) {
                    instances.push((study_uid.clone(), series_uid.clone(), uid));
                }
            }
        }
    }
    Some(RejectionNote {
        code,
        meaning: meaning.to_string(),
        instances,
    })
}

/// A rejected instance, for `strata ls --rejected`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub rejection: RejectionRecord,
}

impl Archive {
    /// Every instance a rejection note hid (blocking), for `principal` (who needs
    /// `viewer`); audited as a `query`.
    pub fn rejections_blocking(&self, principal: &Principal) -> Result<Vec<Rejected>, Error> {
        self.authorize(principal, super::principal::Role::Viewer, "query", &[])?;
        let rejected: Vec<Rejected> = self
            .index
            .rejections()?
            .into_iter()
            .map(
                |(study_uid, series_uid, sop_instance_uid, rejection)| Rejected {
                    study_uid,
                    series_uid,
                    sop_instance_uid,
                    rejection,
                },
            )
            .collect();
        let outcome = format!("ls --rejected: {} instances", rejected.len());
        self.audit_blocking(principal, "query", Vec::new(), outcome);
        Ok(rejected)
    }

    /// When the stored object `id` (of SOP class `sop_class_uid`) is a rejection note,
    /// applies it (see the module docs); blocking. Anything else: nothing to do.
    pub(crate) fn apply_if_rejection_note_blocking(
        &self,
        principal: &Principal,
        id: &strata_tiers::ObjectId,
        sop_class_uid: &str,
        note_uid: &str,
    ) -> Result<(), Error> {
        if sop_class_uid != KEY_OBJECT_SELECTION {
            return Ok(());
        }
        let path = self.hot.path_of(id);
        let obj = match dicom_object::open_file(&path) {
            Ok(obj) => obj,
            Err(e) => {
                tracing::warn!(object = %id, error = %e, "a Key Object Selection that dicom-object cannot read: not taken as a rejection note");
                return Ok(());
            }
        };
        let Some(mut note) = rejection_note_of(&obj) else {
            return Ok(());
        };
        // a note rejects its own patient's instances only (IHE IOCM): an instance of
        // another patient, or not held, is not touched
        let index = self.index.as_ref();
        let (note_id, note_issuer) = (
            text(&obj, tags::PATIENT_ID).unwrap_or_default(),
            text(&obj, tags::ISSUER_OF_PATIENT_ID).unwrap_or_default(),
        );
        let (note_id, note_issuer) = crate::query::current_identity(
            index,
            crate::index::PatientIdentity {
                patient_id: &note_id,
                issuer: &note_issuer,
                patient_name: "",
                patient_birth_date: "",
                patient_sex: "",
            },
        )?;
        let listed = note.instances.len();
        let mut kept = Vec::with_capacity(listed);
        for (study, series, sop) in std::mem::take(&mut note.instances) {
            let held = index
                .instance(&sop)?
                .is_some_and(|e| e.study_uid == study && e.series_uid == series);
            let Some(record) = index.study(&study)?.filter(|_| held) else {
                continue;
            };
            let (id, issuer) =
                crate::query::current_identity(index, record.patient_of_series(&series))?;
            if id == note_id && crate::index::issuers_agree(&issuer, &note_issuer) {
                kept.push((study, series, sop));
            }
        }
        note.instances = kept;
        // applied before (the note stored again): nothing to do twice
        if let Some((study, _, _)) = note.instances.first() {
            let applied = index
                .rejections_of_study(study)?
                .iter()
                .any(|(_, _, r)| r.note == note_uid);
            if applied {
                return Ok(());
            }
        }
        let refused = listed - note.instances.len();
        if refused > 0 {
            tracing::warn!(note = note_uid, refused, "a rejection note names instances of another patient, or not held: those are not rejected");
        }
        if note.instances.is_empty() {
            self.audit_synced(
                principal,
                "reject",
                Vec::new(),
                format!("refused: note {note_uid} rejects no instance of its own patient ({refused} named)"),
            )?;
            return Ok(());
        }
        let record = RejectionRecord {
            code: note.code.clone(),
            meaning: note.meaning.clone(),
            note: note_uid.to_string(),
            rejected_at_ms: unix_ms_now(),
            by: principal.name(),
        };
        // on record in the governance log, then in the audit log, then in effect: a crash
        // anywhere leaves the log ahead of the index, and the next start applies what the
        // index lacks and audits it as replayed (an audit record is never missing)
        self.governance.append(GovernanceRecord::Rejection {
            instances: note.instances.clone(),
            rejection: record.clone(),
        })?;
        let uids = note
            .instances
            .iter()
            .map(|(_, _, sop)| sop.clone())
            .collect();
        self.audit_synced(
            principal,
            "reject",
            uids,
            format!(
                "({}, DCM, \"{}\") by note {note_uid}: {} instances hidden{}",
                note.code,
                note.meaning,
                note.instances.len(),
                if refused > 0 {
                    format!("; {refused} of another patient or not held, not rejected")
                } else {
                    String::new()
                }
            ),
        )?;
        crate::tiering::failpoint("reject-after-audit");
        self.index.reject_instances(&note.instances, &record)?;
        Ok(())
    }
}
