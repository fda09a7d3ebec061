//! The run documents this server last served, by run and version.
//!
//! The hot read (`GET /api/v1/runs/{run}`) asks the store for the run's
//! version — one row — and serves the text it kept when the version is the
//! one it kept it at; otherwise it reads the run (the header, every block and
//! every attempt: dozens of rows) and keeps that. A commit always raises the
//! version, so a kept text is never older than the version just read (it may
//! be newer: the text is read after the version, and kept under the older
//! one, which the next commit replaces).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use factory_store::History;

/// Runs kept at most; past it the cache starts over.
const MAX_RUNS: usize = 256;
/// Documents larger than this are not kept (a 10,000-block run's is ~20 MB).
const MAX_DOC_BYTES: usize = 2 << 20;

#[derive(Default)]
pub(crate) struct DocCache {
    kept: Mutex<HashMap<(String, bool), (i64, Bytes)>>,
}

impl DocCache {
    /// The text kept for `run` at exactly `version`.
    pub(crate) fn get(&self, run: &str, history: History, version: i64) -> Option<Bytes> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(&(run.to_string(), history == History::All))
            .filter(|(at, _)| *at == version)
            .map(|(_, text)| text.clone())
    }

    pub(crate) fn put(&self, run: &str, history: History, version: i64, text: Bytes) {
        if text.len() > MAX_DOC_BYTES {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_RUNS {
            kept.clear();
        }
        kept.insert((run.to_string(), history == History::All), (version, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_document_serves_only_its_version_and_size_is_bounded() {
        let cache = DocCache::default();
        cache.put("r", History::All, 3, Bytes::from_static(b"{v3}"));
        assert_eq!(
            cache.get("r", History::All, 3).as_deref(),
            Some(&b"{v3}"[..])
        );
        assert_eq!(
            cache.get("r", History::All, 4),
            None,
            "a newer version reads again"
        );
        assert_eq!(
            cache.get("r", History::None, 3),
            None,
            "history=none is its own"
        );
        cache.put("r", History::All, 4, Bytes::from_static(b"{v4}"));
        assert_eq!(cache.get("r", History::All, 3), None);
        cache.put(
            "big",
            History::All,
            1,
            Bytes::from(vec![b' '; MAX_DOC_BYTES + 1]),
        );
        assert_eq!(cache.get("big", History::All, 1), None, "too large to keep");
        for n in 0..MAX_RUNS + 1 {
            cache.put(
                &format!("run-{n}"),
                History::All,
                1,
                Bytes::from_static(b"{}"),
            );
        }
        assert!(cache.kept.lock().unwrap().len() <= MAX_RUNS);
    }
}
