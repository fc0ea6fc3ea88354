//! Printers shared by the command groups: JSON, progress bars, the tier status.

use anyhow::Result;
use std::io::IsTerminal;

pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
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

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print_status_value(s: &serde_json::Value) {
    let n = |k: &str| s.get(k).cloned().unwrap_or_default();
    match s.get("cold_check").and_then(|v| v.as_str()) {
        Some("ok") | None => println!(
            "cold tier: {}: usable (bucket, credentials, write/read/delete of a test object)",
            n("cold_url")
        ),
        Some(problem) => println!("cold tier: {}: NOT USABLE: {problem}", n("cold_url")),
    }
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
    if n("incomplete_uploads").as_u64().unwrap_or(0) > 0 {
        println!(
            "cold: {} incomplete multipart uploads (aborted by the next policy pass after orphan_grace)",
            n("incomplete_uploads")
        );
    }
    println!(
        "queue: {} studies, {} due now, oldest due since {}",
        n("queue_length"),
        n("queue_due"),
        n("oldest_due_since_ms")
            .as_u64()
            .map_or_else(|| "-".to_string(), iso)
    );
}

/// An instant (ms since the epoch) as ISO 8601 (RFC 3339, UTC, seconds).
pub fn iso(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
