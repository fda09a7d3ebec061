//! The stream templates a process runs (`factory serve`, `factory worker
//! --templates`): one [`StreamRunner`] per stream template it is given,
//! started when it appears, started anew when its source changes, stopped
//! when it goes. Several processes may run the same template: claims,
//! moves and cron ticks are taken in the store, so each record moves once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use factory_core::Pipeline;

use crate::{Engine, StreamRunner};

/// A template the caller knows of, and where its steps' scripts live.
#[derive(Debug, Clone)]
pub struct StreamSource {
    pub source: String,
    /// The template's folder (absolute: steps run in their own directory).
    pub dir: Option<PathBuf>,
}

struct Running {
    source: String,
    pipeline: Arc<Pipeline>,
    runner: StreamRunner,
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
        running.get(id).map(|r| r.pipeline.clone())
    }

    /// Every stream template this process runs, by id.
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

    /// Runs exactly the stream templates among `sources` (others are
    /// skipped; the first of an id wins). Runners of templates that changed
    /// or went are stopped in the background: a batch in flight may take up
    /// to its block's timeout.
    pub fn refresh(&self, sources: Vec<StreamSource>) {
        let mut wanted: HashMap<String, (String, Arc<Pipeline>, Option<PathBuf>)> = HashMap::new();
        for StreamSource { source, dir } in sources {
            let Ok(pipeline) = crate::cached_pipeline(&source) else {
                continue;
            };
            if pipeline.stream().is_none() {
                continue;
            }
            let id = pipeline.template().id.clone();
            wanted.entry(id).or_insert((source, pipeline, dir));
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
                tracing::info!(template = %id, "stream template changed or removed: stopping its runner");
                tokio::spawn(r.runner.stop());
            }
        }
        for (id, (source, pipeline, dir)) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            if let Some(runner) = StreamRunner::start(self.engine.clone(), pipeline.clone(), dir) {
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
        let runners: Vec<StreamRunner> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, r)| r.runner).collect(),
            Err(_) => Vec::new(),
        };
        for runner in runners {
            runner.stop().await;
        }
    }
}

/// The templates of a folder (`*.json`, with their folder as the steps'
/// directory), for [`StreamSet::refresh`].
pub fn folder_sources(dir: &std::path::Path) -> Vec<StreamSource> {
    crate::template_files(dir)
        .into_iter()
        .map(|(path, source)| StreamSource {
            source,
            dir: std::fs::canonicalize(&path)
                .ok()
                .and_then(|p| p.parent().map(|d| d.to_path_buf())),
        })
        .collect()
}
