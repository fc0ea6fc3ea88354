//! Patient identity changes: the hospital's corrections (HL7 ADT A08/A31 demographics,
//! A40 merge, A47 identifier change, or `strata patient merge`) applied without
//! rewriting anything stored (docs/patients.md).
//!
//! A change links stored PatientIDs to the identity they are known by now
//! ([`PatientLink`]); queries answer with the linked identity at once. Each change is,
//! in this order: refused if its HL7 message control id was processed before (exactly
//! once: the earlier outcome is returned); appended, synced, to the governance log
//! (where `reindex` replays it: the objects themselves never change); written to the
//! index in one synced batch together with the control id; and an audit record
//! (synced) with the control id, the identities before and after. Changes are
//! serialised: two feeds never compute links from the same stale state.

use super::principal::Role;
use super::{blocking, Archive, Error, Principal};
use crate::index::{unix_ms_now, PatientLink};
use crate::query::studies_of_patient;
use crate::storage::governance_log::GovernanceRecord;
use serde::Serialize;

/// A patient's identity as a message gives it (HL7 PID-3, PID-5, PID-7, PID-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Demographics {
    pub patient_id: String,
    /// The assigning authority (PID-3.4), IssuerOfPatientID; may be empty.
    pub issuer: String,
    /// DICOM PN form (`FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`).
    pub patient_name: String,
    /// DA (`YYYYMMDD`).
    pub patient_birth_date: String,
    /// `M`, `F`, `O` or empty.
    pub patient_sex: String,
}

/// One identity change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PatientChange {
    /// ADT^A08 / A31: the patient's demographics are now these.
    Update { patient: Demographics },
    /// ADT^A40: the patient `prior` was merged into `survivor`; `prior`'s studies are
    /// `survivor`'s from now on.
    Merge {
        survivor: Demographics,
        prior: String,
    },
    /// ADT^A47: the patient known as `old` is now `patient.patient_id`.
    ChangeId { patient: Demographics, old: String },
}

impl PatientChange {
    /// The audit action of this change.
    pub fn action(&self) -> &'static str {
        match self {
            PatientChange::Update { .. } => "patient_update",
            PatientChange::Merge { .. } => "patient_merge",
            PatientChange::ChangeId { .. } => "patient_id_change",
        }
    }

    fn target(&self) -> &Demographics {
        match self {
            PatientChange::Update { patient } | PatientChange::ChangeId { patient, .. } => patient,
            PatientChange::Merge { survivor, .. } => survivor,
        }
    }
}

/// A patient as the archive knows it now (`strata patient show`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PatientView {
    /// The ID asked about.
    pub asked: String,
    /// The PatientID it is known by now (itself, unless merged away or changed).
    pub patient_id: String,
    /// Its current demographics, when the hospital changed them (else as stored).
    pub link: Option<PatientLink>,
    /// The stored PatientIDs now shown as this patient.
    pub linked_ids: Vec<String>,
    /// Its studies (Study Instance UIDs), as C-FIND finds them now.
    pub studies: Vec<String>,
}

/// One change in a patient's history (`strata patient history`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub changed_at_ms: u64,
    /// The HL7 message control id; empty for the CLI.
    pub control_id: String,
    pub summary: String,
}

/// A merge asked for by the CLI (`strata patient merge`): the effect of an ADT^A40.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MergeRequest {
    /// The PatientID merged away.
    pub prior: String,
    /// The PatientID that survives.
    pub survivor: String,
    /// The survivor's demographics; absent: as the archive knows them now.
    #[serde(default)]
    pub patient_name: Option<String>,
    #[serde(default)]
    pub patient_birth_date: Option<String>,
    #[serde(default)]
    pub patient_sex: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
}

/// What a change did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ChangeOutcome {
    /// The message control id had been processed already: nothing changed now, and
    /// `summary` is the earlier outcome.
    pub duplicate: bool,
    /// Each stored PatientID now linked, with the identity it was known by before.
    pub relinked: Vec<(String, String)>,
    /// The studies now shown under the changed identity.
    pub studies: usize,
    pub summary: String,
}

impl Archive {
    /// The patient `id` as the archive knows it now (blocking), for `principal` (who
    /// needs `viewer`); audited as a `query` naming the ID.
    pub fn patient_view_blocking(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<PatientView, Error> {
        self.authorize(principal, Role::Viewer, "query", &patient_key(id))?;
        let index = self.index.as_ref();
        let link = index.patient_link(id)?;
        // a patient-restricted caller learns nothing of another patient
        let current = link.as_ref().map_or(id, |l| l.patient_id.as_str());
        if principal
            .grant
            .patient
            .as_deref()
            .is_some_and(|p| p != current)
        {
            return Err(Error::NotFound(format!("no patient {id}")));
        }
        let patient_id = link
            .as_ref()
            .map_or(id.to_string(), |l| l.patient_id.clone());
        let mut linked_ids = index.patient_aliases(&patient_id)?;
        linked_ids.retain(|l| l != &patient_id);
        let query = crate::query::Query::from_keys(
            crate::query::Level::Study,
            &[
                (crate::query::tags::PATIENT_ID, patient_id.as_str()),
                (crate::query::tags::STUDY_INSTANCE_UID, ""),
            ],
        );
        let studies: Vec<String> =
            crate::query::find(index, crate::query::Model::StudyRoot, &query)?
                .into_iter()
                .filter_map(|a| a.get(&crate::query::tags::STUDY_INSTANCE_UID).cloned())
                .collect();
        let view = PatientView {
            asked: id.to_string(),
            patient_id,
            link,
            linked_ids,
            studies,
        };
        let outcome = format!("patient show: {} studies", view.studies.len());
        self.audit_blocking(principal, "query", patient_key(id), outcome);
        Ok(view)
    }

    /// Every identity change that concerned the PatientID `id` (as stored or as the
    /// identity linked to), oldest first, from the governance log (blocking); audited
    /// as a `query`.
    pub fn patient_history_blocking(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Vec<HistoryEntry>, Error> {
        self.authorize(principal, Role::Viewer, "query", &patient_key(id))?;
        let records = self.governance.read()?;
        let history: Vec<HistoryEntry> = crate::storage::governance_log::patient_changes(&records)
            .into_iter()
            .filter(|c| {
                c.links
                    .iter()
                    .any(|(stored, link)| stored == id || link.patient_id == id)
            })
            .map(|c| HistoryEntry {
                changed_at_ms: c.links.first().map_or(0, |(_, l)| l.changed_at_ms),
                control_id: c.control_id,
                summary: c.summary,
            })
            .collect();
        let outcome = format!("patient history: {} changes", history.len());
        self.audit_blocking(principal, "query", patient_key(id), outcome);
        Ok(history)
    }

    /// A merge asked for by the CLI (the effect of ADT^A40, without a control id): the
    /// survivor's demographics default to those the archive shows for it now.
    pub async fn merge_patients(
        &self,
        principal: &Principal,
        request: &MergeRequest,
    ) -> Result<ChangeOutcome, Error> {
        let (this, survivor) = (self.clone(), request.survivor.clone());
        let known = blocking(move || {
            let query = crate::query::Query::from_keys(
                crate::query::Level::Patient,
                &[
                    (crate::query::tags::PATIENT_ID, survivor.as_str()),
                    (crate::query::tags::PATIENT_NAME, ""),
                    (crate::query::tags::PATIENT_BIRTH_DATE, ""),
                    (crate::query::tags::PATIENT_SEX, ""),
                ],
            );
            Ok(crate::query::find(
                this.index.as_ref(),
                crate::query::Model::PatientRoot,
                &query,
            )?
            .into_iter()
            .next())
        })
        .await?;
        let from_archive = |tag| known.as_ref().and_then(|a| a.get(&tag).cloned());
        let patient_name = match (
            &request.patient_name,
            from_archive(crate::query::tags::PATIENT_NAME),
        ) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name,
            (None, None) => {
                return Err(Error::InvalidRequest(format!(
                    "the archive holds no patient {}: give the survivor's name",
                    request.survivor
                )))
            }
        };
        let pick = |given: &Option<String>, tag| {
            given
                .clone()
                .or_else(|| from_archive(tag))
                .unwrap_or_default()
        };
        let change = PatientChange::Merge {
            survivor: Demographics {
                patient_id: request.survivor.clone(),
                issuer: request.issuer.clone().unwrap_or_default(),
                patient_name,
                patient_birth_date: pick(
                    &request.patient_birth_date,
                    crate::query::tags::PATIENT_BIRTH_DATE,
                ),
                patient_sex: pick(&request.patient_sex, crate::query::tags::PATIENT_SEX),
            },
            prior: request.prior.clone(),
        };
        self.change_patient(principal, change, None).await
    }

    /// What an HL7 message with this control id gave when it was processed before, if it
    /// was (exactly once: the caller acknowledges it again and does nothing).
    pub(crate) fn earlier_message(
        &self,
        control_id: Option<&str>,
    ) -> Result<Option<String>, Error> {
        match control_id {
            Some(cid) => Ok(self.index.hl7_message(cid)?),
            None => Ok(None),
        }
    }

    /// Brings the index level with the governance log's patient changes and rejection
    /// notes (blocking), before anything is served: a record whose index batch was not
    /// written (a crash between the two) is applied now, and audited as replayed when it
    /// had not been. Only what differs from the log's final state is written, so a
    /// clean start writes nothing. Returns how many links and rejections were written.
    pub fn reconcile_governance_blocking(&self) -> Result<usize, Error> {
        let records = self.governance.read()?;
        let index = self.index.as_ref();
        let changes = crate::storage::governance_log::patient_changes(&records);
        // the final link of each stored ID (in log order, a later change wins)
        let mut last: std::collections::BTreeMap<String, PatientLink> = Default::default();
        for change in &changes {
            for (stored, link) in &change.links {
                last.insert(stored.clone(), link.clone());
            }
        }
        let mut stale = Vec::new();
        for (stored, link) in last {
            if index.patient_link(&stored)?.as_ref() != Some(&link) {
                stale.push((stored, link));
            }
        }
        let mut written = stale.len();
        if !stale.is_empty() {
            index.set_patient_links(&stale, None)?;
        }
        let replayed = Principal::system("governance-replay");
        for change in &changes {
            let Some((cid, summary)) = change.message() else {
                continue;
            };
            if index.hl7_message(cid)?.is_some() {
                continue;
            }
            // cut short before its index batch, so before its audit record: both now
            index.set_patient_links(&[], Some((cid, summary)))?;
            let action = match change.action.as_str() {
                "patient_merge" => "patient_merge",
                "patient_id_change" => "patient_id_change",
                _ => "patient_update",
            };
            self.audit_synced(
                &replayed,
                action,
                Vec::new(),
                format!(
                    "replayed from the governance log after a crash (asked by {}): {summary}",
                    change.by
                ),
            )?;
        }
        for record in &records {
            let GovernanceRecord::Rejection {
                instances,
                rejection,
            } = record
            else {
                continue;
            };
            let mut missing = Vec::new();
            for (study, series, sop) in instances {
                let known = index
                    .rejections_of_study(study)?
                    .iter()
                    .any(|(s, i, r)| s == series && i == sop && r.note == rejection.note);
                if !known {
                    missing.push((study.clone(), series.clone(), sop.clone()));
                }
            }
            if missing.is_empty() {
                continue;
            }
            index.reject_instances(&missing, rejection)?;
            written += missing.len();
            self.audit_synced(
                &replayed,
                "reject",
                missing.iter().map(|(_, _, sop)| sop.clone()).collect(),
                format!(
                    "replayed from the governance log after a crash (sent by {}): ({}, DCM) by note {}",
                    rejection.by, rejection.code, rejection.note
                ),
            )?;
        }
        Ok(written)
    }

    /// Applies `change` for `principal` (who needs `admin`), once per `control_id`; see
    /// the module docs. [`Error::InvalidRequest`] for a merge of a patient into itself
    /// or an empty PatientID.
    pub async fn change_patient(
        &self,
        principal: &Principal,
        change: PatientChange,
        control_id: Option<&str>,
    ) -> Result<ChangeOutcome, Error> {
        self.authorize(principal, Role::Admin, change.action(), &[])?;
        self.ingest()?;
        let target = change.target().clone();
        if target.patient_id.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "the patient's ID (PID-3) is empty".into(),
            ));
        }
        let _serial = self.patient_changes.lock().await;
        let (this, p, cid) = (
            self.clone(),
            principal.clone(),
            control_id.map(str::to_string),
        );
        blocking(move || this.change_patient_blocking(&p, &change, cid.as_deref())).await
    }

    fn change_patient_blocking(
        &self,
        principal: &Principal,
        change: &PatientChange,
        control_id: Option<&str>,
    ) -> Result<ChangeOutcome, Error> {
        let index = self.index.as_ref();
        if let Some(earlier) = self.earlier_message(control_id)? {
            return Ok(ChangeOutcome {
                duplicate: true,
                relinked: Vec::new(),
                studies: 0,
                summary: earlier,
            });
        }
        let target = change.target();
        // an update or identifier change naming an ID merged away or renamed since would
        // undo that change: refused, naming the ID it is known by now
        let named = match change {
            PatientChange::Update { patient } => Some(patient.patient_id.as_str()),
            PatientChange::ChangeId { old, .. } => Some(old.as_str()),
            PatientChange::Merge { .. } => None,
        };
        if let Some(id) = named {
            if let Some(link) = index.patient_link(id)?.filter(|l| l.patient_id != id) {
                return Err(Error::InvalidRequest(format!(
                    "patient {id} is known as {} since an earlier change: send the change for {}",
                    link.patient_id, link.patient_id
                )));
            }
        }
        // the stored PatientIDs the change applies to: the named one(s) and every one
        // already linked to them
        let mut stored: Vec<String> = match change {
            PatientChange::Update { patient } => vec![patient.patient_id.clone()],
            PatientChange::Merge { survivor, prior } => {
                if prior == &survivor.patient_id {
                    return Err(Error::InvalidRequest(format!(
                        "a patient cannot be merged into itself ({prior})"
                    )));
                }
                vec![prior.clone(), survivor.patient_id.clone()]
            }
            PatientChange::ChangeId { patient, old } => {
                if old == &patient.patient_id {
                    return Err(Error::InvalidRequest(format!(
                        "the new identifier is the old one ({old})"
                    )));
                }
                vec![old.clone()]
            }
        };
        for id in stored.clone() {
            stored.extend(index.patient_aliases(&id)?);
        }
        stored.sort();
        stored.dedup();
        let now = unix_ms_now();
        let link = PatientLink {
            patient_id: target.patient_id.clone(),
            issuer: target.issuer.clone(),
            patient_name: target.patient_name.clone(),
            patient_birth_date: target.patient_birth_date.clone(),
            patient_sex: target.patient_sex.clone(),
            changed_at_ms: now,
            control_id: control_id.unwrap_or_default().to_string(),
        };
        let mut relinked = Vec::new();
        let mut links = Vec::new();
        for id in &stored {
            let before = index
                .patient_link(id)?
                .map(|l| format!("{} ({})", l.patient_id, l.patient_name))
                .unwrap_or_else(|| id.clone());
            relinked.push((id.clone(), before));
            links.push((id.clone(), link.clone()));
        }
        let before: Vec<String> = relinked
            .iter()
            .map(|(id, was)| format!("{id}: {was}"))
            .collect();
        let summary = format!(
            "{}{}: [{}] -> {} ({})",
            control_id.map(|c| format!("{c}: ")).unwrap_or_default(),
            change.action(),
            before.join("; "),
            target.patient_id,
            target.patient_name
        );
        // on record before it takes effect: the governance log (replayed by reindex),
        // then the index with the control id, then the audit log
        self.governance.append(GovernanceRecord::Patient {
            links: links.clone(),
            control_id: control_id.unwrap_or_default().to_string(),
            summary: summary.clone(),
            by: principal.name(),
            action: change.action().to_string(),
        })?;
        crate::tiering::failpoint("patient-after-governance");
        index.set_patient_links(&links, control_id.map(|c| (c, summary.as_str())))?;
        let studies = studies_of_patient(index, &target.patient_id)?;
        self.audit_synced(principal, change.action(), studies.clone(), summary.clone())?;
        Ok(ChangeOutcome {
            duplicate: false,
            relinked,
            studies: studies.len(),
            summary,
        })
    }
}

/// The audit record's key of a query about the PatientID `id`.
fn patient_key(id: &str) -> Vec<String> {
    vec![format!("(0010,0020)={id}")]
}
