//! The stream templates this server runs: one [`StreamRunner`] per stream
//! template of the catalog (the templates folder and registered ones),
//! started when it appears, started anew when its source changes, stopped
//! when it goes. Webhook deliveries find their template here rather than
//! re-reading the catalog per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use factory_core::Pipeline;
use factory_engine::StreamRunner;

use crate::AppState;

struct Running {
    source: String,
    pipeline: Arc<Pipeline>,
    runner: StreamRunner,
}

#[derive(Default)]
pub(crate) struct Streams {
    running: Mutex<HashMap<String, Running>>,
}

impl Streams {
    /// The validated stream template `id`, if this server runs it.
    pub fn pipeline(&self, id: &str) -> Option<Arc<Pipeline>> {
        let running = self.running.lock().ok()?;
        running.get(id).map(|r| r.pipeline.clone())
    }

    /// Every stream template this server runs.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Arc<Pipeline>> = running.values().map(|r| r.pipeline.clone()).collect();
        all.sort_by(|a, b| a.template().id.cmp(&b.template().id));
        all
    }

    /// Records of `id` arrived or were retried: its stages look now.
    pub fn wake(&self, id: &str) {
        if let Ok(running) = self.running.lock()
            && let Some(r) = running.get(id)
        {
            r.runner.wake();
        }
    }

    /// Brings the runners in line with the catalog.
    pub async fn refresh(&self, state: &AppState) {
        let catalog = match crate::templates::catalog(state).await {
            Ok(catalog) => catalog,
            Err(error) => {
                tracing::warn!(error = %error.message, "cannot read the template catalog");
                return;
            }
        };
        let mut wanted: HashMap<String, (String, Arc<Pipeline>, Option<PathBuf>)> = HashMap::new();
        for entry in catalog {
            let Ok(pipeline) = factory_engine::cached_pipeline(&entry.source) else {
                continue;
            };
            if pipeline.stream().is_none() {
                continue;
            }
            // Absolute: steps run in their own working directory.
            let dir = entry
                .path_buf()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .and_then(|p| p.parent().map(|d| d.to_path_buf()));
            wanted.insert(entry.id.clone(), (entry.source, pipeline, dir));
        }
        let mut stopping = Vec::new();
        {
            let Ok(mut running) = self.running.lock() else {
                return;
            };
            let gone: Vec<String> = running
                .iter()
                .filter(|(id, r)| {
                    wanted
                        .get(*id)
                        .is_none_or(|(source, _, _)| *source != r.source)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(r) = running.remove(&id) {
                    stopping.push(r.runner);
                }
            }
            for (id, (source, pipeline, dir)) in wanted {
                if running.contains_key(&id) {
                    continue;
                }
                if let Some(runner) =
                    StreamRunner::start(state.engine.clone(), pipeline.clone(), dir)
                {
                    running.insert(
                        id,
                        Running {
                            source,
                            pipeline,
                            runner,
                        },
                    );
                }
            }
        }
        // Stopped in the background: a batch in flight may take up to its
        // block's timeout, and the catalog keeps being followed meanwhile.
        for runner in stopping {
            tracing::info!(
                template = runner.template_id(),
                "stream template changed or removed: stopping its runner"
            );
            tokio::spawn(runner.stop());
        }
    }

    /// Stops every runner (server shutdown); batches in flight finish.
    pub async fn stop_all(&self) {
        let runners: Vec<StreamRunner> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, r)| r.runner).collect(),
            Err(_) => Vec::new(),
        };
        for runner in runners {
            runner.stop().await;
        }
    }
}

/// Keeps the runners in line with the catalog until the server stops.
pub(crate) async fn keep_running(
    state: Arc<AppState>,
    grace: std::time::Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        state.streams.refresh(&state).await;
    }
    // Batches in flight finish within the shutdown grace, or are taken
    // again after the restart (their leases run out).
    if tokio::time::timeout(grace, state.streams.stop_all())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "stream batches still running at shutdown; their records are taken again after the restart"
        );
    }
}
