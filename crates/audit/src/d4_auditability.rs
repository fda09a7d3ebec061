//! D4 human auditability: can a reviewer read this and trust it is finished?
//!
//! Three things make a reviewer's job hard or impossible: placeholders and
//! model boilerplate left in the text, output cut off mid-way (token limits),
//! and walls of text without headings or lists. Each finding points at a line
//! (text formats) or a JSON path.

use crate::dimension::{DimensionBuilder, Scored};
use crate::document::{Body, Document};
use crate::patterns::find_placeholders;
use crate::{Dimension, Format, Priority, Suggestion};

const NAME: &str = "d4";
/// Each placeholder costs this many points of the placeholder check.
const PLACEHOLDER_PENALTY: f64 = 2.0;
/// Each refusal ("as an AI language model") costs this many.
const REFUSAL_PENALTY: f64 = 5.0;
/// Text longer than this should have headings and lists.
const LONG_TEXT_WORDS: usize = 300;
/// A section (text between headings) longer than this is hard to review.
const MAX_SECTION_WORDS: usize = 400;
/// A paragraph longer than this is hard to review.
const MAX_PARAGRAPH_WORDS: usize = 200;
/// A JSON string value longer than this hides a document inside a field.
const MAX_JSON_STRING_WORDS: usize = 400;

pub fn audit(documents: &[Document<'_>]) -> (Dimension, Vec<Suggestion>) {
    let mut builder = DimensionBuilder::new(NAME);
    for document in documents {
        let path = document.path;
        let Some(body) = &document.body else { continue };
        if body.is_blank() {
            let empty = builder.check(
                "placeholders",
                path,
                0.0,
                "empty: nothing to review".to_string(),
            );
            builder.unit_of(empty);
            continue;
        }
        let placeholders = placeholder_check(&mut builder, document.format, path, body);
        let truncation = truncation_check(&mut builder, document.format, path, body);
        let structure = structure_check(&mut builder, document.format, path, body);
        builder.unit(&[(placeholders, 0.4), (truncation, 0.4), (structure, 0.2)]);
    }
    builder.finish()
}

fn placeholder_check(
    builder: &mut DimensionBuilder,
    format: Format,
    path: &str,
    body: &Body<'_>,
) -> Scored {
    // JSON that parses is scanned value by value (locations are JSON paths);
    // HTML as source, so placeholders that look like tags are seen; the rest
    // as the text itself (locations are lines).
    let html_hits;
    let hits = if format == Format::Html {
        html_hits = find_placeholders(&body.raw);
        &html_hits
    } else {
        &body.dictionary().placeholders
    };
    for hit in hits {
        let priority = if hit.text.starts_with(['.', '\u{2026}']) {
            Priority::Medium
        } else {
            Priority::High
        };
        builder.suggest(
            priority,
            path,
            &body.location(hit.start),
            &format!("placeholder \"{}\"", hit.text),
        );
    }
    // Whole values that are filler ("N/A", "string"), unless a placeholder
    // literal already covers them ("TBD").
    let filler: Vec<&(usize, String)> = body
        .signals()
        .filler
        .iter()
        .filter(|(start, text)| {
            !hits
                .iter()
                .any(|hit| hit.start >= *start && hit.start <= start + text.len())
        })
        .collect();
    for (start, text) in &filler {
        builder.suggest(
            Priority::High,
            path,
            &body.location(*start),
            &format!("filler value \"{text}\" where content belongs"),
        );
    }
    let refusals = &body.dictionary().refusals;
    for hit in refusals {
        builder.suggest(
            Priority::Critical,
            path,
            &body.location(hit.start),
            &format!(
                "a refusal or a model talking about itself (\"{}\"): do the task instead",
                hit.text
            ),
        );
    }
    let mut kinds: Vec<&str> = hits
        .iter()
        .map(|hit| hit.text.as_str())
        .chain(filler.iter().map(|(_, text)| text.as_str()))
        .chain(refusals.iter().map(|hit| hit.text.as_str()))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.truncate(5);
    let found = hits.len() + filler.len();
    let detail = if found + refusals.len() == 0 {
        "no placeholders, filler values or refusals".to_string()
    } else {
        format!(
            "{} placeholders and filler values (each costs {PLACEHOLDER_PENALTY} points), {} refusals (each costs {REFUSAL_PENALTY}), e.g. {}",
            found,
            refusals.len(),
            kinds.join(", ")
        )
    };
    builder.check(
        "placeholders",
        path,
        10.0 - PLACEHOLDER_PENALTY * found as f64 - REFUSAL_PENALTY * refusals.len() as f64,
        detail,
    )
}

fn truncation_check(
    builder: &mut DimensionBuilder,
    format: Format,
    path: &str,
    body: &Body<'_>,
) -> Scored {
    let signals = truncation_signals(format, body);
    for (location, what) in &signals {
        let priority = if format == Format::Json {
            Priority::Critical
        } else {
            Priority::High
        };
        builder.suggest(priority, path, location, what);
    }
    let detail = if signals.is_empty() {
        "no sign of truncation".to_string()
    } else {
        signals
            .iter()
            .map(|(location, what)| format!("{location}: {what}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    builder.check(
        "truncation",
        path,
        if signals.is_empty() { 10.0 } else { 0.0 },
        detail,
    )
}

/// The signs that an artifact was cut off, as `(location, what)`: D4 scores
/// them, and the caps cap a cut-off artifact on the first one.
pub(crate) fn truncation_signals(format: Format, body: &Body<'_>) -> Vec<(String, String)> {
    let mut signals: Vec<(String, String)> = Vec::new();
    match format {
        Format::Json => {
            if let Some(error) = body.json_error()
                && error.classify() == serde_json::error::Category::Eof
            {
                signals.push((
                    format!("line {}", error.line()),
                    "JSON ends early (truncated)".to_string(),
                ));
            }
        }
        Format::Markdown | Format::Text => {
            if let Some(stats) = &body.markdown {
                if let Some(line) = stats.unclosed_fence_line {
                    signals.push((
                        format!("line {line}"),
                        "code fence never closed (truncated?)".to_string(),
                    ));
                }
                if let Some(line) = stats.ends_mid_sentence_line {
                    signals.push((
                        format!("line {line}"),
                        "text ends mid-sentence (truncated?)".to_string(),
                    ));
                }
            }
        }
        Format::Html => {
            if let Some(stats) = &body.html {
                let last_line = body.line_at(body.raw.len());
                if stats.ends_inside_tag {
                    signals.push((
                        last_line.clone(),
                        "ends inside a tag (truncated?)".to_string(),
                    ));
                }
                for tag in &stats.unclosed {
                    signals.push((
                        last_line.clone(),
                        format!("<{tag}> never closed (truncated?)"),
                    ));
                }
            }
        }
    }
    signals
}

fn structure_check(
    builder: &mut DimensionBuilder,
    format: Format,
    path: &str,
    body: &Body<'_>,
) -> Scored {
    let mut score = 10.0;
    let mut notes = Vec::new();
    let is_long = body.words > LONG_TEXT_WORDS;
    match format {
        Format::Json => {
            if let Some(prose) = &body.json_prose {
                let long: Vec<usize> = prose
                    .string_word_counts
                    .iter()
                    .enumerate()
                    .filter(|(_, words)| **words > MAX_JSON_STRING_WORDS)
                    .map(|(index, _)| index)
                    .collect();
                for &index in long.iter().take(4) {
                    let words = prose.string_word_counts[index];
                    let what = format!(
                        "string of {words} words (limit {MAX_JSON_STRING_WORDS}); split it into fields or items"
                    );
                    builder.suggest(Priority::Low, path, prose.segment_path(index), &what);
                }
                score -= (long.len().min(4)) as f64;
                notes.push(format!(
                    "{} string values over {MAX_JSON_STRING_WORDS} words",
                    long.len()
                ));
            }
        }
        Format::Markdown | Format::Text => {
            let stats = body.markdown.clone().unwrap_or_default();
            if is_long && stats.headings == 0 {
                score -= 4.0;
                builder.suggest(
                    Priority::Medium,
                    path,
                    "",
                    &format!("{} words without a heading", body.words),
                );
            }
            if is_long && stats.list_items == 0 {
                score -= 2.0;
                builder.suggest(
                    Priority::Low,
                    path,
                    "",
                    &format!("{} words without a list", body.words),
                );
            }
            let long_sections: Vec<_> = stats
                .sections
                .iter()
                .filter(|span| span.words > MAX_SECTION_WORDS)
                .collect();
            for span in long_sections.iter().take(3) {
                let what = format!(
                    "section of {} words without a heading (limit {MAX_SECTION_WORDS})",
                    span.words
                );
                builder.suggest(Priority::Low, path, &format!("line {}", span.line), &what);
            }
            score -= long_sections.len().min(3) as f64;
            let long_paragraphs: Vec<_> = stats
                .paragraphs
                .iter()
                .filter(|span| span.words > MAX_PARAGRAPH_WORDS)
                .collect();
            for span in long_paragraphs.iter().take(4) {
                let what = format!(
                    "paragraph of {} words (limit {MAX_PARAGRAPH_WORDS})",
                    span.words
                );
                builder.suggest(Priority::Low, path, &format!("line {}", span.line), &what);
            }
            score -= 0.5 * long_paragraphs.len().min(4) as f64;
            notes.push(format!(
                "{} words, {} headings, {} list items, {} sections over {MAX_SECTION_WORDS} words, {} paragraphs over {MAX_PARAGRAPH_WORDS} words",
                body.words,
                stats.headings,
                stats.list_items,
                long_sections.len(),
                long_paragraphs.len()
            ));
        }
        Format::Html => {
            let (headings, list_items) = body
                .html
                .as_ref()
                .map_or((0, 0), |html| (html.headings, html.list_items));
            if is_long && headings == 0 {
                score -= 4.0;
                builder.suggest(
                    Priority::Medium,
                    path,
                    "",
                    &format!("{} words without a heading element", body.words),
                );
            }
            if is_long && list_items == 0 {
                score -= 2.0;
                builder.suggest(
                    Priority::Low,
                    path,
                    "",
                    &format!("{} words without a list", body.words),
                );
            }
            notes.push(format!(
                "{} words, {headings} headings, {list_items} list items",
                body.words
            ));
        }
    }
    builder.check("structure", path, score, notes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_in_json_are_located_by_path() {
        let json =
            r#"{"frameworks": [{"name": "{{framework_name}}", "steps": ["TODO", "Ask twice"]}]}"#;
        let (dimension, suggestions) = audit(&[Document::new(
            "k",
            "frameworks.json",
            Format::Json,
            Some(json.as_bytes()),
        )]);
        let messages: Vec<_> = suggestions.iter().map(|s| s.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "frameworks.json $.frameworks[0].name: placeholder \"{{framework_name}}\"",
                "frameworks.json $.frameworks[0].steps[0]: placeholder \"TODO\"",
            ]
        );
        assert!(dimension.score.unwrap() < 10.0);
    }

    #[test]
    fn truncated_markdown_is_flagged_with_its_line() {
        let text = "# Plan\n\nOpen with the number and wait seven seconds before you say anything else, because the";
        let (dimension, suggestions) = audit(&[Document::new(
            "k",
            "out.md",
            Format::Markdown,
            Some(text.as_bytes()),
        )]);
        assert_eq!(
            suggestions[0].message,
            "out.md line 3: text ends mid-sentence (truncated?)"
        );
        assert!(dimension.score.unwrap() <= 6.0);
    }
}
