//! `strata export` and `strata manifest`: studies out as Part-10 files, or as a BagIt
//! bag; read-only (safe beside a running server), audited by the use case.

use super::print::print_json;
use super::{on_pool, runtime, selected_studies};
use anyhow::Result;
use std::path::{Path, PathBuf};
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn export(
    config: &Config,
    study_uids: Vec<String>,
    all: bool,
    out: &Path,
    identity: strata::archive::export::ExportIdentity,
    json: bool,
) -> Result<i32> {
    let report = write_out(
        config,
        study_uids,
        all,
        out,
        move |archive, studies, dest| {
            archive.export_blocking(&Principal::cli_user(), studies, dest, identity)
        },
    )?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "exported {} studies, {} files, {} bytes to {}",
            report.studies,
            report.files,
            report.bytes,
            out.display()
        );
    }
    Ok(0)
}

pub fn manifest(
    config: &Config,
    study_uids: Vec<String>,
    all: bool,
    out: &Path,
    json: bool,
) -> Result<i32> {
    let report = write_out(config, study_uids, all, out, |archive, studies, dest| {
        archive.manifest_blocking(&Principal::cli_user(), studies, dest)
    })?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "bag written to {}: {} studies, {} files, {} bytes; sha256 of manifest-sha256.txt {}",
            out.display(),
            report.studies,
            report.files,
            report.bytes,
            report.manifest_sha256
        );
    }
    Ok(0)
}

/// Runs a use case that writes the selected studies into `out`, on the blocking pool
/// of a runtime (cold packs are read through it).
fn write_out<R: Send + 'static>(
    config: &Config,
    study_uids: Vec<String>,
    all: bool,
    out: &Path,
    write: impl FnOnce(&Archive, &[String], &PathBuf) -> Result<R, strata::archive::Error>
        + Send
        + 'static,
) -> Result<R> {
    let archive = Archive::read_only(config)?;
    let studies = selected_studies(&archive, study_uids, all)?;
    let rt = runtime()?;
    let dest = out.to_path_buf();
    on_pool(&rt, move || write(&archive, &studies, &dest))
}
