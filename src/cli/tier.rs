//! `strata tier status|run|move`: through the running server's admin API when a server
//! holds the archive, else directly (read-only for the status, exclusively for moves).

use super::print::{print_json, print_status_value};
use super::{admin_client, runtime, server_running, with_exclusive, TierCommand};
use anyhow::Result;
use strata::archive::tier::TierTarget;
use strata::archive::{Archive, Principal};
use strata::config::Config;
use strata::tiering::mover::MoveReport;
use strata::tiering::worker::{PassReport, TierStatus};

pub fn tier(config: &Config, command: TierCommand) -> Result<i32> {
    if let TierCommand::Move { study_uid, to, .. } = &command {
        // refuse a bad request before touching anything
        let _: TierTarget = to.parse()?;
        if !strata::dicom::part10::is_valid_uid(study_uid) {
            anyhow::bail!("{study_uid:?} is not a valid Study Instance UID");
        }
    }
    if server_running(config) {
        let rt = runtime()?;
        let client = admin_client(config)?;
        return match command {
            TierCommand::Status { json } => print_status(&rt.block_on(client.tier_status())?, json),
            TierCommand::Run { json } => print_pass(&rt.block_on(client.tier_run())?, json),
            TierCommand::Move {
                study_uid,
                to,
                json,
            } => print_move(&rt.block_on(client.tier_move(&study_uid, &to))?, json),
        };
    }
    match command {
        TierCommand::Status { json } => {
            let archive = Archive::read_only(config)?;
            print_status(&runtime()?.block_on(archive.tier_status())?, json)
        }
        TierCommand::Run { json } => {
            let report = with_exclusive(config, "tier", |rt, archive| {
                Ok(rt.block_on(archive.tier_pass(&Principal::cli_user()))?)
            })?;
            print_pass(&report, json)
        }
        TierCommand::Move {
            study_uid,
            to,
            json,
        } => {
            let to: TierTarget = to.parse()?;
            let report = with_exclusive(config, "tier", |rt, archive| {
                Ok(rt.block_on(archive.tier_move(&Principal::cli_user(), &study_uid, to))?)
            })?;
            print_move(&report, json)
        }
    }
}

/// The status; exit 1 when the cold tier's preflight failed.
fn print_status(status: &TierStatus, json: bool) -> Result<i32> {
    if json {
        print_json(status)?;
    } else {
        print_status_value(&serde_json::to_value(status)?);
    }
    Ok(if status.cold_check == "ok" { 0 } else { 1 })
}

/// One move, as a sentence (or JSON).
fn print_move(report: &MoveReport, json: bool) -> Result<i32> {
    if json {
        print_json(report)?;
    } else {
        println!("{}", describe_move(report));
    }
    Ok(0)
}

fn describe_move(m: &MoveReport) -> String {
    format!(
        "study {}: {} pack(s) recorded ({} objects, {} bytes uploaded), {} hot copies evicted, {} objects recalled, {} pack(s) archived",
        m.study_uid,
        m.packs_recorded,
        m.objects_packed,
        m.bytes_uploaded,
        m.objects_evicted,
        m.objects_recalled,
        m.packs_archived
    )
}

/// A policy pass, as text (or JSON); exit 1 when a study could not be moved.
fn print_pass(report: &PassReport, json: bool) -> Result<i32> {
    if json {
        print_json(report)?;
    } else {
        println!(
            "policy pass: {} studies moved, {} failed, {} packs archived, {} orphan packs deleted, {} incomplete uploads aborted, {} stale queue entries dropped",
            report.moved.len(),
            report.failed.len(),
            report.packs_archived,
            report.orphans_deleted,
            report.uploads_aborted,
            report.stale_entries
        );
        for m in &report.moved {
            println!("  {}", describe_move(m));
        }
        for (study, why) in &report.failed {
            println!("  FAILED study {study}: {why} (it stays queued)");
        }
    }
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
