//! The analytical lens, decided purely: who a lens block's output is rated
//! as, what past ratings say, and how they shape a new run.
//!
//! A lens block is one of three things ([`Role`]): a fan-out block whose
//! instances are perspectives (each instance's key names its perspective),
//! a block with a fixed `lens.perspective`, or an aggregate (a lens block
//! without a perspective, which reads perspective blocks). People rate each
//! done perspective and aggregate of a run, 1–5 with a comment ([`Rating`]);
//! ratings are kept per template, block, perspective and aggregate key (the
//! values of the params `lens.aggregates` names, e.g. `entity_id=acme`).
//!
//! With `lens.feedback_loop: true`, a new run is shaped by what was said
//! before. When the run is created the engine reads the template's ratings
//! and [`past_for_run`] condenses them into the run's `past_ratings` (in its
//! first event, so replay needs no store). From that snapshot:
//! - a perspective's or aggregate's prompt carries its count, mean and
//!   latest comments ([`Brief`]; for commands, `FACTORY_FEEDBACK`);
//! - a fan-out lens orders its instances by past mean, best first (an
//!   unrated perspective counts as [`NEUTRAL`]), so the aggregate reads the
//!   most useful first ([`shape`]);
//! - with `lens.review_below`, a perspective rated below it waits for a
//!   person after it runs (a `human_gate: after` of its own);
//! - with `lens.drop_below`, a perspective with at least `lens.min_ratings`
//!   ratings whose mean is below it is left out of the fan-out — never so
//!   many that fewer remain than `fan_out.need` asks for.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::Pipeline;
use crate::run::{BlockStatus, Instance, Millis, RunDoc};
use crate::template::{Block, Lens, Need, Template};

/// Lowest and highest score.
pub const SCORES: std::ops::RangeInclusive<u8> = 1..=5;
/// The mean an unrated perspective counts as when instances are ordered.
pub const NEUTRAL: f64 = 3.0;
/// Ratings a perspective needs before `drop_below` can leave it out, when
/// `lens.min_ratings` does not say.
pub const DEFAULT_MIN_RATINGS: u32 = 3;
/// Comments a summary keeps (the newest).
pub const MAX_COMMENTS: usize = 5;
/// Longest comment kept, in characters.
pub const MAX_COMMENT_CHARS: usize = 2_000;

/// What a lens block is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A fan-out block: each instance is the perspective its key names.
    Perspectives,
    /// A block with a fixed `lens.perspective`.
    Perspective(String),
    /// A lens block without a perspective: it rolls perspectives up.
    Aggregate,
}

/// The role of `block`, if it is a lens block.
pub fn role(block: &Block) -> Option<Role> {
    let lens = block.lens.as_ref()?;
    Some(if block.fan_out.is_some() {
        Role::Perspectives
    } else if let Some(p) = lens.perspective.as_ref().filter(|p| !p.trim().is_empty()) {
        Role::Perspective(p.clone())
    } else {
        Role::Aggregate
    })
}

/// The aggregate key of a run for `lens`: `name=value` for each param
/// `lens.aggregates` names, in that order, joined by `, `, each value as
/// JSON (`entity="Acme Robotics", year=2026`: quoted, so no value can run
/// into the next, and the text `"1"` is not the number `1`); `""` without
/// any: the ratings of every run of the template count together.
pub fn aggregate_key(lens: &Lens, params: &BTreeMap<String, Value>) -> String {
    lens.aggregates
        .iter()
        .flatten()
        .map(|name| {
            let value = match params.get(name) {
                Some(Value::String(s)) => Value::from(s.trim()),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One person's rating of one lens output of one run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// The template block (for an instance, its fan-out block).
    pub block: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perspective: Option<String>,
    pub aggregate_key: String,
    pub score: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

impl Rating {
    /// The side-record key: one rating per person per output per run, so a
    /// second rating replaces the first instead of counting twice.
    pub fn record_key(&self, by: &str) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{by}",
            self.block,
            self.perspective.as_deref().unwrap_or("")
        )
    }
}

/// A stored [`Rating`] with who gave it, when and in which run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatingEntry {
    pub run_id: String,
    pub by: String,
    pub at: Millis,
    #[serde(flatten)]
    pub rating: Rating,
}

/// Why a rating is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("block `{0}` is not in run {1}")]
    UnknownBlock(String, String),
    #[error(
        "block `{0}` has no `lens`, so its output is not rated; rate a perspective or the aggregate of a lens"
    )]
    NotALens(String),
    #[error(
        "block `{0}` fans out into perspectives: rate each of them, e.g. `{0}[<perspective>]`, or the aggregate"
    )]
    RateInstances(String),
    #[error(
        "block `{block}` is {status}: a person rates an output once it is done, after using it"
    )]
    NotDone { block: String, status: String },
    #[error("a score is a whole number from 1 to 5, not {0}")]
    Score(i64),
    #[error("the comment has {0} characters; keep it to {MAX_COMMENT_CHARS} at most")]
    CommentTooLong(usize),
}

/// The rating a person gives `block_id` (a template block or an instance)
/// of run `doc`, checked: the block is a perspective or an aggregate of a
/// lens, and done. `pipeline` is the run's graph ([`Pipeline::for_run`]).
pub fn rating_for(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block_id: &str,
    score: i64,
    comment: &str,
) -> Result<Rating, RateError> {
    let unknown = || RateError::UnknownBlock(block_id.to_string(), doc.run_id.clone());
    let state = doc.blocks.get(block_id).filter(|s| !s.dropped);
    let state = state.ok_or_else(unknown)?;
    let block = pipeline.block(block_id).ok_or_else(unknown)?;
    let (template_block, perspective) = match &state.instance {
        Some(of) => {
            let group = pipeline.block(&of.group).ok_or_else(unknown)?;
            if group.lens.is_none() {
                return Err(RateError::NotALens(block_id.to_string()));
            }
            (group, Some(of.key.clone()))
        }
        None => match role(block) {
            None => return Err(RateError::NotALens(block_id.to_string())),
            Some(Role::Perspectives) => {
                return Err(RateError::RateInstances(block_id.to_string()));
            }
            Some(Role::Perspective(p)) => (block, Some(p)),
            Some(Role::Aggregate) => (block, None),
        },
    };
    if state.status != BlockStatus::Done {
        return Err(RateError::NotDone {
            block: block_id.to_string(),
            status: state.status.as_str().to_string(),
        });
    }
    let score = u8::try_from(score)
        .ok()
        .filter(|s| SCORES.contains(s))
        .ok_or(RateError::Score(score))?;
    let comment = comment.trim();
    let chars = comment.chars().count();
    if chars > MAX_COMMENT_CHARS {
        return Err(RateError::CommentTooLong(chars));
    }
    let lens = template_block.lens.as_ref().ok_or_else(unknown)?;
    Ok(Rating {
        block: template_block.id.clone(),
        perspective,
        aggregate_key: aggregate_key(lens, &doc.params),
        score,
        comment: comment.to_string(),
    })
}

/// What past ratings said about one output (a perspective, or an
/// aggregate when `perspective` is `None`) when a run was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastRatings {
    pub block: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perspective: Option<String>,
    pub aggregate_key: String,
    pub count: u32,
    /// Mean score, to two decimals.
    pub mean: f64,
    /// The newest comments, newest first (at most [`MAX_COMMENTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<PastComment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastComment {
    pub score: u8,
    pub comment: String,
    pub run_id: String,
    pub at: Millis,
}

/// The summaries a new run of `template` with `params` starts from: for
/// each lens block with `feedback_loop`, one per perspective (or one for an
/// aggregate) rated under the run's aggregate key.
pub fn past_for_run(
    template: &Template,
    params: &BTreeMap<String, Value>,
    entries: &[RatingEntry],
) -> Vec<PastRatings> {
    let mut out = Vec::new();
    for block in &template.blocks {
        let Some(lens) = block.lens.as_ref().filter(|l| l.feedback_loop) else {
            continue;
        };
        let key = aggregate_key(lens, params);
        out.extend(summaries(entries.iter().filter(|e| {
            e.rating.block == block.id && e.rating.aggregate_key == key
        })));
    }
    out
}

/// One summary per block, aggregate key and perspective of `entries`. One
/// person's several ratings of one output of one run count once (the
/// newest); a score outside 1–5 is not counted.
pub fn summaries<'a>(entries: impl IntoIterator<Item = &'a RatingEntry>) -> Vec<PastRatings> {
    type Output<'a> = (&'a str, &'a str, Option<&'a str>);
    let mut newest: BTreeMap<(Output<'a>, &'a str, &'a str), &'a RatingEntry> = BTreeMap::new();
    for entry in entries
        .into_iter()
        .filter(|e| SCORES.contains(&e.rating.score))
    {
        let r = &entry.rating;
        let output = (
            r.block.as_str(),
            r.aggregate_key.as_str(),
            r.perspective.as_deref(),
        );
        let slot = (output, entry.run_id.as_str(), entry.by.as_str());
        match newest.get(&slot) {
            Some(seen) if seen.at >= entry.at => {}
            _ => {
                newest.insert(slot, entry);
            }
        }
    }
    let mut by_output: BTreeMap<Output<'a>, Vec<&RatingEntry>> = BTreeMap::new();
    for ((output, _, _), entry) in newest {
        by_output.entry(output).or_default().push(entry);
    }
    by_output
        .into_iter()
        .map(|((block, aggregate_key, perspective), mut ratings)| {
            ratings.sort_by(|a, b| b.at.cmp(&a.at).then(b.run_id.cmp(&a.run_id)));
            let sum: u32 = ratings.iter().map(|r| u32::from(r.rating.score)).sum();
            let count = ratings.len() as u32;
            PastRatings {
                block: block.to_string(),
                perspective: perspective.map(str::to_string),
                aggregate_key: aggregate_key.to_string(),
                count,
                mean: (f64::from(sum) / f64::from(count) * 100.0).round() / 100.0,
                comments: ratings
                    .iter()
                    .filter(|r| !r.rating.comment.is_empty())
                    .take(MAX_COMMENTS)
                    .map(|r| PastComment {
                        score: r.rating.score,
                        comment: r.rating.comment.clone(),
                        run_id: r.run_id.clone(),
                        at: r.at,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The summary of `block`'s `perspective` among a run's past ratings.
pub fn past_of<'a>(
    past: &'a [PastRatings],
    block: &str,
    perspective: Option<&str>,
) -> Option<&'a PastRatings> {
    past.iter()
        .find(|p| p.block == block && p.perspective.as_deref() == perspective)
}

/// A perspective past ratings left out of a fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub key: String,
    pub mean: f64,
    pub count: u32,
}

/// A fan-out lens's instances shaped by past ratings (see the module
/// documentation): ordered best first, flagged for review, some left out.
/// Unchanged without `feedback_loop`.
pub fn shape(
    block: &Block,
    past: &[PastRatings],
    mut instances: Vec<Instance>,
) -> (Vec<Instance>, Vec<LeftOut>) {
    let (Some(lens), Some(fan_out)) = (
        block.lens.as_ref().filter(|l| l.feedback_loop),
        &block.fan_out,
    ) else {
        return (instances, Vec::new());
    };
    let of = |key: &str| past_of(past, &block.id, Some(key));
    let mean = |key: &str| of(key).map_or(NEUTRAL, |p| p.mean);
    // Stable: equal means keep the list's order.
    instances.sort_by(|a, b| mean(&b.key).total_cmp(&mean(&a.key)));

    let mut left_out = Vec::new();
    if let Some(bar) = lens.drop_below {
        let min_ratings = lens.min_ratings.unwrap_or(DEFAULT_MIN_RATINGS);
        let keep_at_least = match fan_out.need {
            Need::AtLeast(k) => k as usize,
            Need::All | Need::Any => 1,
        };
        let mut droppable: Vec<(String, f64, u32)> = instances
            .iter()
            .filter_map(|i| of(&i.key).map(|p| (i.key.clone(), p.mean, p.count)))
            .filter(|(_, mean, count)| *count >= min_ratings && *mean < bar)
            .collect();
        // Worst first; never below what `need` asks for.
        droppable.sort_by(|a, b| a.1.total_cmp(&b.1));
        let room = instances.len().saturating_sub(keep_at_least);
        for (key, mean, count) in droppable.into_iter().take(room) {
            instances.retain(|i| i.key != key);
            left_out.push(LeftOut { key, mean, count });
        }
    }
    if let Some(bar) = lens.review_below {
        for instance in &mut instances {
            instance.review = of(&instance.key).is_some_and(|p| p.mean < bar);
        }
    }
    (instances, left_out)
}

/// What a lens block's prompt says about its perspective and past ratings.
#[derive(Debug, Clone, PartialEq)]
pub struct Brief {
    pub perspective: Option<String>,
    pub aggregate_key: String,
    pub past: Option<PastRatings>,
    /// Set when the past ratings made a person review this output.
    pub review: bool,
}

/// The [`Brief`] of `block_id` in run `doc`, if it is a lens block (or an
/// instance of one).
pub fn brief(pipeline: &Pipeline, doc: &RunDoc, block_id: &str) -> Option<Brief> {
    let state = doc.blocks.get(block_id)?;
    let (block, perspective) = match &state.instance {
        Some(of) => (pipeline.block(&of.group)?, Some(of.key.clone())),
        None => {
            let block = pipeline.block(block_id)?;
            match role(block)? {
                Role::Perspectives => return None,
                Role::Perspective(p) => (block, Some(p)),
                Role::Aggregate => (block, None),
            }
        }
    };
    let lens = block.lens.as_ref()?;
    Some(Brief {
        past: past_of(&doc.past_ratings, &block.id, perspective.as_deref()).cloned(),
        perspective,
        aggregate_key: aggregate_key(lens, &doc.params),
        review: state.instance.as_ref().is_some_and(|i| i.review),
    })
}

impl Brief {
    /// The prompt section: the perspective to take, then what readers said.
    pub fn prompt_section(&self) -> String {
        let mut out = String::new();
        let scope = if self.aggregate_key.is_empty() {
            String::new()
        } else {
            format!(" for {}", self.aggregate_key)
        };
        if let Some(perspective) = &self.perspective {
            let _ = write!(
                out,
                "\n## Your perspective: `{perspective}`\nAnalyse{scope} from this angle only; other perspectives are covered by other blocks and rolled up into one brief.\n"
            );
        }
        if let Some(past) = &self.past {
            let what = self
                .perspective
                .as_deref()
                .map_or("this brief".to_string(), |p| {
                    format!("the `{p}` perspective")
                });
            let _ = write!(
                out,
                "\n## What readers said about {what} in earlier runs{scope}\n{} rating(s), mean {:.1} of 5. Keep what they found useful and fix what they did not.\n",
                past.count, past.mean
            );
            for c in &past.comments {
                let _ = writeln!(out, "- {}/5: {}", c.score, one_line(&c.comment));
            }
        }
        out
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
