//! `strata tier status|run|move`: through the running server's admin API when a server
//! holds the archive, else directly (read-only for the status, exclusively for moves).

use super::print::{print_json, print_status_value};
use super::{admin_client, runtime, server_running, with_exclusive, TierCommand};
use anyhow::Result;
use strata::archive::tier::TierTarget;
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn tier(config: &Config, command: TierCommand) -> Result<i32> {
    if let TierCommand::Move { study_uid, to } = &command {
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
            TierCommand::Status { json } => {
                let status = rt.block_on(client.tier_status())?;
                print_status(&status, json)?;
                Ok(0)
            }
            TierCommand::Run => {
                let report = rt.block_on(client.tier_run())?;
                print_json(&report)?;
                Ok(if report.failed.is_empty() { 0 } else { 1 })
            }
            TierCommand::Move { study_uid, to } => {
                print_json(&rt.block_on(client.tier_move(&study_uid, &to))?)?;
                Ok(0)
            }
        };
    }
    match command {
        TierCommand::Status { json } => {
            let archive = Archive::read_only(config)?;
            let status = runtime()?.block_on(archive.tier_status())?;
            print_status(&status, json)?;
            Ok(0)
        }
        TierCommand::Run => {
            let report = with_exclusive(config, "tier", |rt, archive| {
                Ok(rt.block_on(archive.tier_pass(&Principal::cli_user()))?)
            })?;
            print_json(&report)?;
            Ok(if report.failed.is_empty() { 0 } else { 1 })
        }
        TierCommand::Move { study_uid, to } => {
            let to: TierTarget = to.parse()?;
            let report = with_exclusive(config, "tier", |rt, archive| {
                Ok(rt.block_on(archive.tier_move(&Principal::cli_user(), &study_uid, to))?)
            })?;
            print_json(&report)?;
            Ok(0)
        }
    }
}

fn print_status(status: &strata::tiering::worker::TierStatus, json: bool) -> Result<()> {
    if json {
        print_json(status)
    } else {
        print_status_value(&serde_json::to_value(status)?);
        Ok(())
    }
}
