//! `strata-migrate`: moves a whole legacy PACS into Strata (or any DICOM archive) over
//! C-FIND/C-MOVE — inventory, move, verify, report — resumable at any point from its
//! state directory. See the README's "Migrating from a legacy PACS".

mod ledger;
mod plan;
mod probe;
mod report;
mod run;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata::dimse::scu::{RemoteAe, TlsClient};

/// Migrate a legacy PACS into Strata over C-FIND/C-MOVE.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// State directory: the durable ledger of the migration.
    #[arg(long)]
    state: PathBuf,
    /// Timeout of each DICOM association and response.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    timeout: Duration,
    /// PEM bundle of the CAs that sign the certificates of peers reached over DICOM TLS
    /// (`--source-tls`, `--dest-tls`).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM certificate chain presented to TLS peers that require client certificates
    /// (mutual TLS), with `--tls-key`.
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (refused when world-readable).
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected e.g. 60s"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?}: expected s, m or ms")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enumerate the source's studies into the ledger (repeatable: adds new ones).
    Plan {
        /// The legacy PACS: AE@HOST:PORT.
        #[arg(long)]
        source: RemoteAe,
        /// Reach the source over DICOM TLS (PS3.15 B.1), its certificate verified
        /// against `--tls-ca` for its host name; recorded in the ledger for `run`.
        #[arg(long)]
        source_tls: bool,
        /// Our AE title towards the source (the source must allow it to query and move).
        #[arg(long, default_value = "STRATA_MIGRATE")]
        calling_ae: String,
        /// First StudyDate (YYYYMMDD); default 19000101.
        #[arg(long)]
        from: Option<String>,
        /// Last StudyDate (YYYYMMDD); default today.
        #[arg(long)]
        to: Option<String>,
        /// Only studies with these modalities (repeatable).
        #[arg(long)]
        modality: Vec<String>,
        /// The source's C-FIND result cap, when known (detected otherwise).
        #[arg(long)]
        source_limit: Option<usize>,
        /// Skip the sweep by PatientID that finds studies without a StudyDate (faster
        /// on a large, capped source whose studies all carry a date).
        #[arg(long)]
        skip_undated: bool,
    },
    /// Move and verify every study not verified yet; resumable; Ctrl-C finishes the
    /// studies in flight and stops.
    Run {
        /// The destination AE title the source sends to (it must know it).
        #[arg(long)]
        dest_ae: String,
        /// Where the destination answers C-FIND for verification: HOST:PORT.
        #[arg(long)]
        dest: String,
        /// Reach the destination over DICOM TLS (its TLS port in `--dest`).
        #[arg(long)]
        dest_tls: bool,
        /// Studies in flight.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// Only start studies between these local times, e.g. 19:00-07:00.
        #[arg(long, value_parser = run::parse_window)]
        window: Option<(chrono::NaiveTime, chrono::NaiveTime)>,
        /// Most instances per second (by the source's counts).
        #[arg(long)]
        max_rate: Option<f64>,
        /// Retries of a C-MOVE or C-FIND that cannot reach the source.
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// Correct the source recorded by `plan` (AE@HOST:PORT), after a C-ECHO to it
        /// succeeds; the ledger keeps every study.
        #[arg(long)]
        source: Option<RemoteAe>,
        /// Correct the calling AE title recorded by `plan`, after a C-ECHO with it
        /// succeeds.
        #[arg(long)]
        calling_ae: Option<String>,
    },
    /// Where the migration stands.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write the reconciliation report (instances.csv, summary.json, summary.txt).
    Report {
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("strata-migrate: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn date(s: Option<&str>, default: chrono::NaiveDate) -> Result<chrono::NaiveDate> {
    match s {
        None => Ok(default),
        Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y%m%d")
            .with_context(|| format!("{s:?} is not a YYYYMMDD date")),
    }
}

/// The TLS client configuration of `--tls-ca` (and `--tls-cert`/`--tls-key`), if given.
fn tls_client(cli: &Cli) -> Result<Option<TlsClient>> {
    let Some(ca) = &cli.tls_ca else {
        if cli.tls_cert.is_some() {
            bail!("--tls-cert needs --tls-ca (the CAs of the peers' certificates)");
        }
        return Ok(None);
    };
    let config = strata::config::TlsConfig {
        peer_ca_file: ca.clone(),
        cert_file: cli.tls_cert.clone().unwrap_or_default(),
        key_file: cli.tls_key.clone().unwrap_or_default(),
        ..Default::default()
    };
    Ok(Some(TlsClient(strata::tls::client_config(&config)?)))
}

/// `remote`, over TLS when `tls` (which then needs `--tls-ca`).
fn reach(remote: RemoteAe, tls: bool, client: &Option<TlsClient>) -> Result<RemoteAe> {
    if !tls {
        return Ok(remote);
    }
    match client {
        Some(client) => Ok(remote.over_tls(client.clone())),
        None => bail!("{remote} is reached over TLS: give --tls-ca (the CAs of its certificate)"),
    }
}

fn real_main(cli: Cli) -> Result<i32> {
    let tls = tls_client(&cli)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Plan {
            source,
            source_tls,
            calling_ae,
            from,
            to,
            modality,
            source_limit,
            skip_undated,
        } => {
            let source = reach(source, source_tls, &tls)?;
            // before any ledger is written: does the source take queries from us?
            if let Err(why) = rt.block_on(probe::check_source(&calling_ae, &source, cli.timeout)) {
                bail!("{why}; nothing planned, no ledger written");
            }
            let header = ledger::Header {
                format: ledger::FORMAT.into(),
                version: ledger::VERSION,
                source: source.clone(),
                calling_ae: calling_ae.clone(),
            };
            let mut ledger = ledger::Ledger::create_or_open(&cli.state, header)?;
            let from = date(
                from.as_deref(),
                chrono::NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid date"),
            )?;
            let to = date(to.as_deref(), chrono::Local::now().date_naive())?;
            if from > to {
                bail!("--from is after --to");
            }
            let opts = plan::PlanOptions {
                calling_ae,
                source,
                from,
                to,
                modalities: modality,
                source_limit,
                skip_undated,
                timeout: cli.timeout,
            };
            let report = rt.block_on(plan::plan(&mut ledger, &opts))?;
            println!(
                "{} studies found ({} new) with {} C-FIND queries, {} windows split{}",
                report.studies_found,
                report.studies_new,
                report.queries,
                report.windows_split,
                report
                    .detected_cap
                    .map(|c| format!("; the source caps answers at {c}"))
                    .unwrap_or_default()
            );
            for w in &report.incomplete_windows {
                println!("  WARNING: window {w} is still capped at one minute: studies may be missing there");
            }
            Ok(if report.incomplete_windows.is_empty() {
                0
            } else {
                1
            })
        }
        Command::Run {
            dest_ae,
            dest,
            dest_tls,
            parallel,
            window,
            max_rate,
            retries,
            source,
            calling_ae,
        } => {
            let mut ledger = ledger::Ledger::open(&cli.state)?;
            if source.is_some() || calling_ae.is_some() {
                let mut header = ledger.header.clone();
                let was_tls = header.source.tls;
                header.source = match source {
                    Some(source) => reach(source, was_tls, &tls)?,
                    None => header.source,
                };
                header.calling_ae = calling_ae.unwrap_or(header.calling_ae);
                // a C-ECHO alone proves nothing: sources echo anyone
                if let Err(why) = rt.block_on(probe::check_source(
                    &header.calling_ae,
                    &header.source,
                    cli.timeout,
                )) {
                    bail!("{why}: settings not changed");
                }
                println!(
                    "source settings corrected: {} calling as {} (it answered C-ECHO and C-FIND)",
                    header.source, header.calling_ae
                );
                ledger = ledger.set_header(header)?;
            }
            // the ledger records whether the source speaks TLS; the material is ours
            let source_tls = ledger.header.source.tls;
            ledger.header.source = reach(ledger.header.source.clone(), source_tls, &tls)?;
            let inventory_complete = ledger.inventory_complete();
            let dest: RemoteAe = format!("{dest_ae}@{dest}")
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            let dest = reach(dest, dest_tls, &tls)?;
            let opts = run::RunOptions {
                calling_ae: ledger.header.calling_ae.clone(),
                dest_ae,
                dest,
                parallel,
                window,
                max_rate,
                retries,
                timeout: cli.timeout,
                progress: std::io::stderr().is_terminal(),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let summary = rt.block_on(async {
                let flag = stop.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        eprintln!("interrupted: finishing the studies in flight, then stopping (Ctrl-C again to abort)");
                        flag.store(true, Ordering::Release);
                        if tokio::signal::ctrl_c().await.is_ok() {
                            std::process::exit(130);
                        }
                    }
                });
                run::run(ledger, opts, stop.clone()).await
            })?;
            println!(
                "{} verified, {} failed, {} already verified{}",
                summary.verified,
                summary.failed,
                summary.skipped_verified,
                if summary.stopped_early {
                    "; stopped early: run again to continue"
                } else {
                    ""
                }
            );
            if !inventory_complete {
                println!(
                    "NOT COMPLETE: the inventory of the source never ran to its end (`plan` failed or was interrupted); run `plan` again"
                );
            }
            Ok(
                if summary.failed == 0 && !summary.stopped_early && inventory_complete {
                    0
                } else {
                    1
                },
            )
        }
        Command::Status { json } => {
            let ledger = ledger::Ledger::open(&cli.state)?;
            let totals = report::totals(&ledger);
            if json {
                println!("{}", serde_json::to_string_pretty(&totals)?);
            } else {
                println!("migration from {}", ledger.header.source);
                println!("studies: {}", totals.studies);
                for (state, n) in &totals.by_state {
                    println!("  {state}: {n}");
                }
                println!(
                    "instances counted by the source at planning: {}{}",
                    totals.planned_instances,
                    if totals.studies_uncounted > 0 {
                        format!(
                            " (and {} studies it gave no count for)",
                            totals.studies_uncounted
                        )
                    } else {
                        String::new()
                    }
                );
                println!(
                    "instances of the studies verified so far: {} listed by the source, {} in the archive, {} missing",
                    totals.source_instances, totals.archived_instances, totals.missing_instances
                );
            }
            Ok(0)
        }
        Command::Report { out } => {
            let ledger = ledger::Ledger::open(&cli.state)?;
            let totals = report::write(&ledger, &out)?;
            println!(
                "report written to {}: {}",
                out.display(),
                if totals.complete {
                    "complete"
                } else {
                    "NOT complete"
                }
            );
            Ok(if totals.complete { 0 } else { 1 })
        }
    }
}
