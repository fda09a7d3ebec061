//! Runs home: every run with status, progress and quality, and the form
//! that creates a new one.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::run::BlockStatus;
use maud::{Markup, html};
use serde::Deserialize;

use super::render;
use crate::SharedState;
use crate::auth::{Caller, Role};
use crate::templates::{self, CatalogEntry};

#[derive(Debug, Deserialize)]
pub struct HomeQuery {
    #[serde(default)]
    template: Option<String>,
}

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<HomeQuery>,
) -> Response {
    match render_home(&state, &caller, query.template.as_deref()).await {
        Ok(markup) => markup.into_response(),
        Err(error) => super::page_error(&caller, error),
    }
}

async fn render_home(
    state: &SharedState,
    caller: &Caller,
    selected: Option<&str>,
) -> Result<Markup, crate::ApiError> {
    let runs = state.store.list_runs(50).await?;
    let mut rows = Vec::new();
    for run in &runs {
        // A run that vanished between the two reads is skipped.
        if let Ok(stored) = state.store.load_run(&run.run_id).await {
            rows.push(stored.doc);
        }
    }
    let catalog = templates::catalog(state).await?;
    let chosen = selected
        .and_then(|id| catalog.iter().find(|e| e.id == id))
        .or(catalog.first());
    let body = html! {
        div.home {
            section.panel {
                h1 { "Runs" }
                div #runs data-live {
                    @if rows.is_empty() {
                        p.muted { "No runs yet." }
                    } @else {
                        table.runs {
                            thead { tr { th { "Run" } th { "Template" } th { "Status" } th { "Progress" } th { "Quality" } th { "Updated" } } }
                            tbody {
                                @for doc in &rows {
                                    @let done = doc.blocks.values().filter(|b| b.status == BlockStatus::Done).count();
                                    @let total = doc.blocks.len();
                                    tr data-run-id=(doc.run_id) {
                                        td { a href={"/runs/" (doc.run_id)} { code { (&doc.run_id[..doc.run_id.len().min(13)]) } } }
                                        td { (doc.template_id) " v" (doc.template_version) }
                                        td { span class={"status " (doc.status.as_str())} { (doc.status.as_str()) } }
                                        td {
                                            progress max=(total) value=(done) {}
                                            " " (done) "/" (total)
                                        }
                                        td { @if let Some(q) = doc.quality() { (render::badge(q.composite, &format!("A:{:.1}", q.composite))) " " span.muted { "weakest " (q.weakest) } } }
                                        td.muted { (render::time(doc.updated_at)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if caller.role >= Role::Operator {
                section.panel.new-run {
                    h2 { "New run" }
                    @if catalog.is_empty() {
                        p.muted { "No templates: start the server with " code { "--templates DIR" } " or register one with POST /api/v1/templates." }
                    } @else if let Some(entry) = chosen {
                        (new_run_form(&catalog, entry))
                    }
                }
            }
        }
    };
    Ok(super::layout("Runs", caller, None, body))
}

fn new_run_form(catalog: &[CatalogEntry], entry: &CatalogEntry) -> Markup {
    let template = &entry.template;
    html! {
        form #new-run data-action="create-run" {
            label { "Template "
                select name="template" data-reload-with="template" {
                    @for e in catalog {
                        option value=(e.id) selected[e.id == entry.id] { (e.name) " (" (e.id) " v" (e.version) ", " (e.blocks) " blocks)" }
                    }
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
