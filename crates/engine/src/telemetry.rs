//! What a worker reports about itself, through the `metrics` facade: the
//! process that installs a recorder (`factory serve`'s `/metrics`, `factory
//! worker --metrics-addr`) exposes them; without one they cost nothing.
//!
//! Names: `factory_worker_claims_total` (blocks this process started),
//! `factory_worker_lease_losses_total` (attempts stopped because another
//! worker took their block), `factory_worker_commit_conflicts_total` (writes
//! that lost a race and caught up), `factory_worker_attempts_running`,
//! `factory_worker_ready_blocks` (queue depth: ready blocks of the runs this
//! process drives, as of its last look) and the histogram
//! `factory_worker_attempt_duration_seconds` by `outcome`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub(crate) fn claimed(blocks: usize) {
    if blocks > 0 {
        metrics::counter!("factory_worker_claims_total").increment(blocks as u64);
    }
}

pub(crate) fn lease_lost() {
    metrics::counter!("factory_worker_lease_losses_total").increment(1);
}

pub(crate) fn conflict() {
    metrics::counter!("factory_worker_commit_conflicts_total").increment(1);
}

/// Counts an attempt as running until dropped, then records its duration.
pub(crate) struct AttemptTimer {
    started: Instant,
    outcome: &'static str,
}

impl AttemptTimer {
    pub(crate) fn start() -> AttemptTimer {
        metrics::gauge!("factory_worker_attempts_running").increment(1.0);
        AttemptTimer {
            started: Instant::now(),
            // Until told otherwise: a task aborted for a lost lease never says.
            outcome: "stopped",
        }
    }

    pub(crate) fn finished(&mut self, ok: bool) {
        self.outcome = if ok { "ok" } else { "failed" };
    }
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        metrics::gauge!("factory_worker_attempts_running").decrement(1.0);
        metrics::histogram!("factory_worker_attempt_duration_seconds", "outcome" => self.outcome)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Ready blocks per run this process drives; the gauge is their sum.
#[derive(Default)]
pub(crate) struct QueueDepth(Mutex<HashMap<String, usize>>);

impl QueueDepth {
    pub(crate) fn set(&self, run: &str, ready: usize) {
        if let Ok(mut runs) = self.0.lock() {
            if ready == 0 {
                runs.remove(run);
            } else {
                runs.insert(run.to_string(), ready);
            }
            metrics::gauge!("factory_worker_ready_blocks").set(runs.values().sum::<usize>() as f64);
        }
    }
}
