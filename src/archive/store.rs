//! Store: one instance in, durable, indexed and audited before the caller may
//! acknowledge it (DESIGN promises 1–3 and 8).
//!
//! Two entry points reach the same ingest pipeline ([`crate::ingest`]):
//! - [`Archive::begin_store`] for a data set arriving in chunks (C-STORE today): a
//!   [`StoreStream`] takes each chunk as it comes and [`StoreStream::finish`] resolves once
//!   the group committer has made the object durable, indexed it and written its audit
//!   record;
//! - [`Archive::store_part10_blocking`] for a Part-10 byte stream (`strata import` today,
//!   STOW-RS next), re-framed with the archive's deterministic meta group.
//!
//! The audit record of a store is written by the group committer, in the same group as
//! the index batch, attributed to the [`Principal`] given here.

use super::principal::{Caller, Role};
use super::{blocking, Archive, Error, Principal};
use crate::index::{CommitOutcome, Provenance};
use crate::ingest::{ObjectWriter, Stored};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// An instance being received in chunks; see [`Archive::begin_store`].
pub struct StoreStream {
    archive: Archive,
    principal: Principal,
    sop_class_uid: String,
    sop_instance_uid: String,
    writer: ObjectWriter,
}

/// The provenance of an object stored by `principal` (kept in the index, not in the
/// object's bytes).
fn provenance(principal: &Principal, source: &str, node: String) -> Provenance {
    let (calling_ae, source) = match &principal.caller {
        Caller::Dicom {
            ae_title, address, ..
        } => (ae_title.clone(), address.clone()),
        Caller::Cli { .. } => ("import".to_string(), source.to_string()),
        Caller::System { worker } => (worker.clone(), source.to_string()),
        Caller::Hl7 {
            application,
            address,
        } => (application.clone(), address.clone()),
        Caller::Web {
            address, service, ..
        } => (service.clone(), address.clone()),
    };
    Provenance {
        received_at_ms: crate::index::rocks::unix_ms_now(),
        calling_ae,
        source,
        node,
    }
}

impl Archive {
    /// Begins storing one instance whose data set (in `transfer_syntax_uid`) will arrive
    /// in chunks. Refuses at once, before any byte is written, when the hot disk is
    /// below its free-space floor ([`crate::ingest::IngestError::OutOfSpace`]).
    pub async fn begin_store(
        &self,
        principal: &Principal,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax_uid: &str,
    ) -> Result<StoreStream, Error> {
        self.authorize(
            principal,
            Role::Uploader,
            "store",
            &[sop_instance_uid.to_string()],
        )?;
        let ingest = self.ingest()?.clone();
        let (hot, keep) = (ingest.hot().clone(), ingest.keep());
        // the tmp object is made here, off the async threads, so that an object kept in
        // memory is then received without another hop (ObjectWriter::write)
        let tmp = blocking(move || {
            if keep > 0 {
                Ok(Some(hot.create_direct_tmp_blocking(keep)?))
            } else {
                hot.check_free_space_blocking()?;
                Ok(None)
            }
        })
        .await?;
        Ok(StoreStream {
            archive: self.clone(),
            principal: principal.clone(),
            sop_class_uid: sop_class_uid.to_string(),
            sop_instance_uid: sop_instance_uid.to_string(),
            writer: ingest.writer(sop_class_uid, sop_instance_uid, transfer_syntax_uid, tmp),
        })
    }

    /// Stores a Part-10 byte stream read from `reader` (`source` names it in the
    /// provenance: a path, a request). Blocks until the object is durable, indexed and
    /// audited. With `expect_study`, an instance of another study is refused
    /// ([`crate::ingest::IngestError::DatasetMismatch`]) before anything is stored.
    pub fn store_part10_blocking(
        &self,
        principal: &Principal,
        reader: &mut dyn Read,
        source: &str,
        expect_study: Option<&str>,
    ) -> Result<Stored, Error> {
        self.authorize(principal, Role::Uploader, "store", &[])?;
        let mut actor = principal.actor();
        if let Caller::Cli { via: None, .. } = &principal.caller {
            // an import: the audit record names the file (audit format 1)
            actor.address = source.to_string();
        }
        let stored = self.ingest()?.store_part10_blocking(
            reader,
            expect_study,
            provenance(principal, source, self.node_id()),
            actor,
        )?;
        self.after_store_blocking(principal, &stored)?;
        let this = self.clone();
        let replicate = async move { this.replicate_before_ack(&stored).await.map(|()| stored) };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.block_on(replicate),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Internal(format!("a runtime for the replica: {e}")))?
                .block_on(replicate),
        }
    }

    /// With `[cluster] ack_after = "replicated"`: the stored object's replica in the
    /// cold tier is written, read back and recorded before this returns
    /// ([`crate::tiering::replicate`]); otherwise an error, and the store must not be
    /// acknowledged (the object stays stored and queued, and a resend finds it stored and
    /// replicates it). With `local`: nothing (the background replicator does it).
    pub(crate) async fn replicate_before_ack(&self, stored: &Stored) -> Result<(), Error> {
        if self.config.cluster.ack_after != crate::config::AckAfter::Replicated {
            return Ok(());
        }
        let id = match stored.outcome {
            CommitOutcome::SameDataSet { as_id } => as_id,
            _ => stored.id,
        };
        self.tiering.replicate(&[id]).await?;
        let (index, oid) = (self.index.clone(), id);
        let replicated = blocking(move || {
            Ok(index
                .object(&oid)?
                .is_some_and(|r| r.replica || !r.cold.is_empty()))
        })
        .await?;
        if replicated {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "object {id} has no second copy yet ([cluster] ack_after = \"replicated\"): not acknowledged"
            )))
        }
    }

    /// What a new object sets going once durable: an IOCM rejection note is applied
    /// ([`super::rejection`]) before the store is acknowledged. Blocking.
    fn after_store_blocking(&self, principal: &Principal, stored: &Stored) -> Result<(), Error> {
        // a note stored again (a resend after a failure between its store and its
        // rejection) is applied again; applying is idempotent
        if matches!(
            stored.outcome,
            CommitOutcome::Stored | CommitOutcome::NewVersion | CommitOutcome::AlreadyPresent
        ) {
            self.apply_if_rejection_note_blocking(
                principal,
                &stored.id,
                &stored.attrs.sop_class_uid,
                &stored.attrs.sop_instance_uid,
            )?;
        }
        Ok(())
    }

    /// Imports files (as [`Archive::store_part10_blocking`]) with `workers` threads;
    /// `progress` is called once per file.
    pub fn import_blocking(
        &self,
        principal: &Principal,
        files: &[PathBuf],
        workers: usize,
        progress: &(dyn Fn() + Sync),
    ) -> ImportReport {
        let report = Mutex::new(ImportReport {
            files: files.len(),
            ..Default::default()
        });
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..workers.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = files.get(i) else { break };
                    // a DICOMDIR describes the media (PS3.10 §8.6): not an instance
                    if is_dicomdir(path) {
                        progress();
                        report
                            .lock()
                            .expect("import report lock")
                            .skipped
                            .push(Skipped {
                                path: path.display().to_string(),
                                reason: "a DICOMDIR (Media Storage Directory, PS3.10 8.6): it \
                                     indexes the media's files, which are imported themselves"
                                    .into(),
                            });
                        continue;
                    }
                    let result = std::fs::File::open(path)
                        .map_err(|e| {
                            Error::Ingest(crate::ingest::IngestError::Unparseable(format!(
                                "cannot open: {e}"
                            )))
                        })
                        .and_then(|mut f| {
                            self.store_part10_blocking(
                                principal,
                                &mut f,
                                &path.display().to_string(),
                                None,
                            )
                        });
                    progress();
                    let mut r = report.lock().expect("import report lock");
                    match result {
                        Ok(stored) => match stored.outcome {
                            CommitOutcome::Stored => r.stored += 1,
                            CommitOutcome::NewVersion => r.new_versions.push(NewVersion {
                                path: path.display().to_string(),
                                sop_instance_uid: stored.attrs.sop_instance_uid,
                                id: stored.id.to_hex(),
                            }),
                            CommitOutcome::AlreadyPresent => r.already_present += 1,
                            CommitOutcome::SameDataSet { as_id } => {
                                r.same_data_set.push(SameDataSet {
                                    path: path.display().to_string(),
                                    sop_instance_uid: stored.attrs.sop_instance_uid,
                                    stored_as: as_id.to_hex(),
                                })
                            }
                        },
                        Err(e) => r.rejected.push(Rejected {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        }),
                    }
                });
            }
        });
        report.into_inner().expect("import report lock")
    }
}

impl StoreStream {
    /// Takes the next chunk of the data set (kept as received; written to the tmp file
    /// on the blocking pool once enough is waiting).
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), Error> {
        Ok(self.writer.write(chunk).await?)
    }

    /// Ends the data set: checks it against the announced SOP class and instance, makes
    /// it durable, indexes and audits it. Only after `Ok` may the caller acknowledge.
    pub async fn finish(self) -> Result<Stored, Error> {
        let ingest = self.archive.ingest()?.clone();
        let source = match &self.principal.caller {
            Caller::Dicom { address, .. } => address.clone(),
            _ => String::new(),
        };
        let stored = self
            .writer
            .finish_and_commit(
                &ingest,
                self.sop_class_uid,
                self.sop_instance_uid,
                provenance(&self.principal, &source, self.archive.node_id()),
                self.principal.actor(),
            )
            .await?;
        if stored.attrs.sop_class_uid == super::rejection::KEY_OBJECT_SELECTION {
            let (archive, principal, done) =
                (self.archive.clone(), self.principal.clone(), stored.clone());
            blocking(move || archive.after_store_blocking(&principal, &done)).await?;
        }
        self.archive.replicate_before_ack(&stored).await?;
        Ok(stored)
    }
}

/// What `import` did with a set of files.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub files: usize,
    /// New instances.
    pub stored: usize,
    /// Files holding a stored SOP Instance UID with a different data set: kept as a new
    /// version, which is now the one served (see `docs/formats.md`, "Versions").
    pub new_versions: Vec<NewVersion>,
    /// Files whose bytes were stored already.
    pub already_present: usize,
    /// Files holding a stored instance in another encoding (same data-set hash): not
    /// kept, nothing changed.
    pub same_data_set: Vec<SameDataSet>,
    /// Files that are not instances and are not stored, with why (a DICOMDIR).
    pub skipped: Vec<Skipped>,
    pub rejected: Vec<Rejected>,
}

/// A file `import` leaves out on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Media Storage Directory Storage (PS3.4 Annex B, PS3.10 §8.6).
const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// Whether a file is a DICOMDIR: a Part-10 file of the Media Storage Directory class.
fn is_dicomdir(path: &Path) -> bool {
    let mut head = vec![0u8; 16 * 1024];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut filled = 0;
    while filled < head.len() {
        match std::io::Read::read(&mut file, &mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    crate::dicom::part10::read_foreign_meta(&head[..filled])
        .is_ok_and(|meta| meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY)
}

/// A file stored as a new version of an instance.
#[derive(Debug, Clone, Serialize)]
pub struct NewVersion {
    pub path: String,
    pub sop_instance_uid: String,
    /// The new version's object id.
    pub id: String,
}

/// A file whose data set was stored already under other bytes.
#[derive(Debug, Clone, Serialize)]
pub struct SameDataSet {
    pub path: String,
    pub sop_instance_uid: String,
    /// The stored object holding the same data set.
    pub stored_as: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// Every regular file under `paths` (files as given, folders recursively), sorted.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(Error::InvalidRequest(format!(
                "{} does not exist",
                p.display()
            )));
        }
        for entry in walkdir::WalkDir::new(p).follow_links(true) {
            let entry = entry.map_err(|e| Error::Io {
                action: "walk",
                path: p.clone(),
                source: e.into(),
            })?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    Ok(files)
}
