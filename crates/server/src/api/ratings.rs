//! Ratings of lens outputs (`factory rate`, the run page's form): taken
//! through the engine, read back per run and per template.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use factory_core::lens::RatingEntry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBody {
    /// A perspective (`perspective[positioning]`, or a block with a fixed
    /// `lens.perspective`) or an aggregate.
    pub block: String,
    /// 1 to 5.
    pub score: i64,
    #[serde(default)]
    pub comment: String,
}

/// `POST /api/v1/runs/{run}/ratings`: the caller rates one output; a
/// second rating of the same output replaces the first.
pub async fn rate(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
    ApiJson(body): ApiJson<RateBody>,
) -> ApiResult<(StatusCode, Json<RatingEntry>)> {
    let entry = state
        .engine
        .rate(&caller.actor, &run, &body.block, body.score, &body.comment)
        .await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// `GET /api/v1/runs/{run}/ratings`: the run's ratings, and the past
/// ratings it started from.
pub async fn of_run(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let ratings = state.engine.run_ratings(&run).await?;
    let run_id = state.store.resolve_run_id(&run).await?;
    let doc = state.store.load_run(&run_id).await?.doc;
    Ok(Json(json!({
        "ratings": ratings,
        "past_ratings": doc.past_ratings,
    })))
}

/// `GET /api/v1/templates/{template}/ratings`: every rating of the
/// template's runs, newest first, and one summary per output and
/// aggregate key.
pub async fn of_template(
    State(state): State<SharedState>,
    Path(template): Path<String>,
) -> ApiResult<Json<Value>> {
    let ratings = state.engine.template_ratings(&template).await?;
    Ok(Json(json!({
        "summaries": factory_core::lens::summaries(&ratings),
        "ratings": ratings,
    })))
}
