//! Finished attempts the store could not record (a full disk, a database
//! that went away), kept on the worker's disk so that paid work — an LLM
//! call, a long command — is recorded on the next `drive` or `resume`
//! instead of being thrown away and run again.
//!
//! Layout: `<work_root>/.unrecorded/<run>/<block>.<attempt>/report.json`
//! and `blobs/<hash>` (the artifact and log contents, verbatim).

use std::path::{Path, PathBuf};

use factory_core::run::AttemptReport;
use factory_store::NewBlob;

use crate::driver::Completion;

fn run_dir(work_root: &Path, run_id: &str) -> PathBuf {
    work_root.join(".unrecorded").join(run_id)
}

fn attempt_dir(work_root: &Path, run_id: &str, block: &str, attempt: u32) -> PathBuf {
    run_dir(work_root, run_id).join(format!("{block}.{attempt}"))
}

/// Keeps a finished attempt's report and outputs. Router attempts (whose
/// routing is decided when they commit), fan-out blocks' list reads (cheap
/// to read again) and failed ones are not worth it.
pub(crate) fn save(
    work_root: &Path,
    run_id: &str,
    completion: &Completion,
) -> std::io::Result<bool> {
    let Ok(report) = &completion.report else {
        return Ok(false);
    };
    if completion.route_items.is_some() || completion.list.is_some() {
        return Ok(false);
    }
    let dir = attempt_dir(work_root, run_id, &completion.block, completion.attempt);
    std::fs::create_dir_all(dir.join("blobs"))?;
    for blob in &completion.blobs {
        std::fs::write(dir.join("blobs").join(&blob.hash), &blob.content)?;
    }
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    // Written last: a report without all its blobs is never read.
    std::fs::write(dir.join("report.json"), json)?;
    Ok(true)
}

/// Every kept attempt of `run_id`.
pub(crate) fn load(work_root: &Path, run_id: &str) -> Vec<Completion> {
    let Ok(entries) = std::fs::read_dir(run_dir(work_root, run_id)) else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((block, attempt)) = name
            .rsplit_once('.')
            .and_then(|(block, n)| Some((block.to_string(), n.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let dir = entry.path();
        let Some(report) = std::fs::read(dir.join("report.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<AttemptReport>(&bytes).ok())
        else {
            continue;
        };
        let blobs: Vec<NewBlob> = std::fs::read_dir(dir.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|blob| std::fs::read(blob.path()).ok())
            .map(NewBlob::new)
            .collect();
        kept.push(Completion {
            block,
            attempt,
            report: Ok(report),
            blobs,
            route_items: None,
            list: None,
        });
    }
    kept.sort_by(|a, b| (&a.block, a.attempt).cmp(&(&b.block, b.attempt)));
    kept
}

/// Forgets a kept attempt once it is recorded (or can no longer be).
pub(crate) fn remove(work_root: &Path, run_id: &str, block: &str, attempt: u32) {
    let _ = std::fs::remove_dir_all(attempt_dir(work_root, run_id, block, attempt));
    let _ = std::fs::remove_dir(run_dir(work_root, run_id));
}
