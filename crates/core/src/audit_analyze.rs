//! audit-analyze's keyword fallback (seed 002: "Audit Submit → audit-analyze
//! → improvement_items (classified findings)"): the free text of a review
//! submission, split into sentences, each classified into a finding — the
//! block it is about, a verdict, a priority and a type — by documented
//! keywords, so it enters the same consensus and routing as the items a
//! reviewer marked. A sentence that names no block stays free text.
//!
//! Which block: a sentence's words are matched against each candidate
//! block's *cues* — the words of its id (`offer-extractor` → "offer"), and
//! for those words the synonyms of [`SYNONYMS`] ("price", "pricing", "cta"
//! → offer). Candidates are the blocks upstream of the review page (the
//! ones a corrections router can send the finding to); the block with the
//! most cues in the sentence wins, on a tie the later one in the template
//! (the nearer the page, the likelier the reviewer saw its output:
//! `framework-extractor` over `expert-framework-creator`).

use std::collections::BTreeSet;

use crate::Pipeline;
use crate::consensus::Verdict;
use crate::feedback::Priority;

/// Words of block ids that say nothing about what the block makes.
const GENERIC: &[&str] = &[
    "extractor",
    "builder",
    "creator",
    "block",
    "page",
    "reviewer",
    "orchestrator",
    "setup",
    "sync",
    "publisher",
    "analyzer",
    "deep",
    "expert",
    "clone",
];

/// Cue word of a block id → more words that point at it.
pub const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "voice",
        &[
            "tone",
            "phrase",
            "phrases",
            "phrasing",
            "wording",
            "sounds",
            "catchphrase",
            "words",
        ],
    ),
    (
        "soul",
        &[
            "values",
            "value",
            "belief",
            "beliefs",
            "story",
            "identity",
            "personality",
            "mission",
        ],
    ),
    (
        "framework",
        &[
            "frameworks",
            "step",
            "steps",
            "method",
            "methods",
            "process",
        ],
    ),
    (
        "resource",
        &[
            "resources",
            "book",
            "books",
            "tool",
            "tools",
            "worksheet",
            "worksheets",
        ],
    ),
    (
        "offer",
        &[
            "offers", "price", "prices", "pricing", "upsell", "package", "packages", "cta", "cost",
        ],
    ),
    (
        "compiler",
        &[
            "answer",
            "answers",
            "respond",
            "responds",
            "response",
            "responses",
            "replied",
            "prompt",
        ],
    ),
    ("tester", &["scenario", "scenarios", "test", "tests"]),
    ("rubric", &["score", "scores", "scoring", "criteria"]),
    ("onboarding", &["intake", "welcome"]),
    ("magnet", &["lead", "freebie"]),
];

/// One classified sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// `free-text:<page>:<digest of the sentence>`: the same sentence from
    /// two testers is the same item.
    pub source_key: String,
    pub sentence: String,
    pub skill_target: String,
    pub verdict: Verdict,
    pub priority: Priority,
    /// `inaccuracy`, `missing`, `voice` or `suggestion`.
    pub finding_type: &'static str,
    /// The cue words that chose the block.
    pub cues: Vec<String>,
}

/// What the free text became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub items: Vec<Classified>,
    /// Sentences that name no block: kept as free text only.
    pub unclassified: Vec<String>,
}

/// Sentences read from one free text, at most.
pub const MAX_SENTENCES: usize = 20;

/// Classifies `free_text` submitted on the review page `page`.
pub fn classify(pipeline: &Pipeline, page: &str, free_text: &str) -> Analysis {
    let Some(page_at) = pipeline.index_of(page) else {
        return Analysis::default();
    };
    // Upstream of the page: the blocks the page has among its ancestors.
    let candidates: Vec<(&str, BTreeSet<String>)> = pipeline
        .blocks()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != page_at && pipeline.descendants(*i).contains(&page_at))
        .map(|(_, b)| (b.id.as_str(), cues(&b.id)))
        .filter(|(_, cues)| !cues.is_empty())
        .collect();
    let mut analysis = Analysis::default();
    let mut seen = BTreeSet::new();
    for sentence in sentences(free_text).into_iter().take(MAX_SENTENCES) {
        // The same sentence twice is one finding.
        if !seen.insert(sentence.to_lowercase()) {
            continue;
        }
        let words = crate::gaps::words(&sentence);
        let best = candidates
            .iter()
            .map(|(id, cues)| (*id, cues.intersection(&words).cloned().collect::<Vec<_>>()))
            .filter(|(_, hit)| !hit.is_empty())
            .fold(None::<(&str, Vec<String>)>, |best, (id, hit)| match best {
                Some((_, ref b)) if b.len() > hit.len() => best,
                _ => Some((id, hit)),
            });
        match best {
            Some((target, cues)) => {
                let has = |list: &[&str]| list.iter().any(|w| contains_phrase(&sentence, w));
                let wrong = has(&[
                    "wrong",
                    "false",
                    "incorrect",
                    "not true",
                    "untrue",
                    "lie",
                    "lies",
                    "made up",
                    "invented",
                ]);
                let missing = has(&[
                    "missing",
                    "forgot",
                    "forgets",
                    "doesn't mention",
                    "does not mention",
                    "lacks",
                    "left out",
                    "no mention",
                ]);
                let priority = if has(&[
                    "dangerous",
                    "unsafe",
                    "illegal",
                    "critical",
                    "must not",
                    "never say",
                ]) {
                    Priority::Critical
                } else if wrong || has(&["never"]) {
                    Priority::High
                } else if has(&["minor", "small", "typo", "nit", "slightly"]) {
                    Priority::Low
                } else {
                    Priority::Medium
                };
                analysis.items.push(Classified {
                    finding_type: if wrong {
                        "inaccuracy"
                    } else if missing {
                        "missing"
                    } else if target.contains("voice") {
                        "voice"
                    } else {
                        "suggestion"
                    },
                    verdict: if wrong {
                        Verdict::Wrong
                    } else {
                        Verdict::NeedsWork
                    },
                    priority,
                    skill_target: target.to_string(),
                    source_key: source_key(page, &sentence),
                    sentence,
                    cues,
                });
            }
            None => analysis.unclassified.push(sentence),
        }
    }
    analysis
}

fn source_key(page: &str, sentence: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(sentence.to_lowercase().as_bytes()));
    format!("free-text:{page}:{}", &digest[..12])
}

/// A block's cue words: its id's words but the generic ones, and their synonyms.
fn cues(id: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for word in id
        .split(['-', '_'])
        .filter(|w| w.len() >= 3 && !GENERIC.contains(w))
    {
        out.insert(word.to_string());
        if let Some((_, more)) = SYNONYMS.iter().find(|(cue, _)| *cue == word) {
            out.extend(more.iter().map(|w| w.to_string()));
        }
    }
    out
}

/// The sentences of a text: split at `.`, `!`, `?`, `;` and line breaks,
/// trimmed, those of three words or more, each at most 500 characters.
fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', ';', '\n'])
        .map(str::trim)
        .filter(|s| s.split_whitespace().count() >= 3)
        .map(|s| s.chars().take(500).collect())
        .collect()
}

/// `phrase` in `sentence` as whole words, case aside.
fn contains_phrase(sentence: &str, phrase: &str) -> bool {
    let sentence = format!(
        " {} ",
        sentence
            .to_lowercase()
            .replace(|c: char| !c.is_alphanumeric() && c != '\'', " ")
    );
    sentence.contains(&format!(" {phrase} "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone_factory() -> Pipeline {
        let validated =
            crate::validate::validate_str(include_str!("../../../templates/clone-factory.json"));
        validated.pipeline.unwrap()
    }

    #[test]
    fn sentences_become_findings_for_the_blocks_they_name() {
        let pipeline = clone_factory();
        let text = "The clone's pricing is wrong: it quotes $500 per call. \
                    Her tone is too formal in the welcome!\n\
                    It forgot the Anchor Ladder steps entirely; \
                    It was lovely to read overall. ok";
        let analysis = classify(&pipeline, "expert-audit", text);
        let got: Vec<(&str, Verdict, Priority, &str)> = analysis
            .items
            .iter()
            .map(|c| {
                (
                    c.skill_target.as_str(),
                    c.verdict,
                    c.priority,
                    c.finding_type,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "offer-extractor",
                    Verdict::Wrong,
                    Priority::High,
                    "inaccuracy"
                ),
                (
                    "voice-extractor",
                    Verdict::NeedsWork,
                    Priority::Medium,
                    "voice"
                ),
                (
                    "framework-extractor",
                    Verdict::NeedsWork,
                    Priority::Medium,
                    "missing"
                ),
            ]
        );
        assert_eq!(analysis.items[0].cues, ["pricing"]);
        assert_eq!(analysis.unclassified, ["It was lovely to read overall"]);
    }

    #[test]
    fn only_blocks_upstream_of_the_page_are_candidates() {
        let pipeline = clone_factory();
        // The extraction review sits before the compiler: "answers" names
        // clone-compiler, which the review cannot send corrections to.
        let analysis = classify(
            &pipeline,
            "extraction-reviewer",
            "The clone's answers are far too long",
        );
        assert!(analysis.items.is_empty(), "{analysis:?}");
        assert_eq!(analysis.unclassified.len(), 1);
        assert_eq!(
            classify(&pipeline, "no-such-page", "The pricing is wrong here"),
            Analysis::default()
        );
        let many: String = (0..50)
            .map(|n| format!("The pricing is wrong {n} times. "))
            .collect();
        assert_eq!(
            classify(&pipeline, "expert-audit", &many).items.len(),
            MAX_SENTENCES
        );
        let twice = "The pricing is wrong. The pricing is WRONG.";
        assert_eq!(classify(&pipeline, "expert-audit", twice).items.len(), 1);
    }
}
