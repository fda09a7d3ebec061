//! Caps: the most an artifact can score when a content signal shows it is junk.
//!
//! A weighted mean of five dimensions lets clean form buy back what missing
//! content lost: base64 noise parses, has no placeholders and is never cut
//! off, so it used to score 5.5. Here each junk signal sets a ceiling on the
//! artifact's share of the composite, however clean the rest is. The block's
//! ceiling is the mean over its artifacts (10 for an artifact with none), so
//! one junk artifact of three pulls the block down without zeroing it.
//!
//! Every threshold is documented in `docs/audit.md` (Caps).

use serde_json::Value;

use crate::Format;
use crate::d4_auditability::truncation_signals;
use crate::document::Document;
use crate::golden::Golden;
use crate::text::count_words;

/// What the no-op builtin writes.
pub const NOOP_CAP: f64 = 0.5;
/// No word at all (only markup or symbols).
pub const NO_TEXT_CAP: f64 = 1.0;
/// Lorem ipsum.
pub const LOREM_CAP: f64 = 1.0;
/// Mostly tokens that are not words (base64, hex, random strings).
pub const NOISE_CAP: f64 = 1.5;
/// A refusal or a model talking about itself where the content should be.
pub const REFUSAL_CAP: f64 = 1.5;
/// A refusal inside otherwise real content.
pub const PARTIAL_REFUSAL_CAP: f64 = 5.0;
/// Mostly filler values.
pub const FILLER_CAP: f64 = 2.0;
/// Placeholders everywhere: an unfilled template.
pub const TEMPLATE_CAP: f64 = 2.0;
/// Real words in no sentence: word salad.
pub const SALAD_CAP: f64 = 2.5;
/// Most sentences repeat earlier ones.
pub const REPETITION_CAP: f64 = 2.5;
/// Not the declared format: HTML without a tag, JSON that is a bare scalar.
pub const FORMAT_CAP: f64 = 2.5;
/// Far less content than the golden example or the minimums.
pub const FLOOR_CAP: f64 = 3.0;
/// Much less content than the golden example: thin.
pub const THIN_CAP: f64 = 6.5;
/// Partly filler: some values or lines are filler.
pub const PART_FILLER_CAP: f64 = 6.0;
/// Cut off: ends mid-sentence, inside a tag or a code fence, or JSON ends early.
pub const TRUNCATED_CAP: f64 = 6.0;
/// Mostly stock phrases with no detail (set by D2, which classifies sentences).
pub const GENERIC_CAP: f64 = 6.0;
pub const GENERIC_CAP_FROM: f64 = 0.25;
pub const GENERIC_CAP_SPECIFIC_BELOW: f64 = 0.25;
pub const GENERIC_CAP_MIN_SENTENCES: usize = 10;
/// Three or more placeholders in otherwise real content: unfinished.
pub const UNFINISHED_CAP: f64 = 6.0;

/// Below this share of token characters that read as language, it is noise.
pub const NOISE_BELOW: f64 = 0.6;
/// Token characters from which noise is judged (a short id is not noise).
pub const NOISE_MIN_CHARS: usize = 120;
/// Below this share of function words (over at least [`SALAD_MIN_WORDS`]), it is salad.
pub const SALAD_BELOW: f64 = 0.08;
pub const SALAD_MIN_WORDS: usize = 80;
/// From this share of repeated segments (over at least [`REPEAT_MIN_SEGMENTS`]), it is repetition.
pub const REPEATED_FROM: f64 = 0.5;
pub const REPEAT_MIN_SEGMENTS: usize = 6;
/// From this share of filler values (over at least [`FILLER_MIN_UNITS`]), it is filler.
pub const FILLER_FROM: f64 = 0.5;
/// From this share, it is partly filler.
pub const PART_FILLER_FROM: f64 = 0.15;
pub const FILLER_MIN_UNITS: usize = 3;
/// From this share of lorem-ipsum words (over at least 10 words), it is lorem ipsum.
pub const LOREM_FROM: f64 = 0.2;
/// A refusal in text shorter than this many words is the whole answer.
pub const REFUSAL_WHOLE_BELOW_WORDS: usize = 150;
/// Placeholders per 100 words from which the text is an unfilled template.
pub const TEMPLATE_DENSITY: f64 = 2.0;
pub const UNFINISHED_PLACEHOLDERS: usize = 3;
/// Below this share of the golden example's words, content is far too thin.
pub const FLOOR_GOLDEN_SHARE: f64 = 0.1;
/// Below this share, it is thin.
pub const THIN_GOLDEN_SHARE: f64 = 0.35;
/// Without a golden example: fewer words than this in a document format.
pub const FLOOR_DOCUMENT_WORDS: usize = 30;
/// Without a golden example: fewer words than this (half of D1's minimum of
/// 150) in Markdown or HTML is thin.
pub const THIN_DOCUMENT_WORDS: usize = 75;
/// What thin work without a golden example can score.
pub const THIN_DOCUMENT_CAP: f64 = 7.0;
pub const FLOOR_TEXT_WORDS: usize = 15;
/// Without a golden example: fewer non-filler values than this in JSON.
pub const FLOOR_JSON_VALUES: usize = 3;

/// One artifact's cap and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Cap {
    /// The artifact path it caps.
    pub artifact: String,
    pub score: f64,
    pub reason: String,
}

/// The lowest cap any junk signal sets on `document`, or `None` when it
/// looks like work. Missing and blank artifacts have no cap: D1 and D3
/// already score them 0.
pub fn artifact_cap(document: &Document<'_>, golden: Option<&Golden<'_>>) -> Option<Cap> {
    let body = document.body.as_ref()?;
    if body.is_blank() {
        return None;
    }
    let signals = body.signals();
    let mut caps: Vec<Cap> = Vec::new();
    let mut cap = |score: f64, reason: String| {
        caps.push(Cap {
            artifact: document.path.to_string(),
            score,
            reason,
        })
    };

    if signals.noop {
        cap(
            NOOP_CAP,
            "is what the no-op builtin writes, not work".to_string(),
        );
    }
    let token_chars = signals.word_chars + signals.number_chars + signals.noise_chars;
    if body.words == 0 && document.format != Format::Json {
        cap(
            NO_TEXT_CAP,
            "has no words, only markup or symbols".to_string(),
        );
    }
    let language = signals.language_share();
    if token_chars >= NOISE_MIN_CHARS && language < NOISE_BELOW {
        cap(
            NOISE_CAP,
            format!(
                "{} of its characters are not words (noise: base64, hex or random strings)",
                crate::score::percent(1.0 - language)
            ),
        );
    }
    if signals.words >= 10 && signals.lorem_words as f64 >= LOREM_FROM * signals.words as f64 {
        cap(
            LOREM_CAP,
            format!(
                "{} of {} words are lorem ipsum",
                signals.lorem_words, signals.words
            ),
        );
    }
    let refusals = &body.dictionary().refusals;
    if let Some(first) = refusals.first() {
        if body.words < REFUSAL_WHOLE_BELOW_WORDS || first.start < 300 {
            cap(
                REFUSAL_CAP,
                format!(
                    "is a refusal or a model talking about itself (\"{}\")",
                    first.text
                ),
            );
        } else {
            cap(
                PARTIAL_REFUSAL_CAP,
                format!("contains a refusal (\"{}\")", first.text),
            );
        }
    }
    if let Some(share) = signals.filler_share()
        && signals.fill_units >= FILLER_MIN_UNITS
        && share >= PART_FILLER_FROM
    {
        let (score, what) = if share >= FILLER_FROM {
            (FILLER_CAP, "filler")
        } else {
            (PART_FILLER_CAP, "partly filler")
        };
        cap(
            score,
            format!(
                "{what}: {} of {} values or lines are filler such as \"{}\"",
                signals.filler.len(),
                signals.fill_units,
                signals.filler.first().map_or("", |(_, text)| text.as_str())
            ),
        );
    }
    if let Some((location, what)) = truncation_signals(document.format, body).first() {
        cap(TRUNCATED_CAP, format!("cut off: {location}: {what}"));
    }
    // Template slots (`{{name}}`, `[INSERT …]`, "Your name here") make a
    // template; TODO and TBD alone make unfinished work (and count as filler).
    let (mut placeholders, mut slots) = (0usize, 0usize);
    for hit in &body.dictionary().placeholders {
        if !hit.text.starts_with(['.', '\u{2026}']) {
            placeholders += 1;
            slots += usize::from(!matches!(hit.text.as_str(), "TODO" | "TBD" | "FIXME"));
        }
    }
    if placeholders >= UNFINISHED_PLACEHOLDERS {
        let density = slots as f64 * 100.0 / body.words.max(1) as f64;
        if density >= TEMPLATE_DENSITY {
            cap(
                TEMPLATE_CAP,
                format!(
                    "{placeholders} placeholders in {} words: an unfilled template",
                    body.words
                ),
            );
        } else {
            cap(
                UNFINISHED_CAP,
                format!("{placeholders} placeholders: unfinished"),
            );
        }
    }
    if let Some(share) = signals.function_share(SALAD_MIN_WORDS)
        && share < SALAD_BELOW
        && signals.lorem_words * 5 < signals.words
    {
        cap(
            SALAD_CAP,
            format!(
                "only {} of {} words are function words (the, of, and…): words in no sentence",
                signals.function_words, signals.words
            ),
        );
    }
    if let Some(share) = signals.repeated_share(REPEAT_MIN_SEGMENTS)
        && share >= REPEATED_FROM
    {
        cap(
            REPETITION_CAP,
            format!(
                "{} of {} sentences or values repeat earlier ones",
                signals.segments - signals.distinct_segments,
                signals.segments
            ),
        );
    }
    let golden_json = golden
        .filter(|_| document.format == Format::Json)
        .and_then(Golden::json);
    format_cap(document, golden_json, &mut cap);
    floor_cap(
        document,
        golden.map(|golden| golden.bytes),
        golden_json,
        &mut cap,
    );

    caps.into_iter().min_by(|a, b| a.score.total_cmp(&b.score))
}

/// HTML without a tag, JSON whose root is a bare scalar (or not the golden's type).
fn format_cap(
    document: &Document<'_>,
    golden_json: Option<&Value>,
    cap: &mut impl FnMut(f64, String),
) {
    let Some(body) = &document.body else { return };
    match document.format {
        Format::Html if body.html.as_ref().is_some_and(|html| html.tags == 0) => {
            cap(FORMAT_CAP, "is declared as HTML but has no tag".to_string())
        }
        Format::Json => {
            let Some(value) = body.json_value() else {
                return;
            };
            if !(value.is_object() || value.is_array()) {
                cap(
                    FORMAT_CAP,
                    "is a bare JSON scalar where a document is expected".to_string(),
                );
            } else if let Some(golden) = golden_json
                && golden.is_object() != value.is_object()
            {
                cap(
                    FORMAT_CAP,
                    "has a different root type from the golden example".to_string(),
                );
            }
        }
        _ => {}
    }
}

/// Far less content than the golden example holds, or than any finished
/// document of its format has.
fn floor_cap(
    document: &Document<'_>,
    golden: Option<&[u8]>,
    golden_json: Option<&Value>,
    cap: &mut impl FnMut(f64, String),
) {
    let Some(body) = &document.body else { return };
    let signals = body.signals();
    let filler_words: usize = signals
        .filler
        .iter()
        .map(|(_, text)| count_words(text))
        .sum();
    let words = body.words.saturating_sub(filler_words);
    if let Some(golden) = golden {
        let golden_words = golden_words(document.format, golden, golden_json);
        if golden_words > 0 && (words as f64) < THIN_GOLDEN_SHARE * golden_words as f64 {
            let (score, what, share) = if (words as f64) < FLOOR_GOLDEN_SHARE * golden_words as f64
            {
                (FLOOR_CAP, "far too little content", FLOOR_GOLDEN_SHARE)
            } else {
                (THIN_CAP, "thin", THIN_GOLDEN_SHARE)
            };
            cap(
                score,
                format!(
                    "{what}: {words} words of content where the golden example has {golden_words} (under {})",
                    crate::score::percent(share)
                ),
            );
        }
        return;
    }
    match document.format {
        Format::Markdown | Format::Html if words < FLOOR_DOCUMENT_WORDS => cap(
            FLOOR_CAP,
            format!(
                "{words} words: too little for a finished document (floor {FLOOR_DOCUMENT_WORDS})"
            ),
        ),
        Format::Markdown | Format::Html if words < THIN_DOCUMENT_WORDS => cap(
            THIN_DOCUMENT_CAP,
            format!("thin: {words} words (under {THIN_DOCUMENT_WORDS}, half the minimum of 150)"),
        ),
        Format::Text if words < FLOOR_TEXT_WORDS && !is_one_line_value(&body.raw) => cap(
            FLOOR_CAP,
            format!("{words} words: too little for a finished text (floor {FLOOR_TEXT_WORDS})"),
        ),
        Format::Json => {
            let Some(value) = body.json_value() else {
                return;
            };
            let values = content_values(value);
            if values < FLOOR_JSON_VALUES {
                cap(
                    FLOOR_CAP,
                    format!("{values} values that are not filler (floor {FLOOR_JSON_VALUES})"),
                );
            }
        }
        _ => {}
    }
}

/// Numbers, booleans and non-blank strings that are not filler (no paths
/// built: this only counts).
pub fn content_values(value: &Value) -> usize {
    match value {
        Value::String(text) => {
            usize::from(!text.trim().is_empty() && !crate::content::is_filler(text))
        }
        Value::Number(_) | Value::Bool(_) => 1,
        Value::Array(items) => items.iter().map(content_values).sum(),
        Value::Object(members) => members.values().map(content_values).sum(),
        Value::Null => 0,
    }
}

/// Words in the string values of a JSON document.
fn string_words(value: &Value) -> usize {
    match value {
        Value::String(text) => count_words(text),
        Value::Array(items) => items.iter().map(string_words).sum(),
        Value::Object(members) => members.values().map(string_words).sum(),
        _ => 0,
    }
}

/// Words of the golden example as the artifact's prose would count them.
fn golden_words(format: Format, golden: &[u8], golden_json: Option<&Value>) -> usize {
    let text = crate::text::lossy(golden);
    match format {
        Format::Json => match golden_json {
            Some(value) => string_words(value),
            None => count_words(&text),
        },
        Format::Html => count_words(&crate::html::scan(&text).visible_text),
        Format::Markdown | Format::Text => count_words(&text),
    }
}

/// A text artifact of one line up to this long is a value, not a document.
const MAX_VALUE_CHARS: usize = 300;

/// A single short line, like `review-url.txt` or `extraction-version.txt`.
pub fn is_one_line_value(text: &str) -> bool {
    let trimmed = text.trim();
    !trimmed.is_empty() && !trimmed.contains('\n') && trimmed.chars().count() <= MAX_VALUE_CHARS
}
