//! Runs home, an inbox: runs filtered by template, status and text, 50 a
//! page, each with its status (and the gate it waits at), who started it,
//! progress, quality and duration; a template's quality over time; and the
//! form that creates a run.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::run::{BlockStatus, RunDoc};
use maud::{Markup, html};
use serde::Deserialize;

use super::render;
use crate::SharedState;
use crate::auth::{Caller, Role};
use crate::templates::{self, CatalogEntry};

#[derive(Debug, Default, Deserialize)]
pub struct HomeQuery {
    /// The template the new-run form is for.
    #[serde(default)]
    template: Option<String>,
    /// Filters of the list: template, status, text; and the page cursor.
    #[serde(default)]
    tpl: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    before: Option<String>,
}

/// Runs per page.
const PAGE: u32 = 50;

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<HomeQuery>,
) -> Response {
    match render_home(&state, &caller, &query).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

/// A run on the list: its document and who started it.
struct Row {
    doc: RunDoc,
    started_by: String,
}

async fn render_home(
    state: &SharedState,
    caller: &Caller,
    query: &HomeQuery,
) -> Result<Markup, crate::ApiError> {
    let filter = crate::api::runs::run_filter(
        query.status.as_deref(),
        query.tpl.as_deref(),
        query.q.as_deref(),
        query.before.as_deref(),
        PAGE,
    )?;
    let (found, older) = crate::api::runs::page_of_runs(state, &filter).await?;
    let mut rows = Vec::new();
    for listed in found {
        // A run that vanished between the two reads is skipped.
        if let Ok(stored) = state.store.load_run(&listed.run.run_id).await {
            rows.push(Row {
                doc: stored.doc,
                started_by: listed.started_by,
            });
        }
    }
    let catalog = templates::catalog(state).await?;
    let chosen = query
        .template
        .as_deref()
        .and_then(|id| catalog.iter().find(|e| e.id == id))
        .or(catalog.first());
    // Which templates cannot run here, and why: said before anyone tries.
    let cannot_run: std::collections::BTreeMap<&str, Vec<String>> = catalog
        .iter()
        .filter_map(|entry| {
            let problems = state
                .engine
                .run_problems(
                    &entry.source,
                    entry.path.as_deref().map(std::path::Path::new),
                    &Default::default(),
                )
                .ok()?;
            (!problems.is_empty()).then_some((entry.id.as_str(), problems))
        })
        .collect();
    let now = factory_engine::now_ms();
    let filtered = filter.template.is_some() || filter.status.is_some() || filter.text.is_some();
    let link = |before: Option<&str>| {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (key, value) in [
            ("tpl", filter.template.as_deref()),
            ("status", filter.status.as_deref()),
            ("q", filter.text.as_deref()),
            ("before", before),
        ] {
            if let Some(value) = value {
                pairs.push((key, value));
            }
        }
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", super::url_escape(v)))
            .collect();
        format!("/?{}", query.join("&"))
    };
    let history: Vec<(&RunDoc, f64)> = rows
        .iter()
        .rev()
        .filter_map(|r| r.doc.quality().map(|q| (&r.doc, q.composite)))
        .collect();
    let body = html! {
        div.home {
            section.panel {
                h1 { "Runs" }
                form.filters method="get" action="/" role="search" {
                    label { "Template "
                        select name="tpl" {
                            option value="" { "any" }
                            @for e in &catalog { option value=(e.id) selected[filter.template.as_deref() == Some(e.id.as_str())] { (e.id) } }
                        }
                    }
                    label { "Status "
                        select name="status" {
                            option value="" { "any" }
                            @for status in ["running", "waiting", "done", "failed"] { option value=(status) selected[filter.status.as_deref() == Some(status)] { (status) } }
                        }
                    }
                    label { "Search "
                        input type="search" name="q" value=[filter.text.as_deref()] placeholder="run id or a param value";
                    }
                    button type="submit" { "Filter" }
                    @if filtered { " " a href="/" { "Clear" } }
                }
                @if let Some(template) = &filter.template {
                    @if history.len() >= 2 { (quality_chart(template, &history)) }
                }
                div #runs data-live {
                    @if rows.is_empty() {
                        p.muted { @if filtered || filter.before.is_some() { "No runs match." } @else { "No runs yet." } }
                    } @else {
                        table.runs {
                            thead { tr { th { "Run" } th { "Template" } th { "Status" } th { "Started by" } th { "Progress" } th { "Quality" } th { "Took" } th { "Started" } } }
                            tbody {
                                @for row in &rows {
                                    @let doc = &row.doc;
                                    @let done = doc.blocks.values().filter(|b| b.status == BlockStatus::Done && !b.dropped).count();
                                    @let total = doc.blocks.values().filter(|b| !b.dropped).count();
                                    @let waiting: Vec<&String> = doc.blocks.iter().filter(|(_, b)| b.status == BlockStatus::Waiting).map(|(id, _)| id).collect();
                                    tr data-run-id=(doc.run_id) {
                                        td { a href={"/runs/" (doc.run_id)} { code { (&doc.run_id[..doc.run_id.len().min(13)]) } } }
                                        td { (doc.template_id) " v" (doc.template_version) }
                                        td {
                                            span class={"status " (doc.status.as_str())} { (doc.status.as_str()) }
                                            @if !waiting.is_empty() {
                                                " at "
                                                @for (n, block) in waiting.iter().enumerate() {
                                                    @if n > 0 { ", " }
                                                    a.waiting-at href={"/runs/" (doc.run_id) "/blocks/" (block)} { (block) }
                                                }
                                            }
                                        }
                                        td { (row.started_by.strip_prefix("user:").unwrap_or(&row.started_by)) }
                                        td {
                                            progress max=(total) value=(done) aria-label={(done) " of " (total) " blocks done"} {}
                                            " " (done) "/" (total)
                                        }
                                        td { @if let Some(q) = doc.quality() { (render::badge(q.composite, &format!("A:{:.1}", q.composite))) " " span.muted { "weakest " (q.weakest) } } }
                                        td {
                                            @if doc.status.is_terminal() { (render::duration((doc.updated_at - doc.created_at).max(0) as u64)) }
                                            @else { (render::duration((now - doc.created_at).max(0) as u64)) span.muted { " so far" } }
                                        }
                                        td.muted { (render::time(doc.created_at)) }
                                    }
                                }
                            }
                        }
                    }
                    p.paging {
                        @if filter.before.is_some() { a href=(link(None)) { "← Newest runs" } " " }
                        @if let Some(cursor) = &older { a rel="next" href=(link(Some(cursor))) { "Older runs →" } }
                    }
                }
            }
            @if caller.role >= Role::Operator {
                section.panel.new-run {
                    h2 { "New run" }
                    @if catalog.is_empty() {
                        p.muted { "No templates: start the server with " code { "--templates DIR" } " or register one with POST /api/v1/templates." }
                    } @else if let Some(entry) = chosen {
                        (new_run_form(&catalog, entry, &cannot_run))
                    }
                }
            }
        }
    };
    Ok(super::layout("Runs", caller, None, body))
}

/// The composite of a template's listed runs over time (oldest left), each
/// point a link to its run; the caption links to the quality dashboard.
fn quality_chart(template: &str, history: &[(&RunDoc, f64)]) -> Markup {
    let points: Vec<render::TrendPoint> = history
        .iter()
        .map(|(doc, score)| render::TrendPoint {
            label: format!(
                "{} · {}",
                &doc.run_id[..doc.run_id.len().min(13)],
                render::time(doc.created_at)
            ),
            href: Some(format!("/runs/{}", doc.run_id)),
            score: *score,
        })
        .collect();
    let (first, last) = (history[0].1, history[history.len() - 1].1);
    html! {
        (render::trend(
            &format!("Run quality of {template} over its last {} listed runs: from {first:.1} to {last:.1}", history.len()),
            &format!("Run quality (mean D1–D5 composite) of {template}, oldest to newest"),
            &points,
            640.0,
            120.0,
        ))
        p { a href={"/templates/" (template) "/quality"} { "Quality dashboard of " (template) } }
    }
}

fn new_run_form(
    catalog: &[CatalogEntry],
    entry: &CatalogEntry,
    cannot_run: &std::collections::BTreeMap<&str, Vec<String>>,
) -> Markup {
    let template = &entry.template;
    html! {
        form #new-run data-action="create-run" {
            label { "Template "
                select name="template" data-reload-with="template" {
                    @for e in catalog {
                        option value=(e.id) selected[e.id == entry.id] { (e.name) " (" (e.id) " v" (e.version) ", " (e.blocks) " blocks)" @if cannot_run.contains_key(e.id.as_str()) { " — cannot run here" } }
                    }
                }
            }
            @if let Some(problems) = cannot_run.get(entry.id.as_str()) {
                div.notice.cannot-run #cannot-run {
                    p { strong { "This server cannot run " (entry.id) " as it is:" } }
                    ul { @for problem in problems { li { (problem) } } }
                    p.muted { (crate::error::SERVER_SETTINGS) }
                }
            }
            @if let Some(description) = &template.description { p.muted { (description) } }
            @for (name, spec) in &template.params {
                label {
                    (name) @if spec.required { " *" }
                    input type="text" name={"param." (name)} required[spec.required]
                        value=[spec.default.as_ref().map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string()))]
                        placeholder=[spec.description.as_deref()];
                }
            }
            label { "Autonomy profile "
                select name="autonomy_profile" {
                    option value="" { "template defaults" }
                    @for (name, profile) in &template.autonomy_profiles {
                        option value=(name) { (name) @if let Some(d) = &profile.description { " — " (d) } }
                    }
                }
            }
            label { "Input files "
                input type="file" name="files" multiple;
            }
            button type="submit" { "Start run" }
            p.error data-error {}
        }
    }
}
