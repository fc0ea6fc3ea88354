//! The audit log: every access, appended to a hash-chained, append-only file
//! (DESIGN promise 8).
//!
//! `<data_dir>/audit/audit.log` holds one JSON record per line (format version 1):
//! `seq` (1, 2, …), `time_ms`, `actor` (calling AE and address, or the CLI user), `action`,
//! `uids`, `outcome`, `prev` (the previous record's `hash`; 64 zeros for the first) and
//! `hash` = sha256 of `prev`, a newline, and the record's JSON without `hash`. Editing,
//! removing, inserting or reordering a record breaks the chain at that record, which
//! [`verify`] names. A consistent rewrite of the whole file is caught by the **anchors**:
//! the chain head (seq and hash) copied from time to time to the cold tier
//! (`audit/heads/<seq>.json`), which the log's record at that seq must still match.
//!
//! Several processes may append (the server, CLI commands): each append takes an
//! exclusive `flock` on the file, reads the current head from its tail, writes, and
//! releases. Records reach the file (the page cache) before the operation they record
//! is acknowledged; a background flusher fdatasyncs them every 100 ms, so a power loss
//! can lose at most that window, and a killed process loses nothing.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const FORMAT_VERSION: u32 = 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Actor {
    /// `dicom`, `cli`, `web` or `system` (the server's own workers).
    pub kind: String,
    /// For `web`: the API called (`dicomweb`, `wado-uri`, `fhir`). Absent in records
    /// written before web access existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ae_title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// For `dicom` over TLS: the subject of the client certificate the peer presented.
    /// Absent otherwise, and in records written before DICOM TLS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    /// For `web` with a bearer token: the OAuth client the token was issued to (`azp`
    /// or `client_id`); `user` is then the token's subject. Absent otherwise, and in
    /// records written before tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
}

impl Actor {
    pub fn dicom(ae_title: &str, address: &str) -> Self {
        Actor {
            kind: "dicom".into(),
            ae_title: ae_title.into(),
            address: address.into(),
            ..Default::default()
        }
    }

    pub fn system(what: &str) -> Self {
        Actor {
            kind: "system".into(),
            user: what.into(),
            ..Default::default()
        }
    }
}

/// One thing to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: Actor,
    /// store, query, retrieve, export, manifest, tier_move, restore, verify, repair,
    /// delete.
    pub action: &'static str,
    pub uids: Vec<String>,
    pub outcome: String,
}

/// A record as written (without `hash` for hashing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub v: u32,
    pub seq: u64,
    pub time_ms: u64,
    pub actor: Actor,
    pub action: String,
    pub uids: Vec<String>,
    pub outcome: String,
    pub prev: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub body: Body,
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain hash of a record body.
pub fn chain_hash(body: &Body) -> String {
    let mut h = sha2::Sha256::new();
    h.update(body.prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(body).expect("audit body serialises"));
    hex(&h.finalize())
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

struct Head {
    seq: u64,
    hash: String,
    len: u64,
}

struct Inner {
    file: File,
    head: Option<Head>,
}

/// An open audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    dirty: Arc<AtomicBool>,
}

pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.log")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the last complete record of the file: (seq, hash).
fn tail_head(file: &mut File, len: u64) -> std::io::Result<Option<(u64, String)>> {
    if len == 0 {
        return Ok(None);
    }
    // the last complete line, however long: read growing windows from the end
    let mut take = len.min(64 * 1024);
    loop {
        file.seek(SeekFrom::Start(len - take))?;
        let mut buf = vec![0u8; take as usize];
        file.read_exact(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let complete = if take == len {
            &text[..]
        } else {
            // the first line of a window may be cut
            text.split_once('\n').map(|(_, rest)| rest).unwrap_or("")
        };
        if let Some(line) = complete.lines().rev().find(|l| !l.trim().is_empty()) {
            return match serde_json::from_str::<Record>(line) {
                Ok(r) => Ok(Some((r.body.seq, r.hash))),
                Err(e) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the last audit record is unreadable ({e}); run `strata audit verify`"),
                )),
            };
        }
        if take == len {
            return Ok(None);
        }
        take = (take * 4).min(len);
    }
}

/// Cuts a torn last line (a short write) so that the next record starts a line of its
/// own. Called with the file lock held.
fn cut_torn_tail(file: &mut File, len: u64) -> std::io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    let take = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - take))?;
    let mut buf = vec![0u8; take as usize];
    file.read_exact(&mut buf)?;
    let keep = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - take + i as u64 + 1,
        None if take == len => 0,
        None => return Ok(len),
    };
    tracing::warn!(bytes = len - keep, "cutting a torn last audit record");
    file.set_len(keep)?;
    Ok(keep)
}

impl AuditLog {
    /// Opens (creating) the log of an archive, and starts its flusher thread.
    pub fn open(data_dir: &Path) -> Result<AuditLog, AuditError> {
        let path = log_path(data_dir);
        let err = |e: std::io::Error| AuditError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(path.parent().expect("audit dir")).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let log = AuditLog {
            path: path.clone(),
            inner: Arc::new(Mutex::new(Inner { file, head: None })),
            dirty: Arc::new(AtomicBool::new(false)),
        };
        let (inner, dirty) = (Arc::downgrade(&log.inner), log.dirty.clone());
        std::thread::Builder::new()
            .name("audit-flush".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let Some(inner) = inner.upgrade() else { return };
                if dirty.swap(false, Ordering::AcqRel) {
                    let file = inner.lock().expect("audit lock").file.try_clone();
                    if let Ok(f) = file {
                        let _ = f.sync_data();
                    }
                }
            })
            .map_err(err)?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends events as chained records. Blocking (file lock and write).
    pub fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let err = |e: std::io::Error| AuditError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let mut inner = self.inner.lock().expect("audit lock");
        let fd = inner.file.as_raw_fd();
        // SAFETY: flock on an fd we own; released below (and on close).
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let result = (|| {
            let len = inner.file.metadata()?.len();
            let len = cut_torn_tail(&mut inner.file, len)?;
            let (mut seq, mut prev) = match &inner.head {
                Some(h) if h.len == len => (h.seq, h.hash.clone()),
                _ => tail_head(&mut inner.file, len)?.unwrap_or((0, GENESIS.to_string())),
            };
            let mut out = String::new();
            let time_ms = now_ms();
            for e in events {
                seq += 1;
                let body = Body {
                    v: FORMAT_VERSION,
                    seq,
                    time_ms,
                    actor: e.actor.clone(),
                    action: e.action.to_string(),
                    uids: e.uids.clone(),
                    outcome: e.outcome.clone(),
                    prev: prev.clone(),
                };
                let hash = chain_hash(&body);
                out.push_str(&serde_json::to_string(&Record {
                    body,
                    hash: hash.clone(),
                })?);
                out.push('\n');
                prev = hash;
            }
            inner.file.write_all(out.as_bytes())?;
            inner.head = Some(Head {
                seq,
                hash: prev,
                len: len + out.len() as u64,
            });
            Ok::<_, std::io::Error>(())
        })();
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        self.dirty.store(true, Ordering::Release);
        result.map_err(err)
    }

    /// Makes every appended record durable now.
    pub fn sync(&self) -> Result<(), AuditError> {
        let inner = self.inner.lock().expect("audit lock");
        inner.file.sync_data().map_err(|e| AuditError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Appends, logging instead of failing (the access already happened; a failed
    /// audit write is reported loudly).
    pub fn record(&self, events: &[Event]) {
        if let Err(e) = self.append(events) {
            tracing::error!(error = %e, "AUDIT RECORD NOT WRITTEN");
        }
    }

    /// Appends from async code (on the blocking pool).
    pub async fn record_async(&self, events: Vec<Event>) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.record(&events)).await;
    }
}

/// The chain head as anchored in the cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    pub time_ms: u64,
}

/// The current head of a log file (its last record), if any.
pub fn head_of(path: &Path) -> Result<Option<Anchor>, AuditError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuditError::Io {
                path: path.into(),
                detail: e.to_string(),
            })
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(tail_head(&mut file, len)
        .map_err(|e| AuditError::Io {
            path: path.into(),
            detail: e.to_string(),
        })?
        .map(|(seq, hash)| Anchor {
            seq,
            hash,
            time_ms: now_ms(),
        }))
}

/// What `strata audit verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub anchors_checked: usize,
    /// The first record that breaks the chain or an anchor: (line, seq, reason).
    pub first_bad: Option<(u64, u64, String)>,
}

/// Checks the chain of the whole log, then each anchor against it.
pub fn verify(path: &Path, anchors: &[Anchor]) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::Io {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let mut report = VerifyReport::default();
    let mut prev = GENESIS.to_string();
    let mut by_seq = std::collections::HashMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        // records are numbered from 1, one per line
        let expected_seq = line_no;
        let line = line.map_err(|e| AuditError::Io {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let bad = |seq: u64, why: String| Some((line_no, seq, why));
        let record: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                report.first_bad = bad(expected_seq, format!("unreadable record: {e}"));
                return Ok(report);
            }
        };
        let seq = record.body.seq;
        if record.hash != chain_hash(&record.body) {
            report.first_bad = bad(seq, "its content does not match its hash (edited)".into());
            return Ok(report);
        }
        if seq != expected_seq {
            report.first_bad = bad(
                seq,
                format!("sequence {seq} where {expected_seq} was due (removed, inserted or reordered records)"),
            );
            return Ok(report);
        }
        if record.body.prev != prev {
            report.first_bad = bad(
                seq,
                "it does not chain to the record before it (removed, inserted or reordered records)"
                    .into(),
            );
            return Ok(report);
        }
        by_seq.insert(seq, (line_no, record.hash.clone()));
        prev = record.hash;
        report.records += 1;
    }
    for anchor in anchors {
        report.anchors_checked += 1;
        match by_seq.get(&anchor.seq) {
            Some((_, hash)) if *hash == anchor.hash => {}
            Some((line, _)) => {
                report.first_bad = Some((
                    *line,
                    anchor.seq,
                    "differs from the chain head anchored in the cold tier (the log was rewritten)"
                        .into(),
                ));
                return Ok(report);
            }
            None => {
                report.first_bad = Some((
                    report.records + 1,
                    anchor.seq,
                    "is anchored in the cold tier but missing from the log (the log was truncated or rewritten)"
                        .into(),
                ));
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// Every record, for `strata audit log`.
pub fn read_all(path: &Path) -> Result<Vec<Record>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AuditError::Io {
                path: path.into(),
                detail: e.to_string(),
            })
        }
    };
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

/// Copies the log's current chain head to the cold tier as `audit/heads/<seq>.json`.
pub async fn anchor(
    log: &AuditLog,
    cold: &strata_tiers::ColdStore,
    lock_days: u32,
) -> Result<Option<Anchor>, String> {
    log.sync().map_err(|e| e.to_string())?;
    let path = log.path().to_path_buf();
    let head = tokio::task::spawn_blocking(move || head_of(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some(head) = head else { return Ok(None) };
    let name = format!("audit/heads/{:020}.json", head.seq);
    let bytes = bytes::Bytes::from(serde_json::to_vec(&head).expect("anchor serialises"));
    if lock_days > 0 {
        let until = now_ms() as i64 + lock_days as i64 * 86_400_000;
        cold.put_named_locked(&name, bytes, until)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        cold.put_named(&name, bytes)
            .await
            .map_err(|e| e.to_string())?;
    }
    // an anchor is never overwritten: one already there for this record must be ours
    let stored = cold
        .get_named(&name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the anchor {name} cannot be read back"))?;
    let stored: Anchor = serde_json::from_slice(&stored)
        .map_err(|e| format!("the anchor {name} is unreadable: {e}"))?;
    if stored.hash != head.hash {
        return Err(format!(
            "an anchor for record {} is already in the cold tier with hash {}, not this log's {}: \
             this log is not the one anchored there (a node restored without its audit log, or \
             another archive on this prefix); nothing was anchored",
            head.seq, stored.hash, head.hash
        ));
    }
    Ok(Some(head))
}

/// Every anchor in the cold tier.
pub async fn anchors(cold: &strata_tiers::ColdStore) -> Result<Vec<Anchor>, String> {
    let listed = cold
        .get_named_under("audit/heads")
        .await
        .map_err(|e| e.to_string())?;
    listed
        .into_iter()
        .map(|(key, bytes)| {
            serde_json::from_slice(&bytes).map_err(|e| format!("anchor {key} unreadable: {e}"))
        })
        .collect()
}

/// DICOM PS3.15 Annex A.5 audit message codes (DCM, RFC 3881 / IHE ATNA) for an action:
/// (EventID code, its meaning, EventActionCode).
fn atna_event(action: &str) -> (&'static str, &'static str, &'static str) {
    match action {
        "store" => ("110104", "DICOM Instances Transferred", "C"),
        "query" => ("110112", "Query", "E"),
        "retrieve" => ("110104", "DICOM Instances Transferred", "R"),
        "export" | "manifest" => ("110106", "Export", "R"),
        "delete" => ("110105", "DICOM Study Deleted", "D"),
        "begin_transfer" => ("110102", "Begin Transferring DICOM Instances", "R"),
        // a refused connection: an authentication event (PS3.15 A.5.3.11)
        "connect" | "authenticate" => ("110114", "User Authentication", "E"),
        "tier_move" | "verify" | "repair" | "hold" => ("110100", "Application Activity", "E"),
        _ => ("110100", "Application Activity", "E"),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// One record as a DICOM audit message (PS3.15 A.5.1 schema, the IHE ATNA format) that
/// a SIEM or audit repository accepts.
pub fn to_dicom_xml(record: &Record, source_ae: &str) -> String {
    let b = &record.body;
    let (code, meaning, action_code) = atna_event(&b.action);
    let failed = b.outcome.starts_with("failed")
        || b.outcome.starts_with("refused")
        || b.outcome.starts_with("NOT");
    let when = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(b.time_ms),
    );
    let user = if b.actor.kind == "dicom" {
        b.actor.ae_title.clone()
    } else {
        format!("{}:{}", b.actor.kind, b.actor.user)
    };
    let mut xml = format!(
        "<AuditMessage>\
<EventIdentification EventActionCode=\"{action_code}\" EventDateTime=\"{when}\" EventOutcomeIndicator=\"{}\">\
<EventID csd-code=\"{code}\" codeSystemName=\"DCM\" originalText=\"{meaning}\"/>\
<EventOutcomeDescription>{}</EventOutcomeDescription>\
</EventIdentification>\
<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"{}{}/>\
<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\" AlternativeUserID=\"strata\"/>\
<AuditSourceIdentification AuditSourceID=\"{}\"/>",
        if failed { 4 } else { 0 },
        xml_escape(&b.outcome),
        xml_escape(&user),
        // who is behind the AE title or the token: a DICOM TLS peer's certificate
        // subject, a token's client
        if !b.actor.certificate.is_empty() {
            format!(" UserName=\"{}\"", xml_escape(&b.actor.certificate))
        } else if !b.actor.client.is_empty() {
            format!(" AlternativeUserID=\"{}\"", xml_escape(&b.actor.client))
        } else {
            String::new()
        },
        if b.actor.address.is_empty() {
            String::new()
        } else {
            format!(
                " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"",
                xml_escape(b.actor.address.split(':').next().unwrap_or(""))
            )
        },
        xml_escape(source_ae),
        xml_escape(source_ae),
    );
    for uid in &b.uids {
        if uid.contains('=') {
            // a query key: the query itself is the participant object
            xml.push_str(&format!(
                "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"24\">\
<ParticipantObjectIDTypeCode csd-code=\"110112\" codeSystemName=\"DCM\" originalText=\"Query\"/>\
</ParticipantObjectIdentification>",
                xml_escape(uid)
            ));
        } else {
            xml.push_str(&format!(
                "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">\
<ParticipantObjectIDTypeCode csd-code=\"110180\" codeSystemName=\"DCM\" originalText=\"Study Instance UID\"/>\
</ParticipantObjectIdentification>",
                xml_escape(uid)
            ));
        }
    }
    xml.push_str("</AuditMessage>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            actor: Actor::dicom("MODALITY", "127.0.0.1:1"),
            action: "store",
            uids: vec![format!("1.2.{n}")],
            outcome: "ok".into(),
        }
    }

    #[test]
    fn edits_removals_insertions_and_reorders_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&(0..5).map(event).collect::<Vec<_>>()).unwrap();
        log.append(&[event(5)]).unwrap();
        let path = log_path(dir.path());
        assert_eq!(verify(&path, &[]).unwrap().first_bad, None);
        assert_eq!(verify(&path, &[]).unwrap().records, 6);
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let check = |ls: Vec<String>| {
            std::fs::write(&path, ls.join("\n") + "\n").unwrap();
            verify(&path, &[]).unwrap().first_bad.map(|b| b.0)
        };
        let mut edited = lines.clone();
        edited[2] = edited[2].replace("1.2.2", "1.2.9");
        assert_eq!(check(edited), Some(3));
        let mut removed = lines.clone();
        removed.remove(3);
        assert_eq!(check(removed), Some(4));
        let mut inserted = lines.clone();
        inserted.insert(2, lines[1].clone());
        assert_eq!(check(inserted), Some(3));
        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert_eq!(check(reordered), Some(2));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        assert_eq!(verify(&path, &[]).unwrap().first_bad, None);
    }

    #[test]
    fn a_torn_tail_is_cut_and_long_records_chain_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let mut big = event(0);
        big.uids = (0..5000).map(|i| format!("1.2.3.{i}")).collect(); // > 64 KiB
        log.append(&[big]).unwrap();
        let path = log_path(dir.path());
        // another process appends a torn line
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"v\":1,\"seq\":2,\"ti")
            .unwrap();
        let other = AuditLog::open(dir.path()).unwrap();
        other.append(&[event(1)]).unwrap();
        let report = verify(&path, &[]).unwrap();
        assert_eq!((report.records, report.first_bad), (2, None));
    }
}
