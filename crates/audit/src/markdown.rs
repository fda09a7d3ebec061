//! Line-level Markdown structure: headings, list items, code fences, sections
//! and paragraphs, and how the document ends.
//!
//! This is deliberately not a CommonMark parser: the audit needs counts and
//! line numbers, not a tree, and must never fail. Plain-text artifacts go
//! through the same scan (they simply have no headings or lists).

use crate::text::count_words;

/// A run of lines measured in words, starting at a 1-based line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub words: usize,
}

/// What the scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkdownStats {
    /// Words in the whole text, code included.
    pub words: usize,
    pub headings: usize,
    pub list_items: usize,
    /// Line of a code fence that is never closed.
    pub unclosed_fence_line: Option<usize>,
    /// Text between headings (the first one starts at line 1), code excluded.
    pub sections: Vec<Span>,
    /// Consecutive prose lines (not headings, list items, tables, quotes or code).
    pub paragraphs: Vec<Span>,
    /// The last non-blank line when it is prose that stops mid-sentence
    /// (ends in a letter, digit, `,`, `;`, `:`, `-` or `(`) inside a paragraph
    /// of 8 words or more: the typical look of output cut off by a token limit.
    pub ends_mid_sentence_line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Blank,
    Heading,
    Fence,
    ListItem,
    Other,
    Paragraph,
}

/// Minimum paragraph length for the mid-sentence ending rule, so short sign-offs
/// ("— Marisol") do not count as truncation.
const MID_SENTENCE_MIN_PARAGRAPH_WORDS: usize = 8;

/// Scans `text` line by line.
pub fn scan(text: &str) -> MarkdownStats {
    let mut stats = MarkdownStats::default();
    let mut section = Span { line: 1, words: 0 };
    let mut paragraph: Option<Span> = None;
    let mut fence: Option<(usize, u8)> = None;
    let mut last_content: Option<(usize, LineKind, &str)> = None;
    let mut last_paragraph_words = 0;
    let mut previous_kind = LineKind::Blank;

    for (line_index, raw_line) in text.split('\n').enumerate() {
        let line_number = line_index + 1;
        let line = raw_line.trim_end_matches('\r');
        let trimmed = line.trim_start_matches([' ', '\t']);
        let line_words = count_words(trimmed);
        stats.words += line_words;

        if let Some((_, fence_byte)) = fence {
            if is_fence(trimmed).is_some_and(|byte| byte == fence_byte) {
                fence = None;
                last_content = Some((line_number, LineKind::Fence, trimmed));
            }
            continue;
        }

        let kind = classify(trimmed, previous_kind);
        if kind != LineKind::Paragraph
            && let Some(done) = paragraph.take()
        {
            last_paragraph_words = done.words;
            stats.paragraphs.push(done);
        }
        match kind {
            LineKind::Blank => {}
            LineKind::Heading => {
                stats.headings += 1;
                stats.sections.push(section);
                section = Span {
                    line: line_number,
                    words: 0,
                };
            }
            LineKind::Fence => {
                fence = is_fence(trimmed).map(|byte| (line_number, byte));
            }
            LineKind::ListItem => {
                stats.list_items += 1;
                section.words += line_words;
            }
            LineKind::Other => section.words += line_words,
            LineKind::Paragraph => {
                section.words += line_words;
                paragraph
                    .get_or_insert(Span {
                        line: line_number,
                        words: 0,
                    })
                    .words += line_words;
            }
        }
        if kind != LineKind::Blank {
            last_content = Some((line_number, kind, trimmed));
        }
        previous_kind = kind;
    }
    if let Some(done) = paragraph.take() {
        last_paragraph_words = done.words;
        stats.paragraphs.push(done);
    }
    stats.sections.push(section);
    stats.sections.retain(|span| span.words > 0);
    stats.unclosed_fence_line = fence.map(|(line, _)| line);
    if let Some((line, LineKind::Paragraph, content)) = last_content
        && last_paragraph_words >= MID_SENTENCE_MIN_PARAGRAPH_WORDS
        && content.trim_end().chars().next_back().is_some_and(|last| {
            last.is_alphanumeric()
                || matches!(last, ',' | ';' | ':' | '-' | '(' | '\u{2013}' | '\u{2014}')
        })
    {
        stats.ends_mid_sentence_line = Some(line);
    }
    stats
}

fn classify(trimmed: &str, previous_kind: LineKind) -> LineKind {
    let bytes = trimmed.as_bytes();
    let Some(&first) = bytes.first() else {
        return LineKind::Blank;
    };
    if is_fence(trimmed).is_some() {
        return LineKind::Fence;
    }
    match first {
        b'#' => {
            let hashes = bytes.iter().take_while(|&&byte| byte == b'#').count();
            if hashes <= 6
                && bytes
                    .get(hashes)
                    .is_none_or(|byte| byte.is_ascii_whitespace())
            {
                return LineKind::Heading;
            }
            LineKind::Paragraph
        }
        // A setext underline turns the paragraph line above into a heading.
        b'=' | b'-'
            if previous_kind == LineKind::Paragraph && bytes.iter().all(|&byte| byte == first) =>
        {
            LineKind::Heading
        }
        b'-' | b'*' | b'+' if bytes.get(1).is_none_or(|byte| matches!(byte, b' ' | b'\t')) => {
            if bytes.iter().all(|&byte| byte == first || byte == b' ') && bytes.len() >= 3 {
                LineKind::Other // thematic break
            } else {
                LineKind::ListItem
            }
        }
        b'0'..=b'9' => {
            let digits = bytes
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count();
            if digits <= 3
                && matches!(bytes.get(digits), Some(b'.' | b')'))
                && bytes
                    .get(digits + 1)
                    .is_none_or(|byte| matches!(byte, b' ' | b'\t'))
            {
                LineKind::ListItem
            } else {
                LineKind::Paragraph
            }
        }
        b'|' | b'>' | b'<' => LineKind::Other,
        _ => LineKind::Paragraph,
    }
}

/// The fence character when the line opens or closes a code fence.
fn is_fence(trimmed: &str) -> Option<u8> {
    if trimmed.starts_with("```") {
        Some(b'`')
    } else if trimmed.starts_with("~~~") {
        Some(b'~')
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_structure() {
        let text = "# Title\nIntro line one\nline two.\n\n## Steps\n- one\n- two\n1. three\n\n```\n# not a heading\n```\nOutro\n===\n";
        let stats = scan(text);
        assert_eq!(stats.headings, 3);
        assert_eq!(stats.list_items, 3);
        assert_eq!(stats.unclosed_fence_line, None);
        assert_eq!(
            stats.paragraphs,
            vec![Span { line: 2, words: 5 }, Span { line: 13, words: 1 }]
        );
        assert_eq!(
            stats.sections,
            vec![Span { line: 1, words: 5 }, Span { line: 5, words: 5 }]
        );
        assert_eq!(stats.ends_mid_sentence_line, None);
    }

    #[test]
    fn detects_truncation_signals() {
        let cut = scan("# Plan\nThe third step is to write the walk-away number on paper and then");
        assert_eq!(cut.ends_mid_sentence_line, Some(2));
        let fenced = scan("Intro.\n```rust\nfn main() {");
        assert_eq!(fenced.unclosed_fence_line, Some(2));
        let list_end = scan(
            "# Plan\nSome text here that is long enough to count for sure.\n- last item without a period",
        );
        assert_eq!(list_end.ends_mid_sentence_line, None);
        let sign_off =
            scan("Thanks for reading this long note about the anchor ladder today.\n\nMarisol");
        assert_eq!(sign_off.ends_mid_sentence_line, None);
    }
}
