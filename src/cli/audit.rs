//! `strata audit verify|log|anchor|export`: the hash-chained audit log (read-only, safe
//! beside a running server).

use super::print::print_json;
use super::{runtime, AuditCommand};
use anyhow::Result;
use strata::config::Config;

/// The archive's cold tier, where the audit anchors are: refused when the configuration
/// names another one than the archive records, or when there is no archive at all.
fn anchor_store(config: &Config) -> Result<strata_tiers::ColdStore> {
    let data_dir = &config.archive.data_dir;
    if !strata::audit::log_path(data_dir).exists() {
        anyhow::bail!(
            "no audit log at {}: is [archive] data_dir right? (--config, or STRATA_CONFIG)",
            strata::audit::log_path(data_dir).display()
        );
    }
    strata::storage::cold_tier::check_strict(config)?;
    Ok(strata_tiers::ColdStore::open(&config.cold_spec())?)
}

/// Refuses to anchor into a cold tier another archive claimed (see
/// `cold_tier::check_marker`).
fn check_marker(config: &Config, cold: &strata_tiers::ColdStore) -> Result<()> {
    runtime()?.block_on(strata::storage::cold_tier::check_marker(config, cold, None))?;
    Ok(())
}

/// `strata audit ...`.
pub fn audit(config: &Config, command: AuditCommand) -> Result<i32> {
    let path = strata::audit::log_path(&config.archive.data_dir);
    match command {
        AuditCommand::Verify { json } => {
            let cold = anchor_store(config)?;
            let anchors = runtime()?
                .block_on(strata::audit::anchors(&cold))
                .map_err(|e| anyhow::anyhow!(e))?;
            let report = strata::audit::verify(&path, &anchors)?;
            // a chain no anchor vouches for could have been rewritten whole
            let unanchored =
                report.first_bad.is_none() && report.records > 0 && report.anchors_checked == 0;
            if json {
                print_json(&report)?;
            } else {
                match &report.first_bad {
                    None if unanchored => println!(
                        "audit log chain holds ({} records), but NO anchor in the cold tier vouches for it: \
                         a rewrite of the whole log would not show; run `strata audit anchor` (serve anchors \
                         every [audit] anchor_interval)",
                        report.records
                    ),
                    None => println!(
                        "audit log intact: {} records, {} anchors in the cold tier match",
                        report.records, report.anchors_checked
                    ),
                    Some((line, seq, why)) => {
                        println!("AUDIT LOG BROKEN at line {line} (record {seq}): {why}")
                    }
                }
            }
            Ok(match (&report.first_bad, unanchored) {
                (Some(_), _) => 1,
                (None, true) => 3,
                (None, false) => 0,
            })
        }
        AuditCommand::Log { since, study, json } => {
            let from = since
                .map(|d| strata::index::rocks::unix_ms_now().saturating_sub(d.as_millis() as u64))
                .unwrap_or(0);
            let records: Vec<_> = strata::audit::read_all(&path)?
                .into_iter()
                .filter(|r| r.body.time_ms >= from)
                .filter(|r| study.as_ref().is_none_or(|s| r.body.uids.contains(s)))
                .collect();
            if json {
                print_json(&records)?;
            } else {
                for r in &records {
                    let b = &r.body;
                    let who = if b.actor.kind == "dicom" {
                        format!("{}@{}", b.actor.ae_title, b.actor.address)
                    } else {
                        format!("{}:{}", b.actor.kind, b.actor.user)
                    };
                    println!(
                        "{} #{} {} {} [{}] {}",
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(b.time_ms)
                        ),
                        b.seq,
                        who,
                        b.action,
                        b.uids.join(" "),
                        b.outcome
                    );
                }
            }
            Ok(0)
        }
        AuditCommand::Export { format, since } => {
            let from = since
                .map(|d| strata::index::rocks::unix_ms_now().saturating_sub(d.as_millis() as u64))
                .unwrap_or(0);
            for r in strata::audit::read_all(&path)?
                .into_iter()
                .filter(|r| r.body.time_ms >= from)
            {
                if format == "dicom" {
                    println!(
                        "{}",
                        strata::audit::to_dicom_xml(&r, &config.dicom.ae_title)
                    );
                } else {
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(0)
        }
        AuditCommand::Anchor { json } => {
            let cold = anchor_store(config)?;
            check_marker(config, &cold)?;
            let log = strata::audit::AuditLog::open(&config.archive.data_dir)?;
            let anchored = runtime()?
                .block_on(strata::audit::anchor(
                    &log,
                    &cold,
                    config.audit.anchor_lock_days,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            if json {
                print_json(&anchored)?;
                return Ok(0);
            }
            match anchored {
                Some(a) => println!(
                    "anchored record {} ({}) in {}",
                    a.seq,
                    a.hash,
                    cold.describe()
                ),
                None => println!("the audit log is empty: nothing to anchor"),
            }
            Ok(0)
        }
    }
}
