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
use std::sync::OnceLock;

use serde_json::Value;

use crate::Format;
use crate::json_shape::JsonProse;

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
    /// Word tokens; those written in ASCII letters (the only ones the
    /// function-word list can judge), and how many are function words.
    pub words: usize,
    pub latin_words: usize,
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
    /// Set when the prose was too large to read every token: the bytes the
    /// token counts (not filler, not no-op) were estimated from.
    pub sampled_bytes: Option<usize>,
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

    /// Share (0–1) of ASCII-letter words that are function words; `None`
    /// below `min_words` of them (text in other scripts is never judged).
    pub fn function_share(&self, min_words: usize) -> Option<f64> {
        (self.latin_words >= min_words.max(1))
            .then(|| self.function_words as f64 / self.latin_words as f64)
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
///
/// One pass over the tokens classifies them and collects segments (a
/// sentence ends after a token ending in `.`, `!` or `?`, or at a line end);
/// a second, cheap pass looks at whole JSON values or lines for filler.
pub fn measure(
    format: Format,
    raw: &str,
    prose: &str,
    json: Option<(&Value, &JsonProse)>,
) -> ContentSignals {
    let mut signals = ContentSignals::default();
    let mut segments = Segments::default();
    let ranges = sample(prose);
    if ranges.len() > 1 {
        signals.sampled_bytes = Some(ranges.iter().map(|range| range.len()).sum());
    }
    for range in ranges {
        let bytes = &prose.as_bytes()[..range.end];
        let mut index = range.start;
        while index < bytes.len() {
            if bytes[index].is_ascii_whitespace() {
                if bytes[index] == b'\n' {
                    segments.end(&mut signals);
                }
                index += 1;
                continue;
            }
            let start = index;
            while index < bytes.len() && !bytes[index].is_ascii_whitespace() {
                index += 1;
            }
            // ASCII whitespace never splits a UTF-8 sequence.
            let token = &prose[start..index];
            let core = trim_token(token);
            count_token(core, &mut signals);
            segments.push(core);
            if token.ends_with(['.', '!', '?']) {
                segments.end(&mut signals);
            }
        }
        segments.end(&mut signals);
    }

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
            }
            signals.noop = is_noop_json(value);
        }
        None => {
            let mut offset = 0;
            for line in prose.split_inclusive('\n') {
                // Only short lines can be filler, or ones that start with lorem ipsum.
                if line.len() > MAX_FILLER_LINE_BYTES
                    && !line.trim_start().get(..1).is_some_and(|first| {
                        !first.bytes().all(|byte| byte.is_ascii_alphanumeric())
                            || first.eq_ignore_ascii_case("l")
                    })
                {
                    offset += line.len();
                    continue;
                }
                let content = line_content(line);
                if !content.is_empty() {
                    signals.fill_units += 1;
                    // Headings are labels, never filler.
                    if !line.trim_start().starts_with('#') && is_line_filler(content) {
                        let start = offset + line.find(content).unwrap_or(0);
                        signals.filler.push((start, excerpt(content)));
                    }
                }
                offset += line.len();
            }
            signals.noop = format != Format::Json && is_noop_text(raw);
        }
    }
    signals
}

/// Prose up to this size has every token read.
const FULL_SCAN_BYTES: usize = 256 * 1024;
/// Larger prose is read in this many windows of this size, evenly spaced:
/// shares (language, function words, repeats) are estimated from 128 KB, so
/// the audit keeps its 100 MB/s however large the artifact.
const SAMPLE_WINDOWS: usize = 16;
const SAMPLE_WINDOW_BYTES: usize = 8 * 1024;

/// The byte ranges of `prose` the token pass reads: all of it, or evenly
/// spaced windows that start and end at line starts (never inside a token).
pub fn sample(prose: &str) -> Vec<std::ops::Range<usize>> {
    let length = prose.len();
    if length <= FULL_SCAN_BYTES {
        return std::iter::once(0..length).collect();
    }
    let next_line = |offset: usize| {
        if offset == 0 {
            return 0;
        }
        prose.as_bytes()[offset.min(length)..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(length, |found| offset + found + 1)
    };
    let stride = length / SAMPLE_WINDOWS;
    (0..SAMPLE_WINDOWS)
        .map(|window| {
            let start = next_line(window * stride);
            let end = next_line((start + SAMPLE_WINDOW_BYTES).min(length)).max(start);
            start..end
        })
        .filter(|range| !range.is_empty())
        .collect()
}

/// The segment being read: its words lowercased, and the hashes of those seen.
#[derive(Default)]
struct Segments {
    words: usize,
    text: Vec<u8>,
    seen: HashSet<u64>,
}

impl Segments {
    fn push(&mut self, core: &str) {
        if core.is_empty() {
            return;
        }
        self.words += 1;
        self.text
            .extend(core.bytes().map(|byte| byte.to_ascii_lowercase()));
        self.text.push(b' ');
    }

    /// Counts the segment when it has 4+ words, keyed by its words lowercased
    /// (punctuation and case do not make a sentence new).
    fn end(&mut self, signals: &mut ContentSignals) {
        if self.words >= MIN_SEGMENT_WORDS {
            // `DefaultHasher::new()` has fixed keys: the same text hashes the same on every run.
            let mut state = DefaultHasher::new();
            state.write(&self.text);
            signals.segments += 1;
            if self.seen.insert(state.finish()) {
                signals.distinct_segments += 1;
            }
        }
        self.words = 0;
        self.text.clear();
    }
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

/// A line longer than this is filler only when it starts (after Markdown
/// markers) with lorem ipsum.
const MAX_FILLER_LINE_BYTES: usize = 64;

/// Values a model or a template leaves where content should be, in any format.
const FILLER: &[&str] = &[
    "n/a",
    "tbd",
    "tbc",
    "todo",
    "to do",
    "fixme",
    "placeholder",
    "lorem ipsum",
    "xxx",
    "your name here",
    "insert here",
    "insert text here",
    "same as above",
    "to be determined",
    "to be confirmed",
    "coming soon",
    "fill in",
    "fill me in",
];

/// Filler only as a whole JSON value: in Markdown or HTML the same word on
/// a line of its own is a label (`## Example`, a `Name` table header).
const JSON_FILLER: &[&str] = &[
    "na",
    "string",
    "str",
    "value",
    "example",
    "sample",
    "text",
    "xx",
    "x",
    "foo",
    "bar",
    "baz",
    "test",
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
];

/// True when the whole value is filler: `N/A`, `TBD`, `<string>`, `[value]`,
/// `lorem ipsum dolor …`.
pub fn is_filler(text: &str) -> bool {
    filler_match(text, true)
}

/// [`is_filler`] for a line of Markdown, text or HTML: only the values that
/// are never a label.
fn is_line_filler(text: &str) -> bool {
    filler_match(text, false)
}

fn filler_match(text: &str, json: bool) -> bool {
    let trimmed = text
        .trim()
        .trim_matches(|c: char| {
            matches!(
                c,
                '"' | '\'' | '<' | '>' | '[' | ']' | '(' | ')' | '{' | '}' | '*' | '_' | '`'
            )
        })
        .trim();
    if trimmed.is_empty() {
        return false;
    }
    if starts_with_lorem(trimmed) {
        return true;
    }
    if trimmed.len() > 40 {
        return false;
    }
    let core = trimmed.trim_end_matches(['.', ':', '!']);
    let core = if core.is_empty() { trimmed } else { core };
    FILLER
        .iter()
        .any(|filler| filler.eq_ignore_ascii_case(core))
        || (json
            && JSON_FILLER
                .iter()
                .any(|filler| filler.eq_ignore_ascii_case(core)))
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
    let is_noop = |node: &Value| node.get("builtin").and_then(Value::as_str) == Some("noop");
    // The root, or one level down (a directory listing of one no-op file).
    is_noop(value)
        || value
            .as_object()
            .is_some_and(|members| members.len() <= 4 && members.values().any(is_noop))
}

fn excerpt(text: &str) -> String {
    let trimmed = text.trim();
    match trimmed.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &trimmed[..end]),
        None => trimmed.to_string(),
    }
}

/// An ASCII word of up to 8 bytes, lowercased and packed into an integer
/// (shifts, not a byte buffer: a buffer read back whole stalls the CPU).
fn packed(word: &str) -> Option<u64> {
    let bytes = word.as_bytes();
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut key = 0u64;
    for (index, byte) in bytes.iter().enumerate() {
        key |= u64::from(byte.to_ascii_lowercase()) << (8 * index);
    }
    Some(key)
}

const FUNCTION: u8 = 1;
const LOREM: u8 = 2;

/// [`FUNCTION_WORDS`] and [`LOREM_WORDS`] of up to 8 letters (all function
/// words; the long lorem words are rare enough to leave out), packed, in an open-addressing
/// table: one multiply and usually one probe per word, where a binary search
/// over strings cost more than the rest of the token's classification.
struct WordTable {
    slots: Vec<(u64, u8)>,
}

impl WordTable {
    const BITS: u32 = 10;

    fn slot(key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - Self::BITS)) as usize
    }

    fn insert(&mut self, key: u64, kind: u8) {
        let mask = self.slots.len() - 1;
        let mut index = Self::slot(key);
        loop {
            let slot = &mut self.slots[index];
            if slot.0 == key || slot.0 == 0 {
                *slot = (key, slot.1 | kind);
                return;
            }
            index = (index + 1) & mask;
        }
    }

    /// The kinds of `key` (0 when it is neither a function nor a lorem word).
    fn lookup(&self, key: u64) -> u8 {
        let mask = self.slots.len() - 1;
        let mut index = Self::slot(key);
        loop {
            let (slot_key, kind) = self.slots[index];
            if slot_key == key {
                return kind;
            }
            if slot_key == 0 {
                return 0;
            }
            index = (index + 1) & mask;
        }
    }
}

fn word_table() -> &'static WordTable {
    static TABLE: OnceLock<WordTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        // 1024 slots for under 250 words: probes stay short.
        let mut table = WordTable {
            slots: vec![(0, 0); 1 << WordTable::BITS],
        };
        for (words, kind) in [(FUNCTION_WORDS, FUNCTION), (LOREM_WORDS, LOREM)] {
            for key in words.iter().filter_map(|word| packed(word)) {
                table.insert(key, kind);
            }
        }
        table
    })
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

/// The token without leading and trailing characters that are not letters
/// or digits (bytes for ASCII tokens, the common case; chars otherwise).
fn trim_token(token: &str) -> &str {
    if !token.is_ascii() {
        return token.trim_matches(|c: char| !c.is_alphanumeric());
    }
    let bytes = token.as_bytes();
    match bytes.iter().position(u8::is_ascii_alphanumeric) {
        Some(start) => {
            let end = bytes
                .iter()
                .rposition(u8::is_ascii_alphanumeric)
                .unwrap_or(start);
            &token[start..=end]
        }
        None => "",
    }
}

fn count_token(core: &str, signals: &mut ContentSignals) {
    let chars = core.len();
    match classify(core) {
        Token::Word => {
            signals.word_chars += chars;
            signals.words += 1;
            if !core.is_ascii() {
                return;
            }
            signals.latin_words += 1;
            // Function and lorem words are short: pack the lowercased word into
            // an integer and look it up among integers (no string compares).
            let Some(key) = packed(core) else {
                return;
            };
            let kind = word_table().lookup(key);
            signals.function_words += usize::from(kind & FUNCTION != 0);
            signals.lorem_words += usize::from(kind & LOREM != 0);
        }
        Token::Number => signals.number_chars += chars,
        Token::Noise => signals.noise_chars += chars,
        Token::Skip => {}
    }
}

fn classify(core: &str) -> Token {
    if core.is_empty() {
        return Token::Skip;
    }
    // Most tokens are plain words: no need to look for URLs or split compounds.
    if let Some(word) = ascii_word_part(core.as_bytes()) {
        return if word { Token::Word } else { Token::Noise };
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
    ascii_word_part(part.as_bytes()).unwrap_or(false)
}

const LETTER: u8 = 1;
const VOWEL: u8 = 2;
const UPPER: u8 = 4;

/// [`LETTER`], [`VOWEL`] (`y` included) and [`UPPER`] for each byte.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphabetic() {
            let lower = b.to_ascii_lowercase();
            let mut class = LETTER;
            if matches!(lower, b'a' | b'e' | b'i' | b'o' | b'u' | b'y') {
                class |= VOWEL;
            }
            if b.is_ascii_uppercase() {
                class |= UPPER;
            }
            table[byte] = class;
        }
        byte += 1;
    }
    table
};

/// [`is_word_part`] for ASCII in one pass; `None` when a byte is not a letter.
fn ascii_word_part(bytes: &[u8]) -> Option<bool> {
    let (mut vowel, mut run, mut long_run, mut upper, mut rises) = (false, 0usize, false, 0, 0);
    let mut previous_lower = false;
    for &byte in bytes {
        // One table lookup per byte instead of branches that mispredict on
        // every other letter.
        let class = BYTE_CLASS[usize::from(byte)];
        if class & LETTER == 0 {
            return None;
        }
        let is_vowel = class & VOWEL != 0;
        vowel |= is_vowel;
        run = (run + 1) * usize::from(!is_vowel);
        long_run |= run >= MAX_CONSONANT_RUN;
        let is_upper = class & UPPER != 0;
        upper += usize::from(is_upper);
        rises += usize::from(previous_lower & is_upper);
        previous_lower = !is_upper;
    }
    let all_upper = upper == bytes.len();
    Some(if bytes.len() > MAX_WORD_CHARS {
        false
    } else if !vowel {
        bytes.len() <= 2 || (all_upper && bytes.len() <= 5)
    } else {
        !long_run && (all_upper || rises <= 1)
    })
}

/// Function words: real prose in any register is 30–50% these; word salad
/// and keyword lists have almost none. Mostly English, with the commonest of
/// Spanish, French, German, Italian, Portuguese, Dutch, Polish and the
/// Scandinavian languages so they are not mistaken for salad. Sorted for
/// binary search.
const FUNCTION_WORDS: &[&str] = &[
    "a", "aan", "about", "after", "al", "all", "also", "an", "and", "any", "are", "as", "at",
    "att", "au", "av", "be", "because", "been", "before", "bij", "but", "by", "can", "could", "da",
    "das", "dat", "de", "dei", "del", "della", "dem", "den", "der", "des", "det", "di", "did",
    "die", "do", "does", "du", "e", "each", "een", "ein", "eine", "el", "en", "er", "es", "est",
    "et", "ett", "for", "from", "had", "has", "have", "he", "her", "here", "het", "him", "his",
    "how", "i", "if", "ik", "ikke", "il", "im", "in", "into", "is", "ist", "it", "its", "ja", "je",
    "jest", "just", "la", "las", "le", "les", "lo", "los", "may", "me", "met", "more", "most",
    "must", "my", "na", "nicht", "nie", "niet", "no", "not", "now", "o", "och", "of", "og", "on",
    "one", "only", "op", "or", "os", "other", "our", "out", "para", "per", "por", "qu", "que",
    "se", "she", "should", "so", "som", "some", "te", "than", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "those", "til", "to", "too", "um", "un", "una",
    "und", "une", "up", "us", "van", "very", "voor", "w", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "why", "will", "with", "would", "y", "you", "your", "z",
    "ze", "zijn", "zu",
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
    fn dictionaries_are_sorted_and_found_in_the_table() {
        assert!(FUNCTION_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(LOREM_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
        let table = word_table();
        for word in FUNCTION_WORDS.iter().filter(|word| word.is_ascii()) {
            assert_ne!(table.lookup(packed(word).unwrap()) & FUNCTION, 0, "{word}");
            assert_ne!(
                table.lookup(packed(&word.to_uppercase()).unwrap()) & FUNCTION,
                0,
                "{word}"
            );
        }
        assert_eq!(table.lookup(packed("sed").unwrap()), LOREM);
        assert_eq!(table.lookup(packed("et").unwrap()), FUNCTION);
        assert_eq!(table.lookup(packed("anchor").unwrap()), 0);
        assert_eq!(packed("negotiation"), None);
        assert!(FUNCTION_WORDS.iter().all(|word| word.len() <= 8));
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
    fn other_languages_are_not_salad() {
        let russian = text_signals(
            &"Переговоры начинаются задолго до звонка и заканчиваются уступкой ".repeat(20),
        );
        assert_eq!(russian.function_share(80), None, "{russian:?}");
        assert!(russian.language_share() > 0.95);
        let dutch = text_signals(&"De klant opent het gesprek met een bod en wacht dan zeven seconden voor het antwoord. ".repeat(8));
        assert!(dutch.function_share(80).unwrap() > 0.2, "{dutch:?}");
    }

    #[test]
    fn repeats_and_filler_are_counted() {
        let paragraph = "The client opened at fifty two thousand. She held the silence.\n";
        let repeated = text_signals(&paragraph.repeat(10));
        assert_eq!(repeated.segments, 20);
        assert_eq!(repeated.distinct_segments, 2);
        assert!(repeated.repeated_share(5).unwrap() > 0.8);

        let list = text_signals(
            "# Offer\n- TBD\n- N/A\n- Anchor at $52,000 with one reason\n| Price | [value] |\n## Example\n- Name\n",
        );
        // A heading or a bare label is not filler in Markdown; only in JSON.
        assert_eq!(list.filler.len(), 2, "{list:?}");
        assert!(is_filler("Example") && !is_line_filler("Example"));
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
    fn large_prose_is_read_in_windows_that_start_at_lines() {
        let line =
            "Marisol Vega opened at fifty two thousand and held the silence for seven seconds.\n";
        let text = line.repeat(6000); // ~500 KB
        let ranges = sample(&text);
        assert_eq!(ranges.len(), SAMPLE_WINDOWS);
        for pair in ranges.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{ranges:?}");
        }
        for range in &ranges {
            assert!(range.start == 0 || text.as_bytes()[range.start - 1] == b'\n');
            assert!(range.len() <= SAMPLE_WINDOW_BYTES + line.len());
        }
        let signals = text_signals(&text);
        let sampled = signals.sampled_bytes.expect("sampled");
        assert!(sampled < 140 * 1024, "{sampled}");
        // The sample still sees that every sentence is the same one.
        assert!(signals.repeated_share(6).unwrap() > 0.99);
        assert_eq!(sample("short").len(), 1);
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
