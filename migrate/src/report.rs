//! The reconciliation report a clinic signs off on: `instances.csv` (one row per source
//! instance, plus archive extras), `summary.json` (per study and totals) and
//! `summary.txt` (the same for people), all from the ledger.

use crate::ledger::{Ledger, State, Study};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub studies: usize,
    pub by_state: BTreeMap<String, usize>,
    /// Instances the source counted at planning (NumberOfStudyRelatedInstances, where
    /// it answered it), and how many studies it did not count.
    #[serde(default)]
    pub planned_instances: u64,
    #[serde(default)]
    pub studies_uncounted: usize,
    /// Instances the source listed at verification (of the studies verified so far).
    pub source_instances: u64,
    /// Of those, instances the archive holds.
    pub archived_instances: u64,
    pub missing_instances: u64,
    /// Instances the source counted at planning but no longer listed when verified.
    pub vanished_from_source: u64,
    pub extra_in_archive: u64,
    /// Whether an inventory (`plan`) of the source ever ran to its end.
    pub inventory_complete: bool,
    pub complete: bool,
}

#[derive(Debug, Serialize)]
pub struct StudyLine<'a> {
    pub study_uid: &'a str,
    pub patient_id: &'a str,
    pub patient_name: &'a str,
    pub study_date: &'a str,
    pub modalities: &'a str,
    pub status: &'static str,
    pub attempts: u32,
    pub planned_instances: Option<u32>,
    pub source_instances: usize,
    pub archive_instances: u32,
    pub missing: &'a [String],
    pub extra: &'a [String],
    /// Instances counted at planning that the source no longer lists.
    pub vanished_from_source: u64,
    pub failure: Option<&'a str>,
    /// Other PatientIDs the source holds this study under (a conflict to resolve).
    pub other_patient_ids: &'a [String],
}

/// Instances counted at planning that the source itself no longer has: only once the
/// source was listed at verification, and by its own count when it gives one (an
/// instance it counts but does not list has not left it).
fn vanished(s: &Study) -> u64 {
    match (s.planned_instances, s.state, s.source_listed) {
        (Some(planned), State::Verified | State::Failed, true) => {
            let now = s
                .source_count
                .map(u64::from)
                .unwrap_or(0)
                .max(s.source_sops.len() as u64);
            (planned as u64).saturating_sub(now)
        }
        _ => 0,
    }
}

pub fn totals(ledger: &Ledger) -> Totals {
    let mut t = Totals {
        studies: ledger.studies.len(),
        ..Default::default()
    };
    for s in ledger.studies.values() {
        *t.by_state.entry(s.state.as_str().into()).or_default() += 1;
        match s.planned_instances {
            Some(n) => t.planned_instances += n as u64,
            None => t.studies_uncounted += 1,
        }
        t.source_instances += s.source_sops.len() as u64;
        t.archived_instances += s.archive_count as u64;
        t.missing_instances += s.missing.len() as u64;
        t.extra_in_archive += s.extra.len() as u64;
        t.vanished_from_source += vanished(s);
    }
    t.inventory_complete = ledger.inventory_complete();
    t.complete = t.inventory_complete
        && ledger.studies.values().all(|s| s.state == State::Verified)
        && t.missing_instances == 0;
    t
}

/// Writes the report into `out`; returns the totals.
pub fn write(ledger: &Ledger, out: &Path) -> Result<Totals> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let totals = totals(ledger);

    let mut csv = std::fs::File::create(out.join("instances.csv"))?;
    writeln!(
        csv,
        "study_uid,sop_instance_uid,in_source,in_archive,status"
    )?;
    for s in ledger.studies.values() {
        let missing: std::collections::BTreeSet<&String> = s.missing.iter().collect();
        for sop in &s.source_sops {
            let arrived = !missing.contains(sop);
            writeln!(
                csv,
                "{},{},yes,{},{}",
                s.study_uid,
                sop,
                if arrived { "yes" } else { "no" },
                if arrived { "arrived" } else { "missing" }
            )?;
        }
        for sop in &s.extra {
            writeln!(csv, "{},{},no,yes,extra_in_archive", s.study_uid, sop)?;
        }
        if s.source_sops.is_empty() {
            writeln!(csv, "{},,,,study_{}", s.study_uid, s.state.as_str())?;
        }
    }
    csv.sync_all()?;

    let studies: Vec<StudyLine> = ledger
        .studies
        .values()
        .map(|s| StudyLine {
            study_uid: &s.study_uid,
            patient_id: &s.patient_id,
            patient_name: &s.patient_name,
            study_date: &s.study_date,
            modalities: &s.modalities,
            status: s.state.as_str(),
            attempts: s.attempts,
            planned_instances: s.planned_instances,
            source_instances: s.source_sops.len(),
            archive_instances: s.archive_count,
            missing: &s.missing,
            extra: &s.extra,
            vanished_from_source: vanished(s),
            failure: s.last_error.as_deref(),
            other_patient_ids: &s.other_patient_ids,
        })
        .collect();
    let json = serde_json::json!({
        "source": ledger.header.source.to_string(),
        "totals": &totals,
        "studies": studies,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&json)?)?;

    let mut txt = String::new();
    txt.push_str(&format!(
        "Migration from {} — reconciliation report\n\n",
        ledger.header.source
    ));
    txt.push_str(&format!("Studies: {}\n", totals.studies));
    for (state, n) in &totals.by_state {
        txt.push_str(&format!("  {state}: {n}\n"));
    }
    txt.push_str(&format!(
        "Instances listed by the source: {}\nInstances present in the archive: {}\nMissing from the archive: {}\nCounted at planning but gone from the source before verification: {}\nIn the archive but not in the source: {}\n\n",
        totals.source_instances,
        totals.archived_instances,
        totals.missing_instances,
        totals.vanished_from_source,
        totals.extra_in_archive
    ));
    txt.push_str(&if !totals.inventory_complete {
        "RESULT: NOT COMPLETE. The inventory of the source never ran to its end (`plan` failed or was interrupted): the studies below may not be all the source holds. Run `plan` again.\n\n".to_string()
    } else if totals.complete && totals.vanished_from_source > 0 {
        format!(
            "RESULT: COMPLETE. Every instance the source lists is in the archive; {} instance(s) counted at planning were removed from the source before they could be moved (studies below).\n\n",
            totals.vanished_from_source
        )
    } else if totals.complete {
        "RESULT: COMPLETE. Every instance the source lists is in the archive.\n\n".to_string()
    } else {
        "RESULT: NOT COMPLETE. See the studies below and instances.csv.\n\n".to_string()
    });
    for s in ledger.studies.values() {
        let v = vanished(s);
        if s.state != State::Verified || v > 0 || !s.missing.is_empty() {
            txt.push_str(&format!(
                "study {} ({} {}): {} after {} attempt(s); source {} archive {} missing {}{}{}\n",
                s.study_uid,
                s.patient_id,
                s.study_date,
                s.state.as_str(),
                s.attempts,
                s.source_sops.len(),
                s.archive_count,
                s.missing.len(),
                if v > 0 {
                    format!("; {v} instance(s) counted at planning are no longer in the source")
                } else {
                    String::new()
                },
                s.last_error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    let conflicts: Vec<&Study> = ledger
        .studies
        .values()
        .filter(|s| !s.other_patient_ids.is_empty())
        .collect();
    if !conflicts.is_empty() {
        txt.push_str(&format!(
            "\nWARNING: the source holds {} study UID(s) under more than one PatientID (a study has one patient, PS3.3 C.7.2); the archive files each such study under one patient. Resolve them with the patient record's owner:\n",
            conflicts.len()
        ));
        for s in conflicts {
            txt.push_str(&format!(
                "study {}: PatientIDs {}, {}\n",
                s.study_uid,
                s.patient_id,
                s.other_patient_ids.join(", ")
            ));
        }
    }
    txt.push_str(
        "\nChecked by: ____________________   Date: ____________   Signature: ____________\n",
    );
    std::fs::write(out.join("summary.txt"), txt)?;
    Ok(totals)
}
