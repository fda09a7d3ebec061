//! `factory`: the command line over the engine.

mod args;
mod audit_cmd;
mod bench_cmd;
mod bench_stream;
mod doctor;
mod otel;
mod progress;
mod prompt_cmd;
mod show;
mod stream_cmd;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use factory_core::render::{self, GraphFormat as RenderFormat};
use factory_core::template::Autonomy;
use factory_core::transitions::{Policy, RunRequest};
use factory_engine::{Engine, EngineConfig, EngineError, Outcome};
use factory_store::StoreError;
use serde_json::Value;

use crate::args::{Cli, Command, DriveArgs, GraphFormat};

/// Blocks of a run running at once when neither the run nor `--max-concurrency` says.
const DEFAULT_MAX_CONCURRENCY: usize = 8;

/// An input problem the user must fix (exit code 2).
#[derive(Debug)]
struct UserError(String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// `templates/meta-audit-factory.json`, built in for `factory meta-audit`.
const META_AUDIT_TEMPLATE: &str = include_str!("../../../templates/meta-audit-factory.json");

fn user_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(message.into()))
}

fn main() -> ExitCode {
    let otel = otel::init();
    let code = run_main();
    if let Some(otel) = otel {
        otel.shutdown();
    }
    code
}

fn run_main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Worker(_) | Command::Bench(_)
    ) {
        die_quietly_on_broken_pipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_text(&error));
            ExitCode::from(exit_code_for(&error))
        }
    }
}

/// `factory events RUN | head`: when the reader goes away, stop as `git` and
/// `cat` do (ended by SIGPIPE, nothing printed) instead of panicking in
/// `println!`. Rust ignores SIGPIPE by default; long-running commands (the
/// server, workers, benchmarks) keep that, so a client that hangs up only
/// fails its own write.
fn die_quietly_on_broken_pipe() {
    // SAFETY: called once at start, before any thread is spawned; setting a
    // signal's disposition to its default has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, each clause once: error types that
/// include their source in their own message (`"database error: {0}"`), and
/// sources that repeat theirs, would otherwise print the same text two or
/// three times.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        let part = part.trim();
        if part.is_empty() || text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    text
}

fn exit_code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<UserError>().is_some() {
            return 2;
        }
        if let Some(engine) = cause.downcast_ref::<EngineError>() {
            return match engine {
                EngineError::Store(store) => store_code(store),
                EngineError::InvalidTemplate(_)
                | EngineError::CreateRun(_)
                | EngineError::MissingGolden(_)
                | EngineError::LlmSetup(_)
                | EngineError::BadRating(_)
                | EngineError::NotFound(_)
                | EngineError::Transition(_) => 2,
                _ => 3,
            };
        }
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return store_code(store);
        }
    }
    3
}

fn store_code(error: &StoreError) -> u8 {
    match error {
        StoreError::RunNotFound(_)
        | StoreError::AmbiguousRunId { .. }
        | StoreError::BlobNotFound(_) => 2,
        _ => 3,
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let actor = cli.actor.clone().unwrap_or_else(|| {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "local".to_string());
        format!("cli:{user}")
    });
    match cli.command {
        Command::Validate { files, json } => validate(&files, json),
        Command::Doctor { template } => {
            let settings = llm_settings(cli.config.as_deref())?;
            let pipeline = match &template {
                Some(path) => Some((
                    path.clone(),
                    pipeline_or_report(path, &read_template(path)?)?,
                )),
                None => None,
            };
            doctor::run(&settings, pipeline.as_ref().map(|(p, t)| (p.as_path(), t))).await
        }
        Command::Graph { file, format } => {
            let source = read_template(&file)?;
            let pipeline = pipeline_or_report(&file, &source)?;
            let format = match format {
                GraphFormat::Text => RenderFormat::Text,
                GraphFormat::Mermaid => RenderFormat::Mermaid,
                GraphFormat::Dot => RenderFormat::Dot,
            };
            print!("{}", render::render(&pipeline, format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&factory_core::template::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            template,
            params,
            autonomy,
            overrides,
            models,
            default_model,
            sampling,
            no_cache,
            no_run,
            files,
            drive,
        } => {
            let source = read_template(&template)?;
            let files = read_run_files(&files)?;
            pipeline_or_report(&template, &source)?;
            let request = RunRequest {
                run_id: String::new(),
                params: parse_params(&params)?,
                autonomy_profile: autonomy,
                overrides: parse_overrides(&overrides)?,
                models: parse_models(&models)?,
                default_model,
                sampling: parse_sampling(&sampling)?,
                max_concurrency: drive.max_concurrency,
                no_cache,
                ratings: Vec::new(),
            };
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            let doc = engine
                .create_run_with_files(&actor, &source, Some(&template), request, &files)
                .await
                .with_context(|| format!("cannot start a run of {}", template.display()))?;
            println!("{}", doc.run_id);
            if no_run {
                return Ok(ExitCode::SUCCESS);
            }
            drive_run(&engine, &doc.run_id, drive.quiet).await
        }
        Command::MetaAudit {
            run,
            baseline,
            drive,
        } => {
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            // Named runs must exist: say so before a meta-audit run is made.
            let target = engine.store().resolve_run_id(&run).await?;
            let baseline = match baseline {
                Some(b) => engine.store().resolve_run_id(&b).await?,
                None => String::new(),
            };
            let request = RunRequest {
                params: [
                    ("target_run".to_string(), serde_json::Value::from(target)),
                    (
                        "baseline_run".to_string(),
                        serde_json::Value::from(baseline),
                    ),
                ]
                .into(),
                max_concurrency: drive.max_concurrency,
                ..RunRequest::default()
            };
            let doc = engine
                .create_run(META_AUDIT_TEMPLATE, None, request)
                .await
                .context("cannot start the meta-audit")?;
            println!("{}", doc.run_id);
            drive_run(&engine, &doc.run_id, drive.quiet).await
        }
        Command::Runs { limit } => {
            let store = factory_store::open(&cli.db).await?;
            show::runs(store.as_ref(), limit).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { run, json } => {
            let store = factory_store::open(&cli.db).await?;
            show::status(store.as_ref(), &run, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convergence { run, json } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let (_, table) = engine.convergence(&run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                print!("{}", show::convergence(&table));
            }
            Ok(if table.ready_to_ship {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
        Command::Events { run, json } => {
            let store = factory_store::open(&cli.db).await?;
            show::events(store.as_ref(), &run, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            run,
            block,
            note,
            no_run,
            drive,
        } => {
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            let doc = engine.approve(&run, &block, note).await?;
            continue_run(&engine, &doc.run_id, no_run, drive.quiet).await
        }
        Command::Reject {
            run,
            block,
            feedback,
            no_run,
            drive,
        } => {
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            let doc = engine.reject(&run, &block, &feedback).await?;
            continue_run(&engine, &doc.run_id, no_run, drive.quiet).await
        }
        Command::Retry {
            run,
            block,
            no_run,
            drive,
        } => {
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            let doc = engine.retry(&run, &block).await?;
            continue_run(&engine, &doc.run_id, no_run, drive.quiet).await
        }
        Command::Rate {
            run,
            block,
            score,
            comment,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let entry = engine.rate(&actor, &run, &block, score, &comment).await?;
            let scope = if entry.rating.aggregate_key.is_empty() {
                String::new()
            } else {
                format!(" ({})", entry.rating.aggregate_key)
            };
            println!(
                "rated {block} of run {} {}/5{scope}; later runs of the template with `lens.feedback_loop` read it",
                entry.run_id, entry.rating.score
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ratings {
            run,
            template,
            json,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let entries = match (&run, &template) {
                (Some(run), _) => engine.run_ratings(run).await?,
                (None, Some(template)) => engine.template_ratings(template).await?,
                (None, None) => Vec::new(),
            };
            if json {
                for entry in &entries {
                    println!("{}", serde_json::to_string(entry)?);
                }
            } else {
                print!("{}", show::ratings(&entries, template.is_some()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gaps { run, json } => {
            let store = factory_store::open(&cli.db).await?;
            let run_id = store.resolve_run_id(&run).await?;
            let doc = store.load_run(&run_id).await?.doc;
            if json {
                for state in doc.gaps.values() {
                    println!("{}", serde_json::to_string(state)?);
                }
            } else {
                print!("{}", show::gaps(&doc));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask {
            run,
            question,
            brief,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let run_id = store.resolve_run_id(&run).await?;
            let config = EngineConfig {
                llm: if brief {
                    None
                } else {
                    Some(Arc::new(llm_settings(cli.config.as_deref())?))
                },
                ..EngineConfig::default()
            };
            let engine = Engine::new(Arc::from(store), config);
            if brief {
                print!("{}", engine.run_brief(&run_id).await?);
                return Ok(ExitCode::SUCCESS);
            }
            let reply = engine
                .run_chat(&actor, &run_id, question.as_deref().unwrap_or_default())
                .await?;
            println!("{}", reply.reply.trim_end());
            eprintln!(
                "({}; {} tokens in, {} out; {} characters of run context)",
                reply.model, reply.input_tokens, reply.output_tokens, reply.context_chars
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gap {
            run,
            id,
            accept,
            reopen: _,
            note,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let run_id = store.resolve_run_id(&run).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let status = if accept {
                factory_core::gaps::GapStatus::Accepted
            } else {
                factory_core::gaps::GapStatus::Open
            };
            engine
                .decide_gap(&actor, &run_id, &id, status, &note)
                .await?;
            println!("gap {id} of run {run_id} is {}", status.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { run, drive } => {
            let engine = engine(&cli.db, &actor, &drive, cli.config.as_deref()).await?;
            let run_id = engine.store().resolve_run_id(&run).await?;
            drive_run(&engine, &run_id, drive.quiet).await
        }
        Command::Artifacts {
            run,
            block,
            key,
            attempt,
            diff,
        } => {
            let store = factory_store::open(&cli.db).await?;
            show::artifacts(
                store.as_ref(),
                &run,
                &block,
                key.as_deref(),
                attempt,
                diff.as_deref(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => audit_cmd::run(args),
        Command::Prompt {
            run,
            block,
            attempt,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let settings = llm_settings(cli.config.as_deref())?;
            prompt_cmd::run(store.as_ref(), &settings, &run, &block, attempt).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(&cli.db, &actor, args, cli.config.as_deref()).await,
        Command::Worker(args) => worker(&cli.db, &actor, args, cli.config.as_deref()).await,
        Command::Bench(args) => bench_cmd::run(args).await,
        Command::Token(command) => token(&cli.db, &actor, command).await,
        Command::Records {
            template,
            state,
            status,
            key,
            retry,
            add,
            from,
            block,
            limit,
            json,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let query = stream_cmd::RecordsQuery {
                template,
                state,
                status,
                key,
                retry,
                add: add.map(|file| (file, from.unwrap_or_default(), block)),
                limit,
                json,
            };
            stream_cmd::records(&engine, &actor, query).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hook(command) => {
            stream_cmd::hook(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Notifications {
            status,
            run,
            channel,
            limit,
            retry,
            json,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            if let Some(id) = retry {
                engine.retry_notification(&id).await?;
                println!(
                    "{id}: pending again; a running `factory serve` or `factory worker` sends it"
                );
                return Ok(ExitCode::SUCCESS);
            }
            let status = status
                .map(|s| s.parse::<factory_core::notify::NotificationStatus>())
                .transpose()
                .map_err(user_error)?;
            let run_id = match run {
                Some(run) => Some(engine.store().resolve_run_id(&run).await?),
                None => None,
            };
            let rows = engine
                .notifications(&factory_store::NotificationFilter {
                    status,
                    run_id,
                    channel,
                    limit: limit.clamp(1, 1000),
                })
                .await?;
            show::notifications(&rows, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Feed {
            name,
            template,
            run,
            limit,
            json,
            prune_days,
        } => {
            let store = factory_store::open(&cli.db).await?;
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let query = stream_cmd::FeedQuery {
                name,
                template,
                run,
                limit,
                json,
                prune_days,
            };
            stream_cmd::feed(&engine, query).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run,
            block,
            attempt,
        } => {
            let store = factory_store::open(&cli.db).await?;
            show::logs(store.as_ref(), &run, &block, attempt).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(
    db: &str,
    actor: &str,
    args: args::ServeArgs,
    config_path: Option<&Path>,
) -> Result<ExitCode> {
    let mut drive = args.drive;
    drive.quiet = true;
    let engine = engine_sending(db, actor, &drive, config_path, true).await?;
    let config = factory_server::ServerConfig {
        addr: args.addr,
        no_auth: args.no_auth,
        templates_dir: Some(args.templates.clone()).filter(|d| d.is_dir()),
        workers: args.workers,
        shutdown_grace: std::time::Duration::from_secs(args.grace_secs),
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        max_request_bytes: args.max_request_mb.saturating_mul(1024 * 1024),
        feed_retention: (args.feed_retention_days > 0)
            .then(|| std::time::Duration::from_secs(u64::from(args.feed_retention_days) * 86_400)),
        ..Default::default()
    };
    let store = engine.store().clone();
    let engine_config = engine.config().clone();
    drop(engine);
    let server = factory_server::start(store, engine_config, config)
        .await
        .map_err(|e| user_error(e.to_string()))?;
    println!("listening on http://{}", server.addr);
    if args.no_auth {
        println!("no authentication: every request acts as `user:local` (admin)");
    }
    let stopper = server.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("shutting down: waiting for running blocks");
        let _ = stopper.send(true);
    });
    server.wait().await.map_err(|e| user_error(e.to_string()))?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `factory worker`: drives every run of the store until SIGTERM or Ctrl-C,
/// then lets running blocks finish (up to the grace period) and exits 0.
async fn worker(
    db: &str,
    actor: &str,
    args: args::WorkerArgs,
    config_path: Option<&Path>,
) -> Result<ExitCode> {
    let mut drive = args.drive;
    drive.quiet = true;
    let engine = Arc::new(engine_sending(db, actor, &drive, config_path, true).await?);
    let options = factory_engine::worker::WorkerOptions {
        runs: args.runs.max(1),
        scan_interval: std::time::Duration::from_millis(args.scan_ms.max(10)),
        grace: std::time::Duration::from_secs(args.grace_secs),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let bound = factory_server::serve_metrics(addr, stopped.clone())
                .await
                .map_err(|e| user_error(e.to_string()))?;
            format!("; metrics on http://{bound}/metrics")
        }
        None => String::new(),
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("shutting down: waiting for running blocks");
        let _ = stop.send(true);
    });
    eprintln!(
        "worker {} serving the store's runs ({} at once, {}){metrics}",
        factory_engine::Owner::current().id(),
        options.runs,
        match drive.slots {
            0 => "no limit on blocks".to_string(),
            n => format!("{n} blocks at once"),
        }
    );
    let streams = args.templates.map(|dir| {
        tokio::spawn(run_streams(
            engine.clone(),
            dir,
            options.grace,
            stopped.clone(),
        ))
    });
    let notifier = tokio::spawn(engine.clone().run_notifier(stopped.clone()));
    factory_engine::worker::serve(engine, options, stopped).await?;
    let _ = notifier.await;
    if let Some(streams) = streams {
        let _ = streams.await;
    }
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A worker's stream templates: those of `dir` and those registered in the
/// store, looked at every 2 s, until the worker stops (batches in flight
/// get the shutdown grace).
async fn run_streams(
    engine: Arc<Engine>,
    dir: std::path::PathBuf,
    grace: std::time::Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let set = factory_engine::StreamSet::new(engine.clone());
    loop {
        let mut sources = factory_engine::folder_sources(&dir);
        match engine.store().list_templates().await {
            Ok(registered) => {
                sources.extend(
                    registered
                        .into_iter()
                        .map(|t| factory_engine::StreamSource {
                            source: t.source,
                            path: None,
                        }),
                )
            }
            Err(error) => tracing::warn!(%error, "cannot list registered templates"),
        }
        set.refresh(sources);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    if tokio::time::timeout(grace, set.stop_all()).await.is_err() {
        tracing::warn!(
            "stream batches still running at shutdown; their records are taken again after the restart"
        );
    }
}

/// SIGTERM or Ctrl-C, whichever comes first.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn token(db: &str, actor: &str, command: args::TokenCommand) -> Result<ExitCode> {
    let store = factory_store::open(db)
        .await
        .with_context(|| format!("cannot open the store `{db}`"))?;
    match command {
        args::TokenCommand::Create {
            role,
            name,
            tester_role,
        } => {
            let role: factory_server::auth::Role = role.parse().map_err(user_error)?;
            let tester_role = tester_role
                .as_deref()
                .map(str::parse::<factory_core::consensus::TesterRole>)
                .transpose()
                .map_err(|e| user_error(format!("--tester-role: {e}")))?;
            let (secret, record) =
                factory_server::auth::create_token(store.as_ref(), &name, role, actor, tester_role)
                    .await
                    .map_err(|e| user_error(e.message))?;
            eprintln!(
                "token {} for `user:{}` ({}{}); shown once, only its hash is stored:",
                record.id,
                record.name,
                record.role,
                record
                    .tester_role
                    .as_deref()
                    .map(|role| format!(", reviews as {role}"))
                    .unwrap_or_default()
            );
            println!("{secret}");
        }
        args::TokenCommand::List => {
            for t in store.list_tokens().await? {
                println!(
                    "{}  {:<9} {:<20} created by {}{}",
                    t.id,
                    t.role,
                    t.name,
                    t.created_by,
                    if t.revoked_at.is_some() {
                        "  REVOKED"
                    } else {
                        ""
                    }
                );
            }
        }
        args::TokenCommand::Review {
            run,
            tester,
            tester_role,
            base_url,
        } => {
            let engine = Engine::new(Arc::from(store), EngineConfig::default());
            let links = factory_server::review_links(&engine, &run, &tester, &tester_role, actor)
                .await
                .map_err(|e| match e.status.as_u16() {
                    404 | 422 => user_error(e.message),
                    _ => anyhow::anyhow!(e.message),
                })?;
            eprintln!(
                "review links for {} ({}), token {}; send each only to them:",
                links.tester, links.tester_role, links.token_id
            );
            for link in links.links {
                println!(
                    "{}  {}{}",
                    link.page,
                    base_url.trim_end_matches('/'),
                    link.url
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        args::TokenCommand::Revoke { id } => {
            if !store.revoke_token(&id, factory_engine::now_ms()).await? {
                return Err(user_error(format!(
                    "no live token `{id}`; `factory token list` shows them"
                )));
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The LLM settings from the config file and the environment; settings that
/// cannot be used are said on stderr.
fn llm_settings(config_path: Option<&Path>) -> Result<factory_runtime::llm::LlmSettings> {
    let settings =
        factory_runtime::llm::LlmSettings::from_config(llm_config(config_path)?, |name| {
            std::env::var(name).ok()
        });
    for warning in settings.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(settings)
}

/// Reads the LLM settings file: `--config`/`FACTORY_CONFIG`, else
/// `factory.toml` in the current directory when there is one.
fn llm_config(path: Option<&Path>) -> Result<factory_runtime::llm::LlmConfig> {
    let (path, required) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (std::path::PathBuf::from("factory.toml"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => factory_runtime::llm::LlmConfig::parse(&text, &path.display().to_string())
            .map_err(user_error),
        Err(_) if !required => Ok(Default::default()),
        Err(error) => Err(user_error(format!(
            "cannot read config {}: {error}",
            path.display()
        ))),
    }
}

async fn engine(
    db: &str,
    actor: &str,
    drive: &DriveArgs,
    config_path: Option<&Path>,
) -> Result<Engine> {
    engine_sending(db, actor, drive, config_path, false).await
}

/// `[notifications]` of the config file, checked, with its secrets read
/// from the environment; None when it configures none.
fn notifications(config_path: Option<&Path>) -> Result<Option<Arc<factory_notify::Notifications>>> {
    let (path, required) = match config_path {
        Some(path) => (path.to_path_buf(), true),
        None => (std::path::PathBuf::from("factory.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if !required => return Ok(None),
        Err(error) => {
            return Err(user_error(format!(
                "cannot read config {}: {error}",
                path.display()
            )));
        }
    };
    let file = path.display().to_string();
    let config = factory_notify::NotificationsConfig::from_toml(&text, &file)
        .map_err(|e| user_error(e.0))?;
    if config.is_empty() {
        return Ok(None);
    }
    factory_notify::Notifications::from_config(config, |name| std::env::var(name).ok(), &file)
        .map(|n| Some(Arc::new(n)))
        .map_err(|e| user_error(e.0))
}

/// An engine; with `notify`, one that sends the config's notifications
/// (`factory serve` and `factory worker` run the notifier).
async fn engine_sending(
    db: &str,
    actor: &str,
    drive: &DriveArgs,
    config_path: Option<&Path>,
    notify: bool,
) -> Result<Engine> {
    let store = factory_store::open(db)
        .await
        .with_context(|| format!("cannot open the store `{db}`"))?;
    let mut config = EngineConfig {
        policy: Policy {
            retry_base_ms: drive.retry_backoff_ms,
            retry_max_ms: drive.retry_backoff_ms.saturating_mul(60).max(60_000),
            lease_ms: drive.lease_ms.max(100),
        },
        max_concurrency: drive
            .max_concurrency
            .map_or(DEFAULT_MAX_CONCURRENCY, |n| n as usize),
        worker_slots: drive.slots,
        keep_work_dirs: drive.keep_work,
        actor: actor.to_string(),
        observer: progress::observer(drive.quiet),
        llm: Some(Arc::new(llm_settings(config_path)?)),
        notifications: if notify {
            notifications(config_path)?
        } else {
            None
        },
        ..EngineConfig::default()
    };
    if let Some(dir) = &drive.work_dir {
        config.work_root = dir.clone();
    }
    Ok(Engine::new(Arc::from(store), config))
}

async fn continue_run(
    engine: &Engine,
    run_id: &str,
    no_run: bool,
    quiet: bool,
) -> Result<ExitCode> {
    if no_run {
        return Ok(ExitCode::SUCCESS);
    }
    drive_run(engine, run_id, quiet).await
}

async fn drive_run(engine: &Engine, run_id: &str, quiet: bool) -> Result<ExitCode> {
    let (outcome, doc) = tokio::select! {
        result = engine.drive(run_id) => {
            progress::clear();
            result?
        }
        _ = tokio::signal::ctrl_c() => {
            progress::clear();
            eprintln!("interrupted: running blocks are stopped; continue with `factory resume {run_id}`");
            return Ok(ExitCode::from(130));
        }
    };
    if !quiet {
        eprintln!();
        let order: Vec<String> = engine
            .open(run_id)
            .await
            .map(|handle| {
                let pipeline = handle.pipeline();
                pipeline
                    .topo_order()
                    .iter()
                    .map(|&i| pipeline.blocks()[i].id.clone())
                    .collect()
            })
            .unwrap_or_default();
        eprint!("{}", show::summary(&doc, &order));
    }
    if outcome == Outcome::Failed {
        let failed: Vec<&str> = doc
            .blocks
            .iter()
            .filter(|(_, state)| state.status == factory_core::BlockStatus::Failed)
            .map(|(id, _)| id.as_str())
            .collect();
        if let Some(first) = failed.first() {
            // An instance's id has brackets, which a shell would glob.
            let first = if first.contains('[') {
                format!("'{first}'")
            } else {
                first.to_string()
            };
            eprintln!(
                "the run failed at {}: `factory retry {run_id} {first}` runs it again (then what depends on it); `factory logs {run_id} {first}` shows why",
                failed.join(", ")
            );
        }
    }
    Ok(match outcome {
        Outcome::Done | Outcome::Waiting | Outcome::Stopped => ExitCode::SUCCESS,
        Outcome::Failed => ExitCode::from(1),
    })
}

/// The files given with `--file`, each under its file name; two with the
/// same name are refused (a block could not tell them apart).
fn read_run_files(paths: &[std::path::PathBuf]) -> Result<Vec<factory_engine::RunFile>> {
    let mut files: Vec<factory_engine::RunFile> = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--file {}: not a file path", path.display()))?;
        if let Some(problem) = factory_engine::file_name_problem(&name) {
            bail!("--file {}: {problem}", path.display());
        }
        if files.iter().any(|f| f.name == name) {
            bail!(
                "--file {}: another file is already named `{name}`; rename one",
                path.display()
            );
        }
        let content = std::fs::read(path)
            .with_context(|| format!("--file {}: cannot read it", path.display()))?;
        files.push(factory_engine::RunFile { name, content });
    }
    Ok(files)
}

fn read_template(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|error| user_error(format!("cannot read template {}: {error}", path.display())))
}

/// Validates and prints diagnostics; errors become a user error.
fn pipeline_or_report(path: &Path, source: &str) -> Result<factory_core::Pipeline> {
    let validated = factory_core::validate_str(source);
    let name = path.display().to_string();
    for diagnostic in &validated.diagnostics {
        if !diagnostic.is_error() {
            eprintln!("{}", diagnostic.render(&name));
        }
    }
    match validated.pipeline {
        Some(pipeline) => Ok(pipeline),
        None => {
            for diagnostic in validated.errors() {
                eprintln!("{}", diagnostic.render(&name));
            }
            let count = validated.errors().count();
            Err(user_error(format!(
                "{name} is invalid ({count} error{})",
                if count == 1 { "" } else { "s" }
            )))
        }
    }
}

fn validate(files: &[std::path::PathBuf], json: bool) -> Result<ExitCode> {
    let mut any_errors = false;
    let mut all = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let diagnostics = match std::fs::read_to_string(file) {
            Ok(source) => factory_core::validate_str(&source).diagnostics,
            Err(error) => vec![factory_core::Diagnostic::error(
                "TPL0000",
                "$",
                format!("cannot read the file: {error}"),
            )],
        };
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        any_errors |= errors > 0;
        if json {
            all.push(serde_json::json!({ "file": name, "valid": errors == 0, "diagnostics": diagnostics }));
        } else {
            for diagnostic in &diagnostics {
                eprintln!("{}", diagnostic.render(&name));
            }
            if errors == 0 {
                println!("{name}: valid");
            } else {
                println!(
                    "{name}: {errors} error{}",
                    if errors == 1 { "" } else { "s" }
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(if any_errors {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn parse_params(pairs: &[String]) -> Result<BTreeMap<String, Value>> {
    let mut params = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!(user_error(format!("--param `{pair}` must be KEY=VALUE")));
        };
        if key.trim().is_empty() {
            bail!(user_error(format!("--param `{pair}` has an empty key")));
        }
        params.insert(key.trim().to_string(), Value::String(value.to_string()));
    }
    Ok(params)
}

/// `--llm KEY=VALUE`: a number or JSON value when it parses as one, else a string.
fn parse_sampling(pairs: &[String]) -> Result<BTreeMap<String, Value>> {
    let mut sampling = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                let value = serde_json::from_str(value.trim())
                    .unwrap_or_else(|_| Value::String(value.to_string()));
                sampling.insert(key.trim().to_string(), value);
            }
            _ => bail!(user_error(format!(
                "--llm `{pair}` must be KEY=VALUE, e.g. temperature=0.2"
            ))),
        }
    }
    Ok(sampling)
}

fn parse_models(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut models = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((block, model)) if !block.trim().is_empty() && !model.trim().is_empty() => {
                models.insert(block.trim().to_string(), model.trim().to_string());
            }
            _ => bail!(user_error(format!(
                "--model `{pair}` must be BLOCK=MODEL, e.g. clone-compiler=opus"
            ))),
        }
    }
    Ok(models)
}

fn parse_overrides(pairs: &[String]) -> Result<BTreeMap<String, Autonomy>> {
    let mut overrides = BTreeMap::new();
    for pair in pairs {
        let parsed = pair.split_once('=').and_then(|(block, level)| {
            let level = match level {
                "gate" => Autonomy::Gate,
                "guided" => Autonomy::Guided,
                "auto" => Autonomy::Auto,
                _ => return None,
            };
            Some((block.to_string(), level))
        });
        match parsed {
            Some((block, level)) => {
                overrides.insert(block, level);
            }
            None => bail!(user_error(format!(
                "--set-autonomy `{pair}` must be BLOCK=gate, BLOCK=guided or BLOCK=auto"
            ))),
        }
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::error_text;

    use std::fmt;

    /// A driver error, and two wrappers that repeat their source in their
    /// own message (as sqlx's and thiserror's `"{0}"` + `#[from]` do).
    #[derive(Debug)]
    struct Driver;
    #[derive(Debug)]
    struct Sqlx(Driver);
    #[derive(Debug)]
    struct Store(Sqlx);

    impl fmt::Display for Driver {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "(code: 26) file is not a database")
        }
    }
    impl fmt::Display for Sqlx {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "error returned from database: {}", self.0)
        }
    }
    impl fmt::Display for Store {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "database error: {}", self.0)
        }
    }
    impl std::error::Error for Driver {}
    impl std::error::Error for Sqlx {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Store {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_clause_of_an_error_chain_prints_once() {
        let error = anyhow::Error::new(Store(Sqlx(Driver)));
        assert_eq!(
            error_text(&error),
            "database error: error returned from database: (code: 26) file is not a database"
        );
        let wrapped = anyhow::Error::new(Driver).context("cannot open the store");
        assert_eq!(
            error_text(&wrapped),
            "cannot open the store: (code: 26) file is not a database"
        );
    }
}
