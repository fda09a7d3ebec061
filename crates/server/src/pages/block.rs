//! The block workbench: Guide on the left; Inputs, Outputs and Logic tabs in
//! the centre; QA and Chat on the right.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::run::{BlockStatus, GatePhase};
use factory_core::template::{Autonomy, HumanGate};
use factory_store::kinds;
use maud::{Markup, html};
use serde::Deserialize;

use super::render;
use crate::SharedState;
use crate::api::{BlockView, block_view, selected_attempt};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

#[derive(Debug, Default, Deserialize)]
pub struct BlockQuery {
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub a: Option<u32>,
    #[serde(default)]
    pub b: Option<u32>,
}

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    Query(query): Query<BlockQuery>,
) -> Response {
    match render_block_page(&state, &caller, &run, &block, &query).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

pub async fn render_block_page(
    state: &SharedState,
    caller: &Caller,
    run: &str,
    block: &str,
    query: &BlockQuery,
) -> Result<Markup, ApiError> {
    let view = block_view(state, run, block).await?;
    let run_id = view.doc.run_id.clone();
    let drafts: BTreeMap<String, serde_json::Value> = state
        .store
        .records(&run_id, kinds::DRAFT)
        .await?
        .into_iter()
        .map(|r| (r.key, r.body))
        .collect();
    let draft = |key: &str, field: &str| -> String {
        drafts
            .get(key)
            .and_then(|d| d.get(field))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };

    let guide = guide(&view);
    let across = across_runs(state, &view).await;
    let inputs = inputs(state, &view).await?;
    let outputs = outputs(state, &view, query, caller).await?;
    let logic = logic(&view, caller);
    // Who may not approve a guarded gate: read from the log only then.
    let state_now = &view.doc.blocks[&view.block.id];
    let may_not_approve =
        if state_now.status == BlockStatus::Waiting && view.block.execution.separate_reviewer {
            let records = state.store.events(&run_id, 0).await?;
            factory_core::run::ran_by(&records, &view.block.id)
        } else {
            Default::default()
        };
    let words = super::explain::state_in_words(
        &view.template,
        &view.doc,
        &view.block.id,
        factory_engine::now_ms(),
        &may_not_approve,
    );
    let qa = qa(
        &view,
        caller,
        &draft(&format!("reject-{block}"), "feedback"),
        words.as_deref(),
    );
    let chat = chat(
        state,
        &view,
        caller,
        &draft(&format!("chat-{block}"), "message"),
    )
    .await?;

    let body = html! {
        p.crumbs { a href={"/runs/" (run_id)} { "← " (view.template.name) " run " code { (&run_id[..run_id.len().min(13)]) } } }
        h1 { (view.block.name) " " span.muted { code { (view.block.id) } } }
        @if let Some(page) = view.block.inputs.config.get("page").and_then(|p| p.as_str()).filter(|_| view.block.inputs.config.get("builtin").and_then(|b| b.as_str()) == Some("review-page")) {
            p.notice { "This block publishes the " (page) " page: " a #review-page-link href={"/runs/" (run_id) "/review/" (view.block.id)} { "open it" } " · " a href={"/runs/" (run_id) "/convergence"} { "convergence" } }
        }
        div.workbench {
            aside.panel.guide { (guide) (across) }
            section.panel.centre {
                nav.tabs role="tablist" aria-label="Block" {
                    @for (name, label) in TABS {
                        @let active = name == "outputs";
                        button type="button" role="tab" id={"tab-button-" (name)} data-tab=(name)
                            aria-controls={"tab-" (name)} aria-selected=(active)
                            tabindex=(if active { "0" } else { "-1" }) class=[active.then_some("active")] { (label) }
                    }
                }
                div.tab #tab-inputs role="tabpanel" aria-labelledby="tab-button-inputs" hidden { (inputs) }
                div.tab #tab-outputs role="tabpanel" aria-labelledby="tab-button-outputs" { (outputs) }
                div.tab #tab-logic role="tabpanel" aria-labelledby="tab-button-logic" hidden { (logic) }
            }
            aside.panel.side {
                (qa)
                (gaps_panel(&view, caller))
                (chat)
            }
        }
    };
    Ok(super::layout(
        &format!("{} · {}", view.block.name, view.template.name),
        caller,
        Some((&run_id, view.doc.seq)),
        body,
    ))
}

/// The centre panel's tabs: (name, label).
/// How much of a log the page shows (its end); the rest is a link away.
const LOG_TAIL: usize = 16 * 1024;

/// The last `max` bytes of a log as text, starting at a line when cut.
fn log_tail(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let tail = &bytes[bytes.len() - max..];
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

const TABS: [(&str, &str); 3] = [
    ("inputs", "Inputs"),
    ("outputs", "Outputs"),
    ("logic", "Logic"),
];

/// An attempt's outcome in words; `running` while it has none.
pub(super) fn outcome_words(outcome: Option<factory_core::run::AttemptOutcome>) -> &'static str {
    use factory_core::run::AttemptOutcome;
    match outcome {
        None => "running",
        Some(AttemptOutcome::Succeeded) => "succeeded",
        Some(AttemptOutcome::ThresholdMissed) => "threshold missed",
        Some(AttemptOutcome::Failed) => "failed",
        Some(AttemptOutcome::TimedOut) => "timed out",
        Some(AttemptOutcome::Abandoned) => "abandoned",
    }
}

fn guide(view: &BlockView) -> Markup {
    let block = &view.block;
    let skill_text = block.skill.as_ref().and_then(|skill| {
        let dir = std::path::Path::new(view.template_path.as_deref()?).parent()?;
        factory_runtime::llm::read_skill(dir, skill).ok()
    });
    html! {
        h2 { "Guide" }
        @if let Some(d) = &block.description { p { (d) } }
        p.muted { "Layer " (block.layer) " · runtime " (block.runtime.as_str()) }
        h3 { "Checklist" }
        ul.checklist {
            @for a in &block.outputs.artifacts { li { "Produces " code { (a.key) } " (" (a.path) ")" } }
            @for d in &block.inputs.depends { li { "Reads " code { (d.block) "." (d.key) } } }
            @if let Some(t) = &block.execution.threshold { li { "Metric " code { (t.metric) } " must reach " (t.min) } }
            @if let Some(audit) = &block.audit {
                @if let Some(t) = audit.threshold { li { "Audit composite must reach " (t) @if audit.retry { " (retried with the audit's suggestions)" } } }
                @if !audit.golden.is_empty() { li { "Compared with golden examples: " (audit.golden.keys().cloned().collect::<Vec<_>>().join(", ")) } }
            }
            @match block.execution.human_gate {
                HumanGate::Before => li { "A reviewer approves before it runs" },
                HumanGate::After => li { "A reviewer approves its output before anything downstream runs" },
                HumanGate::None => {},
            }
            @if block.execution.separate_reviewer { li { "Whoever started it may not approve it" } }
        }
        @if let Some(skill) = &block.skill {
            h3 { "Skill " code { (skill) } }
            @match &skill_text {
                Some(text) => details.skill { summary { "SKILL.md" } div.markdown { (render::markdown(text)) } },
                None => p.muted { "The skill file is not readable from this server." },
            }
        }
    }
}

async fn inputs(state: &SharedState, view: &BlockView) -> Result<Markup, ApiError> {
    let block = &view.block;
    let mut upstream = Vec::new();
    for dependency in &block.inputs.depends {
        // A fan-out block is read through each of its done instances.
        let from: Vec<String> = match view
            .doc
            .dependency_artifacts(&dependency.block, &dependency.key)
        {
            Ok(found) if !found.is_empty() => found.into_iter().map(|(id, _)| id).collect(),
            _ => vec![dependency.block.clone()],
        };
        for from in from {
            let content = match view.doc.blocks.get(&from).and_then(|s| s.last_success()) {
                Some(attempt) => match crate::api::blocks::artifact_content(
                    state,
                    attempt,
                    &from,
                    &dependency.key,
                )
                .await
                {
                    Ok((format, bytes)) => {
                        let url = format!(
                            "/api/v1/runs/{}/blocks/{}/artifacts/{}?attempt={}",
                            super::url_escape(&view.doc.run_id),
                            super::url_escape(&from),
                            super::url_escape(&dependency.key),
                            attempt.n
                        );
                        Some((attempt.n, render::artifact(format, &bytes, &url)))
                    }
                    Err(_) => None,
                },
                None => None,
            };
            upstream.push((from, &dependency.key, content));
        }
    }
    let own = view.doc.blocks.get(&block.id);
    let item = own.and_then(|s| s.instance.as_ref());
    let instances: Vec<(String, &str)> = own
        .and_then(|s| s.instances.as_ref())
        .map(|keys| {
            keys.iter()
                .map(|key| {
                    let id = factory_core::run::instance_id(&block.id, key);
                    let status = view
                        .doc
                        .blocks
                        .get(&id)
                        .map_or("pending", |s| s.status.as_str());
                    (id, status)
                })
                .collect()
        })
        .unwrap_or_default();
    let uploads = crate::api::runs::uploads(state, &view.doc.run_id).await?;
    Ok(html! {
        @if let Some(item) = item {
            h3 { "Item" }
            p.muted { "This block is one instance of " a href={"/runs/" (view.doc.run_id) "/blocks/" (item.group)} { code { (item.group) } } ", run once per item of its list; this is item " code { (item.key) } "." }
            (render::json(&serde_json::to_string(&item.item).unwrap_or_default()))
        }
        @if let Some(fan_out) = &block.fan_out {
            h3 { "Fan-out" }
            p.muted { "Runs once per item of " (factory_core::fan_out::source_label(&fan_out.over)) " (at most " (fan_out.max) ")." }
            @if instances.is_empty() { p.muted { "Not expanded in this pass yet." } }
            @else {
                ul.instances { @for (id, status) in &instances { li { a href={"/runs/" (view.doc.run_id) "/blocks/" (id)} { code { (id) } } " · " span class={"status-text " (status)} { (status) } } } }
            }
        }
        h3 { "Config" }
        @if block.inputs.config.is_empty() { p.muted { "No config values." } }
        @else { (render::json(&serde_json::to_string(&block.inputs.config).unwrap_or_default())) }
        h3 { "Run parameters" }
        @if view.doc.params.is_empty() { p.muted { "None." } }
        @else { dl.params { @for (k, v) in &view.doc.params { dt { (k) } dd { (v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())) } } } }
        h3 { "Uploaded files" }
        @if uploads.is_empty() { p.muted { "None." } }
        @else { ul { @for f in &uploads { li { a href={"/api/v1/runs/" (view.doc.run_id) "/files/" (f.name)} { (f.name) } " · " (f.size) " bytes" } } } }
        h3 { "Upstream artifacts" }
        @if upstream.is_empty() { p.muted { "This block reads no upstream artifacts." } }
        @for (from, key, content) in &upstream {
            details.upstream {
                summary { code { (from) "." (key) } }
                @match content {
                    Some((n, markup)) => { p.muted { "attempt " (n) } (markup) },
                    None => p.muted { "not produced yet" },
                }
            }
        }
    })
}

async fn outputs(
    state: &SharedState,
    view: &BlockView,
    query: &BlockQuery,
    caller: &Caller,
) -> Result<Markup, ApiError> {
    let block_id = &view.block.id;
    let block_state = &view.doc.blocks[block_id];
    let history = &block_state.history;
    let selected = selected_attempt(history, query.attempt, block_id)?;
    let mut rendered = Vec::new();
    if let Some(attempt) = selected
        && let Some(report) = &attempt.report
    {
        for (key, artifact) in &report.artifacts {
            let content = state.store.get_blob(&artifact.hash).await?;
            let url = format!(
                "/api/v1/runs/{}/blocks/{}/artifacts/{}?attempt={}",
                super::url_escape(&view.doc.run_id),
                super::url_escape(block_id),
                super::url_escape(key),
                attempt.n
            );
            rendered.push((
                key.clone(),
                artifact.path.clone(),
                render::artifact(artifact.format, &content, &url),
            ));
        }
    }
    let mut logs = Vec::new();
    if let Some(attempt) = selected {
        let streams: &[&str] = if view.block.runtime == factory_core::template::Runtime::Llm {
            &["reply"]
        } else {
            &["stdout", "stderr"]
        };
        for &stream in streams {
            if let Some(log) =
                crate::api::blocks::attempt_log(state, &view.doc.run_id, block_id, attempt, stream)
                    .await?
                && (log.live || !log.bytes.is_empty())
            {
                logs.push((
                    stream,
                    log_tail(&log.bytes, LOG_TAIL),
                    log.size as usize,
                    log.truncated,
                    log.live,
                ));
            }
        }
    }
    let diff = match (query.a, query.b) {
        (Some(a), Some(b)) => Some((
            a,
            b,
            crate::api::blocks::diff_attempts(state, view, a, b).await?,
        )),
        _ => None,
    };
    let run_id = &view.doc.run_id;
    let base = format!("/runs/{run_id}/blocks/{block_id}");
    let send_again = send_again(view, caller);
    Ok(html! {
        div #outputs data-live {
            (send_again)
            @if history.is_empty() { p.muted { "Not run yet (" (block_state.status.as_str()) ")." } }
            @else {
                p.attempts { "Attempts: "
                    @for a in history {
                        @let current = selected.is_some_and(|s| s.n == a.n);
                        a class=(if current { "attempt current" } else { "attempt" }) href={(base) "?attempt=" (a.n)} {
                            "#" (a.n) " " (outcome_words(a.outcome))
                            @if a.report.as_ref().is_some_and(|r| r.reused.is_some()) { " (reused)" }
                            @if let Some(end) = a.ended_at { " · " (render::duration(end.saturating_sub(a.started_at).max(0) as u64)) }
                        } " "
                    }
                }
                @if let Some(attempt) = selected {
                    @if let Some(why) = &attempt.why { p.why { "Attempt " (attempt.n) ": " (why) } }
                    @if let Some(report) = &attempt.report {
                        @if let Some(error) = &report.error { p.error { (error) } }
                        @if let Some(from) = &report.reused {
                            p.reused { "Reused: nothing ran and no call was made. These are the accepted outputs of "
                                a href={"/runs/" (from.run_id) "/blocks/" (from.block) "?attempt=" (from.attempt)} { "run " (from.run_id) ", attempt " (from.attempt) }
                                ", made from the same inputs (memoized attempts); audited again here. "
                                "Reject it at its gate, or retry the block, to run it anew." }
                        }
                        @if let Some(audit) = &report.audit { (render::audit(audit)) }
                        @if let Some(llm) = &report.llm {
                            p.muted { (match view.block.runtime {
                                    factory_core::template::Runtime::Image => "Image model ",
                                    factory_core::template::Runtime::Speech => "Speech model ",
                                    _ => "LLM ",
                                }) (llm.provider) ":" (llm.model)
                                @if llm.images > 0 { " · " (llm.images) " image(s)" }
                                @if llm.characters > 0 { " · " (llm.characters) " characters spoken" }
                                " · " (llm.input_tokens) " in / " (llm.output_tokens) " out tokens"
                                @if llm.estimated { " (estimated: the server reported no usage)" }
                                " · " (llm.latency_ms) " ms"
                                @if llm.queued_ms > 0 { " · queued " (llm.queued_ms) " ms for the provider" }
                                @if let Some(format) = &llm.response_format { " · " (format) }
                                @if let Some(cost) = llm.cost_usd { " · $" (format!("{cost:.4}")) } }
                            @for note in &llm.notes { p.muted { "↳ " (note) } }
                        }
                        @if !report.metrics.is_empty() { p.muted { "Metrics: " (serde_json::to_string(&report.metrics).unwrap_or_default()) } }
                    }
                    @if !logs.is_empty() {
                        section.logs {
                            h3 { "Logs" }
                            @for (stream, text, size, truncated, live) in &logs {
                                @let failed = attempt.outcome != Some(factory_core::run::AttemptOutcome::Succeeded);
                                @let url = format!("/api/v1/runs/{run_id}/blocks/{block_id}/logs/{stream}?attempt={}", attempt.n);
                                details.log data-stream=(stream) open[*stream == "stderr" || failed || *live] {
                                    summary { code { (stream) } @if *live { " · running: the end of its output so far, updated every second" } @else { " · " (size) " bytes" @if *truncated { " (only its end was kept)" } } }
                                    pre.log data-live-log=[live.then_some(url.as_str())] { (text) }
                                    p.muted {
                                        @if text.len() < *size { "The last " (LOG_TAIL / 1024) " KB. " }
                                        a href=(url) { @if *live { "The " (stream) " so far as text" } @else { "The whole " (stream) " as text" } }
                                    }
                                }
                            }
                        }
                    }
                    @for (key, path, markup) in &rendered {
                        section.artifact-view {
                            h3 { code { (key) } " " span.muted { (path) } " "
                                a href={"/api/v1/runs/" (run_id) "/blocks/" (block_id) "/artifacts/" (key) "?attempt=" (attempt.n)} { "raw" } }
                            (markup)
                        }
                    }
                }
            }
            // Inside the live region: a second attempt brings the form along.
            @if history.len() >= 2 {
                form.diff-form method="get" action=(base) {
                    "Compare attempt "
                    select name="a" aria-label="first attempt" { @for h in history { option value=(h.n) selected[query.a.map_or(h.n + 1 == history.len() as u32, |a| a == h.n)] { "#" (h.n) } } }
                    " with "
                    select name="b" aria-label="second attempt" { @for h in history { option value=(h.n) selected[query.b.map_or(h.n == history.len() as u32, |b| b == h.n)] { "#" (h.n) } } }
                    " " button type="submit" { "Diff" }
                }
            }
        }
        @if let Some((a, b, diffs)) = &diff {
            section #diff {
                h3 { "Diff: attempt " (a) " → " (b) }
                @for (key, d) in diffs {
                    h4 { code { (key) } " " span.muted { @if d.changed { (format!("{:.0}% similar", d.ratio * 100.0)) } @else { "unchanged" } } }
                    @if d.changed {
                        pre.diff { @for line in d.unified.lines() {
                            @let class = if line.starts_with("+++") || line.starts_with("---") { "hdr" } else if line.starts_with('+') { "add" } else if line.starts_with('-') { "del" } else if line.starts_with("@@") { "hunk" } else { "ctx" };
                            span class=(class) { (line) } "\n"
                        } }
                    }
                }
            }
        }
    })
}

/// The Gaps panel: the run's gaps this block found, or that concern it
/// (it reads them: open ones are in its prompt), or that its output
/// addressed; a reviewer accepts or reopens them. Nothing when none.
fn gaps_panel(view: &BlockView, caller: &Caller) -> Markup {
    use factory_core::gaps::{self, GapStatus};
    let block = &view.block.id;
    let mut rows: Vec<&gaps::GapState> = view
        .doc
        .gaps
        .values()
        .filter(|g| {
            &g.source == block
                || g.by.as_deref() == Some(block.as_str())
                || gaps::concerns(&view.pipeline, &g.source, &g.gap, block)
        })
        .collect();
    if rows.is_empty() {
        return html! {};
    }
    rows.sort_by_key(|g| (g.status != GapStatus::Open, g.gap.id.clone()));
    let open = rows.iter().filter(|g| g.status == GapStatus::Open).count();
    let can_decide = caller.role >= Role::Reviewer;
    html! {
        section #gaps .gaps data-live {
            h2 { "Gaps " span.muted { "(" (open) " open of " (rows.len()) ")" } }
            ul.gap-list {
                @for g in &rows {
                    li.gap data-gap=(g.gap.id) data-status=(g.status.as_str()) {
                        p {
                            code { (g.gap.id) } " "
                            span.status.(g.status.as_str()) { (g.status.as_str()) } " "
                            span.muted { (g.gap.severity) }
                            @if let Some(artifact) = &g.gap.target_artifact { " · " code { (artifact) } }
                        }
                        p { (g.gap.description) }
                        @if !g.gap.resolution.is_empty() { p.muted { "What to do: " (g.gap.resolution) } }
                        p.muted {
                            @match (g.status, &g.by) {
                                (GapStatus::Open, None) => { "Found by " (g.source) " (attempt " (g.attempt) ")" },
                                (GapStatus::Open, Some(by)) => { "Reopened by " (by) },
                                (GapStatus::Addressed, by) => { "Addressed by " (by.as_deref().unwrap_or("?")) },
                                (GapStatus::Accepted, by) => { "Accepted by " (by.as_deref().unwrap_or("?")) },
                            }
                            @if !g.reason.is_empty() { ": " (g.reason) }
                        }
                        @if can_decide {
                            @let (status, label) = if g.status == GapStatus::Open { ("accepted", "Accept") } else { ("open", "Reopen") };
                            form data-action="gap" data-gap=(g.gap.id) data-status=(status) {
                                label { "Note " input type="text" name="note" maxlength="2000"; }
                                " " button type="submit" { (label) }
                                span.error data-error {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An `http` block that has finished (a sync, a publish) can be sent again
/// from its outputs — "Sync to MasteryOS" is clone-factory's — under the same
/// idempotency key, so the service updates what it made rather than making
/// it twice. It re-runs the block and only what reads it.
fn send_again(view: &BlockView, caller: &Caller) -> Markup {
    let block = &view.block;
    let state = &view.doc.blocks[&block.id];
    if block.runtime != factory_core::template::Runtime::Http
        || caller.role < Role::Operator
        || !matches!(state.status, BlockStatus::Done | BlockStatus::Failed)
    {
        return html! {};
    }
    // Everything downstream of it, which a re-run resets too.
    let mut downstream: Vec<&str> = vec![];
    let mut frontier = vec![block.id.as_str()];
    while let Some(current) = frontier.pop() {
        for b in &view.template.blocks {
            if b.inputs.depends.iter().any(|d| d.block == current)
                && !downstream.contains(&b.id.as_str())
            {
                downstream.push(&b.id);
                frontier.push(&b.id);
            }
        }
    }
    html! {
        form #send-again-form data-action="run" data-block=(block.id) {
            button type="submit" { (block.name) }
            " "
            span.muted {
                "Sends this call again with the same idempotency key (run version " (view.doc.version) ")"
                @if downstream.is_empty() { "; nothing else re-runs." }
                @else { "; then re-runs what reads it: " (downstream.join(", ")) "." }
            }
            p.error data-error {}
        }
    }
}

fn logic(view: &BlockView, caller: &Caller) -> Markup {
    let block = &view.block;
    let state = &view.doc.blocks[&block.id];
    let model = factory_core::transitions::effective_model(
        &view.template,
        block,
        &view.doc.models,
        view.doc.default_model.as_deref(),
    );
    html! {
        dl.logic {
            dt { "Runtime" } dd { (block.runtime.as_str()) }
            @if block.runtime.calls_model() { dt { "Model" } dd { (model.unwrap_or(match block.runtime {
                factory_core::template::Runtime::Image => "the configured image model",
                factory_core::template::Runtime::Speech => "the configured speech model",
                _ => "the configured default",
            })) } }
            dt { "Timeout" } dd { (render::duration(block.timeout)) }
            dt { "Threshold" } dd { @match &block.execution.threshold { Some(t) => { (t.metric) " ≥ " (t.min) }, None => "none" } }
            dt { "Gate" } dd { @match block.execution.human_gate { HumanGate::Before => "before", HumanGate::After => "after", HumanGate::None => "none" } }
            dt { "Retries" } dd { (state.retries_used) " used of " (block.execution.max_retries) @if !block.execution.retryable { " (not retryable)" } }
            dt { "Autonomy (this run)" } dd #autonomy-now { (state.autonomy.as_str()) }
        }
        @if caller.role >= Role::Operator {
            form #autonomy-form data-action="autonomy" data-block=(block.id) {
                label { "Autonomy for this run "
                    select name="autonomy" {
                        @for a in [Autonomy::Gate, Autonomy::Guided, Autonomy::Auto] {
                            option value=(a.as_str()) selected[a == state.autonomy] { (a.as_str()) }
                        }
                    }
                }
                button type="submit" { "Set" }
                p.error data-error {}
            }
            @if matches!(state.status, BlockStatus::Done | BlockStatus::Failed) || (state.status == BlockStatus::Waiting && state.gate == Some(GatePhase::Before)) {
                form #run-form data-action="run" data-block=(block.id) {
                    button type="submit" { @if state.status == BlockStatus::Waiting { "Run now" } @else { "Re-run" } }
                    p.error data-error {}
                }
            }
        }
    }
}

/// Runs of the template a block's audit history covers.
const HISTORY_RUNS: u32 = 8;

/// The block's audit composite over the template's newest runs (this one
/// marked), each point a link to the block in that run. A history that
/// cannot be read says so; the page still shows.
async fn across_runs(state: &SharedState, view: &BlockView) -> Markup {
    let block = &view.block.id;
    let history = match state
        .engine
        .quality_history(&view.doc.template_id, HISTORY_RUNS, false)
        .await
    {
        Ok(history) => history,
        Err(error) => {
            return html! {
                section #across-runs { h3 { "Across runs" } p.muted { "The history cannot be read now: " (error.to_string()) } }
            };
        }
    };
    let points: Vec<render::TrendPoint> = history
        .runs
        .iter()
        .filter_map(|r| {
            let score = *r.blocks.get(block)?;
            let this = if r.run_id == view.doc.run_id {
                " (this run)"
            } else {
                ""
            };
            Some(render::TrendPoint {
                label: format!(
                    "{}{this} · {}",
                    &r.run_id[..r.run_id.len().min(13)],
                    render::time(r.created_at)
                ),
                href: Some(format!("/runs/{}/blocks/{block}", r.run_id)),
                score,
            })
        })
        .collect();
    html! {
        section #across-runs {
            h3 { "Across runs" }
            @if points.len() < 2 {
                p.muted { "Audited in " (points.len()) " of the template's newest " (history.runs.len()) " runs: no history to draw yet." }
            } @else {
                (render::trend(
                    &format!("Audit composite of {block} over {} runs of {}: from {:.1} to {:.1}", points.len(), view.doc.template_id, points[0].score, points[points.len() - 1].score),
                    &format!("{block}'s audit composite in the newest runs of {}, oldest left", view.doc.template_id),
                    &points, 300.0, 110.0))
            }
            p { a href={"/templates/" (view.doc.template_id) "/quality"} { "Quality dashboard of " (view.doc.template_id) } }
        }
    }
}

fn qa(view: &BlockView, caller: &Caller, feedback_draft: &str, words: Option<&str>) -> Markup {
    let block = &view.block.id;
    let state = &view.doc.blocks[block];
    let waiting = state.status == BlockStatus::Waiting;
    html! {
        section.qa #qa data-live {
            h2 { "QA" }
            p { "Status " span class={"status " (state.status.as_str())} #block-status { (state.status.as_str()) }
                @if let Some(gate) = state.gate { " at the " (match gate { GatePhase::Before => "before", GatePhase::After => "after" }) " gate" } }
            @if let Some(words) = words { p.why #state-words { (words) } }
            @if let Some(c) = &state.corrections {
                div.corrections {
                    p { strong { "Corrections " (c.version) } " from " (c.source) }
                    ul { @for item in &c.items { li { "[" (item.priority) "] " (item.correction) } } }
                }
            }
            @if waiting && caller.role >= Role::Reviewer {
                form #approve-form data-action="approve" data-block=(block) {
                    input type="text" name="note" placeholder="note (optional)" aria-label="Note (optional)";
                    button type="submit" .approve { "Approve" }
                    p.error data-error {}
                }
            } @else if waiting {
                p.muted { "Waiting for a reviewer." }
            }
            @if waiting && caller.role >= Role::Reviewer {
                form #reject-form data-action="reject" data-block=(block) {
                    label { "Reject with feedback"
                        textarea name="feedback" rows="3" data-draft={"reject-" (block)} placeholder="What must change?" { (feedback_draft) } }
                    button type="submit" .reject { "Reject" }
                    p.error data-error {}
                }
            }
            @if state.decisions.is_empty() { p.muted { "No decisions yet." } }
            @else {
                h3 { "Decisions" }
                ul.decisions {
                    @for d in &state.decisions {
                        li { strong { @if d.approved { "approved" } @else { "rejected" } } " by " (d.actor) " at " (render::time(d.at))
                            @if let Some(note) = &d.note { ": " em { (note) } } }
                    }
                }
            }
        }
    }
}

async fn chat(
    state: &SharedState,
    view: &BlockView,
    caller: &Caller,
    draft: &str,
) -> Result<Markup, ApiError> {
    let messages =
        crate::api::blocks::chat_messages(state, &view.doc.run_id, &view.block.id).await?;
    let unavailable = crate::api::blocks::chat_unavailable(state, view);
    Ok(html! {
        section.chat #chat data-live {
            h2 { "Chat" }
            div.messages #chat-messages {
                @for (record, m) in &messages {
                    div class={"msg " (m.role)} { span.muted { (record.actor) } div { (m.text) } }
                }
            }
            @match &unavailable {
                Some(reason) => p.notice { (reason) ". Chat becomes available once a provider is configured (see the README's LLM section)." },
                None if caller.role >= Role::Reviewer => {
                    form #chat-form data-action="chat" data-block=(view.block.id) {
                        textarea name="message" rows="2" data-draft={"chat-" (view.block.id)} placeholder="Ask about this block's output" { (draft) }
                        button type="submit" { "Send" }
                        p.error data-error {}
                    }
                },
                None => {},
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::log_tail;

    #[test]
    fn a_long_log_shows_its_end_from_a_line_start() {
        assert_eq!(log_tail(b"short\nlog\n", 100), "short\nlog\n");
        let long = format!("{}\nthe end\n", "x".repeat(200));
        assert_eq!(log_tail(long.as_bytes(), 20), "the end\n");
        // Cut inside a multi-byte character without a line to start at.
        let accents = "é".repeat(20);
        let shown = log_tail(accents.as_bytes(), 7);
        assert!(shown.len() <= 9 && shown.ends_with('é'), "{shown}");
    }
}
