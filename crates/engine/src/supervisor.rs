//! The executors of a long-running process (`factory serve`, `factory
//! worker`): each run that has work is driven by one task at a time (the
//! engine's reclaim logic assumes one driver per run per process). A kick
//! while a run is being driven makes the task drive again once it returns,
//! so an approval never waits for the next scan. With no executors (`serve
//! --workers 0`) kicks do nothing: the runs are left to `factory worker`s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Engine;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub struct Supervisor {
    engine: Arc<Engine>,
    /// Runs being driven; the flag asks for one more pass.
    active: Mutex<HashMap<String, bool>>,
    /// Limits how many runs this process drives at once.
    permits: Arc<Semaphore>,
    /// 0: this process drives no runs.
    runs: usize,
    tasks: Mutex<JoinSet<()>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    /// Drives up to `workers` runs at once (0: none).
    pub fn new(engine: Arc<Engine>, workers: usize) -> Supervisor {
        Supervisor {
            engine,
            active: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(workers)),
            runs: workers,
            tasks: Mutex::new(JoinSet::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes sure `run_id` is being driven (or will be driven once more).
    pub fn kick(self: &Arc<Self>, run_id: &str) {
        if self.runs == 0 || self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        if let Some(again) = active.get_mut(run_id) {
            *again = true;
            return;
        }
        active.insert(run_id.to_string(), false);
        drop(active);
        let this = self.clone();
        let run_id = run_id.to_string();
        if let Ok(mut tasks) = self.tasks.lock() {
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(async move { this.drive_loop(run_id).await });
        }
    }

    async fn drive_loop(self: Arc<Self>, run_id: String) {
        loop {
            let outcome = match self.permits.clone().acquire_owned().await {
                Ok(_permit) => self.engine.drive(&run_id).await,
                Err(_) => break,
            };
            if let Err(error) = outcome {
                tracing::warn!(run = %run_id, %error, "driving the run stopped");
            }
            let Ok(mut active) = self.active.lock() else {
                break;
            };
            let again = active.get(&run_id).copied().unwrap_or(false);
            let stopping = self.stopping.load(std::sync::atomic::Ordering::SeqCst);
            if again && !stopping {
                active.insert(run_id.clone(), false);
                continue;
            }
            active.remove(&run_id);
            break;
        }
    }

    /// Stops starting blocks and waits up to `grace` for running ones to
    /// finish and be recorded. Blocks still running after that stay leased to this process;
    /// the next worker to look at the run (this server restarted, or any
    /// `factory resume`) sees the owner gone and runs them again.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.engine.stop_starting();
        let mut tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return,
        };
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown grace period over; blocks still running are handed back through their leases"
            );
            tasks.abort_all();
        }
    }
}
