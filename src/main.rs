//! The `strata` command: thin glue from the command line to the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use strata::archive::{Archive, ReadOnlyArchive};
use strata::config::Config;
use strata::ops;

/// Strata: an open vendor-neutral archive for medical images.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults apply.
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole log and the chain heads anchored in the cold
    /// tier; names the first bad record. Exit 1 when anything is wrong.
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
    Anchor,
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
enum TierCommand {
    /// Studies, objects and bytes per tier; queue lengths; the oldest item waiting.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run one policy pass now (age, watermarks, archive class, orphan uploads).
    Run,
    /// Force one study to a tier now.
    Move {
        study_uid: String,
        #[arg(long, value_parser = ["cold", "hot", "archive"])]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the DICOM service (C-ECHO, C-STORE) and the HTTP endpoint.
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
    },
    /// Re-hash every object and check index and objects against each other.
    Verify {
        #[arg(long)]
        json: bool,
        /// Which tiers to check: hot files, cold packs, or both.
        #[arg(long, value_enum, default_value = "all")]
        tier: ops::VerifyScope,
        /// Restore corrupt or missing copies from other verified copies (server
        /// stopped); says what it did, and what it could not do.
        #[arg(long)]
        repair: bool,
    },
    /// Delete a study from every tier (server stopped): audited, tombstoned, refused
    /// under a legal hold.
    Delete {
        study_uid: String,
        /// Why: kept in the tombstone and the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Place (or with --release lift) a legal hold on a study (server stopped).
    Hold {
        study_uid: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        release: bool,
    },
    /// Apply the [retention] rule (server stopped): delete the studies it selects,
    /// except those under a legal hold.
    Retention {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
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
    /// Rebuild the index from the stored objects alone (server stopped).
    Reindex,
    /// Print the effective configuration, with every default.
    Config,
}

fn main() {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve));
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn init_logging(serving: bool) {
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

fn workers(config: &Config) -> usize {
    match config.ingest.import_workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    }
}

fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(0)
        }
        Command::Serve => serve(config),
        Command::Import { paths, json } => {
            let files = ops::collect_files(&paths)?;
            let (archive, recovery) = Archive::open_exclusive(&config, "import")?;
            report_recovery(&recovery);
            let ingest = strata::ingest::Ingest::start(
                archive.hot.clone(),
                archive.index.clone(),
                config.archive.on_conflicting_version,
                config.ingest.max_commit_batch,
                strata::metrics::Metrics::new(),
                config
                    .audit
                    .enabled
                    .then(|| strata::audit::AuditLog::open(&config.archive.data_dir))
                    .transpose()?,
            );
            let bar = progress_bar(files.len() as u64, "importing");
            let report = ops::import(&ingest, &files, workers(&config), &bar);
            bar.finish_and_clear();
            let clean = !ingest.had_failures();
            ingest.shutdown_blocking();
            archive.close(clean)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{} files: {} stored, {} new versions, {} already present, {} rejected",
                    report.files,
                    report.stored,
                    report.new_versions,
                    report.already_present,
                    report.rejected.len()
                );
                for r in &report.rejected {
                    println!("  rejected {}: {}", r.path, r.reason);
                }
            }
            Ok(if report.rejected.is_empty() { 0 } else { 1 })
        }
        Command::Ls { study_uid, json } => {
            let archive = ReadOnlyArchive::open(&config)?;
            match study_uid {
                None => {
                    let studies = ops::list_studies(archive.index.as_ref())?;
                    if json {
                        print_json(&studies)?;
                    } else {
                        println!(
                            "{:<64}  {:<16} {:<24} {:<8} {:<8} {:>6} {:>9} {:>12}",
                            "STUDY UID",
                            "PATIENT ID",
                            "PATIENT NAME",
                            "DATE",
                            "MODS",
                            "SERIES",
                            "INSTANCES",
                            "BYTES"
                        );
                        for s in studies {
                            println!(
                                "{:<64}  {:<16} {:<24} {:<8} {:<8} {:>6} {:>9} {:>12}",
                                s.study_uid,
                                s.patient_id,
                                s.patient_name,
                                s.study_date,
                                s.modalities.join("\\"),
                                s.series,
                                s.instances,
                                s.bytes
                            );
                        }
                    }
                }
                Some(uid) => {
                    let view =
                        ops::study_view(ops::Tiers::of(&archive), archive.index.as_ref(), &uid)?
                            .with_context(|| format!("no study {uid} in the archive"))?;
                    if json {
                        print_json(&view)?;
                    } else {
                        println!(
                            "study {} patient {} ({}) date {}: {} series, {} instances",
                            view.study.study_uid,
                            view.study.patient_id,
                            view.study.patient_name,
                            view.study.study_date,
                            view.study.series,
                            view.study.instances
                        );
                        for s in &view.series {
                            println!(
                                "  series {} #{} {} {:?}: {} instances",
                                s.series_uid,
                                s.series_number,
                                s.modality,
                                s.series_description,
                                s.instances.len()
                            );
                            for i in &s.instances {
                                let v = i.versions.last();
                                println!(
                                    "    {} #{} {} bytes{}",
                                    i.sop_instance_uid,
                                    i.instance_number,
                                    v.map(|v| v.size).unwrap_or(0),
                                    if i.versions.len() > 1 {
                                        format!(" ({} versions)", i.versions.len())
                                    } else {
                                        String::new()
                                    }
                                );
                            }
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Show { uid, json } => {
            let archive = ReadOnlyArchive::open(&config)?;
            let shown = ops::show(ops::Tiers::of(&archive), archive.index.as_ref(), &uid)?
                .with_context(|| format!("no study, series or instance {uid} in the archive"))?;
            if json {
                print_json(&shown)?;
            } else {
                print!(
                    "{}",
                    toml::to_string_pretty(&shown).unwrap_or_else(|_| format!("{shown:#?}\n"))
                );
            }
            Ok(0)
        }
        Command::Export {
            study_uids,
            all,
            out,
        } => {
            let archive = ReadOnlyArchive::open(&config)?;
            let studies = selected_studies(&archive, study_uids, all)?;
            let report = ops::export(&archive, &studies, &out);
            cli_audit(&config, "export", &studies, &report);
            let report = report?;
            println!(
                "exported {} studies, {} files, {} bytes to {}",
                report.studies,
                report.files,
                report.bytes,
                out.display()
            );
            Ok(0)
        }
        Command::Tier { command } => tier(&config, command),
        Command::Audit { command } => audit(&config, command),
        Command::Delete { study_uid, reason } => {
            let report = ops::delete(&config, &study_uid, &reason)?;
            println!(
                "deleted study {}: {} objects, {} hot files, {} packs; tombstone kept",
                report.study_uid, report.objects, report.hot_files_deleted, report.packs_deleted
            );
            Ok(0)
        }
        Command::Hold {
            study_uid,
            reason,
            release,
        } => {
            ops::hold(&config, &study_uid, &reason, release)?;
            println!(
                "legal hold {} on study {study_uid}",
                if release { "lifted" } else { "placed" }
            );
            Ok(0)
        }
        Command::Retention { dry_run } => {
            let report = ops::retention(&config, dry_run)?;
            for (uid, date) in &report.due {
                let what = if report.held.contains(uid) {
                    "kept (legal hold)"
                } else if dry_run {
                    "would be deleted"
                } else {
                    "deleted"
                };
                println!("{uid} (StudyDate {date}): {what}");
            }
            println!(
                "{} studies due, {} deleted, {} held",
                report.due.len(),
                report.deleted.len(),
                report.held.len()
            );
            Ok(0)
        }
        Command::Tombstones { json } => {
            let archive = ReadOnlyArchive::open(&config)?;
            use strata::index::Index;
            let tombstones = archive.index.tombstones()?;
            if json {
                print_json(&tombstones)?;
            } else {
                for t in &tombstones {
                    println!(
                        "{} (patient {}): {} objects, {} packs, deleted by {} at {}: {}",
                        t.study_uid,
                        t.patient_id,
                        t.objects.len(),
                        t.packs.len(),
                        t.who,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(t.deleted_at_ms)
                        ),
                        t.why
                    );
                }
            }
            Ok(0)
        }
        Command::Manifest {
            study_uids,
            all,
            out,
        } => {
            let archive = ReadOnlyArchive::open(&config)?;
            let studies = selected_studies(&archive, study_uids, all)?;
            let report = ops::manifest(&archive, &studies, &out);
            cli_audit(&config, "manifest", &studies, &report);
            let report = report?;
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
        Command::Verify {
            json,
            tier: _,
            repair: true,
        } => {
            let (found, report) = ops::repair(&config, workers(&config))?;
            if json {
                print_json(&serde_json::json!({"found": found, "repair": report}))?;
            } else {
                for line in &report.repaired {
                    println!("repaired: {line}");
                }
                for line in &report.unrepairable {
                    println!("NO GOOD COPY LEFT, NOTHING CHANGED: {line}");
                }
                if report.repaired.is_empty() && report.unrepairable.is_empty() {
                    println!("nothing to repair");
                }
            }
            Ok(if report.unrepairable.is_empty() { 0 } else { 1 })
        }
        Command::Verify { json, tier, .. } => {
            let archive = ReadOnlyArchive::open(&config)?;
            let report = ops::verify(&archive, workers(&config), tier)?;
            let outcome: Result<String> = Ok(if report.is_clean() {
                "clean".to_string()
            } else {
                format!(
                    "{} missing, {} corrupt, {} bad packs",
                    report.missing.len(),
                    report.corrupt.len(),
                    report.bad_packs.len()
                )
            });
            cli_audit(&config, "verify", &[], &outcome);
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "checked {} objects, {} bytes in {:.1}s: {} missing, {} corrupt, {} orphans, {} dangling, {} strays",
                    report.objects_checked,
                    report.bytes_checked,
                    report.seconds,
                    report.missing.len(),
                    report.corrupt.len(),
                    report.orphans.len(),
                    report.dangling.len(),
                    report.strays.len()
                );
                for (kind, list) in [
                    ("missing", &report.missing),
                    ("corrupt", &report.corrupt),
                    ("orphan", &report.orphans),
                    ("dangling", &report.dangling),
                ] {
                    for p in list {
                        println!(
                            "  {kind}: object {} study {} instance {} at {}: {}",
                            p.id, p.study_uid, p.sop_instance_uid, p.path, p.detail
                        );
                    }
                }
                for s in &report.strays {
                    println!("  stray file: {s}");
                }
                if tier != ops::VerifyScope::Hot {
                    println!(
                        "checked {} packs, {} bytes: {} bad, {} unreachable objects, {} unrecorded uploads",
                        report.packs_checked,
                        report.pack_bytes_checked,
                        report.bad_packs.len(),
                        report.unreachable.len(),
                        report.unrecorded_packs.len()
                    );
                }
                for p in &report.bad_packs {
                    println!(
                        "  bad pack: {} ({}) study {} instances {}: {}",
                        p.pack,
                        p.key,
                        p.study_uid,
                        p.instances.join(","),
                        p.detail
                    );
                }
                for p in &report.unreachable {
                    println!(
                        "  unreachable: object {} study {} instance {}: {}",
                        p.id, p.study_uid, p.sop_instance_uid, p.detail
                    );
                }
                for p in &report.pending_eviction {
                    println!(
                        "  hot file missing, cold copy safe: object {} study {} instance {} at {}",
                        p.id, p.study_uid, p.sop_instance_uid, p.path
                    );
                }
                if !report.pending_eviction.is_empty() {
                    println!(
                        "  {} objects await the end of an interrupted move (cold copies verified)",
                        report.pending_eviction.len()
                    );
                }
            }
            Ok(if report.is_clean() { 0 } else { 1 })
        }
        Command::Reindex => {
            let bar = progress_bar(0, "reindexing");
            let report = ops::reindex(&config, &bar)?;
            bar.finish_and_clear();
            println!(
                "reindexed {} of {} hot objects and {} cold packs ({} objects only in cold) into {} studies; {} quarantined, {} packs skipped",
                report.indexed,
                report.objects_found,
                report.packs,
                report.cold_only_objects,
                report.studies,
                report.quarantined.len(),
                report.packs_skipped.len()
            );
            for q in &report.quarantined {
                println!("  quarantined {q}");
            }
            for (pack, reason) in &report.packs_skipped {
                println!("  pack skipped {pack}: {reason}");
            }
            Ok(
                if report.quarantined.is_empty() && report.packs_skipped.is_empty() {
                    0
                } else {
                    1
                },
            )
        }
    }
}

/// `strata tier ...`: through the running server's admin routes when one holds the
/// archive, else directly (with the archive locked for the moves).
fn tier(config: &Config, command: TierCommand) -> Result<i32> {
    let data_dir = &config.archive.data_dir;
    if strata::archive::writer_active(data_dir) {
        let (method, path) = match &command {
            TierCommand::Status { .. } => ("GET", "/tier/status".to_string()),
            TierCommand::Run => ("POST", "/tier/run".to_string()),
            TierCommand::Move { study_uid, to } => {
                if !strata::dicom::part10::is_valid_uid(study_uid) {
                    bail!("{study_uid:?} is not a valid Study Instance UID");
                }
                ("POST", format!("/tier/move/{study_uid}/{to}"))
            }
        };
        let body = admin_request(config, method, &path)?;
        match command {
            TierCommand::Status { json: false } => {
                let status: serde_json::Value = serde_json::from_str(&body)?;
                print_status_value(&status);
            }
            _ => println!("{body}"),
        }
        return Ok(0);
    }
    match command {
        TierCommand::Status { json } => {
            let archive = ReadOnlyArchive::open(config)?;
            let status = archive.tiering().status_blocking()?;
            if json {
                print_json(&status)?;
            } else {
                print_status_value(&serde_json::to_value(&status)?);
            }
            Ok(0)
        }
        TierCommand::Run | TierCommand::Move { .. } => {
            let (archive, recovery) = Archive::open_exclusive(config, "tier")?;
            report_recovery(&recovery);
            let tiering = archive.tiering();
            let rt = ops::runtime()?;
            let (printed, ok) = match command {
                TierCommand::Run => {
                    let report = rt.block_on(tiering.run_pass())?;
                    let ok = report.failed.is_empty();
                    (serde_json::to_string_pretty(&report)?, ok)
                }
                TierCommand::Move { study_uid, to } => {
                    let report = rt.block_on(strata::tiering::worker::force_move(
                        &tiering, &study_uid, &to,
                    ))?;
                    (serde_json::to_string_pretty(&report)?, true)
                }
                TierCommand::Status { .. } => unreachable!("handled above"),
            };
            drop(tiering);
            drop(rt);
            archive.close(true)?;
            println!("{printed}");
            Ok(if ok { 0 } else { 1 })
        }
    }
}

fn print_status_value(s: &serde_json::Value) {
    let n = |k: &str| s.get(k).cloned().unwrap_or_default();
    println!("cold tier: {}", n("cold_url"));
    println!(
        "hot:  {} objects, {} bytes ({} studies only hot); hot filesystem {:.1}% used",
        n("hot_objects"),
        n("hot_bytes"),
        n("studies_hot"),
        n("hot_fs_used_percent").as_f64().unwrap_or(0.0)
    );
    println!(
        "cold: {} objects only in cold, {} bytes ({} studies only cold, {} in both); {} packs, {} bytes, by class {}",
        n("cold_only_objects"),
        n("cold_only_bytes"),
        n("studies_cold"),
        n("studies_mixed"),
        n("packs"),
        n("pack_bytes"),
        n("packs_by_storage_class")
    );
    println!(
        "queue: {} studies, {} due now, oldest due since {}",
        n("queue_length"),
        n("queue_due"),
        n("oldest_due_since_ms")
    );
}

/// One request to the running server's loopback admin routes; returns the body or the
/// server's error.
fn admin_request(config: &Config, method: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.http.port));
    let mut stream = std::net::TcpStream::connect(addr).with_context(|| {
        format!("the archive is held by a running server, but its HTTP port {addr} does not answer")
    })?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response from the server")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("the server answered {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// Records a CLI access in the audit log (a failure to do so is printed, not fatal:
/// the access already happened).
fn cli_audit<T: std::fmt::Debug>(
    config: &Config,
    action: &'static str,
    uids: &[String],
    result: &Result<T>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    if let Err(e) = ops::audit_cli(config, action, uids.to_vec(), outcome) {
        eprintln!("strata: AUDIT RECORD NOT WRITTEN: {e:#}");
    }
}

/// `strata audit ...`.
fn audit(config: &Config, command: AuditCommand) -> Result<i32> {
    let path = strata::audit::log_path(&config.archive.data_dir);
    match command {
        AuditCommand::Verify { json } => {
            let cold = strata_tiers::ColdStore::open(&config.cold_spec())?;
            let anchors = ops::runtime()?
                .block_on(strata::audit::anchors(&cold))
                .map_err(|e| anyhow::anyhow!(e))?;
            let report = strata::audit::verify(&path, &anchors)?;
            if json {
                print_json(&report)?;
            } else {
                match &report.first_bad {
                    None => println!(
                        "audit log intact: {} records, {} anchors in the cold tier match",
                        report.records, report.anchors_checked
                    ),
                    Some((line, seq, why)) => {
                        println!("AUDIT LOG BROKEN at line {line} (record {seq}): {why}")
                    }
                }
            }
            Ok(if report.first_bad.is_none() { 0 } else { 1 })
        }
        AuditCommand::Log { since, study, json } => {
            let from = since
                .map(|d| strata::index::rocks::unix_ms_now().saturating_sub(d.as_millis() as u64))
                .unwrap_or(0);
            let records: Vec<_> = strata::audit::read_all(&path)?
                .into_iter()
                .filter(|r| r.body.time_ms >= from)
                .filter(|r| study.as_ref().is_none_or(|s| r.body.uids.contains(s)))
                .collect();
            if json {
                print_json(&records)?;
            } else {
                for r in &records {
                    let b = &r.body;
                    let who = if b.actor.kind == "dicom" {
                        format!("{}@{}", b.actor.ae_title, b.actor.address)
                    } else {
                        format!("{}:{}", b.actor.kind, b.actor.user)
                    };
                    println!(
                        "{} #{} {} {} [{}] {}",
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(b.time_ms)
                        ),
                        b.seq,
                        who,
                        b.action,
                        b.uids.join(" "),
                        b.outcome
                    );
                }
            }
            Ok(0)
        }
        AuditCommand::Export { format, since } => {
            let from = since
                .map(|d| strata::index::rocks::unix_ms_now().saturating_sub(d.as_millis() as u64))
                .unwrap_or(0);
            for r in strata::audit::read_all(&path)?
                .into_iter()
                .filter(|r| r.body.time_ms >= from)
            {
                if format == "dicom" {
                    println!(
                        "{}",
                        strata::audit::to_dicom_xml(&r, &config.dicom.ae_title)
                    );
                } else {
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(0)
        }
        AuditCommand::Anchor => {
            let cold = strata_tiers::ColdStore::open(&config.cold_spec())?;
            let log = strata::audit::AuditLog::open(&config.archive.data_dir)?;
            match ops::runtime()?
                .block_on(strata::audit::anchor(
                    &log,
                    &cold,
                    config.audit.anchor_lock_days,
                ))
                .map_err(|e| anyhow::anyhow!(e))?
            {
                Some(a) => println!(
                    "anchored record {} ({}) in {}",
                    a.seq,
                    a.hash,
                    cold.describe()
                ),
                None => println!("the audit log is empty: nothing to anchor"),
            }
            Ok(0)
        }
    }
}

/// The studies a command names, or every study with `--all`.
fn selected_studies(
    archive: &ReadOnlyArchive,
    study_uids: Vec<String>,
    all: bool,
) -> Result<Vec<String>> {
    if all {
        Ok(archive.index_studies()?)
    } else if study_uids.is_empty() {
        bail!("name at least one study UID, or --all");
    } else {
        Ok(study_uids)
    }
}

fn report_recovery(r: &strata::archive::RecoveryReport) {
    if r.tmp_swept > 0 || r.adopted > 0 || !r.quarantined.is_empty() {
        tracing::warn!(
            tmp_swept = r.tmp_swept,
            adopted = r.adopted,
            quarantined = r.quarantined.len(),
            "start-up recovery after an unclean stop"
        );
    }
}

fn serve(config: Config) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let c = config.clone();
        let (archive, recovery) =
            tokio::task::spawn_blocking(move || Archive::open_exclusive(&c, "serve")).await??;
        report_recovery(&recovery);
        let dicom = tokio::net::TcpListener::bind((config.dicom.bind, config.dicom.port))
            .await
            .with_context(|| {
                format!(
                    "listen for DICOM on {}:{}",
                    config.dicom.bind, config.dicom.port
                )
            })?;
        let http = tokio::net::TcpListener::bind((config.http.bind, config.http.port))
            .await
            .with_context(|| {
                format!(
                    "listen for HTTP on {}:{}",
                    config.http.bind, config.http.port
                )
            })?;
        strata::server::run(config, archive, dicom, http, shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(0)
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
