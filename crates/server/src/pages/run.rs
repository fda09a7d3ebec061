//! Pipeline view: blocks by layer, coloured by status, parallel groups and
//! gates visible, a summary bar, and the post-run reflection.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use factory_core::run::{BlockStatus, RunDoc};
use factory_core::template::{HumanGate, Template};
use factory_store::kinds;
use maud::{Markup, html};

use super::{graph, render, timeline};

/// Above this many blocks the run page lists blocks by layer instead of
/// drawing the graph (which would be megabytes of SVG nobody can read).
const GRAPH_MAX_BLOCKS: usize = 400;
use crate::SharedState;
use crate::api::runs::REFLECTION_QUESTIONS;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
) -> Response {
    match render_run_page(&state, &caller, &run).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

pub async fn render_run_page(
    state: &SharedState,
    caller: &Caller,
    run: &str,
) -> Result<Markup, ApiError> {
    let handle = state.engine.open(run).await?;
    let doc = handle.doc().clone();
    let template = handle.pipeline().template().clone();
    let layers = handle.pipeline().layers();
    let drafts: BTreeMap<String, serde_json::Value> = state
        .store
        .records(&doc.run_id, kinds::DRAFT)
        .await?
        .into_iter()
        .map(|r| (r.key, r.body))
        .collect();
    let reflection = state
        .store
        .records(&doc.run_id, kinds::REFLECTION)
        .await?
        .into_iter()
        .next();
    let memory: Vec<_> = state
        .store
        .records_for_template(&doc.template_id, kinds::REFLECTION, 5)
        .await?
        .into_iter()
        .filter(|r| r.run_id != doc.run_id)
        .collect();
    let uploads = crate::api::runs::uploads(state, &doc.run_id).await?;
    let chat = factory_engine::chat::chat_records(
        &state.engine,
        &doc.run_id,
        factory_engine::chat::RUN_CHAT,
    )
    .await?;
    let chat_unavailable = state.engine.run_chat_unavailable(&handle);
    let has_lens = template.blocks.iter().any(|b| b.lens.is_some());
    let ratings = if has_lens {
        state.engine.run_ratings(&doc.run_id).await?
    } else {
        Vec::new()
    };

    let body = html! {
        section.panel {
            h1 { (template.name) " " span.muted { "run " code { (doc.run_id) } } }
            @if doc.version > 1 || template.blocks.iter().any(|b| b.inputs.config.get("builtin").and_then(|v| v.as_str()) == Some("review-page")) {
                p { "Version " strong #run-version { "v" (doc.version) } " · " a href={"/runs/" (doc.run_id) "/convergence"} { "convergence across versions" } }
                @if caller.role >= Role::Operator {
                    details #review-links {
                        summary { "Invite a tester to review" }
                        form #review-link-form data-action="review-links" {
                            input type="text" name="tester" placeholder="tester, e.g. samuel-ngu" aria-label="Tester" required;
                            select name="tester_role" aria-label="Tester role" {
                                @for role in ["expert", "product_lead", "tech_lead", "team", "external"] { option value=(role) { (role) } }
                            }
                            button type="submit" { "Create review links" }
                            p.error data-error {}
                            ul data-links {}
                        }
                        p.muted { "Each link carries a new token bound to this run and this tester: send it only to them." }
                    }
                }
            }
            div #summary data-live { (summary_bar(&doc)) }
            p.muted { a href={"/templates/" (doc.template_id) "/quality"} { "Quality across runs of " (doc.template_id) } }
            @if !uploads.is_empty() {
                p.muted { "Input files: "
                    @for f in &uploads { a href={"/api/v1/runs/" (doc.run_id) "/files/" (f.name)} { (f.name) } " (" (f.size) " bytes) " } }
            }
        }
        section.panel {
            div #pipeline data-live {
                @if template.blocks.len() <= GRAPH_MAX_BLOCKS {
                    div.graph-scroll { (graph::svg(&doc, handle.pipeline(), factory_engine::now_ms())) }
                    p.muted.legend { "Arrows run from a block to the blocks that use its output; solid once the upstream block is done. Hover a block for what it waits for." }
                } @else {
                    p.muted { (template.blocks.len()) " blocks are too many to draw as a graph; here they are by layer." }
                    (pipeline(&doc, &template, &layers))
                }
            }
        }
        section.panel {
            h2 { "Timeline" }
            div #timeline data-live { (timeline::svg(&doc, handle.pipeline(), factory_engine::now_ms())) }
        }
        section.panel.chat #run-chat data-live {
            h2 { "Ask about this run" }
            p.muted { "The factory's chat knows this run: every block's state, audit and suggestions, the gaps, the corrections and the convergence (read fresh for each question)." }
            div.messages #run-chat-messages {
                @for (record, m) in &chat {
                    div class={"msg " (m.role)} { span.muted { (record.actor) } div { (m.text) } }
                }
            }
            @match &chat_unavailable {
                Some(reason) => p.notice { (reason) ". The chat becomes available once a provider is configured (see the README's LLM section)." },
                None if caller.role >= Role::Reviewer => {
                    form #run-chat-form data-action="run-chat" {
                        textarea name="message" rows="2" data-draft="run-chat" aria-label="Question about this run" placeholder="Ask about this run, e.g. why is it not ready to ship?" {
                            (drafts.get("run-chat").and_then(|d| d.get("message")).and_then(|v| v.as_str()).unwrap_or(""))
                        }
                        button type="submit" { "Ask" }
                        p.error data-error {}
                    }
                },
                None => {},
            }
        }
        @if has_lens {
            div #lens data-live { (lens_panel(&doc, handle.pipeline(), &ratings, caller)) }
        }
        @if !memory.is_empty() {
            section.panel.memory {
                h2 { "Process memory from earlier runs of " (doc.template_id) }
                @for r in &memory {
                    div.reflection-card {
                        p.muted { a href={"/runs/" (r.run_id)} { code { (&r.run_id[..r.run_id.len().min(13)]) } } " · " (r.actor) " · " (render::time(r.at)) }
                        dl { @for (key, question) in REFLECTION_QUESTIONS {
                            @if let Some(answer) = r.body.get(key).and_then(|v| v.as_str()).filter(|a| !a.is_empty()) { dt { (question) } dd { (answer) } }
                        } }
                    }
                }
            }
        }
        div #reflection data-live {
            @if doc.status.is_terminal() {
                section.panel {
                    h2 { "Post-run reflection" }
                    @if let Some(saved) = &reflection {
                        p.muted { "Saved by " (saved.actor) " at " (render::time(saved.at)) "; shown on later runs of this template." }
                    }
                    @if caller.role >= Role::Reviewer {
                        form #reflection-form data-action="reflection" {
                            @for (key, question) in REFLECTION_QUESTIONS {
                                @let value = reflection.as_ref().and_then(|r| r.body.get(key)).or_else(|| drafts.get("reflection").and_then(|d| d.get(key))).and_then(|v| v.as_str()).unwrap_or("");
                                label { (question) textarea name=(key) data-draft="reflection" data-voice rows="2" { (value) } }
                            }
                            button type="submit" { "Save reflection" }
                            p.error data-error {}
                        }
                    }
                }
            }
        }
    };
    Ok(super::layout(
        &format!("{} run", template.name),
        caller,
        Some((&doc.run_id, doc.seq)),
        body,
    ))
}

/// The lens: how past ratings shaped this run, and a form to rate each
/// done perspective and aggregate.
fn lens_panel(
    doc: &RunDoc,
    pipeline: &factory_core::Pipeline,
    ratings: &[factory_core::lens::RatingEntry],
    caller: &Caller,
) -> Markup {
    use factory_core::lens;
    let outputs: Vec<(&str, lens::Brief)> = pipeline
        .blocks()
        .iter()
        .filter(|b| doc.blocks.get(&b.id).is_some_and(|s| !s.dropped))
        .filter_map(|b| Some((b.id.as_str(), lens::brief(pipeline, doc, &b.id)?)))
        .collect();
    // Perspectives first, in the run's order; the aggregate last.
    let mut outputs = outputs;
    outputs.sort_by_key(|(_, brief)| brief.perspective.is_none());
    let groups: Vec<(&str, &[String], &[lens::LeftOut])> = pipeline
        .blocks()
        .iter()
        .filter(|b| b.lens.as_ref().is_some_and(|l| l.feedback_loop))
        .filter_map(|b| {
            let state = doc.blocks.get(&b.id)?;
            Some((
                b.id.as_str(),
                state.instances.as_deref()?,
                state.left_out.as_slice(),
            ))
        })
        .collect();
    let feedback = pipeline
        .template()
        .blocks
        .iter()
        .any(|b| b.lens.as_ref().is_some_and(|l| l.feedback_loop));
    let keys: std::collections::BTreeSet<&str> = outputs
        .iter()
        .map(|(_, b)| b.aggregate_key.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    let keys_text = if keys.is_empty() {
        "any params".to_string()
    } else {
        keys.into_iter().collect::<Vec<_>>().join(" or ")
    };
    let output_name = |block: &str, perspective: Option<&str>| match perspective {
        Some(p) if pipeline.block(block).is_some_and(|b| b.fan_out.is_some()) => {
            factory_core::run::instance_id(block, p)
        }
        _ => block.to_string(),
    };
    html! {
        section.panel.lens {
            h2 { "Lens: perspectives and ratings" }
            @if feedback {
                h3 { "How past ratings shaped this run" }
                @if doc.past_ratings.is_empty() {
                    p.muted #lens-shaped { "No ratings of earlier runs under this run's aggregate key: the perspectives ran in the list's order, and no prompt quoted past comments." }
                } @else {
                    ul #lens-shaped {
                        @for (group, keys, left_out) in &groups {
                            @if !keys.is_empty() { li { code { (group) } " ran its perspectives best-rated first: " (keys.join(", ")) } }
                            @for l in left_out.iter() {
                                li.left-out { code { (l.key) } " was left out: rated " (format!("{:.1}", l.mean)) " over " (l.count) @if l.count == 1 { " rating" } @else { " ratings" } ", below " code { "drop_below" } }
                            }
                        }
                        @for (id, brief) in &outputs {
                            @if brief.review { li { a href={"/runs/" (doc.run_id) "/blocks/" (id)} { code { (id) } } " was sent to a person: its past ratings are below " code { "review_below" } } }
                        }
                    }
                    table.past-ratings {
                        thead { tr { th { "output" } th { "ratings" } th { "mean" } th { "what readers said (quoted in its prompt)" } } }
                        tbody {
                            @for p in &doc.past_ratings {
                                tr {
                                    td { code { (output_name(&p.block, p.perspective.as_deref())) } }
                                    td { (p.count) }
                                    td { (format!("{:.1}", p.mean)) }
                                    td { @for c in &p.comments { div { (c.score) "/5 — " (c.comment) } } }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Rate this run's outputs" }
            p.muted { "1 = useless, 5 = very useful. Rate after using the brief; rating again replaces your rating."
                @if feedback { " Later runs with " (keys_text) " read these ratings." } }
            @if !ratings.is_empty() {
                ul #run-ratings {
                    @for r in ratings {
                        li { code { (output_name(&r.rating.block, r.rating.perspective.as_deref())) } " " strong { (r.rating.score) "/5" } " by " (r.by) " · " (render::time(r.at))
                            @if !r.rating.comment.is_empty() { " — " (r.rating.comment) } }
                    }
                }
            }
            @if caller.role >= Role::Reviewer {
                @for (id, _) in &outputs {
                    @let done = doc.blocks.get(*id).is_some_and(|s| s.status == BlockStatus::Done);
                    form.rate data-action="rate" data-block=(id) {
                        label.output { code { (id) } }
                        select name="score" aria-label={"Score for " (id)} disabled[!done] {
                            @for n in 1..=5 { option value=(n) selected[n == 3] { (n) } }
                        }
                        input type="text" name="comment" placeholder="what was useful or missing" aria-label={"Comment on " (id)} maxlength="2000" disabled[!done];
                        button type="submit" disabled[!done] { "Rate" }
                        @if !done { span.muted { " (rated once done)" } }
                        p.error data-error {}
                    }
                }
            }
        }
    }
}

fn summary_bar(doc: &RunDoc) -> Markup {
    let counts = doc.status_counts();
    html! {
        div.summary {
            span class={"status big " (doc.status.as_str())} data-run-status=(doc.status.as_str()) { (doc.status.as_str()) }
            @for (status, n) in &counts { span class={"count " (status)} { (n) " " (status) } }
            @match doc.quality() {
                Some(q) => {
                    span.quality { "Run quality " (render::badge(q.composite, &format!("A:{:.1}", q.composite))) " over " (q.audited_blocks) " blocks · weakest " strong { (q.weakest) } " (" (format!("{:.1}", q.weakest_score)) ")" }
                    @for w in &q.warnings { span.warning { (w) } }
                }
                None => { span.muted { "no audits yet" } }
            }
        }
    }
}

fn pipeline(doc: &RunDoc, template: &Template, layers: &[(String, Vec<usize>)]) -> Markup {
    html! {
        div.layers {
            @for (layer, indexes) in layers {
                div.layer {
                    h3 { (layer) }
                    @let groups = group_by_parallel(template, indexes);
                    @for (group, members) in &groups {
                        div class=(match group { Some(Grouping::Parallel(_)) => "group parallel", Some(Grouping::Instances(_)) => "group instances", None => "group" }) {
                            @match group {
                                Some(Grouping::Parallel(g)) => div.group-label { "parallel: " (g) },
                                Some(Grouping::Instances(g)) => div.group-label { "instances of " (g) },
                                None => {},
                            }
                            @for i in members {
                                @let block = &template.blocks[*i];
                                @let state = &doc.blocks[&block.id];
                                a class={"block " (state.status.as_str())} href={"/runs/" (doc.run_id) "/blocks/" (block.id)}
                                    data-block=(block.id) data-status=(state.status.as_str()) {
                                    div.block-title {
                                        (block.name)
                                        @match block.execution.human_gate {
                                            HumanGate::Before => { " " span.gate title="a person approves before the block runs" { "gate: before" } },
                                            HumanGate::After => { " " span.gate title="a person approves the block's output" { "gate: after" } },
                                            HumanGate::None => {},
                                        }
                                    }
                                    div.block-meta {
                                        span.status-text { (state.status.as_str()) }
                                        @if let Some(keys) = &state.instances {
                                            @let done = keys.iter().filter(|k| doc.blocks.get(&factory_core::run::instance_id(&block.id, k)).is_some_and(|s| s.status == BlockStatus::Done)).count();
                                            " · fan-out " (done) "/" (keys.len()) " done"
                                        }
                                        @if state.status == BlockStatus::Waiting { " · needs review" }
                                        @if state.attempts > 1 { " · try " (state.attempts) }
                                        @if let Some(a) = state.latest_audit().filter(|_| !state.awaits_new_pass()) { " " (render::badge(a.composite, &a.badge)) }
                                        @if state.audit_flagged && !state.awaits_new_pass() { " ⚑" }
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

/// What a box of block cards in a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping<'a> {
    /// Blocks of one `parallel_group`.
    Parallel(&'a str),
    /// The instances of one fan-out block.
    Instances(&'a str),
}

fn group_by_parallel<'a>(
    template: &'a Template,
    indexes: &[usize],
) -> Vec<(Option<Grouping<'a>>, Vec<usize>)> {
    let mut groups: Vec<(Option<Grouping>, Vec<usize>)> = Vec::new();
    for &i in indexes {
        let block = &template.blocks[i];
        let id = block.id.as_str();
        let group = if id.contains('[') {
            Some(Grouping::Instances(factory_core::run::group_id(id)))
        } else {
            block
                .execution
                .parallel_group
                .as_deref()
                .map(Grouping::Parallel)
        };
        match groups
            .iter_mut()
            .find(|(g, _)| group.is_some() && *g == group)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((group, vec![i])),
        }
    }
    groups
}
