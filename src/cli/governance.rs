//! `strata delete`, `strata hold`, `strata retention`: through the running server's
//! admin API when a server holds the archive (no downtime), else on the archive opened
//! exclusively. Either way the same use case runs and audits the command-line user.

use super::print::print_json;
use super::{admin_client, runtime, server_running, with_exclusive};
use anyhow::Result;
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn delete(config: &Config, study_uid: &str, reason: &str, json: bool) -> Result<i32> {
    let report = if server_running(config) {
        runtime()?.block_on(admin_client(config)?.delete(study_uid, reason))?
    } else {
        with_exclusive(config, "delete", |rt, archive| {
            Ok(rt.block_on(archive.delete_study(&Principal::cli_user(), study_uid, reason))?)
        })?
    };
    if json {
        print_json(&report)?;
        return Ok(0);
    }
    println!(
        "deleted study {}: {} objects, {} hot files, {} packs; tombstone kept",
        report.study_uid, report.objects, report.hot_files_deleted, report.packs_deleted
    );
    Ok(0)
}

pub fn hold(
    config: &Config,
    study_uid: &str,
    reason: &str,
    release: bool,
    matter: Option<&str>,
    json: bool,
) -> Result<i32> {
    let hold = if server_running(config) {
        runtime()?.block_on(admin_client(config)?.hold(study_uid, reason, release, matter))?
    } else {
        with_exclusive(config, "hold", |rt, archive| {
            let hold = archive.hold_blocking(
                &Principal::cli_user(),
                study_uid,
                reason,
                release,
                matter,
            )?;
            rt.block_on(archive.sync_governance_or_log());
            Ok(hold)
        })?
    };
    if json {
        print_json(&serde_json::json!({
            "study_uid": study_uid,
            "released": release,
            "hold": hold,
        }))?;
    } else if release {
        println!(
            "legal hold {:?} (placed by {} at {}) lifted from study {study_uid}: {reason}",
            hold.why,
            hold.who,
            super::print::iso(hold.since_ms)
        );
    } else {
        println!("legal hold {:?} placed on study {study_uid}", hold.why);
    }
    Ok(0)
}

pub fn retention(config: &Config, dry_run: bool, json: bool) -> Result<i32> {
    let report = if server_running(config) {
        // the rule is this configuration's, applied by the server holding the archive
        runtime()?.block_on(admin_client(config)?.retention(config.retention.study_age, dry_run))?
    } else if dry_run {
        // only reads: beside any other command, without the archive lock
        let archive = Archive::read_only(config)?;
        runtime()?.block_on(archive.retention(
            &Principal::cli_user(),
            config.retention.study_age,
            true,
        ))?
    } else {
        with_exclusive(config, "retention", |rt, archive| {
            Ok(rt.block_on(archive.retention(
                &Principal::cli_user(),
                config.retention.study_age,
                false,
            ))?)
        })?
    };
    if json {
        print_json(&report)?;
        return Ok(0);
    }
    let what = |uid: &String| {
        if report.held.contains(uid) {
            "kept (legal hold)"
        } else if dry_run {
            "would be deleted"
        } else {
            "deleted"
        }
    };
    for (uid, date) in &report.due {
        println!("{uid} (StudyDate {date}): {}", what(uid));
    }
    for (uid, why) in &report.rejected {
        println!("{uid} ({why}): {}", what(uid));
    }
    for r in &report.rejected_instances {
        println!(
            "{}, {} of its instances ({}): {}; the study stays",
            r.study_uid,
            r.instances.len(),
            r.why,
            what(&r.study_uid)
        );
    }
    println!(
        "{} studies due, {} deleted, {} held",
        report.due.len() + report.rejected.len(),
        report.deleted.len(),
        report.held.len()
    );
    if !report.rejected_instances.is_empty() {
        println!(
            "{} studies with some instances due, {} of them done",
            report.rejected_instances.len(),
            report.instances_deleted.len()
        );
    }
    Ok(0)
}
