//! The factory's event feed: `GET /api/v1/events?name=&template=&run=&before=&limit=`,
//! newest first (what `event` triggers wait for; README "Events").

use axum::Json;
use axum::extract::{Query, State};
use factory_store::FeedFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::ApiResult;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    name: Option<String>,
    template: Option<String>,
    run: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let run_id = match non_empty(q.run) {
        Some(run) => Some(state.engine.store().resolve_run_id(&run).await?),
        None => None,
    };
    let filter = FeedFilter {
        name: non_empty(q.name),
        template_id: non_empty(q.template),
        run_id,
        before_seq: q.before,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let events = state.engine.feed(&filter).await?;
    // The next page: events numbered below the last one here.
    let next = (events.len() as u32 == filter.limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({
        "vocabulary": factory_core::bus::VOCABULARY,
        "events": events,
        "next_before": next,
    })))
}
