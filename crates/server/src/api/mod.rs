//! The JSON API under `/api/v1`. Handlers are thin: parse, call the engine
//! or the store, map errors to [`ApiError`]. Roles are checked before any
//! handler runs (see [`crate::auth::ROUTES`]).

pub(crate) mod blocks;
mod events;
mod gaps;
mod hooks;
mod notifications;
mod ratings;
mod records;
pub(crate) mod review;
mod run_chat;
pub(crate) mod runs;
mod stream;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use factory_store::{TemplateRecord, kinds};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::templates;

pub(crate) use blocks::{BlockView, block_view, selected_attempt};

pub const OPENAPI: &str = include_str!("../../assets/openapi.json");

pub fn routes(config: &crate::ServerConfig) -> Router<SharedState> {
    // Run creation carries the uploaded files (base64 in JSON); every other
    // body keeps axum's 2 MiB default.
    let create_run = post(runs::create).layer(axum::extract::DefaultBodyLimit::max(
        config.max_request_bytes,
    ));
    Router::new()
        .route("/api/v1/health", get(health))
        .route(
            "/api/v1/hooks/{*path}",
            post(hooks::receive).layer(axum::extract::DefaultBodyLimit::max(hooks::MAX_HOOK_BODY)),
        )
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/notifications", get(notifications::list))
        .route(
            "/api/v1/notifications/{id}/retry",
            post(notifications::retry),
        )
        .route("/api/v1/records", get(records::list))
        .route("/api/v1/records/{template}", post(records::add))
        .route("/api/v1/records/{template}/{key}", get(records::get))
        .route(
            "/api/v1/records/{template}/{key}/retry",
            post(records::retry),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/templates",
            get(list_templates).post(register_template),
        )
        .route("/api/v1/templates/validate", post(validate_template))
        .route("/api/v1/templates/{template}/memory", get(template_memory))
        .route(
            "/api/v1/templates/{template}/ratings",
            get(ratings::of_template),
        )
        .route(
            "/api/v1/templates/{template}/quality",
            get(template_quality),
        )
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/runs", get(runs::list).merge(create_run))
        .route("/api/v1/runs/{run}", get(runs::get))
        .route("/api/v1/runs/{run}/blocks/{block}", get(runs::get_block))
        .route("/api/v1/runs/{run}/events", get(runs::events))
        .route("/api/v1/runs/{run}/files", get(runs::files))
        .route("/api/v1/runs/{run}/files/{name}", get(runs::file))
        .route("/api/v1/runs/{run}/drafts", get(runs::drafts))
        .route("/api/v1/runs/{run}/drafts/{key}", put(runs::put_draft))
        .route(
            "/api/v1/runs/{run}/reflection",
            get(runs::reflection).put(runs::put_reflection),
        )
        .route(
            "/api/v1/runs/{run}/ratings",
            get(ratings::of_run).post(ratings::rate),
        )
        .route("/api/v1/runs/{run}/gaps", get(gaps::list))
        .route(
            "/api/v1/runs/{run}/chat",
            get(run_chat::history).post(run_chat::turn),
        )
        .route("/api/v1/runs/{run}/gaps/{id}", post(gaps::decide))
        .route("/api/v1/runs/{run}/stream", get(stream::run_stream))
        .route("/api/v1/stream", get(stream::all_stream))
        .route(
            "/api/v1/runs/{run}/blocks/{block}/approve",
            post(blocks::approve),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/reject",
            post(blocks::reject),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/retry",
            post(blocks::retry),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/run",
            post(blocks::run_now),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/autonomy",
            put(blocks::autonomy),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/artifacts",
            get(blocks::artifacts),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/artifacts/{key}",
            get(blocks::artifact),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/logs/{stream}",
            get(blocks::log),
        )
        .route("/api/v1/runs/{run}/blocks/{block}/diff", get(blocks::diff))
        .route(
            "/api/v1/runs/{run}/blocks/{block}/chat",
            get(blocks::chat_history).post(blocks::chat),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/feedback",
            post(review::submit),
        )
        .route(
            "/api/v1/runs/{run}/blocks/{block}/review-chat",
            post(review::review_chat),
        )
        .route(
            "/api/v1/runs/{run}/review-links",
            post(review::create_links),
        )
        .route("/api/v1/runs/{run}/convergence", get(review::convergence))
        .route("/api/v1/improvement-items", get(review::list_items))
        .route(
            "/api/v1/improvement-items/{id}",
            axum::routing::patch(review::patch_item),
        )
        .route("/api/v1/corrections-ingest", post(review::ingest))
}

/// Health answers within [`HEALTH_TIMEOUT`] whatever the store does: `200`
/// when it can read a run list, `503` with the reason when it cannot.
async fn health(State(state): State<SharedState>) -> Response {
    let store = match tokio::time::timeout(HEALTH_TIMEOUT, state.store.list_runs(1)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            HEALTH_TIMEOUT.as_millis()
        )),
    };
    let body = json!({
        "status": if store.is_ok() { "ok" } else { "unavailable" },
        "store": match &store { Ok(()) => "ok".to_string(), Err(reason) => reason.clone() },
        "version": env!("CARGO_PKG_VERSION"),
        "auth": !state.config.no_auth,
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    let text = state.metrics.render(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({ "actor": caller.actor, "role": caller.role }))
}

async fn list_templates(State(state): State<SharedState>) -> ApiResult<Json<Value>> {
    let entries = templates::catalog(&state).await?;
    Ok(Json(json!({ "templates": entries })))
}

/// A template given either as JSON text (`source`, keeps line numbers in
/// errors) or as a JSON object (`template`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    template: Option<Value>,
    /// Where the template's skills and golden files live on the server.
    #[serde(default)]
    path: Option<String>,
}

impl TemplateBody {
    fn source(&self) -> ApiResult<String> {
        match (&self.source, &self.template) {
            (Some(source), None) => Ok(source.clone()),
            (None, Some(value)) => serde_json::to_string_pretty(value).map_err(ApiError::internal),
            _ => Err(ApiError::unprocessable(
                "bad_request_body",
                "give exactly one of `source` (the template's JSON text) or `template` (the template as a JSON object)",
            )),
        }
    }
}

async fn validate_template(ApiJson(body): ApiJson<TemplateBody>) -> ApiResult<Json<Value>> {
    let source = body.source()?;
    let validated = factory_core::validate_str(&source);
    Ok(Json(json!({
        "valid": validated.pipeline.is_some(),
        "diagnostics": validated.diagnostics,
    })))
}

async fn register_template(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<TemplateBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let source = body.source()?;
    let validated = factory_core::validate_str(&source);
    let Some(pipeline) = validated.pipeline else {
        let first = validated
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| d.render("template"))
            .unwrap_or_default();
        return Err(ApiError::unprocessable(
            "invalid_template",
            format!(
                "the template is invalid: {first} (POST /api/v1/templates/validate lists every problem)"
            ),
        ));
    };
    let template = pipeline.template();
    let record = TemplateRecord {
        template_id: template.id.clone(),
        version: template.version.clone(),
        name: template.name.clone(),
        source,
        path: body.path,
        registered_by: caller.actor,
        registered_at: factory_engine::now_ms(),
    };
    state.store.put_template(&record).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": record.template_id, "version": record.version, "name": record.name })),
    ))
}

/// A template's quality across its newest runs (`?limit=`, default 30):
/// composites per run, weakest blocks, regressions, meta-audits.
async fn template_quality(
    State(state): State<SharedState>,
    Path(template): Path<String>,
    Query(query): Query<crate::pages::quality::QualityQuery>,
) -> ApiResult<Json<factory_core::meta_audit::history::QualityHistory>> {
    let limit = crate::pages::quality::limit(&query);
    Ok(Json(
        state.engine.quality_history(&template, limit, true).await?,
    ))
}

/// The post-run reflections of earlier runs of a template: its process memory.
async fn template_memory(
    State(state): State<SharedState>,
    Path(template): Path<String>,
) -> ApiResult<Json<Value>> {
    let records = state
        .store
        .records_for_template(&template, kinds::REFLECTION, 50)
        .await?;
    Ok(Json(
        json!({ "template": template, "reflections": records }),
    ))
}

async fn list_tokens(State(state): State<SharedState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "tokens": state.store.list_tokens().await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
    /// The weight the token's reviews count with (expert, product_lead,
    /// tech_lead, team, external); without one the token does not vote.
    #[serde(default)]
    tester_role: Option<String>,
}

async fn create_token(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let role: Role = body
        .role
        .parse()
        .map_err(|e: String| ApiError::unprocessable("bad_role", e))?;
    let tester_role = body
        .tester_role
        .as_deref()
        .map(str::parse::<factory_core::consensus::TesterRole>)
        .transpose()
        .map_err(|e| ApiError::unprocessable("bad_tester_role", format!("tester_role: {e}")))?;
    let (secret, record) = auth::create_token(
        state.store.as_ref(),
        &body.name,
        role,
        &caller.actor,
        tester_role,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": secret,
            "id": record.id,
            "name": record.name,
            "role": record.role,
            "tester_role": record.tester_role,
            "note": "shown once; only its hash is stored",
        })),
    ))
}

async fn revoke_token(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state
        .store
        .revoke_token(&id, factory_engine::now_ms())
        .await?
    {
        state.tokens.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "token_not_found",
            format!("no live token `{id}`; GET /api/v1/tokens lists them"),
        ))
    }
}
