//! `factory serve`: the JSON API, live updates (server-sent events) and the
//! operator workbench pages, with the run executors in the same process.
//!
//! Layout: `api/` holds the JSON handlers, `pages/` the server-rendered HTML,
//! `auth` the tokens and the route → role table every request goes through,
//! `hub` the live event fan-out, `factory_engine::supervisor` the executors that drive runs.
//!
//! Architecture Invariant: the server never changes a run except through the
//! engine (which goes through the pure core's transitions), and every route's
//! required role is declared once, in [`auth::ROUTES`].

mod api;
pub mod auth;
mod caching;
mod doc_cache;
mod error;
mod guard;
mod hub;
mod metrics;
mod pages;
pub use factory_notify::signature;
mod streams;
mod templates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use factory_engine::{Engine, EngineConfig};
use factory_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::review::{ReviewLink, ReviewLinks, review_links};
pub use error::ApiError;
pub use hub::{Hub, LiveEvent};

/// How the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Accept requests without a token (only allowed on loopback addresses).
    pub no_auth: bool,
    /// A folder of template JSON files offered in the "new run" form.
    pub templates_dir: Option<PathBuf>,
    /// How many runs are driven at once by this process (0: none; the
    /// runs are left to `factory worker`s).
    pub workers: usize,
    /// How often runs started elsewhere (the CLI, another server) are looked for.
    pub scan_interval: Duration,
    /// How long shutdown waits for running blocks before handing them back.
    pub shutdown_grace: Duration,
    /// Largest uploaded file a run may be created with (decoded).
    pub max_upload_bytes: usize,
    /// Largest request body for run creation, files included (base64 adds a
    /// third); other requests keep axum's 2 MiB limit.
    pub max_request_bytes: usize,
    /// How long the event feed, webhook receipts and trigger firings are
    /// kept (pruned hourly); None keeps them.
    pub feed_retention: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            no_auth: false,
            templates_dir: None,
            workers: 4,
            scan_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
            max_upload_bytes: 10 * 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            feed_retention: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "--no-auth is only allowed on a loopback address (127.0.0.1 or ::1), not {0}; create a token with `factory token create --role admin` instead"
    )]
    NoAuthOffLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler needs.
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub supervisor: Arc<factory_engine::supervisor::Supervisor>,
    pub config: ServerConfig,
    pub llm: Option<Arc<factory_runtime::llm::LlmSettings>>,
    pub metrics: metrics::Metrics,
    pub tokens: auth::TokenCache,
    /// Run documents last served, by version (the hot read's copy).
    pub docs: doc_cache::DocCache,
    /// The stream templates this server runs, and their runners.
    pub streams: factory_engine::StreamSet,
    /// Turns true when the server stops; event streams end on it, or graceful
    /// shutdown would wait forever for an open browser tab.
    pub stopping: watch::Receiver<bool>,
}

pub(crate) type SharedState = Arc<AppState>;

/// A started server: where it listens, and how to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Stops accepting requests, lets in-flight blocks finish (up to the grace
    /// period), and returns once everything is closed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`RunningServer::shutdown`] or a signal).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(ServeError::Io(std::io::Error::other(join.to_string()))),
        }
    }

    /// A handle that stops the server when sent `true` (e.g. on Ctrl-C).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Binds, starts the executors and the HTTP server, and returns at once.
pub async fn start(
    store: Arc<dyn Store>,
    mut engine_config: EngineConfig,
    config: ServerConfig,
) -> Result<RunningServer, ServeError> {
    if config.no_auth && !config.addr.ip().is_loopback() {
        return Err(ServeError::NoAuthOffLoopback(config.addr));
    }
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr()?;

    let hub = Arc::new(Hub::new());
    let observer_hub = hub.clone();
    let previous = engine_config.observer.take();
    engine_config.observer = Some(Arc::new(move |record, run| {
        observer_hub.publish_live(record, run);
        if let Some(previous) = &previous {
            previous(record, run);
        }
    }));
    let llm = engine_config.llm.clone();
    let engine = Arc::new(Engine::new(store.clone(), engine_config));
    let supervisor = Arc::new(factory_engine::supervisor::Supervisor::new(
        engine.clone(),
        config.workers,
    ));
    let (stop, mut stopped) = watch::channel(false);
    let state = Arc::new(AppState {
        streams: factory_engine::StreamSet::new(engine.clone()),
        engine,
        store: store.clone(),
        hub: hub.clone(),
        supervisor: supervisor.clone(),
        config: config.clone(),
        llm,
        metrics: metrics::Metrics::new(),
        tokens: auth::TokenCache::default(),
        docs: doc_cache::DocCache::default(),
        stopping: stop.subscribe(),
    });
    // Stream templates take deliveries as soon as the server answers.
    streams::refresh(&state).await;
    let streams_task = tokio::spawn(streams::keep_running(
        state.clone(),
        config.shutdown_grace,
        config.feed_retention,
        stop.subscribe(),
    ));

    // Notifications (none configured: returns at once); stopped with the rest.
    let notifier = tokio::spawn(state.engine.clone().run_notifier(stop.subscribe()));
    let background = {
        let stopped = stop.subscribe();
        let store = store.clone();
        let hub = hub.clone();
        let supervisor = supervisor.clone();
        let interval = config.scan_interval;
        tokio::spawn(async move {
            background_loop(store, hub, supervisor, interval, stopped).await;
        })
    };

    let app = router(state.clone());
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        background.abort();
        let _ = streams_task.await;
        // A send in flight is not waited for: its claim runs out and the
        // next process sends it.
        notifier.abort();
        let _ = notifier.await;
        supervisor.shutdown(grace).await;
        served.map_err(ServeError::Io)
    });
    tracing::info!(%addr, "factory server listening");
    Ok(RunningServer { addr, stop, task })
}

/// `GET /metrics` alone, for a process that serves no API (`factory worker
/// --metrics-addr`): the engine's worker metrics in Prometheus' text format.
/// Returns the bound address; the listener stops when `stop` turns true.
pub async fn serve_metrics(
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    let recorder = metrics::Metrics::new();
    let app = Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let recorder = recorder.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    recorder.render_process(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

/// The whole application: API, pages, assets, with authentication and metrics.
pub(crate) fn router(state: SharedState) -> Router {
    Router::new()
        .merge(api::routes(&state.config))
        .merge(pages::routes().layer(axum::middleware::from_fn(caching::etag)))
        .fallback(error::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn(guard::shape_errors))
        .layer(axum::middleware::from_fn(guard::defend))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        // gzip for whoever asks (pages, assets, JSON); never the event
        // stream (the default predicate leaves text/event-stream alone).
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(state)
}

/// Follows changes made by other processes (the CLI, other servers) and
/// picks up runs that need driving.
async fn background_loop(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    supervisor: Arc<factory_engine::supervisor::Supervisor>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tailer = hub::Tailer::new(factory_engine::now_ms());
    loop {
        if let Err(error) = tailer.step(store.as_ref(), &hub).await {
            tracing::warn!(%error, "cannot follow run changes");
        }
        match store.runs_with_status("running").await {
            Ok(runs) => {
                for run in runs {
                    supervisor.kick(&run.run_id);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list running runs"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
