//! Moving and verifying: each study goes planned → moving → moved → verified, or
//! failed (with the reason and the number of attempts).
//!
//! - **Move**: C-MOVE at STUDY level to the source with the destination AE, N studies in
//!   flight, retried with a doubling backoff when the source cannot be reached or drops
//!   the association. 0xA801 (destination unknown to the source) stops the whole run at
//!   once with what to configure.
//! - **Verify**: the source's SOP Instance UIDs (C-FIND at IMAGE level) against the
//!   archive's (the same query to the destination). Missing instances are moved again,
//!   series by series at IMAGE level, once; what is still missing fails the study.
//! - Every state change is in the ledger (fsynced) before the next step, so a run killed
//!   at any moment resumes where it stopped; verified studies are never moved again.
//! - Time windows (`--window 19:00-07:00`, local time) and an instance-rate cap
//!   (`--max-rate`) hold back the start of each study.

use crate::ledger::{Ledger, State, Study};
use anyhow::{anyhow, Context, Result};
use chrono::{Local, NaiveTime};
use dicom_core::VR;
use dicom_dictionary_std::tags;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::dimse::scu::{self, MoveOutcome, RemoteAe, Scu, ScuError};

const DESTINATION_UNKNOWN: u16 = 0xA801;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub calling_ae: String,
    pub dest_ae: String,
    /// Where to query the destination for verification.
    pub dest: RemoteAe,
    pub parallel: usize,
    /// Local times between which studies may start (may wrap past midnight).
    pub window: Option<(NaiveTime, NaiveTime)>,
    /// Most instances per second started (by the source's planned counts).
    pub max_rate: Option<f64>,
    pub retries: u32,
    pub timeout: Duration,
    pub progress: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RunSummary {
    pub verified: usize,
    pub failed: usize,
    pub skipped_verified: usize,
    pub stopped_early: bool,
}

/// Parses `HH:MM-HH:MM`.
pub fn parse_window(s: &str) -> Result<(NaiveTime, NaiveTime), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected HH:MM-HH:MM"))?;
    let t =
        |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|e| format!("{x:?}: {e}"));
    Ok((t(a)?, t(b)?))
}

fn in_window(now: NaiveTime, (a, b): (NaiveTime, NaiveTime)) -> bool {
    if a <= b {
        now >= a && now < b
    } else {
        now >= a || now < b
    }
}

struct Shared {
    ledger: Mutex<Ledger>,
    opts: RunOptions,
    source: RemoteAe,
    stop: Arc<AtomicBool>,
    fatal: Mutex<Option<String>>,
    rate_next: Mutex<Instant>,
    instances_done: AtomicU64,
    bar: indicatif::ProgressBar,
}

impl Shared {
    /// Records a study durably (off the async threads).
    async fn record(self: &Arc<Self>, study: Study) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.ledger.lock().expect("ledger lock").put(study))
            .await
            .map_err(|e| anyhow!("ledger task: {e}"))?
    }

    /// Stops the whole run for `message` (the first such message is the one reported).
    fn stop_run(&self, message: String) -> anyhow::Error {
        self.stop.store(true, Ordering::Release);
        self.fatal
            .lock()
            .expect("fatal lock")
            .get_or_insert(message.clone());
        anyhow!(message)
    }

    /// Why the source refuses our requests, if it does (probed now: a source that is
    /// merely unreachable is no refusal, and is retried).
    async fn source_refusal(&self) -> Option<String> {
        match crate::probe::check_source(&self.opts.calling_ae, &self.source, self.opts.timeout)
            .await
        {
            Err(crate::probe::SourceProblem::Refuses(why)) => Some(why),
            _ => None,
        }
    }

    fn log(&self, line: String) {
        if self.opts.progress {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    async fn wait_turn(&self, instances: u32) {
        if let Some(window) = self.opts.window {
            let mut said = false;
            while !in_window(Local::now().time(), window) && !self.stop.load(Ordering::Acquire) {
                if !said {
                    self.log(format!(
                        "outside the window {}-{}: waiting",
                        window.0.format("%H:%M"),
                        window.1.format("%H:%M")
                    ));
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        if let Some(rate) = self.opts.max_rate {
            let wait = {
                let mut next = self.rate_next.lock().expect("rate lock");
                let now = Instant::now();
                let start = (*next).max(now);
                *next = start + Duration::from_secs_f64(instances.max(1) as f64 / rate);
                start - now
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Moves and verifies every study not verified yet. Stops starting new studies when
/// `stop` is set (Ctrl-C) and lets those in flight finish.
pub async fn run(ledger: Ledger, opts: RunOptions, stop: Arc<AtomicBool>) -> Result<RunSummary> {
    let source = ledger.header.source.clone();
    let todo: Vec<Study> = ledger
        .studies
        .values()
        .filter(|s| s.state != State::Verified)
        .cloned()
        .collect();
    let mut summary = RunSummary {
        skipped_verified: ledger.studies.len() - todo.len(),
        ..Default::default()
    };
    let total_instances: u64 = todo
        .iter()
        .map(|s| s.planned_instances.unwrap_or(0) as u64)
        .sum();
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(total_instances);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} instances {per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let shared = Arc::new(Shared {
        ledger: Mutex::new(ledger),
        opts: opts.clone(),
        source,
        stop: stop.clone(),
        fatal: Mutex::new(None),
        rate_next: Mutex::new(Instant::now()),
        instances_done: AtomicU64::new(0),
        bar,
    });
    let total = todo.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let done = Arc::new(AtomicU64::new(0));
    for study in todo {
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        if stop.load(Ordering::Acquire) {
            summary.stopped_early = true;
            break;
        }
        let (task_shared, done) = (shared.clone(), done.clone());
        tasks.spawn(async move {
            let uid = study.study_uid.clone();
            let outcome = migrate_study(&task_shared, study).await;
            let n = done.fetch_add(1, Ordering::AcqRel) + 1;
            task_shared.bar.set_message(format!("studies {n}/{total}"));
            drop(permit);
            (uid, outcome)
        });
        // reap finished tasks as we go (keeps the set small)
        while let Some(Ok((uid, outcome))) = tasks.try_join_next() {
            tally(&shared, &mut summary, uid, outcome);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((uid, outcome)) = joined {
            tally(&shared, &mut summary, uid, outcome);
        }
    }
    shared.bar.finish_and_clear();
    if let Some(fatal) = shared.fatal.lock().expect("fatal lock").take() {
        return Err(anyhow!(fatal));
    }
    Ok(summary)
}

fn tally(shared: &Shared, summary: &mut RunSummary, uid: String, outcome: Result<State>) {
    match outcome {
        Ok(State::Verified) => summary.verified += 1,
        Ok(_) => summary.failed += 1,
        Err(e) => {
            summary.failed += 1;
            shared.log(format!("study {uid}: {e:#}"));
        }
    }
}

async fn migrate_study(shared: &Arc<Shared>, mut study: Study) -> Result<State> {
    if shared.stop.load(Ordering::Acquire) {
        return Ok(study.state);
    }
    shared.wait_turn(study.planned_instances.unwrap_or(1)).await;
    if shared.stop.load(Ordering::Acquire) {
        return Ok(study.state);
    }
    let started = Instant::now();
    study.state = State::Moving;
    study.attempts += 1;
    shared.record(study.clone()).await?;

    let identifier = scu::identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study.uid_at_source()),
    ]);
    let moved = match move_with_retries(shared, &identifier).await {
        Ok(outcome) => outcome,
        Err(e) => {
            study.state = State::Failed;
            study.last_error = Some(format!("{e:#}"));
            shared.record(study.clone()).await?;
            shared.log(format!("study {} failed: {e:#}", study.study_uid));
            return Ok(State::Failed);
        }
    };
    study.moved_completed = moved.completed;
    study.moved_failed = moved.failed;
    study.moved_warning = moved.warning;
    study.state = State::Moved;
    study.last_error = (moved.status != 0).then(|| {
        format!(
            "C-MOVE ended with status {:#06X} ({} completed, {} failed{}{})",
            moved.status,
            moved.completed,
            moved.failed,
            moved
                .error_comment
                .as_ref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default(),
            if moved.failed_uids.is_empty() {
                String::new()
            } else {
                format!(
                    "; the source could not send {}",
                    moved.failed_uids.join(", ")
                )
            }
        )
    });
    shared.record(study.clone()).await?;

    // verify, moving again only what is missing, once
    let mut state = verify(shared, &mut study).await?;
    if state != State::Verified && !study.missing.is_empty() {
        remove_missing(shared, &study).await?;
        state = verify(shared, &mut study).await?;
    }
    study.state = state;
    if state == State::Failed && study.last_error.is_none() {
        study.last_error = Some(format!(
            "{} instance(s) still missing from the archive after moving them again",
            study.missing.len()
        ));
    }
    if state == State::Verified {
        study.last_error = None;
    }
    shared.record(study.clone()).await?;
    let instances = study.source_sops.len() as u64;
    shared.instances_done.fetch_add(instances, Ordering::AcqRel);
    shared.bar.inc(instances);
    if !shared.opts.progress {
        shared.log(format!(
            "study {} {}: source {} archive {} missing {} in {:.1}s (attempt {})",
            study.study_uid,
            state.as_str(),
            study.source_sops.len(),
            study.archive_count,
            study.missing.len(),
            started.elapsed().as_secs_f64(),
            study.attempts
        ));
    }
    Ok(state)
}

/// Runs `op` again, with a doubling backoff, while it fails in a way that may go away
/// by itself (see [`transient`]), at most `--retries` times; with `honour_stop`, not once
/// Ctrl-C was pressed.
async fn retrying<T, Fut>(
    shared: &Shared,
    what: &str,
    honour_stop: bool,
    mut op: impl FnMut() -> Fut,
) -> Result<T, ScuError>
where
    Fut: std::future::Future<Output = Result<T, ScuError>>,
{
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        match op().await {
            // before retrying at all: does the source take requests from us? (one that
            // stopped knowing our AE title refuses every one: the run stops, saying why)
            Err(e) if attempt == 0 && transient(&e) => {
                if let Some(why) = shared.source_refusal().await {
                    let _ =
                        shared.stop_run(format!("{what} failed ({e}); {why}. The run stops here."));
                    return Err(e);
                }
                shared.log(format!("{what} failed ({e}); retrying in {backoff:?}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                attempt += 1;
            }
            Err(e)
                if attempt < shared.opts.retries
                    && transient(&e)
                    && !(honour_stop && shared.stop.load(Ordering::Acquire)) =>
            {
                shared.log(format!("{what} failed ({e}); retrying in {backoff:?}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One C-MOVE on a new association.
async fn move_once(
    shared: &Shared,
    identifier: &dicom_object::InMemDicomObject,
) -> Result<MoveOutcome, ScuError> {
    let opts = &shared.opts;
    let mut scu = Scu::connect(
        &opts.calling_ae,
        &shared.source,
        scu::STUDY_ROOT_MOVE,
        opts.timeout,
    )
    .await?;
    // the pending counters drive the progress line of the study in flight
    let bar = shared.bar.clone();
    let outcome = scu
        .move_to(&opts.dest_ae, identifier, &mut |p| {
            bar.set_message(format!(
                "moving: {} sent, {} failed, {} left",
                p.completed, p.failed, p.remaining
            ));
        })
        .await?;
    scu.release().await;
    Ok(outcome)
}

/// One C-MOVE with retries on network failures. 0xA801 is fatal for the whole run.
async fn move_with_retries(
    shared: &Arc<Shared>,
    identifier: &dicom_object::InMemDicomObject,
) -> Result<MoveOutcome> {
    let opts = &shared.opts;
    let result = retrying(shared, "C-MOVE", true, || move_once(shared, identifier)).await;
    if shared.stop.load(Ordering::Acquire) {
        if let Some(fatal) = shared.fatal.lock().expect("fatal lock").clone() {
            return Err(anyhow!(fatal));
        }
    }
    match result {
        Ok(outcome) if refused_destination(&outcome) => {
            let status = format!(
                "C-MOVE status {:#06X}{}, no sub-operation attempted",
                outcome.status,
                outcome
                    .error_comment
                    .as_ref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
            // say what is known: whether the destination answers us, and what the
            // source answered; never guess past that
            let message = match echo_destination(shared).await {
                Err(e @ ScuError::Rejected { .. }) => format!(
                    "the destination at {}:{} refuses to be called {:?} ({e}): is --dest-ae \
                     right? The source {} answered {status}: it does not know the destination \
                     AE {:?} either, most likely. Use the archive's AE title, and declare it on \
                     the source (Orthanc: \"DicomModalities\" or PUT /modalities/...), then \
                     run again.",
                    opts.dest.host, opts.dest.port, opts.dest_ae, shared.source, opts.dest_ae
                ),
                Err(e) => format!(
                    "the source {} could not move to {:?} ({status}), and the destination does \
                     not answer us either: {e}. Start it (or fix --dest) and run again.",
                    shared.source, opts.dest_ae
                ),
                Ok(()) if outcome.status == DESTINATION_UNKNOWN => format!(
                    "the source {} does not know the destination AE {:?} ({status}; 0xA801 is \
                     Move Destination Unknown, PS3.4 C.4.2.1.5), which answers us at {}:{}. \
                     Configure it on the source first: add AE title {:?} at {}:{} to its DICOM \
                     nodes (Orthanc: \"DicomModalities\" or PUT /modalities/{}), then run again.",
                    shared.source,
                    opts.dest_ae,
                    opts.dest.host,
                    opts.dest.port,
                    opts.dest_ae,
                    opts.dest.host,
                    opts.dest.port,
                    opts.dest_ae
                ),
                Ok(()) => format!(
                    "the source {} refused to move to {:?} ({status}), though the destination \
                     answers us at {}:{}: the source may not know that AE, or may not reach \
                     that address from its network; its own log says which. Check its DICOM \
                     nodes (Orthanc: \"DicomModalities\"), then run again.",
                    shared.source, opts.dest_ae, opts.dest.host, opts.dest.port
                ),
            };
            Err(shared.stop_run(message))
        }
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(e.into()),
    }
}

/// A C-ECHO from us to the destination: whether it answers at all.
async fn echo_destination(shared: &Shared) -> Result<(), ScuError> {
    let opts = &shared.opts;
    let mut scu = Scu::connect(
        &opts.calling_ae,
        &opts.dest,
        scu::VERIFICATION,
        opts.timeout,
    )
    .await?;
    let status = scu.echo().await?;
    scu.release().await;
    if status == 0 {
        Ok(())
    } else {
        Err(ScuError::Protocol {
            peer: opts.dest.to_string(),
            detail: format!("C-ECHO status {status:#06X}"),
        })
    }
}

/// 0xA801 (Move Destination Unknown), or a failure before any sub-operation (Orthanc
/// answers 0xC000 for an unknown destination): the source will not send anywhere.
fn refused_destination(outcome: &MoveOutcome) -> bool {
    let failure = matches!(outcome.status >> 12, 0xA | 0xC) && outcome.status != 0xA702;
    outcome.status == DESTINATION_UNKNOWN
        || (failure && outcome.completed + outcome.failed + outcome.warning == 0)
}

/// Whether a failure may go away by itself (the peer unreachable, restarting, slow).
fn transient(e: &ScuError) -> bool {
    matches!(
        e,
        ScuError::Associate { .. }
            | ScuError::Rejected { .. }
            | ScuError::Network { .. }
            | ScuError::Timeout { .. }
    )
}

/// SOP Instance UID -> Series Instance UID of a study, as `remote` lists them.
async fn list_instances(
    shared: &Shared,
    remote: &RemoteAe,
    study_uid: &str,
) -> Result<BTreeMap<String, String>> {
    retrying(shared, &format!("C-FIND to {remote}"), false, || {
        list_once(&shared.opts, remote, study_uid)
    })
    .await
    .with_context(|| format!("list the instances on {remote}"))
}

/// One listing of a study's instances on a new association: the series first, then
/// each series' instances (hierarchical queries).
async fn list_once(
    opts: &RunOptions,
    remote: &RemoteAe,
    study_uid: &str,
) -> Result<BTreeMap<String, String>, ScuError> {
    let mut scu =
        Scu::connect(&opts.calling_ae, remote, scu::STUDY_ROOT_FIND, opts.timeout).await?;
    let failed = |status: u16, level: &str| ScuError::Protocol {
        peer: remote.to_string(),
        detail: format!("{level}-level C-FIND ended with status {status:#06X}"),
    };
    // hierarchical: the series first (with their counts), then each series' instances
    let mut series = Vec::new();
    let identifier = scu::identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        (tags::SERIES_INSTANCE_UID, VR::UI, ""),
        (tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS, ""),
    ]);
    let status = scu
        .find(&identifier, &mut |m| {
            // sent back as the peer gave it (a trailing space it stores, say)
            let uid = scu::raw_text(&m, tags::SERIES_INSTANCE_UID);
            let count: Option<usize> = scu::text(&m, tags::NUMBER_OF_SERIES_RELATED_INSTANCES)
                .parse()
                .ok();
            if !uid.trim().is_empty() {
                series.push((uid, count));
            }
        })
        .await?;
    if status != 0 {
        return Err(failed(status, "SERIES"));
    }
    let mut out = BTreeMap::new();
    for (series_uid, counted) in series {
        let image_level = |extra: Option<(dicom_core::Tag, VR, &str)>| {
            let mut keys = vec![
                (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
                (tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
                (tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
                (tags::SOP_INSTANCE_UID, VR::UI, ""),
                (tags::INSTANCE_NUMBER, VR::IS, ""),
            ];
            keys.extend(extra);
            scu::identifier(&keys)
        };
        let mut listed: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let mut add = |m: dicom_object::InMemDicomObject| {
            let sop = scu::text(&m, tags::SOP_INSTANCE_UID);
            if !sop.is_empty() {
                listed.insert(sop, scu::text(&m, tags::INSTANCE_NUMBER).parse().ok());
            }
        };
        let status = scu.find(&image_level(None), &mut add).await?;
        let capped = status == CAPPED && !listed.is_empty();
        if status != 0 && !capped {
            return Err(failed(status, "IMAGE"));
        }
        if status == CAPPED {
            // the source truncates IMAGE-level answers (Orthanc: LimitFindInstances):
            // narrower keys, one InstanceNumber at a time over the numbers its count
            // allows around those seen, until the series' count is reached
            let count = counted.unwrap_or(0).max(listed.len());
            let low = listed.values().flatten().min().copied().unwrap_or(1).min(1);
            let high = listed.values().flatten().max().copied().unwrap_or(0);
            let last = high.max(low + 2 * count as i64);
            let mut number = low;
            while listed.len() < count && number <= last {
                let value = number.to_string();
                let status = scu
                    .find(
                        &image_level(Some((tags::INSTANCE_NUMBER, VR::IS, value.as_str()))),
                        &mut |m| {
                            let sop = scu::text(&m, tags::SOP_INSTANCE_UID);
                            if !sop.is_empty() {
                                listed.insert(sop, Some(number));
                            }
                        },
                    )
                    .await?;
                if status != 0 {
                    return Err(failed(status, "IMAGE (by InstanceNumber)"));
                }
                number += 1;
            }
            if counted.is_none() || listed.len() < count {
                return Err(ScuError::Protocol {
                    peer: remote.to_string(),
                    detail: format!(
                        "the source caps IMAGE-level C-FIND answers (status {CAPPED:#06X}) and \
                         could not be listed fully for series {}: {} instance(s) listed{}; the \
                         study cannot be reconciled instance by instance",
                        series_uid.trim(),
                        listed.len(),
                        counted
                            .map(|c| format!(" of the {c} it counts"))
                            .unwrap_or_else(|| ", and it gives no count".into())
                    ),
                });
            }
        }
        for sop in listed.into_keys() {
            out.insert(sop, series_uid.clone());
        }
    }
    scu.release().await;
    Ok(out)
}

/// The status a source ends a truncated C-FIND answer with (Orthanc's result caps).
const CAPPED: u16 = 0xFE00;

/// The source's NumberOfStudyRelatedInstances for a study now (`None` when it does not
/// answer that optional key, PS3.4 C.6.1.1.4).
async fn count_once(
    opts: &RunOptions,
    remote: &RemoteAe,
    study_uid: &str,
) -> Result<Option<u32>, ScuError> {
    let mut scu =
        Scu::connect(&opts.calling_ae, remote, scu::STUDY_ROOT_FIND, opts.timeout).await?;
    let identifier = scu::identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, ""),
    ]);
    let mut count = None;
    scu.find(&identifier, &mut |m| {
        count = scu::text(&m, tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
            .parse()
            .ok();
    })
    .await?;
    scu.release().await;
    Ok(count)
}

/// Compares the source's instances with the archive's and records the result. A study
/// is verified only when every instance the source lists is in the archive *and* the
/// source does not count more instances than it lists (what it counts but will not list
/// or send cannot be compared, so it is never signed off).
async fn verify(shared: &Shared, study: &mut Study) -> Result<State> {
    let source = list_instances(shared, &shared.source, study.uid_at_source()).await?;
    study.source_listed = true;
    study.source_count = retrying(shared, "C-FIND (study count)", false, || {
        count_once(&shared.opts, &shared.source, study.uid_at_source())
    })
    .await
    .ok()
    .flatten();
    let archive = list_instances(shared, &shared.opts.dest, &study.study_uid).await?;
    let in_source: BTreeSet<&String> = source.keys().collect();
    let in_archive: BTreeSet<&String> = archive.keys().collect();
    study.source_sops = source.keys().cloned().collect();
    study.archive_count = in_source.intersection(&in_archive).count() as u32;
    study.missing = in_source
        .difference(&in_archive)
        .map(|s| s.to_string())
        .collect();
    study.extra = in_archive
        .difference(&in_source)
        .map(|s| s.to_string())
        .collect();
    if source.is_empty() {
        // the source listed the study at STUDY level: a study is its instances
        study.last_error = Some(
            "the source lists this study but none of its instances (SERIES/IMAGE-level \
             C-FIND found none): nothing could be compared, so the study is not signed off"
                .into(),
        );
        return Ok(State::Failed);
    }
    if let Some(counted) = study.source_count.filter(|c| *c as usize > source.len()) {
        study.last_error = Some(format!(
            "the source counts {counted} instances for this study (NumberOfStudyRelatedInstances) \
             but lists and sends only {}: the other {} cannot be compared, so the study is not \
             signed off",
            source.len(),
            counted as usize - source.len()
        ));
        return Ok(State::Failed);
    }
    Ok(if study.missing.is_empty() {
        State::Verified
    } else {
        State::Failed
    })
}

/// Moves the missing instances again, one IMAGE-level C-MOVE per series.
async fn remove_missing(shared: &Arc<Shared>, study: &Study) -> Result<()> {
    let source = list_instances(shared, &shared.source, study.uid_at_source()).await?;
    let mut by_series: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for sop in &study.missing {
        if let Some(series) = source.get(sop) {
            by_series.entry(series).or_default().push(sop);
        }
    }
    for (series, sops) in by_series {
        let list = sops.join("\\");
        let identifier = scu::identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
            (tags::STUDY_INSTANCE_UID, VR::UI, study.uid_at_source()),
            (tags::SERIES_INSTANCE_UID, VR::UI, series),
            (tags::SOP_INSTANCE_UID, VR::UI, &list),
        ]);
        move_with_retries(shared, &identifier).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_may_wrap_past_midnight() {
        let night = parse_window("19:00-07:00").unwrap();
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(in_window(t(23, 0), night));
        assert!(in_window(t(6, 59), night));
        assert!(!in_window(t(12, 0), night));
        let day = parse_window("08:00-18:00").unwrap();
        assert!(in_window(t(8, 0), day) && !in_window(t(18, 0), day));
        assert!(parse_window("8-18").is_err());
    }
}
