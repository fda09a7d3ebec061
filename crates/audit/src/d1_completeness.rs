//! D1 completeness: is everything there, in the amounts a good example has?
//!
//! With a golden example the artifact is compared count for count (JSON array
//! items per path, required keys per object, Markdown headings and list
//! items, words). Without one only sane minimums can be checked, so D1 is a
//! much weaker signal for blocks that have no golden example.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::caps::is_one_line_value;
use crate::content::is_filler;
use crate::document::{Body, Document};
use crate::golden::Golden;
use crate::json_shape::{GoldenShape, walk};
use crate::markdown;
use crate::score::{percent, ratio_score};
use crate::text::{count_words, lossy};
use crate::{Dimension, Format, Priority, Suggestion, html};

const NAME: &str = "d1";
/// Minimums used without a golden example.
const MIN_JSON_LEAVES: f64 = 20.0;
const MIN_MARKDOWN_WORDS: f64 = 150.0;
const MIN_MARKDOWN_HEADINGS: f64 = 2.0;
const MIN_MARKDOWN_LIST_ITEMS: f64 = 3.0;
const MIN_TEXT_WORDS: f64 = 100.0;
const MIN_HTML_WORDS: f64 = 150.0;
/// A count below this share of the golden example's is a high-priority finding.
const HIGH_PRIORITY_BELOW: f64 = 0.5;

type Builder = crate::dimension::DimensionBuilder;

pub fn audit(
    documents: &[Document<'_>],
    golden: &BTreeMap<&str, Golden<'_>>,
) -> (Dimension, Vec<Suggestion>) {
    let mut builder = Builder::new(NAME);
    for document in documents {
        let path = document.path;
        let Some(body) = &document.body else {
            let present = builder.check("present", path, 0.0, "declared but missing".to_string());
            builder.unit_of(present);
            builder.suggest(
                Priority::Critical,
                path,
                "",
                &format!("declared artifact `{}` is missing", document.key),
            );
            continue;
        };
        if body.is_blank() {
            let present = builder.check(
                "present",
                path,
                0.0,
                format!("{} bytes, nothing but whitespace", body.byte_len),
            );
            builder.unit_of(present);
            builder.suggest(Priority::Critical, path, "", "artifact is empty");
            continue;
        }
        if body.signals().noop {
            let noop = builder.check(
                "present",
                path,
                0.0,
                "what the no-op builtin writes (its name and attempt number, or {\"builtin\": \"noop\"}): a placeholder, not work".to_string(),
            );
            builder.unit_of(noop);
            builder.suggest(
                Priority::Critical,
                path,
                "",
                "holds only what the no-op builtin writes; the block did no work",
            );
            continue;
        }
        match golden.get(document.key) {
            Some(golden) => against_golden(&mut builder, document.format, path, body, golden),
            None => against_minimums(&mut builder, document.format, path, body),
        }
    }
    builder.finish()
}

fn against_golden(
    builder: &mut Builder,
    format: Format,
    path: &str,
    body: &Body<'_>,
    golden: &Golden<'_>,
) {
    let golden_bytes = golden.bytes;
    match format {
        Format::Json => match (body.json_value(), golden.json().zip(golden.shape())) {
            (Some(actual), Some((value, shape))) => {
                json_against_golden(builder, path, actual, value, shape)
            }
            (None, Some(_)) => words_against_golden(
                builder,
                path,
                count_words(&body.raw),
                count_words(&lossy(golden_bytes)),
                "does not parse as JSON, so only its words are compared with the golden example's",
            ),
            (_, None) => words_against_golden(
                builder,
                path,
                count_words(&body.raw),
                count_words(&lossy(golden_bytes)),
                "the golden example does not parse as JSON, so only words are compared",
            ),
        },
        Format::Markdown => markdown_against_golden(builder, path, body, golden_bytes),
        Format::Html => {
            let golden_words = count_words(&html::scan(&lossy(golden_bytes)).visible_text);
            words_against_golden(builder, path, body.words, golden_words, "visible text");
        }
        Format::Text => words_against_golden(
            builder,
            path,
            body.words,
            count_words(&lossy(golden_bytes)),
            "text",
        ),
    }
}

fn json_against_golden(
    builder: &mut Builder,
    path: &str,
    actual: &Value,
    golden: &Value,
    shape: &GoldenShape,
) {
    let mut weighted = Vec::new();

    // Array item counts per normalised golden path.
    let expected: BTreeMap<&str, _> = shape
        .arrays
        .iter()
        .filter(|(_, range)| range.min > 0)
        .map(|(array_path, range)| (array_path.as_str(), *range))
        .collect();
    if !expected.is_empty() {
        let mut instances: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        walk(actual, &mut |value, json_path| {
            if let Value::Array(items) = value
                && expected.contains_key(json_path.normalised.as_str())
            {
                instances
                    .entry(json_path.normalised.clone())
                    .or_default()
                    .push((json_path.concrete.clone(), items.len()));
            }
        });
        let mut path_scores = Vec::new();
        let (mut full, mut worst): (usize, Option<(f64, String)>) = (0, None);
        for (array_path, range) in &expected {
            let found = instances.get(*array_path).map_or(&[][..], Vec::as_slice);
            let fill = if found.is_empty() {
                0.0
            } else {
                found
                    .iter()
                    .map(|(_, count)| (*count as f64 / range.min as f64).min(1.0))
                    .sum::<f64>()
                    / found.len() as f64
            };
            for (concrete, count) in found {
                if *count < range.min {
                    let priority = if (*count as f64) < range.min as f64 * HIGH_PRIORITY_BELOW {
                        Priority::High
                    } else {
                        Priority::Medium
                    };
                    let what = format!("{}, golden has {}", items(*count), range.describe());
                    builder.suggest(priority, path, concrete, &what);
                }
            }
            if fill >= 1.0 {
                full += 1;
            }
            if worst.as_ref().is_none_or(|(score, _)| fill < *score) {
                worst = Some((fill, array_path.to_string()));
            }
            path_scores.push(fill);
        }
        let fill = path_scores.iter().sum::<f64>() / path_scores.len() as f64;
        let worst_detail = match worst {
            Some((worst_fill, worst_path)) if worst_fill < 1.0 => {
                format!("; least filled {worst_path} at {}", percent(worst_fill))
            }
            _ => String::new(),
        };
        let detail = format!(
            "{full} of {} golden array paths have at least the golden minimum of items; mean fill {}{worst_detail}",
            expected.len(),
            percent(fill)
        );
        weighted.push((
            builder.check("array_counts", path, 10.0 * fill, detail),
            0.6,
        ));
    }

    // Required keys per normalised golden object path.
    if shape.has_required_keys() {
        let (mut slots, mut present, mut filler) = (0usize, 0usize, 0usize);
        walk(actual, &mut |value, json_path| {
            if let Value::Object(members) = value
                && let Some(required) = shape.required_keys.get(&json_path.normalised)
            {
                let missing: Vec<&str> = required
                    .iter()
                    .filter(|key| !members.contains_key(*key))
                    .map(String::as_str)
                    .collect();
                let filled_with_filler = required
                    .iter()
                    .filter(|key| members.get(*key).is_some_and(is_filler_value))
                    .count();
                slots += required.len();
                filler += filled_with_filler;
                present += required.len() - missing.len() - filled_with_filler;
                if !missing.is_empty() {
                    let priority = if json_path.concrete == "$" {
                        Priority::High
                    } else {
                        Priority::Medium
                    };
                    let (noun, pronoun) = if missing.len() == 1 {
                        ("key", "it")
                    } else {
                        ("keys", "them")
                    };
                    let what =
                        format!("missing {noun} {} (golden has {pronoun})", quoted(&missing));
                    builder.suggest(priority, path, &json_path.concrete, &what);
                }
            }
        });
        let score = if slots == 0 {
            0.0
        } else {
            10.0 * present as f64 / slots as f64
        };
        let detail = if slots == 0 {
            "no object where the golden example has one (root is a different type)".to_string()
        } else {
            format!(
                "{present} of {slots} required keys present (keys every golden object at that path has){}",
                if filler > 0 {
                    format!(
                        "; {filler} more hold only filler such as N/A or TBD, which does not count"
                    )
                } else {
                    String::new()
                }
            )
        };
        weighted.push((builder.check("required_keys", path, score, detail), 0.4));
    }

    if weighted.is_empty() {
        words_against_golden(
            builder,
            path,
            count_words(&serde_json::to_string(actual).unwrap_or_default()),
            count_words(&serde_json::to_string(golden).unwrap_or_default()),
            "the golden example has no arrays or objects to count",
        );
    } else {
        builder.unit(&weighted);
    }
}

fn markdown_against_golden(
    builder: &mut Builder,
    path: &str,
    body: &Body<'_>,
    golden_bytes: &[u8],
) {
    let golden_text = lossy(golden_bytes);
    let golden = markdown::scan(&golden_text);
    let golden_words = count_words(&golden_text);
    let actual = body.markdown.clone().unwrap_or_default();
    let measures = [
        ("headings", actual.headings, golden.headings),
        ("list items", actual.list_items, golden.list_items),
        ("words", body.words, golden_words),
    ];
    let mut fills = Vec::new();
    let mut parts = Vec::new();
    for (what, count, golden_count) in measures {
        if golden_count == 0 {
            continue;
        }
        let fill = (count as f64 / golden_count as f64).min(1.0);
        fills.push(fill);
        parts.push(format!("{what} {count}/{golden_count}"));
        if fill < 0.8 {
            let priority = if fill < HIGH_PRIORITY_BELOW {
                Priority::High
            } else {
                Priority::Medium
            };
            builder.suggest(
                priority,
                path,
                "",
                &format!("{count} {what}, golden has {golden_count}"),
            );
        }
    }
    let fill = if fills.is_empty() {
        1.0
    } else {
        fills.iter().sum::<f64>() / fills.len() as f64
    };
    let detail = format!(
        "against the golden example: {} (mean fill {})",
        parts.join(", "),
        percent(fill)
    );
    let score = builder.check("counts_vs_golden", path, 10.0 * fill, detail);
    builder.unit_of(score);
}

fn words_against_golden(
    builder: &mut Builder,
    path: &str,
    words: usize,
    golden_words: usize,
    note: &str,
) {
    let score = builder.check(
        "words_vs_golden",
        path,
        ratio_score(words as f64, golden_words as f64),
        format!("{words} words, golden example has {golden_words} ({note})"),
    );
    if (words as f64) < golden_words as f64 * 0.8 {
        let priority = if (words as f64) < golden_words as f64 * HIGH_PRIORITY_BELOW {
            Priority::High
        } else {
            Priority::Medium
        };
        builder.suggest(
            priority,
            path,
            "",
            &format!("{words} words, golden has {golden_words}"),
        );
    }
    builder.unit_of(score);
}

fn against_minimums(builder: &mut Builder, format: Format, path: &str, body: &Body<'_>) {
    let (score, detail) = match (format, body.json_value()) {
        (Format::Json, Some(value)) => {
            let (mut leaves, mut containers, mut non_empty) = (0usize, 0usize, 0usize);
            walk(value, &mut |node, _| match node {
                Value::String(text) if !text.trim().is_empty() && !is_filler(text) => leaves += 1,
                Value::Number(_) | Value::Bool(_) => leaves += 1,
                Value::Array(items) => {
                    containers += 1;
                    non_empty += usize::from(!items.is_empty());
                }
                Value::Object(members) => {
                    containers += 1;
                    non_empty += usize::from(!members.is_empty());
                }
                _ => {}
            });
            let container_share = if containers == 0 {
                1.0
            } else {
                non_empty as f64 / containers as f64
            };
            let score =
                0.7 * ratio_score(leaves as f64, MIN_JSON_LEAVES) + 0.3 * 10.0 * container_share;
            if (leaves as f64) < MIN_JSON_LEAVES {
                builder.suggest(
                    Priority::Medium,
                    path,
                    "",
                    &format!(
                        "only {leaves} non-empty values (expected at least {MIN_JSON_LEAVES})"
                    ),
                );
            }
            (
                score,
                format!(
                    "{leaves} non-empty values (minimum {MIN_JSON_LEAVES}), {non_empty} of {containers} arrays/objects non-empty"
                ),
            )
        }
        (Format::Markdown, _) => {
            let stats = body.markdown.clone().unwrap_or_default();
            let score = 0.5 * ratio_score(body.words as f64, MIN_MARKDOWN_WORDS)
                + 0.25 * ratio_score(stats.headings as f64, MIN_MARKDOWN_HEADINGS)
                + 0.25 * ratio_score(stats.list_items as f64, MIN_MARKDOWN_LIST_ITEMS);
            if (body.words as f64) < MIN_MARKDOWN_WORDS {
                builder.suggest(
                    Priority::Medium,
                    path,
                    "",
                    &format!(
                        "only {} words (expected at least {MIN_MARKDOWN_WORDS})",
                        body.words
                    ),
                );
            }
            (
                score,
                format!(
                    "{} words (minimum {MIN_MARKDOWN_WORDS}), {} headings (minimum {MIN_MARKDOWN_HEADINGS}), {} list items (minimum {MIN_MARKDOWN_LIST_ITEMS})",
                    body.words, stats.headings, stats.list_items
                ),
            )
        }
        (Format::Html, _) => minimum_words(builder, path, body.words, MIN_HTML_WORDS),
        (Format::Text, _) if is_one_line_value(&body.raw) => (
            10.0,
            "a one-line value (a URL, id or version), complete as it is".to_string(),
        ),
        (Format::Json | Format::Text, _) => {
            minimum_words(builder, path, count_words(&body.raw), MIN_TEXT_WORDS)
        }
    };
    let score = builder.check(
        "minimums",
        path,
        score,
        format!("no golden example, only minimums checked: {detail}"),
    );
    builder.unit_of(score);
}

/// A JSON string value that is filler (`"N/A"`, `"TBD"`, `"string"`).
fn is_filler_value(value: &Value) -> bool {
    value.as_str().is_some_and(is_filler)
}

fn minimum_words(builder: &mut Builder, path: &str, words: usize, minimum: f64) -> (f64, String) {
    if (words as f64) < minimum {
        builder.suggest(
            Priority::Medium,
            path,
            "",
            &format!("only {words} words (expected at least {minimum})"),
        );
    }
    (
        ratio_score(words as f64, minimum),
        format!("{words} words (minimum {minimum})"),
    )
}

fn items(count: usize) -> String {
    plural(count, "item")
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn quoted(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| format!("\"{key}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(actual: &str, golden: &str) -> (Dimension, Vec<Suggestion>) {
        let documents = [Document::new(
            "frameworks-json",
            "frameworks.json",
            Format::Json,
            Some(actual.as_bytes()),
        )];
        audit(
            &documents,
            &BTreeMap::from([("frameworks-json", Golden::new(golden.as_bytes()))]),
        )
    }

    #[test]
    fn names_short_arrays_with_both_counts() {
        let golden = r#"{"frameworks": [{"name": "A", "steps": [1,2,3,4,5,6,7]}]}"#;
        let actual = r#"{"frameworks": [{"name": "A", "steps": [1,2,3,4,5,6,7]}, {"name": "B", "steps": [1,2]}]}"#;
        let (dimension, suggestions) = run(actual, golden);
        assert_eq!(
            suggestions[0].message,
            "frameworks.json $.frameworks[1].steps: 2 items, golden has 7"
        );
        assert_eq!(suggestions[0].priority, Priority::High);
        assert!(
            dimension.score.unwrap() < 10.0 && dimension.score.unwrap() > 5.0,
            "{dimension:?}"
        );
    }

    #[test]
    fn names_missing_keys() {
        let (_, suggestions) = run(
            r#"{"frameworks": [{"steps": [1]}]}"#,
            r#"{"frameworks": [{"name": "A", "origin": "x", "steps": [1]}]}"#,
        );
        assert_eq!(
            suggestions[0].message,
            "frameworks.json $.frameworks[0]: missing keys \"name\", \"origin\" (golden has them)"
        );
    }

    #[test]
    fn missing_artifact_scores_zero() {
        let documents = [Document::new("k", "out.md", Format::Markdown, None)];
        let (dimension, suggestions) = audit(&documents, &BTreeMap::new());
        assert_eq!(dimension.score.unwrap(), 0.0);
        assert_eq!(suggestions[0].priority, Priority::Critical);
    }

    #[test]
    fn identical_to_golden_scores_ten() {
        let golden = r#"{"a": [1, 2], "b": {"c": "Anchor Ladder"}}"#;
        assert_eq!(run(golden, golden).0.score.unwrap(), 10.0);
    }
}
