//! Listing and showing: what the archive holds and where each copy is (`strata ls`,
//! `strata show`; later the admin API and the viewer's study list).
//!
//! Views are built from the index alone; locations name the hot file or the cold pack
//! member (`key@offset`) of each kept version. Each listing or view is an audit record
//! `query` of its caller: what the archive holds, and about whom, is itself an access.

use super::principal::Role;
use super::{Archive, Error, Principal};
use crate::index::{Index, InstanceEntry, ObjectRecord, StudyRecord, Tier};
use serde::Serialize;
use std::collections::BTreeMap;
use strata_tiers::{ColdStore, HotDisk, ObjectId};

type Result<T> = std::result::Result<T, Error>;

/// The audit outcome of looking one thing up with `command`: `shown`, `not held`, or
/// the failure.
fn looked_at<T>(command: &str, found: &Result<Option<T>>) -> String {
    match found {
        Ok(Some(_)) => format!("{command}: shown"),
        Ok(None) => format!("{command}: not held"),
        Err(e) => format!("failed: {command}: {e}"),
    }
}

fn malformed(what: &str) -> Error {
    Error::Internal(format!("the index holds {what}; run `strata verify`"))
}

impl Archive {
    /// Every study, with its last access (blocking), for `principal`: an audit record
    /// `query` (`ls: <n> studies`), like any listing of what the archive holds.
    pub fn list_studies_blocking(&self, principal: &Principal) -> Result<Vec<StudySummary>> {
        self.authorize(principal, Role::Viewer, "query", &[])?;
        let listed = list_studies(self.index.as_ref());
        let outcome = match &listed {
            Ok(studies) => format!("ls: {} studies", studies.len()),
            Err(e) => format!("failed: ls: {e}"),
        };
        self.audit_blocking(principal, "query", Vec::new(), outcome);
        listed
    }

    /// A study with its series and instances, if held (blocking), for `principal`
    /// (audited as a `query` naming the study).
    pub fn study_view_blocking(
        &self,
        principal: &Principal,
        study_uid: &str,
    ) -> Result<Option<StudyView>> {
        self.authorize(principal, Role::Viewer, "query", &[study_uid.to_string()])?;
        let view = self.study_view_unaudited(study_uid);
        let outcome = looked_at("ls", &view);
        self.audit_blocking(principal, "query", vec![study_uid.to_string()], outcome);
        view
    }

    /// [`Archive::study_view_blocking`] for a use case that audits the access itself
    /// (a FHIR search builds each ImagingStudy from it).
    pub(crate) fn study_view_unaudited(&self, study_uid: &str) -> Result<Option<StudyView>> {
        study_view(self.tiers(), self.index.as_ref(), study_uid)
    }

    /// Whatever `uid` names: a study, a series or an instance (blocking), for
    /// `principal` (audited as a `query` naming the UID).
    pub fn show_blocking(&self, principal: &Principal, uid: &str) -> Result<Option<Shown>> {
        self.authorize(principal, Role::Viewer, "query", &[uid.to_string()])?;
        let shown = show(self.tiers(), self.index.as_ref(), uid);
        let outcome = looked_at("show", &shown);
        self.audit_blocking(principal, "query", vec![uid.to_string()], outcome);
        shown
    }

    /// Every Study Instance UID in the archive (blocking).
    pub fn study_uids_blocking(&self) -> Result<Vec<String>> {
        Ok(self
            .index
            .studies()?
            .into_iter()
            .map(|(uid, _)| uid)
            .collect())
    }

    /// The legal holds standing, one per study and matter, with who placed each, when
    /// and why (blocking).
    pub fn holds_blocking(&self) -> Result<Vec<(String, crate::index::HoldRecord)>> {
        let mut studies = Vec::new();
        self.index.for_each_study(&mut |uid, _| {
            studies.push(uid.to_string());
            true
        })?;
        let mut holds = Vec::new();
        for uid in studies {
            for h in self.index.holds(&uid)? {
                holds.push((uid.clone(), h));
            }
        }
        Ok(holds)
    }

    /// Deleted studies: what, who, why, when, and whether the study was stored again
    /// since (blocking).
    pub fn tombstones_blocking(&self) -> Result<Vec<TombstoneView>> {
        self.index
            .tombstones()?
            .into_iter()
            .map(|tombstone| {
                // some instances of a study that stays: stored again when one of them is
                let stored_again = match tombstone.partial {
                    false => self.index.study(&tombstone.study_uid)?.is_some(),
                    true => {
                        let mut any = false;
                        for (_, _, id) in &tombstone.objects {
                            if let Some(id) = ObjectId::from_hex(id) {
                                any |= self.index.has_object(&id)?;
                            }
                        }
                        any
                    }
                };
                Ok(TombstoneView {
                    stored_again,
                    tombstone,
                })
            })
            .collect()
    }

    /// The tombstone of a study UID, if the study was deleted (blocking).
    pub fn tombstone_of_blocking(&self, study_uid: &str) -> Result<Option<TombstoneView>> {
        Ok(self
            .tombstones_blocking()?
            .into_iter()
            .find(|t| t.tombstone.study_uid == study_uid && !t.tombstone.partial))
    }

    fn tiers(&self) -> Tiers<'_> {
        Tiers {
            hot: &self.hot,
            cold: &self.cold,
        }
    }
}

/// Where the archive's tiers are, for the views that name locations.
#[derive(Clone, Copy)]
struct Tiers<'a> {
    hot: &'a HotDisk,
    cold: &'a ColdStore,
}

/// A tombstone as listed: the deletion, and whether the study lives again (stored again
/// after it was deleted; the tombstone stays, as history).
#[derive(Debug, Serialize)]
pub struct TombstoneView {
    #[serde(flatten)]
    pub tombstone: crate::index::Tombstone,
    pub stored_again: bool,
}

#[derive(Debug, Serialize)]
pub struct StudySummary {
    pub study_uid: String,
    pub patient_id: String,
    /// IssuerOfPatientID (empty: unknown).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_of_patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub accession_number: String,
    pub study_description: String,
    pub modalities: Vec<String>,
    pub series: u64,
    pub instances: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Last store or retrieval (ms since the epoch), for the tiering policy.
    pub last_access_ms: Option<u64>,
    /// The legal holds standing on the study (one per matter), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<crate::index::HoldRecord>,
    /// Other PatientIDs some series of the study were sent under (a patient conflict:
    /// each such series stays findable under its own PatientID), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patient_conflicts: Vec<crate::index::OtherPatient>,
    /// The PatientID the study was received under, when the hospital has since merged,
    /// renamed or corrected its patient (`patient_id` and `patient_name` are then the
    /// current ones: docs/patients.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_patient_id: Option<String>,
}

impl StudySummary {
    /// This summary under the identities its patients are known by now, as C-FIND
    /// shows them: the study's own patient (the stored ID kept in `stored_patient_id`)
    /// and each conflicting patient's.
    fn known_now(mut self, index: &dyn Index) -> Result<Self> {
        if let Some(link) =
            crate::query::link_of(index, &self.patient_id, &self.issuer_of_patient_id)?
        {
            self.stored_patient_id = Some(std::mem::replace(&mut self.patient_id, link.patient_id));
            self.issuer_of_patient_id = link.issuer;
            self.patient_name = link.patient_name;
        }
        for other in &mut self.patient_conflicts {
            if let Some(link) =
                crate::query::link_of(index, &other.patient_id, &other.issuer_of_patient_id)?
            {
                other.patient_id = link.patient_id;
                other.issuer_of_patient_id = link.issuer;
                other.patient_name = link.patient_name;
            }
        }
        Ok(self)
    }

    fn new(study_uid: String, s: StudyRecord) -> Self {
        StudySummary {
            last_access_ms: None,
            holds: Vec::new(),
            study_uid,
            patient_conflicts: s.other_patients,
            stored_patient_id: None,
            patient_id: s.patient_id,
            issuer_of_patient_id: s.issuer_of_patient_id,
            patient_name: s.patient_name,
            study_date: s.study_date,
            accession_number: s.accession_number,
            study_description: s.study_description,
            modalities: s.modalities,
            series: s.series,
            instances: s.instances,
            objects: s.objects,
            bytes: s.bytes,
        }
    }
}

fn list_studies(index: &dyn Index) -> Result<Vec<StudySummary>> {
    index
        .studies()?
        .into_iter()
        .map(|(uid, s)| {
            let summary = StudySummary {
                last_access_ms: index.last_access(&uid)?,
                holds: index.holds(&uid)?,
                ..StudySummary::new(uid, s)
            };
            summary.known_now(index)
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct VersionView {
    pub id: String,
    /// The data-set hash (`docs/formats.md`), when ingest recorded one (it does for every
    /// version after the first).
    pub dataset: Option<String>,
    pub size: u64,
    pub received_at_ms: u64,
    /// `hot` (a file on hot disk) or `cold` (only in packs).
    pub tier: String,
    /// The node whose hot disk holds the hot file (`[cluster] node_id`; absent for
    /// records from before nodes were named, and for cold-only objects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_node: Option<String>,
    /// The hot file (on `hot_node`), or the first cold copy as `key@offset`.
    pub location: String,
    /// Every verified copy in a cold pack.
    pub cold_copies: Vec<ColdCopyView>,
    /// The scrubber's latest check of this object.
    pub last_verified: Option<crate::index::FixityRecord>,
    pub calling_ae: String,
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct ColdCopyView {
    pub pack: String,
    pub key: String,
    pub offset: u64,
    pub stored_size: u64,
    pub compression: crate::tiering::pack::Compression,
}

/// Where the archive's tiers are, for the views that name locations.
#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub study_uid: String,
    pub sop_class_uid: String,
    pub instance_number: String,
    pub transfer_syntax_uid: String,
    /// Every kept version, oldest first; the last one is served.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub series_uid: String,
    pub modality: String,
    pub series_number: String,
    pub series_description: String,
    pub instances: Vec<InstanceView>,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct StudyView {
    pub study: StudySummary,
    pub series: Vec<SeriesView>,
}

fn version_views(
    tiers: Tiers<'_>,
    index: &dyn Index,
    entry: &InstanceEntry,
) -> Result<Vec<VersionView>> {
    entry
        .record
        .versions
        .iter()
        .map(|v| {
            let id = ObjectId::from_hex(&v.id).ok_or_else(|| malformed("a malformed object id"))?;
            let rec: Option<ObjectRecord> = index.object(&id)?;
            let cold_copies: Vec<ColdCopyView> = rec
                .iter()
                .flat_map(|r| r.cold.iter())
                .map(|c| ColdCopyView {
                    key: c
                        .pack_id()
                        .map(|p| tiers.cold.key_of(&p))
                        .unwrap_or_default(),
                    pack: c.pack.clone(),
                    offset: c.offset,
                    stored_size: c.stored_size,
                    compression: c.compression,
                })
                .collect();
            let hot_copy = rec.as_ref().is_none_or(|r| r.tier == Tier::Hot);
            let location = match (hot_copy, cold_copies.first()) {
                (false, Some(c)) => format!("{}@{}", c.key, c.offset),
                _ => tiers.hot.path_of(&id).display().to_string(),
            };
            Ok(VersionView {
                dataset: v.dataset.clone(),
                id: v.id.clone(),
                size: v.size,
                received_at_ms: v.received_at_ms,
                tier: if hot_copy { "hot" } else { "cold" }.into(),
                hot_node: rec.as_ref().and_then(|r| r.hot_node.clone()),
                location,
                cold_copies,
                last_verified: index.fixity(&id)?,
                calling_ae: rec
                    .as_ref()
                    .map(|r| r.provenance.calling_ae.clone())
                    .unwrap_or_default(),
                source: rec.map(|r| r.provenance.source).unwrap_or_default(),
            })
        })
        .collect()
}

fn instance_view(tiers: Tiers<'_>, index: &dyn Index, e: &InstanceEntry) -> Result<InstanceView> {
    Ok(InstanceView {
        sop_instance_uid: e.sop_instance_uid.clone(),
        series_uid: e.series_uid.clone(),
        study_uid: e.study_uid.clone(),
        sop_class_uid: e.record.sop_class_uid.clone(),
        instance_number: e.record.instance_number.clone(),
        transfer_syntax_uid: e.record.transfer_syntax_uid.clone(),
        versions: version_views(tiers, index, e)?,
    })
}

/// A study with its series and instances (`ls STUDY`, `show STUDY`).
fn study_view(tiers: Tiers<'_>, index: &dyn Index, study_uid: &str) -> Result<Option<StudyView>> {
    let Some(summary) = list_study(index, study_uid)? else {
        return Ok(None);
    };
    let mut by_series: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
    for e in index.instances_of_study(study_uid)? {
        by_series
            .entry(e.series_uid.clone())
            .or_default()
            .push(instance_view(tiers, index, &e)?);
    }
    let mut series = Vec::new();
    for (series_uid, rec) in index.series_of_study(study_uid)? {
        let mut instances = by_series.remove(&series_uid).unwrap_or_default();
        instances.sort_by(|a, b| {
            natural(&a.instance_number)
                .cmp(&natural(&b.instance_number))
                .then(a.sop_instance_uid.cmp(&b.sop_instance_uid))
        });
        series.push(SeriesView {
            series_uid,
            modality: rec.modality,
            series_number: rec.series_number,
            series_description: rec.series_description,
            instances,
            bytes: rec.bytes,
        });
    }
    Ok(Some(StudyView {
        study: summary,
        series,
    }))
}

fn natural(n: &str) -> (i64, String) {
    (n.trim().parse().unwrap_or(i64::MAX), n.to_string())
}

fn list_study(index: &dyn Index, study_uid: &str) -> Result<Option<StudySummary>> {
    let Some(record) = index.study(study_uid)? else {
        return Ok(None);
    };
    StudySummary {
        last_access_ms: index.last_access(study_uid)?,
        holds: index.holds(study_uid)?,
        ..StudySummary::new(study_uid.to_string(), record)
    }
    .known_now(index)
    .map(Some)
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Shown {
    Study(StudyView),
    Series {
        study_uid: String,
        series: SeriesView,
    },
    Instance(InstanceView),
}

/// Whatever `uid` names: a study, a series or an instance.
fn show(tiers: Tiers<'_>, index: &dyn Index, uid: &str) -> Result<Option<Shown>> {
    if let Some(view) = study_view(tiers, index, uid)? {
        return Ok(Some(Shown::Study(view)));
    }
    if let Some((study_uid, _)) = index.series(uid)? {
        let view = study_view(tiers, index, &study_uid)?
            .ok_or_else(|| malformed("a series of a missing study"))?;
        if let Some(series) = view.series.into_iter().find(|s| s.series_uid == uid) {
            return Ok(Some(Shown::Series { study_uid, series }));
        }
    }
    if let Some(entry) = index.instance(uid)? {
        return Ok(Some(Shown::Instance(instance_view(tiers, index, &entry)?)));
    }
    Ok(None)
}
