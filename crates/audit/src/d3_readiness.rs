//! D3 downstream readiness: can the blocks that consume this artifact use it?
//!
//! A consumer needs the artifact to exist, to parse in its declared format
//! and, for JSON, to have the shape it was written against: the golden
//! example's required keys, with the same JSON types, and non-empty arrays
//! where the golden example's are never empty. An artifact that does not
//! parse, or a consumed artifact that is missing or empty, scores 0 outright.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::dimension::{DimensionBuilder, Scored};
use crate::document::{Body, Document};
use crate::golden::Golden;
use crate::json_shape::{append_key, type_bit, type_names, walk};
use crate::{Dimension, Format, Priority, Suggestion};

const NAME: &str = "d3";

pub fn audit(
    documents: &[Document<'_>],
    golden: &BTreeMap<&str, Golden<'_>>,
    consumed_downstream: &BTreeSet<&str>,
) -> (Dimension, Vec<Suggestion>) {
    let mut builder = DimensionBuilder::new(NAME);
    for document in documents {
        let path = document.path;
        let consumed = consumed_downstream.contains(document.key);
        let Some(body) = &document.body else {
            let parses = builder.check("parses", path, 0.0, "declared but missing".to_string());
            if consumed {
                builder.check(
                    "consumed_present",
                    path,
                    0.0,
                    "downstream blocks depend on it; it is missing".to_string(),
                );
                builder.suggest(
                    Priority::Critical,
                    path,
                    "",
                    &format!(
                        "missing, but downstream blocks depend on `{}`",
                        document.key
                    ),
                );
            } else {
                builder.suggest(
                    Priority::High,
                    path,
                    "",
                    "missing, so no consumer can read it",
                );
            }
            builder.unit_of(parses);
            continue;
        };

        let parses = parse_check(&mut builder, document, body);
        let structure = match document.format {
            Format::Json => json_structure(&mut builder, path, body, golden.get(document.key)),
            Format::Markdown | Format::Text => markdown_well_formed(&mut builder, path, body),
            Format::Html => html_well_formed(&mut builder, path, body),
        };
        let mut consumed_check = None;
        if consumed {
            let consumed_ok = !body.is_blank();
            let detail = if consumed_ok {
                "downstream blocks depend on it; present and non-empty".to_string()
            } else {
                "downstream blocks depend on it; it is empty".to_string()
            };
            consumed_check = Some(builder.check(
                "consumed_present",
                path,
                if consumed_ok { 10.0 } else { 0.0 },
                detail,
            ));
            if !consumed_ok {
                builder.suggest(
                    Priority::Critical,
                    path,
                    "",
                    &format!("empty, but downstream blocks depend on `{}`", document.key),
                );
            }
        }
        match consumed_check {
            Some(missing) if missing.score == 0.0 => builder.unit_of(missing),
            _ if parses.score == 0.0 => builder.unit_of(parses),
            _ => {
                builder.unit(&[(parses, 1.0), (structure, 2.0)]);
            }
        }
    }
    builder.finish()
}

/// 10 when the artifact reads in its format; 0 for JSON that does not parse or empty content.
fn parse_check(builder: &mut DimensionBuilder, document: &Document<'_>, body: &Body<'_>) -> Scored {
    let path = document.path;
    if body.is_blank() {
        builder.suggest(Priority::Critical, path, "", "is empty");
        return builder.check(
            "parses",
            path,
            0.0,
            format!("{} bytes, nothing but whitespace", body.byte_len),
        );
    }
    match document.format {
        Format::Json => match body.json_error() {
            None => builder.check("parses", path, 10.0, "valid JSON".to_string()),
            Some(error) => {
                let ends_early = error.classify() == serde_json::error::Category::Eof;
                let what = if ends_early {
                    format!("does not parse as JSON: ends early (truncated?): {error}")
                } else {
                    format!("does not parse as JSON: {error}")
                };
                builder.suggest(
                    Priority::Critical,
                    path,
                    &format!("line {}", error.line()),
                    &what,
                );
                builder.check(
                    "parses",
                    path,
                    0.0,
                    format!(
                        "invalid JSON at line {} column {}",
                        error.line(),
                        error.column()
                    ),
                )
            }
        },
        Format::Markdown | Format::Text if !body.valid_utf8 => {
            builder.suggest(Priority::High, path, "", "is not valid UTF-8");
            builder.check(
                "parses",
                path,
                4.0,
                "not valid UTF-8 (read with replacement characters)".to_string(),
            )
        }
        Format::Markdown | Format::Text if body.words == 0 => {
            builder.suggest(
                Priority::Critical,
                path,
                "",
                "has no words, only markup or symbols",
            );
            builder.check(
                "parses",
                path,
                0.0,
                "no word at all: nothing a consumer could read".to_string(),
            )
        }
        Format::Markdown | Format::Text => {
            builder.check("parses", path, 10.0, "non-empty UTF-8 text".to_string())
        }
        Format::Html => {
            let tags = body.html.as_ref().map_or(0, |html| html.tags);
            if tags == 0 {
                builder.suggest(
                    Priority::Critical,
                    path,
                    "",
                    "declared as HTML but has no tag at all: it is plain text or code, not a page",
                );
                builder.check("parses", path, 0.0, "no HTML tag: not HTML".to_string())
            } else if tags >= 2 {
                builder.check("parses", path, 10.0, format!("{tags} HTML tags"))
            } else {
                builder.suggest(
                    Priority::High,
                    path,
                    "",
                    &format!("declared as HTML but has {tags} tags"),
                );
                builder.check(
                    "parses",
                    path,
                    4.0,
                    format!("{tags} HTML tags: reads as plain text"),
                )
            }
        }
    }
}

fn json_structure(
    builder: &mut DimensionBuilder,
    path: &str,
    body: &Body<'_>,
    golden: Option<&Golden<'_>>,
) -> Scored {
    let Some(actual) = body.json_value() else {
        return builder.check(
            "structure",
            path,
            0.0,
            "does not parse, so no structure to check".to_string(),
        );
    };
    let Some(shape) = golden.and_then(Golden::shape) else {
        let note = if golden.is_some() {
            "golden example does not parse; "
        } else {
            "no golden example; "
        };
        let (score, detail) = match actual {
            Value::Object(members) if !members.is_empty() => (10.0, "a non-empty object"),
            Value::Array(items) if !items.is_empty() => (10.0, "a non-empty array"),
            Value::Object(_) | Value::Array(_) => (2.0, "an empty container"),
            _ => (0.0, "a bare scalar, not an object or array"),
        };
        if score < 10.0 {
            let priority = if score == 0.0 {
                Priority::Critical
            } else {
                Priority::High
            };
            builder.suggest(priority, path, "$", &format!("root is {detail}"));
        }
        return builder.check("structure", path, score, format!("{note}root is {detail}"));
    };

    let (mut slots, mut fine) = (1usize, 0usize);
    let (mut missing, mut mistyped, mut empty) = (0usize, 0usize, 0usize);
    if type_bit(actual) & shape.root_type != 0 {
        fine += 1;
    } else {
        builder.suggest(
            Priority::Critical,
            path,
            "$",
            &format!(
                "root is {}, consumers expect {} (as in the golden example)",
                type_names(type_bit(actual)),
                type_names(shape.root_type)
            ),
        );
    }
    // One buffer for the members' paths instead of a new string per key.
    let mut member_path = String::new();
    walk(actual, &mut |value, json_path| match value {
        Value::Object(members) => {
            let Some(required) = shape.required_keys.get(&json_path.normalised) else {
                return;
            };
            for key in required {
                slots += 1;
                let Some(member) = members.get(key) else {
                    missing += 1;
                    let what =
                        format!("missing required key \"{key}\" (every golden object here has it)");
                    builder.suggest(Priority::High, path, &json_path.concrete, &what);
                    continue;
                };
                member_path.clear();
                member_path.push_str(&json_path.normalised);
                append_key(&mut member_path, key);
                let expected = shape.types.get(&member_path).copied().unwrap_or(0);
                if expected & type_bit(member) != 0 {
                    fine += 1;
                } else {
                    mistyped += 1;
                    let mut concrete = json_path.concrete.clone();
                    append_key(&mut concrete, key);
                    let what = format!(
                        "is {}, consumers expect {} (as in the golden example)",
                        type_names(type_bit(member)),
                        type_names(expected)
                    );
                    builder.suggest(Priority::High, path, &concrete, &what);
                }
            }
        }
        Value::Array(items)
            if shape
                .arrays
                .get(&json_path.normalised)
                .is_some_and(|range| range.min > 0) =>
        {
            slots += 1;
            if items.is_empty() {
                empty += 1;
                builder.suggest(
                    Priority::Medium,
                    path,
                    &json_path.concrete,
                    "empty array; the golden example's is never empty",
                );
            } else {
                fine += 1;
            }
        }
        _ => {}
    });
    let detail = format!(
        "{fine} of {slots} structure checks against the golden example pass ({missing} required keys missing, {mistyped} with another JSON type, {empty} arrays empty)"
    );
    builder.check("structure", path, 10.0 * fine as f64 / slots as f64, detail)
}

fn markdown_well_formed(builder: &mut DimensionBuilder, path: &str, body: &Body<'_>) -> Scored {
    let Some(stats) = &body.markdown else {
        return builder.check("well_formed", path, 10.0, "not scanned".to_string());
    };
    let mut problems = Vec::new();
    if let Some(line) = stats.unclosed_fence_line {
        problems.push(format!("code fence opened at line {line} is never closed"));
    }
    if let Some(line) = stats.ends_mid_sentence_line {
        problems.push(format!("ends mid-sentence at line {line}"));
    }
    let score = 10.0 - 5.0 * problems.len() as f64;
    let detail = if problems.is_empty() {
        "fences balanced, ends cleanly".to_string()
    } else {
        problems.join("; ")
    };
    builder.check("well_formed", path, score, detail)
}

fn html_well_formed(builder: &mut DimensionBuilder, path: &str, body: &Body<'_>) -> Scored {
    let Some(stats) = &body.html else {
        return builder.check("well_formed", path, 10.0, "not scanned".to_string());
    };
    let mut problems: Vec<String> = stats
        .unclosed
        .iter()
        .map(|tag| format!("<{tag}> never closed"))
        .collect();
    if stats.ends_inside_tag {
        problems.push("ends inside a tag".to_string());
    }
    let score = 10.0 - 5.0 * problems.len() as f64;
    let detail = if problems.is_empty() {
        "html/body closed, ends outside tags".to_string()
    } else {
        problems.join("; ")
    };
    builder.check("well_formed", path, score, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(actual: &str, golden: Option<&str>, consumed: bool) -> (Dimension, Vec<Suggestion>) {
        let documents = [Document::new(
            "frameworks-json",
            "frameworks.json",
            Format::Json,
            Some(actual.as_bytes()),
        )];
        let golden: BTreeMap<&str, Golden<'_>> = golden
            .map(|g| ("frameworks-json", Golden::new(g.as_bytes())))
            .into_iter()
            .collect();
        let consumed: BTreeSet<&str> = if consumed {
            BTreeSet::from(["frameworks-json"])
        } else {
            BTreeSet::new()
        };
        audit(&documents, &golden, &consumed)
    }

    #[test]
    fn truncated_json_scores_zero_with_a_line() {
        let (dimension, suggestions) = run("{\"frameworks\": [\n{\"name\": \"A\"", None, true);
        assert_eq!(dimension.score.unwrap(), 0.0);
        assert_eq!(suggestions[0].priority, Priority::Critical);
        assert!(
            suggestions[0]
                .message
                .starts_with("frameworks.json line 2: does not parse as JSON: ends early"),
            "{}",
            suggestions[0].message
        );
    }

    #[test]
    fn type_mismatch_and_missing_keys_against_golden() {
        let golden = r#"{"frameworks": [{"name": "A", "steps": ["x"]}]}"#;
        let (dimension, suggestions) =
            run(r#"{"frameworks": [{"steps": "x"}]}"#, Some(golden), false);
        let messages: Vec<_> = suggestions.iter().map(|s| s.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "frameworks.json $.frameworks[0]: missing required key \"name\" (every golden object here has it)",
                "frameworks.json $.frameworks[0].steps: is string, consumers expect array (as in the golden example)",
            ]
        );
        assert!(dimension.score.unwrap() < 8.0);
    }

    #[test]
    fn matching_structure_scores_ten() {
        let golden = r#"{"frameworks": [{"name": "A", "steps": ["x"]}]}"#;
        assert_eq!(run(golden, Some(golden), true).0.score.unwrap(), 10.0);
    }
}
