//! Records of stream templates: `GET /api/v1/records?template=&state=&status=`,
//! one record with its history, and a person's retry of a failed record.

use axum::Json;
use axum::extract::{Path, Query, State};
use factory_core::stream::settle::RecordStatus;
use factory_store::RecordFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    template: Option<String>,
    state: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let Some(template) = q.template.filter(|t| !t.is_empty()) else {
        return Err(ApiError::bad_request(
            "missing_template",
            "name the stream template: GET /api/v1/records?template=<id>",
        ));
    };
    if let Some(status) = &q.status
        && RecordStatus::parse(status).is_none()
    {
        return Err(ApiError::bad_request(
            "bad_status",
            format!("status `{status}` is not one of ready, failed, done"),
        ));
    }
    let states = state
        .streams
        .pipeline(&template)
        .and_then(|p| p.stream().map(|s| s.states.clone()));
    if let (Some(states), Some(wanted)) = (&states, &q.state)
        && !states.contains(wanted)
    {
        return Err(ApiError::bad_request(
            "bad_state",
            format!(
                "`{template}` has no state `{wanted}`; its states: {}",
                states.join(", ")
            ),
        ));
    }
    let filter = RecordFilter {
        template_id: template.clone(),
        state: q.state,
        status: q.status,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let (records, counts) = state.engine.records(&filter).await?;
    let firings = state.engine.firings(&template, 20).await?;
    Ok(Json(json!({
        "template": template,
        "states": states,
        "counts": counts,
        "records": records,
        "firings": firings,
    })))
}

pub async fn get(
    State(state): State<SharedState>,
    Path((template, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (record, history) = state.engine.record(&template, &key).await?;
    Ok(Json(json!({ "record": record, "history": history })))
}

pub async fn retry(
    State(state): State<SharedState>,
    caller: Caller,
    Path((template, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    state
        .engine
        .retry_record(&caller.actor, &template, &key)
        .await?;
    state.streams.wake(&template);
    let (record, history) = state.engine.record(&template, &key).await?;
    Ok(Json(json!({ "record": record, "history": history })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddQuery {
    block: Option<String>,
}

/// A person adds a record through the stream's manual intake: 201 with
/// the new record, 200 when its key is known (nothing changes).
pub async fn add(
    State(state): State<SharedState>,
    caller: Caller,
    Path(template): Path<String>,
    Query(q): Query<AddQuery>,
    crate::error::ApiJson(payload): crate::error::ApiJson<Value>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let Some(pipeline) = state.streams.pipeline(&template) else {
        return Err(ApiError::not_found(
            "unknown_stream",
            format!("`{template}` is not a stream template this server runs"),
        ));
    };
    let delivered = state
        .engine
        .add_record(&caller.actor, &pipeline, q.block.as_deref(), &payload)
        .await?;
    let status = if delivered.receipt == factory_store::Receipt::Created {
        state.streams.wake(&template);
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "receipt": delivered.receipt, "key": delivered.key, "state": delivered.state }),
        ),
    )
        .into_response())
}
