//! The records of a stream template: how many sit in each state (waiting,
//! being worked on, failed, done), the records themselves filtered by state
//! and status — failed ones with their error and a retry button — and one
//! record's data and history. The pages look again every two seconds.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::stream::StreamPlan;
use factory_store::{RecordCount, RecordFilter};
use maud::{Markup, html};
use serde::Deserialize;

use crate::SharedState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

#[derive(Debug, Default, Deserialize)]
pub struct RecordsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// Records listed per page.
const PAGE: u32 = 200;

/// Every stream template this server runs, with its records per state.
pub async fn index(State(state): State<SharedState>, caller: Caller) -> Response {
    let mut streams = Vec::new();
    for pipeline in state.streams.pipelines() {
        let id = pipeline.template().id.clone();
        let counts = match state
            .store
            .count_records(&id, factory_engine::now_ms())
            .await
        {
            Ok(counts) => counts,
            Err(error) => return super::page_error(&caller, error.into()),
        };
        streams.push((pipeline, counts));
    }
    let mut triggered = Vec::new();
    for pipeline in state.streams.triggered() {
        let firings = match state.engine.firings(&pipeline.template().id, 5).await {
            Ok(firings) => firings,
            Err(error) => return super::page_error(&caller, error.into()),
        };
        triggered.push((pipeline, firings));
    }
    let body = html! {
        section.panel #streams data-live {
            h1 { "Streams" }
            @if streams.is_empty() {
                p.muted { "This server runs no stream template. Put one in its templates folder (see README, \"Stream templates\")." }
            }
            table.records {
                thead { tr { th { "Template" } th { "States" } th.num { "Records" } th.num { "Failed" } th.num { "Done" } } }
                tbody {
                    @for (pipeline, counts) in &streams {
                        @let id = &pipeline.template().id;
                        @let plan = pipeline.stream();
                        tr {
                            td { a href={ "/streams/" (super::url_escape(id)) } { (pipeline.template().name) } " " code { (id) } }
                            td { (plan.map(|p| p.states.join(" → ")).unwrap_or_default()) }
                            td.num { (counts.iter().map(|c| c.count).sum::<u64>()) }
                            td.num { (counts.iter().filter(|c| c.status == "failed").map(|c| c.count).sum::<u64>()) }
                            td.num { (counts.iter().filter(|c| c.status == "done").map(|c| c.count).sum::<u64>()) }
                        }
                    }
                }
            }
        }
        section.panel #run-triggers data-live {
            h2 { "Run triggers" }
            @if triggered.is_empty() {
                p.muted { "No template of this server starts runs on its own. A cron or event trigger on a block without dependencies does (see README, \"Events and triggers\")." }
            } @else {
                table.records {
                    thead { tr { th { "Template" } th { "Trigger" } th { "Last firings" } } }
                    tbody {
                        @for (pipeline, firings) in &triggered {
                            @for starter in pipeline.starters() {
                                tr {
                                    td { (pipeline.template().name) " " code { (pipeline.template().id) } }
                                    td {
                                        code { (starter.block) } " "
                                        @match &starter.kind {
                                            factory_core::starter::StarterKind::Cron { expression, timezone, .. } => {
                                                "cron " code { (expression) }
                                                @if let Some(zone) = timezone { " (" (zone) ")" }
                                            }
                                            factory_core::starter::StarterKind::Event(filter) => {
                                                "event " code { (filter.to_string()) }
                                            }
                                        }
                                    }
                                    td {
                                        @let own: Vec<_> = firings.iter().filter(|f| f.block == starter.block).collect();
                                        @if own.is_empty() { span.muted { "not yet" } }
                                        ul.firings {
                                            @for f in own {
                                                li {
                                                    (factory_core::run::format_utc(f.fired_at)) ": "
                                                    @if let Some(run) = &f.run_id {
                                                        "started " a href={ "/runs/" (super::url_escape(run)) } { code { (run.get(..8).unwrap_or(run)) } }
                                                    } @else if let Some(error) = &f.error {
                                                        span.error { (error) }
                                                    } @else {
                                                        span.muted { "running" }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout_polling("Streams", &caller, body).into_response()
}

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Path(template): Path<String>,
    Query(query): Query<RecordsQuery>,
) -> Response {
    match render_list(&state, &caller, &template, query).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

pub async fn record_page(
    State(state): State<SharedState>,
    caller: Caller,
    Path((template, key)): Path<(String, String)>,
) -> Response {
    match render_record(&state, &caller, &template, &key).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

/// The stream's states, from the running template (and any others its
/// records are in, e.g. after the template was edited).
fn states_of(plan: Option<&StreamPlan>, counts: &[RecordCount]) -> Vec<String> {
    // The template's states, then any its records are in that it no longer
    // has (an edited template), so no record is hidden.
    let mut seen = plan.map(|p| p.states.clone()).unwrap_or_default();
    for c in counts {
        if !seen.contains(&c.state) {
            seen.push(c.state.clone());
        }
    }
    seen
}

fn count(counts: &[RecordCount], state: &str, status: &str) -> u64 {
    counts
        .iter()
        .filter(|c| c.state == state && c.status == status)
        .map(|c| c.count)
        .sum()
}

async fn render_list(
    state: &SharedState,
    caller: &Caller,
    template: &str,
    query: RecordsQuery,
) -> Result<Markup, ApiError> {
    let status = query.status.filter(|s| !s.is_empty());
    let wanted_state = query.state.filter(|s| !s.is_empty());
    let filter = RecordFilter {
        template_id: template.to_string(),
        state: wanted_state.clone(),
        status: status.clone(),
        limit: PAGE,
    };
    let (rows, counts) = state.engine.records(&filter).await?;
    let firings = state.engine.firings(template, 5).await?;
    // The running template, looked up once for everything the page shows.
    let pipeline = state.streams.pipeline(template);
    let plan = pipeline.as_ref().and_then(|p| p.stream());
    let running = plan.is_some();
    let states = states_of(plan, &counts);
    let manual_intake = plan
        .and_then(|p| p.manual_intake(None))
        .map(|i| i.block.clone());
    let track_per = plan.map(|p| p.track_per.as_str()).unwrap_or_default();
    if !running && counts.is_empty() {
        return Err(ApiError::not_found(
            "unknown_stream",
            format!(
                "`{template}` is not a stream template this server runs, and it has no records"
            ),
        ));
    }
    let total: u64 = counts.iter().map(|c| c.count).sum();
    let failed: u64 = counts
        .iter()
        .filter(|c| c.status == "failed")
        .map(|c| c.count)
        .sum();
    let can_retry = caller.role >= Role::Operator;
    let body = html! {
        section.panel {
            h1 { "Records of " code { (template) } }
            p.muted {
                (total) " records"
                @if failed > 0 { ", " strong.failed { (failed) " failed" } }
                @if running { " · running here" } @else { " · not running on this server" }
                " · deliveries: " code { "POST /api/v1/hooks/" (template) "/<intake>" }
            }
            ol #record-states .record-states data-live aria-label="records per state" {
                @for (i, name) in states.iter().enumerate() {
                    @let waiting = count(&counts, name, "ready");
                    @let working: u64 = counts.iter().filter(|c| &c.state == name).map(|c| c.working).sum();
                    @let failed_here = count(&counts, name, "failed");
                    @let done = count(&counts, name, "done");
                    li.record-state data-state=(name) {
                        a href={ "?state=" (super::url_escape(name)) } { strong { (name) } }
                        span.step { "state " (i + 1) " of " (states.len()) }
                        @if i + 1 == states.len() {
                            span.status.done { (done) " done" }
                        } @else {
                            span.status.ready { (waiting.saturating_sub(working)) " waiting" }
                            @if working > 0 { span.status.running { (working) " working" } }
                        }
                        @if failed_here > 0 {
                            a.status.failed href={ "?state=" (super::url_escape(name)) "&status=failed" } { (failed_here) " failed" }
                        }
                    }
                }
            }
        }
        @if let Some(manual) = manual_intake.filter(|_| caller.role >= Role::Operator) {
            section.panel {
                h2 { "Add a record" }
                form.add-record data-action="add-record" data-template=(template) data-block=(manual) {
                    label for="record-json" { "The record, as JSON (with its " code { (track_per) } " field)" }
                    textarea #record-json name="record" rows="4" required { }
                    button type="submit" { "Add" }
                    span.error data-error {}
                }
            }
        }
        @if !firings.is_empty() {
            section.panel #firings data-live {
                h2 { "Cron firings" }
                table.records {
                    thead { tr { th { "Intake" } th { "Tick" } th.num { "New" } th.num { "Known" } th { "Notes" } } }
                    tbody {
                        @for f in &firings {
                            tr {
                                td { code { (f.block) } }
                                td { (factory_core::run::format_utc(f.tick)) }
                                td.num { (f.created.map(|n| n.to_string()).unwrap_or_default()) }
                                td.num { (f.known.map(|n| n.to_string()).unwrap_or_default()) }
                                td.error {
                                    @if let Some(error) = &f.error { (error) }
                                    @else if f.finished_at.is_none() { "running (or interrupted)" }
                                    @else if f.skipped > 0 { (f.skipped) " missed ticks skipped before it" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            form.filters method="get" {
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for name in &states {
                            option value=(name) selected[wanted_state.as_deref() == Some(name.as_str())] { (name) }
                        }
                    }
                }
                label { "Status "
                    select name="status" {
                        option value="" { "any" }
                        @for s in ["ready", "failed", "done"] {
                            option value=(s) selected[status.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                button type="submit" { "Show" }
            }
            table #records .records data-live {
                thead { tr { th { "Record" } th { "State" } th { "Status" } th { "Attempts" } th { "Updated" } th { "Error" } @if can_retry { th {} } } }
                tbody {
                    @for r in &rows {
                        @let shown = if r.working { "working" } else { r.status.as_str() };
                        tr data-record=(r.key) {
                            td { a href={ "/streams/" (super::url_escape(template)) "/records/" (super::url_escape(&r.key)) } { code { (r.key) } } }
                            td { (r.state) }
                            td { span.status.(shown) { (shown) } }
                            td.num { (r.attempts) }
                            td { (factory_core::run::format_utc(r.updated_at)) }
                            td.error { (r.error.as_deref().unwrap_or("")) }
                            @if can_retry {
                                td {
                                    @if r.status == "failed" {
                                        form data-action="retry-record" data-template=(template) data-key=(r.key) {
                                            button type="submit" { "Retry" }
                                            span.error data-error {}
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="7" .muted { "No records here." } } }
                }
            }
        }
    };
    Ok(layout_polling(
        &format!("Records · {template}"),
        caller,
        body,
    ))
}

async fn render_record(
    state: &SharedState,
    caller: &Caller,
    template: &str,
    key: &str,
) -> Result<Markup, ApiError> {
    let (record, history) = state.engine.record(template, key).await?;
    let data = record
        .data
        .as_ref()
        .map(|d| serde_json::to_string_pretty(d).unwrap_or_default())
        .unwrap_or_default();
    let shown = if record.working {
        "working"
    } else {
        record.status.as_str()
    };
    let body = html! {
        section.panel #record data-live {
            p { a href={ "/streams/" (super::url_escape(template)) } { "← records of " (template) } }
            h1 { "Record " code { (record.key) } }
            p {
                "State " strong { (record.state) } " · " span.status.(shown) { (shown) }
                @if record.attempts > 0 { " · " (record.attempts) " failed attempt(s) at its next move" }
            }
            @if let Some(error) = &record.error { p.error role="alert" { (error) } }
            @if record.status == "failed" && caller.role >= Role::Operator {
                form data-action="retry-record" data-template=(template) data-key=(record.key) {
                    button type="submit" { "Retry" }
                    span.error data-error {}
                }
            }
            h2 { "History" }
            ol.record-history {
                @for entry in &history {
                    li data-kind=(entry.event.kind()) {
                        span.muted { (factory_core::run::format_utc(entry.at)) } " "
                        (describe(&entry.event))
                    }
                }
            }
            h2 { "Data" }
            pre.data tabindex="0" aria-label="the record's data" { (data) }
        }
    };
    Ok(layout_polling(&format!("{key} · {template}"), caller, body))
}

fn describe(event: &factory_core::stream::settle::RecordEvent) -> Markup {
    use factory_core::stream::settle::RecordEvent;
    match event {
        RecordEvent::Received {
            block,
            webhook_id,
            tick,
            by,
            event,
        } => html! {
            "received by " code { (block) }
            @if let Some(id) = webhook_id { " (delivery " code { (id) } ")" }
            @if let Some(tick) = tick { " (found at its " (factory_core::run::format_utc(*tick)) " tick)" }
            @if let Some(by) = by { " (added by " (by) ")" }
            @if let Some(seq) = event { " (from feed event #" (seq) ")" }
        },
        RecordEvent::Moved {
            block,
            from,
            to,
            attempt,
        } => html! {
            code { (block) } " moved it " (from) " → " strong { (to) }
            @if *attempt > 1 { " (attempt " (attempt) ")" }
        },
        RecordEvent::AttemptFailed {
            block,
            attempt,
            error,
            retry_at,
        } => html! {
            code { (block) } " attempt " (attempt) " failed: " span.error { (error) }
            " — tried again at " (factory_core::run::format_utc(*retry_at))
        },
        RecordEvent::Failed {
            block,
            attempt,
            error,
        } => html! {
            code { (block) } " gave up after attempt " (attempt) ": " span.error { (error) }
        },
        RecordEvent::Retried { actor } => html! { "retried by " (actor) },
    }
}

/// The page frame, looking again every two seconds (records have no
/// event stream of their own yet).
fn layout_polling(title: &str, caller: &Caller, body: Markup) -> Markup {
    super::layout_with(title, caller, None, Some(2000), body)
}
