//! A template's quality dashboard: its runs over time (the run composite
//! and each D1–D5 dimension as small charts, each point a link to its run),
//! the blocks weakest across them, the blocks that fell from one run to the
//! next, and each run's meta-audit scorecard where there is one.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::meta_audit::history::QualityHistory;
use maud::{Markup, html};
use serde::Deserialize;

use super::render;
use crate::SharedState;
use crate::auth::Caller;

#[derive(Debug, Default, Deserialize)]
pub struct QualityQuery {
    /// How many of the newest runs (default 30, at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Runs a dashboard shows unless asked.
pub const DEFAULT_RUNS: u32 = 30;
pub const MAX_RUNS: u32 = 200;

pub fn limit(query: &QualityQuery) -> u32 {
    query.limit.unwrap_or(DEFAULT_RUNS).clamp(1, MAX_RUNS)
}

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Path(template): Path<String>,
    Query(query): Query<QualityQuery>,
) -> Response {
    match state
        .engine
        .quality_history(&template, limit(&query), true)
        .await
    {
        Ok(history) => super::layout(
            &format!("Quality of {template}"),
            &caller,
            None,
            dashboard(&history),
        )
        .into_response(),
        Err(error) => super::page_error(&caller, error.into()),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

fn dashboard(h: &QualityHistory) -> Markup {
    let scored: Vec<_> = h.runs.iter().filter(|r| r.composite.is_some()).collect();
    let series = |pick: &dyn Fn(&factory_core::meta_audit::history::RunPoint) -> Option<f64>| {
        h.runs
            .iter()
            .filter_map(|r| {
                Some(render::TrendPoint {
                    label: format!("{} · {}", short(&r.run_id), render::time(r.created_at)),
                    href: Some(format!("/runs/{}", r.run_id)),
                    score: pick(r)?,
                })
            })
            .collect::<Vec<_>>()
    };
    let composite = series(&|r| r.composite);
    html! {
        section.panel.quality-dashboard {
            h1 { "Quality of " code { (h.template_id) } }
            p.muted { (h.runs.len()) " newest runs, oldest left; " (scored.len()) " of them audited. A point links to its run. "
                a href={"/?tpl=" (h.template_id)} { "All runs of " (h.template_id) } }
            @if composite.len() < 2 {
                p #no-trend { "Fewer than two audited runs: nothing to draw yet." }
            } @else {
                (render::trend(
                    &format!("Run composite of {} over {} runs: from {:.1} to {:.1}", h.template_id, composite.len(), composite[0].score, composite[composite.len() - 1].score),
                    "Run composite (mean D1–D5 of its blocks)",
                    &composite, 720.0, 140.0))
                div.small-multiples {
                    @for (i, name) in factory_audit::DIMENSION_NAMES.iter().enumerate() {
                        @let points = series(&|r| r.dimensions[i]);
                        @if points.len() >= 2 {
                            (render::trend(&format!("{name} over {} runs", points.len()), name, &points, 340.0, 100.0))
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Weakest blocks across these runs" }
            @if h.weakest_blocks.is_empty() {
                p.muted { "No block was audited." }
            } @else {
                table #weakest-blocks {
                    thead { tr { th { "block" } th { "mean" } th { "runs" } th { "lowest" } } }
                    tbody {
                        @for b in &h.weakest_blocks {
                            tr {
                                td { code { (b.block) } }
                                td { (render::badge(b.mean, &format!("{:.1}", b.mean))) }
                                td { (b.runs) }
                                td { (format!("{:.1}", b.lowest)) " in " a href={"/runs/" (b.lowest_run) "/blocks/" (b.block)} { code { (short(&b.lowest_run)) } } }
                            }
                        }
                    }
                }
            }
            h2 { "Regressions between consecutive runs" }
            @if h.regressions.is_empty() {
                p.muted #regressions { "No block fell by 0.5 or more from one run to the next." }
            } @else {
                ul #regressions {
                    @for r in &h.regressions {
                        li { code { (r.block) } " " (format!("{:.1} → {:.1} ({:+.1})", r.before, r.after, r.delta)) " from "
                            a href={"/runs/" (r.from_run)} { code { (short(&r.from_run)) } } " to "
                            a href={"/runs/" (r.to_run) "/blocks/" (r.block)} { code { (short(&r.to_run)) } } }
                    }
                }
            }
        }
        section.panel {
            h2 { "Runs" }
            table #quality-runs {
                thead { tr { th { "run" } th { "started" } th { "version" } th { "status" } th { "composite" }
                    @for name in ["D1", "D2", "D3", "D4", "D5"] { th { (name) } } th { "meta-audit" } } }
                tbody {
                    @for r in h.runs.iter().rev() {
                        tr {
                            td { a href={"/runs/" (r.run_id)} { code { (short(&r.run_id)) } } }
                            td { (render::time(r.created_at)) }
                            td { (r.template_version) }
                            td { (r.status) }
                            td { @match r.composite { Some(c) => (render::badge(c, &format!("{c:.1}"))), None => span.muted { "n/a" } } }
                            @for d in r.dimensions { td { @match d { Some(x) => (format!("{x:.1}")), None => "n/a" } } }
                            td { @match &r.meta_audit {
                                Some(meta) => { a href={"/api/v1/runs/" (meta) "/blocks/audit-scorecard-publisher/artifacts/scorecard"} { "scorecard" } " · " a href={"/runs/" (meta)} { "run" } },
                                None => span.muted { "factory meta-audit " (short(&r.run_id)) },
                            } }
                        }
                    }
                }
            }
        }
    }
}
