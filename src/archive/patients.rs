//! Patient identity changes: the hospital's corrections (HL7 ADT A08/A31 demographics,
//! A40 merge, A47 identifier change, or `strata patient merge`) applied without
//! rewriting anything stored (docs/patients.md).
//!
//! A change links stored PatientIDs to the identity they are known by now
//! ([`PatientLink`]); queries answer with the linked identity at once. Each change is,
//! in this order: refused if its HL7 message control id was processed before (exactly
//! once: the earlier outcome is returned); appended, synced, to the governance log
//! (where `reindex` replays it: the objects themselves never change); an audit record
//! (synced) with the control id, the identities before and after; and written to the
//! index in one synced batch together with the control id. A crash between any two
//! leaves the logs ahead of the index: the next start applies what the index lacks and
//! audits it as replayed ([`Archive::reconcile_governance_blocking`]), so a change is
//! never in effect unaudited. Changes are serialised: two feeds never compute links
//! from the same stale state.

use super::principal::Role;
use super::{blocking, Archive, Error, Principal};
use crate::dicom::metadata::InstanceMetadata;
use crate::index::{
    issuers_agree, patient_key, split_patient_key, unix_ms_now, Index, PatientLink, SecondaryKey,
};
use crate::query::studies_of_patient;
use crate::storage::governance_log::GovernanceRecord;
use serde::Serialize;
use strata_tiers::ObjectId;

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
    /// ADT^A40: the patient `prior` (of `prior_issuer`, MRG-1.4; empty: unknown) was
    /// merged into `survivor`; `prior`'s studies are `survivor`'s from now on.
    Merge {
        survivor: Demographics,
        prior: String,
        prior_issuer: String,
    },
    /// ADT^A47: the patient known as `old` (of `old_issuer`, MRG-1.4) is now
    /// `patient.patient_id`.
    ChangeId {
        patient: Demographics,
        old: String,
        old_issuer: String,
    },
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
    /// The prior patient's IssuerOfPatientID, when the PatientID alone is ambiguous.
    #[serde(default)]
    pub prior_issuer: Option<String>,
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
    /// The patient `id` of `issuer` (empty: unknown) as the archive knows it now
    /// (blocking), for `principal` (who needs `viewer`); audited as a `query` naming the
    /// ID.
    pub fn patient_view_blocking(
        &self,
        principal: &Principal,
        id: &str,
        issuer: &str,
    ) -> Result<PatientView, Error> {
        self.authorize(principal, Role::Viewer, "query", &query_key(id))?;
        let index = self.index.as_ref();
        let link = crate::query::link_of(index, id, issuer)?;
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
        self.audit_blocking(principal, "query", query_key(id), outcome);
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
        self.authorize(principal, Role::Viewer, "query", &query_key(id))?;
        let records = self.governance.read()?;
        let history: Vec<HistoryEntry> = crate::storage::governance_log::patient_changes(&records)
            .into_iter()
            .filter(|c| {
                c.links.iter().any(|(stored, link)| {
                    split_patient_key(stored).0 == id || link.patient_id == id
                })
            })
            .map(|c| HistoryEntry {
                changed_at_ms: c.links.first().map_or(0, |(_, l)| l.changed_at_ms),
                control_id: c.control_id,
                summary: c.summary,
            })
            .collect();
        let outcome = format!("patient history: {} changes", history.len());
        self.audit_blocking(principal, "query", query_key(id), outcome);
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
        let issuer = request.issuer.clone().unwrap_or_default();
        let known = blocking(move || {
            let query = crate::query::Query::from_keys(
                crate::query::Level::Patient,
                &[
                    (crate::query::tags::PATIENT_ID, survivor.as_str()),
                    (crate::query::tags::ISSUER_OF_PATIENT_ID, issuer.as_str()),
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
            prior_issuer: request.prior_issuer.clone().unwrap_or_default(),
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
        // the final link of each stored patient and the change that made it (in log
        // order, a later change wins)
        let mut last: std::collections::BTreeMap<String, (usize, PatientLink)> = Default::default();
        for (n, change) in changes.iter().enumerate() {
            for (stored, link) in &change.links {
                last.insert(stored.clone(), (n, link.clone()));
            }
        }
        // a change whose links or control id the index lacks was cut short before its
        // index batch (perhaps before its audit record): applied and audited now
        let mut cut_short = std::collections::BTreeSet::new();
        let mut stale = Vec::new();
        for (stored, (n, link)) in last {
            if index.patient_link(&stored)?.as_ref() != Some(&link) {
                stale.push((stored, link));
                cut_short.insert(n);
            }
        }
        for (n, change) in changes.iter().enumerate() {
            if let Some((cid, _)) = change.message() {
                if index.hl7_message(cid)?.is_none() {
                    cut_short.insert(n);
                }
            }
        }
        let mut written = stale.len();
        if !stale.is_empty() {
            index.set_patient_links(&stale, None)?;
        }
        let replayed = Principal::system("governance-replay");
        for n in cut_short {
            let change = &changes[n];
            if let Some((cid, summary)) = change.message() {
                index.set_patient_links(&[], Some((cid, summary)))?;
            }
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
                    "replayed from the governance log after a crash (asked by {}): {}",
                    change.by, change.summary
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
        let same = |a: &str, a_issuer: &str, b: &str, b_issuer: &str| {
            a == b && issuers_agree(a_issuer, b_issuer)
        };
        // the patients the change names, (PatientID, issuer); an update or identifier
        // change naming a patient merged away or renamed since would undo that change
        let (named, renamed): (Vec<(&str, &str)>, bool) = match change {
            PatientChange::Update { patient } => {
                (vec![(&patient.patient_id, &patient.issuer)], true)
            }
            PatientChange::Merge {
                survivor,
                prior,
                prior_issuer,
            } => {
                if same(prior, prior_issuer, &survivor.patient_id, &survivor.issuer) {
                    return Err(Error::InvalidRequest(format!(
                        "a patient cannot be merged into itself ({prior})"
                    )));
                }
                (
                    vec![
                        (prior, prior_issuer),
                        (&survivor.patient_id, &survivor.issuer),
                    ],
                    false,
                )
            }
            PatientChange::ChangeId {
                patient,
                old,
                old_issuer,
            } => {
                if same(old, old_issuer, &patient.patient_id, &patient.issuer) {
                    return Err(Error::InvalidRequest(format!(
                        "the new identifier is the old one ({old})"
                    )));
                }
                (vec![(old, old_issuer)], true)
            }
        };
        // the stored patients the change applies to: those the archive holds under the
        // named ones, and every one already linked to them
        let mut stored: std::collections::BTreeSet<String> = Default::default();
        for (pid, issuer) in &named {
            for key in held_keys(index, pid, issuer)? {
                if renamed {
                    let link = index.patient_link(&key)?;
                    if let Some(link) = link.filter(|l| l.patient_id != *pid) {
                        return Err(Error::InvalidRequest(format!(
                            "patient {pid} is known as {} since an earlier change: send the change for {}",
                            link.patient_id, link.patient_id
                        )));
                    }
                }
                stored.insert(key);
            }
        }
        let now = unix_ms_now();
        let mut relinked = Vec::new();
        let mut links = Vec::new();
        for key in &stored {
            let (id, id_issuer) = split_patient_key(key);
            let before = index
                .patient_link(key)?
                .map(|l| {
                    format!(
                        "{} ({})",
                        patient_key(&l.patient_id, &l.issuer),
                        l.patient_name
                    )
                })
                .unwrap_or_else(|| key.clone());
            relinked.push((key.clone(), before));
            // an update naming no issuer keeps the one each stored patient has
            let issuer = match target.issuer.is_empty() && id == target.patient_id {
                true => id_issuer.to_string(),
                false => target.issuer.clone(),
            };
            links.push((
                key.clone(),
                PatientLink {
                    patient_id: target.patient_id.clone(),
                    issuer,
                    patient_name: target.patient_name.clone(),
                    patient_birth_date: target.patient_birth_date.clone(),
                    patient_sex: target.patient_sex.clone(),
                    changed_at_ms: now,
                    control_id: control_id.unwrap_or_default().to_string(),
                },
            ));
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
        // on record before it takes effect: the governance log (replayed by reindex and
        // at start), then the audit log, then the index with the control id — a crash
        // anywhere leaves the logs ahead of the index, never an unaudited change
        self.governance.append(GovernanceRecord::Patient {
            links: links.clone(),
            control_id: control_id.unwrap_or_default().to_string(),
            summary: summary.clone(),
            by: principal.name(),
            action: change.action().to_string(),
        })?;
        crate::tiering::failpoint("patient-after-governance");
        // the studies the change concerns: those shown under the identity now, and those
        // of the patients it relinks
        let mut studies = studies_of_patient(index, &target.patient_id)?;
        for key in &stored {
            studies.extend(index.studies_by(SecondaryKey::PatientId, split_patient_key(key).0)?);
        }
        studies.sort();
        studies.dedup();
        self.audit_synced(principal, change.action(), studies.clone(), summary.clone())?;
        crate::tiering::failpoint("patient-after-audit");
        index.set_patient_links(&links, control_id.map(|c| (c, summary.as_str())))?;
        Ok(ChangeOutcome {
            duplicate: false,
            relinked,
            studies: studies.len(),
            summary,
        })
    }
}

/// The keys of the stored patients a change naming (`patient_id`, `issuer`) applies to:
/// the named one; those the archive holds under the PatientID whose issuer agrees
/// ([`issuers_agree`]: the same, or unknown on one side); and those linked by earlier
/// changes to an identity of that PatientID whose issuer agrees. A change naming no
/// issuer for a PatientID known under two or more issuers is refused: it cannot say
/// which patient it means.
fn held_keys(index: &dyn Index, patient_id: &str, issuer: &str) -> Result<Vec<String>, Error> {
    let held = held_issuers(index, patient_id)?;
    let mut linked = Vec::new();
    for alias in index.patient_aliases(patient_id)? {
        if let Some(link) = index.patient_link(&alias)? {
            linked.push((alias, link.issuer));
        }
    }
    let known: std::collections::BTreeSet<&str> = held
        .iter()
        .map(String::as_str)
        .chain(linked.iter().map(|(_, i)| i.as_str()))
        .filter(|i| !i.is_empty())
        .collect();
    if issuer.is_empty() && known.len() > 1 {
        return Err(Error::InvalidRequest(format!(
            "PatientID {patient_id} is known under several issuers ({}): the change must name its issuer (PID-3.4, MRG-1.4)",
            known.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut keys = vec![patient_key(patient_id, issuer)];
    keys.extend(
        held.iter()
            .filter(|h| h.as_str() != issuer && issuers_agree(h, issuer))
            .map(|h| patient_key(patient_id, h)),
    );
    keys.extend(
        linked
            .into_iter()
            .filter(|(_, i)| issuers_agree(i, issuer))
            .map(|(alias, _)| alias),
    );
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The issuers of the patients the archive holds studies of under `patient_id` (the
/// empty string for those of unknown issuer).
fn held_issuers(
    index: &dyn Index,
    patient_id: &str,
) -> Result<std::collections::BTreeSet<String>, Error> {
    let mut held = std::collections::BTreeSet::new();
    for uid in index.studies_by(SecondaryKey::PatientId, patient_id)? {
        let Some(study) = index.study(&uid)? else {
            continue;
        };
        let identities = std::iter::once(study.identity())
            .chain(study.other_patients.iter().map(|o| o.identity()));
        for p in identities.filter(|p| p.patient_id == patient_id) {
            held.insert(p.issuer.to_string());
        }
    }
    Ok(held)
}

/// The audit record's key of a query about the PatientID `id`.
fn query_key(id: &str) -> Vec<String> {
    vec![format!("(0010,0020)={id}")]
}

/// The ingest policy giving a data set without IssuerOfPatientID the issuer `[patients]`
/// configures for its sender (`None` when none is configured). The first time a study
/// gets a patient this way, a governance record `issuer` says so (synced, before the
/// instance is committed): the sender is not in the object, and `reindex` must give the
/// study the same patient.
pub(crate) fn default_issuer_policy(
    config: &crate::config::Config,
    governance: &crate::storage::governance_log::GovernanceLog,
    index: &std::sync::Arc<dyn Index>,
) -> Option<crate::ingest::AttrsPolicy> {
    if !config.patients.any() {
        return None;
    }
    let (defaults, governance, index) =
        (config.patients.clone(), governance.clone(), index.clone());
    Some(std::sync::Arc::new(
        move |attrs: &mut crate::dicom::header::InstanceAttrs,
              provenance: &crate::index::Provenance| {
            if !attrs.issuer_of_patient_id.is_empty() || attrs.patient_id.is_empty() {
                return Ok(());
            }
            let Some(issuer) = defaults.issuer_for(&provenance.calling_ae) else {
                return Ok(());
            };
            attrs.issuer_of_patient_id = issuer.to_string();
            let study = index.study(&attrs.study_uid).map_err(|e| e.to_string())?;
            let known = study.is_some_and(|s| {
                std::iter::once(s.identity())
                    .chain(s.other_patients.iter().map(|o| o.identity()))
                    .any(|p| p.patient_id == attrs.patient_id && p.issuer == issuer)
            });
            if !known {
                governance
                    .append(GovernanceRecord::Issuer {
                        study_uid: attrs.study_uid.clone(),
                        patient_id: attrs.patient_id.clone(),
                        issuer: issuer.to_string(),
                        calling_ae: provenance.calling_ae.clone(),
                    })
                    .map_err(|e| format!("cannot record the patient's issuer: {e}"))?;
            }
            Ok(())
        },
    ))
}

/// The start-up migration step that made patients (PatientID, IssuerOfPatientID) pairs.
const ISSUER_MIGRATION: &str = crate::index::kv::PATIENT_ISSUERS_MIGRATION;

impl Archive {
    /// Migrates an index written before patients were keyed by (PatientID,
    /// IssuerOfPatientID), once (blocking; at start, before anything is served):
    /// each study's patients get the IssuerOfPatientID their data sets carry (read from
    /// the metadata record of the first instance of one of their series), and each
    /// patient link made for a PatientID alone is copied to the patients of that
    /// PatientID now known with an issuer, on record in the governance log (so that
    /// `reindex` gives the same links). Returns how many studies and links it wrote.
    /// Running it again changes nothing; an index rebuilt by `reindex` runs it again.
    pub fn migrate_patient_model_blocking(&self) -> Result<(usize, usize), Error> {
        let index = self.index.as_ref();
        if index.migrated(ISSUER_MIGRATION)? {
            return Ok((0, 0));
        }
        let mut issuers = Vec::new();
        let mut failure = None;
        index.for_each_study(&mut |uid, study| {
            let found = (|| -> Result<(), Error> {
                if !study.issuer_of_patient_id.is_empty()
                    && study
                        .other_patients
                        .iter()
                        .all(|o| !o.issuer_of_patient_id.is_empty())
                {
                    return Ok(());
                }
                for (series, _) in index.series_of_study(uid)? {
                    let p = study.patient_of_series(&series);
                    let seen = issuers
                        .iter()
                        .any(|(s, id, _)| s == uid && id == p.patient_id);
                    if !p.issuer.is_empty() || seen {
                        continue;
                    }
                    let issuer = index
                        .first_instance(uid, Some(&series))?
                        .and_then(|e| e.record.current().and_then(|v| ObjectId::from_hex(&v.id)))
                        .map(|id| index.instance_metadata(&id))
                        .transpose()?
                        .flatten()
                        .and_then(|m| InstanceMetadata::decode(&m).ok())
                        .and_then(|m| m.attribute_text(&[ISSUER_TAG]).pop())
                        .map(|(_, issuer)| issuer.trim().to_string())
                        .unwrap_or_default();
                    if !issuer.is_empty() {
                        issuers.push((uid.to_string(), p.patient_id.to_string(), issuer));
                    }
                }
                Ok(())
            })();
            if let Err(e) = found {
                failure = Some(e);
                return false;
            }
            true
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let studies = index.set_patient_issuers(&issuers)?;
        // links made for a bare PatientID, copied to its patients now known with an issuer
        let mut copies = Vec::new();
        for (stored, link) in index.patient_links()? {
            let (pid, issuer) = split_patient_key(&stored);
            if !issuer.is_empty() {
                continue;
            }
            for i in held_issuers(index, pid)?.iter().filter(|i| !i.is_empty()) {
                let key = patient_key(pid, i);
                if index.patient_link(&key)?.is_none() {
                    let mut copy = link.clone();
                    if copy.issuer.is_empty() && copy.patient_id == pid {
                        copy.issuer = i.clone();
                    }
                    copies.push((key, copy));
                }
            }
        }
        if !copies.is_empty() {
            let summary = format!(
                "patient model migration: links of PatientIDs now known with an issuer: {}",
                copies
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.governance.append(GovernanceRecord::Patient {
                links: copies.clone(),
                control_id: String::new(),
                summary: summary.clone(),
                by: Principal::system("migration").name(),
                action: "patient_update".into(),
            })?;
            index.set_patient_links(&copies, None)?;
            self.audit_synced(
                &Principal::system("migration"),
                "patient_update",
                Vec::new(),
                summary,
            )?;
        }
        index.mark_migrated(ISSUER_MIGRATION)?;
        if studies > 0 || !copies.is_empty() {
            tracing::info!(
                studies,
                links = copies.len(),
                "patients are now (PatientID, IssuerOfPatientID): issuers taken from the data sets"
            );
        }
        Ok((studies, copies.len()))
    }
}

/// IssuerOfPatientID (0010,0021).
const ISSUER_TAG: u32 = 0x0010_0021;

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// The metadata record of a data set of patient `P1` whose IssuerOfPatientID is
    /// `EAST`.
    fn metadata_with_issuer() -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        for (tag, vr, v) in [
            (tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.7"),
            (tags::SOP_INSTANCE_UID, VR::UI, "8.1.1.1"),
            (tags::PATIENT_ID, VR::LO, "P1"),
            (tags::ISSUER_OF_PATIENT_ID, VR::LO, "EAST"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "8.1"),
        ] {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                    .media_storage_sop_instance_uid("8.1.1.1"),
            )
            .unwrap();
        let mut part10 = Vec::new();
        file.write_all(&mut part10).unwrap();
        InstanceMetadata::of_part10(&part10).unwrap().encode()
    }

    /// An index written before patients were (PatientID, issuer) pairs: its study record
    /// has no issuer though the data set has one, and a merge linked the bare PatientID.
    /// The start-up migration gives the study its issuer, carries the link over to the
    /// patient key now used (on record in the governance log, for `reindex`), and runs
    /// once.
    #[test]
    fn the_start_up_migration_keys_old_patients_by_their_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.archive.data_dir = dir.path().join("data");
        config.cold.url = format!("file://{}", dir.path().join("cold").display());
        config.audit.enabled = false;
        // an index as an earlier build left it: without the migration's mark
        {
            use crate::index::kv::{Batch, KvEngine, CF_META};
            std::fs::create_dir_all(&config.archive.data_dir).unwrap();
            let old = crate::index::RocksIndex::open_primary(&config.index_dir()).unwrap();
            let mut unmark = Batch::default();
            unmark.delete(CF_META, format!("migrated/{ISSUER_MIGRATION}").into_bytes());
            old.engine().write(unmark, true).unwrap();
        }
        let (storage, _) =
            crate::storage::Storage::open_exclusive(&config, "migration test").unwrap();
        let archive = Archive::exclusive(&config, &storage).unwrap();
        let mut old = crate::index::conformance::object("8.1", "8.1.1", "8.1.1.1", b"8", 1);
        old.metadata = Some(metadata_with_issuer());
        archive.index.commit(&[old]).unwrap();
        let link = PatientLink {
            patient_id: "A1".into(),
            issuer: String::new(),
            patient_name: "SMITH^ALICE".into(),
            patient_birth_date: String::new(),
            patient_sex: String::new(),
            changed_at_ms: 1,
            control_id: "M1".into(),
        };
        archive
            .index
            .set_patient_links(&[("P1".into(), link.clone())], None)
            .unwrap();
        assert_eq!(archive.migrate_patient_model_blocking().unwrap(), (1, 1));
        let study = archive.index.study("8.1").unwrap().unwrap();
        assert_eq!(study.issuer_of_patient_id, "EAST");
        assert_eq!(
            archive.index.patient_link("P1\\EAST").unwrap(),
            Some(link.clone()),
            "the merge follows the patient under its new key"
        );
        let logged =
            crate::storage::governance_log::patient_changes(&archive.governance.read().unwrap());
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].links, vec![("P1\\EAST".to_string(), link)]);
        // once only
        assert_eq!(archive.migrate_patient_model_blocking().unwrap(), (0, 0));
        assert_eq!(
            crate::storage::governance_log::patient_changes(&archive.governance.read().unwrap())
                .len(),
            1
        );
    }
}
