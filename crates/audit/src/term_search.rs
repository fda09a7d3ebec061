//! Which terms occur in a text as whole words, ASCII case-insensitively.
//!
//! D5 looks for up to a few hundred upstream terms and names in an output.
//! An overlapping Aho-Corasick search visits every byte of the output with
//! an automaton and then throws away the hits inside longer words. A term
//! that starts with a letter or digit can only start where a word starts,
//! so this search hashes each word of the output once and compares the
//! candidate terms that begin with that word: the same answer for a third of
//! the work. Terms that start with anything else (rare: `#1 rule`) still go
//! through an automaton.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::patterns;
use crate::text::at_word_boundaries;

/// Text size from which a DFA, slow to build but the fastest to search,
/// beats hashing every word.
const DFA_TEXT_BYTES: usize = 256 * 1024;

/// For each of `terms`, whether it occurs in any of `texts` with no letter or
/// digit right before or after it, comparing ASCII letters case-insensitively.
pub fn found_as_words(terms: &[&str], texts: &[&str]) -> Vec<bool> {
    if texts.iter().map(|text| text.len()).sum::<usize>() >= DFA_TEXT_BYTES {
        by_automaton(terms, texts, dictionary)
    } else {
        by_word_starts(terms, texts)
    }
}

/// An overlapping search with `build`'s automaton, then a boundary check.
fn by_automaton(
    terms: &[&str],
    texts: &[&str],
    build: impl Fn(Vec<&str>) -> AhoCorasick,
) -> Vec<bool> {
    let mut found = vec![false; terms.len()];
    let nonempty: Vec<usize> = (0..terms.len())
        .filter(|&id| !terms[id].is_empty())
        .collect();
    if nonempty.is_empty() {
        return found;
    }
    let automaton = build(nonempty.iter().map(|&id| terms[id]).collect());
    for text in texts {
        for hit in automaton.find_overlapping_iter(*text) {
            let id = nonempty[hit.pattern().as_usize()];
            if !found[id] && at_word_boundaries(text, hit.start(), hit.end()) {
                found[id] = true;
            }
        }
    }
    found
}

fn dictionary(terms: Vec<&str>) -> AhoCorasick {
    patterns::dictionary(terms, MatchKind::Standard)
}

fn quick_dictionary(terms: Vec<&str>) -> AhoCorasick {
    patterns::quick_dictionary(terms)
}

/// Hashes each word of `texts` and compares the terms whose first word it is.
fn by_word_starts(terms: &[&str], texts: &[&str]) -> Vec<bool> {
    let mut found = vec![false; terms.len()];
    // Candidates by the hash of their first word, lowercased; a bitset of
    // those hashes turns most words of the text away before any map lookup.
    let mut by_first_word: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut filter = vec![0u64; FILTER_WORDS];
    let mut others = Vec::new();
    // Which first-word lengths occur (bit 63: 63 bytes or more): most words
    // of a text are turned away by their length before they are hashed.
    let mut lengths = 0u64;
    for (id, term) in terms.iter().enumerate() {
        if term.is_empty() {
            continue;
        }
        match first_word(term, 0) {
            Some(end) => {
                lengths |= length_bit(end);
                let hash = word_hash(&term.as_bytes()[..end]);
                filter[filter_slot(hash)] |= filter_bit(hash);
                by_first_word.entry(hash).or_default().push(id);
            }
            None => others.push(id),
        }
    }
    let mut missing: usize = by_first_word.values().map(Vec::len).sum();
    for text in texts {
        let bytes = text.as_bytes();
        let mut index = 0;
        while index < bytes.len() && missing > 0 {
            if bytes[index] < 0x80 && !bytes[index].is_ascii_alphanumeric() {
                index += 1;
                continue;
            }
            let Some(end) = first_word(text, index) else {
                index += char_len(bytes[index]);
                continue;
            };
            let hash = (lengths & length_bit(end - index) != 0)
                .then(|| word_hash(&bytes[index..end]))
                .filter(|&hash| filter[filter_slot(hash)] & filter_bit(hash) != 0);
            if let Some(hash) = hash {
                for &id in by_first_word.get(&hash).into_iter().flatten() {
                    let term = terms[id].as_bytes();
                    if !found[id]
                        && bytes
                            .get(index..index + term.len())
                            .is_some_and(|candidate| candidate.eq_ignore_ascii_case(term))
                        && at_word_boundaries(text, index, index + term.len())
                    {
                        found[id] = true;
                        missing -= 1;
                    }
                }
            }
            index = end;
        }
    }
    if !others.is_empty() {
        let other_terms: Vec<&str> = others.iter().map(|&id| terms[id]).collect();
        let found_others = by_automaton(&other_terms, texts, quick_dictionary);
        for (id, found_other) in others.into_iter().zip(found_others) {
            found[id] |= found_other;
        }
    }
    found
}

/// 64-bit words in the first-word filter (32 KiB bits: a few hundred terms
/// leave almost every other word out).
const FILTER_WORDS: usize = 512;

fn length_bit(length: usize) -> u64 {
    1 << length.min(63)
}

fn filter_slot(hash: u64) -> usize {
    (hash >> 6) as usize % FILTER_WORDS
}

fn filter_bit(hash: u64) -> u64 {
    1 << (hash & 63)
}

/// FNV-1a of the word with ASCII letters lowercased: a hash for a few bytes
/// is cheaper than SipHash, and only candidates that share it are compared.
fn word_hash(word: &[u8]) -> u64 {
    word.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The end of the run of letters and digits that starts at byte `start` of
/// `text`, or `None` when none starts there.
fn first_word(text: &str, start: usize) -> Option<usize> {
    let rest = text.get(start..)?;
    // ASCII first: most words are, and a byte test is cheaper than a char decode.
    let ascii_end = rest
        .bytes()
        .position(|byte| !byte.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    if rest.as_bytes().get(ascii_end).is_none_or(u8::is_ascii) {
        return (ascii_end > 0).then_some(start + ascii_end);
    }
    let mut end = start;
    for (offset, character) in rest.char_indices() {
        if !character.is_alphanumeric() {
            break;
        }
        end = start + offset + character.len_utf8();
    }
    (end > start).then_some(end)
}

/// Bytes in the UTF-8 sequence that `lead` starts (1 for a continuation byte,
/// so a scan that lands mid-character still moves on).
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whole_words_only_and_ascii_case_insensitive() {
        let terms = [
            "anchor",
            "anchor ladder",
            "ladder",
            "38",
            "38,400",
            "vega",
            "#1 rule",
            "émile",
            "",
        ];
        let text = "Marisol VEGA's Anchor-Ladder: open at $38,400. The #1 Rule. Émile laddered.";
        assert_eq!(
            by_word_starts(&terms, &[text]),
            vec![true, false, true, true, true, true, true, false, false]
        );
        assert_eq!(
            found_as_words(&terms, &[text]),
            by_automaton(&terms, &[text], dictionary)
        );
    }

    proptest! {
        #[test]
        fn agrees_with_the_automaton(
            terms in proptest::collection::vec("[aAb1 ,.#é-]{0,5}", 0..8),
            texts in proptest::collection::vec("[aAbB1 ,.#é-]{0,40}", 0..3),
        ) {
            let terms: Vec<&str> = terms.iter().map(String::as_str).collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let by_words = by_word_starts(&terms, &texts);
            prop_assert_eq!(&by_words, &by_automaton(&terms, &texts, dictionary));
            prop_assert_eq!(&by_words, &by_automaton(&terms, &texts, quick_dictionary));
        }
    }
}
