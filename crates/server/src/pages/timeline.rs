//! The run's timeline: a Gantt of every attempt of every block, and of the
//! time blocks waited at gates, on one time axis from the run's start. Like
//! the graph it is drawn on the server; a live update redraws it, and bars
//! that are still growing (running attempts, open gates) end at "now".

use factory_core::Pipeline;
use factory_core::run::{AttemptOutcome, BlockStatus, GatePhase, Millis, RunDoc};
use maud::{Markup, html};

use super::render;

const LABEL_W: f32 = 190.0;
const CHART_W: f32 = 860.0;
const ROW_H: f32 = 24.0;
const BAR_H: f32 = 14.0;
const AXIS_H: f32 = 22.0;
/// Rows drawn at most (the earliest); a note says how many more ran.
const MAX_LANES: usize = 400;

/// What a bar stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Attempt(Option<AttemptOutcome>),
    /// Waiting for a person at a gate.
    Gate,
}

impl BarKind {
    fn class(self) -> &'static str {
        match self {
            BarKind::Attempt(None) => "running",
            BarKind::Attempt(Some(AttemptOutcome::Succeeded)) => "succeeded",
            BarKind::Attempt(Some(AttemptOutcome::ThresholdMissed)) => "missed",
            BarKind::Attempt(Some(AttemptOutcome::Failed)) => "failed",
            BarKind::Attempt(Some(AttemptOutcome::TimedOut)) => "failed",
            BarKind::Attempt(Some(AttemptOutcome::Abandoned)) => "abandoned",
            BarKind::Gate => "gate",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub kind: BarKind,
    pub start: Millis,
    pub end: Millis,
    /// The attempt's number (None for a gate).
    pub attempt: Option<u32>,
    /// What the bar's tooltip says.
    pub label: String,
}

/// One block's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub block: usize,
    pub bars: Vec<Bar>,
}

/// Every block that has run or waited, in the order it first did; `now`
/// ends what has not ended.
pub fn lanes(pipeline: &Pipeline, doc: &RunDoc, now: Millis) -> Vec<Lane> {
    let mut lanes = Vec::new();
    for (i, block) in pipeline.blocks().iter().enumerate() {
        let Some(state) = doc.blocks.get(&block.id) else {
            continue;
        };
        let mut bars = Vec::new();
        for attempt in &state.history {
            let end = attempt.ended_at.unwrap_or(now).max(attempt.started_at);
            let mut label = format!(
                "{}: attempt #{} {} · {}",
                block.name,
                attempt.n,
                super::block::outcome_words(attempt.outcome),
                render::duration((end - attempt.started_at).max(0) as u64)
            );
            if let Some(why) = &attempt.why {
                label.push_str(&format!(" · {why}"));
            }
            bars.push(Bar {
                kind: BarKind::Attempt(attempt.outcome),
                start: attempt.started_at,
                end,
                attempt: Some(attempt.n),
                label,
            });
        }
        // After-gate waits: from the attempt a decision was about to the
        // decision (or to now, for the gate the block waits at).
        let mut gate_waits: Vec<(Millis, Millis, String)> = Vec::new();
        for decision in state
            .decisions
            .iter()
            .filter(|d| d.phase == GatePhase::After)
        {
            if let Some(from) = state
                .history
                .iter()
                .filter_map(|a| a.ended_at)
                .filter(|end| *end <= decision.at)
                .max()
            {
                gate_waits.push((
                    from,
                    decision.at,
                    format!(
                        "{} by {}",
                        if decision.approved {
                            "approved"
                        } else {
                            "rejected"
                        },
                        decision.actor
                    ),
                ));
            }
        }
        if state.status == BlockStatus::Waiting {
            let from = match state.gate {
                Some(GatePhase::After) => state.history.iter().filter_map(|a| a.ended_at).max(),
                // Before a run: since its dependencies were all done.
                _ => pipeline
                    .upstream(i)
                    .iter()
                    .filter_map(|&u| doc.blocks.get(&pipeline.blocks()[u].id)?.ended_at)
                    .max()
                    .or(Some(doc.created_at)),
            };
            if let Some(from) = from {
                gate_waits.push((from, now.max(from), "still waiting".to_string()));
            }
        }
        for (start, end, how) in gate_waits {
            bars.push(Bar {
                kind: BarKind::Gate,
                start,
                end,
                attempt: None,
                label: format!(
                    "{}: waited {} at the gate · {how}",
                    block.name,
                    render::duration((end - start).max(0) as u64)
                ),
            });
        }
        if !bars.is_empty() {
            lanes.push(Lane { block: i, bars });
        }
    }
    lanes.sort_by_key(|lane| {
        (
            lane.bars.iter().map(|b| b.start).min().unwrap_or(0),
            lane.block,
        )
    });
    lanes
}

/// Tick marks for a span of `span` ms: about six, at a round step.
fn ticks(span: Millis) -> Vec<Millis> {
    const STEPS: [Millis; 16] = [
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
    ];
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6)
        .unwrap_or_else(|| (span / 6 / 3_600_000 + 1) * 3_600_000);
    (0..=span / step).map(|k| k * step).collect()
}

/// The timeline of a run as SVG, with a table of the same bars for screen
/// readers and for copying.
pub fn svg(doc: &RunDoc, pipeline: &Pipeline, now: Millis) -> Markup {
    let mut lanes = lanes(pipeline, doc, now);
    if lanes.is_empty() {
        return html! { p.muted { "Nothing has run yet." } };
    }
    let more = lanes.len().saturating_sub(MAX_LANES);
    lanes.truncate(MAX_LANES);
    let origin = lanes
        .iter()
        .flat_map(|l| l.bars.iter().map(|b| b.start))
        .min()
        .unwrap_or(doc.created_at)
        .min(doc.created_at);
    let last = lanes
        .iter()
        .flat_map(|l| l.bars.iter().map(|b| b.end))
        .max()
        .unwrap_or(origin);
    let span = (last - origin).max(1);
    let x = |t: Millis| LABEL_W + (t - origin) as f32 / span as f32 * CHART_W;
    let height = AXIS_H + lanes.len() as f32 * ROW_H + 4.0;
    let width = LABEL_W + CHART_W + 40.0;
    let blocks = pipeline.blocks();
    html! {
        svg.timeline role="group" aria-label={"Timeline: " (lanes.len()) " blocks over " (render::duration(span as u64)) "; the table below lists the same bars"}
            width=(format!("{width:.0}")) height=(format!("{height:.0}")) viewBox=(format!("0 0 {width:.0} {height:.0}")) xmlns="http://www.w3.org/2000/svg" {
            @for t in ticks(span) {
                line.tick x1=(format!("{:.1}", x(origin + t))) x2=(format!("{:.1}", x(origin + t))) y1=(format!("{AXIS_H:.0}")) y2=(format!("{height:.0}")) {}
                text.tick-label x=(format!("{:.1}", x(origin + t))) y="14" text-anchor="middle" { (render::duration(t as u64)) }
            }
            @for (row, lane) in lanes.iter().enumerate() {
                @let y = AXIS_H + row as f32 * ROW_H;
                @let block = &blocks[lane.block];
                a href={"/runs/" (doc.run_id) "/blocks/" (block.id)} {
                    text.lane-label x=(format!("{:.0}", LABEL_W - 8.0)) y=(format!("{:.0}", y + ROW_H / 2.0 + 4.0)) text-anchor="end" { (render::clip(&block.name, 26)) }
                }
                @for bar in &lane.bars {
                    @let (x0, x1) = (x(bar.start), x(bar.end));
                    rect class={"bar " (bar.kind.class())} data-block=(block.id) data-attempt=[bar.attempt]
                        x=(format!("{x0:.1}")) y=(format!("{:.1}", y + (ROW_H - BAR_H) / 2.0))
                        width=(format!("{:.1}", (x1 - x0).max(2.0))) height=(format!("{BAR_H:.0}")) rx="2" {
                        title { (bar.label) }
                    }
                }
            }
        }
        @if more > 0 { p.muted { (more) " more blocks ran after these; `factory status` lists them all." } }
        p.legend.muted {
            span.key.succeeded {} " succeeded " span.key.missed {} " threshold missed " span.key.failed {} " failed or timed out "
            span.key.abandoned {} " abandoned " span.key.running {} " running " span.key.gate {} " waiting at a gate"
        }
        details.timeline-table {
            summary { "As a table" }
            table {
                thead { tr { th { "Block" } th { "What" } th { "From start" } th { "Took" } } }
                tbody {
                    @for lane in &lanes {
                        @for bar in &lane.bars {
                            tr data-block=(blocks[lane.block].id) data-kind=(bar.kind.class()) {
                                td { (blocks[lane.block].name) }
                                td { (bar.label.split_once(": ").map_or(bar.label.as_str(), |(_, rest)| rest)) }
                                td { (render::duration((bar.start - origin).max(0) as u64)) }
                                td { (render::duration((bar.end - bar.start).max(0) as u64)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_span() {
        assert_eq!(ticks(1_000), vec![0, 200, 400, 600, 800, 1_000]);
        assert_eq!(ticks(45), vec![0, 10, 20, 30, 40]);
        let long = ticks(5 * 3_600_000);
        assert!(
            long.len() <= 7 && *long.last().unwrap() <= 5 * 3_600_000,
            "{long:?}"
        );
        assert_eq!(ticks(0), vec![0]);
    }
}
