//! D5 second-order effects: does the output build on what the block was given?
//!
//! A block that ignores its inputs can still produce fluent, specific text,
//! so D1–D4 cannot see it; downstream, the pipeline then drifts away from its
//! source material. D5 takes the distinctive terms of each upstream artifact
//! (frequent words of 5+ letters outside a stopword list, proper nouns,
//! multi-digit numbers, JSON keys once each) and the names and ids it defines,
//! and measures how many of them reappear in the block's output.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dimension::DimensionBuilder;
use crate::document::{Body, Document};
use crate::json_shape::names_and_ids;
use crate::patterns::is_stopword;
use crate::score::{percent, ratio_score};
use crate::term_search::found_as_words;
use crate::text::sentences_with_words;
use crate::{Dimension, Format, Priority, Suggestion};

const NAME: &str = "d5";
/// Distinctive terms taken from each upstream artifact.
const TOP_TERMS: usize = 40;
/// Names and ids taken from each upstream artifact.
const TOP_NAMES: usize = 40;
/// Share of upstream terms (and names) found in the output that earns full marks.
const COVERAGE_TARGET: f64 = 0.5;
/// Longer "words" are identifiers, hashes or URLs, not vocabulary.
const MAX_TERM_CHARS: usize = 40;
/// Below this share of terms, the input counts as ignored (high priority).
const IGNORED_BELOW: f64 = 0.2;

pub fn audit(outputs: &[Document<'_>], upstream: &[Document<'_>]) -> (Dimension, Vec<Suggestion>) {
    let mut builder = DimensionBuilder::new(NAME);
    if upstream.is_empty() {
        builder.not_applicable(
            "upstream",
            "none",
            "no upstream inputs: nothing to consume, so n/a".to_string(),
        );
        return builder.finish();
    }
    let output_paths: Vec<&str> = outputs.iter().map(|document| document.path).collect();
    let output_label = output_paths.join(", ");
    let pieces = output_pieces(outputs);
    if pieces.is_empty() {
        let nothing = builder.check(
            "upstream",
            &output_label,
            0.0,
            "no output to look for upstream terms in".to_string(),
        );
        builder.unit_of(nothing);
        return builder.finish();
    }

    let sources: Vec<(&str, Vec<String>, Vec<String>)> = upstream
        .iter()
        .filter_map(|document| {
            let body = document.body.as_ref()?;
            Some((
                document.path,
                distinctive_terms(body),
                names(document.format, body),
            ))
        })
        .collect();

    // Every term and name of every upstream input, looked for in one pass over the output.
    let mut patterns: BTreeMap<String, usize> = BTreeMap::new();
    for (_, terms, names) in &sources {
        for pattern in terms
            .iter()
            .cloned()
            .chain(names.iter().flat_map(|name| name_variants(name)))
        {
            let next_id = patterns.len();
            patterns.entry(pattern).or_insert(next_id);
        }
    }
    let mut by_id: Vec<&str> = vec![""; patterns.len()];
    for (pattern, id) in &patterns {
        by_id[*id] = pattern;
    }
    let found = found_as_words(&by_id, &pieces);
    let is_found = |pattern: &str| patterns.get(pattern).is_some_and(|id| found[*id]);

    for (label, terms, names) in &sources {
        if terms.is_empty() && names.is_empty() {
            builder.not_applicable(
                "upstream_terms",
                label,
                "no distinctive terms in this input; n/a".to_string(),
            );
            continue;
        }
        let used: Vec<&String> = terms.iter().filter(|term| is_found(term)).collect();
        let unused: Vec<&String> = terms.iter().filter(|term| !is_found(term)).collect();
        let coverage = if terms.is_empty() {
            1.0
        } else {
            used.len() as f64 / terms.len() as f64
        };
        let mut detail = format!(
            "{} of {} distinctive terms used ({}; full marks at {})",
            used.len(),
            terms.len(),
            percent(coverage),
            percent(COVERAGE_TARGET)
        );
        if !unused.is_empty() {
            detail.push_str(&format!("; unused e.g. {}", quoted(unused.iter().take(5))));
        }
        let terms_score = builder.check(
            "upstream_terms",
            label,
            ratio_score(coverage, COVERAGE_TARGET),
            detail,
        );
        if coverage < COVERAGE_TARGET {
            let priority = if coverage < IGNORED_BELOW {
                Priority::High
            } else {
                Priority::Medium
            };
            let what = if used.is_empty() {
                format!(
                    "does not use anything from upstream {label} (0 of {} distinctive terms)",
                    terms.len()
                )
            } else {
                format!(
                    "uses little from upstream {label} ({} of {} distinctive terms; unused e.g. {})",
                    used.len(),
                    terms.len(),
                    quoted(unused.iter().take(5))
                )
            };
            builder.suggest(priority, &output_label, "", &what);
        }

        if names.is_empty() {
            builder.unit(&[(terms_score, 1.0)]);
            continue;
        }
        let referenced: Vec<&String> = names
            .iter()
            .filter(|name| name_variants(name).iter().any(|variant| is_found(variant)))
            .collect();
        let unreferenced: Vec<&String> = names
            .iter()
            .filter(|name| !referenced.contains(name))
            .collect();
        let name_coverage = referenced.len() as f64 / names.len() as f64;
        let mut detail = format!(
            "{} of {} names/ids referenced ({})",
            referenced.len(),
            names.len(),
            percent(name_coverage)
        );
        if !unreferenced.is_empty() {
            detail.push_str(&format!(
                "; not referenced e.g. {}",
                quoted(unreferenced.iter().take(3))
            ));
        }
        let names_score = builder.check(
            "upstream_names",
            label,
            ratio_score(name_coverage, COVERAGE_TARGET),
            detail,
        );
        if name_coverage < COVERAGE_TARGET {
            let what = format!(
                "refers to {} of {} names/ids from upstream {label} (not referenced e.g. {})",
                referenced.len(),
                names.len(),
                quoted(unreferenced.iter().take(3))
            );
            builder.suggest(Priority::Medium, &output_label, "", &what);
        }
        builder.unit(&[(terms_score, 0.7), (names_score, 0.3)]);
    }
    builder.finish()
}

/// The texts of `outputs` upstream terms are looked for in: each one's
/// prose and, for JSON, its keys and numbers.
fn output_pieces<'d>(outputs: &'d [Document<'_>]) -> Vec<&'d str> {
    outputs
        .iter()
        .filter_map(|document| document.body.as_ref())
        .filter(|body| !body.is_blank())
        .flat_map(|body| {
            [
                body.prose(),
                body.json_prose
                    .as_ref()
                    .map_or("", |prose| &prose.keys_and_numbers),
            ]
        })
        .filter(|piece| !piece.is_empty())
        .collect()
}

/// For each upstream document, its distinctive terms the outputs use and
/// those they do not (D5's term check, as lists).
pub(crate) fn term_use(
    outputs: &[Document<'_>],
    upstream: &[Document<'_>],
) -> Vec<(Vec<String>, Vec<String>)> {
    let pieces = output_pieces(outputs);
    upstream
        .iter()
        .map(|document| {
            let terms = document
                .body
                .as_ref()
                .map(distinctive_terms)
                .unwrap_or_default();
            let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
            let found = if pieces.is_empty() {
                vec![false; refs.len()]
            } else {
                found_as_words(&refs, &pieces)
            };
            let (mut used, mut unused) = (Vec::new(), Vec::new());
            for (term, hit) in terms.into_iter().zip(found) {
                if hit {
                    used.push(term)
                } else {
                    unused.push(term)
                }
            }
            (used, unused)
        })
        .collect()
}

/// The [`TOP_TERMS`] most frequent distinctive terms, lowercase; ties in alphabetical order.
pub fn distinctive_terms(body: &Body<'_>) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut add = |lower: String| *counts.entry(lower).or_default() += 1;
    sentences_with_words(body.prose(), |_, token, first_in_sentence| {
        let mut first = first_in_sentence;
        for_each_piece(token, |piece| {
            if let Some(lower) = distinctive(piece, first) {
                add(lower);
            }
            first = false;
        });
    });
    if let Some(prose) = &body.json_prose {
        // Keys count once each, so a key repeated in every array element does
        // not outweigh the content; numbers count every time.
        let mut seen_lines = BTreeSet::new();
        for line in prose.keys_and_numbers.lines() {
            let is_number =
                line.starts_with(|character: char| character.is_ascii_digit() || character == '-');
            if is_number || seen_lines.insert(line) {
                for_each_piece(line, |piece| {
                    if let Some(lower) = distinctive(piece, true) {
                        add(lower);
                    }
                });
            }
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|(left_term, left_count), (right_term, right_count)| {
        right_count
            .cmp(left_count)
            .then_with(|| left_term.cmp(right_term))
    });
    ranked
        .into_iter()
        .take(TOP_TERMS)
        .map(|(term, _)| term)
        .collect()
}

/// The piece lowercased when it is distinctive: a word of 5+ letters that is
/// not a stopword, a proper noun of 3+ letters that does not start a
/// sentence, or a number of 2+ digits.
fn distinctive(piece: &str, first_in_sentence: bool) -> Option<String> {
    let characters = piece.chars().count();
    if piece.starts_with(|character: char| character.is_ascii_digit()) {
        let is_number = (2..=MAX_TERM_CHARS).contains(&characters)
            && piece.bytes().filter(u8::is_ascii_digit).count() >= 2
            && piece
                .bytes()
                .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b','));
        return is_number.then(|| piece.to_string());
    }
    // Short words that start a sentence are never distinctive: no lowercasing needed.
    if !(3..=MAX_TERM_CHARS).contains(&characters)
        || (characters < 5 && (first_in_sentence || !piece.starts_with(char::is_uppercase)))
    {
        return None;
    }
    let lower = piece.to_lowercase();
    (!is_stopword(&lower)).then_some(lower)
}

/// Calls `visit` with each alphanumeric run of `token`; digits joined by `.`
/// or `,` stay one piece (`38,400`, `3.5`).
fn for_each_piece(token: &str, mut visit: impl FnMut(&str)) {
    let mut start: Option<usize> = None;
    let mut previous = None;
    let mut characters = token.char_indices().peekable();
    while let Some((index, character)) = characters.next() {
        let joins_digits = matches!(character, '.' | ',')
            && previous.is_some_and(|previous: char| previous.is_ascii_digit())
            && characters
                .peek()
                .is_some_and(|(_, next)| next.is_ascii_digit());
        previous = Some(character);
        if character.is_alphanumeric() || (joins_digits && start.is_some()) {
            start.get_or_insert(index);
        } else if let Some(begin) = start.take() {
            visit(&token[begin..index]);
        }
    }
    if let Some(begin) = start {
        visit(&token[begin..]);
    }
}

/// Names and ids an upstream artifact defines: name-like JSON values, or Markdown headings.
fn names(format: Format, body: &Body<'_>) -> Vec<String> {
    let mut names = match (format, body.json_value()) {
        (Format::Json, Some(value)) => names_and_ids(value),
        (Format::Markdown, _) => markdown_headings(&body.raw),
        _ => Vec::new(),
    };
    names.retain(|name| name.chars().any(char::is_alphanumeric));
    names.truncate(TOP_NAMES);
    names
}

fn markdown_headings(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    text.lines()
        .filter_map(|line| {
            let trimmed = line.trim_start();
            let title = trimmed
                .strip_prefix('#')?
                .trim_start_matches('#')
                .trim()
                .trim_end_matches('#')
                .trim();
            let length = title.chars().count();
            ((3..=80).contains(&length) && seen.insert(title.to_lowercase()))
                .then(|| title.to_string())
        })
        .collect()
}

/// The patterns that count as a reference to `name`: itself, lowercase, and
/// for ids like `anchor-ladder` also `anchor ladder`.
fn name_variants(name: &str) -> Vec<String> {
    let lower = name.to_lowercase();
    let spaced = lower.replace(['-', '_'], " ");
    if spaced == lower {
        vec![lower]
    } else {
        vec![lower, spaced]
    }
}

fn quoted<'s>(items: impl Iterator<Item = &'s &'s String>) -> String {
    items
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc<'a>(path: &'a str, format: Format, text: &'a str) -> Document<'a> {
        Document::new(path, path, format, Some(text.as_bytes()))
    }

    #[test]
    fn pieces_keep_numbers_whole() {
        let mut pieces = Vec::new();
        for_each_piece("($38,400/year,", |piece| pieces.push(piece.to_string()));
        assert_eq!(pieces, vec!["38,400", "year"]);
    }

    #[test]
    fn terms_are_frequent_distinctive_and_deterministic() {
        let upstream = "Marisol Vega teaches the anchor ladder. The anchor ladder starts 15% high. Vega says wait.";
        let document = doc("up", Format::Markdown, upstream);
        let terms = distinctive_terms(document.body.as_ref().expect("body"));
        assert_eq!(
            terms,
            vec!["anchor", "ladder", "15", "marisol", "teaches", "vega"]
        );
    }

    #[test]
    fn ignoring_the_input_scores_low_and_names_it() {
        let upstream = [doc(
            "expert-framework-creator.expert-framework",
            Format::Markdown,
            "# Anchor Ladder\nMarisol Vega opens negotiations 15% above target and pauses seven seconds. Calibrated silence follows every counteroffer.",
        )];
        let unrelated = [doc(
            "soul.json",
            Format::Text,
            "Sourdough needs a starter fed twice daily at 24 degrees for crumb structure.",
        )];
        let consuming = [doc(
            "soul.json",
            Format::Text,
            "Vega's anchor ladder: open 15% above target, then calibrated silence after each counteroffer.",
        )];
        let (low, suggestions) = audit(&unrelated, &upstream);
        let (high, _) = audit(&consuming, &upstream);
        assert!(low.score.unwrap() < 4.0, "{low:?}");
        assert!(high.score.unwrap() > 7.0, "{high:?}");
        assert_eq!(suggestions[0].priority, Priority::High);
        assert!(suggestions[0].message.starts_with("soul.json: does not use anything from upstream expert-framework-creator.expert-framework (0 of"));
    }

    #[test]
    fn no_upstream_is_not_applicable() {
        let (dimension, suggestions) = audit(&[doc("a.md", Format::Markdown, "x")], &[]);
        assert_eq!(dimension.score, None);
        assert_eq!(dimension.checks[0].score, None);
        assert_eq!(
            dimension.checks[0].detail,
            "no upstream inputs: nothing to consume, so n/a"
        );
        assert!(suggestions.is_empty());
    }
}
