//! The engine drives runs: it asks the pure core what to do, executes blocks
//! through the runtimes and persists every step through a store.
//!
//! Architecture Invariant: every change to a run goes through
//! [`RunHandle::apply`]: compute events from the current document, fold them
//! in, let the scheduler add what follows, then write events and document in
//! one optimistic transaction. A conflict (someone else wrote first) reloads
//! and recomputes, so several processes can act on one run safely.

mod audit;
pub mod chat;
mod driver;
mod fan_out;
pub mod feedback;
pub mod fixtures;
mod gaps;
mod handle;
mod inputs;
mod lease_watch;
mod lens;
mod live_log;
mod memo;
mod meta_audit;
mod notifier;
mod owner;
mod permits;
mod slots;
mod spool;
mod stream;
mod stream_set;
pub mod supervisor;
mod telemetry;
mod triggers;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use factory_core::diagnostics::Diagnostic;
use factory_core::run::{EventRecord, Millis, RunDoc};
use factory_core::transitions::{
    self, CreateRunError, Policy, Principal, RunRequest, TransitionError,
};
use factory_core::{ApplyError, Pipeline};
use factory_store::{NewBlob, NewRun, RunRecord, Store, StoreError};

pub use driver::Outcome;

/// An input file given when a run is created (a block's `inputs.files`
/// picks it by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFile {
    pub name: String,
    pub content: Vec<u8>,
}

/// Why `name` cannot name an uploaded file, if it cannot: a plain name of
/// printable characters, at most 200 bytes, without slashes, not starting
/// with a dot (blocks find uploads by name under `inputs/uploads/`).
pub fn file_name_problem(name: &str) -> Option<String> {
    let bad = name.trim() != name
        || name.is_empty()
        || name.len() > 200
        || name.contains(['/', '\\'])
        || name.starts_with('.')
        || name.chars().any(char::is_control);
    bad.then(|| {
        format!(
            "file name {name:?} is not allowed: use a plain name of printable characters, without slashes, that does not start with a dot"
        )
    })
}
pub use handle::{Claim, RunHandle, cached_pipeline};
pub use owner::Owner;
pub use stream::{Delivered, StreamRunner};
pub use stream_set::{StreamSet, StreamSource, folder_sources};
pub use triggers::StarterRunner;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the template is invalid:\n{}", render_diagnostics(.0))]
    InvalidTemplate(Vec<Diagnostic>),
    #[error("cannot create the run:\n{0}")]
    CreateRun(#[from] CreateRunError),
    #[error("blocks of this run cannot run:\n{}", .0.join("\n"))]
    LlmSetup(Vec<String>),
    #[error("golden example files not found (paths are relative to the template): {}", .0.join(", "))]
    MissingGolden(Vec<String>),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("internal error: an event did not apply: {0}")]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A review submission or item update that cannot be taken as sent.
    #[error("{0}")]
    BadReview(String),
    /// A rating that cannot be taken (not a lens output, not done, a bad score).
    #[error("{0}")]
    BadRating(String),
    /// A decision on a gap that cannot be taken (no such gap, no change).
    #[error(transparent)]
    Gap(#[from] factory_core::gaps::DecisionError),
    #[error(transparent)]
    Chat(#[from] chat::ChatError),
    #[error("{0} not found")]
    NotFound(String),
    /// A delivery to a stream that names no record.
    #[error("the delivery names no record: {0}")]
    BadDelivery(String),
    #[error(
        "template `{0}` is a stream template: it has no runs. `factory serve` runs its blocks and takes its records at POST /api/v1/hooks/{0}/<intake block>"
    )]
    StreamTemplate(String),
    /// Something the request needs is not running right now; try again.
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "record `{key}` is not failed (it is {status} in state `{state}`); only a failed record is retried"
    )]
    RecordNotFailed {
        key: String,
        state: String,
        status: String,
    },
    /// A block marked done cannot emit its declared events (its attempt
    /// was checked when it ended, so its stored artifact changed or is gone).
    #[error("{0}")]
    Emit(String),
    #[error("run `{run_id}` kept changing underneath this process; gave up after {tries} tries")]
    TooManyConflicts { run_id: String, tries: u32 },
}

fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.render("template"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What an [`Observer`] sees of a run after a commit: the document and how
/// many blocks are in each status (kept by the engine, so an observer need
/// not count a large run's blocks for every event).
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub doc: &'a RunDoc,
    pub counts: factory_core::scheduler::StatusCounts,
}

/// Called with every committed event and the run after it.
pub type Observer = Arc<dyn Fn(&EventRecord, &Observed<'_>) + Send + Sync>;

/// How the engine behaves; defaults suit a person at a terminal.
#[derive(Clone)]
pub struct EngineConfig {
    pub policy: Policy,
    /// Blocks running at once per run, across all workers (0: no limit).
    pub max_concurrency: usize,
    /// Blocks this process runs at once across all the runs it drives (0:
    /// no limit), shared fairly between runs that have work.
    pub worker_slots: usize,
    /// Attempt directories live under `<work_root>/<run>/<block>/attempt-<n>`.
    pub work_root: PathBuf,
    /// Keep attempt directories of successful attempts (failed ones are always kept).
    pub keep_work_dirs: bool,
    /// Recorded as the actor of approvals, rejections and retries.
    pub actor: String,
    pub observer: Option<Observer>,
    /// Configured LLM providers; `llm` blocks need them.
    pub llm: Option<Arc<factory_runtime::llm::LlmSettings>>,
    /// Notification channels and rules (`[notifications]` in factory.toml);
    /// [`Engine::run_notifier`] sends them.
    pub notifications: Option<Arc<factory_notify::Notifications>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: Policy::default(),
            max_concurrency: 8,
            worker_slots: 0,
            work_root: std::env::temp_dir().join("process-factory"),
            keep_work_dirs: false,
            actor: "cli".to_string(),
            observer: None,
            llm: None,
            notifications: None,
        }
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    config: EngineConfig,
    owner: Owner,
    /// Set by [`Engine::stop_starting`]: running attempts finish, no new ones start.
    stopping: std::sync::atomic::AtomicBool,
    slots: slots::SlotPool,
    queue_depth: telemetry::QueueDepth,
    /// One per run being driven: [`Engine::wake`] ends its wait for other
    /// workers' blocks.
    wakers: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// The stream deliveries' writer, started with the first delivery.
    intake: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<stream::Pending>>>,
}

/// The folder of a template file: what its blocks read lives there. A file
/// named without a folder (`t.json`, run from its own folder) has the empty
/// path as its parent, which names no folder: the current one is meant.
fn template_folder(path: &std::path::Path) -> Option<std::path::PathBuf> {
    std::path::absolute(path)
        .ok()?
        .parent()
        .map(std::path::Path::to_path_buf)
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The `*.json` files of a templates folder, sorted by path, with their
/// text (unreadable ones skipped): the server's catalog and a worker's
/// stream templates read a folder the same way.
pub fn template_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<std::path::PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let source = std::fs::read_to_string(&path).ok()?;
            Some((path, source))
        })
        .collect()
}

/// Parses and validates template source, or returns every error found.
pub fn load_pipeline(source: &str) -> Result<Pipeline> {
    pipeline_of(factory_core::validate_str(source))
}

/// [`load_pipeline`] for the template a stored run was created with: checks
/// added since it was stored warn instead of refusing it
/// ([`factory_core::validate_stored_str`]).
pub fn load_stored_pipeline(source: &str) -> Result<Pipeline> {
    pipeline_of(factory_core::validate_stored_str(source))
}

fn pipeline_of(validated: factory_core::Validated) -> Result<Pipeline> {
    match validated.pipeline {
        Some(pipeline) => Ok(pipeline),
        None => Err(EngineError::InvalidTemplate(validated.diagnostics)),
    }
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, mut config: EngineConfig) -> Engine {
        let owner = Owner::current();
        // Every worker of the store keeps each provider's concurrency limit
        // together with the others (see `permits.rs`).
        let limit = Arc::new(permits::StoreLimit::new(store.clone(), owner.id()));
        config.llm = config
            .llm
            .map(|settings| Arc::new(settings.sharing_limits(limit)));
        Engine {
            store,
            owner,
            stopping: std::sync::atomic::AtomicBool::new(false),
            slots: slots::SlotPool::new(config.worker_slots),
            queue_depth: telemetry::QueueDepth::default(),
            wakers: std::sync::Mutex::new(std::collections::HashMap::new()),
            intake: std::sync::Mutex::new(None),
            config,
        }
    }

    /// Tells a drive of `run_id` in this process that the run changed (a
    /// notification from the store): if it waits for blocks other workers
    /// run, it looks again now instead of at its next poll.
    pub fn wake(&self, run_id: &str) {
        let waker = self.wakers.lock().ok().and_then(|w| w.get(run_id).cloned());
        if let Some(waker) = waker {
            waker.notify_one();
        }
    }

    /// The waker a drive of `run_id` waits on (one per run and process).
    pub(crate) fn waker(&self, run_id: &str) -> Arc<tokio::sync::Notify> {
        match self.wakers.lock() {
            Ok(mut wakers) => wakers.entry(run_id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    pub(crate) fn forget_waker(&self, run_id: &str) {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers.remove(run_id);
        }
    }

    /// Graceful shutdown: `drive` lets running attempts finish, starts no
    /// new ones, and returns [`Outcome::Stopped`].
    pub fn stop_starting(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Validates the template, checks params and env, and stores a new run
    /// with its first scheduling decisions. Does not execute anything.
    pub async fn create_run(
        &self,
        template_source: &str,
        template_path: Option<&std::path::Path>,
        request: RunRequest,
    ) -> Result<RunDoc> {
        self.create_run_by(&self.config.actor, template_source, template_path, request)
            .await
    }

    /// [`Engine::create_run`] recorded as `actor`'s doing.
    pub async fn create_run_by(
        &self,
        actor: &str,
        template_source: &str,
        template_path: Option<&std::path::Path>,
        request: RunRequest,
    ) -> Result<RunDoc> {
        self.create_run_with_files(actor, template_source, template_path, request, &[])
            .await
    }

    /// What keeps a run of this template from starting here (its LLM
    /// providers and skills, `http` URLs, golden files), grouped by problem;
    /// empty when a run can start. For forms that say so before anyone tries.
    pub fn run_problems(
        &self,
        template_source: &str,
        template_path: Option<&std::path::Path>,
        request: &RunRequest,
    ) -> Result<Vec<String>> {
        let pipeline = handle::cached_pipeline(template_source)?;
        let template_dir = template_path.and_then(template_folder);
        let template_dir = template_dir.as_deref();
        let mut problems =
            llm_problems(&pipeline, request, template_dir, self.config.llm.as_deref());
        let missing = audit::missing_golden(&pipeline, template_dir);
        if !missing.is_empty() {
            problems.push(format!(
                "golden example files not found (paths are relative to the template): {}",
                missing.join(", ")
            ));
        }
        Ok(problems)
    }

    /// [`Engine::create_run_by`] with input files (a block's `inputs.files`
    /// picks them by name), stored in the run's first commit: a block can
    /// never start before its files are there.
    pub async fn create_run_with_files(
        &self,
        actor: &str,
        template_source: &str,
        template_path: Option<&std::path::Path>,
        mut request: RunRequest,
        files: &[RunFile],
    ) -> Result<RunDoc> {
        let pipeline = handle::cached_pipeline(template_source)?;
        if pipeline.stream().is_some() {
            return Err(EngineError::StreamTemplate(pipeline.template().id.clone()));
        }
        let template_dir = template_path.and_then(template_folder);
        let template_dir = template_dir.as_deref();
        let problems = llm_problems(
            &pipeline,
            &request,
            template_dir,
            self.config.llm.as_deref(),
        );
        if !problems.is_empty() {
            return Err(EngineError::LlmSetup(problems));
        }
        let missing = audit::missing_golden(&pipeline, template_dir);
        if !missing.is_empty() {
            return Err(EngineError::MissingGolden(missing));
        }
        if request.run_id.is_empty() {
            request.run_id = uuid::Uuid::now_v7().to_string();
        }
        // Lens blocks with a feedback loop start from what people said.
        if pipeline
            .template()
            .blocks
            .iter()
            .any(|b| b.lens.as_ref().is_some_and(|l| l.feedback_loop))
        {
            request.ratings =
                lens::template_ratings(self.store.as_ref(), &pipeline.template().id).await?;
        }
        let created = transitions::create_run(&pipeline, &request, &|name| {
            std::env::var_os(name).is_some_and(|v| !v.is_empty())
        })?;
        let now = now_ms();
        let record = EventRecord {
            seq: 1,
            at: now,
            actor: actor.to_string(),
            event: created,
        };
        let mut doc = RunDoc::from_created(&record)?;
        let mut records = vec![record];
        let decision = factory_core::decide(
            &pipeline,
            &doc,
            now,
            doc.concurrency_limit(self.config.max_concurrency),
        );
        records.extend(factory_core::commit(
            &mut doc,
            decision.events,
            "scheduler",
            now,
        )?);
        let template_path = template_path
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
            .map(|p| p.to_string_lossy().into_owned());
        let blobs: Vec<NewBlob> = files
            .iter()
            .map(|file| NewBlob::new(file.content.clone()))
            .collect();
        let side: Vec<RunRecord> = files
            .iter()
            .zip(&blobs)
            .map(|(file, blob)| RunRecord {
                run_id: doc.run_id.clone(),
                template_id: doc.template_id.clone(),
                kind: factory_store::kinds::UPLOAD.to_string(),
                key: file.name.clone(),
                actor: actor.to_string(),
                at: now,
                body: serde_json::json!({
                    "name": file.name,
                    "hash": blob.hash,
                    "size": file.content.len(),
                }),
            })
            .collect();
        self.store
            .create_run(NewRun {
                doc: &doc,
                records: &records,
                template_json: template_source,
                template_path: template_path.as_deref(),
                blobs: &blobs,
                side: &side,
            })
            .await?;
        self.notify_new(&records, &doc);
        Ok(doc)
    }

    /// Opens a run for commands.
    pub async fn open(&self, run_id: &str) -> Result<RunHandle> {
        let run_id = self.store.resolve_run_id(run_id).await?;
        RunHandle::load(self.store.clone(), &run_id, self.config.max_concurrency).await
    }

    pub async fn approve(&self, run_id: &str, block: &str, note: Option<String>) -> Result<RunDoc> {
        self.approve_by(&self.config.actor, run_id, block, note)
            .await
    }

    /// Approves the gate `block` waits at, as `actor` (the gate's
    /// `separate_reviewer` rule is checked against the run's event log).
    pub async fn approve_by(
        &self,
        actor: &str,
        run_id: &str,
        block: &str,
        note: Option<String>,
    ) -> Result<RunDoc> {
        self.approve_as(Principal::new(actor), run_id, block, note)
            .await
    }

    /// [`Engine::approve_by`] for a principal that may act for someone else
    /// (a review link for the person who minted it).
    pub async fn approve_as(
        &self,
        principal: Principal<'_>,
        run_id: &str,
        block: &str,
        note: Option<String>,
    ) -> Result<RunDoc> {
        let actor = principal.actor;
        let mut handle = self.open(run_id).await?;
        let log = self.store.events(&handle.doc().run_id, 0).await?;
        // A corrections router someone gated: it routes when approved.
        let route_items = match handle.pipeline().block(block) {
            Some(spec) if feedback::is_router(spec) => Some(
                feedback::accepted_items(self.store.as_ref(), &handle.doc().run_id, spec).await?,
            ),
            _ => None,
        };
        let records = handle
            .apply(actor, |pipeline, doc, now| {
                let mut events = vec![transitions::approve_as(
                    pipeline,
                    doc,
                    &log,
                    block,
                    principal,
                    note.clone(),
                )?];
                if let Some(items) = &route_items {
                    let routing =
                        feedback::routing_after(pipeline, doc, block, &events, items, now)?;
                    events.extend(routing);
                }
                Ok(events)
            })
            .await?;
        self.notify(&records, &handle);
        self.resolve_completed(&mut handle, actor, &records).await?;
        Ok(handle.doc().clone())
    }

    pub async fn reject(&self, run_id: &str, block: &str, feedback: &str) -> Result<RunDoc> {
        self.reject_by(&self.config.actor, run_id, block, feedback)
            .await
    }

    pub async fn reject_by(
        &self,
        actor: &str,
        run_id: &str,
        block: &str,
        feedback: &str,
    ) -> Result<RunDoc> {
        let mut handle = self.open(run_id).await?;
        let records = handle
            .apply(actor, |pipeline, doc, _| {
                Ok(vec![transitions::reject(
                    pipeline, doc, block, feedback, actor,
                )?])
            })
            .await?;
        self.notify(&records, &handle);
        Ok(handle.doc().clone())
    }

    pub async fn retry(&self, run_id: &str, block: &str) -> Result<RunDoc> {
        self.retry_by(&self.config.actor, run_id, block).await
    }

    pub async fn retry_by(&self, actor: &str, run_id: &str, block: &str) -> Result<RunDoc> {
        let mut handle = self.open(run_id).await?;
        let reason = format!("manual retry by {actor}");
        let records = handle
            .apply(actor, |pipeline, doc, _| {
                Ok(transitions::retry(pipeline, doc, block, &reason)?)
            })
            .await?;
        self.notify(&records, &handle);
        Ok(handle.doc().clone())
    }

    /// Changes one block's autonomy for this run only (whoever started a
    /// block may not lower its separate reviewer's gate).
    pub async fn set_autonomy_by(
        &self,
        principal: Principal<'_>,
        run_id: &str,
        block: &str,
        autonomy: factory_core::template::Autonomy,
    ) -> Result<RunDoc> {
        let mut handle = self.open(run_id).await?;
        let log = self.store.events(&handle.doc().run_id, 0).await?;
        let records = handle
            .apply(principal.actor, |pipeline, doc, _| {
                Ok(vec![transitions::set_autonomy(
                    pipeline, doc, &log, block, autonomy, principal,
                )?])
            })
            .await?;
        self.notify(&records, &handle);
        Ok(handle.doc().clone())
    }

    pub(crate) fn notify(&self, records: &[EventRecord], handle: &RunHandle) {
        self.notify_observer(
            records,
            &Observed {
                doc: handle.doc(),
                counts: handle.counts(),
            },
        );
    }

    /// [`Engine::notify`] for a run that has no handle yet.
    fn notify_new(&self, records: &[EventRecord], doc: &RunDoc) {
        let counts = factory_core::scheduler::StatusCounts::of(doc);
        self.notify_observer(records, &Observed { doc, counts });
    }

    fn notify_observer(&self, records: &[EventRecord], observed: &Observed<'_>) {
        if let Some(observer) = &self.config.observer {
            for record in records {
                observer(record, observed);
            }
        }
    }
}

/// Every `llm` block's model must resolve to a configured provider and its
/// skill file must exist, before anything runs. Blocks with the same problem
/// are one line ("22 blocks (a, b, c and 19 more): …"), so a template that
/// cannot run for one reason says it once.
fn llm_problems(
    pipeline: &Pipeline,
    request: &RunRequest,
    template_dir: Option<&std::path::Path>,
    settings: Option<&factory_runtime::llm::LlmSettings>,
) -> Vec<String> {
    use factory_core::template::Runtime;
    let mut problems: Vec<(&str, String)> = Vec::new();
    for block in pipeline.blocks().iter().filter(|b| b.runtime.calls_model()) {
        match settings {
            Some(settings) => {
                let model = transitions::effective_model(
                    pipeline.template(),
                    block,
                    &request.models,
                    request.default_model.as_deref(),
                );
                let resolved = if block.runtime == Runtime::Llm {
                    settings.resolve(model).map(|_| ())
                } else if factory_core::media_options::is_optional(&block.inputs.config)
                    && settings.media_provider_missing(model, block.runtime)
                {
                    // Left out when it runs; the run may start.
                    Ok(())
                } else {
                    settings.resolve_media(model, block.runtime).map(|_| ())
                };
                if let Err(error) = resolved {
                    problems.push((&block.id, error));
                }
            }
            None if block.runtime.makes_media()
                && factory_core::media_options::is_optional(&block.inputs.config) => {}
            None => problems.push((&block.id, "no LLM provider is configured".to_string())),
        }
        if let (Some(skill), Some(dir)) = (&block.skill, template_dir) {
            match factory_runtime::llm::skill_path(dir, skill) {
                Err(error) => problems.push((&block.id, format!("skill {error}"))),
                Ok(path) if !path.is_file() => problems.push((
                    &block.id,
                    format!("skill file {} not found", path.display()),
                )),
                Ok(_) => {}
            }
        }
    }
    for block in pipeline
        .blocks()
        .iter()
        .filter(|b| b.runtime == Runtime::Http)
    {
        let env = |name: &str| std::env::var(name).ok();
        if let Some(problem) = factory_runtime::http::url_problem(&block.inputs.config, &env) {
            problems.push((&block.id, problem.to_string()));
        }
    }
    group_problems(problems)
}

/// One line per distinct problem, naming the blocks that have it (first
/// seen first; at most three names, then how many more).
fn group_problems(problems: Vec<(&str, String)>) -> Vec<String> {
    let mut grouped: Vec<(String, Vec<&str>)> = Vec::new();
    for (block, problem) in problems {
        match grouped.iter_mut().find(|(p, _)| *p == problem) {
            Some((_, blocks)) => blocks.push(block),
            None => grouped.push((problem, vec![block])),
        }
    }
    grouped
        .into_iter()
        .map(|(problem, blocks)| match blocks.as_slice() {
            [one] => format!("{one}: {problem}"),
            many => {
                let named = many[..many.len().min(3)].join(", ");
                let more = match many.len() {
                    0..=3 => String::new(),
                    n => format!(" and {} more", n - 3),
                };
                format!("{} blocks ({named}{more}): {problem}", many.len())
            }
        })
        .collect()
}

#[cfg(test)]
mod problem_tests {
    use super::group_problems;

    #[test]
    fn blocks_with_one_problem_are_one_line() {
        let grouped = group_problems(vec![
            ("a", "no provider".to_string()),
            ("b", "skill missing".to_string()),
            ("c", "no provider".to_string()),
            ("d", "no provider".to_string()),
            ("e", "no provider".to_string()),
            ("f", "no provider".to_string()),
        ]);
        assert_eq!(
            grouped,
            [
                "5 blocks (a, c, d and 2 more): no provider",
                "b: skill missing"
            ]
        );
        assert_eq!(
            group_problems(vec![("a", "x".into()), ("b", "x".into())]),
            ["2 blocks (a, b): x"]
        );
    }
}
