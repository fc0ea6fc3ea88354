//! Which cold tier holds an archive's packs, recorded in the archive itself.
//!
//! The index records pack ids, not where the packs live: a command run with a
//! configuration that names another cold tier (or none, which means the local default)
//! would find every pack "missing", report them as bad, and `verify --repair` would act
//! on that. So the archive keeps `<data_dir>/cold-tier.json` (format 1:
//! `{"v":1,"identity":"…"}`), written crash-safely when an archive is first opened for
//! writing, and every opening compares the configured cold tier with it:
//!
//! - the same identity: fine;
//! - another one, while the index records no pack yet: a writer records the new one (the
//!   tier may still change freely), a reader goes on;
//! - another one while packs are recorded: refused, naming both
//!   ([`StorageError::ColdTierMismatch`]).
//!
//! The identity is the configured `[cold] url` (and `endpoint`), or `default` for the
//! local default `<data_dir>/cold`, which moves with the archive directory.

use super::{io, sync_dir, StorageError};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "cold-tier.json";
const FORMAT_VERSION: u32 = 1;

/// The record (format 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ColdTierRecord {
    v: u32,
    identity: String,
}

/// The configured cold tier's identity (see the module docs).
pub fn identity(config: &Config) -> String {
    let c = &config.cold;
    if c.url.trim().is_empty() {
        return "default".into();
    }
    if c.endpoint.trim().is_empty() {
        c.url.trim().to_string()
    } else {
        format!("{} at {}", c.url.trim(), c.endpoint.trim())
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The recorded identity, if any.
fn recorded(data_dir: &Path) -> Result<Option<String>, StorageError> {
    let p = path(data_dir);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &p)(e)),
    };
    let record: ColdTierRecord = serde_json::from_str(&text).map_err(|e| StorageError::Io {
        action: "parse",
        path: p.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    if record.v != FORMAT_VERSION {
        return Err(StorageError::Io {
            action: "read",
            path: p,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("cold tier record format {} is not known", record.v),
            ),
        });
    }
    Ok(Some(record.identity))
}

/// Writes the record: tmp file, fsync, rename, fsync the directory.
fn record(data_dir: &Path, identity: &str) -> Result<(), StorageError> {
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec(&ColdTierRecord {
        v: FORMAT_VERSION,
        identity: identity.to_string(),
    })
    .expect("the record serialises");
    fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()
        })
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, &p).map_err(io("rename", &tmp))?;
    sync_dir(data_dir)
}

/// Checks the configured cold tier against the archive's record (see the module docs).
/// `writable` openings record it when there is nothing to compare with, or when no pack
/// is recorded yet; `has_packs` says whether the index records any.
pub fn check(
    config: &Config,
    writable: bool,
    has_packs: impl FnOnce() -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    let data_dir = &config.archive.data_dir;
    let configured = identity(config);
    match recorded(data_dir)? {
        Some(r) if r == configured => Ok(()),
        Some(r) => {
            if has_packs()? {
                return Err(StorageError::ColdTierMismatch {
                    recorded: r,
                    configured,
                    record: path(data_dir),
                });
            }
            if writable {
                tracing::info!(
                    from = r,
                    to = configured,
                    "no pack recorded yet: the archive now uses the configured cold tier"
                );
                record(data_dir, &configured)?;
            }
            Ok(())
        }
        None if writable => record(data_dir, &configured),
        None => Ok(()),
    }
}

/// For the audit commands, whose anchors live in the cold tier whether or not any pack
/// does: a configured cold tier other than the recorded one is refused outright (an
/// anchor written elsewhere vouches for nothing; a verify against another tier finds
/// no anchor and says so misleadingly).
pub fn check_strict(config: &Config) -> Result<(), StorageError> {
    let data_dir = &config.archive.data_dir;
    let configured = identity(config);
    match recorded(data_dir)? {
        Some(r) if r != configured => Err(StorageError::ColdTierMismatch {
            recorded: r,
            configured,
            record: path(data_dir),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, cold: &str) -> Config {
        Config::from_toml(&format!(
            "[archive]\ndata_dir = \"{}\"\n{cold}",
            dir.display()
        ))
        .unwrap()
    }

    #[test]
    fn a_cold_tier_with_packs_is_never_swapped_silently() {
        let dir = tempfile::tempdir().unwrap();
        let local = config(dir.path(), "");
        let s3 = config(dir.path(), "[cold]\nurl = \"s3://bucket/site1\"\n");
        // first writable opening records the tier; reading needs no record
        check(&s3, false, || Ok(true)).unwrap();
        check(&s3, true, || Ok(false)).unwrap();
        assert_eq!(
            recorded(dir.path()).unwrap().as_deref(),
            Some("s3://bucket/site1")
        );
        // no pack yet: the tier may change
        check(&local, true, || Ok(false)).unwrap();
        assert_eq!(recorded(dir.path()).unwrap().as_deref(), Some("default"));
        check(&local, true, || Ok(true)).unwrap();
        // packs recorded: another tier is refused, for readers and writers alike
        for writable in [false, true] {
            let e = check(&s3, writable, || Ok(true)).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("default") && text.contains("s3://bucket/site1"),
                "{text}"
            );
        }
        assert_eq!(recorded(dir.path()).unwrap().as_deref(), Some("default"));
    }
}
