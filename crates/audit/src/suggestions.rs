//! Building, ranking and trimming fix suggestions.
//!
//! A suggestion is useful only if it says where and what: every message starts
//! with the artifact and location and carries the numbers behind it. Ranking
//! is stable (priority, then dimension, then artifact, then document order),
//! and each dimension lists at most [`MAX_PER_ARTIFACT`] findings per artifact
//! so a pathological artifact cannot bury the rest of the report.

use std::collections::BTreeMap;

use crate::{Priority, Suggestion};

/// Findings listed per dimension and artifact before the rest is summarised.
pub const MAX_PER_ARTIFACT: usize = 10;

/// A suggestion whose message is `"{artifact} {location}: {what}"`
/// (or `"{artifact}: {what}"` without a location).
pub fn suggestion(
    priority: Priority,
    dimension: &str,
    artifact: &str,
    location: &str,
    what: &str,
) -> Suggestion {
    let message = if location.is_empty() {
        format!("{artifact}: {what}")
    } else {
        format!("{artifact} {location}: {what}")
    };
    Suggestion {
        priority,
        dimension: dimension.to_string(),
        artifact: artifact.to_string(),
        location: location.to_string(),
        message,
    }
}

/// Sorts by priority, dimension and artifact (stable, so document order
/// survives within those), keeping the first [`MAX_PER_ARTIFACT`] per
/// dimension and artifact, and summarising the rest in one low-priority line.
pub fn rank(suggestions: Vec<Suggestion>) -> Vec<Suggestion> {
    let mut ranked = suggestions;
    ranked.sort_by(|left, right| {
        (left.priority, &left.dimension, &left.artifact).cmp(&(
            right.priority,
            &right.dimension,
            &right.artifact,
        ))
    });
    let mut listed: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut dropped: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut kept = Vec::with_capacity(ranked.len().min(64));
    for item in ranked {
        let group = (item.dimension.clone(), item.artifact.clone());
        let count = listed.entry(group.clone()).or_insert(0);
        if *count < MAX_PER_ARTIFACT {
            *count += 1;
            kept.push(item);
        } else {
            *dropped.entry(group).or_insert(0) += 1;
        }
    }
    for ((dimension, artifact), count) in dropped {
        let what = format!("{count} more {dimension} findings like the ones above, not listed");
        kept.push(suggestion(Priority::Low, &dimension, &artifact, "", &what));
    }
    kept.sort_by(|left, right| {
        (left.priority, &left.dimension, &left.artifact).cmp(&(
            right.priority,
            &right.dimension,
            &right.artifact,
        ))
    });
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_caps() {
        let mut input = vec![suggestion(Priority::Low, "d2", "a.md", "line 1", "x")];
        for line in 0..15 {
            input.push(suggestion(
                Priority::Medium,
                "d4",
                "b.md",
                &format!("line {line}"),
                "placeholder",
            ));
        }
        input.push(suggestion(
            Priority::Critical,
            "d3",
            "c.json",
            "",
            "missing",
        ));
        let ranked = rank(input);
        assert_eq!(ranked[0].message, "c.json: missing");
        assert_eq!(ranked[1].message, "b.md line 0: placeholder");
        assert_eq!(ranked.len(), 1 + 10 + 1 + 1);
        assert_eq!(
            ranked.last().map(|s| s.message.as_str()),
            Some("b.md: 5 more d4 findings like the ones above, not listed")
        );
    }
}
