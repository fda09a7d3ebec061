//! Server-sent events. Each event's `id` is the run's event `seq`, so a
//! client that reconnects (after a network blip or a server restart) sends
//! `Last-Event-ID` and gets exactly what it missed from the store before
//! the live tail resumes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::SharedState;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::hub::LiveEvent;

/// Resolves when the server stops, ending the stream (the client reconnects
/// to the next server).
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// How long a client waits before reconnecting.
const RETRY: Duration = Duration::from_millis(1000);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Send events after this seq (pages pass the seq they were rendered at).
    #[serde(default)]
    after: Option<u64>,
}

fn to_sse(event: &LiveEvent, id: String) -> Event {
    Event::default()
        .id(id)
        .event(event.kind.as_str())
        .json_data(event)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}

/// A stream lagging this far behind the hub gets a `resync` event: reload.
fn resync() -> Event {
    Event::default()
        .event("resync")
        .data("missed events; reload the run")
}

/// Resolves when the stream must end: the server stops, or the token that
/// opened it is revoked (a revoked token must not keep reading every event).
async fn ended(state: SharedState, caller: Caller) {
    tokio::select! {
        _ = stopped(state.stopping.clone()) => {}
        _ = state.tokens.until_revoked(state.store.as_ref(), caller.token_hash) => {}
    }
}

pub async fn run_stream(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let run_id = state.store.resolve_run_id(&run).await?;
    // Subscribe before reading the backlog so nothing falls in between.
    let live = BroadcastStream::new(state.hub.subscribe());
    let stored = state.store.load_run(&run_id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let after = last_event_id.or(query.after).unwrap_or(stored.doc.seq);
    let run = factory_engine::Observed {
        doc: &stored.doc,
        counts: factory_core::scheduler::StatusCounts::of(&stored.doc),
    };
    let backlog: Vec<LiveEvent> = state
        .store
        .events(&run_id, after)
        .await?
        .iter()
        .map(|record| LiveEvent::new(record, &run))
        .collect();
    let mut sent = backlog.last().map_or(after, |e| e.seq);
    let hello = Event::default()
        .event("hello")
        .retry(RETRY)
        .data(format!("{{\"run_id\":\"{run_id}\",\"after\":{after}}}"));
    let backlog = stream::iter(
        std::iter::once(hello)
            .chain(backlog.iter().map(|e| to_sse(e, e.seq.to_string())))
            .map(Ok)
            .collect::<Vec<_>>(),
    );
    let live = live.filter_map(move |item| {
        let out = match item {
            Ok(event) if event.run_id == run_id && event.seq > sent => {
                sent = event.seq;
                Some(Ok(to_sse(&event, event.seq.to_string())))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(_)) => Some(Ok(resync())),
        };
        std::future::ready(out)
    });
    let stream = backlog.chain(live).take_until(ended(state.clone(), caller));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

/// Every run's events, for the runs home page and dashboards.
pub async fn all_stream(
    State(state): State<SharedState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hello = Event::default().event("hello").retry(RETRY).data("{}");
    let live = BroadcastStream::new(state.hub.subscribe()).filter_map(|item| {
        std::future::ready(Some(Ok(match item {
            Ok(event) => to_sse(&event, format!("{}:{}", event.run_id, event.seq)),
            Err(BroadcastStreamRecvError::Lagged(_)) => resync(),
        })))
    });
    let stream = stream::once(std::future::ready(Ok(hello)))
        .chain(live)
        .take_until(ended(state.clone(), caller));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
