//! The meta-audit's specificity deep check: D2's sentence counts for one
//! artifact, as numbers rather than a score — how much of the text says
//! something only this subject would say.

use serde::{Deserialize, Serialize};

use crate::Artifact;
use crate::d2_specificity::{SubjectMatcher, count_sentences};
use crate::document::Document;

/// D2's counts for one artifact (see `docs/audit.md`, D2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Specificity {
    pub words: usize,
    /// Sentences of 3+ words (JSON: string values), the ones judged.
    pub sentences: usize,
    /// Sentences with a number, a proper noun, a quotation or the subject.
    pub specific: usize,
    /// Sentences with a stock phrase and no detail.
    pub generic: usize,
    pub subject_mentions: usize,
    /// Subject mentions per 1,000 words.
    pub subject_density: f64,
    /// `specific / sentences`: the share of subject-specific content.
    pub specific_share: f64,
    /// `generic / sentences`.
    pub generic_ratio: f64,
    /// Counted on evenly spaced windows of prose over 256 KB.
    pub sampled: bool,
}

/// The counts of `artifact`, or `None` when it has no prose to judge (not
/// written, blank, or no sentence of 3+ words).
pub fn specificity(artifact: &Artifact<'_>, subject: Option<&str>) -> Option<Specificity> {
    let document = Document::new(
        artifact.key,
        artifact.path,
        artifact.format,
        artifact.content,
    );
    let body = document
        .body
        .as_ref()
        .filter(|b| !b.is_blank() && !b.signals().noop)?;
    let matcher = subject.and_then(SubjectMatcher::new);
    let counts = count_sentences(body, matcher.as_ref());
    if counts.judged == 0 {
        return None;
    }
    let share = |n: usize| round3(n as f64 / counts.judged as f64);
    Some(Specificity {
        words: counts.words,
        sentences: counts.judged,
        specific: counts.specific,
        generic: counts.generic,
        subject_mentions: counts.mentions.len(),
        subject_density: if counts.words == 0 {
            0.0
        } else {
            round3(counts.mentions.len() as f64 * 1000.0 / counts.words as f64)
        },
        specific_share: share(counts.specific),
        generic_ratio: share(counts.generic),
        sampled: counts.sampled,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Which distinctive terms of an upstream artifact (D5's: frequent words of
/// 5+ letters outside the stopwords, proper nouns, numbers, JSON keys) the
/// outputs use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermUse {
    /// `block.key` of the upstream artifact.
    pub upstream: String,
    pub used: Vec<String>,
    pub unused: Vec<String>,
}

/// [`TermUse`] for each of `upstream`, looked for in `outputs`.
pub fn upstream_terms(outputs: &[Artifact<'_>], upstream: &[crate::Upstream<'_>]) -> Vec<TermUse> {
    let outputs: Vec<Document<'_>> = outputs
        .iter()
        .map(|a| Document::new(a.key, a.path, a.format, a.content))
        .collect();
    let labels: Vec<String> = upstream
        .iter()
        .map(|u| format!("{}.{}", u.block, u.key))
        .collect();
    let sources: Vec<Document<'_>> = upstream
        .iter()
        .zip(&labels)
        .map(|(u, label)| Document::new(u.key, label, u.format, Some(u.content)))
        .collect();
    crate::d5_consumption::term_use(&outputs, &sources)
        .into_iter()
        .zip(labels)
        .map(|((used, unused), upstream)| TermUse {
            upstream,
            used,
            unused,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn of(text: &str, subject: Option<&str>) -> Option<Specificity> {
        specificity(
            &Artifact {
                key: "k",
                path: "k.md",
                format: Format::Markdown,
                content: Some(text.as_bytes()),
            },
            subject,
        )
    }

    #[test]
    fn counts_specific_and_generic_sentences_and_the_subjects_mentions() {
        let text = "Marisol opens 15% above target.\nShe waits before she answers, every time.\nUnlock your potential with this approach.\nMarisol Vega says \"no\" twice.";
        let s = of(text, Some("Marisol Vega")).unwrap();
        assert_eq!((s.sentences, s.specific, s.generic), (4, 2, 1), "{s:?}");
        assert_eq!(s.subject_mentions, 2, "a full name counts once");
        assert_eq!(s.specific_share, 0.5);
        assert_eq!(s.generic_ratio, 0.25);
        assert!(s.subject_density > 50.0);
        // Without a subject its name still reads as a proper noun mid-sentence.
        assert_eq!(of(text, None).unwrap().subject_mentions, 0);
        assert!(of("", None).is_none());
        assert!(of("a b", None).is_none(), "no sentence of 3+ words");
    }

    #[test]
    fn upstream_terms_split_into_used_and_unused() {
        let upstream = "Marisol Vega anchors every negotiation with a reference price. Her anchoring ladder has three rungs.";
        let output = "The anchoring ladder opens every call.";
        let uses = upstream_terms(
            &[Artifact {
                key: "out",
                path: "out.md",
                format: Format::Markdown,
                content: Some(output.as_bytes()),
            }],
            &[crate::Upstream {
                block: "research",
                key: "notes",
                format: Format::Markdown,
                content: upstream.as_bytes(),
            }],
        );
        assert_eq!(uses.len(), 1);
        assert_eq!(uses[0].upstream, "research.notes");
        assert!(uses[0].used.contains(&"ladder".to_string()), "{uses:?}");
        assert!(
            uses[0].unused.contains(&"negotiation".to_string()),
            "{uses:?}"
        );
    }
}
