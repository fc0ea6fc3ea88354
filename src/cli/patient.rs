//! `strata patient show|history|merge`: a patient as the archive knows it now, the
//! identity changes that concerned it, and a merge for clinics without an HL7 feed (the
//! effect of ADT^A40; through the running server's admin API when a server holds the
//! archive). Every one is audited by its use case (docs/patients.md).

use super::print::{iso, print_json};
use super::{admin_client, runtime, server_running, with_exclusive};
use anyhow::Result;
use strata::archive::patients::MergeRequest;
use strata::archive::{Archive, Principal};
use strata::config::Config;

pub fn show(config: &Config, id: &str, issuer: &str, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let view = archive.patient_view_blocking(&Principal::cli_user(), id, issuer)?;
    if json {
        print_json(&view)?;
        return Ok(0);
    }
    if view.patient_id != view.asked {
        println!("{} is now known as {}", view.asked, view.patient_id);
    }
    println!("patient {}", view.patient_id);
    if let Some(link) = &view.link {
        println!(
            "  name {:?}, born {:?}, sex {:?}{} (changed {}{})",
            link.patient_name,
            link.patient_birth_date,
            link.patient_sex,
            if link.issuer.is_empty() {
                String::new()
            } else {
                format!(", issuer {}", link.issuer)
            },
            iso(link.changed_at_ms),
            if link.control_id.is_empty() {
                String::new()
            } else {
                format!(" by HL7 message {}", link.control_id)
            },
        );
    }
    if !view.linked_ids.is_empty() {
        println!("  also stored under: {}", view.linked_ids.join(", "));
    }
    println!("  {} studies", view.studies.len());
    for s in &view.studies {
        println!("    {s}");
    }
    Ok(0)
}

pub fn history(config: &Config, id: &str, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let history = archive.patient_history_blocking(&Principal::cli_user(), id)?;
    if json {
        print_json(&history)?;
        return Ok(0);
    }
    if history.is_empty() {
        println!("no identity change concerned {id}");
    }
    for h in history {
        println!("{}  {}", iso(h.changed_at_ms), h.summary);
    }
    Ok(0)
}

pub fn merge(config: &Config, request: &MergeRequest, json: bool) -> Result<i32> {
    let outcome = if server_running(config) {
        runtime()?.block_on(admin_client(config)?.patient_merge(request))?
    } else {
        with_exclusive(config, "patient merge", |rt, archive| {
            let outcome = rt.block_on(archive.merge_patients(&Principal::cli_user(), request))?;
            rt.block_on(archive.sync_governance_or_log());
            Ok(outcome)
        })?
    };
    if json {
        print_json(&outcome)?;
    } else {
        println!(
            "merged {} into {}: {} studies now shown under {}",
            request.prior, request.survivor, outcome.studies, request.survivor
        );
    }
    Ok(0)
}
