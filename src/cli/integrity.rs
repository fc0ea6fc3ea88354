//! `strata verify [--repair]` and `strata reindex`: integrity checks and repairs.
//! `verify` is read-only (safe beside a running server); `--repair` goes through the
//! running server's admin API, or opens the archive exclusively when none runs;
//! `reindex` needs the server stopped.

use super::print::{print_json, progress_bar};
use super::{admin_client, on_pool, runtime, server_running, with_exclusive};
use anyhow::Result;
use strata::archive::integrity::VerifyScope;
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn verify(config: &Config, json: bool, tier: VerifyScope) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let rt = runtime()?;
    let workers = config.workers();
    let report = on_pool(&rt, move || {
        archive.verify_blocking(&Principal::cli_user(), workers, tier)
    })?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} objects, {} bytes in {:.1}s: {} missing, {} corrupt, {} orphans, {} dangling, {} strays",
            report.objects_checked,
            report.bytes_checked,
            report.seconds,
            report.missing.len(),
            report.corrupt.len(),
            report.orphans.len(),
            report.dangling.len(),
            report.strays.len()
        );
        for (kind, list) in [
            ("missing", &report.missing),
            ("corrupt", &report.corrupt),
            ("orphan", &report.orphans),
            ("dangling", &report.dangling),
        ] {
            for p in list {
                println!(
                    "  {kind}: object {} study {} instance {} at {}: {}",
                    p.id, p.study_uid, p.sop_instance_uid, p.path, p.detail
                );
            }
        }
        for s in &report.strays {
            println!("  stray file: {s}");
        }
        if let Some(why) = &report.cold_not_checked {
            println!("COLD TIER NOT CHECKED: {why}");
        } else if tier != VerifyScope::Hot {
            println!(
                "checked {} packs, {} bytes: {} bad, {} unreachable objects, {} unrecorded uploads",
                report.packs_checked,
                report.pack_bytes_checked,
                report.bad_packs.len(),
                report.unreachable.len(),
                report.unrecorded_packs.len()
            );
        }
        for u in &report.incomplete_uploads {
            println!("  incomplete multipart upload (no pack; aborted after orphan_grace): {u}");
        }
        for p in &report.bad_packs {
            println!(
                "  bad pack: {} ({}) study {} instances {}: {}",
                p.pack,
                p.key,
                p.study_uid,
                p.instances.join(","),
                p.detail
            );
        }
        for p in &report.unreachable {
            println!(
                "  unreachable: object {} study {} instance {}: {}",
                p.id, p.study_uid, p.sop_instance_uid, p.detail
            );
        }
        for p in &report.pending_eviction {
            println!(
                "  hot file missing, cold copy safe: object {} study {} instance {} at {}",
                p.id, p.study_uid, p.sop_instance_uid, p.path
            );
        }
        if !report.pending_eviction.is_empty() {
            println!(
                "  {} objects await the end of an interrupted move (cold copies verified)",
                report.pending_eviction.len()
            );
        }
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

pub fn repair(config: &Config, json: bool) -> Result<i32> {
    let (found, report) = if server_running(config) {
        let answer = runtime()?.block_on(admin_client(config)?.repair())?;
        (answer.found, answer.repair)
    } else {
        let workers = config.workers();
        with_exclusive(config, "repair", |rt, archive| {
            let archive = archive.clone();
            on_pool(rt, move || {
                archive.repair_blocking(&Principal::cli_user(), workers)
            })
        })?
    };
    if json {
        print_json(&serde_json::json!({"found": found, "repair": report}))?;
    } else {
        for line in &report.repaired {
            println!("repaired: {line}");
        }
        for line in &report.unrepairable {
            println!("NO GOOD COPY LEFT, NOTHING CHANGED: {line}");
        }
        if report.repaired.is_empty() && report.unrepairable.is_empty() {
            println!("nothing to repair");
        }
    }
    Ok(if report.unrepairable.is_empty() { 0 } else { 1 })
}

pub fn reindex(config: &Config, force: bool, json: bool) -> Result<i32> {
    let bar = progress_bar(0, "reindexing");
    let report = strata::storage::reindex::reindex(config, &bar, force)?;
    bar.finish_and_clear();
    let code = if report.swapped && report.quarantined.is_empty() && report.packs_skipped.is_empty()
    {
        0
    } else {
        1
    };
    if json {
        print_json(&report)?;
        return Ok(code);
    }
    println!(
        "reindexed {} of {} hot objects and {} cold packs ({} objects only in cold) into {} studies; {} quarantined, {} packs skipped",
        report.indexed,
        report.objects_found,
        report.packs,
        report.cold_only_objects,
        report.studies,
        report.quarantined.len(),
        report.packs_skipped.len()
    );
    if report.deleted_packs > 0 || report.stored_again > 0 {
        println!(
            "  deletions: {} pack(s) of deleted studies left out; {} object(s) of deleted studies were stored again since and are kept",
            report.deleted_packs, report.stored_again
        );
    }
    for q in &report.quarantined {
        println!("  quarantined {q}");
    }
    for (pack, reason) in &report.packs_skipped {
        println!("  pack skipped {pack}: {reason}");
    }
    for (id, study) in &report.cold_objects_not_found {
        println!("  not found in the cold tier: object {id} (study {study})");
    }
    if !report.swapped {
        println!(
            "THE CURRENT INDEX IS KEPT: the rebuilt one would lack {} object(s) it records in cold and {} pack(s) could not be read; run again later (an S3 listing may lag), or with --force to accept the loss",
            report.cold_objects_not_found.len(),
            report.packs_skipped.len()
        );
    }
    Ok(code)
}
