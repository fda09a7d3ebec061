//! The audit's input and report types.
//!
//! Inputs borrow everything (`&str`, `&[u8]`) so the engine can audit artifact
//! blobs where they lie, without copying. Reports own their data and are
//! serde-serialisable because they are stored in block state and compared
//! against the next attempt.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How an artifact is read. Anything that is not JSON, Markdown or HTML is
/// audited as plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Markdown,
    Html,
    Text,
}

impl Format {
    /// The format implied by a file name's extension (case-insensitive):
    /// `.json` → JSON, `.md`/`.markdown` → Markdown, `.html`/`.htm` → HTML,
    /// anything else → text.
    pub fn from_path(path: &str) -> Format {
        let file_name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        let extension = match file_name.rsplit_once('.') {
            Some((_, extension)) => extension.to_ascii_lowercase(),
            None => return Format::Text,
        };
        match extension.as_str() {
            "json" => Format::Json,
            "md" | "markdown" => Format::Markdown,
            "html" | "htm" => Format::Html,
            _ => Format::Text,
        }
    }
}

/// One artifact the audited block declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifact<'a> {
    /// The artifact key from the template (`frameworks-json`).
    pub key: &'a str,
    /// The artifact path from the template (`frameworks.json`); suggestions name it.
    pub path: &'a str,
    pub format: Format,
    /// The bytes the block produced; `None` when the artifact was declared but not written.
    pub content: Option<&'a [u8]>,
}

/// One upstream artifact the audited block received as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream<'a> {
    /// The upstream block id (`expert-framework-creator`).
    pub block: &'a str,
    /// The upstream artifact key (`expert-framework`).
    pub key: &'a str,
    pub format: Format,
    pub content: &'a [u8],
}

/// Everything one audit looks at. Build it, call [`crate::audit`], store the report.
#[derive(Debug, Clone, Default)]
pub struct AuditInput<'a> {
    /// The audited block's id; only used in messages.
    pub block: &'a str,
    pub artifacts: Vec<Artifact<'a>>,
    pub upstream: Vec<Upstream<'a>>,
    /// Golden examples by artifact key; they make D1 and D3 compare against a known-good shape.
    pub golden: BTreeMap<&'a str, &'a [u8]>,
    /// Artifact keys that downstream blocks depend on.
    pub consumed_downstream: BTreeSet<&'a str>,
    /// The subject of the content (e.g. the expert's name), for D2's name density.
    pub subject: Option<&'a str>,
    /// The block's own `self_score` metric (0–10), for the calibration warning.
    pub self_score: Option<f64>,
    /// The report of the previous attempt of the same block, for deltas.
    pub previous: Option<&'a AuditReport>,
}

/// The result of one audit: five dimensions, their weighted composite and what to fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub d1: Dimension,
    pub d2: Dimension,
    pub d3: Dimension,
    pub d4: Dimension,
    pub d5: Dimension,
    /// 0–10: the [`crate::WEIGHTS`]-weighted mean of the rounded scores of the
    /// dimensions that judged something (weights renormalised over them),
    /// lowered to [`AuditReport::ceiling`] when a junk signal set one, rounded
    /// to one decimal.
    pub composite: f64,
    /// The share (0–1) of the weights whose dimension judged something; the
    /// rest was not applicable (no upstream input, no prose).
    #[serde(default = "all_judged")]
    pub judged_weight: f64,
    /// The composite rests on less than half of the weights.
    #[serde(default)]
    pub low_evidence: bool,
    /// The cap junk signals (noise, refusal, no-op output, filler, repetition,
    /// a format that lies, too little content) put on the composite.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ceiling: Option<Ceiling>,
    /// `"A:7.2"`: the composite with one decimal.
    pub badge: String,
    /// The lowest dimension (`"d2"`); ties go to the earlier dimension.
    pub weakest: String,
    /// Ranked by priority, then dimension, then artifact; document order within those.
    pub suggestions: Vec<Suggestion>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deltas: Option<Deltas>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub calibration_warning: Option<String>,
    #[serde(default)]
    pub score_inflation: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub self_score: Option<f64>,
}

fn all_judged() -> f64 {
    1.0
}

impl AuditReport {
    /// One line for logs and terminals:
    /// `A:7.2 (d1 8.0 d2 5.5 d3 10.0 d4 9.0 d5 n/a) weakest d2`, plus
    /// `capped at 2.0: …` when a junk signal capped the composite.
    pub fn summary_line(&self) -> String {
        let scores: Vec<String> = self
            .dimensions()
            .iter()
            .map(|(name, dimension)| format!("{name} {}", dimension.display()))
            .collect();
        let mut line = format!(
            "{} ({}) weakest {}",
            self.badge,
            scores.join(" "),
            self.weakest
        );
        if let Some(ceiling) = self.ceiling.as_ref().filter(|c| c.binding) {
            line.push_str(&format!(
                "; capped at {:.1}: {}",
                ceiling.score, ceiling.reason
            ));
        }
        line
    }

    /// The dimensions in order, with their names.
    pub fn dimensions(&self) -> [(&'static str, &Dimension); 5] {
        [
            ("d1", &self.d1),
            ("d2", &self.d2),
            ("d3", &self.d3),
            ("d4", &self.d4),
            ("d5", &self.d5),
        ]
    }
}

/// One dimension's score and the checks that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    /// 0–10, one decimal; `None` (n/a) when nothing in the block's output
    /// could be judged on this dimension. Never a free 10.
    pub score: Option<f64>,
    pub checks: Vec<Check>,
}

impl Dimension {
    /// `7.5`, or `n/a`.
    pub fn display(&self) -> String {
        match self.score {
            Some(score) => format!("{score:.1}"),
            None => "n/a".to_string(),
        }
    }
}

/// One measured property, with the numbers that explain its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `check:artifact`, e.g. `generic_phrases:voice.md`.
    pub name: String,
    /// 0–10, one decimal; `None` when the check had nothing to judge.
    pub score: Option<f64>,
    /// Its weight in the artifact's score within the dimension (0 for
    /// checks that only inform, such as a cap).
    #[serde(default)]
    pub weight: f64,
    pub detail: String,
}

/// A cap on the composite, from junk signals in the artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// 0–10: the mean over artifacts of each artifact's cap (10 for an artifact with none).
    pub score: f64,
    /// What set it: `notes.md: 94% of tokens are not words (noise)`.
    pub reason: String,
    /// The composite before the cap.
    pub uncapped: f64,
    /// True when the cap lowered the composite.
    pub binding: bool,
}

/// How urgent a suggestion is. Sorts critical first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    Medium,
    Low,
}

impl Priority {
    /// The name it serializes as (`critical` … `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

/// One concrete thing to fix, located in one artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub priority: Priority,
    /// `"d1"` … `"d5"`.
    pub dimension: String,
    /// The artifact path (`frameworks.json`); several paths joined by `, ` when the finding is about the block's whole output.
    pub artifact: String,
    /// A JSON path (`$.frameworks[3].steps`), `line 42`, or empty.
    pub location: String,
    /// Self-contained: starts with the artifact and location.
    pub message: String,
}

/// Change against the previous attempt's report (current − previous).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    /// `None` when the dimension was n/a in either attempt.
    pub d1: Option<f64>,
    pub d2: Option<f64>,
    pub d3: Option<f64>,
    pub d4: Option<f64>,
    pub d5: Option<f64>,
    pub composite: f64,
    /// The composite dropped by 0.5 or more, or any dimension by 1.0 or more.
    pub regression: bool,
}

#[cfg(test)]
mod tests {
    use super::Priority;

    #[test]
    fn a_priority_is_named_as_it_serializes() {
        for p in [
            Priority::Critical,
            Priority::High,
            Priority::Medium,
            Priority::Low,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }
}
