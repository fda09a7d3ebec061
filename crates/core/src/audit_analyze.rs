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

/// How a sentence was classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// By [`SYNONYMS`] and the block ids' words; the cue words that chose.
    Keywords(Vec<String>),
    /// By the llm step, with this model; `keywords_said` is the block the
    /// keywords would have chosen when that is another one (shown to the
    /// reviewers who vote on the item: a small model misplaces findings).
    Llm {
        model: String,
        keywords_said: Option<String>,
    },
}

impl Method {
    /// The mark an item's source text carries.
    pub fn mark(&self) -> String {
        match self {
            Method::Keywords(cues) => {
                format!(
                    "machine-classified from free text by keywords: {}",
                    cues.join(", ")
                )
            }
            Method::Llm {
                model,
                keywords_said: None,
            } => format!("machine-classified from free text by llm {model}"),
            Method::Llm {
                model,
                keywords_said: Some(other),
            } => format!(
                "machine-classified from free text by llm {model}; keywords pointed at {other}"
            ),
        }
    }
}

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
    /// One of [`FINDING_TYPES`].
    pub finding_type: &'static str,
    pub method: Method,
}

/// The finding types audit-analyze gives.
pub const FINDING_TYPES: &[&str] = &["inaccuracy", "missing", "voice", "suggestion"];

/// What the free text became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub items: Vec<Classified>,
    /// Sentences that name no block: kept as free text only.
    pub unclassified: Vec<String>,
    /// Why the llm step's answer was not used, wholly or for some sentences
    /// (those fell back to keywords).
    pub llm_problem: Option<String>,
}

/// Sentences read from one free text, at most.
pub const MAX_SENTENCES: usize = 20;

/// A block a finding on `page` may be about: upstream of the page (one a
/// corrections router can send it to).
struct Candidate<'a> {
    block: &'a crate::template::Block,
    cues: BTreeSet<String>,
}

fn candidates<'a>(pipeline: &'a Pipeline, page: &str) -> Vec<Candidate<'a>> {
    let Some(page_at) = pipeline.index_of(page) else {
        return Vec::new();
    };
    pipeline
        .blocks()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != page_at && pipeline.descendants(*i).contains(&page_at))
        .map(|(_, block)| Candidate {
            block,
            cues: cues(&block.id),
        })
        .collect()
}

/// The distinct sentences of `free_text`, at most [`MAX_SENTENCES`].
fn distinct_sentences(free_text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    sentences(free_text)
        .into_iter()
        .take(MAX_SENTENCES)
        // The same sentence twice is one finding.
        .filter(|s| seen.insert(s.to_lowercase()))
        .collect()
}

/// Classifies `free_text` submitted on the review page `page` by keywords.
pub fn classify(pipeline: &Pipeline, page: &str, free_text: &str) -> Analysis {
    if pipeline.index_of(page).is_none() {
        return Analysis::default();
    }
    let candidates = candidates(pipeline, page);
    let mut analysis = Analysis::default();
    for sentence in distinct_sentences(free_text) {
        match by_keywords(page, &sentence, &candidates) {
            Some(item) => analysis.items.push(item),
            None => analysis.unclassified.push(sentence),
        }
    }
    analysis
}

/// One sentence by keywords: the candidate with the most cue words in it.
fn by_keywords(page: &str, sentence: &str, candidates: &[Candidate<'_>]) -> Option<Classified> {
    let words = crate::gaps::words(sentence);
    let (target, cues) = candidates
        .iter()
        .map(|c| {
            (
                c.block.id.as_str(),
                c.cues.intersection(&words).cloned().collect::<Vec<_>>(),
            )
        })
        .filter(|(_, hit)| !hit.is_empty())
        .fold(None::<(&str, Vec<String>)>, |best, (id, hit)| match best {
            Some((_, ref b)) if b.len() > hit.len() => best,
            _ => Some((id, hit)),
        })?;
    let has = |list: &[&str]| list.iter().any(|w| contains_phrase(sentence, w));
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
    Some(Classified {
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
        source_key: source_key(page, sentence),
        sentence: sentence.to_string(),
        method: Method::Keywords(cues),
    })
}

/// What the llm step of audit-analyze asks a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmAsk {
    pub system: String,
    pub user: String,
    /// The answer's JSON schema (the candidates' ids are its block enum).
    pub schema: serde_json::Value,
}

/// The llm step's request for `free_text` on `page`: the candidate blocks
/// (id, name, what they do) and the numbered sentences. None when there is
/// nothing to classify.
pub fn llm_ask(pipeline: &Pipeline, page: &str, free_text: &str) -> Option<LlmAsk> {
    let candidates = candidates(pipeline, page);
    let sentences = distinct_sentences(free_text);
    if candidates.is_empty() || sentences.is_empty() {
        return None;
    }
    let mut system = String::from(
        "You classify a reviewer's free-text feedback on a pipeline's output into findings. \
For each sentence that is about the output of one of the blocks below, give the sentence's \
number, the block's id, the verdict (`wrong` when the output states something false, else \
`needs_work`), the priority (`critical` for anything unsafe or that must never be said, \
`high` for a false statement, `medium`, or `low` for a nit) and the finding type \
(`inaccuracy`, `missing`, `voice` or `suggestion`). Leave out sentences about no block \
(praise, remarks on the process). Answer with JSON only: \
{\"findings\": [{\"sentence\": 1, \"block\": \"<id>\", \"verdict\": \"wrong\", \"priority\": \"high\", \"finding_type\": \"inaccuracy\"}]}\n\nBlocks:\n",
    );
    for c in &candidates {
        system.push_str(&format!("- `{}`: {}", c.block.id, c.block.name));
        if let Some(description) = &c.block.description {
            let line: String = description.split_whitespace().collect::<Vec<_>>().join(" ");
            system.push_str(&format!(
                " — {}",
                line.chars().take(200).collect::<String>()
            ));
        }
        system.push('\n');
    }
    let mut user = format!("Feedback on the `{page}` page, by sentence:\n");
    for (n, sentence) in sentences.iter().enumerate() {
        user.push_str(&format!("{}. {sentence}\n", n + 1));
    }
    let ids: Vec<&str> = candidates.iter().map(|c| c.block.id.as_str()).collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"findings": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "sentence": {"type": "integer", "minimum": 1, "maximum": sentences.len()},
                "block": {"type": "string", "enum": ids},
                "verdict": {"type": "string", "enum": ["wrong", "needs_work"]},
                "priority": {"type": "string", "enum": ["critical", "high", "medium", "low"]},
                "finding_type": {"type": "string", "enum": FINDING_TYPES},
            },
            "required": ["sentence", "block", "verdict", "priority", "finding_type"],
        }}},
        "required": ["findings"],
    });
    Some(LlmAsk {
        system,
        user,
        schema,
    })
}

/// The free text classified from the llm step's `answer` (by `model`):
/// each sentence the answer places on a candidate block with a valid
/// verdict, priority and type becomes an llm finding; the others — and all
/// of them when the answer is not the asked-for JSON — are classified by
/// keywords, and [`Analysis::llm_problem`] says why. A model can add
/// findings but never lose one the keywords would have found.
pub fn classify_with_llm(
    pipeline: &Pipeline,
    page: &str,
    free_text: &str,
    answer: &str,
    model: &str,
) -> Analysis {
    let candidates = candidates(pipeline, page);
    let sentences = distinct_sentences(free_text);
    let mut placed: Vec<Option<Classified>> = vec![None; sentences.len()];
    let mut problems = Vec::new();
    match crate::answer::array_in(answer, "findings") {
        Err(problem) => problems.push(problem),
        Ok(findings) => {
            let mut bad = 0;
            for finding in findings {
                match llm_finding(page, &finding, &sentences, &candidates, model) {
                    Some((n, item)) if placed[n].is_none() => placed[n] = Some(item),
                    _ => bad += 1,
                }
            }
            if bad > 0 {
                problems.push(format!(
                    "{bad} finding(s) in the model's answer named no sentence or no candidate block, or repeated a sentence, or had an unknown verdict, priority or type"
                ));
            }
        }
    }
    let mut analysis = Analysis::default();
    for (sentence, llm) in sentences.into_iter().zip(placed) {
        match llm.or_else(|| by_keywords(page, &sentence, &candidates)) {
            Some(item) => analysis.items.push(item),
            None => analysis.unclassified.push(sentence),
        }
    }
    if !problems.is_empty() {
        problems.push("keywords classified the rest".to_string());
        analysis.llm_problem = Some(problems.join("; "));
    }
    analysis
}

fn llm_finding(
    page: &str,
    finding: &serde_json::Value,
    sentences: &[String],
    candidates: &[Candidate<'_>],
    model: &str,
) -> Option<(usize, Classified)> {
    let n = usize::try_from(finding.get("sentence")?.as_u64()?).ok()?;
    let sentence = sentences.get(n.checked_sub(1)?)?;
    let block = finding.get("block")?.as_str()?;
    let target = candidates.iter().find(|c| c.block.id == block)?;
    let verdict = match finding.get("verdict")?.as_str()? {
        "wrong" => Verdict::Wrong,
        "needs_work" | "needs-work" => Verdict::NeedsWork,
        _ => return None,
    };
    let priority: Priority = finding.get("priority")?.as_str()?.parse().ok()?;
    let kind = finding.get("finding_type")?.as_str()?;
    let finding_type = FINDING_TYPES.iter().find(|t| **t == kind)?;
    Some((
        n - 1,
        Classified {
            source_key: source_key(page, sentence),
            sentence: sentence.clone(),
            skill_target: target.block.id.clone(),
            verdict,
            priority,
            finding_type,
            method: Method::Llm {
                model: model.to_string(),
                keywords_said: by_keywords(page, sentence, candidates)
                    .map(|k| k.skill_target)
                    .filter(|other| *other != target.block.id),
            },
        },
    ))
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
        assert_eq!(
            analysis.items[0].method,
            Method::Keywords(vec!["pricing".to_string()])
        );
        assert_eq!(analysis.unclassified, ["It was lovely to read overall"]);
    }

    const FEEDBACK: &str = "The clone's pricing is wrong: it quotes $500 per call. \
                            She would never promise results in a week. \
                            It was lovely to read overall.";

    #[test]
    fn the_llm_step_is_asked_about_candidates_and_numbered_sentences() {
        let pipeline = clone_factory();
        let ask = llm_ask(&pipeline, "expert-audit", FEEDBACK).unwrap();
        assert!(
            ask.system.contains("- `offer-extractor`: "),
            "{}",
            ask.system
        );
        assert!(
            !ask.system.contains("`expert-audit`"),
            "the page is no candidate"
        );
        assert!(
            ask.user
                .contains("1. The clone's pricing is wrong: it quotes $500 per call")
        );
        assert!(ask.user.contains("3. It was lovely to read overall"));
        let ids = ask.schema["properties"]["findings"]["items"]["properties"]["block"]["enum"]
            .as_array()
            .unwrap();
        assert!(ids.iter().any(|id| id == "voice-extractor"));
        assert!(!ids.iter().any(|id| id == "expert-audit"));
        assert_eq!(llm_ask(&pipeline, "expert-audit", "ok. fine"), None);
    }

    #[test]
    fn the_llm_answer_classifies_and_keywords_fill_in_what_it_misses() {
        let pipeline = clone_factory();
        // The model places sentence 2 (no keyword names a block there) and
        // says nothing of sentence 1, which keywords still catch.
        let answer = "Here you go:\n```json\n{\"findings\": [{\"sentence\": 2, \"block\": \"voice-extractor\", \"verdict\": \"needs_work\", \"priority\": \"critical\", \"finding_type\": \"voice\"}]}\n```";
        let analysis = classify_with_llm(&pipeline, "expert-audit", FEEDBACK, answer, "m1");
        assert_eq!(analysis.llm_problem, None);
        let got: Vec<(&str, &str, &Method)> = analysis
            .items
            .iter()
            .map(|c| (c.skill_target.as_str(), c.priority.as_str(), &c.method))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "offer-extractor",
                    "high",
                    &Method::Keywords(vec!["pricing".into()])
                ),
                (
                    "voice-extractor",
                    "critical",
                    &Method::Llm {
                        model: "m1".into(),
                        keywords_said: None
                    }
                ),
            ]
        );
        assert_eq!(analysis.unclassified, ["It was lovely to read overall"]);
        assert_eq!(
            analysis.items[1].source_key,
            classify(
                &pipeline,
                "expert-audit",
                "She would never promise results in a week"
            )
            .unclassified
            .first()
            .map(|s| source_key("expert-audit", s))
            .unwrap(),
            "the same sentence is the same item whichever method placed it"
        );
    }

    #[test]
    fn a_junk_llm_answer_falls_back_to_keywords_and_says_why() {
        let pipeline = clone_factory();
        let keywords = classify(&pipeline, "expert-audit", FEEDBACK);
        for (answer, why) in [
            ("", "empty"),
            ("I think the pricing is off.", "no JSON object"),
            ("{\"findings\": [", "no JSON object"),
            ("{\"findings\": {}}", "no `findings` array"),
            ("{\"verdicts\": []} trailing }", "not valid JSON"),
        ] {
            let analysis = classify_with_llm(&pipeline, "expert-audit", FEEDBACK, answer, "m1");
            assert_eq!(analysis.items, keywords.items, "{answer:?}");
            let problem = analysis.llm_problem.unwrap();
            assert!(problem.contains(why), "{answer:?}: {problem}");
        }
        // Findings naming a block that is not upstream, a sentence that
        // does not exist, an unknown priority, or a sentence twice: dropped.
        let answer = r#"{"findings": [
            {"sentence": 1, "block": "expert-audit", "verdict": "wrong", "priority": "high", "finding_type": "inaccuracy"},
            {"sentence": 9, "block": "voice-extractor", "verdict": "wrong", "priority": "high", "finding_type": "inaccuracy"},
            {"sentence": 2, "block": "voice-extractor", "verdict": "wrong", "priority": "urgent", "finding_type": "inaccuracy"},
            {"sentence": 1, "block": "offer-extractor", "verdict": "wrong", "priority": "critical", "finding_type": "inaccuracy"},
            {"sentence": 1, "block": "soul-extractor", "verdict": "wrong", "priority": "low", "finding_type": "inaccuracy"}
        ]}"#;
        let analysis = classify_with_llm(&pipeline, "expert-audit", FEEDBACK, answer, "m1");
        assert!(analysis.llm_problem.unwrap().starts_with("4 finding(s)"));
        assert_eq!(analysis.items.len(), 1);
        assert_eq!(analysis.items[0].skill_target, "offer-extractor");
        assert_eq!(analysis.items[0].priority, Priority::Critical);
        assert_eq!(
            analysis.items[0].method,
            Method::Llm {
                model: "m1".into(),
                keywords_said: None
            }
        );
        // Found on SmolLM2: the model put a pricing sentence on a block the
        // keywords would not have; the item says so.
        let answer = r#"{"findings": [{"sentence": 1, "block": "expert-recon", "verdict": "wrong", "priority": "high", "finding_type": "inaccuracy"}]}"#;
        let analysis = classify_with_llm(&pipeline, "expert-audit", FEEDBACK, answer, "m1");
        assert_eq!(analysis.items[0].skill_target, "expert-recon");
        assert_eq!(
            analysis.items[0].method.mark(),
            "machine-classified from free text by llm m1; keywords pointed at offer-extractor"
        );
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
