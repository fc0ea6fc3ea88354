//! Inventory: enumerate the source's studies with Study Root C-FIND at STUDY level over
//! StudyDate windows, splitting a window whenever its answer may be truncated.
//!
//! Old PACS cap C-FIND answers: some fail with 0xA700 or another error, some (Orthanc's
//! `LimitFindResults`) silently stop at N matches. A window is split in two when the
//! answer is not a success, or when it holds at least the source's cap. The cap is given
//! (`--source-limit`) or detected: the whole range is asked for, then its two halves; if
//! the halves together hold more studies than the whole did, the whole was truncated and
//! its count is the cap. A single day that is still capped is split by StudyTime, down
//! to one minute; what is still capped there is reported, never silently dropped.
//!
//! Studies without a StudyDate match no date range, so a second sweep asks for every
//! study regardless of date, split by PatientID prefix (`A*`, then `A` exactly and
//! `AA*`, `AB*`, ...) while capped; what it finds is merged with the dated studies.

use crate::ledger::{Ledger, Study};
use anyhow::{Context, Result};
use chrono::NaiveDate;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use std::collections::BTreeMap;
use std::time::Duration;
use strata::dimse::scu::{self, RemoteAe, Scu};

/// A StudyDate window, optionally narrowed to a StudyTime range (seconds of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub time: Option<(u32, u32)>,
}

impl Window {
    fn describe(&self) -> String {
        let mut s = format!(
            "{}-{}",
            self.from.format("%Y%m%d"),
            self.to.format("%Y%m%d")
        );
        if let Some((a, b)) = self.time {
            s.push_str(&format!(" {}-{}", hhmmss(a), hhmmss(b)));
        }
        s
    }

    /// Two halves, or `None` when the window cannot be split further.
    fn split(&self) -> Option<(Window, Window)> {
        if self.from < self.to {
            let days = (self.to - self.from).num_days();
            let mid = self.from + chrono::Days::new((days / 2) as u64);
            let next = mid.succ_opt()?;
            return Some((
                Window {
                    from: self.from,
                    to: mid,
                    time: None,
                },
                Window {
                    from: next,
                    to: self.to,
                    time: None,
                },
            ));
        }
        let (a, b) = self.time.unwrap_or((0, 86_399));
        if b - a < 60 {
            return None;
        }
        let mid = a + (b - a) / 2;
        Some((
            Window {
                time: Some((a, mid)),
                ..*self
            },
            Window {
                time: Some((mid + 1, b)),
                ..*self
            },
        ))
    }
}

fn hhmmss(secs: u32) -> String {
    format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub struct PlanOptions {
    pub calling_ae: String,
    pub source: RemoteAe,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub modalities: Vec<String>,
    pub source_limit: Option<usize>,
    /// Skip the sweep by PatientID that finds studies without a StudyDate.
    pub skip_undated: bool,
    pub timeout: Duration,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PlanReport {
    pub queries: usize,
    pub windows_split: usize,
    pub detected_cap: Option<usize>,
    pub studies_found: usize,
    pub studies_new: usize,
    /// Windows still capped at one minute: studies may be missing there.
    pub incomplete_windows: Vec<String>,
}

/// What one STUDY-level query asks for: a date window, or (the sweep that also finds
/// studies without a StudyDate) every study whose PatientID starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Dates(Window),
    /// PatientID starting with the prefix (all studies when empty).
    Patients(String),
    /// PatientID exactly this value.
    Patient(String),
}

/// First characters PatientID prefixes are split by.
/// (PatientIDs are matched case-sensitively by the standard, but upper case and digits
/// are what PACS issue; a lower-case first character under a capped prefix is reported
/// as an incomplete query, not guessed.)
const PREFIX_CHARS: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_.^";

impl Query {
    fn describe(&self) -> String {
        match self {
            Query::Dates(w) => w.describe(),
            Query::Patients(p) => format!("PatientID {p:?}*"),
            Query::Patient(p) => format!("PatientID {p:?}"),
        }
    }

    fn split(&self) -> Option<Vec<Query>> {
        match self {
            Query::Dates(w) => w
                .split()
                .map(|(a, b)| vec![Query::Dates(a), Query::Dates(b)]),
            // LO holds at most 64 characters
            Query::Patients(p) if p.chars().count() < 64 => Some(
                (!p.is_empty())
                    .then(|| Query::Patient(p.clone()))
                    .into_iter()
                    .chain(
                        PREFIX_CHARS
                            .chars()
                            .map(|c| Query::Patients(format!("{p}{c}"))),
                    )
                    .collect(),
            ),
            Query::Patients(_) | Query::Patient(_) => None,
        }
    }
}

/// One STUDY-level C-FIND: (final status, matches).
async fn find_window(
    scu: &mut Scu,
    query: &Query,
    modalities: &[String],
) -> Result<(u16, Vec<Study>)> {
    let (date, time, patient) = match query {
        Query::Dates(window) => (
            format!(
                "{}-{}",
                window.from.format("%Y%m%d"),
                window.to.format("%Y%m%d")
            ),
            window
                .time
                .map(|(a, b)| format!("{}-{}", hhmmss(a), hhmmss(b)))
                .unwrap_or_default(),
            String::new(),
        ),
        Query::Patients(p) if p.is_empty() => (String::new(), String::new(), String::new()),
        Query::Patients(p) => (String::new(), String::new(), format!("{p}*")),
        Query::Patient(p) => (String::new(), String::new(), p.clone()),
    };
    let modality = modalities.join("\\");
    let identifier = scu::identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (tags::STUDY_INSTANCE_UID, VR::UI, ""),
        (tags::PATIENT_ID, VR::LO, &patient),
        (tags::PATIENT_NAME, VR::PN, ""),
        (tags::STUDY_DATE, VR::DA, &date),
        (tags::STUDY_TIME, VR::TM, &time),
        (tags::MODALITIES_IN_STUDY, VR::CS, &modality),
        (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, ""),
    ]);
    let mut found = Vec::new();
    let status = scu
        .find(&identifier, &mut |m| {
            let raw = scu::raw_text(&m, tags::STUDY_INSTANCE_UID);
            let uid = raw.trim().to_string();
            if uid.is_empty() {
                return;
            }
            let mut s = Study::planned(uid.clone());
            if raw != uid {
                s.source_uid = Some(raw);
            }
            s.patient_id = scu::text(&m, tags::PATIENT_ID);
            s.patient_name = scu::text(&m, tags::PATIENT_NAME);
            s.study_date = scu::text(&m, tags::STUDY_DATE);
            s.modalities = scu::text(&m, tags::MODALITIES_IN_STUDY);
            s.planned_instances = scu::text(&m, tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
                .parse()
                .ok();
            found.push(s);
        })
        .await
        .with_context(|| format!("C-FIND over {}", query.describe()))?;
    Ok((status, found))
}

/// Whether a study found by the PatientID sweep belongs to the plan: it has no valid
/// StudyDate (the sweep's purpose), or its date lies within `--from..=--to`.
fn undated_or_within(study_date: &str, opts: &PlanOptions) -> bool {
    match NaiveDate::parse_from_str(study_date.trim(), "%Y%m%d") {
        Ok(d) => opts.from <= d && d <= opts.to,
        Err(_) => true,
    }
}

/// Enumerates the source into the ledger. Re-running adds new studies and leaves the
/// state of known ones alone.
pub async fn plan(ledger: &mut Ledger, opts: &PlanOptions) -> Result<PlanReport> {
    let mut report = PlanReport::default();
    let mut scu = Scu::connect(
        &opts.calling_ae,
        &opts.source,
        scu::STUDY_ROOT_FIND,
        opts.timeout,
    )
    .await?;
    let mut found: BTreeMap<String, Study> = BTreeMap::new();
    let whole = Window {
        from: opts.from,
        to: opts.to,
        time: None,
    };
    let mut cap = opts.source_limit;
    // date windows first, then the sweep by PatientID that also finds undated studies
    let mut queue = vec![Query::Dates(whole)];
    if !opts.skip_undated {
        queue.insert(0, Query::Patients(String::new()));
    }
    let mut first = true;
    while let Some(query) = queue.pop() {
        let (status, studies) = find_window(&mut scu, &query, &opts.modalities).await?;
        report.queries += 1;
        let n = studies.len();
        // Orthanc ends a capped answer with 0xFE00; an empty 0xFE00 answer is not capped
        let failed = status != 0 && !(status == 0xFE00 && n == 0);
        let mut truncated = failed || cap.is_some_and(|c| n >= c);
        if first && failed && n > 0 && cap.is_none() {
            // the source says it stopped early (Orthanc: 0xFE00): what it gave is its cap
            cap = Some(n);
            report.detected_cap = Some(n);
        }
        if first && !truncated && n > 0 {
            // detect a silent cap: do the halves hold more than the whole?
            if let Query::Dates(window) = &query {
                if let Some((a, b)) = window.split() {
                    let (sa, la) =
                        find_window(&mut scu, &Query::Dates(a), &opts.modalities).await?;
                    let (sb, lb) =
                        find_window(&mut scu, &Query::Dates(b), &opts.modalities).await?;
                    report.queries += 2;
                    let union: std::collections::BTreeSet<&String> =
                        la.iter().chain(lb.iter()).map(|s| &s.study_uid).collect();
                    if sa != 0 || sb != 0 || union.len() > n {
                        cap = Some(n);
                        report.detected_cap = Some(n);
                        truncated = true;
                    }
                }
            }
        }
        first = false;
        if truncated {
            match query.split() {
                Some(parts) => {
                    report.windows_split += 1;
                    queue.extend(parts.into_iter().rev());
                    continue;
                }
                None => {
                    tracing::warn!(query = query.describe(), status, n, "query still capped");
                    report.incomplete_windows.push(query.describe());
                }
            }
            if query == Query::Patients(String::new()) {
                report.incomplete_windows.push(
                    "studies with neither a StudyDate nor a PatientID (a capped source cannot list them)"
                        .into(),
                );
            }
        }
        for s in studies {
            // the sweep by PatientID is there for undated studies: a dated one it meets
            // belongs to the plan only inside --from..--to, as the date windows' do
            if matches!(query, Query::Patients(_)) && !undated_or_within(&s.study_date, opts) {
                continue;
            }
            match found.get_mut(&s.study_uid) {
                // the same study again (another window): note a PatientID that differs
                Some(known) => {
                    if s.patient_id != known.patient_id
                        && !known.other_patient_ids.contains(&s.patient_id)
                    {
                        known.other_patient_ids.push(s.patient_id);
                    }
                }
                None => {
                    found.insert(s.study_uid.clone(), s);
                }
            }
        }
    }
    scu.release().await;
    report.studies_found = found.len();
    for (uid, study) in found {
        match ledger.studies.get(&uid) {
            None => {
                ledger.put(study)?;
                report.studies_new += 1;
            }
            // a later plan learns of a patient conflict: recorded, state kept
            Some(known) if !study.other_patient_ids.is_empty() => {
                let mut known = known.clone();
                for id in study.other_patient_ids {
                    if id != known.patient_id && !known.other_patient_ids.contains(&id) {
                        known.other_patient_ids.push(id);
                    }
                }
                ledger.put(known)?;
            }
            Some(_) => {}
        }
    }
    // the whole requested range was enumerated (no window left capped): until this is
    // recorded, no study list is known to be the whole source (a plan that failed never
    // gets here)
    if report.incomplete_windows.is_empty() {
        ledger.mark_inventory_complete()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undated_sweep_keeps_to_the_planned_dates() {
        // issue 12: a 2019-only plan must not take in the 2004 and 2021 studies its
        // PatientID sweep (meant for undated studies) meets
        let d = |s| NaiveDate::parse_from_str(s, "%Y%m%d").unwrap();
        let opts = PlanOptions {
            calling_ae: "STRATA_MIGRATE".into(),
            source: "OLDPACS@127.0.0.1:104".parse().unwrap(),
            from: d("20190101"),
            to: d("20191231"),
            modalities: Vec::new(),
            source_limit: None,
            skip_undated: false,
            timeout: Duration::from_secs(1),
        };
        assert!(undated_or_within("", &opts));
        assert!(undated_or_within("00000000", &opts), "not a date: undated");
        assert!(undated_or_within("20190615", &opts));
        assert!(undated_or_within("20191231", &opts));
        assert!(!undated_or_within("20040101", &opts));
        assert!(!undated_or_within("20210101", &opts));
    }

    #[test]
    fn windows_split_by_day_then_by_time() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y%m%d").unwrap();
        let w = Window {
            from: d("20240101"),
            to: d("20240110"),
            time: None,
        };
        let (a, b) = w.split().unwrap();
        assert_eq!(
            (a.from, a.to, b.from, b.to),
            (d("20240101"), d("20240105"), d("20240106"), d("20240110"))
        );
        let day = Window {
            from: d("20240101"),
            to: d("20240101"),
            time: None,
        };
        let (a, b) = day.split().unwrap();
        assert_eq!(
            (a.time, b.time),
            (Some((0, 43_199)), Some((43_200, 86_399)))
        );
        let minute = Window {
            time: Some((60, 100)),
            ..day
        };
        assert!(minute.split().is_none());
    }
}
