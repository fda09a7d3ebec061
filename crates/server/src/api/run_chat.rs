//! The META chat on the run page ([`factory_engine::chat`]): its history for
//! anyone who may read the run, a turn for reviewers.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use factory_engine::chat::RUN_CHAT;

use crate::SharedState;
use crate::api::blocks::ChatBody;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiResult};

/// `GET /api/v1/runs/{run}/chat`: the run chat's messages, oldest first, and
/// why a turn cannot be had when it cannot.
pub async fn history(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let handle = state.engine.open(&run).await?;
    let records =
        factory_engine::chat::chat_records(&state.engine, &handle.doc().run_id, RUN_CHAT).await?;
    let messages: Vec<Value> = records
        .into_iter()
        .map(|(r, m)| json!({ "role": m.role, "text": m.text, "model": m.model, "actor": r.actor, "at": r.at }))
        .collect();
    let unavailable = state.engine.run_chat_unavailable(&handle);
    Ok(Json(
        json!({ "messages": messages, "unavailable": unavailable }),
    ))
}

/// `POST /api/v1/runs/{run}/chat`: one turn; the answer is grounded in the
/// run's brief (blocks, audits, gaps, corrections, convergence).
pub async fn turn(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
    ApiJson(body): ApiJson<ChatBody>,
) -> ApiResult<Json<Value>> {
    let message = body.message()?;
    let run_id = state.store.resolve_run_id(&run).await?;
    let reply = state
        .engine
        .run_chat(&caller.actor, &run_id, &message)
        .await?;
    Ok(Json(
        serde_json::to_value(reply).map_err(crate::error::ApiError::internal)?,
    ))
}
