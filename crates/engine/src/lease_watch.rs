//! Leases kept alive, and attempts stopped when their lease is gone.
//!
//! A worker renews its leases every lease/3. When another worker has taken a
//! block over (the lease expired while this one was cut off, and the other
//! abandoned the attempt and started its own), the renewal no longer returns
//! that lease; when this worker cannot renew at all for a whole lease, it must
//! assume the same. Either way the attempt is stopped — its process group
//! killed, its task (and any LLM call in it) cancelled — instead of being
//! finished into a commit that would be refused as stale, after doing its
//! side effects a second time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factory_core::run::Millis;
use factory_store::Store;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::now_ms;

/// An attempt this drive runs.
pub(crate) struct Running {
    /// Set right after the task is spawned.
    abort: Option<AbortHandle>,
    /// Its process group, once a command has started.
    pub(crate) pid: Arc<Mutex<Option<i32>>>,
    /// Leases renewed before this were asked for before the attempt began.
    since: Instant,
}

/// The attempts one drive runs, by (block, attempt). A task takes its own
/// entry out when it finishes; the watcher takes it out when the lease is
/// lost. Whoever takes it out reports it, so each attempt is reported once.
#[derive(Clone, Default)]
pub(crate) struct RunningAttempts(Arc<Mutex<BTreeMap<(String, u32), Running>>>);

impl RunningAttempts {
    /// Registers an attempt before its task starts (so a task that finishes
    /// at once still finds its entry); returns the slot for its process id.
    pub(crate) fn insert(&self, block: &str, attempt: u32) -> Arc<Mutex<Option<i32>>> {
        let pid = Arc::new(Mutex::new(None));
        if let Ok(mut map) = self.0.lock() {
            map.insert(
                (block.to_string(), attempt),
                Running {
                    abort: None,
                    pid: pid.clone(),
                    since: Instant::now(),
                },
            );
        }
        pid
    }

    pub(crate) fn set_abort(&self, block: &str, attempt: u32, abort: AbortHandle) {
        if let Ok(mut map) = self.0.lock()
            && let Some(running) = map.get_mut(&(block.to_string(), attempt))
        {
            running.abort = Some(abort);
        }
    }

    /// True if the entry was still there (the attempt was not stopped).
    pub(crate) fn finish(&self, block: &str, attempt: u32) -> bool {
        self.0
            .lock()
            .is_ok_and(|mut map| map.remove(&(block.to_string(), attempt)).is_some())
    }

    /// Stops and removes every attempt `lost` picks; returns them.
    fn stop_where(&self, lost: impl Fn(&(String, u32), &Running) -> bool) -> Vec<(String, u32)> {
        let Ok(mut map) = self.0.lock() else {
            return Vec::new();
        };
        let keys: Vec<(String, u32)> = map
            .iter()
            .filter(|(key, running)| lost(key, running))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            if let Some(running) = map.remove(key) {
                if let Some(pid) = running.pid.lock().ok().and_then(|p| *p) {
                    factory_runtime::process::kill_process_group(pid);
                }
                if let Some(abort) = running.abort {
                    abort.abort();
                }
            }
        }
        keys
    }
}

/// An attempt stopped because its lease was lost.
#[derive(Debug)]
pub(crate) struct LostLease {
    pub(crate) block: String,
    pub(crate) attempt: u32,
    pub(crate) reason: String,
}

/// Renews `owner`'s leases every lease/3 and stops the attempts of `run_id`
/// in `running` whose lease is gone, reporting each on `lost`.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    owner: String,
    lease_ms: u64,
    run_id: String,
    running: RunningAttempts,
    lost: mpsc::UnboundedSender<LostLease>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_millis((lease_ms / 3).max(10));
        let lease = Duration::from_millis(lease_ms);
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            let asked = Instant::now();
            let until = now_ms() + lease_ms as Millis;
            // A cut link drops packets without an error: a renewal that is
            // not answered within the period counts as failed, or the watch
            // would wait on it long after the lease ran out.
            let renewal =
                match tokio::time::timeout(period, store.renew_leases(&owner, until)).await {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(_) => Err(format!("not answered within {} ms", period.as_millis())),
                };
            let stopped = match renewal {
                Ok(held) => {
                    last_renewed = asked;
                    let held: BTreeSet<(&str, u32)> = held
                        .iter()
                        .filter(|h| h.run_id == run_id)
                        .map(|h| (h.block_id.as_str(), h.attempt))
                        .collect();
                    let gone = running.stop_where(|(block, attempt), r| {
                        r.since < asked && !held.contains(&(block.as_str(), *attempt))
                    });
                    with_reason(gone, "its lease was taken over by another worker")
                }
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed");
                    if asked.duration_since(last_renewed) < lease {
                        continue;
                    }
                    let gone = running.stop_where(|_, _| true);
                    with_reason(
                        gone,
                        "its lease could not be renewed for a whole lease period",
                    )
                }
            };
            for lease_lost in stopped {
                tracing::warn!(
                    run = %run_id,
                    block = %lease_lost.block,
                    attempt = lease_lost.attempt,
                    reason = %lease_lost.reason,
                    "attempt stopped: lease lost"
                );
                crate::telemetry::lease_lost();
                let _ = lost.send(lease_lost);
            }
        }
    })
}

fn with_reason(gone: Vec<(String, u32)>, reason: &str) -> Vec<LostLease> {
    gone.into_iter()
        .map(|(block, attempt)| LostLease {
            block,
            attempt,
            reason: reason.to_string(),
        })
        .collect()
}
