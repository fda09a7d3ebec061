//! `factory worker`: a standing process that serves every run of a store.
//!
//! It learns of work two ways: the store's change notifications (PostgreSQL
//! LISTEN/NOTIFY: every commit names its run, so an approval or a new run is
//! picked up at once and a drive waiting for other workers' blocks looks
//! again at once), and a scan for running runs, which catches what a
//! notification missed (a reconnect) and is the only way on SQLite. Each run
//! is driven by the [`Supervisor`]; blocks are claimed by committing
//! `block_started` against the run's current version, so workers on many
//! machines never start a block twice (see `ARCHITECTURE.md`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::Engine;
use crate::supervisor::Supervisor;

/// How a standing worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Runs driven at once.
    pub runs: usize,
    /// How often running runs are looked for without a notification.
    pub scan_interval: Duration,
    /// With change notifications, the scan is only a safety net.
    pub scan_interval_notified: Duration,
    /// How long shutdown waits for running blocks before handing them back.
    pub grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            runs: 64,
            scan_interval: Duration::from_millis(500),
            scan_interval_notified: Duration::from_secs(5),
            grace: Duration::from_secs(30),
        }
    }
}

/// Serves runs until `stop` turns true, then stops starting blocks, waits up
/// to the grace period for running ones to be recorded, and returns.
pub async fn serve(
    engine: Arc<Engine>,
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let supervisor = Arc::new(Supervisor::new(engine.clone(), options.runs));
    let mut changes = engine.store().subscribe().await?;
    let mut scan_every = if changes.is_some() {
        options.scan_interval_notified
    } else {
        options.scan_interval
    };
    tracing::info!(
        notifications = changes.is_some(),
        ?scan_every,
        "worker serving the store's runs"
    );
    let mut next_scan = tokio::time::Instant::now();
    while !*stop.borrow() {
        if tokio::time::Instant::now() >= next_scan {
            match engine.store().runs_with_status("running").await {
                Ok(runs) => {
                    for run in runs {
                        supervisor.kick(&run.run_id);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot list running runs"),
            }
            next_scan = tokio::time::Instant::now() + scan_every;
        }
        let notified = async {
            match changes.as_mut() {
                Some(feed) => feed.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next_scan) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            run = notified => match run {
                Some(run_id) => {
                    supervisor.kick(&run_id);
                    engine.wake(&run_id);
                }
                // The feed ended: fall back to scanning.
                None => {
                    changes = None;
                    scan_every = options.scan_interval;
                    next_scan = tokio::time::Instant::now();
                }
            },
        }
    }
    supervisor.shutdown(options.grace).await;
    Ok(())
}
