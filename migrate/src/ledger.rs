//! The migration ledger: a durable, versioned, append-only journal in the state
//! directory (`ledger.jsonl`).
//!
//! Line 1 is the header (format name, version, the source and our calling AE). Every
//! further line is the full current record of one study; the last line for a study wins.
//! Each append is fsynced before the change is acted on, so a `kill -9` or a reboot at
//! any moment leaves the ledger at the last recorded step (a torn last line is ignored).
//! On open the journal is compacted (one line per study, written to a temporary file,
//! fsynced, renamed) when it has grown to more than twice that.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use strata::dimse::scu::RemoteAe;

pub const FORMAT: &str = "strata-migrate-ledger";
pub const VERSION: u32 = 1;
const FILE: &str = "ledger.jsonl";
const INVENTORY_MARKER: &str = "inventory-complete";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub source: RemoteAe,
    pub calling_ae: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Planned,
    Moving,
    Moved,
    Verified,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Planned => "planned",
            State::Moving => "moving",
            State::Moved => "moved",
            State::Verified => "verified",
            State::Failed => "failed",
        }
    }
}

/// Everything known about one study of the source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Study {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub modalities: String,
    /// NumberOfStudyRelatedInstances as the source answered at planning.
    pub planned_instances: Option<u32>,
    pub state: State,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Sub-operations the source reported for the last move.
    pub moved_completed: u32,
    pub moved_failed: u32,
    pub moved_warning: u32,
    /// SOP Instance UIDs the source lists for the study (at verification).
    pub source_sops: Vec<String>,
    /// How many of those the archive lists, and which are missing.
    pub archive_count: u32,
    pub missing: Vec<String>,
    /// Instances the archive holds for the study that the source does not list.
    pub extra: Vec<String>,
    pub updated_ms: u64,
    /// Whether the source listed the study's instances at verification (`source_sops`
    /// then says what the source holds; otherwise nothing is known of it).
    #[serde(default)]
    pub source_listed: bool,
    /// NumberOfStudyRelatedInstances as the source answered at verification, if it did.
    #[serde(default)]
    pub source_count: Option<u32>,
    /// The Study Instance UID exactly as the source answered it, when that differs from
    /// `study_uid` (a trailing space the source stores and matches byte-exactly):
    /// requests to the source use it; the archive knows the study by `study_uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_uid: Option<String>,
    /// Other PatientIDs the source answered this Study Instance UID with at planning (a
    /// study has one patient, PS3.3 C.7.1/C.7.2; a source that keeps one UID under
    /// several patients disagrees with itself, and the report says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_patient_ids: Vec<String>,
}

impl Study {
    pub fn planned(study_uid: String) -> Self {
        Study {
            study_uid,
            patient_id: String::new(),
            patient_name: String::new(),
            study_date: String::new(),
            modalities: String::new(),
            planned_instances: None,
            state: State::Planned,
            attempts: 0,
            last_error: None,
            moved_completed: 0,
            moved_failed: 0,
            moved_warning: 0,
            source_sops: Vec::new(),
            archive_count: 0,
            missing: Vec::new(),
            extra: Vec::new(),
            updated_ms: 0,
            source_listed: false,
            source_count: None,
            source_uid: None,
            other_patient_ids: Vec::new(),
        }
    }

    /// The Study Instance UID to send to the source (see `source_uid`).
    pub fn uid_at_source(&self) -> &str {
        self.source_uid.as_deref().unwrap_or(&self.study_uid)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header(Header),
    Study(Box<Study>),
}

pub struct Ledger {
    dir: PathBuf,
    file: File,
    pub header: Header,
    pub studies: BTreeMap<String, Study>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ledger {
    /// Records that an inventory (`plan`) of the source ran to its end (a marker file
    /// beside the journal, fsynced).
    pub fn mark_inventory_complete(&self) -> Result<()> {
        let path = self.dir.join(INVENTORY_MARKER);
        File::create(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("create {}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", self.dir.display()))
    }

    /// Whether an inventory of the source ever ran to its end: until it has, no study
    /// list is known to be the whole source.
    pub fn inventory_complete(&self) -> bool {
        self.dir.join(INVENTORY_MARKER).exists()
    }

    /// Creates the ledger for `header`, or opens the existing one (whose source must
    /// match).
    pub fn create_or_open(dir: &Path, header: Header) -> Result<Ledger> {
        if dir.join(FILE).exists() {
            let ledger = Self::open(dir)?;
            if ledger.header.source != header.source {
                bail!(
                    "the state directory {} belongs to a migration from {}, not {}",
                    dir.display(),
                    ledger.header.source,
                    header.source
                );
            }
            return Ok(ledger);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ledger = Self::write_compacted(dir, &header, &BTreeMap::new())?;
        Ok(ledger)
    }

    /// Opens an existing ledger.
    pub fn open(dir: &Path) -> Result<Ledger> {
        let path = dir.join(FILE);
        let file = File::open(&path).with_context(|| {
            format!(
                "no migration ledger in {} (run `strata-migrate --state {} plan` first)",
                dir.display(),
                dir.display()
            )
        })?;
        // Cut a torn last line (a crash mid-append) so that the next append starts on a
        // line of its own.
        let len = file.metadata()?.len();
        let bytes = std::fs::read(&path)?;
        if len > 0 && bytes.last() != Some(&b'\n') {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!("ignoring an incomplete last ledger line");
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(keep as u64)?;
        }
        let file = File::open(&path)?;
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .context("empty ledger")?
            .context("read the ledger")?;
        let header: Header = serde_json::from_str(&first).context("ledger header")?;
        if header.format != FORMAT {
            bail!("{} is not a strata-migrate ledger", path.display());
        }
        if header.version != VERSION {
            bail!(
                "ledger version {} is not supported (this build reads {VERSION})",
                header.version
            );
        }
        let mut studies = BTreeMap::new();
        let mut count = 0usize;
        for line in lines {
            let line = line.context("read the ledger")?;
            count += 1;
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Study(s)) => {
                    studies.insert(s.study_uid.clone(), *s);
                }
                Ok(Line::Header(_)) => bail!("ledger has a second header"),
                // a torn last line from a crash mid-append
                Err(_) => tracing::warn!("ignoring an incomplete ledger line"),
            }
        }
        if count > 2 * studies.len().max(16) {
            return Self::write_compacted(dir, &header, &studies);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Ledger {
            dir: dir.to_path_buf(),
            file,
            header,
            studies,
        })
    }

    fn write_compacted(
        dir: &Path,
        header: &Header,
        studies: &BTreeMap<String, Study>,
    ) -> Result<Ledger> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        {
            let mut out =
                File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            writeln!(out, "{}", serde_json::to_string(header)?)?;
            for s in studies.values() {
                writeln!(out, "{}", serde_json::to_string(s)?)?;
            }
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Ledger {
            dir: dir.to_path_buf(),
            file,
            header: header.clone(),
            studies: studies.clone(),
        })
    }

    /// Replaces the header (the source's address or our calling AE title, corrected by
    /// `run`): the journal is rewritten compacted under the new header (tmp, fsync,
    /// rename), every study kept.
    pub fn set_header(self, header: Header) -> Result<Ledger> {
        Self::write_compacted(&self.dir, &header, &self.studies)
    }

    /// Records a study's new state durably (appended and fsynced).
    pub fn put(&mut self, mut study: Study) -> Result<()> {
        study.updated_ms = now_ms();
        let mut line = serde_json::to_string(&study)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("append to the ledger in {}", self.dir.display()))?;
        self.studies.insert(study.study_uid.clone(), study);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            source: "OLD@127.0.0.1:104".parse().unwrap(),
            calling_ae: "MIGRATE".into(),
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::create_or_open(dir.path(), header()).unwrap();
        let mut s = Study::planned("1.2.3".into());
        ledger.put(s.clone()).unwrap();
        s.state = State::Verified;
        ledger.put(s.clone()).unwrap();
        drop(ledger);
        // a crash in the middle of an append
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"study_uid\":\"1.2.4\",\"pat").unwrap();
        drop(f);
        let mut ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.studies.len(), 1);
        assert_eq!(ledger.studies["1.2.3"].state, State::Verified);
        ledger.put(Study::planned("1.2.5".into())).unwrap();
        drop(ledger);
        assert_eq!(Ledger::open(dir.path()).unwrap().studies.len(), 2);
        // another source is refused
        let mut other = header();
        other.source = "OTHER@127.0.0.1:104".parse().unwrap();
        assert!(Ledger::create_or_open(dir.path(), other).is_err());
    }
}
