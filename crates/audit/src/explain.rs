//! `explain`: a report in words, for `factory audit --explain` — per
//! dimension what was judged, what was n/a and which checks cost the most
//! points, then how the composite was put together and what capped it.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::{AuditReport, Dimension, WEIGHTS};

/// Dimension names for people, in report order.
pub const DIMENSION_NAMES: [&str; 5] = [
    "D1 completeness",
    "D2 specificity",
    "D3 downstream readiness",
    "D4 human auditability",
    "D5 second-order effects",
];

/// How many points each judged check took off its dimension's score, the
/// largest first: `weight × (10 − score)` divided by the number of artifacts
/// the dimension averaged over.
pub fn costs(dimension: &Dimension) -> Vec<(&str, f64)> {
    let units: BTreeSet<&str> = dimension
        .checks
        .iter()
        .filter(|check| check.weight > 0.0)
        .filter_map(|check| check.name.split_once(':').map(|(_, subject)| subject))
        .collect();
    let units = units.len().max(1) as f64;
    let mut costs: Vec<(&str, f64)> = dimension
        .checks
        .iter()
        .filter_map(|check| {
            let score = check.score?;
            let cost = check.weight * (10.0 - score) / units;
            (cost >= 0.05).then_some((check.name.as_str(), cost))
        })
        .collect();
    costs.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    costs
}

/// The report as text: one section per dimension, then the composite.
pub fn explain(report: &AuditReport) -> String {
    let mut out = String::new();
    for ((name, dimension), ((_, weight), title)) in report
        .dimensions()
        .into_iter()
        .zip(WEIGHTS.iter().zip(DIMENSION_NAMES))
    {
        let _ = writeln!(
            out,
            "{title} ({name}, weight {:.0}%): {}",
            weight * 100.0,
            dimension.display()
        );
        for check in &dimension.checks {
            match check.score {
                Some(score) => {
                    let share = if check.weight > 0.0 {
                        format!("{:>3.0}%", check.weight * 100.0)
                    } else {
                        "  - ".to_string()
                    };
                    let _ = writeln!(
                        out,
                        "  judged {share} {:<34} {score:>4.1}  {}",
                        check.name, check.detail
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  n/a         {:<34}   --  {}",
                        check.name, check.detail
                    );
                }
            }
        }
        let costs = costs(dimension);
        if dimension.score.is_none() {
            let _ = writeln!(out, "  → n/a: left out of the composite");
        } else if costs.is_empty() {
            let _ = writeln!(out, "  → nothing cost points");
        } else {
            let listed: Vec<String> = costs
                .iter()
                .take(3)
                .map(|(check, cost)| format!("{check} −{cost:.1}"))
                .collect();
            let _ = writeln!(out, "  → moved by {}", listed.join(", "));
        }
    }

    let mut parts = Vec::new();
    let mut not_applicable = Vec::new();
    for ((name, dimension), (_, weight)) in report.dimensions().into_iter().zip(WEIGHTS) {
        match dimension.score {
            Some(score) => parts.push(format!("{weight:.2}·{name} {score:.1}")),
            None => not_applicable.push(name),
        }
    }
    let uncapped = report
        .ceiling
        .as_ref()
        .map_or(report.composite, |ceiling| ceiling.uncapped);
    let _ = writeln!(
        out,
        "composite: ({}) / {:.2} judged weight = {uncapped:.1}{}",
        parts.join(" + "),
        report.judged_weight,
        if not_applicable.is_empty() {
            String::new()
        } else {
            format!(" ({} n/a, weights renormalised)", not_applicable.join(", "))
        }
    );
    if report.low_evidence {
        let _ = writeln!(
            out,
            "low evidence: less than half of the weights could be judged"
        );
    }
    if let Some(ceiling) = &report.ceiling {
        if ceiling.binding {
            let _ = writeln!(
                out,
                "capped at {:.1} (junk signal): {}",
                ceiling.score, ceiling.reason
            );
        } else {
            let _ = writeln!(
                out,
                "cap {:.1} not reached: {}",
                ceiling.score, ceiling.reason
            );
        }
    }
    let _ = writeln!(out, "= {}", report.badge);
    out
}
