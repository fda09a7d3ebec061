//! `POST /api/v1/hooks/{template}/{block}` (and a block's declared
//! `trigger.webhook` path under the same prefix): signed deliveries to a
//! stream template's intake. No token: the Standard Webhooks signature
//! with the hook's secret is the credential. A bad signature or a stale
//! timestamp is 401 and stores nothing; a replayed `webhook-id` is
//! acknowledged (200) and not processed again; a new record is 202.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use factory_store::Receipt;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::ApiError;
use crate::signature::{self, HookSecret};

/// The largest delivery body accepted.
pub const MAX_HOOK_BODY: usize = 1024 * 1024;

pub async fn receive(
    State(state): State<SharedState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (pipeline, intake) = find_intake(&state, &path)?;
    let template_id = pipeline.template().id.clone();
    let secret_env = intake
        .webhook()
        .map(|(_, env)| env.to_string())
        .unwrap_or_default();
    let secret_text = std::env::var(&secret_env).unwrap_or_default();
    // What is wrong is logged, not told: the caller is not authenticated.
    if secret_text.is_empty() {
        tracing::warn!(template = %template_id, block = %intake.block, variable = %secret_env, "a delivery came for a hook whose secret is not set on this server");
        return Err(unverifiable());
    }
    let secret = HookSecret::parse(&secret_text).map_err(|problem| {
        tracing::warn!(template = %template_id, block = %intake.block, variable = %secret_env, %problem, "a hook's secret is not a webhook secret");
        unverifiable()
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = factory_engine::now_ms() / 1000;
    signature::verify(
        &secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        now,
    )
    .map_err(|rejected| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            rejected.code(),
            rejected.to_string(),
        )
    })?;
    let webhook_id = header("webhook-id").unwrap_or_default().to_string();
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("bad_json", format!("the delivery's body is not JSON: {e}"))
    })?;
    let delivered = state
        .engine
        .receive_delivery(&pipeline, &intake.block, &payload, Some(&webhook_id))
        .await?;
    if delivered.receipt == Receipt::Created {
        state.streams.wake(&template_id);
    }
    let status = match delivered.receipt {
        Receipt::Created => StatusCode::ACCEPTED,
        Receipt::KnownRecord | Receipt::Replayed => StatusCode::OK,
    };
    let body = json!({
        "receipt": delivered.receipt,
        "template": template_id,
        "block": intake.block,
        "key": delivered.key,
        "state": delivered.state,
        "webhook_id": webhook_id,
    });
    Ok((status, Json(body)).into_response())
}

/// `{template}/{block}` first, then the declared paths of every stream.
/// The 404 names no template or block: the caller is not authenticated.
fn find_intake(
    state: &SharedState,
    path: &str,
) -> Result<
    (
        std::sync::Arc<factory_core::Pipeline>,
        factory_core::stream::Intake,
    ),
    ApiError,
> {
    let trimmed = path.trim_matches('/');
    if let Some((template, block)) = trimmed.split_once('/')
        && let Some(pipeline) = state.streams.pipeline(template)
        && let Some(intake) = pipeline
            .stream()
            .and_then(|plan| plan.webhook_intake(block))
            .cloned()
    {
        return Ok((pipeline, intake));
    }
    for pipeline in state.streams.pipelines() {
        if let Some(intake) = pipeline
            .stream()
            .and_then(|p| p.intake_at_path(trimmed))
            .cloned()
        {
            return Ok((pipeline, intake));
        }
    }
    Err(ApiError::not_found(
        "unknown_hook",
        format!(
            "no hook at `/api/v1/hooks/{trimmed}`: post to `/api/v1/hooks/<template>/<intake block>` of a stream template this server runs, or to a block's declared `trigger.webhook` path"
        ),
    ))
}

fn unverifiable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "hook_secret_missing",
        "this hook cannot check signatures on this server: its secret is not set or not a `whsec_` secret (the server's log names the variable)",
    )
}
