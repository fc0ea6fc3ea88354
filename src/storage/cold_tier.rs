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
//!
//! The cold tier is marked too: before the first pack a process uploads, the archive
//! claims it ([`claim`]) with `<prefix>/archive/strata-archive.json` (format 1:
//! `{"v":1,"format":"strata-cold-tier-marker","archive_id":"…"}`), the archive id being
//! kept in `cold-tier.json`. A marker naming another archive is refused: two archives
//! never share a prefix. `reindex` (a node restored from the bucket) adopts the marker's
//! id. The id is kept in the index too: the nodes sharing one index (PostgreSQL:
//! docs/scale-out.md) share it, so a node joining finds the bucket's marker naming its
//! own archive, while another archive's index (another database) has another id, or
//! none, and is refused as before.

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
    /// The archive's id, the one its cold tier's marker names (absent until the first
    /// claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archive_id: Option<String>,
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
    Ok(read_record(data_dir)?.map(|r| r.identity))
}

/// The record, if any.
fn read_record(data_dir: &Path) -> Result<Option<ColdTierRecord>, StorageError> {
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
    Ok(Some(record))
}

/// Records the cold tier's identity (keeping the archive id).
fn record(data_dir: &Path, identity: &str) -> Result<(), StorageError> {
    let archive_id = read_record(data_dir)?.and_then(|r| r.archive_id);
    write_record(
        data_dir,
        &ColdTierRecord {
            v: FORMAT_VERSION,
            identity: identity.to_string(),
            archive_id,
        },
    )
}

/// Writes the record: tmp file, fsync, rename, fsync the directory.
fn write_record(data_dir: &Path, record: &ColdTierRecord) -> Result<(), StorageError> {
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec(record).expect("the record serialises");
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

/// Where the marker lives in the cold tier (under its prefix).
const MARKER: &str = "archive/strata-archive.json";

/// The marker object (format 1).
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    v: u32,
    format: String,
    archive_id: String,
    #[serde(default)]
    note: String,
}

/// The local record, read off the async threads.
async fn local_record(config: &Config) -> Result<Option<ColdTierRecord>, StorageError> {
    let dir = config.archive.data_dir.clone();
    tokio::task::spawn_blocking(move || read_record(&dir))
        .await
        .map_err(|e| StorageError::Io {
            action: "read",
            path: path(&config.archive.data_dir),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// The archive id this node's record holds (`cold-tier.json`), if any.
pub fn recorded_archive_id(data_dir: &Path) -> Result<Option<String>, StorageError> {
    Ok(read_record(data_dir)?.and_then(|r| r.archive_id))
}

/// The cold tier's marker, if there is one.
async fn read_marker(cold: &strata_tiers::ColdStore) -> Result<Option<Marker>, StorageError> {
    let failed = |action: &'static str, e: String| StorageError::Io {
        action,
        path: PathBuf::from(MARKER),
        source: std::io::Error::other(e),
    };
    match cold
        .get_named(MARKER)
        .await
        .map_err(|e| failed("read the cold tier's marker", e.to_string()))?
    {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| failed("parse the cold tier's marker", e.to_string())),
        None => Ok(None),
    }
}

/// Claims the configured cold tier for this archive (see the module docs): writes the
/// marker when there is none; refuses ([`StorageError::ColdTierClaimed`]) a marker that
/// names another archive, unless `adopt` (reindex restoring a node from the bucket) and
/// this archive has no id yet. Blocking file work runs off the async threads.
pub async fn claim(
    config: &Config,
    cold: &strata_tiers::ColdStore,
    adopt: bool,
    index: Option<&dyn crate::index::Index>,
) -> Result<(), StorageError> {
    let local = local_record(config).await?;
    let ours = match index_id(index)? {
        Some(id) => Some(id),
        None => local.as_ref().and_then(|r| r.archive_id.clone()),
    };
    let claimed = |theirs: String, ours: String| StorageError::ColdTierClaimed {
        cold: cold.describe().to_string(),
        theirs,
        ours,
    };
    let id = match (read_marker(cold).await?, ours) {
        (Some(m), Some(ours)) if m.archive_id == ours => return Ok(()),
        (Some(m), Some(ours)) => return Err(claimed(m.archive_id, ours)),
        (Some(m), None) if adopt => m.archive_id,
        (Some(m), None) => return Err(claimed(m.archive_id, "none yet".into())),
        (None, Some(ours)) => ours,
        (None, None) => new_archive_id(&config.archive.data_dir),
    };
    if local.as_ref().and_then(|r| r.archive_id.as_deref()) != Some(id.as_str()) {
        let record = ColdTierRecord {
            v: FORMAT_VERSION,
            identity: local
                .map(|r| r.identity)
                .unwrap_or_else(|| identity(config)),
            archive_id: Some(id.clone()),
        };
        let dir = config.archive.data_dir.clone();
        tokio::task::spawn_blocking(move || write_record(&dir, &record))
            .await
            .map_err(|e| StorageError::Io {
                action: "write",
                path: path(&config.archive.data_dir),
                source: std::io::Error::other(e.to_string()),
            })??;
    }
    if let Some(index) = index {
        if index_id(Some(index))?.as_deref() != Some(id.as_str()) {
            let set = || index.set_archive_id(&id);
            blocking_here(set)?;
        }
    }
    let marker = Marker {
        v: 1,
        format: "strata-cold-tier-marker".into(),
        archive_id: id,
        note: "This prefix holds the study packs of one Strata archive (docs/formats.md).".into(),
    };
    cold.put_named(
        MARKER,
        bytes::Bytes::from(serde_json::to_vec(&marker).expect("the marker serialises")),
    )
    .await
    .map_err(|e| StorageError::Io {
        action: "write the cold tier's marker",
        path: PathBuf::from(MARKER),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Whether this archive may write to the configured cold tier, without claiming it: a
/// marker naming another archive (or any marker, while this archive has no id yet: it
/// never claimed a tier) is refused ([`StorageError::ColdTierClaimed`]); no marker is
/// fine. For the writes that are not packs (audit anchors), the readiness probe and
/// `tier status`.
pub async fn check_marker(
    config: &Config,
    cold: &strata_tiers::ColdStore,
    index: Option<&dyn crate::index::Index>,
) -> Result<(), StorageError> {
    let ours = match index_id(index)? {
        Some(id) => Some(id),
        None => local_record(config).await?.and_then(|r| r.archive_id),
    };
    let Some(marker) = read_marker(cold).await? else {
        return Ok(());
    };
    match ours {
        Some(ours) if ours == marker.archive_id => Ok(()),
        ours => Err(StorageError::ColdTierClaimed {
            cold: cold.describe().to_string(),
            theirs: marker.archive_id,
            ours: ours.unwrap_or_else(|| "none yet".into()),
        }),
    }
}

/// The archive id the index holds, if any (an index lookup; on a multi-threaded
/// runtime in `block_in_place`).
fn index_id(index: Option<&dyn crate::index::Index>) -> Result<Option<String>, StorageError> {
    match index {
        Some(index) => Ok(blocking_here(|| index.archive_id())?),
        None => Ok(None),
    }
}

/// Runs a short blocking call (an index lookup) from async code: in `block_in_place` on a
/// multi-threaded runtime, else right here.
fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|rt| rt.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A new archive id: 32 hex digits from the time, the process and the data directory.
fn new_archive_id(data_dir: &Path) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{now} {} {}", std::process::id(), data_dir.display());
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
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
