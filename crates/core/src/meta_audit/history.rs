//! Quality across runs: a template's runs over time (run composite and each
//! dimension), the blocks that are weakest across them, and the blocks that
//! regressed from one run to the next — the workbench's quality dashboard
//! and a block's audit history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{REGRESSION, RUN_THRESHOLD, round1, run_aggregate};
use crate::pipeline::Pipeline;
use crate::run::{Millis, RunDoc};

/// One run of the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPoint {
    pub run_id: String,
    pub created_at: Millis,
    pub status: String,
    pub template_version: String,
    pub composite: Option<f64>,
    pub dimensions: [Option<f64>; 5],
    /// Each audited block's composite.
    pub blocks: BTreeMap<String, f64>,
    /// The newest meta-audit of this run, when there is one (the engine
    /// fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_audit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeakBlock {
    pub block: String,
    /// Mean composite over the runs that audited it.
    pub mean: f64,
    pub runs: usize,
    /// The lowest composite, and the run it was in.
    pub lowest: f64,
    pub lowest_run: String,
}

/// A block that fell from one run to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRegression {
    pub block: String,
    pub from_run: String,
    pub to_run: String,
    pub before: f64,
    pub after: f64,
    pub delta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityHistory {
    pub template_id: String,
    /// Oldest first.
    pub runs: Vec<RunPoint>,
    /// Lowest mean first (at most [`WEAKEST_SHOWN`]).
    pub weakest_blocks: Vec<WeakBlock>,
    /// Newest first.
    pub regressions: Vec<RunRegression>,
    pub threshold: f64,
}

/// How many weakest blocks the history lists.
pub const WEAKEST_SHOWN: usize = 10;

/// The quality history of `runs` (each with its graph), in any order.
pub fn quality_history(template_id: &str, runs: &[(&Pipeline, &RunDoc)]) -> QualityHistory {
    let mut points: Vec<RunPoint> = runs
        .iter()
        .map(|(pipeline, doc)| {
            let aggregate = run_aggregate(pipeline, doc, RUN_THRESHOLD);
            RunPoint {
                run_id: doc.run_id.clone(),
                created_at: doc.created_at,
                status: doc.status.as_str().to_string(),
                template_version: doc.template_version.clone(),
                composite: aggregate.composite,
                dimensions: aggregate.dimensions,
                blocks: aggregate
                    .blocks
                    .iter()
                    .map(|b| (b.block.clone(), b.composite))
                    .collect(),
                meta_audit: None,
            }
        })
        .collect();
    points.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.run_id.cmp(&b.run_id))
    });

    let mut per_block: BTreeMap<&str, Vec<(f64, &str)>> = BTreeMap::new();
    for point in &points {
        for (block, composite) in &point.blocks {
            per_block
                .entry(block)
                .or_default()
                .push((*composite, &point.run_id));
        }
    }
    let mut weakest_blocks: Vec<WeakBlock> = per_block
        .into_iter()
        .map(|(block, scores)| {
            let (lowest, lowest_run) = scores
                .iter()
                .copied()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((0.0, ""));
            WeakBlock {
                block: block.to_string(),
                mean: round1(scores.iter().map(|(s, _)| s).sum::<f64>() / scores.len() as f64),
                runs: scores.len(),
                lowest,
                lowest_run: lowest_run.to_string(),
            }
        })
        .collect();
    weakest_blocks.sort_by(|a, b| a.mean.total_cmp(&b.mean).then(a.block.cmp(&b.block)));
    weakest_blocks.truncate(WEAKEST_SHOWN);

    let mut regressions = Vec::new();
    for pair in points.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        for (block, after) in &to.blocks {
            if let Some(before) = from.blocks.get(block) {
                let delta = round1(after - before);
                if delta <= -REGRESSION {
                    regressions.push(RunRegression {
                        block: block.clone(),
                        from_run: from.run_id.clone(),
                        to_run: to.run_id.clone(),
                        before: *before,
                        after: *after,
                        delta,
                    });
                }
            }
        }
    }
    regressions.reverse();
    QualityHistory {
        template_id: template_id.to_string(),
        runs: points,
        weakest_blocks,
        regressions,
        threshold: RUN_THRESHOLD,
    }
}
