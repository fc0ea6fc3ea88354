//! `strata ls`, `strata show`, `strata tombstones`: what the archive holds, read-only
//! (safe beside a running server); `ls` and `show` are audited as the OS user's queries.

use super::print::{iso, print_json};
use anyhow::{Context, Result};
use strata::archive::catalog::{InstanceView, SeriesView, Shown, StudyView};
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn ls(config: &Config, study_uid: Option<String>, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    match study_uid {
        None => {
            let studies = archive.list_studies_blocking(&Principal::cli_user())?;
            if json {
                print_json(&studies)?;
            } else {
                println!(
                    "{:<64}  {:<16} {:<24} {:<8} {:<8} {:>6} {:>9} {:>12}  LEGAL HOLD",
                    "STUDY UID",
                    "PATIENT ID",
                    "PATIENT NAME",
                    "DATE",
                    "MODS",
                    "SERIES",
                    "INSTANCES",
                    "BYTES",
                );
                for s in studies {
                    println!(
                        "{:<64}  {:<16} {:<24} {:<8} {:<8} {:>6} {:>9} {:>12}  {}",
                        s.study_uid,
                        s.patient_id,
                        s.patient_name,
                        s.study_date,
                        s.modalities.join("\\"),
                        s.series,
                        s.instances,
                        s.bytes,
                        s.holds
                            .iter()
                            .map(|h| h.why.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                    print_conflicts(&s);
                }
            }
        }
        Some(uid) => {
            let view = archive
                .study_view_blocking(&Principal::cli_user(), &uid)?
                .with_context(|| format!("no study {uid} in the archive"))?;
            if json {
                print_json(&view)?;
            } else {
                print_study(&view, false);
            }
        }
    }
    Ok(0)
}

pub fn show(config: &Config, uid: &str, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let Some(shown) = archive.show_blocking(&Principal::cli_user(), uid)? else {
        let deleted = archive
            .tombstone_of_blocking(uid)?
            .map(|t| {
                format!(
                    " (study deleted by {} at {}: {}; see `strata tombstones`)",
                    t.tombstone.who,
                    iso(t.tombstone.deleted_at_ms),
                    t.tombstone.why
                )
            })
            .unwrap_or_default();
        anyhow::bail!("no study, series or instance {uid} in the archive{deleted}");
    };
    if json {
        print_json(&shown)?;
    } else {
        match &shown {
            Shown::Study(view) => print_study(view, true),
            Shown::Series { study_uid, series } => {
                println!("study {study_uid}");
                print_series(series, true);
            }
            Shown::Instance(instance) => {
                println!(
                    "study {} series {}",
                    instance.study_uid, instance.series_uid
                );
                print_instance(instance, true);
            }
        }
    }
    Ok(0)
}

/// The other patients a study's series were sent under, one line each.
fn print_conflicts(s: &strata::archive::catalog::StudySummary) {
    for o in &s.patient_conflicts {
        println!(
            "  PATIENT CONFLICT: filed under {}, but {} series sent as PatientID {} ({}) since {}: {}",
            s.patient_id,
            o.series.len(),
            o.patient_id,
            o.patient_name,
            iso(o.first_seen_ms),
            o.series.join(" ")
        );
    }
}

/// A study, its hold, series and instances; `detail` adds every version's copies.
fn print_study(view: &StudyView, detail: bool) {
    let s = &view.study;
    println!(
        "study {} patient {} ({}) date {}: {} series, {} instances, {} bytes",
        s.study_uid, s.patient_id, s.patient_name, s.study_date, s.series, s.instances, s.bytes
    );
    if let Some(at) = s.last_access_ms {
        println!("  last stored into or retrieved: {}", iso(at));
    }
    print_conflicts(s);
    for h in &s.holds {
        println!(
            "  LEGAL HOLD placed by {} at {}: {}",
            h.who,
            iso(h.since_ms),
            h.why
        );
    }
    for series in &view.series {
        print_series(series, detail);
    }
}

fn print_series(s: &SeriesView, detail: bool) {
    println!(
        "  series {} #{} {} {:?}: {} instances",
        s.series_uid,
        s.series_number,
        s.modality,
        s.series_description,
        s.instances.len()
    );
    for i in &s.instances {
        print_instance(i, detail);
    }
}

fn print_instance(i: &InstanceView, detail: bool) {
    let v = i.versions.last();
    println!(
        "    {} #{} {} bytes{}",
        i.sop_instance_uid,
        i.instance_number,
        v.map(|v| v.size).unwrap_or(0),
        if i.versions.len() > 1 {
            format!(
                " ({} versions with different data sets; the newest is served)",
                i.versions.len()
            )
        } else {
            String::new()
        }
    );
    if !detail {
        return;
    }
    println!(
        "      SOP class {}, transfer syntax {}",
        i.sop_class_uid, i.transfer_syntax_uid
    );
    for (n, v) in i.versions.iter().enumerate() {
        let served = if n + 1 == i.versions.len() {
            ", served"
        } else {
            ""
        };
        println!(
            "      version {} (object {}){served}: {} bytes, received {} from {} {}",
            n + 1,
            v.id,
            v.size,
            iso(v.received_at_ms),
            v.calling_ae,
            v.source
        );
        println!("        {}: {}", v.tier, v.location);
        if let Some(hash) = &v.dataset {
            println!("        data-set hash {hash}");
        }
        for c in &v.cold_copies {
            println!(
                "        cold copy: pack {} ({}) at {}, {} bytes stored",
                c.pack, c.key, c.offset, c.stored_size
            );
        }
        match &v.last_verified {
            Some(f) if f.ok => println!("        last verified {}: ok", iso(f.verified_at_ms)),
            Some(f) => println!(
                "        last verified {}: FAILED: {}",
                iso(f.verified_at_ms),
                f.detail
            ),
            None => println!("        not verified by the scrubber yet"),
        }
    }
}

pub fn tombstones(config: &Config, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let tombstones = archive.tombstones_blocking()?;
    if json {
        print_json(&tombstones)?;
    } else {
        for view in &tombstones {
            let t = &view.tombstone;
            println!(
                "{} (patient {}): {} objects, {} packs, deleted by {} at {}: {}{}",
                t.study_uid,
                t.patient_id,
                t.objects.len(),
                t.packs.len(),
                t.who,
                iso(t.deleted_at_ms),
                t.why,
                if view.stored_again {
                    " (stored again since: the study is in the archive now)"
                } else {
                    ""
                }
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
                iso(h.since_ms),
                h.why
            );
        }
    }
    Ok(0)
}

/// `strata ls --rejected`: every instance an IOCM rejection note hid.
pub fn rejected(config: &Config, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let rejected = archive.rejections_blocking(&Principal::cli_user())?;
    if json {
        print_json(&rejected)?;
        return Ok(0);
    }
    println!(
        "{:<64}  {:<8} {:<36} {:<20}  BY",
        "SOP INSTANCE UID", "CODE", "WHY", "WHEN"
    );
    for r in rejected {
        println!(
            "{:<64}  {:<8} {:<36} {:<20}  {} (note {})",
            r.sop_instance_uid,
            r.rejection.code,
            r.rejection.meaning,
            iso(r.rejection.rejected_at_ms),
            r.rejection.by,
            r.rejection.note
        );
    }
    Ok(0)
}
