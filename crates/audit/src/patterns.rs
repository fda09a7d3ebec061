//! The dictionaries: generic phrases (D2), placeholders (D4) and stopwords (D5).
//!
//! Generic phrases and placeholder literals share one Aho-Corasick automaton,
//! built once per process (`OnceLock`) and run once over a text, so adding
//! phrases costs nothing per phrase at audit time and D2 and D4 share the
//! scan. Matching is ASCII case-insensitive; the few literals that must match
//! exactly (`TODO`) or only in some places (`...`) are filtered after the
//! match. Template syntax (`{{name}}`) is one regex, run only on texts that
//! contain one of its opening characters.

use std::collections::HashSet;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;

use crate::text::{at_word_boundaries, starts_at_word_boundary};

/// Stock phrases that signal filler. A sentence containing one and no concrete
/// detail (number, proper noun, quote, the subject's name) is "generic" in D2.
/// Matches must start at a word boundary; suffixes are allowed ("empowering").
pub const GENERIC_PHRASES: &[&str] = &[
    "in today's fast-paced world",
    "in today\u{2019}s fast-paced world",
    "fast-paced world",
    "unlock your potential",
    "unlock your full potential",
    "unlock the power",
    "cutting-edge",
    "cutting edge",
    "leverage synergies",
    "synergies",
    "game-changer",
    "game changer",
    "take it to the next level",
    "to the next level",
    "best-in-class",
    "world-class",
    "state-of-the-art",
    "think outside the box",
    "paradigm shift",
    "move the needle",
    "low-hanging fruit",
    "at the end of the day",
    "holistic approach",
    "seamless",
    "robust solution",
    "empower",
    "transformative journey",
    "unleash",
    "deep dive",
    "in conclusion",
    "it is important to note",
    "it's important to note",
    "navigate the complexities",
    "ever-evolving landscape",
    "ever-changing landscape",
    "delve into",
    "a testament to",
    "rich tapestry",
    "harness the power",
    "revolutionize",
    "revolutionise",
    "unparalleled",
    "next-generation",
    "innovative solutions",
    "drive results",
    "value-added",
    "thought leader",
    "reach new heights",
    "embark on a journey",
    "foster growth",
    "proven strategies",
    "actionable insights",
    "plays a crucial role",
    "in the realm of",
    "maximize your potential",
    "achieve your goals",
    "success in any situation",
];

/// How a placeholder literal must match beyond ASCII case-insensitivity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderRule {
    /// Any case, anywhere.
    Anywhere,
    /// Exact case and whole word: `TODO`, but not the Spanish `todo`.
    ExactWord,
    /// An ellipsis only counts where text trails off: before a line end, the
    /// end of a JSON string or a closing bracket (not inside quoted speech).
    TrailingEllipsis,
}

/// Literals that mean the text is unfinished, a template, or a model talking about itself.
pub const PLACEHOLDERS: &[(&str, PlaceholderRule)] = &[
    ("TODO", PlaceholderRule::ExactWord),
    ("TBD", PlaceholderRule::ExactWord),
    ("FIXME", PlaceholderRule::ExactWord),
    ("lorem ipsum", PlaceholderRule::Anywhere),
    ("[insert", PlaceholderRule::Anywhere),
    ("<placeholder>", PlaceholderRule::Anywhere),
    ("placeholder text", PlaceholderRule::Anywhere),
    ("your name here", PlaceholderRule::Anywhere),
    ("...", PlaceholderRule::TrailingEllipsis),
    ("\u{2026}", PlaceholderRule::TrailingEllipsis),
    ("(continued)", PlaceholderRule::Anywhere),
    ("[truncated", PlaceholderRule::Anywhere),
    ("(truncated", PlaceholderRule::Anywhere),
    ("truncated for brevity", PlaceholderRule::Anywhere),
    ("rest of the content", PlaceholderRule::Anywhere),
];

/// A model declining the task or talking about itself instead of doing it.
/// Matched ASCII case-insensitively anywhere; typographic apostrophes are
/// listed too because models write them.
pub const REFUSALS: &[&str] = &[
    "as an ai language model",
    "as an ai model",
    "as an ai assistant",
    "as a language model",
    "as a large language model",
    "i'm sorry, but i can't",
    "i\u{2019}m sorry, but i can\u{2019}t",
    "i am sorry, but i cannot",
    "i'm sorry, but i cannot",
    "i can't help with",
    "i can\u{2019}t help with",
    "i cannot help with",
    "i can't assist",
    "i cannot assist",
    "i can't provide",
    "i cannot provide",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i apologize, but",
    "i must decline",
    "i don't have access to",
    "i do not have access to",
    "my knowledge cutoff",
    "as of my last update",
    "as of my knowledge cutoff",
];

/// Template syntax left in the output: `{{ name }}`, `[INSERT …]`, `<CLIENT_NAME>`.
const PLACEHOLDER_PATTERN: &str =
    r"\{\{\s*[\w.]+\s*\}\}|(?i:\[insert[^\]\n]{0,80}\])|<[A-Z][A-Z_ ]{1,40}>";

/// Uppercase words in angle brackets that are HTML, not placeholders.
const HTML_TAG_NAMES: &[&str] = &[
    "A", "B", "BR", "HR", "LI", "UL", "OL", "TD", "TR", "TH", "EM", "DIV", "IMG", "BODY", "HTML",
    "HEAD", "SPAN", "TABLE", "TITLE", "FORM", "META", "LINK", "NAV", "MAIN", "STRONG", "CODE",
    "PRE", "DL", "DT", "DD", "SUB", "SUP", "TBODY", "THEAD", "INPUT", "LABEL", "BUTTON", "SCRIPT",
    "STYLE", "FOOTER", "HEADER", "SECTION", "ARTICLE",
];

/// Common English words of five letters or more, plus structural JSON words,
/// that say nothing about a particular upstream artifact (D5).
const STOPWORDS: &[&str] = &[
    "about",
    "above",
    "according",
    "across",
    "actually",
    "after",
    "again",
    "against",
    "almost",
    "along",
    "already",
    "also",
    "although",
    "always",
    "among",
    "another",
    "anyone",
    "anything",
    "around",
    "array",
    "based",
    "because",
    "become",
    "becomes",
    "been",
    "before",
    "being",
    "below",
    "better",
    "between",
    "beyond",
    "both",
    "bring",
    "build",
    "called",
    "cannot",
    "career",
    "cases",
    "certain",
    "change",
    "clear",
    "clearly",
    "close",
    "comes",
    "common",
    "complete",
    "content",
    "could",
    "create",
    "created",
    "current",
    "description",
    "detail",
    "details",
    "different",
    "doing",
    "during",
    "each",
    "early",
    "either",
    "else",
    "enough",
    "entire",
    "especially",
    "even",
    "every",
    "everyone",
    "everything",
    "example",
    "examples",
    "false",
    "field",
    "fields",
    "final",
    "first",
    "following",
    "found",
    "from",
    "further",
    "general",
    "getting",
    "given",
    "gives",
    "going",
    "great",
    "group",
    "having",
    "helps",
    "herself",
    "himself",
    "however",
    "human",
    "important",
    "including",
    "instead",
    "into",
    "itself",
    "items",
    "just",
    "keeps",
    "known",
    "label",
    "large",
    "later",
    "least",
    "level",
    "likely",
    "little",
    "longer",
    "looking",
    "makes",
    "making",
    "many",
    "maybe",
    "means",
    "might",
    "moment",
    "months",
    "more",
    "most",
    "much",
    "must",
    "myself",
    "needs",
    "never",
    "notes",
    "nothing",
    "number",
    "object",
    "often",
    "order",
    "other",
    "others",
    "otherwise",
    "ourselves",
    "output",
    "over",
    "people",
    "perhaps",
    "place",
    "point",
    "possible",
    "probably",
    "quite",
    "rather",
    "really",
    "right",
    "same",
    "second",
    "seems",
    "sense",
    "several",
    "should",
    "shows",
    "simple",
    "simply",
    "since",
    "small",
    "something",
    "sometimes",
    "source",
    "sources",
    "specific",
    "start",
    "starts",
    "still",
    "string",
    "summary",
    "taken",
    "takes",
    "than",
    "that",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "therefore",
    "these",
    "they",
    "thing",
    "things",
    "think",
    "third",
    "this",
    "those",
    "though",
    "three",
    "through",
    "title",
    "today",
    "together",
    "too",
    "toward",
    "towards",
    "true",
    "under",
    "until",
    "upon",
    "usually",
    "value",
    "values",
    "various",
    "very",
    "wants",
    "well",
    "were",
    "what",
    "whatever",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "whole",
    "whose",
    "will",
    "with",
    "within",
    "without",
    "works",
    "world",
    "would",
    "years",
    "yourself",
    "yourselves",
];

/// Generic phrases, placeholder literals and refusals in one automaton, so a
/// text is scanned once for all. Pattern ids below `GENERIC_PHRASES.len()` are
/// generic phrases, then [`PLACEHOLDERS`], then [`REFUSALS`].
fn prose_dictionary() -> &'static AhoCorasick {
    static AUTOMATON: OnceLock<AhoCorasick> = OnceLock::new();
    AUTOMATON.get_or_init(|| {
        let patterns = GENERIC_PHRASES
            .iter()
            .copied()
            .chain(PLACEHOLDERS.iter().map(|(literal, _)| *literal))
            .chain(REFUSALS.iter().copied());
        dictionary(patterns, MatchKind::LeftmostLongest)
    })
}

fn placeholder_regex() -> &'static Regex {
    static REGEX: OnceLock<Regex> = OnceLock::new();
    // The pattern is a constant; a unit test proves it compiles.
    REGEX.get_or_init(|| {
        Regex::new(PLACEHOLDER_PATTERN)
            .unwrap_or_else(|_| Regex::new(r"[^\s\S]").expect("empty class"))
    })
}

/// One placeholder found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceholderHit {
    pub start: usize,
    pub end: usize,
    /// The matched text, at most 60 characters.
    pub text: String,
}

/// A generic phrase found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhraseHit {
    pub start: usize,
    pub phrase: &'static str,
}

/// Everything the dictionaries found in one text, each list in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DictionaryHits {
    /// Refusals and a model talking about itself.
    pub refusals: Vec<PlaceholderHit>,
    /// Generic phrases starting at a word boundary.
    pub generic: Vec<PhraseHit>,
    /// Placeholder literals and patterns, without overlaps (a longer match wins).
    pub placeholders: Vec<PlaceholderHit>,
}

/// Scans `text` once with the phrase and placeholder automaton, then with the
/// placeholder pattern when the text has a `{`, `[` or `<` at all.
pub fn scan_dictionary(text: &str) -> DictionaryHits {
    let mut hits = DictionaryHits::default();
    for found in prose_dictionary().find_iter(text) {
        let id = found.pattern().as_usize();
        if let Some(phrase) = GENERIC_PHRASES.get(id) {
            if starts_at_word_boundary(text, found.start()) {
                hits.generic.push(PhraseHit {
                    start: found.start(),
                    phrase,
                });
            }
            continue;
        }
        let matched = text.get(found.start()..found.end()).unwrap_or_default();
        let Some(&(literal, rule)) = PLACEHOLDERS.get(id - GENERIC_PHRASES.len()) else {
            hits.refusals.push(PlaceholderHit {
                start: found.start(),
                end: found.end(),
                text: excerpt(matched),
            });
            continue;
        };
        let accepted = match rule {
            PlaceholderRule::Anywhere => true,
            PlaceholderRule::ExactWord => {
                matched == literal && at_word_boundaries(text, found.start(), found.end())
            }
            PlaceholderRule::TrailingEllipsis => trails_off(text, found.end()),
        };
        if accepted {
            hits.placeholders.push(PlaceholderHit {
                start: found.start(),
                end: found.end(),
                text: excerpt(matched),
            });
        }
    }
    if text.contains(['{', '[', '<']) {
        hits.placeholders = merge_pattern_hits(text, std::mem::take(&mut hits.placeholders));
    }
    hits
}

/// Placeholders in `text`, in order, without overlaps.
pub fn find_placeholders(text: &str) -> Vec<PlaceholderHit> {
    scan_dictionary(text).placeholders
}

fn merge_pattern_hits(text: &str, literal_hits: Vec<PlaceholderHit>) -> Vec<PlaceholderHit> {
    let pattern_hits = placeholder_regex().find_iter(text).filter(|found| {
        let inner = found.as_str().trim_matches(['<', '>', ' ']);
        !(found.as_str().starts_with('<') && HTML_TAG_NAMES.contains(&inner))
    });
    let mut candidates = literal_hits;
    candidates.extend(pattern_hits.map(|found| PlaceholderHit {
        start: found.start(),
        end: found.end(),
        text: excerpt(found.as_str()),
    }));
    candidates.sort_by_key(|hit| hit.start);
    // Each list is free of overlaps, so a candidate can only overlap the last
    // one kept; the longer match tells more (`[INSERT STEP 3]`, not `[insert`).
    let mut kept: Vec<PlaceholderHit> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        match kept.last_mut() {
            Some(last) if candidate.start < last.end => {
                if candidate.end - candidate.start > last.end - last.start {
                    *last = candidate;
                }
            }
            _ => kept.push(candidate),
        }
    }
    kept
}

/// True when only spaces separate `end` from a line end, the end of the text,
/// or a closing bracket.
fn trails_off(text: &str, end: usize) -> bool {
    let rest = text.get(end..).unwrap_or("");
    match rest.trim_start_matches([' ', '\t']).chars().next() {
        None => true,
        Some(next) => matches!(next, '\n' | '\r' | ']' | ')' | '}'),
    }
}

fn excerpt(matched: &str) -> String {
    matched.chars().take(60).collect()
}

/// True for words that carry no upstream-specific meaning. Expects lowercase.
pub fn is_stopword(word: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| STOPWORDS.iter().copied().collect())
        .contains(word)
}

/// An ASCII case-insensitive automaton over `patterns`. The DFA is fine for
/// the small dictionaries here and is the fastest to search with.
pub fn dictionary<'p>(
    patterns: impl IntoIterator<Item = &'p str>,
    match_kind: MatchKind,
) -> AhoCorasick {
    let patterns: Vec<&str> = patterns.into_iter().collect();
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(match_kind)
        .kind(Some(AhoCorasickKind::DFA))
        .build(&patterns)
        .or_else(|_| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(match_kind)
                .build(&patterns)
        })
        .unwrap_or_else(|_| {
            AhoCorasick::new(std::iter::empty::<&str>()).expect("an empty automaton always builds")
        })
}

/// An ASCII case-insensitive, overlapping-capable automaton that is quick to
/// build (a contiguous NFA), for per-audit dictionaries searched over little text.
pub fn quick_dictionary<'p>(patterns: impl IntoIterator<Item = &'p str>) -> AhoCorasick {
    let patterns: Vec<&str> = patterns.into_iter().collect();
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        .build(&patterns)
        .unwrap_or_else(|_| dictionary(patterns.iter().copied(), MatchKind::Standard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_are_large_enough_and_lowercase() {
        assert!(GENERIC_PHRASES.len() >= 30);
        for phrase in GENERIC_PHRASES {
            assert_eq!(*phrase, phrase.to_lowercase(), "{phrase}");
        }
        for word in STOPWORDS {
            assert_eq!(*word, word.to_lowercase(), "{word}");
        }
        assert!(Regex::new(PLACEHOLDER_PATTERN).is_ok());
    }

    #[test]
    fn finds_generic_phrases_case_insensitively_at_word_starts() {
        let found =
            scan_dictionary("We EMPOWER teams with Cutting-Edge, seamless tools. Unempowered.")
                .generic;
        let phrases: Vec<_> = found.iter().map(|hit| hit.phrase).collect();
        assert_eq!(phrases, vec!["empower", "cutting-edge", "seamless"]);
    }

    #[test]
    fn finds_placeholders() {
        let text = "TODO: fill\ntodo en Madrid\n{{ expert.name }} and [INSERT STEP 3] and <CLIENT_NAME> <BR>\nWait...\nand... then";
        let found: Vec<_> = find_placeholders(text)
            .into_iter()
            .map(|hit| hit.text)
            .collect();
        assert_eq!(
            found,
            vec![
                "TODO",
                "{{ expert.name }}",
                "[INSERT STEP 3]",
                "<CLIENT_NAME>",
                "..."
            ]
        );
    }

    #[test]
    fn stopwords() {
        assert!(is_stopword("about"));
        assert!(!is_stopword("anchor"));
    }
}
