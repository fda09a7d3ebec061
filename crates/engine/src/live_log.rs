//! A running command's output, live: every second the tail of its stdout
//! and stderr files goes to its lease in the store (when it changed), where
//! any server can read it for the workbench. The whole logs are stored with
//! the attempt's report when it ends; this is only what is there meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use factory_store::Store;

/// How much of each stream is published (its end).
pub const TAIL_BYTES: u64 = 8 * 1024;
const EVERY: Duration = Duration::from_secs(1);

/// Publishes until aborted or until the lease has moved on.
pub(crate) async fn publish(
    store: Arc<dyn Store>,
    run_id: String,
    block_id: String,
    attempt: u32,
    attempt_dir: PathBuf,
) {
    let mut last = String::new();
    let mut wait = Duration::from_millis(300);
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        let log = serde_json::json!({
            "stdout": tail(&attempt_dir.join("stdout.log")),
            "stderr": tail(&attempt_dir.join("stderr.log")),
        })
        .to_string();
        if log == last {
            continue;
        }
        match store.set_live_log(&run_id, &block_id, attempt, &log).await {
            Ok(true) => last = log,
            Ok(false) => return,
            Err(error) => tracing::debug!(%error, "cannot publish a running attempt's output"),
        }
    }
}

/// A [`factory_llm::Progress`] that keeps the end of an `llm` reply as it
/// streams in, and the receiver [`publish_reply`] reads it from. Telling it is
/// cheap: it copies at most [`TAIL_BYTES`], and at most every 200 ms (a reply
/// arrives in thousands of pieces; the page shows it once a second).
pub(crate) fn reply_channel() -> (factory_llm::Progress, tokio::sync::watch::Receiver<String>) {
    let (sender, receiver) = tokio::sync::watch::channel(String::new());
    let last: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let progress: factory_llm::Progress = Arc::new(move |text: &str| {
        if let Ok(mut last) = last.lock() {
            if last.is_some_and(|at| at.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let mut start = text.len().saturating_sub(TAIL_BYTES as usize);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        sender.send_replace(text[start..].to_string());
    });
    (progress, receiver)
}

/// Publishes an `llm` attempt's reply so far (`{"reply": …}`) every second
/// while it changes, until aborted or the lease has moved on.
pub(crate) async fn publish_reply(
    store: Arc<dyn Store>,
    run_id: String,
    block_id: String,
    attempt: u32,
    mut reply: tokio::sync::watch::Receiver<String>,
) {
    loop {
        if reply.changed().await.is_err() {
            return;
        }
        let log = serde_json::json!({ "reply": reply.borrow_and_update().clone() }).to_string();
        match store.set_live_log(&run_id, &block_id, attempt, &log).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => tracing::debug!(%error, "cannot publish a running reply"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The last [`TAIL_BYTES`] of a file as text, from a line start when cut.
pub(crate) fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = size.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let from = if start > 0 {
        bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1)
    } else {
        0
    };
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_keeps_its_end_on_a_character_boundary_a_few_times_a_second() {
        let pause = || std::thread::sleep(Duration::from_millis(210));
        let (progress, reply) = reply_channel();
        progress("short");
        assert_eq!(*reply.borrow(), "short");
        progress("short and more");
        assert_eq!(*reply.borrow(), "short", "within 200 ms: not copied again");
        pause();
        let long = format!("{}é{}", "a".repeat(9_000), "z".repeat(100));
        progress(&long);
        let kept = reply.borrow().clone();
        assert!(kept.len() <= TAIL_BYTES as usize && kept.ends_with('z'));
        pause();
        let accents = "é".repeat(5_000);
        progress(&accents);
        assert!(reply.borrow().chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_tail_of_a_long_file_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        assert_eq!(tail(&path), "", "no file yet");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(tail(&path), "one\ntwo\n");
        let long: String = (0..2_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &long).unwrap();
        let shown = tail(&path);
        assert!(
            shown.len() as u64 <= TAIL_BYTES && shown.starts_with("line "),
            "{shown:.40}"
        );
        assert!(shown.ends_with("line 1999\n"));
    }
}
