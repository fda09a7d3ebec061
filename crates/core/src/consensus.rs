//! Weighted consensus over reviewers' verdicts on one improvement item (seed
//! `002`: role weights 3.0 / 2.0 / 1.5 / 1.0 / 0.5, confirmed at a weighted
//! score ≥ 2.0, the heavier side wins a disagreement, a tie goes to triage).
//!
//! Pure: the feedback loop's store and API (issue 6) call [`consensus`] after
//! every submission and record the result with its `reason` as an event, so
//! each status change is explainable from the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who reviewed, which sets how much their verdict weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TesterRole {
    Expert,
    ProductLead,
    TechLead,
    Team,
    External,
}

impl TesterRole {
    pub fn weight(self) -> f64 {
        match self {
            TesterRole::Expert => 3.0,
            TesterRole::ProductLead => 2.0,
            TesterRole::TechLead => 1.5,
            TesterRole::Team => 1.0,
            TesterRole::External => 0.5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TesterRole::Expert => "expert",
            TesterRole::ProductLead => "product_lead",
            TesterRole::TechLead => "tech_lead",
            TesterRole::Team => "team",
            TesterRole::External => "external",
        }
    }

    pub const ALL: [TesterRole; 5] = [
        TesterRole::Expert,
        TesterRole::ProductLead,
        TesterRole::TechLead,
        TesterRole::Team,
        TesterRole::External,
    ];
}

impl std::str::FromStr for TesterRole {
    type Err = String;

    fn from_str(text: &str) -> Result<TesterRole, String> {
        TesterRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a tester role: use expert, product_lead, tech_lead, team or external"
                )
            })
    }
}

/// A reviewer's verdict on one item of an extraction or audit page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    NeedsWork,
    Wrong,
}

impl Verdict {
    /// `needs_work` and `wrong` flag a finding; `correct` clears it.
    pub fn flags(self) -> bool {
        !matches!(self, Verdict::Correct)
    }
}

/// One tester's verdict, from one feedback submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub tester: String,
    pub role: TesterRole,
    pub verdict: Verdict,
    pub feedback_id: String,
}

/// What the votes decide for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsensusStatus {
    /// Flagged, but not yet by enough weight (needs more validation).
    Open,
    /// Confirmed: the corrections router acts on it.
    Accepted,
    /// The heavier side says the item is correct.
    Rejected,
    /// Testers disagree with equal weight: a person decides.
    Triage,
}

/// The weight a finding needs to be confirmed.
pub const CONFIRMED_AT: f64 = 2.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    pub status: ConsensusStatus,
    /// Total weight of the testers who flagged the item (`consensus_score`).
    pub score: f64,
    /// Total weight of the testers who said it is correct.
    pub cleared: f64,
    /// The testers who flagged it, as `flagged_by` records.
    pub flagged_by: Vec<Vote>,
    /// One sentence a person can check against the votes.
    pub reason: String,
}

/// Decides an item from all votes on it; a tester who voted several times
/// counts once, with their latest vote (votes are in submission order).
pub fn consensus(votes: &[Vote]) -> Consensus {
    let mut latest: BTreeMap<&str, &Vote> = BTreeMap::new();
    for vote in votes {
        latest.insert(vote.tester.as_str(), vote);
    }
    let (flagging, clearing): (Vec<&Vote>, Vec<&Vote>) =
        latest.values().copied().partition(|v| v.verdict.flags());
    let weigh = |side: &[&Vote]| side.iter().map(|v| v.role.weight()).sum::<f64>();
    let (score, cleared) = (weigh(&flagging), weigh(&clearing));
    let names = |side: &[&Vote]| {
        side.iter()
            .map(|v| format!("{} ({} {:.1})", v.tester, v.role.as_str(), v.role.weight()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (status, reason) = if flagging.is_empty() && clearing.is_empty() {
        (ConsensusStatus::Open, "no votes yet".to_string())
    } else if flagging.is_empty() {
        (
            ConsensusStatus::Rejected,
            format!("only cleared, by {} ({cleared:.1})", names(&clearing)),
        )
    } else if !clearing.is_empty() && (score - cleared).abs() < 1e-9 {
        (
            ConsensusStatus::Triage,
            format!(
                "a tie: flagged by {} ({score:.1}) and cleared by {} ({cleared:.1}); a person decides",
                names(&flagging),
                names(&clearing)
            ),
        )
    } else if cleared > score {
        (
            ConsensusStatus::Rejected,
            format!(
                "cleared by {} ({cleared:.1}) outweighs flagged by {} ({score:.1})",
                names(&clearing),
                names(&flagging)
            ),
        )
    } else {
        let against = if clearing.is_empty() {
            String::new()
        } else {
            format!(
                ", outweighing cleared by {} ({cleared:.1})",
                names(&clearing)
            )
        };
        if score + 1e-9 >= CONFIRMED_AT {
            (
                ConsensusStatus::Accepted,
                format!(
                    "flagged by {} ({score:.1} ≥ {CONFIRMED_AT:.1}){against}",
                    names(&flagging)
                ),
            )
        } else {
            (
                ConsensusStatus::Open,
                format!(
                    "flagged by {} ({score:.1} < {CONFIRMED_AT:.1}): needs more validation{against}",
                    names(&flagging)
                ),
            )
        }
    };
    Consensus {
        status,
        score,
        cleared,
        flagged_by: flagging.into_iter().cloned().collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vote(tester: &str, role: TesterRole, verdict: Verdict) -> Vote {
        Vote {
            tester: tester.to_string(),
            role,
            verdict,
            feedback_id: format!("fb-{tester}"),
        }
    }

    use TesterRole::*;
    use Verdict::*;

    #[test]
    fn the_seed_examples() {
        // The expert alone confirms.
        let c = consensus(&[vote("samuel", Expert, NeedsWork)]);
        assert_eq!(c.status, ConsensusStatus::Accepted);
        assert_eq!(c.score, 3.0);
        assert!(c.reason.contains("samuel (expert 3.0)"), "{}", c.reason);
        // Two team members together confirm.
        let c = consensus(&[vote("derek", Team, Wrong), vote("aaron", Team, NeedsWork)]);
        assert_eq!((c.status, c.score), (ConsensusStatus::Accepted, 2.0));
        assert_eq!(c.flagged_by.len(), 2);
        // One external tester needs more validation.
        let c = consensus(&[vote("beta", External, NeedsWork)]);
        assert_eq!((c.status, c.score), (ConsensusStatus::Open, 0.5));
        assert!(c.reason.contains("needs more validation"));
    }

    #[test]
    fn the_heavier_side_wins_and_a_tie_goes_to_triage() {
        let c = consensus(&[
            vote("will", ProductLead, Correct),
            vote("samuel", Expert, NeedsWork),
        ]);
        assert_eq!(c.status, ConsensusStatus::Accepted);
        assert!(
            c.reason.contains("outweighing cleared by will"),
            "{}",
            c.reason
        );
        let c = consensus(&[
            vote("samuel", Expert, Correct),
            vote("will", ProductLead, Wrong),
        ]);
        assert_eq!(c.status, ConsensusStatus::Rejected);
        let c = consensus(&[
            vote("will", ProductLead, Correct),
            vote("derek", Team, NeedsWork),
            vote("aaron", Team, NeedsWork),
        ]);
        assert_eq!(
            (c.status, c.score, c.cleared),
            (ConsensusStatus::Triage, 2.0, 2.0)
        );
        assert!(c.reason.contains("tie"));
        // Flagged more than cleared but below the bar: still open.
        let c = consensus(&[
            vote("jason", TechLead, NeedsWork),
            vote("beta", External, Correct),
        ]);
        assert_eq!(c.status, ConsensusStatus::Open);
    }

    #[test]
    fn a_tester_counts_once_with_the_latest_vote() {
        let c = consensus(&[
            vote("derek", Team, NeedsWork),
            vote("derek", Team, NeedsWork),
        ]);
        assert_eq!((c.status, c.score), (ConsensusStatus::Open, 1.0));
        let c = consensus(&[
            vote("samuel", Expert, NeedsWork),
            vote("samuel", Expert, Correct),
        ]);
        assert_eq!(c.status, ConsensusStatus::Rejected);
        assert!(c.flagged_by.is_empty());
    }

    fn role() -> impl Strategy<Value = TesterRole> {
        prop_oneof![
            Just(Expert),
            Just(ProductLead),
            Just(TechLead),
            Just(Team),
            Just(External)
        ]
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![Just(Correct), Just(NeedsWork), Just(Wrong)]
    }

    proptest! {
        /// The order of distinct testers' votes never matters, and the status
        /// always agrees with the two totals.
        #[test]
        fn order_free_and_consistent(votes in proptest::collection::vec((0..6u8, role(), verdict()), 0..12)) {
            // One role per tester, as in a real run.
            let votes: Vec<Vote> = votes
                .iter()
                .map(|(t, _, v)| vote(&format!("t{t}"), votes.iter().find(|(u, _, _)| u == t).map(|x| x.1).unwrap_or(Team), *v))
                .collect();
            let mut deduped: BTreeMap<String, Vote> = BTreeMap::new();
            for v in &votes { deduped.insert(v.tester.clone(), v.clone()); }
            let mut reversed: Vec<Vote> = deduped.values().cloned().collect();
            reversed.reverse();
            let a = consensus(&votes);
            let b = consensus(&reversed);
            prop_assert_eq!(a.status, b.status);
            prop_assert!((a.score - b.score).abs() < 1e-9);
            match a.status {
                ConsensusStatus::Accepted => prop_assert!(a.score >= CONFIRMED_AT && a.score > a.cleared),
                ConsensusStatus::Rejected => prop_assert!(a.cleared > a.score || a.score == 0.0),
                ConsensusStatus::Triage => prop_assert!((a.score - a.cleared).abs() < 1e-9 && a.score > 0.0),
                ConsensusStatus::Open => prop_assert!(a.score < CONFIRMED_AT || votes.is_empty()),
            }
        }
    }
}
