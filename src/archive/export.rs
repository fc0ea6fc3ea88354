//! Export: studies out as plain Part-10 files (DESIGN promise 6: no lock-in), and as a
//! BagIt bag (RFC 8493) for auditors, each file's blake3 equal to its object id.
//!
//! Both are audited (`export`, `manifest`) with their outcome, whether they succeed or
//! fail. They block: call them on the blocking pool of a runtime (cold objects are read
//! with the runtime's handle).

use super::principal::Role;
use super::{Archive, Error, Principal};
use crate::dicom::part10::is_valid_uid;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use strata_tiers::ObjectId;

type Result<T> = std::result::Result<T, Error>;

impl Archive {
    /// Writes `out/<study>/<series>/<sop>.dcm` for the served version of every instance
    /// of `studies`, byte-identical to the stored object (so `b3sum` of each file equals
    /// its id). Objects in the cold tier are read from their packs, one streamed GET per
    /// pack; an object whose pack awaits a restore fails the export with "pending
    /// restore". Audited as `export`.
    pub fn export_blocking(
        &self,
        principal: &Principal,
        studies: &[String],
        out: &Path,
        identity: ExportIdentity,
    ) -> Result<ExportReport> {
        self.authorize(principal, Role::Viewer, "export", studies)?;
        let report = export(self, studies, out, identity);
        self.audit_outcome(principal, "export", studies, &report, &destination(out));
        report
    }

    /// Writes a BagIt bag of `studies` into `out` (see [`manifest`]). Audited as
    /// `manifest`.
    pub fn manifest_blocking(
        &self,
        principal: &Principal,
        studies: &[String],
        out: &Path,
    ) -> Result<ManifestReport> {
        self.authorize(principal, Role::Auditor, "manifest", studies)?;
        let report = manifest(self, studies, out);
        self.audit_outcome(principal, "manifest", studies, &report, &destination(out));
        report
    }

    /// Records an access with its outcome: `ok`, or `failed: why`, then `detail` (where
    /// the files went, say), if any.
    pub(crate) fn audit_outcome<T>(
        &self,
        principal: &Principal,
        action: &'static str,
        uids: &[String],
        result: &Result<T>,
        detail: &str,
    ) {
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        let outcome = if detail.is_empty() {
            outcome
        } else {
            format!("{outcome} ({detail})")
        };
        self.audit_blocking(principal, action, uids.to_vec(), outcome);
    }
}

/// Where files were written, for the audit record: `to <absolute path>`.
fn destination(out: &Path) -> String {
    let absolute = std::path::absolute(out).unwrap_or(out.to_path_buf());
    format!("to {}", absolute.display())
}

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub studies: usize,
    pub files: usize,
    pub bytes: u64,
}

/// Writes `out/<study>/<series>/<sop>.dcm` for the served version of every instance,
/// byte-identical to the stored object (so `b3sum` of each file equals its id). Objects
/// in the cold tier are read from their packs, one streamed GET per pack; an object
/// whose pack awaits a restore fails the export with "pending restore".
/// Which patient identity exported files carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportIdentity {
    /// The objects as stored: each file's bytes hash to its object id.
    AsStored,
    /// Objects whose patient the hospital has since merged, renamed or corrected carry
    /// the current identity (group 0010 re-encoded, [`crate::dicom::coerce`]); the
    /// others are as stored.
    Current,
}

fn export(
    archive: &Archive,
    studies: &[String],
    out: &Path,
    identity: ExportIdentity,
) -> Result<ExportReport> {
    let index = archive.index.as_ref();
    let reader = &archive.reader;
    let rt = super::current_runtime()?;
    let mut report = ExportReport::default();
    for study in studies {
        if !is_valid_uid(study) {
            return Err(Error::InvalidRequest(format!(
                "{study:?} is not a valid Study Instance UID"
            )));
        }
        let entries = index.instances_of_study(study)?;
        if entries.is_empty() {
            return Err(Error::NotFound(format!("no study {study} in the archive")));
        }
        let targets = match identity {
            ExportIdentity::AsStored => vec![None; entries.len()],
            ExportIdentity::Current => super::retrieve::entry_patients(index, &entries)?
                .into_iter()
                .map(|p| p.coerce_to)
                .collect(),
        };
        let mut dest_of: BTreeMap<ObjectId, PathBuf> = BTreeMap::new();
        let mut coerce: BTreeMap<ObjectId, std::sync::Arc<crate::dicom::coerce::PatientModule>> =
            BTreeMap::new();
        for (e, target) in entries.into_iter().zip(targets) {
            if !(is_valid_uid(&e.study_uid)
                && is_valid_uid(&e.series_uid)
                && is_valid_uid(&e.sop_instance_uid))
            {
                return Err(Error::Internal(format!(
                    "index entry with an invalid UID in study {study}; run `strata verify`"
                )));
            }
            let id = e
                .record
                .current()
                .and_then(|v| ObjectId::from_hex(&v.id))
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "instance {} without a readable version in the index",
                        e.sop_instance_uid
                    ))
                })?;
            let dir = out.join(&e.study_uid).join(&e.series_uid);
            dest_of.insert(id, dir.join(format!("{}.dcm", e.sop_instance_uid)));
            if let Some(target) = target {
                coerce.insert(id, target);
            }
        }
        // large objects are copied file to file — from their hot file after a re-hash
        // in chunks against their id, or from their cold copy staged on hot disk
        // (checked on the way): never held in memory whole
        let mut ids: Vec<ObjectId> = Vec::with_capacity(dest_of.len());
        for (id, dest) in &dest_of {
            if coerce.contains_key(id) {
                // re-encoded on the way out: read whole below
                ids.push(*id);
                continue;
            }
            let path = archive.hot.path_of(id);
            let hot_size = std::fs::metadata(&path).ok().map(|m| m.len());
            let large_hot = hot_size.is_some_and(|n| n > super::retrieve::STREAM_ABOVE);
            let intact = large_hot
                && archive
                    .hot
                    .rehash_blocking(id)
                    .is_ok_and(|(actual, _)| actual == *id);
            if intact {
                let copied = copy_durably(&path, dest).map_err(Error::io("copy", dest))?;
                report.files += 1;
                report.bytes += copied;
                continue;
            }
            let large_cold = match (hot_size, index.object(id)?) {
                (None, Some(r)) if r.size > super::retrieve::STREAM_ABOVE => Some(r.cold),
                _ => None,
            };
            match large_cold {
                Some(copies) => {
                    let staged = rt.block_on(reader.stage_cold(id, &copies)).map_err(|e| {
                        Error::Unreadable {
                            what: format!("object {id} of study {study}"),
                            source: e,
                        }
                    })?;
                    let copied =
                        copy_durably(staged.path(), dest).map_err(Error::io("copy", dest))?;
                    report.files += 1;
                    report.bytes += copied;
                }
                None => ids.push(*id),
            }
        }
        let failed = rt.block_on(reader.read_many(&ids, &mut |id, bytes| {
            let dest = &dest_of[&id];
            let bytes = match coerce.get(&id) {
                Some(patient) => {
                    crate::dicom::coerce::coerce_part10(&bytes, patient).map_err(|e| {
                        crate::tiering::TieringError::Other(format!("coerce object {id}: {e}"))
                    })?
                }
                None => bytes,
            };
            write_durably(dest, &bytes).map_err(|e| {
                crate::tiering::TieringError::Other(format!("write {}: {e}", dest.display()))
            })?;
            report.files += 1;
            report.bytes += bytes.len() as u64;
            Ok(())
        }))?;
        let count = failed.len();
        if let Some((id, e)) = failed.into_iter().next() {
            return Err(Error::Unreadable {
                what: format!("{count} object(s) of study {study} could not be read; first: {id}"),
                source: e,
            });
        }
        report.studies += 1;
    }
    Ok(report)
}

/// Copies `src` to `dest` durably, in chunks (bounded memory); returns the bytes copied.
fn copy_durably(src: &Path, dest: &Path) -> std::io::Result<u64> {
    durably(dest, |out| {
        std::io::copy(&mut std::fs::File::open(src)?, out)
    })
}

/// Writes a file durably (an export is meant to outlive the archive).
fn write_durably(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    durably(dest, |out| {
        use std::io::Write;
        out.write_all(bytes)?;
        Ok(bytes.len() as u64)
    })
    .map(|_| ())
}

/// Writes `dest` through a temporary name beside it, fsyncs it, then renames it into
/// place. Its folder is made only now: an object that cannot be read leaves no empty
/// folder behind.
fn durably(
    dest: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    let result = std::fs::File::create(&tmp).and_then(|mut out| {
        let written = write(&mut out)?;
        out.sync_all()?;
        Ok(written)
    });
    match result {
        Ok(written) => {
            std::fs::rename(&tmp, dest)?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
#[derive(Debug, Default, Serialize)]
pub struct ManifestReport {
    pub studies: usize,
    pub files: usize,
    pub bytes: u64,
    /// sha256 of `manifest-sha256.txt` and of `manifest-blake3.txt`.
    pub manifest_sha256: String,
    pub manifest_blake3_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a BagIt bag (RFC 8493) of the studies into `out`: the export under `data/`,
/// `manifest-sha256.txt` and `manifest-blake3.txt` (also in the `sha256sum -c` / `b3sum
/// -c` format), `bagit.txt`, `bag-info.txt`, `strata-summary.txt` (counts, bytes and the
/// manifests' own sha256, with a sign-off line) and `tagmanifest-sha256.txt`. Every file
/// is fsynced. `out` must not exist or be empty.
fn manifest(archive: &Archive, studies: &[String], out: &Path) -> Result<ManifestReport> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(Error::io("read", out))?
            .next()
            .is_some()
    {
        return Err(Error::InvalidRequest(format!(
            "{} is not empty: a bag goes into a new directory",
            out.display()
        )));
    }
    let data = out.join("data");
    let exported = export(archive, studies, &data, ExportIdentity::AsStored)?;
    // every payload file, sorted, hashed from what is on disk now
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&data)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let mut sha_lines = String::new();
    let mut b3_lines = String::new();
    let mut bytes = 0u64;
    for path in &files {
        let content = std::fs::read(path).map_err(Error::io("read", path))?;
        let rel = path
            .strip_prefix(out)
            .expect("payload under the bag")
            .to_string_lossy()
            .replace('\\', "/");
        sha_lines.push_str(&format!("{}  {rel}\n", sha256_hex(&content)));
        b3_lines.push_str(&format!("{}  {rel}\n", blake3::hash(&content).to_hex()));
        bytes += content.len() as u64;
    }
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = &date[..10];
    let write = |name: &str, text: &str| -> Result<()> {
        let path = out.join(name);
        use std::io::Write;
        std::fs::File::create(&path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(Error::io("write", &path))
    };
    write("manifest-sha256.txt", &sha_lines)?;
    write("manifest-blake3.txt", &b3_lines)?;
    write(
        "bagit.txt",
        "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    )?;
    write(
        "bag-info.txt",
        &format!(
            "Bag-Software-Agent: strata {}\nBagging-Date: {day}\nPayload-Oxum: {bytes}.{}\nExternal-Description: {} studies exported from Strata; each file's blake3 is its object id\n",
            env!("CARGO_PKG_VERSION"),
            files.len(),
            exported.studies
        ),
    )?;
    let report = ManifestReport {
        studies: exported.studies,
        files: files.len(),
        bytes,
        manifest_sha256: sha256_hex(sha_lines.as_bytes()),
        manifest_blake3_sha256: sha256_hex(b3_lines.as_bytes()),
    };
    let mut summary = format!(
        "Strata export manifest\n\nCreated: {date}\nStudies: {}\nFiles: {}\nBytes: {}\nsha256 of manifest-sha256.txt: {}\nsha256 of manifest-blake3.txt: {}\n\nStudies:\n",
        report.studies, report.files, report.bytes, report.manifest_sha256, report.manifest_blake3_sha256
    );
    for s in studies {
        summary.push_str(&format!("  {s}\n"));
    }
    summary.push_str(
        "\nCheck with: sha256sum -c manifest-sha256.txt; b3sum -c manifest-blake3.txt; or any BagIt validator.\n\nChecked by: ____________________   Date: ____________   Signature: ____________\n",
    );
    write("strata-summary.txt", &summary)?;
    let mut tags = String::new();
    for name in [
        "bagit.txt",
        "bag-info.txt",
        "manifest-sha256.txt",
        "manifest-blake3.txt",
        "strata-summary.txt",
    ] {
        let content = std::fs::read(out.join(name)).map_err(Error::io("read", out))?;
        tags.push_str(&format!("{}  {name}\n", sha256_hex(&content)));
    }
    write("tagmanifest-sha256.txt", &tags)?;
    std::fs::File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", out))?;
    Ok(report)
}
