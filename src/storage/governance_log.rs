//! The governance log: legal holds and tombstones outside the index (DESIGN promise 5).
//!
//! Holds and tombstones are not derivable from the stored objects, so the index alone
//! must never hold them: if it is lost, `strata reindex` would forget which studies are
//! held and which were deleted (and bring back the files of a deletion that was cut
//! short). Every hold placed or lifted and every tombstone is therefore also appended,
//! synced, to `<data_dir>/governance/governance.log` before the action takes effect on
//! the stored data, and reindex replays it.
//!
//! ## Format (governance log format 1)
//! One JSON object per line, hash-chained like the audit log:
//! `{"v":1,"seq":N,"time_ms":T,"record":{"kind":"hold"|"release"|"tombstone"|"deleted"|"patient"|"rejection",…},
//! "prev":"<hash of line N-1>","hash":"<sha256 hex of prev, a newline and the line's
//! JSON without hash>"}`; `seq` counts from 1; the first `prev` is 64 zeros.
//!
//! ## Crash consistency
//! A record is appended and fsynced before the index changes (holds) or before any file
//! or pack is removed (tombstones, whose object list the index computes first). A torn
//! last line (a crash mid-write) is ignored when reading and cut before the next append.

use super::{io, StorageError};
use crate::index::{HoldRecord, Tombstone};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const FORMAT_VERSION: u32 = 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One governance action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GovernanceRecord {
    /// A legal hold placed on a study (one more: a study may have several, one per
    /// matter; a hold with the same reason as a standing one replaces it).
    Hold { study_uid: String, hold: HoldRecord },
    /// A legal hold of a study lifted: the one placed for `matter` (its reason), or every
    /// hold when `matter` is absent (records written before several holds per study).
    /// `who` lifted it and `why` (absent in older records).
    Release {
        study_uid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matter: Option<String>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        who: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        why: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// A study deleted: what, who, why, when.
    Tombstone(Tombstone),
    /// The deletion of the tombstone of `study_uid` made at `deleted_at_ms` finished:
    /// every hot file and pack it names was removed. Any of its objects found later, in
    /// hot or in a pack (even one of the same name: packs are content-addressed), was
    /// stored again since and lives.
    Deleted {
        study_uid: String,
        deleted_at_ms: u64,
    },
    /// A patient identity change (HL7 ADT A08/A31/A40/A47 or `strata patient merge`):
    /// each stored PatientID in `links` is known by its link's identity from now on.
    /// `control_id` is the HL7 message's (empty for the CLI); `summary` says what
    /// changed, before and after.
    Patient {
        links: Vec<(String, crate::index::PatientLink)>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        control_id: String,
        summary: String,
        /// Who asked for it (the caller's name: `hl7:APP^FACILITY@address`, a CLI user).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        by: String,
        /// The audit action of the change (`patient_update`, `patient_merge`,
        /// `patient_id_change`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        action: String,
    },
    /// Instances `(study, series, sop)` rejected by an IOCM rejection note.
    Rejection {
        instances: Vec<(String, String, String)>,
        rejection: crate::index::RejectionRecord,
    },
    /// The study's patient `patient_id` arrived without IssuerOfPatientID from a sender
    /// (`calling_ae`) whose PatientIDs `[patients]` says `issuer` issues: recorded once per
    /// study and patient, since neither the sender nor the default is in the object, so
    /// that `reindex` gives the study the same patient.
    Issuer {
        study_uid: String,
        patient_id: String,
        issuer: String,
        calling_ae: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    v: u32,
    seq: u64,
    time_ms: u64,
    record: GovernanceRecord,
    prev: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    body: Body,
    hash: String,
}

fn chain_hash(body: &Body) -> String {
    let mut h = sha2::Sha256::new();
    h.update(body.prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(body).expect("governance record serialises"));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("governance").join("governance.log")
}

/// The governance log of an archive. Cheap to clone; appends are serialised.
#[derive(Clone)]
pub struct GovernanceLog {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl GovernanceLog {
    /// The log of the archive at `data_dir` (created on first append).
    pub fn new(data_dir: &Path) -> Self {
        GovernanceLog {
            path: log_path(data_dir),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Appends one record and makes it durable before returning. Blocking.
    pub fn append(&self, record: GovernanceRecord) -> Result<(), StorageError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.path.parent().expect("the log has a directory");
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io("open", &self.path))?;
        let (seq, prev, valid_len) = last_of(&mut file, &self.path)?;
        if valid_len != file.metadata().map_err(io("stat", &self.path))?.len() {
            // a torn last line: cut it so the next record starts a line of its own
            file.set_len(valid_len)
                .map_err(io("truncate", &self.path))?;
        }
        let body = Body {
            v: FORMAT_VERSION,
            seq: seq + 1,
            time_ms: crate::index::unix_ms_now(),
            record,
            prev,
        };
        let hash = chain_hash(&body);
        let mut line = serde_json::to_vec(&Line { body, hash }).expect("line serialises");
        line.push(b'\n');
        file.write_all(&line).map_err(io("append to", &self.path))?;
        file.sync_data().map_err(io("fsync", &self.path))?;
        if seq == 0 {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync", dir))?;
        }
        Ok(())
    }

    /// Every complete, chain-checked record, oldest first. A record that breaks the
    /// chain (edited, removed, reordered) is an error naming it; a torn last line is
    /// ignored.
    pub fn read(&self) -> Result<Vec<GovernanceRecord>, StorageError> {
        records_of(&self.lines()?).map_err(|(i, why)| self.broken(i, why))
    }

    /// The complete lines of the log, oldest first, each with its `seq` (the copies
    /// kept in the cold tier are these lines).
    pub fn lines(&self) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("open", &self.path)(e)),
        };
        let mut out = Vec::new();
        let mut reader = BufReader::new(file);
        loop {
            let mut raw = Vec::new();
            let n = reader
                .read_until(b'\n', &mut raw)
                .map_err(io("read", &self.path))?;
            if n == 0 || raw.last() != Some(&b'\n') {
                break; // end, or a torn last line
            }
            let seq = serde_json::from_slice::<Line>(&raw)
                .map(|l| l.body.seq)
                .unwrap_or(0);
            out.push((seq, raw));
        }
        Ok(out)
    }

    fn broken(&self, index: usize, why: impl std::fmt::Display) -> StorageError {
        StorageError::Io {
            action: "check",
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("governance record {}: {why}", index + 1),
            ),
        }
    }
}

/// The records of complete lines (from the log, or from its copies in the cold tier),
/// checking the chain: `Err((index, why))` names the first line that breaks it.
pub fn records_of(lines: &[(u64, Vec<u8>)]) -> Result<Vec<GovernanceRecord>, (usize, String)> {
    let mut out = Vec::new();
    let mut prev = GENESIS.to_string();
    for (i, (_, raw)) in lines.iter().enumerate() {
        let line: Line = serde_json::from_slice(raw).map_err(|e| (i, e.to_string()))?;
        if line.body.prev != prev
            || line.hash != chain_hash(&line.body)
            || line.body.seq != i as u64 + 1
        {
            return Err((i, "the hash chain does not hold".into()));
        }
        prev = line.hash;
        out.push(line.body.record);
    }
    Ok(out)
}

/// The last complete line's (seq, hash) and the length up to its end.
fn last_of(file: &mut File, path: &Path) -> Result<(u64, String, u64), StorageError> {
    file.seek(SeekFrom::Start(0)).map_err(io("seek", path))?;
    let mut reader = BufReader::new(&mut *file);
    let (mut seq, mut hash, mut len) = (0, GENESIS.to_string(), 0u64);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(io("read", path))?;
        if n == 0 || raw.last() != Some(&b'\n') {
            break;
        }
        if let Ok(line) = serde_json::from_slice::<Line>(&raw) {
            seq = line.body.seq;
            hash = line.hash;
        }
        len += n as u64;
    }
    Ok((seq, hash, len))
}

/// Holds and tombstones as the log leaves them: the holds in force (study → hold) and
/// every tombstone, in order.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The standing holds of a study with `hold` placed: a hold for the same matter (reason)
/// is replaced, any other one kept.
pub fn with_hold(holds: &[HoldRecord], hold: &HoldRecord) -> Vec<HoldRecord> {
    let mut out: Vec<HoldRecord> = holds
        .iter()
        .filter(|h| h.why != hold.why)
        .cloned()
        .collect();
    out.push(hold.clone());
    out
}

/// One logged patient identity change ([`GovernanceRecord::Patient`]).
#[derive(Debug, Clone)]
pub struct LoggedPatientChange {
    pub links: Vec<(String, crate::index::PatientLink)>,
    /// The HL7 message control id; empty for the CLI.
    pub control_id: String,
    pub summary: String,
    pub by: String,
    pub action: String,
}

impl LoggedPatientChange {
    /// `(control id, summary)` for the index's record of the message, if it had one.
    pub fn message(&self) -> Option<(&str, &str)> {
        (!self.control_id.is_empty()).then_some((self.control_id.as_str(), self.summary.as_str()))
    }
}

/// The issuers given by senders' configured defaults, in log order: `(study,
/// PatientID, issuer)`, for [`crate::index::Governance::set_patient_issuers`].
pub fn default_issuers(records: &[GovernanceRecord]) -> Vec<(String, String, String)> {
    records
        .iter()
        .filter_map(|r| match r {
            GovernanceRecord::Issuer {
                study_uid,
                patient_id,
                issuer,
                ..
            } => Some((study_uid.clone(), patient_id.clone(), issuer.clone())),
            _ => None,
        })
        .collect()
}

/// The patient identity changes, in order; replayed one after the other they give the
/// current links (a later link of a PatientID wins).
pub fn patient_changes(records: &[GovernanceRecord]) -> Vec<LoggedPatientChange> {
    records
        .iter()
        .filter_map(|r| match r {
            GovernanceRecord::Patient {
                links,
                control_id,
                summary,
                by,
                action,
            } => Some(LoggedPatientChange {
                links: links.clone(),
                control_id: control_id.clone(),
                summary: summary.clone(),
                by: by.clone(),
                action: action.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The holds of each study, in order.
pub type StudyHolds = Vec<(String, Vec<HoldRecord>)>;

/// What the governance log says now: the standing holds of each study, and every
/// tombstone with whether its deletion finished.
pub fn replay(records: &[GovernanceRecord]) -> (StudyHolds, Vec<(Tombstone, bool)>) {
    let mut holds: std::collections::BTreeMap<String, Vec<HoldRecord>> = Default::default();
    let mut tombstones: Vec<(Tombstone, bool)> = Vec::new();
    for r in records {
        match r {
            GovernanceRecord::Hold { study_uid, hold } => {
                let standing = holds.entry(study_uid.clone()).or_default();
                *standing = with_hold(standing, hold);
            }
            GovernanceRecord::Release {
                study_uid, matter, ..
            } => {
                if let Some(standing) = holds.get_mut(study_uid) {
                    match matter {
                        Some(m) => standing.retain(|h| h.why != *m),
                        None => standing.clear(),
                    }
                    if standing.is_empty() {
                        holds.remove(study_uid);
                    }
                }
            }
            GovernanceRecord::Tombstone(t) => tombstones.push((t.clone(), false)),
            GovernanceRecord::Patient { .. }
            | GovernanceRecord::Rejection { .. }
            | GovernanceRecord::Issuer { .. } => {}
            GovernanceRecord::Deleted {
                study_uid,
                deleted_at_ms,
            } => {
                for (t, finished) in tombstones.iter_mut() {
                    if t.study_uid == *study_uid && t.deleted_at_ms == *deleted_at_ms {
                        *finished = true;
                    }
                }
            }
        }
    }
    (holds.into_iter().collect(), tombstones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone(study: &str) -> Tombstone {
        Tombstone {
            study_uid: study.into(),
            patient_id: "P".into(),
            objects: vec![("1.1".into(), "1.1.1".into(), "ab".repeat(32))],
            packs: Vec::new(),
            who: "alice".into(),
            why: "test".into(),
            deleted_at_ms: 5,
            partial: false,
        }
    }

    #[test]
    fn records_replay_in_order_and_a_broken_chain_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = GovernanceLog::new(dir.path());
        assert!(log.read().unwrap().is_empty());
        let hold = HoldRecord {
            who: "legal".into(),
            why: "case".into(),
            since_ms: 1,
        };
        let hold_a = GovernanceRecord::Hold {
            study_uid: "1.2".into(),
            hold: hold.clone(),
        };
        log.append(hold_a.clone()).unwrap();
        log.append(GovernanceRecord::Hold {
            study_uid: "1.3".into(),
            hold: hold.clone(),
        })
        .unwrap();
        // 1.2 gets a second hold, for another matter; then that one is lifted
        let other = HoldRecord {
            why: "other matter".into(),
            ..hold.clone()
        };
        log.append(GovernanceRecord::Hold {
            study_uid: "1.2".into(),
            hold: other.clone(),
        })
        .unwrap();
        let release = |study: &str, matter: Option<&str>| GovernanceRecord::Release {
            study_uid: study.into(),
            matter: matter.map(Into::into),
            who: "legal".into(),
            why: "matter closed".into(),
            at_ms: 2,
        };
        assert_eq!(
            replay(&log.read().unwrap()).0,
            vec![
                ("1.2".to_string(), vec![hold.clone(), other.clone()]),
                ("1.3".to_string(), vec![hold.clone()])
            ]
        );
        log.append(release("1.2", Some("other matter"))).unwrap();
        log.append(release("1.3", None)).unwrap();
        log.append(GovernanceRecord::Tombstone(tombstone("1.4")))
            .unwrap();
        log.append(GovernanceRecord::Deleted {
            study_uid: "1.4".into(),
            deleted_at_ms: 5,
        })
        .unwrap();
        let records = log.read().unwrap();
        assert_eq!(records.len(), 7);
        let (holds, tombs) = replay(&records);
        assert_eq!(holds, vec![("1.2".to_string(), vec![hold])]);
        assert_eq!(tombs, vec![(tombstone("1.4"), true)]);

        // a torn last line is ignored, then cut by the next append
        let path = log_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":1,\"seq\":5,\"ti").unwrap();
        assert_eq!(log.read().unwrap().len(), 7);
        log.append(release("1.2", None)).unwrap();
        assert_eq!(log.read().unwrap().len(), 8);

        // an edited record breaks the chain and is named
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"case\"", "\"cas3\"", 1)).unwrap();
        let e = log.read().unwrap_err().to_string();
        assert!(e.contains("governance record 1"), "{e}");
        let _ = hold_a;
    }
}
