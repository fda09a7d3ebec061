//! Content signals: does the text read as language, does it say anything it
//! has not said already, is it filler, or is it what the no-op builtin writes?
//!
//! Form checks (parses, has headings, no placeholders) cannot tell junk from
//! work: base64 noise is "valid Markdown", word salad has headings, a golden
//! JSON shape filled with "N/A" has every required key. These signals look at
//! the tokens themselves, in one forward pass over the prose, with no
//! dictionary bigger than a few hundred function words. They feed D1–D4 as
//! checks and, when one of them shows the artifact is junk, cap the composite
//! (see [`crate::caps`]).

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use serde_json::Value;

use crate::Format;
use crate::json_shape::{JsonProse, walk};

/// Tokens of more letters than this (per hyphen-separated part) are not words.
const MAX_WORD_CHARS: usize = 24;
/// Consonants in a row that no English (or most European) word has.
const MAX_CONSONANT_RUN: usize = 6;
/// A segment (sentence, line, JSON value) of fewer words is a label and is not
/// counted for redundancy.
const MIN_SEGMENT_WORDS: usize = 4;

/// What the content signals measured on one artifact's prose.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentSignals {
    /// Characters in tokens that read as words of a natural language.
    pub word_chars: usize,
    /// Characters in number tokens (`$41,000`, `2009`, `7s`, `v1.2`).
    pub number_chars: usize,
    /// Characters in tokens that are neither: base64, hex, random strings.
    pub noise_chars: usize,
    /// Word tokens, and how many of them are function words (`the`, `of`, `and`).
    pub words: usize,
    pub function_words: usize,
    /// Words from the lorem-ipsum vocabulary.
    pub lorem_words: usize,
    /// Segments (sentences, lines, JSON string values) of 4+ words, and how
    /// many are distinct ignoring case and punctuation.
    pub segments: usize,
    pub distinct_segments: usize,
    /// Units filler is counted over: JSON string values, or non-blank lines.
    pub fill_units: usize,
    /// Filler values (`N/A`, `TBD`, `string`, …): byte offset in the prose and the text.
    pub filler: Vec<(usize, String)>,
    /// What the no-op builtin writes (`Deep Research (attempt 1)`, `{"builtin":"noop",…}`).
    pub noop: bool,
}

impl ContentSignals {
    /// Share (0–1) of the token characters that read as language; numbers count
    /// half. 1 when there are no tokens at all.
    pub fn language_share(&self) -> f64 {
        let total = self.word_chars + self.number_chars + self.noise_chars;
        if total == 0 {
            1.0
        } else {
            (self.word_chars as f64 + 0.5 * self.number_chars as f64) / total as f64
        }
    }

    /// Share (0–1) of words that are function words; `None` below `min_words`.
    pub fn function_share(&self, min_words: usize) -> Option<f64> {
        (self.words >= min_words.max(1)).then(|| self.function_words as f64 / self.words as f64)
    }

    /// Share (0–1) of segments that repeat an earlier one; `None` below `min_segments`.
    pub fn repeated_share(&self, min_segments: usize) -> Option<f64> {
        (self.segments >= min_segments.max(1))
            .then(|| 1.0 - self.distinct_segments as f64 / self.segments as f64)
    }

    /// Share (0–1) of the fill units that are filler; `None` with none.
    pub fn filler_share(&self) -> Option<f64> {
        (self.fill_units > 0).then(|| self.filler.len() as f64 / self.fill_units as f64)
    }
}

/// Measures `prose` (JSON: its string values, one per paragraph; HTML: its
/// visible text) of an artifact in `format`; `raw` is the whole source, for
/// recognising the no-op builtin's output.
pub fn measure(
    format: Format,
    raw: &str,
    prose: &str,
    json: Option<(&Value, &JsonProse)>,
) -> ContentSignals {
    let mut signals = ContentSignals::default();
    tokens(prose, &mut signals);
    let mut seen = HashSet::new();
    match json {
        Some((value, json_prose)) => {
            // Each string value is a unit: filler when the whole value is.
            for (index, &start) in json_prose.segment_starts.iter().enumerate() {
                let end = json_prose
                    .segment_starts
                    .get(index + 1)
                    .map_or(prose.len(), |next| next.saturating_sub(2));
                let text = prose.get(start..end).unwrap_or_default();
                signals.fill_units += 1;
                if is_filler(text) {
                    signals.filler.push((start, excerpt(text)));
                }
                segments_of(text, &mut seen, &mut signals);
            }
            signals.noop = is_noop_json(value);
        }
        None => {
            let mut offset = 0;
            for line in prose.split_inclusive('\n') {
                let content = line_content(line);
                if !content.is_empty() {
                    signals.fill_units += 1;
                    if is_filler(content) {
                        let start = offset + line.find(content).unwrap_or(0);
                        signals.filler.push((start, excerpt(content)));
                    }
                }
                offset += line.len();
            }
            for sentence in split_sentences(prose) {
                segments_of(sentence, &mut seen, &mut signals);
            }
            signals.noop = format != Format::Json && is_noop_text(raw);
        }
    }
    signals
}

/// Counts `text` as one segment when it has 4+ words, keyed by its words
/// lowercased (punctuation and case do not make a sentence new).
fn segments_of(text: &str, seen: &mut HashSet<u64>, signals: &mut ContentSignals) {
    // `DefaultHasher::new()` has fixed keys: the same text hashes the same on every run.
    let mut state = DefaultHasher::new();
    let mut words = 0;
    for token in text.split_ascii_whitespace() {
        let core = token.trim_matches(|c: char| !c.is_alphanumeric());
        if core.is_empty() {
            continue;
        }
        words += 1;
        for byte in core.bytes() {
            state.write_u8(byte.to_ascii_lowercase());
        }
        state.write_u8(b' ');
    }
    if words >= MIN_SEGMENT_WORDS {
        signals.segments += 1;
        if seen.insert(state.finish()) {
            signals.distinct_segments += 1;
        }
    }
}

/// Sentences, roughly: split at line ends and after `.`, `!`, `?` followed by
/// whitespace. Good enough to count repeats; D2 has the careful splitter.
fn split_sentences(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut index = 0;
    std::iter::from_fn(move || {
        while index < bytes.len() {
            let byte = bytes[index];
            index += 1;
            let ends = byte == b'\n'
                || (matches!(byte, b'.' | b'!' | b'?')
                    && bytes
                        .get(index)
                        .is_none_or(|next| next.is_ascii_whitespace()));
            if ends {
                let sentence = &text[start..index];
                start = index;
                return Some(sentence);
            }
        }
        if start < bytes.len() {
            let sentence = &text[start..];
            start = bytes.len();
            return Some(sentence);
        }
        None
    })
}

/// What a line says once Markdown list, quote, heading and table markers are removed.
fn line_content(line: &str) -> &str {
    let mut content = line.trim();
    loop {
        let before = content;
        for marker in ["- ", "* ", "+ ", "> ", "#"] {
            content = content.strip_prefix(marker).unwrap_or(content).trim_start();
        }
        if let Some(rest) = strip_ordered_marker(content) {
            content = rest;
        }
        if content == before {
            break;
        }
    }
    content.trim_matches(|c: char| c == '|' || c.is_whitespace())
}

fn strip_ordered_marker(text: &str) -> Option<&str> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let rest = text[digits..].strip_prefix(['.', ')'])?;
    rest.starts_with(' ').then(|| rest.trim_start())
}

/// Values a model or a template leaves where content should be.
const FILLER: &[&str] = &[
    "n/a",
    "na",
    "tbd",
    "tbc",
    "todo",
    "to do",
    "fixme",
    "string",
    "str",
    "value",
    "example",
    "sample",
    "text",
    "placeholder",
    "lorem ipsum",
    "xxx",
    "xx",
    "x",
    "foo",
    "bar",
    "baz",
    "test",
    "your name here",
    "insert here",
    "insert text here",
    "description",
    "name",
    "title",
    "null",
    "undefined",
    "...",
    "…",
    "-",
    "—",
    "?",
    "??",
    "???",
    "etc",
    "same as above",
    "to be determined",
    "to be confirmed",
    "coming soon",
    "fill in",
    "fill me in",
];

/// True when the whole value is filler: `N/A`, `TBD`, `<string>`, `[value]`,
/// `lorem ipsum dolor …`.
pub fn is_filler(text: &str) -> bool {
    let trimmed = text
        .trim()
        .trim_matches(|c: char| {
            matches!(
                c,
                '"' | '\'' | '<' | '>' | '[' | ']' | '(' | ')' | '{' | '}' | '*' | '_' | '`'
            )
        })
        .trim();
    if trimmed.is_empty() || trimmed.len() > 40 {
        return trimmed.len() > 40 && starts_with_lorem(trimmed);
    }
    let lower = trimmed
        .trim_end_matches(['.', ':', '!'])
        .to_ascii_lowercase();
    let lower = if lower.is_empty() {
        trimmed.to_ascii_lowercase()
    } else {
        lower
    };
    FILLER.contains(&lower.as_str()) || starts_with_lorem(&lower)
}

fn starts_with_lorem(text: &str) -> bool {
    text.get(..11)
        .is_some_and(|start| start.eq_ignore_ascii_case("lorem ipsum"))
}

/// `Deep Research (attempt 1)`: one short line ending in an attempt number.
fn is_noop_text(raw: &str) -> bool {
    let line = raw.trim();
    if line.contains('\n') || line.len() > 160 {
        return false;
    }
    let Some(rest) = line.strip_suffix(')') else {
        return false;
    };
    let Some((name, number)) = rest.rsplit_once(" (attempt ") else {
        return false;
    };
    !name.trim().is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

/// `{"builtin": "noop", …}`, anywhere in the document (a directory listing holds it too).
fn is_noop_json(value: &Value) -> bool {
    let mut found = false;
    walk(value, &mut |node, _| {
        if let Value::Object(members) = node
            && members.get("builtin").and_then(Value::as_str) == Some("noop")
        {
            found = true;
        }
    });
    found
}

fn excerpt(text: &str) -> String {
    let trimmed = text.trim();
    match trimmed.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &trimmed[..end]),
        None => trimmed.to_string(),
    }
}

/// How one token reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Word,
    Number,
    Noise,
    /// No letter or digit (Markdown markers, punctuation), or a URL: not judged.
    Skip,
}

fn tokens(text: &str, signals: &mut ContentSignals) {
    for token in text.split_ascii_whitespace() {
        let core = token.trim_matches(|c: char| !c.is_alphanumeric());
        let chars = core.len();
        match classify(core) {
            Token::Word => {
                signals.word_chars += chars;
                signals.words += 1;
                let lower = core.to_ascii_lowercase();
                if FUNCTION_WORDS.binary_search(&lower.as_str()).is_ok() {
                    signals.function_words += 1;
                }
                if LOREM_WORDS.binary_search(&lower.as_str()).is_ok() {
                    signals.lorem_words += 1;
                }
            }
            Token::Number => signals.number_chars += chars,
            Token::Noise => signals.noise_chars += chars,
            Token::Skip => {}
        }
    }
}

fn classify(core: &str) -> Token {
    if core.is_empty() {
        return Token::Skip;
    }
    if core.contains("://") || core.starts_with("www.") || core.contains('@') {
        return Token::Skip;
    }
    if is_number(core) || is_timestamp(core) {
        return Token::Number;
    }
    // Compounds (`anchor-ladder`, `sync_full_40_stations`, `nightly-2024-05-06`)
    // read as words when every part is a word or a number.
    let (mut words, mut numbers) = (0, 0);
    for part in core.split(['-', '/', '_', '.', ':', '\'', '\u{2019}', '&', '+']) {
        if part.is_empty() {
            continue;
        }
        if is_word_part(part) {
            words += 1;
        } else if is_number(part) {
            numbers += 1;
        } else {
            return Token::Noise;
        }
        if words + numbers > 6 {
            return Token::Noise;
        }
    }
    match (words, numbers) {
        (0, 0) => Token::Skip,
        (0, _) => Token::Number,
        _ => Token::Word,
    }
}

/// `2024-05-07T02:00:04Z`, `02:31:47.120+00:00`: ISO dates and times.
fn is_timestamp(core: &str) -> bool {
    let digits = core.bytes().filter(u8::is_ascii_digit).count();
    digits >= 6
        && core
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-:.+TZ".contains(&b))
}

/// `2009`, `$41,000`, `11.4%`, `7s`, `10x`, `3-5`, `Q3`, `v1.2`, `2nd`, `24h`.
fn is_number(core: &str) -> bool {
    let bytes = core.as_bytes();
    if !bytes.iter().any(u8::is_ascii_digit) || bytes.len() > 24 {
        return false;
    }
    // At most two letters before the digits and three after, nothing between.
    let prefix = bytes.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let suffix = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    if prefix > 2 || suffix > 3 || prefix + suffix >= bytes.len() {
        return false;
    }
    bytes[prefix..bytes.len() - suffix]
        .iter()
        .all(|b| b.is_ascii_digit() || b"$.,:%+-/~".contains(b))
}

/// A letter sequence that could be a word: not too long, has a vowel (or is
/// a short acronym), no long consonant run, and plain casing (`word`,
/// `Word`, `WORD`, or one inner capital as in `iPhone`, `McDonald`).
fn is_word_part(part: &str) -> bool {
    if !part.is_ascii() {
        // Other scripts: accept letters, reject digits mixed in.
        return part.chars().all(char::is_alphabetic);
    }
    let bytes = part.as_bytes();
    if bytes.len() > MAX_WORD_CHARS || !bytes.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    let is_vowel = |b: u8| {
        matches!(
            b.to_ascii_lowercase(),
            b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
        )
    };
    let all_upper = bytes.iter().all(u8::is_ascii_uppercase);
    if !bytes.iter().copied().any(is_vowel) {
        return bytes.len() <= 2 || (all_upper && bytes.len() <= 5);
    }
    let mut run = 0;
    for &byte in bytes {
        run = if is_vowel(byte) { 0 } else { run + 1 };
        if run >= MAX_CONSONANT_RUN {
            return false;
        }
    }
    if all_upper {
        return true;
    }
    let inner_capitals = bytes[1..]
        .windows(2)
        .filter(|pair| pair[0].is_ascii_lowercase() && pair[1].is_ascii_uppercase())
        .count()
        + usize::from(
            bytes.len() > 1 && bytes[0].is_ascii_lowercase() && bytes[1].is_ascii_uppercase(),
        );
    inner_capitals <= 1
}

/// Function words: real prose in any register is 30–50% these; word salad
/// and keyword lists have almost none. Mostly English, with the commonest of
/// Spanish, French, German, Italian and Portuguese so other languages are
/// not mistaken for salad. Sorted for binary search.
const FUNCTION_WORDS: &[&str] = &[
    "a", "about", "after", "al", "all", "also", "an", "and", "any", "are", "as", "at", "au", "be",
    "because", "been", "before", "but", "by", "can", "could", "da", "das", "de", "dei", "del",
    "della", "dem", "den", "der", "des", "di", "did", "die", "do", "does", "du", "e", "each",
    "ein", "eine", "el", "en", "es", "est", "et", "for", "from", "had", "has", "have", "he", "her",
    "here", "him", "his", "how", "i", "if", "il", "im", "in", "into", "is", "ist", "it", "its",
    "just", "la", "las", "le", "les", "lo", "los", "may", "me", "more", "most", "must", "my",
    "nicht", "no", "not", "now", "o", "of", "on", "one", "only", "or", "os", "other", "our", "out",
    "para", "per", "por", "qu", "que", "se", "she", "should", "so", "some", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "those", "to", "too", "um", "un",
    "una", "und", "une", "up", "us", "very", "was", "we", "were", "what", "when", "where", "which",
    "while", "who", "why", "will", "with", "would", "y", "you", "your", "zu",
];

/// The lorem-ipsum vocabulary's commonest words. Sorted for binary search.
const LOREM_WORDS: &[&str] = &[
    "adipiscing",
    "aliqua",
    "aliquip",
    "amet",
    "commodo",
    "consectetur",
    "consequat",
    "dolor",
    "dolore",
    "eiusmod",
    "elit",
    "enim",
    "exercitation",
    "incididunt",
    "ipsum",
    "labore",
    "laboris",
    "lorem",
    "magna",
    "minim",
    "nisi",
    "nostrud",
    "sed",
    "sit",
    "tempor",
    "ullamco",
    "veniam",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn text_signals(text: &str) -> ContentSignals {
        measure(Format::Markdown, text, text, None)
    }

    #[test]
    fn dictionaries_are_sorted_for_binary_search() {
        assert!(FUNCTION_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(LOREM_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn tokens_are_words_numbers_or_noise() {
        for word in [
            "negotiation",
            "Marisol",
            "BATNA",
            "iPhone",
            "McDonald",
            "anchor-ladder",
            "don't",
            "rhythms",
            "é",
        ] {
            assert_eq!(classify(word), Token::Word, "{word}");
        }
        for number in [
            "2009", "41,000", "$41,000", "11.4%", "7s", "10x", "Q3", "v1.2", "2nd", "3-5",
        ] {
            assert_eq!(classify(number), Token::Number, "{number}");
        }
        for noise in [
            "aGVsbG8gd29ybGQhIHRoaXMgaXM",
            "6c6c",
            "xkcdqrstvw",
            "zQ9fLp2",
            "kJhGfDsA",
        ] {
            assert_eq!(classify(noise), Token::Noise, "{noise}");
        }
        assert_eq!(classify("https://vegatable.com/x"), Token::Skip);
    }

    #[test]
    fn prose_reads_as_language_and_base64_does_not() {
        let prose = text_signals(
            "Marisol Vega opens every negotiation with one number and one reason. \
             She then holds the silence for seven seconds, because the first person \
             who speaks after an anchor usually concedes.",
        );
        assert!(prose.language_share() > 0.95, "{prose:?}");
        assert!(prose.function_share(10).unwrap() > 0.3, "{prose:?}");
        let noise = text_signals(
            "aGVsbG8gd29ybGQhIHRoaXMgaXMgbm9pc2U9PQ== dGhpcyBpcyBub3QgcHJvc2UgYXQgYWxs\nQmFzZTY0IG5vaXNlIGxpbmUgdGhyZWU=",
        );
        assert!(noise.language_share() < 0.2, "{noise:?}");
    }

    #[test]
    fn word_salad_has_almost_no_function_words() {
        let salad = text_signals(
            "Harbor velvet calculate window proudly ancient mirror pencil gather orbit \
             ribbon distant lantern quietly marble thunder garden clever basket rocket \
             silver whisper canyon tender meadow frozen ladder compass violet engine",
        );
        assert!(salad.language_share() > 0.95);
        assert!(salad.function_share(20).unwrap() < 0.05, "{salad:?}");
    }

    #[test]
    fn repeats_and_filler_are_counted() {
        let paragraph = "The client opened at fifty two thousand. She held the silence.\n";
        let repeated = text_signals(&paragraph.repeat(10));
        assert_eq!(repeated.segments, 20);
        assert_eq!(repeated.distinct_segments, 2);
        assert!(repeated.repeated_share(5).unwrap() > 0.8);

        let list = text_signals(
            "# Offer\n- TBD\n- N/A\n- Anchor at $52,000 with one reason\n| Price | [value] |\n",
        );
        assert_eq!(list.filler.len(), 2, "{list:?}");
        assert!(
            is_filler("<string>")
                && is_filler("Lorem ipsum dolor sit amet, consectetur adipiscing elit")
        );
        assert!(!is_filler("none required") && !is_filler("Anchor Ladder"));
    }

    #[test]
    fn json_filler_and_repeats_are_per_value() {
        let value: Value = serde_json::json!({
            "frameworks": [
                {"name": "N/A", "summary": "TBD", "steps": ["string", "value", "lorem ipsum"]},
                {"name": "Anchor Ladder", "summary": "Say one number with one reason and stop talking.", "steps": ["Say one number with one reason and stop talking."]}
            ]
        });
        let prose = JsonProse::of(&value);
        let signals = measure(Format::Json, "", &prose.text, Some((&value, &prose)));
        assert_eq!(signals.fill_units, 8);
        assert_eq!(signals.filler.len(), 5, "{signals:?}");
        assert_eq!(signals.filler[0].1, "N/A");
        assert_eq!(prose.path_at(signals.filler[0].0), "$.frameworks[0].name");
        assert_eq!((signals.segments, signals.distinct_segments), (2, 1));
    }

    #[test]
    fn the_noop_builtin_is_recognised() {
        assert!(text_signals("Deep Research (attempt 1)\n").noop);
        assert!(!text_signals("Deep Research (attempt one)\n").noop);
        assert!(!text_signals("We met twice (attempt 2)\nand again.").noop);
        let value = serde_json::json!({"builtin": "noop", "block": "x", "attempt": 1});
        let prose = JsonProse::of(&value);
        assert!(measure(Format::Json, "", &prose.text, Some((&value, &prose))).noop);
    }
}
