//! Block actions (approve, reject, retry, run now, autonomy), artifacts per
//! attempt, diffs between attempts, and the block-scoped chat.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use factory_core::run::{Attempt, BlockStatus, GatePhase, RunDoc};
use factory_core::template::{ArtifactFormat, Autonomy, Block};
use factory_store::{RunRecord, kinds};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiResult};

/// A run, one of its blocks (template and state), and the template's path.
pub struct BlockView {
    pub doc: RunDoc,
    pub block: Block,
    pub template: factory_core::template::Template,
    pub template_path: Option<String>,
    /// The run's graph (instances included), for what concerns the block.
    pub pipeline: std::sync::Arc<factory_core::Pipeline>,
}

pub async fn block_view(state: &SharedState, run: &str, block: &str) -> ApiResult<BlockView> {
    let handle = state.engine.open(run).await?;
    let template = handle.pipeline().template().clone();
    let Some(spec) = handle.pipeline().block(block).cloned() else {
        let known: Vec<&str> = template.blocks.iter().map(|b| b.id.as_str()).collect();
        return Err(ApiError::not_found(
            "unknown_block",
            format!(
                "run `{}` has no block `{block}`; its blocks are {}",
                handle.doc().run_id,
                known.join(", ")
            ),
        ));
    };
    Ok(BlockView {
        doc: handle.doc().clone(),
        block: spec,
        template,
        template_path: handle.template_path().map(str::to_string),
        pipeline: handle.pipeline().clone(),
    })
}

/// The attempt `n`, or by default the latest that succeeded, else the latest.
pub fn selected_attempt<'a>(
    history: &'a [Attempt],
    n: Option<u32>,
    block: &str,
) -> ApiResult<Option<&'a Attempt>> {
    match n {
        Some(n) => history.iter().find(|a| a.n == n).map(Some).ok_or_else(|| {
            ApiError::not_found(
                "attempt_not_found",
                format!(
                    "block `{block}` has no attempt {n}; it has {}",
                    if history.is_empty() {
                        "none yet".to_string()
                    } else {
                        history
                            .iter()
                            .map(|a| a.n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        }),
        None => Ok(history
            .iter()
            .rev()
            .find(|a| a.outcome == Some(factory_core::run::AttemptOutcome::Succeeded))
            .or(history.last())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    #[serde(default)]
    note: Option<String>,
}

pub async fn approve(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<RunDoc>> {
    crate::error::require_json(&headers, &body)?;
    // The body is optional: an empty POST approves without a note.
    let body: ApproveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("approve body: {e}; send {{\"note\": \"…\"}} or nothing"),
            )
        })?
    };
    let note = body.note.filter(|n| !n.trim().is_empty());
    let doc = state
        .engine
        .approve_as(caller.principal(), &run, &block, note)
        .await?;
    state.supervisor.kick(&doc.run_id);
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    feedback: String,
}

pub async fn reject(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    ApiJson(body): ApiJson<RejectBody>,
) -> ApiResult<Json<RunDoc>> {
    let doc = state
        .engine
        .reject_by(&caller.actor, &run, &block, &body.feedback)
        .await?;
    state.supervisor.kick(&doc.run_id);
    Ok(Json(doc))
}

pub async fn retry(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
) -> ApiResult<Json<RunDoc>> {
    let doc = state.engine.retry_by(&caller.actor, &run, &block).await?;
    state.supervisor.kick(&doc.run_id);
    Ok(Json(doc))
}

/// "Run now": passes a block's before-gate, or re-runs a finished block.
pub async fn run_now(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
) -> ApiResult<Json<RunDoc>> {
    let view = block_view(&state, &run, &block).await?;
    let block_state = &view.doc.blocks[&block];
    let doc = match (block_state.status, block_state.gate) {
        (BlockStatus::Waiting, Some(GatePhase::Before)) => {
            state
                .engine
                .approve_as(caller.principal(), &run, &block, Some("run now".into()))
                .await?
        }
        (BlockStatus::Done | BlockStatus::Failed, _) => {
            state.engine.retry_by(&caller.actor, &run, &block).await?
        }
        (status, _) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_runnable",
                format!(
                    "block `{block}` is {}; run now starts a block waiting at its before-gate or re-runs a done or failed one (a pending block starts by itself when its inputs are ready)",
                    status.as_str()
                ),
            ));
        }
    };
    state.supervisor.kick(&doc.run_id);
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutonomyBody {
    autonomy: Autonomy,
}

pub async fn autonomy(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    ApiJson(body): ApiJson<AutonomyBody>,
) -> ApiResult<Json<RunDoc>> {
    let doc = state
        .engine
        .set_autonomy_by(caller.principal(), &run, &block, body.autonomy)
        .await?;
    state.supervisor.kick(&doc.run_id);
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
pub struct AttemptQuery {
    #[serde(default)]
    attempt: Option<u32>,
}

#[derive(Debug, Serialize)]
struct ArtifactInfo {
    path: String,
    format: ArtifactFormat,
    size: u64,
    hash: String,
    url: String,
    /// A media artifact's checked facts (type, dimensions, duration, pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<factory_audit::media::MediaFacts>,
}

pub async fn artifacts(
    State(state): State<SharedState>,
    Path((run, block)): Path<(String, String)>,
    Query(query): Query<AttemptQuery>,
) -> ApiResult<Json<Value>> {
    let view = block_view(&state, &run, &block).await?;
    let history = &view.doc.blocks[&block].history;
    let Some(attempt) = selected_attempt(history, query.attempt, &block)? else {
        return Ok(Json(
            json!({ "block": block, "attempt": null, "artifacts": {} }),
        ));
    };
    let artifacts: BTreeMap<&String, ArtifactInfo> = attempt
        .report
        .iter()
        .flat_map(|r| r.artifacts.iter())
        .map(|(key, a)| {
            (
                key,
                ArtifactInfo {
                    path: a.path.clone(),
                    format: a.format,
                    size: a.size,
                    hash: a.hash.clone(),
                    url: format!(
                        "/api/v1/runs/{}/blocks/{block}/artifacts/{key}?attempt={}",
                        view.doc.run_id, attempt.n
                    ),
                    media: a.media.clone(),
                },
            )
        })
        .collect();
    Ok(Json(json!({
        "block": block,
        "attempt": attempt.n,
        "outcome": attempt.outcome,
        "artifacts": artifacts,
        "audit": attempt.report.as_ref().and_then(|r| r.audit.as_deref()),
    })))
}

/// The stored content of one artifact of one attempt.
pub async fn artifact_content(
    state: &SharedState,
    attempt: &Attempt,
    block: &str,
    key: &str,
) -> ApiResult<(ArtifactFormat, Vec<u8>)> {
    let artifact = attempt
        .report
        .as_ref()
        .and_then(|r| r.artifacts.get(key))
        .ok_or_else(|| {
            ApiError::not_found(
                "artifact_not_found",
                format!(
                    "attempt {} of block `{block}` has no artifact `{key}`",
                    attempt.n
                ),
            )
        })?;
    Ok((artifact.format, state.store.get_blob(&artifact.hash).await?))
}

pub async fn artifact(
    State(state): State<SharedState>,
    Path((run, block, key)): Path<(String, String, String)>,
    Query(query): Query<AttemptQuery>,
) -> ApiResult<Response> {
    let view = block_view(&state, &run, &block).await?;
    let history = &view.doc.blocks[&block].history;
    let attempt = selected_attempt(history, query.attempt, &block)?.ok_or_else(|| {
        ApiError::not_found(
            "artifact_not_found",
            format!("block `{block}` has not run yet"),
        )
    })?;
    let (format, content) = artifact_content(&state, attempt, &block, &key).await?;
    Ok(([(header::CONTENT_TYPE, format.media_type())], content).into_response())
}

/// An attempt's stdout or stderr, whole (as far as it was kept: a long log
/// keeps its tail), as text.
pub async fn log(
    State(state): State<SharedState>,
    Path((run, block, stream)): Path<(String, String, String)>,
    Query(query): Query<AttemptQuery>,
) -> ApiResult<Response> {
    let view = block_view(&state, &run, &block).await?;
    let history = &view.doc.blocks[&block].history;
    let attempt = selected_attempt(history, query.attempt, &block)?.ok_or_else(|| {
        ApiError::not_found("log_not_found", format!("block `{block}` has not run yet"))
    })?;
    let text = attempt_log(&state, &run, &block, attempt, &stream).await?;
    let live = text.as_ref().is_some_and(|t| t.live);
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // A running attempt's output so far (its end), or the whole log.
            (
                header::HeaderName::from_static("x-factory-log"),
                if live { "live" } else { "stored" },
            ),
        ],
        text.map(|t| t.bytes).unwrap_or_default(),
    )
        .into_response())
}

/// An attempt's log as far as it is known.
pub struct LogText {
    pub bytes: Vec<u8>,
    /// The whole log's size (more than `bytes` when only its end is here).
    pub size: u64,
    /// Only the end of a long log was kept.
    pub truncated: bool,
    /// The attempt still runs: this is the end of its output so far.
    pub live: bool,
}

/// The `stream` of an attempt — `stdout` or `stderr` of a command, `reply`
/// of an `llm` block while it streams in: stored with its report once it
/// ended (not `reply`: the reply is the attempt's artifacts and LLM record),
/// published on its lease while it runs; None when there is nothing (yet).
pub async fn attempt_log(
    state: &SharedState,
    run_id: &str,
    block: &str,
    attempt: &Attempt,
    stream: &str,
) -> ApiResult<Option<LogText>> {
    if !matches!(stream, "stdout" | "stderr" | "reply") {
        return Err(ApiError::not_found(
            "unknown_log",
            format!(
                "no log `{stream}`: an attempt has `stdout` and `stderr` (a command), `reply` (an llm block, while it runs)"
            ),
        ));
    }
    let Some(report) = attempt.report.as_ref() else {
        if attempt.outcome.is_some() {
            return Ok(None);
        }
        let published = state.store.live_log(run_id, block, attempt.n).await?;
        let text = published
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .and_then(|log| log.get(stream)?.as_str().map(str::to_string))
            .unwrap_or_default();
        return Ok(Some(LogText {
            size: text.len() as u64,
            bytes: text.into_bytes(),
            truncated: false,
            live: true,
        }));
    };
    let log = match stream {
        "stdout" => report.stdout.clone(),
        "stderr" => report.stderr.clone(),
        _ => None,
    };
    match log {
        Some(log) => Ok(Some(LogText {
            bytes: state.store.get_blob(&log.hash).await?,
            size: log.size,
            truncated: log.truncated,
            live: false,
        })),
        None => Ok(None),
    }
}

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    a: u32,
    b: u32,
}

/// Unified diffs of every artifact between attempts `a` and `b`.
pub async fn diff_attempts(
    state: &SharedState,
    view: &BlockView,
    a: u32,
    b: u32,
) -> ApiResult<BTreeMap<String, ArtifactDiff>> {
    let block = &view.block.id;
    let history = &view.doc.blocks[block].history;
    let first = selected_attempt(history, Some(a), block)?
        .ok_or_else(|| ApiError::not_found("attempt_not_found", format!("no attempt {a}")))?;
    let second = selected_attempt(history, Some(b), block)?
        .ok_or_else(|| ApiError::not_found("attempt_not_found", format!("no attempt {b}")))?;
    let keys: std::collections::BTreeSet<String> = [first, second]
        .iter()
        .flat_map(|t| t.report.iter().flat_map(|r| r.artifacts.keys().cloned()))
        .collect();
    let mut out = BTreeMap::new();
    for key in keys {
        let old = text_or_empty(state, first, block, &key).await?;
        let new = text_or_empty(state, second, block, &key).await?;
        let diff = similar::TextDiff::from_lines(&old, &new);
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("attempt {a}/{key}"), &format!("attempt {b}/{key}"))
            .to_string();
        out.insert(
            key,
            ArtifactDiff {
                changed: old != new,
                ratio: diff.ratio(),
                unified,
            },
        );
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactDiff {
    pub changed: bool,
    /// Similarity 0–1.
    pub ratio: f32,
    pub unified: String,
}

async fn text_or_empty(
    state: &SharedState,
    attempt: &Attempt,
    block: &str,
    key: &str,
) -> ApiResult<String> {
    let has = attempt
        .report
        .as_ref()
        .is_some_and(|r| r.artifacts.contains_key(key));
    if !has {
        return Ok(String::new());
    }
    let (format, content) = artifact_content(state, attempt, block, key).await?;
    let mut text = factory_runtime::text_for_reader(format, &content);
    if format.is_media() {
        // Two files of one size and shape still differ by their bytes.
        text.push_str(&format!(" sha256:{}", factory_store::blob_hash(&content)));
    }
    Ok(text)
}

pub async fn diff(
    State(state): State<SharedState>,
    Path((run, block)): Path<(String, String)>,
    Query(query): Query<DiffQuery>,
) -> ApiResult<Json<Value>> {
    let view = block_view(&state, &run, &block).await?;
    let diffs = diff_attempts(&state, &view, query.a, query.b).await?;
    Ok(Json(
        json!({ "block": block, "a": query.a, "b": query.b, "artifacts": diffs }),
    ))
}

pub use factory_engine::chat::ChatMessage;

/// A block's chat messages, oldest first.
pub async fn chat_messages(
    state: &SharedState,
    run_id: &str,
    block: &str,
) -> ApiResult<Vec<(RunRecord, ChatMessage)>> {
    Ok(factory_engine::chat::chat_records(&state.engine, run_id, block).await?)
}

pub async fn chat_history(
    State(state): State<SharedState>,
    Path((run, block)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let view = block_view(&state, &run, &block).await?;
    let messages: Vec<Value> = chat_messages(&state, &view.doc.run_id, &block)
        .await?
        .into_iter()
        .map(|(r, m)| json!({ "role": m.role, "text": m.text, "model": m.model, "actor": r.actor, "at": r.at }))
        .collect();
    Ok(Json(json!({ "messages": messages })))
}

/// Why chat is unavailable for this block, if it is.
pub fn chat_unavailable(state: &SharedState, view: &BlockView) -> Option<String> {
    let Some(settings) = &state.llm else {
        return Some("no LLM provider is configured for this server".to_string());
    };
    let model = chat_model(view);
    settings
        .resolve(model.as_deref())
        .err()
        .map(|e| format!("chat needs a configured LLM provider: {e}"))
}

fn chat_model(view: &BlockView) -> Option<String> {
    if view.block.runtime.makes_media() {
        // An image or speech model does not chat: the run's chat model does.
        return view
            .doc
            .default_model
            .clone()
            .or_else(|| view.template.default_model.clone());
    }
    factory_core::transitions::effective_model(
        &view.template,
        &view.block,
        &view.doc.models,
        view.doc.default_model.as_deref(),
    )
    .map(str::to_string)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    message: String,
}

impl ChatBody {
    /// The trimmed message; an empty one is refused.
    pub fn message(&self) -> ApiResult<String> {
        let message = self.message.trim();
        if message.is_empty() {
            return Err(ApiError::unprocessable(
                "empty_message",
                "the chat message is empty",
            ));
        }
        Ok(message.to_string())
    }
}

/// One chat turn with the provider the block's model resolves to: `system`
/// as the cacheable context, `transcript` as the user's turn. Shared by the
/// block chat and the expert audit's chat with the clone.
pub async fn chat_turn(
    state: &SharedState,
    view: &BlockView,
    system: String,
    transcript: String,
) -> ApiResult<factory_llm::ChatResponse> {
    if let Some(reason) = chat_unavailable(state, view) {
        return Err(ApiError::unprocessable("llm_not_configured", reason));
    }
    let settings = state
        .llm
        .as_ref()
        .ok_or_else(|| ApiError::internal("no llm"))?;
    let model = chat_model(view);
    let resolved = settings
        .resolve(model.as_deref())
        .map_err(|e| ApiError::unprocessable("llm_not_configured", e))?;
    let request = factory_llm::ChatRequest {
        model: resolved.model.clone(),
        system: vec![factory_llm::Part::cacheable(system)],
        user: vec![factory_llm::Part::new(transcript)],
        max_tokens: 1024,
        ..Default::default()
    };
    resolved
        .client
        .complete(&request, Duration::from_secs(120))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "llm_error",
                format!("the LLM provider failed: {e}"),
            )
        })
}

/// Artifacts larger than this are cut in the chat's context.
const CHAT_ARTIFACT_LIMIT: usize = 24 * 1024;

pub async fn chat(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    ApiJson(body): ApiJson<ChatBody>,
) -> ApiResult<Json<Value>> {
    let message = body.message()?;
    let view = block_view(&state, &run, &block).await?;
    if let Some(reason) = chat_unavailable(&state, &view) {
        return Err(ApiError::unprocessable("llm_not_configured", reason));
    }

    let mut context = format!(
        "You are helping an operator review block `{}` ({}) of a Process Factory run of template `{}`.\n",
        view.block.id, view.block.name, view.template.name
    );
    if let Some(description) = &view.block.description {
        context.push_str(&format!("What the block does: {description}\n"));
    }
    let state_of = &view.doc.blocks[&block];
    if let Some(attempt) = selected_attempt(&state_of.history, None, &block)? {
        for key in attempt.report.iter().flat_map(|r| r.artifacts.keys()) {
            let (format, content) = artifact_content(&state, attempt, &block, key).await?;
            let mut text = factory_runtime::text_for_reader(format, &content);
            if text.len() > CHAT_ARTIFACT_LIMIT {
                let mut cut = CHAT_ARTIFACT_LIMIT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("\n[… cut]");
            }
            context.push_str(&format!(
                "\n=== artifact `{key}` (attempt {}) ===\n{text}\n",
                attempt.n
            ));
        }
    }
    if let Some(audit) = state_of.latest_audit() {
        context.push_str(&format!("\nAudit: {}\n", audit.summary_line()));
    }
    let earlier = chat_messages(&state, &view.doc.run_id, &block).await?;
    let mut transcript = String::new();
    for (_, m) in &earlier {
        transcript.push_str(&format!("{}: {}\n\n", m.role, m.text));
    }
    transcript.push_str(&format!("user: {message}\n"));
    let reply = chat_turn(&state, &view, context, transcript).await?;

    let now = factory_engine::now_ms();
    for (role, text, model) in [
        ("user", message.clone(), None),
        ("assistant", reply.text.clone(), Some(reply.model.clone())),
    ] {
        let body = ChatMessage {
            role: role.to_string(),
            text,
            model,
        };
        state
            .store
            .put_record(&RunRecord {
                run_id: view.doc.run_id.clone(),
                template_id: view.doc.template_id.clone(),
                kind: kinds::CHAT.to_string(),
                key: format!("{block}/{}", uuid::Uuid::now_v7()),
                actor: if role == "user" {
                    caller.actor.clone()
                } else {
                    format!("llm:{}", reply.model)
                },
                at: now,
                body: serde_json::to_value(body).map_err(ApiError::internal)?,
            })
            .await?;
    }
    Ok(Json(json!({
        "reply": reply.text,
        "model": reply.model,
        "input_tokens": reply.usage.input_tokens,
        "output_tokens": reply.usage.output_tokens,
    })))
}
