//! Plain-text scanning shared by every dimension: lossy decoding, line
//! numbers, words, sentences and word boundaries.
//!
//! Everything here is a single forward pass over bytes, because the audit runs
//! after every block execution on artifacts of up to megabytes and must stay
//! far below the engine's own overhead. Whitespace is ASCII whitespace; other
//! scripts still work because non-ASCII bytes count as word characters.

use std::borrow::Cow;

/// Decodes bytes as UTF-8, replacing invalid sequences, without copying valid input.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Byte offsets of line starts, to turn a match offset into a 1-based line number.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, byte)| byte == b'\n')
                .map(|(index, _)| index + 1),
        );
        LineIndex { starts }
    }

    /// The 1-based line holding byte `offset` (offsets past the end give the last line).
    pub fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(index) => index + 1,
            Err(index) => index.max(1),
        }
    }
}

/// Number of whitespace-separated tokens that contain at least one letter or digit.
pub fn count_words(text: &str) -> usize {
    let mut count = 0;
    let mut in_token = false;
    let mut token_has_word_char = false;
    for &byte in text.as_bytes() {
        if byte.is_ascii_whitespace() {
            if in_token && token_has_word_char {
                count += 1;
            }
            in_token = false;
            token_has_word_char = false;
        } else {
            in_token = true;
            token_has_word_char |= is_word_byte(byte);
        }
    }
    if in_token && token_has_word_char {
        count += 1;
    }
    count
}

/// ASCII letters and digits, and every non-ASCII byte (part of some letter in
/// most real text; precise enough for counting).
pub fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte >= 0x80
}

/// True when `text[start..end]` is not glued to letters or digits on either side,
/// so the term "ladder" does not match inside "ladders".
pub fn at_word_boundaries(text: &str, start: usize, end: usize) -> bool {
    starts_at_word_boundary(text, start)
        && text
            .get(end..)
            .and_then(|rest| rest.chars().next())
            .is_none_or(|next| !next.is_alphanumeric())
}

/// True when nothing alphanumeric immediately precedes `start`.
pub fn starts_at_word_boundary(text: &str, start: usize) -> bool {
    text.get(..start)
        .and_then(|before| before.chars().next_back())
        .is_none_or(|previous| !previous.is_alphanumeric())
}

/// One sentence (or heading, list item, table row, JSON string) found by [`sentences`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sentence {
    /// Byte range in the scanned text.
    pub start: usize,
    pub end: usize,
    pub words: usize,
    pub has_digit: bool,
    /// Two straight double quotes, or an opening typographic quote.
    pub has_quote: bool,
    /// A capitalised word that is not the first word (a proper noun, most of the time).
    pub has_inner_capital: bool,
}

impl Sentence {
    /// A number, a quotation or a proper noun: the marks of specific writing.
    pub fn has_concrete_detail(&self) -> bool {
        self.has_digit || self.has_quote || self.has_inner_capital
    }
}

/// Splits text into sentences. See [`sentences_with_words`].
#[cfg(test)]
pub fn sentences(text: &str) -> Vec<Sentence> {
    sentences_with_words(text, |_, _, _| {})
}

/// Splits text into sentences and calls `on_word(offset, token, is_first_word_of_sentence)`
/// for every word token (whitespace-delimited, with at least one letter or digit).
///
/// A sentence ends after a token ending in `.`, `!` or `?` (closing quotes and
/// brackets allowed after it), at a blank line, before a line that starts a
/// Markdown block (heading, list item, quote, table row, code fence) and after
/// a heading line. Markdown line markers (`## `, `- `, `1. `) are not words.
/// Sentences without words are dropped.
pub fn sentences_with_words(
    text: &str,
    mut on_word: impl FnMut(usize, &str, bool),
) -> Vec<Sentence> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut current = SentenceBuilder::starting_at(0);
    let mut index = 0;
    let mut at_line_start = true;
    let mut line_is_heading = false;
    while index < bytes.len() {
        if at_line_start {
            at_line_start = false;
            let (after_marker, is_heading) = skip_line_marker(bytes, index);
            line_is_heading = is_heading;
            if current.words == 0 {
                current.start = after_marker;
            }
            index = after_marker;
            continue;
        }
        let byte = bytes[index];
        if byte.is_ascii_whitespace() {
            if byte == b'\n' {
                if line_is_heading || next_line_starts_block(bytes, index + 1) {
                    current.finish(index, &mut found);
                    current = SentenceBuilder::starting_at(index + 1);
                }
                at_line_start = true;
            }
            index += 1;
            continue;
        }
        let token_start = index;
        while index < bytes.len() && !bytes[index].is_ascii_whitespace() {
            index += 1;
        }
        // Token edges sit next to ASCII whitespace or the text's ends, so they are char boundaries.
        let token = &text[token_start..index];
        current.add_token(token_start, token, &mut on_word);
        if ends_sentence(token) {
            current.finish(index, &mut found);
            current = SentenceBuilder::starting_at(index);
        }
    }
    current.finish(bytes.len(), &mut found);
    found
}

struct SentenceBuilder {
    start: usize,
    words: usize,
    quotes: usize,
    has_digit: bool,
    has_inner_capital: bool,
}

impl SentenceBuilder {
    fn starting_at(start: usize) -> SentenceBuilder {
        SentenceBuilder {
            start,
            words: 0,
            quotes: 0,
            has_digit: false,
            has_inner_capital: false,
        }
    }

    fn add_token(
        &mut self,
        offset: usize,
        token: &str,
        on_word: &mut impl FnMut(usize, &str, bool),
    ) {
        let mut has_word_char = false;
        let mut has_non_ascii = false;
        for &byte in token.as_bytes() {
            has_word_char |= is_word_byte(byte);
            has_non_ascii |= byte >= 0x80;
            self.has_digit |= byte.is_ascii_digit();
            self.quotes += usize::from(byte == b'"');
        }
        if has_non_ascii && token.contains(['\u{201C}', '\u{00AB}', '\u{201E}']) {
            self.quotes += 2;
        }
        if !has_word_char {
            return;
        }
        let is_first = self.words == 0;
        if !is_first && starts_capitalised(token) && !is_pronoun_i(token) {
            self.has_inner_capital = true;
        }
        on_word(offset, token, is_first);
        self.words += 1;
    }

    fn finish(&self, end: usize, found: &mut Vec<Sentence>) {
        if self.words > 0 && end > self.start {
            found.push(Sentence {
                start: self.start,
                end,
                words: self.words,
                has_digit: self.has_digit,
                has_quote: self.quotes >= 2,
                has_inner_capital: self.has_inner_capital,
            });
        }
    }
}

fn starts_capitalised(token: &str) -> bool {
    token
        .chars()
        .find(|character| character.is_alphanumeric())
        .is_some_and(char::is_uppercase)
}

fn is_pronoun_i(token: &str) -> bool {
    let word = token.trim_matches(|character: char| !character.is_alphanumeric());
    matches!(
        word,
        "I" | "I'm"
            | "I've"
            | "I'll"
            | "I'd"
            | "I\u{2019}m"
            | "I\u{2019}ve"
            | "I\u{2019}ll"
            | "I\u{2019}d"
    )
}

/// A token like `end.`, `right?!`, `"done."` or `(see 3).` closes a sentence; `3.5` does not.
fn ends_sentence(token: &str) -> bool {
    let trimmed = token.trim_end_matches([
        '"', '\'', ')', ']', '*', '_', '\u{201D}', '\u{2019}', '\u{00BB}',
    ]);
    trimmed.ends_with(['.', '!', '?', '\u{2026}'])
}

/// Skips indentation and one Markdown line marker (`#…# `, `- `, `* `, `+ `,
/// `> `, `1. `, `1) `) at `index`. Returns where the content starts and whether
/// the line is a heading.
fn skip_line_marker(bytes: &[u8], index: usize) -> (usize, bool) {
    let mut position = index;
    while position < bytes.len() && matches!(bytes[position], b' ' | b'\t') {
        position += 1;
    }
    let marker_start = position;
    match bytes.get(position) {
        Some(b'#') => {
            while position < bytes.len() && bytes[position] == b'#' {
                position += 1;
            }
            if position - marker_start <= 6
                && bytes
                    .get(position)
                    .is_none_or(|byte| byte.is_ascii_whitespace())
            {
                return (position, true);
            }
            (marker_start, false)
        }
        Some(b'-' | b'*' | b'+' | b'>')
            if bytes
                .get(position + 1)
                .is_some_and(|byte| matches!(byte, b' ' | b'\t')) =>
        {
            (position + 2, false)
        }
        Some(byte) if byte.is_ascii_digit() => {
            while position < bytes.len()
                && bytes[position].is_ascii_digit()
                && position - marker_start < 4
            {
                position += 1;
            }
            let is_marker = matches!(bytes.get(position), Some(b'.' | b')'))
                && bytes
                    .get(position + 1)
                    .is_some_and(|byte| matches!(byte, b' ' | b'\t'));
            if is_marker {
                (position + 2, false)
            } else {
                (marker_start, false)
            }
        }
        _ => (marker_start, false),
    }
}

/// True when the line starting at `index` is blank or starts a Markdown block.
fn next_line_starts_block(bytes: &[u8], index: usize) -> bool {
    let mut position = index;
    while position < bytes.len() && matches!(bytes[position], b' ' | b'\t' | b'\r') {
        position += 1;
    }
    match bytes.get(position) {
        None | Some(b'\n') => true,
        Some(b'#' | b'>' | b'|' | b'`' | b'~') => true,
        Some(b'-' | b'*' | b'+') => bytes
            .get(position + 1)
            .is_some_and(|byte| matches!(byte, b' ' | b'\t')),
        Some(byte) if byte.is_ascii_digit() => skip_line_marker(bytes, index).0 != position,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentence_texts(text: &str) -> Vec<&str> {
        sentences(text)
            .iter()
            .map(|sentence| text[sentence.start..sentence.end].trim())
            .collect()
    }

    #[test]
    fn splits_on_terminal_punctuation_and_markdown_blocks() {
        let text = "# The Anchor Ladder\nOpen high. Then wait 7 seconds!\n- ask \"why\" twice\n1. Name the price\n\nA new paragraph\ncontinues here.";
        assert_eq!(
            sentence_texts(text),
            vec![
                "The Anchor Ladder",
                "Open high.",
                "Then wait 7 seconds!",
                "ask \"why\" twice",
                "Name the price",
                "A new paragraph\ncontinues here."
            ]
        );
    }

    #[test]
    fn flags_details() {
        let found = sentences(
            "Open with the number. Marisol opens with 42. Ask what Vega would do. She said \"no\" twice.",
        );
        let flags: Vec<_> = found
            .iter()
            .map(|s| (s.has_digit, s.has_inner_capital, s.has_quote))
            .collect();
        assert_eq!(
            flags,
            vec![
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (false, false, true)
            ]
        );
        assert!(!sentences("Then I said it.")[0].has_inner_capital);
    }

    #[test]
    fn decimal_numbers_do_not_end_sentences() {
        assert_eq!(
            sentence_texts("Raise 3.5 percent now. Done"),
            vec!["Raise 3.5 percent now.", "Done"]
        );
    }

    #[test]
    fn reports_first_words() {
        let mut words = Vec::new();
        sentences_with_words("Alpha beta. Gamma", |offset, word, first| {
            words.push((offset, word.to_string(), first))
        });
        assert_eq!(
            words,
            vec![
                (0, "Alpha".into(), true),
                (6, "beta.".into(), false),
                (12, "Gamma".into(), true)
            ]
        );
    }

    #[test]
    fn counts_words_and_lines() {
        assert_eq!(count_words("one two -- three\n| x |"), 4);
        let index = LineIndex::new("a\nb\nc");
        assert_eq!(
            (
                index.line_of(0),
                index.line_of(2),
                index.line_of(4),
                index.line_of(99)
            ),
            (1, 2, 3, 3)
        );
    }

    #[test]
    fn word_boundaries() {
        assert!(at_word_boundaries("the ladder.", 4, 10));
        assert!(!at_word_boundaries("the ladders", 4, 10));
        assert!(!at_word_boundaries("laddered", 0, 6));
        assert!(at_word_boundaries("é ladder", 3, 9));
    }
}
