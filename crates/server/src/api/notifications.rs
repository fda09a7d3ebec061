//! The notification outbox (README "Notifications"):
//! `GET /api/v1/notifications?status=&run=&channel=&limit=`, newest first,
//! and `POST /api/v1/notifications/{id}/retry` (send a failed one again).

use axum::Json;
use axum::extract::{Path, Query, State};
use factory_core::notify::NotificationStatus;
use factory_store::NotificationFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    run: Option<String>,
    channel: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let status = non_empty(q.status)
        .map(|s| s.parse::<NotificationStatus>())
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_status", e))?;
    let run_id = match non_empty(q.run) {
        Some(run) => Some(state.engine.store().resolve_run_id(&run).await?),
        None => None,
    };
    let filter = NotificationFilter {
        status,
        run_id,
        channel: non_empty(q.channel),
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let notifications = state.engine.notifications(&filter).await?;
    let configured = state.engine.config().notifications.as_ref();
    Ok(Json(json!({
        "configured": configured.is_some(),
        "channels": configured.map(|n| n.channel_names()).unwrap_or_default(),
        "notifications": notifications,
    })))
}

pub async fn retry(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.engine.retry_notification(&id).await?;
    Ok(Json(json!({"id": id, "status": "pending"})))
}
