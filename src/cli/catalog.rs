//! `strata ls`, `strata show`, `strata tombstones`: what the archive holds, read-only
//! (safe beside a running server).

use super::print::print_json;
use anyhow::{Context, Result};
use strata::archive::Archive;
use strata::config::Config;

pub fn ls(config: &Config, study_uid: Option<String>, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    match study_uid {
        None => {
            let studies = archive.list_studies_blocking()?;
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
            let view = archive
                .study_view_blocking(&uid)?
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
                if let Some(h) = &view.study.hold {
                    println!(
                        "  LEGAL HOLD placed by {} at {}: {}",
                        h.who,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(h.since_ms)
                        ),
                        h.why
                    );
                }
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

pub fn show(config: &Config, uid: &str, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let shown = archive
        .show_blocking(uid)?
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

pub fn tombstones(config: &Config, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let tombstones = archive.tombstones_blocking()?;
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
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.deleted_at_ms)
                ),
                t.why
            );
        }
    }
    Ok(0)
}

pub fn holds(config: &Config, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let holds = archive.holds_blocking()?;
    if json {
        let list: Vec<_> = holds
            .iter()
            .map(|(study, h)| serde_json::json!({"study_uid": study, "hold": h}))
            .collect();
        print_json(&list)?;
    } else {
        for (study, h) in &holds {
            println!(
                "{study}: held by {} since {}: {}",
                h.who,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(h.since_ms)
                ),
                h.why
            );
        }
    }
    Ok(0)
}
