//! The run brief: what the META chat (seed 003 §5, the factory-level chat on
//! the run page) tells the model about a run, so its answers are grounded in
//! the run rather than in what the model guesses. One text, built from the
//! run document, the template, the corrections and the convergence table:
//! every block's state, score, audit and top suggestions; the open, addressed
//! and accepted gaps; the corrections by status; the version table and what
//! still stands between the run and shipping.
//!
//! Bounded: each section keeps its most useful lines within a budget, and
//! the text says what it left out, so a run of thousands of blocks still
//! fits a model's context.

use std::fmt::Write as _;

use crate::Pipeline;
use crate::feedback::Convergence;
use crate::gaps::GapStatus;
use crate::run::{BlockStatus, GatePhase, RunDoc};

/// One correction (improvement item) as the brief shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub target: String,
    pub priority: String,
    /// `open`, `accepted`, `rejected`, `triage` or `resolved`.
    pub status: String,
    pub finding_type: String,
    /// The expert's correction, else the text the finding came from.
    pub text: String,
    /// The review page it came from.
    pub source: String,
}

/// What the brief is made of.
pub struct BriefInput<'a> {
    pub pipeline: &'a Pipeline,
    pub doc: &'a RunDoc,
    pub corrections: &'a [Correction],
    pub convergence: Option<&'a Convergence>,
}

/// Block lines listed in full at most; the rest are counted by status.
pub const MAX_BLOCK_LINES: usize = 400;
/// Suggestions per block, at most.
const SUGGESTIONS_PER_BLOCK: usize = 3;
/// Gaps and corrections listed, at most each.
const MAX_LIST: usize = 60;
/// Characters of one free text (description, correction, error), at most.
const TEXT_LIMIT: usize = 300;

/// The brief's text (Markdown).
pub fn brief(input: &BriefInput<'_>) -> String {
    let BriefInput {
        pipeline,
        doc,
        corrections,
        convergence,
    } = input;
    let template = pipeline.template();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Run {} of template `{}` ({} v{})",
        doc.run_id, template.id, template.name, template.version
    );
    if let Some(description) = &template.description {
        let _ = writeln!(out, "Template: {}", cut(description));
    }
    let _ = writeln!(
        out,
        "Status: {}; version v{}; {} blocks.",
        doc.status.as_str(),
        doc.version,
        pipeline.len()
    );
    if !doc.params.is_empty() {
        let params: Vec<String> = doc
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", cut(&v.to_string())))
            .collect();
        let _ = writeln!(out, "Parameters: {}", params.join(", "));
    }
    blocks_section(&mut out, pipeline, doc);
    gaps_section(&mut out, doc);
    corrections_section(&mut out, corrections);
    if let Some(convergence) = convergence {
        convergence_section(&mut out, convergence);
    }
    out
}

fn blocks_section(out: &mut String, pipeline: &Pipeline, doc: &RunDoc) {
    let _ = writeln!(
        out,
        "\n## Blocks (template order: id, layer, runtime, status, attempts, score, audit)"
    );
    // Blocks that need attention first when the list must be cut.
    let mut order: Vec<usize> = (0..pipeline.len()).collect();
    if order.len() > MAX_BLOCK_LINES {
        order.sort_by_key(|&i| {
            let state = doc.blocks.get(&pipeline.blocks()[i].id);
            let rank = match state.map(|s| s.status) {
                Some(BlockStatus::Failed) => 0,
                Some(BlockStatus::Waiting) => 1,
                Some(BlockStatus::Running) => 2,
                _ if state.is_some_and(|s| s.audit_flagged) => 3,
                _ => 4,
            };
            (rank, i)
        });
        order.truncate(MAX_BLOCK_LINES);
        order.sort_unstable();
    }
    for &i in &order {
        let block = &pipeline.blocks()[i];
        let Some(state) = doc.blocks.get(&block.id) else {
            continue;
        };
        let mut line = format!(
            "- `{}` ({}), layer {}, {}: {}",
            block.id,
            block.name,
            if block.layer.is_empty() {
                "-"
            } else {
                &block.layer
            },
            block.runtime.as_str(),
            state.status.as_str()
        );
        if let Some(gate) = state.gate {
            line.push_str(match gate {
                GatePhase::Before => " at its before-gate (approve to start it)",
                GatePhase::After => " at its after-gate (approve to accept its output)",
            });
        }
        let _ = write!(line, ", {} attempt(s)", state.attempts);
        if let Some(score) = state.score {
            let _ = write!(line, ", score {score:.2}");
        }
        if let Some(audit) = state.latest_audit() {
            let _ = write!(line, ", audit {}", audit.summary_line());
        }
        if state.audit_flagged {
            line.push_str(" (below its audit threshold)");
        }
        if let Some(error) = &state.error {
            let _ = write!(line, "; error: {}", cut(error));
        }
        let _ = writeln!(out, "{line}");
        if let Some(description) = &block.description {
            let _ = writeln!(out, "  does: {}", cut(description));
        }
        let upstream: Vec<&str> = pipeline
            .upstream(i)
            .iter()
            .map(|&u| pipeline.blocks()[u].id.as_str())
            .collect();
        if !upstream.is_empty() {
            let _ = writeln!(out, "  reads: {}", upstream.join(", "));
        }
        if let Some(audit) = state.latest_audit() {
            for s in audit.suggestions.iter().take(SUGGESTIONS_PER_BLOCK) {
                let _ = writeln!(
                    out,
                    "  suggestion ({}, {}): {}",
                    s.priority.as_str(),
                    s.dimension,
                    cut(&s.message)
                );
            }
        }
    }
    let left = pipeline.len().saturating_sub(order.len());
    if left > 0 {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for (i, block) in pipeline.blocks().iter().enumerate() {
            if order.binary_search(&i).is_err()
                && let Some(state) = doc.blocks.get(&block.id)
            {
                *counts.entry(state.status.as_str()).or_default() += 1;
            }
        }
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = writeln!(
            out,
            "- … {left} more blocks not listed ({}); failed, waiting, running and flagged blocks are listed first",
            counts.join(", ")
        );
    }
}

fn gaps_section(out: &mut String, doc: &RunDoc) {
    if doc.gaps.is_empty() {
        let _ = writeln!(out, "\n## Gaps\nNo gaps were found in this run.");
        return;
    }
    let mut gaps: Vec<_> = doc.gaps.values().collect();
    gaps.sort_by_key(|g| {
        (
            g.status != GapStatus::Open,
            crate::gaps::severity_rank(&g.gap.severity),
            g.gap.id.clone(),
        )
    });
    let count = |status: GapStatus| gaps.iter().filter(|g| g.status == status).count();
    let _ = writeln!(
        out,
        "\n## Gaps ({} open, {} addressed, {} accepted)",
        count(GapStatus::Open),
        count(GapStatus::Addressed),
        count(GapStatus::Accepted)
    );
    for g in gaps.iter().take(MAX_LIST) {
        let mut line = format!(
            "- {} [{}] {} (found by {}): {}",
            g.gap.id,
            g.status.as_str(),
            g.gap.severity,
            g.source,
            cut(&g.gap.description)
        );
        if let Some(target) = g
            .gap
            .target_block
            .as_ref()
            .or(g.gap.target_artifact.as_ref())
        {
            let _ = write!(line, "; concerns {target}");
        }
        if let Some(by) = &g.by {
            let _ = write!(line, "; {} by {by}", g.status.as_str());
            if !g.reason.is_empty() {
                let _ = write!(line, ": {}", cut(&g.reason));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if gaps.len() > MAX_LIST {
        let _ = writeln!(out, "- … {} more gaps not listed", gaps.len() - MAX_LIST);
    }
}

fn corrections_section(out: &mut String, corrections: &[Correction]) {
    if corrections.is_empty() {
        let _ = writeln!(
            out,
            "\n## Corrections\nNo review has produced a correction yet."
        );
        return;
    }
    let mut list: Vec<&Correction> = corrections.iter().collect();
    let status_rank = |s: &str| match s {
        "accepted" => 0,
        "open" | "triage" => 1,
        "resolved" => 2,
        _ => 3,
    };
    list.sort_by_key(|c| {
        (
            status_rank(&c.status),
            crate::gaps::severity_rank(&c.priority),
        )
    });
    let mut by_status = std::collections::BTreeMap::<&str, usize>::new();
    for c in &list {
        *by_status.entry(c.status.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "\n## Corrections ({})", counts.join(", "));
    for c in list.iter().take(MAX_LIST) {
        let _ = writeln!(
            out,
            "- [{}] {} {} for `{}` (from {}): {}",
            c.status,
            c.priority,
            c.finding_type,
            c.target,
            if c.source.is_empty() {
                "a review"
            } else {
                &c.source
            },
            cut(&c.text)
        );
    }
    if list.len() > MAX_LIST {
        let _ = writeln!(
            out,
            "- … {} more corrections not listed",
            list.len() - MAX_LIST
        );
    }
}

fn convergence_section(out: &mut String, convergence: &Convergence) {
    let _ = writeln!(
        out,
        "\n## Convergence (version: auto score, approval, accuracy, open critical/high)"
    );
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}%"));
    for row in &convergence.rows {
        let _ = writeln!(
            out,
            "- v{}: {}, {}, {}, {} critical / {} high ({:?})",
            row.version,
            percent(row.auto_score),
            percent(row.approval),
            percent(row.accuracy),
            row.critical,
            row.high,
            row.status
        );
    }
    if convergence.ready_to_ship {
        let _ = writeln!(out, "Ready to ship: yes.");
    } else {
        let _ = writeln!(
            out,
            "Ready to ship: no. Unmet: {}",
            convergence.unmet.join("; ")
        );
    }
}

/// `text` on one line, at most [`TEXT_LIMIT`] characters.
fn cut(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= TEXT_LIMIT {
        return line;
    }
    let mut short: String = line.chars().take(TEXT_LIMIT).collect();
    short.push('…');
    short
}

/// The META chat's instructions, before the brief.
pub const INSTRUCTIONS: &str = "You are the Process Factory's assistant for one run. \
Answer the operator's questions about this run from the brief below: its blocks, their \
states and audit scores, its gaps, its corrections and its convergence. Name blocks by \
their id in backticks. When the brief does not say, say so and suggest where to look \
(a block's page, `factory show`, `factory gaps`), rather than guessing. Be brief.";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{EventRecord, RunDoc};

    fn doc(pipeline: &Pipeline) -> RunDoc {
        let params = if pipeline.template().params.contains_key("expert_name") {
            [("expert_name".to_string(), json!("Marisol Vega"))].into()
        } else {
            Default::default()
        };
        crate::run::test_run(pipeline, params)
    }

    fn clone_factory() -> Pipeline {
        crate::validate::validate_str(include_str!("../../../templates/clone-factory.json"))
            .pipeline
            .unwrap()
    }

    #[test]
    fn the_brief_holds_blocks_gaps_corrections_and_convergence() {
        let pipeline = clone_factory();
        let mut doc = doc(&pipeline);
        let offers = doc.blocks.get_mut("offer-extractor").unwrap();
        offers.status = BlockStatus::Failed;
        offers.error = Some("exit status 3: the sales page was empty".into());
        let review = doc.blocks.get_mut("extraction-reviewer").unwrap();
        review.status = BlockStatus::Waiting;
        review.gate = Some(GatePhase::After);
        let (gaps, _) = crate::gaps::parse(
            r#"{"gaps": [{"id": "g01", "severity": "critical", "skill_target": "offer-extractor",
                 "finding": "The VIP Day price 4500 contradicts the objection script"}]}"#,
        )
        .unwrap();
        let event = crate::gaps::found_event(&doc, "gap-analyzer", 1, gaps);
        let record = EventRecord {
            seq: doc.seq + 1,
            at: 5,
            actor: "test".into(),
            event,
        };
        doc.apply(&record).unwrap();
        let corrections = vec![Correction {
            target: "voice-extractor".into(),
            priority: "high".into(),
            status: "accepted".into(),
            finding_type: "voice".into(),
            text: "She never says 'folks'.".into(),
            source: "expert-audit".into(),
        }];
        let convergence =
            crate::feedback::convergence(&doc, &Default::default(), &[], &[], &Default::default());
        let text = brief(&BriefInput {
            pipeline: &pipeline,
            doc: &doc,
            corrections: &corrections,
            convergence: Some(&convergence),
        });
        for block in pipeline.blocks() {
            assert!(
                text.contains(&format!("- `{}` (", block.id)),
                "{} missing",
                block.id
            );
        }
        assert!(text.contains("`offer-extractor` (") && text.contains("the sales page was empty"));
        assert!(text.contains("at its after-gate"), "{text}");
        assert!(
            text.contains("## Gaps (1 open, 0 addressed, 0 accepted)"),
            "{text}"
        );
        assert!(
            text.contains("g01 [open] critical (found by gap-analyzer)"),
            "{text}"
        );
        assert!(text.contains("[accepted] high voice for `voice-extractor` (from expert-audit): She never says 'folks'."));
        assert!(text.contains("Ready to ship: no."), "{text}");
        assert!(text.starts_with("# Run r1 of template `clone-factory`"));
    }

    #[test]
    fn a_huge_run_is_cut_but_keeps_the_blocks_that_need_attention() {
        let blocks: Vec<_> = (0..1000)
            .map(|i| {
                let depends = if i == 0 {
                    json!([])
                } else {
                    json!([{"block": format!("b{}", i - 1), "key": "out"}])
                };
                json!({"id": format!("b{i}"), "name": format!("Block {i}"), "layer": "L0", "type": "build",
                       "runtime": "command", "inputs": {"config": {"command": ["true"]}, "depends": depends},
                       "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}})
            })
            .collect();
        let validated = crate::validate::validate_value(
            &json!({"id": "chain", "name": "Chain", "version": "1", "blocks": blocks}),
        );
        assert!(
            !validated.has_errors(),
            "{:?}",
            validated.diagnostics.first()
        );
        let pipeline = validated.pipeline.unwrap();
        let mut doc = doc(&pipeline);
        doc.blocks.get_mut("b977").unwrap().status = BlockStatus::Failed;
        let text = brief(&BriefInput {
            pipeline: &pipeline,
            doc: &doc,
            corrections: &[],
            convergence: None,
        });
        assert!(
            text.contains("- `b977` (Block 977)"),
            "the failed block is listed"
        );
        assert!(
            text.contains("- … 600 more blocks not listed (600 pending)"),
            "{}",
            &text[text.len() - 300..]
        );
        assert!(text.len() < 120_000, "{} bytes", text.len());
        assert!(text.contains("No gaps were found") && text.contains("No review has produced"));
    }

    #[test]
    fn cut_keeps_one_line_within_the_limit() {
        assert_eq!(cut("a\n  b\tc"), "a b c");
        let long = "x".repeat(TEXT_LIMIT + 5);
        let short = cut(&long);
        assert_eq!(short.chars().count(), TEXT_LIMIT + 1);
        assert!(short.ends_with('…'));
    }
}
