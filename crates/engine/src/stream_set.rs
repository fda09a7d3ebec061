//! The templates a process runs on its own (`factory serve`, `factory
//! worker --templates`): a [`StreamRunner`] per stream template and a
//! [`StarterRunner`] per dag-batch template whose `cron` or `event`
//! triggers start runs; started when a template appears, started anew when
//! its source changes, stopped when it goes. Several processes may run the
//! same template: claims, moves, ticks and started runs are taken in the
//! store, so each record moves once and each tick or event starts one run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use factory_core::Pipeline;

use crate::{Engine, StarterRunner, StreamRunner};

/// A template the caller knows of, and where it lives.
#[derive(Debug, Clone)]
pub struct StreamSource {
    pub source: String,
    /// The template's file (absolute: steps run in their own directory and
    /// find their scripts and skills beside it). None for a template
    /// registered in the store.
    pub path: Option<PathBuf>,
}

enum Runner {
    Stream(StreamRunner),
    Starters(StarterRunner),
}

impl Runner {
    async fn stop(self) {
        match self {
            Runner::Stream(runner) => runner.stop().await,
            Runner::Starters(runner) => runner.stop().await,
        }
    }
}

struct Running {
    source: String,
    pipeline: Arc<Pipeline>,
    runner: Runner,
}

pub struct StreamSet {
    engine: Arc<Engine>,
    running: Mutex<HashMap<String, Running>>,
}

impl StreamSet {
    pub fn new(engine: Arc<Engine>) -> StreamSet {
        StreamSet {
            engine,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The validated stream template `id`, if this process runs it.
    pub fn pipeline(&self, id: &str) -> Option<Arc<Pipeline>> {
        let running = self.running.lock().ok()?;
        running
            .get(id)
            .filter(|r| matches!(r.runner, Runner::Stream(_)))
            .map(|r| r.pipeline.clone())
    }

    /// Every stream template this process runs, by id.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Arc<Pipeline>> = running
            .values()
            .filter(|r| matches!(r.runner, Runner::Stream(_)))
            .map(|r| r.pipeline.clone())
            .collect();
        all.sort_by(|a, b| a.template().id.cmp(&b.template().id));
        all
    }

    /// Every dag-batch template whose triggers this process runs, by id.
    pub fn triggered(&self) -> Vec<Arc<Pipeline>> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Arc<Pipeline>> = running
            .values()
            .filter(|r| matches!(r.runner, Runner::Starters(_)))
            .map(|r| r.pipeline.clone())
            .collect();
        all.sort_by(|a, b| a.template().id.cmp(&b.template().id));
        all
    }

    /// Records of `id` arrived or were retried: its stages look now.
    pub fn wake(&self, id: &str) {
        if let Ok(running) = self.running.lock()
            && let Some(Running {
                runner: Runner::Stream(runner),
                ..
            }) = running.get(id)
        {
            runner.wake();
        }
    }

    /// Runs exactly the stream templates and the templates with run
    /// triggers among `sources` (others are skipped; the first of an id
    /// wins). Runners of templates that changed or went are stopped in the
    /// background: a batch in flight may take up to its block's timeout.
    pub fn refresh(&self, sources: Vec<StreamSource>) {
        let mut wanted: HashMap<String, (String, Arc<Pipeline>, Option<PathBuf>)> = HashMap::new();
        for StreamSource { source, path } in sources {
            let Ok(pipeline) = crate::cached_pipeline(&source) else {
                continue;
            };
            if pipeline.stream().is_none() && pipeline.starters().is_empty() {
                continue;
            }
            let id = pipeline.template().id.clone();
            wanted.entry(id).or_insert((source, pipeline, path));
        }
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
                tracing::info!(template = %id, "template changed or removed: stopping its triggers");
                tokio::spawn(r.runner.stop());
            }
        }
        for (id, (source, pipeline, path)) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let runner = if pipeline.stream().is_some() {
                let dir = path
                    .as_deref()
                    .and_then(|p| p.parent())
                    .map(|d| d.to_path_buf());
                StreamRunner::start(self.engine.clone(), pipeline.clone(), dir).map(Runner::Stream)
            } else {
                StarterRunner::start(self.engine.clone(), pipeline.clone(), source.clone(), path)
                    .map(Runner::Starters)
            };
            if let Some(runner) = runner {
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

    /// Stops every runner; batches in flight finish.
    pub async fn stop_all(&self) {
        let runners: Vec<Runner> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, r)| r.runner).collect(),
            Err(_) => Vec::new(),
        };
        for runner in runners {
            runner.stop().await;
        }
    }
}

/// The templates of a folder (`*.json`), for [`StreamSet::refresh`].
pub fn folder_sources(dir: &std::path::Path) -> Vec<StreamSource> {
    crate::template_files(dir)
        .into_iter()
        .map(|(path, source)| StreamSource {
            source,
            path: Some(std::fs::canonicalize(&path).unwrap_or(path)),
        })
        .collect()
}
