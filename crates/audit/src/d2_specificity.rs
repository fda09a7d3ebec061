//! D2 specificity: does the text say something only this subject would say?
//!
//! Filler reads fluently, so fluency is not measured. Instead each sentence is
//! sorted: "generic" when it uses a stock phrase and carries no concrete
//! detail, "specific" when it carries one (a number, a proper noun that is not
//! the first word, a quotation, the subject's name). The share of generic
//! sentences, the share of specific ones and how often the subject is named
//! make the score.

use crate::dimension::DimensionBuilder;
use crate::document::Document;
use crate::score::{percent, ratio_score};
use crate::text::{Sentence, sentences_with_words};
use crate::{Dimension, Priority, Suggestion};

const NAME: &str = "d2";
/// Sentences shorter than this are labels (`"name": "Anchor Ladder"`), not claims.
const MIN_SENTENCE_WORDS: usize = 3;
/// Each percentage point of generic sentences costs 0.25 points: 40% scores 0.
const GENERIC_PENALTY: f64 = 25.0;
/// Share of specific sentences that earns full marks.
const SPECIFIC_TARGET: f64 = 0.5;
/// Subject mentions per 1000 words that earn full marks.
const SUBJECT_DENSITY_TARGET: f64 = 5.0;

pub fn audit(documents: &[Document<'_>], subject: Option<&str>) -> (Dimension, Vec<Suggestion>) {
    let mut builder = DimensionBuilder::new(NAME);
    let subject = subject.and_then(SubjectMatcher::new);
    // Artifacts with text but no prose (a URL, ids, numbers) are not judged;
    // if that is all there is, D2 has nothing to object to.
    let mut saw_values_only = false;
    for document in documents {
        let path = document.path;
        let Some(body) = &document.body else { continue };
        if body.is_blank() {
            builder.check("generic_phrases", path, 0.0, "no text".to_string());
            builder.unit_score(0.0);
            continue;
        }
        let mut mentions = Vec::new();
        let mut previous_part = None;
        let all_sentences = sentences_with_words(body.prose(), |offset, token, _| {
            if let Some(matcher) = &subject {
                matcher.observe(offset, token, &mut previous_part, &mut mentions);
            }
        });
        let phrases = &body.dictionary().generic;

        let mut judged = 0usize;
        let mut generic = 0usize;
        let mut specific = 0usize;
        let mut phrase_cursor = 0;
        let mut mention_cursor = 0;
        for sentence in &all_sentences {
            let sentence_phrases =
                take_within(phrases, &mut phrase_cursor, sentence, |found| found.start);
            let sentence_mentions =
                take_within(&mentions, &mut mention_cursor, sentence, |start| *start);
            if sentence.words < MIN_SENTENCE_WORDS {
                continue;
            }
            judged += 1;
            let concrete = sentence.has_concrete_detail() || !sentence_mentions.is_empty();
            if concrete {
                specific += 1;
            } else if let Some(hit) = sentence_phrases.first() {
                generic += 1;
                builder.suggest(
                    Priority::Medium,
                    path,
                    &body.location(hit.start),
                    &format!("generic phrase \"{}\"", hit.phrase),
                );
            }
        }

        if judged == 0 {
            saw_values_only = true;
            builder.check(
                "generic_phrases",
                path,
                10.0,
                format!(
                    "no sentence of {MIN_SENTENCE_WORDS}+ words ({} words): a value, not prose; not scored",
                    body.words
                ),
            );
            continue;
        }

        let generic_share = generic as f64 / judged as f64;
        let generic_score = builder.check(
            "generic_phrases",
            path,
            10.0 - GENERIC_PENALTY * generic_share,
            format!(
                "{generic} of {judged} sentences generic ({}); {} stock phrases in all",
                percent(generic_share),
                phrases.len()
            ),
        );

        let specific_share = specific as f64 / judged as f64;
        let specific_score = builder.check(
            "concrete_details",
            path,
            ratio_score(specific_share, SPECIFIC_TARGET),
            format!(
                "{specific} of {judged} sentences carry a number, proper noun, quotation or the subject's name ({}; full marks at {})",
                percent(specific_share),
                percent(SPECIFIC_TARGET)
            ),
        );
        if specific_share < SPECIFIC_TARGET {
            let priority = if specific_share < SPECIFIC_TARGET / 2.0 {
                Priority::Medium
            } else {
                Priority::Low
            };
            builder.suggest(
                priority,
                path,
                "",
                &format!(
                    "only {specific} of {judged} sentences carry a number, name or quotation (target {})",
                    percent(SPECIFIC_TARGET)
                ),
            );
        }

        match &subject {
            Some(matcher) => {
                let density = if body.words == 0 {
                    0.0
                } else {
                    mentions.len() as f64 * 1000.0 / body.words as f64
                };
                let subject_score = builder.check(
                    "subject_density",
                    path,
                    ratio_score(density, SUBJECT_DENSITY_TARGET),
                    format!(
                        "\"{}\" named {} in {} words ({density:.1} per 1000; full marks at {SUBJECT_DENSITY_TARGET})",
                        matcher.name,
                        if mentions.len() == 1 { "once".to_string() } else { format!("{} times", mentions.len()) },
                        body.words
                    ),
                );
                if density < SUBJECT_DENSITY_TARGET {
                    let priority = if mentions.is_empty() {
                        Priority::Medium
                    } else {
                        Priority::Low
                    };
                    let what = format!(
                        "\"{}\" named {density:.1} times per 1000 words (target {SUBJECT_DENSITY_TARGET})",
                        matcher.name
                    );
                    builder.suggest(priority, path, "", &what);
                }
                builder.unit(&[
                    (generic_score, 0.5),
                    (specific_score, 0.3),
                    (subject_score, 0.2),
                ]);
            }
            None => builder.unit(&[(generic_score, 0.6), (specific_score, 0.4)]),
        }
    }
    builder.finish(if saw_values_only { 10.0 } else { 0.0 })
}

/// The items of the sorted `found` list that start inside `sentence`,
/// advancing `cursor` past everything before the sentence's end.
fn take_within<'f, T>(
    found: &'f [T],
    cursor: &mut usize,
    sentence: &Sentence,
    start_of: impl Fn(&T) -> usize,
) -> &'f [T] {
    while *cursor < found.len() && start_of(&found[*cursor]) < sentence.start {
        *cursor += 1;
    }
    let first = *cursor;
    while *cursor < found.len() && start_of(&found[*cursor]) < sentence.end {
        *cursor += 1;
    }
    &found[first..*cursor]
}

/// Recognises the subject's full name or any part of it of 3+ letters
/// ("Marisol Vega", "Marisol", "Vega") word by word, ignoring ASCII case and
/// a possessive `'s`. Matching words in the sentence scan costs a comparison
/// per word instead of another pass over the text.
struct SubjectMatcher {
    name: String,
    parts: Vec<String>,
}

impl SubjectMatcher {
    fn new(subject: &str) -> Option<SubjectMatcher> {
        let name = subject.trim();
        let parts: Vec<String> = name
            .split(|character: char| !character.is_alphanumeric())
            .filter(|part| part.chars().count() >= 3)
            .map(str::to_string)
            .collect();
        (!parts.is_empty()).then(|| SubjectMatcher {
            name: name.to_string(),
            parts,
        })
    }

    /// Records a mention at `offset` when `token` is a part of the name, unless
    /// it continues the full name started by the previous word ("Marisol Vega"
    /// is one mention).
    fn observe(
        &self,
        offset: usize,
        token: &str,
        previous_part: &mut Option<usize>,
        mentions: &mut Vec<usize>,
    ) {
        let word = token.trim_matches(|character: char| !character.is_alphanumeric());
        let word = word
            .strip_suffix("'s")
            .or_else(|| word.strip_suffix("\u{2019}s"))
            .unwrap_or(word);
        let part = self
            .parts
            .iter()
            .position(|part| part.len() == word.len() && part.eq_ignore_ascii_case(word));
        let continues_name =
            matches!((*previous_part, part), (Some(before), Some(now)) if now == before + 1);
        if part.is_some() && !continues_name {
            mentions.push(offset);
        }
        *previous_part = part;
    }

    /// Start offsets of mentions in `text`, in order.
    #[cfg(test)]
    fn find(&self, text: &str) -> Vec<usize> {
        let (mut mentions, mut previous_part) = (Vec::new(), None);
        sentences_with_words(text, |offset, token, _| {
            self.observe(offset, token, &mut previous_part, &mut mentions)
        });
        mentions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn run(text: &str, subject: Option<&str>) -> (Dimension, Vec<Suggestion>) {
        audit(
            &[Document::new(
                "k",
                "voice.md",
                Format::Markdown,
                Some(text.as_bytes()),
            )],
            subject,
        )
    }

    #[test]
    fn generic_sentences_lose_specific_ones_win() {
        let generic = "Unlock your potential with this approach.\nThis is a game-changer for everyone.\nIt will empower you every day.";
        let specific = "Marisol opens 15% above target.\nShe waits 7 seconds before she answers.\nHer client Dana said \"no\" twice.";
        let (generic_dimension, suggestions) = run(generic, Some("Marisol Vega"));
        let (specific_dimension, _) = run(specific, Some("Marisol Vega"));
        assert!(generic_dimension.score < 2.0, "{generic_dimension:?}");
        assert!(specific_dimension.score > 8.0, "{specific_dimension:?}");
        assert_eq!(
            suggestions[0].message,
            "voice.md line 1: generic phrase \"unlock your potential\""
        );
    }

    #[test]
    fn a_concrete_detail_redeems_a_stock_phrase() {
        let (dimension, suggestions) =
            run("A game-changer: 3 calls, 40 minutes each, no slides.", None);
        assert!(
            suggestions
                .iter()
                .all(|s| !s.message.contains("generic phrase"))
        );
        assert_eq!(dimension.checks[0].score, 10.0);
    }

    #[test]
    fn subject_matches_whole_words_only() {
        let matcher = SubjectMatcher::new("Marisol Vega").expect("a name");
        assert_eq!(
            matcher.find("Marisol Vega and vega and Vegas and MARISOL and Vega's"),
            vec![0, 17, 36, 48]
        );
    }
}
