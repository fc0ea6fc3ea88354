//! `strata import`: Part-10 files into the archive through the store use case.

use super::print::{print_json, progress_bar};
use super::with_exclusive;
use anyhow::Result;
use std::path::PathBuf;
use strata::archive::store::collect_files;
use strata::archive::Principal;
use strata::config::Config;

pub fn import(config: &Config, paths: &[PathBuf], json: bool) -> Result<i32> {
    let files = collect_files(paths)?;
    let report = with_exclusive(config, "import", |_, archive| {
        let bar = progress_bar(files.len() as u64, "importing");
        let report =
            archive.import_blocking(&Principal::cli_user(), &files, config.workers(), &|| {
                bar.inc(1)
            });
        bar.finish_and_clear();
        Ok(report)
    })?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "{} files: {} stored, {} new versions, {} already present, {} the same data set \
             as a stored instance (other encoding, not kept), {} skipped, {} rejected",
            report.files,
            report.stored,
            report.new_versions.len(),
            report.already_present,
            report.same_data_set.len(),
            report.skipped.len(),
            report.rejected.len()
        );
        for s in &report.skipped {
            println!("  skipped {}: {}", s.path, s.reason);
        }
        for v in &report.new_versions {
            println!(
                "  new version of {} from {}: its data set differs from the stored one; \
                 this version ({}) is now served, the earlier ones are kept",
                v.sop_instance_uid, v.path, v.id
            );
        }
        for r in &report.rejected {
            println!("  rejected {}: {}", r.path, r.reason);
        }
    }
    Ok(if report.rejected.is_empty() { 0 } else { 1 })
}
