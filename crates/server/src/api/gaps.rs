//! A run's gaps ([`factory_core::gaps`]): listed for the Gaps panels and
//! `GET`, accepted or reopened by a reviewer through the engine.

use axum::Json;
use axum::extract::{Path, State};
use factory_core::gaps::GapStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// `accepted` (a hole the clone lives with) or `open` (reopen it).
    pub status: GapStatus,
    #[serde(default)]
    pub note: String,
}

/// `GET /api/v1/runs/{run}/gaps`: every gap of the run and where it stands.
pub async fn list(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let run_id = state.store.resolve_run_id(&run).await?;
    let doc = state.store.load_run(&run_id).await?.doc;
    Ok(Json(json!({
        "open": doc.gaps.values().filter(|g| g.status == GapStatus::Open).count(),
        "gaps": doc.gaps.values().collect::<Vec<_>>(),
    })))
}

/// `POST /api/v1/runs/{run}/gaps/{id}`: the caller accepts or reopens a gap.
pub async fn decide(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<DecideBody>,
) -> ApiResult<Json<Value>> {
    let run_id = state.store.resolve_run_id(&run).await?;
    let doc = state
        .engine
        .decide_gap(&caller.actor, &run_id, &id, body.status, &body.note)
        .await?;
    Ok(Json(json!({ "gap": doc.gaps.get(&id) })))
}
