//! D2 specificity: does the text say something only this subject would say?
//!
//! Filler reads fluently, so fluency is not measured. Instead each sentence is
//! sorted: "generic" when it uses a stock phrase and carries no concrete
//! detail, "specific" when it carries one (a number, a proper noun that is not
//! the first word, a quotation, the subject's name). The share of generic
//! sentences, the share of specific ones and how often the subject is named
//! make the score.

use crate::caps::{
    Cap, GENERIC_CAP, GENERIC_CAP_FROM, GENERIC_CAP_MIN_SENTENCES, GENERIC_CAP_SPECIFIC_BELOW,
};
use crate::content::sample;
use crate::dimension::DimensionBuilder;
use crate::dimension::Scored;
use crate::document::{Body, Document};
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
/// Share of token characters that read as words: 0 at or below the floor,
/// full marks from the target.
const NOISE_FLOOR: f64 = 0.5;
const LANGUAGE_TARGET: f64 = 0.9;
/// Share of function words that earns full marks, judged from this many words.
const FUNCTION_TARGET: f64 = 0.15;
const FUNCTION_MIN_WORDS: usize = 50;
/// Repetition is judged from this many sentences; this share repeats for free.
const MIN_SEGMENTS: usize = 4;
const REPEAT_ALLOWED: f64 = 0.1;

/// D2, and a cap for each artifact whose prose is mostly stock phrases
/// with no detail (see [`crate::caps::GENERIC_CAP`]).
pub fn audit(
    documents: &[Document<'_>],
    subject: Option<&str>,
) -> (Dimension, Vec<Suggestion>, Vec<Cap>) {
    let mut caps = Vec::new();
    let mut builder = DimensionBuilder::new(NAME);
    let subject = subject.and_then(SubjectMatcher::new);
    // Artifacts with text but no prose (a URL, ids, numbers) are not judged;
    // if that is all there is, D2 is n/a.
    for document in documents {
        let path = document.path;
        let Some(body) = &document.body else { continue };
        if body.is_blank() || body.signals().noop {
            let what = if body.is_blank() {
                "no text"
            } else {
                "only what the no-op builtin writes"
            };
            let nothing = builder.check("generic_phrases", path, 0.0, what.to_string());
            builder.unit_of(nothing);
            continue;
        }
        let counts = count_sentences(body, subject.as_ref());
        let Counts {
            words,
            sampled,
            judged,
            generic,
            specific,
            ref mentions,
            ref generic_hits,
        } = counts;
        for hit in generic_hits {
            builder.suggest(
                Priority::Medium,
                path,
                &body.location(hit.start),
                &format!("generic phrase \"{}\"", hit.phrase),
            );
        }
        let phrases = &body.dictionary().generic;

        if judged == 0 {
            builder.not_applicable(
                "generic_phrases",
                path,
                format!(
                    "no sentence of {MIN_SENTENCE_WORDS}+ words ({} words): values, not prose; n/a",
                    body.words
                ),
            );
            continue;
        }

        let generic_share = generic as f64 / judged as f64;
        let specific_share = specific as f64 / judged as f64;
        if judged >= GENERIC_CAP_MIN_SENTENCES
            && generic_share >= GENERIC_CAP_FROM
            && specific_share < GENERIC_CAP_SPECIFIC_BELOW
        {
            caps.push(Cap {
                artifact: path.to_string(),
                score: GENERIC_CAP,
                reason: format!(
                    "generic: {generic} of {judged} sentences are stock phrases and only {specific} carry a detail"
                ),
            });
        }
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

        let language = language_check(&mut builder, path, body);
        let redundancy = redundancy_check(&mut builder, path, body);
        match &subject {
            Some(matcher) => {
                let density = if words == 0 {
                    0.0
                } else {
                    mentions.len() as f64 * 1000.0 / words as f64
                };
                let subject_score = builder.check(
                    "subject_density",
                    path,
                    ratio_score(density, SUBJECT_DENSITY_TARGET),
                    format!(
                        "\"{}\" named {} in {} words ({density:.1} per 1000; full marks at {SUBJECT_DENSITY_TARGET})",
                        matcher.name,
                        if mentions.len() == 1 { "once".to_string() } else { format!("{} times", mentions.len()) },
                        if sampled { format!("{words} sampled") } else { words.to_string() }
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
                let mut checks = vec![
                    (generic_score, 0.3),
                    (specific_score, 0.2),
                    (subject_score, 0.2),
                    (language, 0.15),
                ];
                checks.extend(redundancy.map(|scored| (scored, 0.15)));
                builder.unit(&checks);
            }
            None => {
                let mut checks = vec![
                    (generic_score, 0.4),
                    (specific_score, 0.3),
                    (language, 0.15),
                ];
                checks.extend(redundancy.map(|scored| (scored, 0.15)));
                builder.unit(&checks);
            }
        }
    }
    let (dimension, suggestions) = builder.finish();
    (dimension, suggestions, caps)
}

/// Share of token characters that read as words (numbers count half) and,
/// over enough words, the share of function words real sentences always have.
fn language_check(builder: &mut DimensionBuilder, path: &str, body: &Body<'_>) -> Scored {
    let signals = body.signals();
    let share = signals.language_share();
    let language_score =
        10.0 * ((share - NOISE_FLOOR) / (LANGUAGE_TARGET - NOISE_FLOOR)).clamp(0.0, 1.0);
    let function_share = signals.function_share(FUNCTION_MIN_WORDS);
    let function_score = function_share.map_or(10.0, |share| ratio_score(share, FUNCTION_TARGET));
    let sampled = signals
        .sampled_bytes
        .map(|bytes| format!("; estimated from a {} KB sample", bytes / 1024))
        .unwrap_or_default();
    let detail = format!(
        "{} of token characters read as words (full marks at {}); {}{sampled}",
        percent(share),
        percent(LANGUAGE_TARGET),
        match function_share {
            Some(fraction) => format!(
                "{} of {} words are function words (full marks at {})",
                percent(fraction),
                signals.words,
                percent(FUNCTION_TARGET)
            ),
            None => format!("function words not judged under {FUNCTION_MIN_WORDS} words"),
        }
    );
    if language_score < 10.0 {
        let priority = if share < crate::caps::NOISE_BELOW {
            Priority::Critical
        } else {
            Priority::High
        };
        builder.suggest(
            priority,
            path,
            "",
            &format!(
                "{} of its characters are not words (base64, hex, ids or random strings); write prose",
                percent(1.0 - share)
            ),
        );
    } else if function_score < 10.0 {
        builder.suggest(
            Priority::High,
            path,
            "",
            &format!(
                "only {} of {} words are function words (the, of, and…): words strung together, not sentences",
                signals.function_words, signals.words
            ),
        );
    }
    builder.check("language", path, language_score.min(function_score), detail)
}

/// Sentences (JSON: string values) that repeat an earlier one say nothing new.
fn redundancy_check(builder: &mut DimensionBuilder, path: &str, body: &Body<'_>) -> Option<Scored> {
    let signals = body.signals();
    let Some(repeated) = signals.repeated_share(MIN_SEGMENTS) else {
        builder.not_applicable(
            "redundancy",
            path,
            format!(
                "{} sentences or values of 4+ words; repetition judged from {MIN_SEGMENTS}",
                signals.segments
            ),
        );
        return None;
    };
    let score = 10.0
        * (1.0 - (repeated - REPEAT_ALLOWED) / (crate::caps::REPEATED_FROM - REPEAT_ALLOWED))
            .clamp(0.0, 1.0);
    let repeats = signals.segments - signals.distinct_segments;
    if repeated > REPEAT_ALLOWED {
        let priority = if repeated >= crate::caps::REPEATED_FROM {
            Priority::Critical
        } else {
            Priority::Medium
        };
        builder.suggest(
            priority,
            path,
            "",
            &format!(
                "{repeats} of {} sentences or values repeat earlier ones; say each thing once",
                signals.segments
            ),
        );
    }
    Some(builder.check(
        "redundancy",
        path,
        score,
        format!(
            "{repeats} of {} sentences or values repeat earlier ones ({}; free up to {}, 0 from {})",
            signals.segments,
            percent(repeated),
            percent(REPEAT_ALLOWED),
            percent(crate::caps::REPEATED_FROM)
        ),
    ))
}

/// What D2 counts in one artifact's prose: words read, sentences judged
/// (3+ words), generic ones (a stock phrase and no detail) with the phrase
/// each starts with, specific ones (a number, a proper noun, a quotation or
/// the subject's name), and where the subject is named. Prose over 256 KB
/// is read in evenly spaced windows (see `content::sample`): counts are of
/// the sample, and `sampled` says so.
pub(crate) struct Counts<'b> {
    pub words: usize,
    pub sampled: bool,
    pub judged: usize,
    pub generic: usize,
    pub specific: usize,
    pub mentions: Vec<usize>,
    pub generic_hits: Vec<&'b crate::patterns::PhraseHit>,
}

pub(crate) fn count_sentences<'b>(
    body: &'b Body<'_>,
    subject: Option<&SubjectMatcher>,
) -> Counts<'b> {
    let mut mentions = Vec::new();
    let prose = body.prose();
    let ranges = sample(prose);
    let mut words_read = 0usize;
    let mut all_sentences = Vec::new();
    for range in &ranges {
        let base = range.start;
        let mut previous_part = None;
        let found = sentences_with_words(&prose[range.clone()], |offset, token, _| {
            words_read += 1;
            if let Some(matcher) = subject {
                matcher.observe(base + offset, token, &mut previous_part, &mut mentions);
            }
        });
        all_sentences.extend(found.into_iter().map(|sentence| Sentence {
            start: sentence.start + base,
            end: sentence.end + base,
            ..sentence
        }));
    }
    let sampled = ranges.len() > 1;
    let words = if sampled { words_read } else { body.words };
    let phrases = &body.dictionary().generic;
    let (mut judged, mut generic, mut specific) = (0usize, 0usize, 0usize);
    let mut generic_hits = Vec::new();
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
            generic_hits.push(hit);
        }
    }
    Counts {
        words,
        sampled,
        judged,
        generic,
        specific,
        mentions,
        generic_hits,
    }
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
pub(crate) struct SubjectMatcher {
    name: String,
    parts: Vec<String>,
}

impl SubjectMatcher {
    pub(crate) fn new(subject: &str) -> Option<SubjectMatcher> {
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
        let (dimension, suggestions, _) = audit(
            &[Document::new(
                "k",
                "voice.md",
                Format::Markdown,
                Some(text.as_bytes()),
            )],
            subject,
        );
        (dimension, suggestions)
    }

    #[test]
    fn generic_sentences_lose_specific_ones_win() {
        let generic = "Unlock your potential with this approach.\nThis is a game-changer for everyone.\nIt will empower you every day.";
        let specific = "Marisol opens 15% above target.\nShe waits 7 seconds before she answers.\nHer client Dana said \"no\" twice.";
        let (generic_dimension, suggestions) = run(generic, Some("Marisol Vega"));
        let (specific_dimension, _) = run(specific, Some("Marisol Vega"));
        assert!(
            generic_dimension.score.unwrap() < 2.0,
            "{generic_dimension:?}"
        );
        assert!(
            specific_dimension.score.unwrap() > 8.0,
            "{specific_dimension:?}"
        );
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
        assert_eq!(dimension.checks[0].score, Some(10.0));
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
