//! The review pages a `review-page` block publishes (extraction review,
//! expert audit) and the run's convergence page. Testers reach the review
//! pages through a per-run link whose token is bound to them and their role;
//! submissions go to `POST …/blocks/{block}/feedback`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use factory_core::feedback::{DEFAULT_QUESTIONS, EXPERT_AUDIT, PRIORITIES, VersionStatus};
use factory_core::run::{BlockStatus, GatePhase};
use factory_store::{ImprovementItem, kinds};
use maud::{Markup, html};
use serde_json::Value;

use super::render;
use crate::SharedState;
use crate::api::blocks::block_view;
use crate::api::review::{audit_scenarios, clone_prompt, extraction_items};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
) -> Response {
    match render_review(&state, &caller, &run, &block).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

pub async fn convergence_page(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
) -> Response {
    match render_convergence(&state, &caller, &run).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

fn who(caller: &Caller) -> (String, Option<String>) {
    match &caller.scope {
        Some(scope) => (scope.tester.clone(), Some(scope.tester_role.clone())),
        None => (caller.actor.trim_start_matches("user:").to_string(), None),
    }
}

async fn render_review(
    state: &SharedState,
    caller: &Caller,
    run: &str,
    block: &str,
) -> Result<Markup, ApiError> {
    let view = block_view(state, run, block).await?;
    let handle = state.engine.open(run).await?;
    let page = factory_engine::feedback::review_page(&handle, block)?;
    let doc = &view.doc;
    let block_state = &doc.blocks[block];
    let items: BTreeMap<String, ImprovementItem> = state
        .store
        .items(&doc.run_id, None, None)
        .await?
        .into_iter()
        .map(|i| (i.source_key.clone(), i))
        .collect();
    let (tester, role) = who(caller);
    let ready = block_state.history.iter().any(|a| a.report.is_some());
    let waiting =
        block_state.status == BlockStatus::Waiting && block_state.gate == Some(GatePhase::After);
    let targets: Vec<String> = handle
        .pipeline()
        .blocks()
        .iter()
        .filter(|b| b.id != block)
        .map(|b| b.id.clone())
        .collect();
    let can_submit = caller.role >= Role::Reviewer;

    let header = html! {
        section.panel {
            h1 { (if page == EXPERT_AUDIT { "Expert audit" } else { "Extraction review" }) " — " (view.template.name) " " span.muted { "v" (doc.version) } }
            p.muted {
                "Run " a href={"/runs/" (doc.run_id)} { code { (doc.run_id) } }
                " · block " code { (block) } " · reviewing as " strong #reviewer { (tester) }
                @if let Some(role) = &role { " (" (role) ")" }
            }
            div #gate-state data-live {
                @if waiting { p.notice { "Waiting for this review. Close it when you are done: it approves the gate if no critical item is open or in triage." } }
                @else { p.muted data-block-status=(block_state.status.as_str()) { "Block status: " (block_state.status.as_str()) } }
            }
        }
    };
    let form = if !ready {
        html! { section.panel { p.notice { "This page is published when `" (block) "` has run; its inputs are not ready yet." } } }
    } else if page == EXPERT_AUDIT {
        let scenarios = audit_scenarios(state, &view).await?;
        let questions: Vec<String> = view
            .block
            .inputs
            .config
            .get("questions")
            .and_then(Value::as_array)
            .map(|q| {
                q.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| DEFAULT_QUESTIONS.iter().map(|q| q.to_string()).collect());
        let has_clone = clone_prompt(state, &view).await?.is_some();
        let chat_reason = if has_clone {
            crate::api::blocks::chat_unavailable(state, &view)
        } else {
            Some("no compiled clone (`system-prompt`) to talk to yet".to_string())
        };
        let prefix = format!("review-chat:{block}/{}/", caller.actor);
        let chat: Vec<Value> = state
            .store
            .records(&doc.run_id, kinds::CHAT)
            .await?
            .into_iter()
            .filter(|r| r.key.starts_with(&prefix))
            .map(|r| r.body)
            .collect();
        html! {
            form #audit-form data-action="audit" data-block=(block) data-role=[role.as_deref()] {
                section.panel {
                    h2 { "Scenarios" }
                    @if scenarios.is_empty() { p.muted { "The clone tester reported no scenarios." } }
                    @for (n, s) in scenarios.iter().enumerate() {
                        @let key = format!("expert-audit:scenario:{}", s.id);
                        fieldset.review-item data-scenario=(s.id) data-key=(key) data-text=(s.prompt) {
                            legend { strong { (s.id) } " " @if let Some(item) = items.get(&key) { (status_chip(item)) } }
                            p { span.muted { "Prompt: " } (s.prompt) }
                            p.msg { (s.response) }
                            label { input type="radio" name={"r" (n)} value="yes"; " Sounds like me" }
                            label { input type="radio" name={"r" (n)} value="no"; " Does not" }
                            div.finding {
                                label { "Fix in " select name={"t" (n)} {
                                    @for t in &targets { option value=(t) selected[t == "clone-compiler"] { (t) } }
                                } }
                                label { "Priority " select name={"p" (n)} { @for p in PRIORITIES { option value=(p) selected[*p == "medium"] { (p) } } } }
                                label { "What I would say instead " input type="text" name={"c" (n)} placeholder="correction"; }
                            }
                        }
                    }
                }
                section.panel {
                    h2 { "Open questions" }
                    @for (n, q) in questions.iter().enumerate() {
                        label data-question=(q) { (q) textarea name={"q" (n)} rows="2" {} }
                    }
                }
                section.panel {
                    h2 { "Other findings" }
                    @for n in 0..3 {
                        div.finding data-finding=(n) {
                            select name={"ft" (n)} aria-label={"Block to fix for finding " (n + 1)} { option value="" { "— block —" } @for t in &targets { option value=(t) { (t) } } }
                            select name={"fp" (n)} aria-label={"Priority of finding " (n + 1)} { @for p in PRIORITIES { option value=(p) selected[*p == "high"] { (p) } } }
                            input type="text" name={"ff" (n)} placeholder="finding" aria-label={"Finding " (n + 1)};
                            input type="text" name={"fc" (n)} placeholder="correction" aria-label={"Correction for finding " (n + 1)};
                        }
                    }
                    label { "Anything else " textarea name="free_text" data-voice rows="3" {} }
                    (submit_controls(can_submit))
                }
            }
            section.panel {
                h2 { "Talk to the clone" }
                div #review-chat data-live {
                    @for m in &chat { p class={"msg " (m["role"].as_str().unwrap_or(""))} { (m["text"].as_str().unwrap_or("")) } }
                }
                @match &chat_reason {
                    Some(reason) => p.notice { (reason) },
                    None => form #review-chat-form data-action="review-chat" data-block=(block) {
                        input type="text" name="message" placeholder="Ask the clone something" aria-label="Message to the clone" required;
                        button type="submit" { "Send" }
                        p.error data-error {}
                    },
                }
            }
        }
    } else {
        let review_items = extraction_items(state, &view).await?;
        let mut by_block: BTreeMap<&str, Vec<(usize, &factory_core::feedback::ReviewItem)>> =
            BTreeMap::new();
        for (n, item) in review_items.iter().enumerate() {
            by_block
                .entry(item.skill_target.as_str())
                .or_default()
                .push((n, item));
        }
        html! {
            form #review-form data-action="review" data-block=(block) data-role=[role.as_deref()] {
                p.muted { (review_items.len()) " items. Mark what is wrong or needs work and say what it should be; leave the rest unmarked or mark it correct." }
                // Narrowing the list hides rows, it does not drop them: a
                // submission still carries every verdict given.
                div.review-filter #review-filter role="search" {
                    label { "File "
                        select #filter-source {
                            option value="" { "all files" }
                            @for (source, rows) in &by_block { option value=(source) { (source) " (" (rows.len()) ")" } }
                        }
                    }
                    label { "Show "
                        select #filter-status {
                            option value="" { "every item" }
                            option value="unmarked" { "not marked yet" }
                            option value="marked" { "marked" }
                            option value="finding" { "with a finding" }
                        }
                    }
                    label { "Search " input type="search" #filter-text placeholder="text or path"; }
                    output #filter-count aria-live="polite" { (review_items.len()) " of " (review_items.len()) " items" }
                }
                @for (source, rows) in &by_block {
                    section.panel data-source=(source) {
                        h2 { code { (source) } " " span.muted { (rows.len()) " items" } }
                        table.review {
                            @for (n, item) in rows {
                                tr.review-item data-key=(item.source_key) data-target=(item.skill_target) data-text=(item.text) {
                                    td { code.muted { (item.path) } }
                                    td { (item.text) " " @if let Some(i) = items.get(&item.source_key) { (status_chip(i)) } }
                                    td.verdicts {
                                        label { input type="radio" name={"v" (n)} value="correct"; " correct" }
                                        label { input type="radio" name={"v" (n)} value="needs_work"; " needs work" }
                                        label { input type="radio" name={"v" (n)} value="wrong"; " wrong" }
                                    }
                                    td { select name={"p" (n)} aria-label={"Priority of " (item.path)} { @for p in PRIORITIES { option value=(p) selected[*p == "medium"] { (p) } } } }
                                    td { input type="text" name={"c" (n)} placeholder="correction" aria-label={"Correction for " (item.path)}; }
                                }
                            }
                        }
                    }
                }
                section.panel {
                    label { "Anything else " textarea name="free_text" data-voice rows="3" {} }
                    (submit_controls(can_submit))
                }
            }
        }
    };
    let body = html! {
        (header)
        (form)
        section.panel {
            h2 { "Findings so far" }
            div #findings data-live { (findings(&items)) }
            p { a href={"/runs/" (doc.run_id) "/convergence"} { "Convergence across versions" } }
        }
    };
    Ok(super::layout(
        &format!("{page} · {}", view.template.name),
        caller,
        Some((&doc.run_id, doc.seq)),
        body,
    ))
}

fn submit_controls(can_submit: bool) -> Markup {
    html! {
        @if can_submit {
            label.close { input type="checkbox" name="close"; " Close the review (approves the gate when no critical item is open)" }
            button type="submit" { "Submit review" }
            p.notice #review-result data-result {}
            p.error data-error {}
        } @else {
            p.muted { "Viewers can read the review but not submit it." }
        }
    }
}

fn status_chip(item: &ImprovementItem) -> Markup {
    html! { span class={"status item-" (item.status)} data-item-status=(item.status) title=(format!("consensus {:.1}", item.consensus_score)) { (item.status) } }
}

fn findings(items: &BTreeMap<String, ImprovementItem>) -> Markup {
    html! {
        @if items.is_empty() { p.muted { "No findings yet." } }
        @else {
            table.findings {
                tr { th { "item" } th { "target" } th { "priority" } th { "status" } th { "consensus" } th { "flagged by" } th { "correction" } }
                @for item in items.values() {
                    tr data-finding-key=(item.source_key) {
                        td { code { (item.source_key) } }
                        td { (item.skill_target) }
                        td { span.prio { (item.priority) } }
                        td { (status_chip(item)) @if let Some(v) = &item.resolved_in_version { " in " (v) } }
                        td.num { (format!("{:.1}", item.consensus_score)) }
                        td { @for f in item.flagged_by.as_array().into_iter().flatten() {
                            span.muted { (f["tester"].as_str().unwrap_or("")) " (" (f["role"].as_str().unwrap_or("")) ") " }
                        } }
                        td { (item.expert_correction) }
                    }
                }
            }
        }
    }
}

async fn render_convergence(
    state: &SharedState,
    caller: &Caller,
    run: &str,
) -> Result<Markup, ApiError> {
    let (doc, table) = state.engine.convergence(run).await?;
    let percent = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}%"));
    let body = html! {
        section.panel {
            h1 { "Convergence " span.muted { "run " a href={"/runs/" (doc.run_id)} { code { (doc.run_id) } } } }
            div #convergence data-live {
                @if table.ready_to_ship {
                    p.notice #ship-status data-ready="true" { "Ready to ship: v" (doc.version) " meets every criterion." }
                } @else {
                    div #ship-status data-ready="false" {
                        p { strong { "Not ready to ship yet." } }
                        ul { @for u in &table.unmet { li { (u) } } }
                    }
                }
                table.convergence {
                    tr { th { "Version" } th { "Auto score" } th { "Expert rate" } th { "Extraction" } th { "Critical" } th { "High" } th { "Status" } }
                    @for row in &table.rows {
                        tr data-version=(row.version) {
                            td { "v" (row.version) }
                            td.num { (percent(row.auto_score)) }
                            td.num { (percent(row.approval)) }
                            td.num { (percent(row.accuracy)) }
                            td.num { (row.critical) }
                            td.num { (row.high) }
                            td { (match row.status { VersionStatus::Superseded => "superseded", VersionStatus::Current => "current", VersionStatus::ReadyToShip => "ready to ship" }) }
                        }
                    }
                }
                p.muted {
                    "Criteria: automated score ≥ " (table.criteria.min_score) "%"
                    @if let Some(b) = &table.criteria.score_block { " (" code { (b) "." (table.criteria.score_metric) } ")" }
                    ", expert approval ≥ " (table.criteria.min_approval) "%, extraction accuracy ≥ " (table.criteria.min_accuracy)
                    "%, at most " (table.criteria.max_critical) " critical and " (table.criteria.max_high) " high items open."
                }
                p.muted { "As of " (render::time(doc.updated_at)) "." }
            }
        }
    };
    Ok(super::layout(
        "Convergence",
        caller,
        Some((&doc.run_id, doc.seq)),
        body,
    ))
}
