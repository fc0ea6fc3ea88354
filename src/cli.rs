//! The command line: clap definitions (their doc comments are `strata --help`), and the
//! dispatch of each command to its module — one module per command group, each calling
//! the application layer ([`strata::archive`]) and printing what it returns.
//!
//! Commands that change the archive go through the running server's admin API when a
//! server holds the archive ([`strata::http::admin::AdminClient`]), and otherwise open
//! the archive exclusively for their duration. Read-only commands open it read-only,
//! beside a running server if there is one.

mod audit;
mod catalog;
mod cluster;
mod export;
mod governance;
mod integrity;
mod patient;
mod print;
mod store;
mod tier;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use strata::archive::integrity::VerifyScope;
use strata::archive::{Archive, Principal};
use strata::config::Config;
use strata::storage::Storage;

/// Strata: an open vendor-neutral archive for medical images.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults apply.
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the whole log and the chain heads anchored in the cold
    /// tier; names the first bad record. Exit 1 when anything is wrong, 3 when the chain
    /// holds but no anchor vouches for it.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Print records, oldest first.
    Log {
        /// Only records newer than this (e.g. "2h", "7days").
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only records naming this UID.
        #[arg(long)]
        study: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy the current chain head to the cold tier now.
    Anchor {
        #[arg(long)]
        json: bool,
    },
    /// Write the records for a SIEM: `--format dicom` gives one DICOM PS3.15 audit
    /// message (IHE ATNA XML) per line.
    Export {
        #[arg(long, value_parser = ["dicom", "json"])]
        format: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node that ran on this index: alive (heard from within three heartbeats) or
    /// not, when last heard from, its version, its hot disk; exit 1 when one is down.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PatientCommand {
    /// A patient as the archive knows it now: its current ID and demographics, the
    /// stored IDs shown as it, its studies.
    Show {
        patient_id: String,
        /// The patient's IssuerOfPatientID (0010,0021), when its PatientID alone is
        /// shared by patients of several issuers; default: unknown.
        #[arg(long, default_value = "")]
        issuer: String,
        #[arg(long)]
        json: bool,
    },
    /// Every identity change (HL7 A08/A31/A40/A47, merges) that concerned an ID.
    History {
        patient_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Merge the patient PRIOR into SURVIVOR (the effect of ADT^A40): PRIOR's studies
    /// are SURVIVOR's from now on; nothing stored changes. Audited.
    Merge {
        prior: String,
        #[arg(long)]
        into: String,
        /// The survivor's name (PN, FAMILY^GIVEN); default: as the archive shows it.
        #[arg(long)]
        name: Option<String>,
        /// The survivor's birth date (YYYYMMDD); default: as the archive shows it.
        #[arg(long)]
        birth_date: Option<String>,
        /// The survivor's sex (M, F, O); default: as the archive shows it.
        #[arg(long)]
        sex: Option<String>,
        /// The survivor's IssuerOfPatientID.
        #[arg(long)]
        issuer: Option<String>,
        /// PRIOR's IssuerOfPatientID, when PRIOR alone is shared by patients of several
        /// issuers.
        #[arg(long)]
        prior_issuer: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TierCommand {
    /// Studies, objects and bytes per tier; queue lengths; the oldest item waiting; the
    /// cold tier's preflight. Exit 1 when the cold tier is not usable.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run one policy pass now (age, watermarks, archive class, orphan uploads). Exit 1
    /// when a study could not be moved.
    Run {
        #[arg(long)]
        json: bool,
    },
    /// Force one study to a tier now.
    Move {
        study_uid: String,
        #[arg(long, value_parser = ["cold", "hot", "archive"])]
        to: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the archive: the DICOM service (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET,
    /// storage commitment), the HTTP endpoint (/metrics, /healthz, the admin API) and
    /// the background tiering, scrubbing and audit anchoring.
    Serve,
    /// Store Part-10 files and folders (recursively) into the archive (server stopped).
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List studies, or the series and instances of one study.
    Ls {
        study_uid: Option<String>,
        /// The instances IOCM rejection notes hid (why, by which note, by whom, when).
        #[arg(long, conflicts_with = "study_uid")]
        rejected: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a study, series or instance: its objects' ids, sizes and locations.
    Show {
        uid: String,
        #[arg(long)]
        json: bool,
    },
    /// Write studies as Part-10 files to DIR/<study>/<series>/<sop>.dcm.
    Export {
        study_uids: Vec<String>,
        /// Export every study.
        #[arg(long, conflicts_with = "study_uids")]
        all: bool,
        #[arg(long)]
        out: PathBuf,
        /// The objects as stored, each file's bytes hashing to its object id (the
        /// default).
        #[arg(long, conflicts_with = "current")]
        as_stored: bool,
        /// Files of patients the hospital has since merged, renamed or corrected carry
        /// the current identity (their patient module re-encoded; docs/patients.md).
        #[arg(long)]
        current: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write studies as a BagIt bag for auditors: the export under DIR/data plus sha256
    /// and blake3 manifests, a tag manifest and a summary.
    Manifest {
        study_uids: Vec<String>,
        /// Every study.
        #[arg(long, conflicts_with = "study_uids")]
        all: bool,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object and check index and objects against each other.
    Verify {
        #[arg(long)]
        json: bool,
        /// Which tiers to check: hot files, cold packs, or both.
        #[arg(long, value_enum, default_value = "all")]
        tier: VerifyScope,
        /// Restore corrupt or missing copies from other verified copies (through the
        /// running server, or directly when none runs); says what it did, and what it
        /// could not do.
        #[arg(long)]
        repair: bool,
    },
    /// Delete a study from every tier: audited, tombstoned, refused under a legal hold
    /// (through the running server, or directly when none runs).
    Delete {
        study_uid: String,
        /// Why: kept in the tombstone and the audit log.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Place a legal hold on a study for a matter (or with --release lift one), through
    /// the running server, or directly when none runs. A study may be under several
    /// holds, one per matter; it cannot be deleted while any stands.
    Hold {
        study_uid: String,
        /// Placing: the matter (it names the hold). Releasing: why it is lifted. Kept in
        /// the governance and audit logs.
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        release: bool,
        /// With --release: the matter (reason) of the hold to lift, needed when several
        /// stand.
        #[arg(long = "hold", requires = "release")]
        matter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the [retention] rule: delete the studies it selects, except those under a
    /// legal hold (through the running server, or directly when none runs).
    Retention {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Studies under a legal hold: who placed it, when, why.
    Holds {
        #[arg(long)]
        json: bool,
    },
    /// Deleted studies: what, who, why, when.
    Tombstones {
        #[arg(long)]
        json: bool,
    },
    /// The hash-chained audit log: verify it, read it, anchor its head.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tiering: where studies are, and moving them between hot and cold.
    Tier {
        #[command(subcommand)]
        command: TierCommand,
    },
    /// Patients: as the archive knows them now, their identity changes, merges.
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
    },
    /// The nodes sharing this archive's index: which are alive, their hot disks.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Rebuild the index from the stored objects alone (server stopped). The current
    /// index is kept when the rebuilt one would lack objects it records in cold (a pack
    /// not listed yet or unreadable), unless --force.
    Reindex {
        /// Swap the rebuilt index in even then (what it lacks is forgotten).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration, with every default.
    Config,
}

pub fn init_logging(serving: bool) {
    let default = if serving {
        "info,dicom_ul=warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a command; its exit code (0 fine, 1 problems found).
pub fn run(cli: Cli) -> Result<i32> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(0)
        }
        Command::Serve => serve(config),
        Command::Import { paths, json } => store::import(&config, &paths, json),
        Command::Ls {
            rejected: true,
            json,
            ..
        } => catalog::rejected(&config, json),
        Command::Ls {
            study_uid, json, ..
        } => catalog::ls(&config, study_uid, json),
        Command::Show { uid, json } => catalog::show(&config, &uid, json),
        Command::Tombstones { json } => catalog::tombstones(&config, json),
        Command::Holds { json } => catalog::holds(&config, json),
        Command::Export {
            study_uids,
            all,
            out,
            as_stored: _,
            current,
            json,
        } => {
            use strata::archive::export::ExportIdentity;
            let identity = match current {
                true => ExportIdentity::Current,
                false => ExportIdentity::AsStored,
            };
            export::export(&config, study_uids, all, &out, identity, json)
        }
        Command::Manifest {
            study_uids,
            all,
            out,
            json,
        } => export::manifest(&config, study_uids, all, &out, json),
        Command::Verify {
            json, repair: true, ..
        } => integrity::repair(&config, json),
        Command::Verify { json, tier, .. } => integrity::verify(&config, json, tier),
        Command::Reindex { force, json } => integrity::reindex(&config, force, json),
        Command::Delete {
            study_uid,
            reason,
            json,
        } => governance::delete(&config, &study_uid, &reason, json),
        Command::Hold {
            study_uid,
            reason,
            release,
            matter,
            json,
        } => governance::hold(
            &config,
            &study_uid,
            &reason,
            release,
            matter.as_deref(),
            json,
        ),
        Command::Retention { dry_run, json } => governance::retention(&config, dry_run, json),
        Command::Tier { command } => tier::tier(&config, command),
        Command::Cluster {
            command: ClusterCommand::Status { json },
        } => cluster::status(&config, json),
        Command::Audit { command } => audit::audit(&config, command),
        Command::Patient { command } => match command {
            PatientCommand::Show {
                patient_id,
                issuer,
                json,
            } => patient::show(&config, &patient_id, &issuer, json),
            PatientCommand::History { patient_id, json } => {
                patient::history(&config, &patient_id, json)
            }
            PatientCommand::Merge {
                prior,
                into,
                name,
                birth_date,
                sex,
                issuer,
                prior_issuer,
                json,
            } => patient::merge(
                &config,
                &strata::archive::patients::MergeRequest {
                    prior,
                    survivor: into,
                    patient_name: name,
                    patient_birth_date: birth_date,
                    patient_sex: sex,
                    issuer,
                    prior_issuer,
                },
                json,
            ),
        },
    }
}

/// A runtime for the command line's calls into the archive (the cold tier, the admin
/// API): two workers, a bounded blocking pool.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("start a runtime")
}

/// Runs blocking archive work on `rt`'s blocking pool (where the use cases that read
/// the cold tier find the runtime's handle).
pub fn on_pool<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl FnOnce() -> Result<T, strata::archive::Error> + Send + 'static,
) -> Result<T> {
    Ok(rt.block_on(rt.spawn_blocking(f))??)
}

/// Whether `strata serve` holds the archive (changes then go through its admin API; any
/// other writer, such as an import, makes them fail with who holds the archive).
pub fn server_running(config: &Config) -> bool {
    strata::storage::writer_purpose(&config.archive.data_dir).as_deref() == Some("serve")
}

/// The admin API of the server holding the archive, acting for this process's user.
/// The admin API client: over plain HTTP on loopback — `[http] port`, or with HTTPS
/// there, `[http] loopback_port` (which must then be set).
pub fn admin_client(config: &Config) -> Result<strata::http::admin::AdminClient> {
    let port = match (config.http.tls, config.http.loopback_port) {
        (false, _) => config.http.port,
        (true, 0) => anyhow::bail!(
            "the server serves HTTPS ([http] tls = true): set [http] loopback_port so that \
             CLI commands reach its admin API over loopback"
        ),
        (true, port) => port,
    };
    Ok(
        strata::http::admin::AdminClient::new(port, &Principal::cli_user().name())?
            .with_token(admin_token()?),
    )
}

/// The bearer token for the admin API of a server with `[auth] issuer`: `STRATA_TOKEN`,
/// else the file `STRATA_TOKEN_FILE` names (refused when anyone may read it).
fn admin_token() -> Result<Option<String>> {
    if let Ok(token) = std::env::var("STRATA_TOKEN") {
        return Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()));
    }
    let Ok(path) = std::env::var("STRATA_TOKEN_FILE") else {
        return Ok(None);
    };
    let path = std::path::Path::new(&path);
    strata::tls::check_secret_file(path)?;
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading STRATA_TOKEN_FILE {}", path.display()))?;
    Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Opens the archive exclusively (no server runs), runs `f` with a runtime, then shuts
/// ingest down and closes the archive (a clean stop unless a store failed).
pub fn with_exclusive<T>(
    config: &Config,
    purpose: &str,
    f: impl FnOnce(&tokio::runtime::Runtime, &Archive) -> Result<T>,
) -> Result<T> {
    let (storage, recovery) = Storage::open_exclusive(config, purpose)?;
    report_recovery(&recovery);
    let archive = Archive::exclusive(config, &storage)?;
    let rt = runtime()?;
    let result = f(&rt, &archive);
    drop(rt);
    let clean = archive.shutdown_blocking();
    storage.close(clean)?;
    result
}

pub fn report_recovery(r: &strata::storage::RecoveryReport) {
    if r.tmp_swept > 0 || r.adopted > 0 || !r.quarantined.is_empty() {
        tracing::warn!(
            tmp_swept = r.tmp_swept,
            adopted = r.adopted,
            quarantined = r.quarantined.len(),
            "start-up recovery after an unclean stop"
        );
    }
}

/// The studies a command names, or every study with `--all`.
pub fn selected_studies(
    archive: &Archive,
    study_uids: Vec<String>,
    all: bool,
) -> Result<Vec<String>> {
    if all {
        Ok(archive.study_uids_blocking()?)
    } else if study_uids.is_empty() {
        anyhow::bail!("name at least one study UID, or --all");
    } else {
        Ok(study_uids)
    }
}

fn serve(config: Config) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // unusable TLS files stop the server before it opens anything
    if config.http.tls {
        strata::tls::server_config(&config.tls, "[http] tls", &[b"http/1.1"])
            .context("cannot serve HTTPS")?;
    }
    if config.dicom.tls_port != 0 {
        strata::tls::server_config(&config.tls, "[dicom] tls_port", &[])
            .context("cannot serve DICOM TLS")?;
    }
    if config.hl7.port != 0 && config.hl7.tls {
        strata::tls::server_config(&config.tls, "[hl7] tls", &[])
            .context("cannot serve HL7 over TLS")?;
    }
    runtime.block_on(async move {
        let c = config.clone();
        let (storage, recovery) =
            tokio::task::spawn_blocking(move || Storage::open_exclusive(&c, "serve")).await??;
        report_recovery(&recovery);
        let bind = |ip: std::net::IpAddr, port: u16, what: &'static str| async move {
            tokio::net::TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("listen for {what} on {ip}:{port}"))
        };
        let optional = |ip, port, what| async move {
            match port {
                0 => Ok(None),
                port => bind(ip, port, what).await.map(Some),
            }
        };
        let listeners = strata::server::Listeners {
            dicom: optional(config.dicom.bind, config.dicom.port, "DICOM").await?,
            dicom_tls: optional(config.dicom.bind, config.dicom.tls_port, "DICOM TLS").await?,
            http: bind(config.http.bind, config.http.port, "HTTP").await?,
            http_loopback: optional(
                std::net::Ipv4Addr::LOCALHOST.into(),
                config.http.loopback_port,
                "plain HTTP",
            )
            .await?,
            hl7: optional(config.hl7.bind, config.hl7.port, "HL7 (MLLP)").await?,
        };
        strata::server::run(config, storage, listeners, shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(0)
    })
}

/// SIGTERM or Ctrl-C stop the server. SIGHUP, which would otherwise end the process
/// (a closed terminal, a habitual "reload"), only says that the configuration is read at
/// start: nothing can be reloaded in place yet.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return tracing::info!("interrupt received"),
            _ = term.recv() => return tracing::info!("SIGTERM received"),
            _ = hup.recv() => tracing::warn!(
                "SIGHUP received and ignored: the configuration is read at start only; restart to apply a change"
            ),
        }
    }
}
