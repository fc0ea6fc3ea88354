//! `strata export` and `strata manifest`: studies out as Part-10 files, or as a BagIt
//! bag; read-only (safe beside a running server), audited by the use case.

use super::{on_pool, runtime, selected_studies};
use anyhow::Result;
use std::path::Path;
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn export(config: &Config, study_uids: Vec<String>, all: bool, out: &Path) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let studies = selected_studies(&archive, study_uids, all)?;
    let rt = runtime()?;
    let dest = out.to_path_buf();
    let report = on_pool(&rt, move || {
        archive.export_blocking(&Principal::cli_user(), &studies, &dest)
    })?;
    println!(
        "exported {} studies, {} files, {} bytes to {}",
        report.studies,
        report.files,
        report.bytes,
        out.display()
    );
    Ok(0)
}

pub fn manifest(config: &Config, study_uids: Vec<String>, all: bool, out: &Path) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let studies = selected_studies(&archive, study_uids, all)?;
    let rt = runtime()?;
    let dest = out.to_path_buf();
    let report = on_pool(&rt, move || {
        archive.manifest_blocking(&Principal::cli_user(), &studies, &dest)
    })?;
    println!(
        "bag written to {}: {} studies, {} files, {} bytes; sha256 of manifest-sha256.txt {}",
        out.display(),
        report.studies,
        report.files,
        report.bytes,
        report.manifest_sha256
    );
    Ok(0)
}
