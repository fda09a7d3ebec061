//! The feedback loop's IO: review submissions become stored feedback and
//! improvement items with weighted consensus, review gates close when no
//! critical finding is left open, corrected blocks resolve their items, and
//! the convergence table is assembled from the store.
//!
//! Decisions come from `factory_core::{consensus, feedback}`; this module
//! reads and writes the store and records every change as a run event
//! (`feedback_submitted`, `item_changed`) so the log explains each status.

use std::collections::{BTreeMap, BTreeSet};

use factory_core::consensus::{TesterRole, Verdict, Vote};
use factory_core::feedback::{
    self as loop_core, Convergence, ItemRef, ItemStats, ItemStatus, Priority, ReviewStats,
};
use factory_core::run::{BlockStatus, Event, EventRecord, RunDoc};
use factory_core::template::Runtime;
use factory_core::transitions::{self, Principal};
use factory_store::{FeedbackRecord, ImprovementItem, Writes};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Engine, EngineError, Result, RunHandle, now_ms};

/// One review submission, as the review pages and the API send it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// Verdicts on items (extraction leaves, or audit findings).
    #[serde(default)]
    pub items: Vec<SubmittedItem>,
    /// Expert audit: one per scenario.
    #[serde(default)]
    pub ratings: Vec<Rating>,
    /// Expert audit: answers to the open questions.
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default)]
    pub free_text: String,
    /// Close the review: approve the page's gate when no critical item is
    /// open or in triage.
    #[serde(default)]
    pub close: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubmittedItem {
    /// "The same item" across testers, e.g. `voice-extractor:$.tone`.
    pub source_key: String,
    /// The block whose output the verdict is about.
    pub skill_target: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub correction: String,
    /// The text being judged (the extraction leaf, or the finding).
    #[serde(default)]
    pub source_text: String,
    /// `critical`, `high`, `medium` (default) or `low`.
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub finding_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rating {
    pub scenario: String,
    pub sounds_like_me: bool,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub question: String,
    pub answer: String,
}

/// Who is reviewing: from a review link's scope, or given by an API caller.
#[derive(Debug, Clone)]
pub struct Tester {
    pub name: String,
    pub role: TesterRole,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemChange {
    pub item: String,
    pub source_key: String,
    pub from: String,
    pub to: String,
    pub consensus_score: f64,
    pub reason: String,
}

pub use factory_core::feedback::GateOutcome;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubmitOutcome {
    pub feedback_id: String,
    pub version: String,
    pub changes: Vec<ItemChange>,
    /// Set when the submission asked to close the review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateOutcome>,
    /// Sentences of the free text that named no block: kept as free text
    /// only (audit-analyze made items of the others).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unclassified: Vec<String>,
    /// What classified the free text: `llm:<model>` (with keywords for
    /// what the model did not place) or `keywords`; absent without free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<String>,
    /// Why the llm step's answer was not used, wholly or in part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis_problem: Option<String>,
}

/// `PATCH improvement-items/{id}`: a person settles an item.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub expert_correction: Option<String>,
    #[serde(default)]
    pub resolved_in_version: Option<String>,
    #[serde(default)]
    pub resolution_notes: Option<String>,
    /// Accepted for the seed's request shape; must match the item when given.
    #[serde(default)]
    pub factory_block_id: Option<String>,
    #[serde(default)]
    pub factory_run_id: Option<String>,
}

/// `POST corrections-ingest` (seed `002`'s request).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    pub run_id: String,
    #[serde(default)]
    pub expert_slug: Option<String>,
    #[serde(default)]
    pub feedback_id: String,
    #[serde(default)]
    pub items_created: u32,
    #[serde(default)]
    pub by_skill: BTreeMap<String, u32>,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestResponse {
    pub acknowledged: bool,
    pub run_status: String,
    pub blocks_to_rerun: Vec<String>,
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::BadReview(message.into())
}

/// An item's stored status, typed (an unknown one counts as open).
fn status_of(item: &ImprovementItem) -> ItemStatus {
    item.status.parse().unwrap_or(ItemStatus::Open)
}

/// The review page a block serves (`extraction-review`, `expert-audit`).
pub fn review_page(handle: &RunHandle, block: &str) -> Result<String> {
    let spec = handle.pipeline().block(block).ok_or_else(|| {
        EngineError::Transition(transitions::TransitionError::UnknownBlock(
            block.to_string(),
        ))
    })?;
    let page = spec
        .inputs
        .config
        .get("page")
        .and_then(Value::as_str)
        .filter(|_| {
            spec.runtime == Runtime::Builtin
                && spec.inputs.config.get("builtin").and_then(Value::as_str) == Some("review-page")
        });
    page.map(str::to_string).ok_or_else(|| {
        bad(format!(
            "block `{block}` has no review page (only `review-page` builtin blocks do)"
        ))
    })
}

/// What one review submission changes, before it is written.
struct DecidedReview {
    record: FeedbackRecord,
    items: Vec<ImprovementItem>,
    events: Vec<Event>,
    changes: Vec<ItemChange>,
    gate: Option<GateOutcome>,
    /// `review.submitted`, and `run.ready_to_ship` when this review is the
    /// one that meets the run's convergence criteria.
    emitted: Vec<factory_core::bus::BusEvent>,
}

/// The feed events of a review: its summary, and whether it made the run
/// ready to ship (convergence before it — `feedback` without its last,
/// the new, record — and after it).
#[allow(clippy::too_many_arguments)]
fn review_events(
    handle: &RunHandle,
    feedback: &[FeedbackRecord],
    items_before: &[ImprovementItem],
    items_after: &[ImprovementItem],
    page: &str,
    record: &FeedbackRecord,
    changes: &[ItemChange],
    judged: usize,
) -> Vec<factory_core::bus::BusEvent> {
    use factory_core::bus;
    let accepted = items_after
        .iter()
        .filter(|i| status_of(i) == ItemStatus::Accepted)
        .count();
    let critical = items_after
        .iter()
        .filter(|i| i.priority.parse::<Priority>().ok() == Some(Priority::Critical))
        .filter(|i| {
            matches!(
                status_of(i),
                ItemStatus::Open | ItemStatus::Accepted | ItemStatus::Triage
            )
        })
        .count();
    let summary = bus::ReviewSummary {
        feedback_id: &record.id,
        source: &record.source,
        tester: &record.tester,
        role: &record.tester_role,
        version: &record.version,
        free_text: &record.free_text,
        items: judged,
        changed: changes.iter().filter(|c| c.from != c.to).count(),
        accepted,
        critical,
    };
    let mut out = vec![bus::review_submitted(handle.doc(), page, &summary)];
    let before = feedback.len().saturating_sub(1);
    let was_ready = convergence_of(handle, &feedback[..before], items_before).ready_to_ship;
    let now = convergence_of(handle, feedback, items_after);
    if now.ready_to_ship && !was_ready {
        out.push(bus::ready_to_ship(handle.doc(), now.version));
    }
    out
}

/// Every vote of a run's submissions, by item, in submission order, with the
/// run version each was cast in. Parsed once per submission: recomputing an
/// item only filters its own list.
type VotesByItem = BTreeMap<String, Vec<(u32, Vote, SubmittedItem)>>;

fn votes_by_item(feedback: &[FeedbackRecord]) -> VotesByItem {
    let mut votes: VotesByItem = BTreeMap::new();
    for record in feedback {
        let version = loop_core::parse_version(&record.version).unwrap_or(1);
        let Ok(role) = record.tester_role.parse::<TesterRole>() else {
            continue;
        };
        let items: Vec<SubmittedItem> = record
            .items
            .get("items")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for item in items {
            votes.entry(item.source_key.clone()).or_default().push((
                version,
                Vote {
                    tester: record.tester.clone(),
                    role,
                    verdict: item.verdict,
                    feedback_id: record.id.clone(),
                },
                item,
            ));
        }
    }
    votes
}

/// The votes on one item; after a resolution only later versions' count.
fn votes_for(
    votes: &VotesByItem,
    source_key: &str,
    after_version: u32,
) -> Vec<(Vote, SubmittedItem)> {
    votes
        .get(source_key)
        .into_iter()
        .flatten()
        .filter(|(version, _, _)| *version > after_version)
        .map(|(_, vote, item)| (vote.clone(), item.clone()))
        .collect()
}

impl Engine {
    /// Stores a review of `block`'s page by `tester`, recomputes consensus for
    /// every item it touches, records each status change with its reason, and
    /// when asked closes the review gate.
    pub async fn submit_feedback(
        &self,
        principal: Principal<'_>,
        run_id: &str,
        block: &str,
        tester: &Tester,
        submission: Submission,
    ) -> Result<SubmitOutcome> {
        let actor = principal.actor;
        let mut handle = self.open(run_id).await?;
        let run_id = handle.doc().run_id.clone();
        let source = review_page(&handle, block)?;
        if !handle.doc().blocks[block]
            .history
            .iter()
            .any(|a| a.outcome == Some(factory_core::run::AttemptOutcome::Succeeded))
        {
            return Err(bad(format!(
                "block `{block}` has not published its review page yet (it is {}); review once it has run",
                handle.doc().blocks[block].status.as_str()
            )));
        }
        let pipeline = handle.pipeline().clone();
        if submission.close {
            // Refused before anything is stored: a review that may not close
            // its gate must not leave its votes behind either.
            let log = self.store.events(&run_id, 0).await?;
            transitions::may_approve(&pipeline, &log, block, principal)?;
        }
        let mut keys = BTreeSet::new();
        for (n, item) in submission.items.iter().enumerate() {
            let at = format!("items[{n}]");
            if item.source_key.trim().is_empty() {
                return Err(bad(format!(
                    "{at}.source_key is empty: name the item being judged"
                )));
            }
            if pipeline.block(&item.skill_target).is_none() {
                return Err(bad(format!(
                    "{at}.skill_target `{}` is not a block of template `{}`",
                    item.skill_target,
                    pipeline.template().id
                )));
            }
            if let Some(Err(problem)) = item.priority.as_deref().map(str::parse::<Priority>) {
                return Err(bad(format!("{at}.priority {problem}")));
            }
            if !keys.insert(item.source_key.as_str()) {
                return Err(bad(format!(
                    "{at}: item `{}` is judged twice in one submission",
                    item.source_key
                )));
            }
        }
        // audit-analyze, once the marked items are known to be good (a bad
        // submission is refused before any model call): free text becomes
        // classified items beside them. A sentence a person marked as well
        // keeps the person's item.
        let mut submission = submission;
        let (analysis, classifier) = self
            .analyze(&pipeline, handle.doc(), block, &submission.free_text)
            .await;
        let marked: BTreeSet<String> = submission
            .items
            .iter()
            .map(|i| i.source_key.clone())
            .collect();
        submission.items.extend(
            machine_items(&analysis)
                .into_iter()
                .filter(|i| !marked.contains(&i.source_key)),
        );
        for _ in 0..crate::handle::MAX_CONFLICTS {
            let review = self
                .decide_review(&handle, block, &source, tester, &submission, principal)
                .await?;
            let writes = Writes {
                feedback: Some(&review.record),
                items: &review.items,
                emitted: &review.emitted,
                ..Writes::default()
            };
            let Some(records) = handle
                .apply_once(actor, review.events.clone(), &writes)
                .await?
            else {
                continue; // the run changed underneath: decide again from fresh reads
            };
            self.notify(&records, &handle);
            if review.gate.as_ref().is_some_and(|gate| gate.approved) {
                self.resolve_completed(&mut handle, actor, &records).await?;
            }
            return Ok(SubmitOutcome {
                feedback_id: review.record.id.clone(),
                version: review.record.version.clone(),
                changes: review.changes,
                gate: review.gate,
                unclassified: analysis.unclassified,
                classifier,
                analysis_problem: analysis.llm_problem,
            });
        }
        Err(EngineError::TooManyConflicts {
            run_id: run_id.clone(),
            tries: crate::handle::MAX_CONFLICTS,
        })
    }

    /// audit-analyze with the provider of the review page's model.
    async fn analyze(
        &self,
        pipeline: &factory_core::Pipeline,
        doc: &RunDoc,
        page: &str,
        free_text: &str,
    ) -> (factory_core::audit_analyze::Analysis, Option<String>) {
        let model = pipeline.block(page).and_then(|block| {
            transitions::effective_model(
                pipeline.template(),
                block,
                &doc.models,
                doc.default_model.as_deref(),
            )
        });
        analyze_free_text(self.config.llm.as_deref(), pipeline, model, page, free_text).await
    }

    /// Everything one review submission changes, decided from one read of
    /// the run's reviews and items: the feedback row, the items whose
    /// consensus moved, the events that explain each change and, when the
    /// review asks to close and may, the gate's approval. Written by the
    /// caller in one transaction.
    async fn decide_review(
        &self,
        handle: &RunHandle,
        block: &str,
        source: &str,
        tester: &Tester,
        submission: &Submission,
        principal: Principal<'_>,
    ) -> Result<DecidedReview> {
        let doc = handle.doc();
        let run_id = doc.run_id.clone();
        let version = doc.version;
        let now = now_ms();
        let feedback_id = format!("fb-{}", uuid::Uuid::now_v7().simple());
        let record = FeedbackRecord {
            id: feedback_id.clone(),
            run_id: run_id.clone(),
            version: format!("v{version}"),
            source: source.to_string(),
            tester: tester.name.clone(),
            tester_role: tester.role.as_str().to_string(),
            free_text: submission.free_text.clone(),
            items: json!({
                "items": submission.items,
                "ratings": submission.ratings,
                "answers": submission.answers,
            }),
            created_at: now,
        };
        // Consensus over every stored review plus this one (not yet stored).
        let mut feedback = self.store.feedback(&run_id).await?;
        feedback.push(record.clone());
        let votes = votes_by_item(&feedback);
        let all_items = self.store.items(&run_id, None, None).await?;
        let mut existing_items: BTreeMap<String, ImprovementItem> = all_items
            .iter()
            .map(|i| (i.source_key.clone(), i.clone()))
            .collect();
        let mut changes = Vec::new();
        let mut updated = Vec::new();
        let mut events = vec![Event::FeedbackSubmitted {
            feedback_id: feedback_id.clone(),
            source: source.to_string(),
            tester: tester.name.clone(),
            tester_role: tester.role.as_str().to_string(),
            version,
            verdicts: submission.items.len(),
        }];
        for submitted in &submission.items {
            let existing = existing_items.remove(&submitted.source_key);
            let resolved_in = existing
                .as_ref()
                .filter(|i| status_of(i) == ItemStatus::Resolved)
                .and_then(|i| i.resolved_in_version.as_deref())
                .and_then(loop_core::parse_version)
                .map_or(0, |v| v.saturating_sub(1));
            let votes = votes_for(&votes, &submitted.source_key, resolved_in);
            let only_votes: Vec<Vote> = votes.iter().map(|(v, _)| v.clone()).collect();
            let Some(verdict) =
                loop_core::judge_item(existing.as_ref().map(status_of), &only_votes, &feedback_id)
            else {
                continue; // cleared and never flagged: not a finding
            };
            let decided = verdict.consensus;
            let heaviest = verdict.heaviest.map(|index| &votes[index]);
            let mut item = existing.clone().unwrap_or_else(|| ImprovementItem {
                id: format!("item-{}", uuid::Uuid::now_v7().simple()),
                run_id: run_id.clone(),
                source_key: submitted.source_key.clone(),
                skill_target: submitted.skill_target.clone(),
                finding_type: String::new(),
                priority: Priority::Medium.as_str().to_string(),
                source_text: submitted.source_text.clone(),
                expert_correction: String::new(),
                status: ItemStatus::Open.as_str().to_string(),
                consensus_score: 0.0,
                flagged_by: json!([]),
                prompt_version: Some(format!("v{version}")),
                extraction_version: Some(format!("v{version}")),
                resolved_in_version: None,
                resolution_notes: None,
                source: source.to_string(),
                created_at: now,
                updated_at: now,
            });
            let from = verdict.from.map_or("new", ItemStatus::as_str).to_string();
            let to = verdict.to.as_str().to_string();
            if verdict.reopened {
                item.resolved_in_version = None;
                item.resolution_notes = None;
                item.prompt_version = Some(format!("v{version}"));
            }
            if let Some((_, heavy)) = heaviest {
                item.priority = heavy
                    .priority
                    .clone()
                    .unwrap_or_else(|| item.priority.clone());
                if !heavy.correction.trim().is_empty() {
                    item.expert_correction = heavy.correction.trim().to_string();
                }
                if !heavy.source_text.trim().is_empty() {
                    item.source_text = heavy.source_text.clone();
                }
                item.finding_type = heavy
                    .finding_type
                    .clone()
                    .unwrap_or_else(|| format!("{source}-finding"));
                item.skill_target = heavy.skill_target.clone();
            }
            item.status = to.clone();
            item.consensus_score = decided.score;
            item.flagged_by = json!(
                decided
                    .flagged_by
                    .iter()
                    .map(|v| json!({
                        "tester": v.tester,
                        "role": v.role.as_str(),
                        "weight": v.role.weight(),
                        "feedback_id": v.feedback_id,
                    }))
                    .collect::<Vec<_>>()
            );
            item.updated_at = now;
            if from != to {
                events.push(Event::ItemChanged {
                    item: item.id.clone(),
                    source_key: item.source_key.clone(),
                    skill_target: item.skill_target.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    reason: decided.reason.clone(),
                });
            }
            changes.push(ItemChange {
                item: item.id.clone(),
                source_key: item.source_key.clone(),
                from,
                to,
                consensus_score: decided.score,
                reason: decided.reason,
            });
            updated.push(item);
        }
        // The run's items as they will be after this review.
        let items_after: Vec<ImprovementItem> = all_items
            .iter()
            .filter(|i| !updated.iter().any(|u: &ImprovementItem| u.id == i.id))
            .chain(updated.iter())
            .cloned()
            .collect();
        // Closing: decided on those items.
        let gate = if submission.close {
            let after: Vec<(&str, Option<Priority>, ItemStatus)> = items_after
                .iter()
                .map(|i| (i.source_key.as_str(), i.priority.parse().ok(), status_of(i)))
                .collect();
            let outcome =
                loop_core::review_closes(block, &doc.blocks[block], &after, principal.actor);
            if outcome.approved {
                let log = self.store.events(&run_id, 0).await?;
                events.push(transitions::approve_as(
                    handle.pipeline(),
                    doc,
                    &log,
                    block,
                    principal,
                    Some(outcome.reason.clone()),
                )?);
            }
            Some(outcome)
        } else {
            None
        };
        let emitted = review_events(
            handle,
            &feedback,
            &all_items,
            &items_after,
            block,
            &record,
            &changes,
            submission.items.len(),
        );
        Ok(DecidedReview {
            record,
            items: updated,
            events,
            changes,
            gate,
            emitted,
        })
    }

    /// A person settles an item (status, priority, correction, resolution).
    pub async fn update_item(
        &self,
        actor: &str,
        item_id: &str,
        patch: ItemPatch,
    ) -> Result<ImprovementItem> {
        let mut item = self
            .store
            .item(item_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("improvement item `{item_id}`")))?;
        if let Some(run) = &patch.factory_run_id
            && *run != item.run_id
        {
            return Err(bad(format!(
                "factory_run_id `{run}` does not match the item's run `{}`",
                item.run_id
            )));
        }
        if let Some(block) = &patch.factory_block_id
            && *block != item.skill_target
        {
            return Err(bad(format!(
                "factory_block_id `{block}` does not match the item's skill_target `{}`",
                item.skill_target
            )));
        }
        let from = item.status.clone();
        if let Some(status) = &patch.status {
            let status: ItemStatus = status
                .parse()
                .map_err(|problem| bad(format!("status {problem}")))?;
            item.status = status.as_str().to_string();
        }
        if let Some(priority) = &patch.priority {
            let priority: Priority = priority
                .parse()
                .map_err(|problem| bad(format!("priority {problem}")))?;
            item.priority = priority.as_str().to_string();
        }
        if let Some(correction) = patch.expert_correction {
            item.expert_correction = correction;
        }
        let resolved = ItemStatus::Resolved.as_str();
        if item.status == resolved && from != resolved {
            let handle = self.open(&item.run_id).await?;
            item.resolved_in_version = Some(
                patch
                    .resolved_in_version
                    .clone()
                    .unwrap_or_else(|| format!("v{}", handle.doc().version)),
            );
        } else if let Some(version) = patch.resolved_in_version {
            item.resolved_in_version = Some(version);
        } else if from == resolved && item.status != resolved {
            // Reopened: it is no longer resolved in any version (the
            // convergence table would count it as settled otherwise).
            item.resolved_in_version = None;
        }
        if let Some(notes) = patch.resolution_notes.clone() {
            item.resolution_notes = Some(notes);
        }
        item.updated_at = now_ms();
        if from == item.status {
            self.store.put_item(&item).await?;
            return Ok(item);
        }
        // A status change and its event are one commit.
        let mut handle = self.open(&item.run_id).await?;
        // Settling the last open item can make the run ready to ship.
        let before = self.store.items(&item.run_id, None, None).await?;
        let after = replaced(&before, std::slice::from_ref(&item));
        let emitted = self.ready_flip(&handle, &before, &after).await?;
        let reason = match patch.resolution_notes {
            Some(notes) => format!("set by {actor}: {notes}"),
            None => format!("set by {actor}"),
        };
        let event = Event::ItemChanged {
            item: item.id.clone(),
            source_key: item.source_key.clone(),
            skill_target: item.skill_target.clone(),
            from,
            to: item.status.clone(),
            reason,
        };
        let writes = Writes {
            items: std::slice::from_ref(&item),
            emitted: &emitted,
            ..Writes::default()
        };
        for _ in 0..crate::handle::MAX_CONFLICTS {
            if let Some(records) = handle
                .apply_once(actor, vec![event.clone()], &writes)
                .await?
            {
                self.notify(&records, &handle);
                return Ok(item);
            }
        }
        Err(EngineError::TooManyConflicts {
            run_id: item.run_id.clone(),
            tries: crate::handle::MAX_CONFLICTS,
        })
    }

    /// `corrections-ingest`: an outside review system says it created items.
    pub async fn ingest(&self, actor: &str, request: IngestRequest) -> Result<IngestResponse> {
        let mut handle = self.open(&request.run_id).await?;
        let run_id = handle.doc().run_id.clone();
        for block in request.by_skill.keys() {
            if handle.pipeline().block(block).is_none() {
                return Err(bad(format!(
                    "by_skill names `{block}`, which is not a block of template `{}`",
                    handle.pipeline().template().id
                )));
            }
        }
        let event = Event::CorrectionsIngested {
            source: request.source.clone(),
            feedback_id: request.feedback_id.clone(),
            by_skill: request.by_skill.clone(),
        };
        let records = handle
            .apply(actor, |_, _, _| Ok(vec![event.clone()]))
            .await?;
        self.notify(&records, &handle);
        let accepted = self.store.items(&run_id, Some("accepted"), None).await?;
        let mut blocks: Vec<String> = accepted.iter().map(|i| i.skill_target.clone()).collect();
        blocks.extend(request.by_skill.keys().cloned());
        let blocks: BTreeSet<String> = blocks.into_iter().collect();
        let pipeline = handle.pipeline();
        let mut blocks: Vec<String> = blocks.into_iter().collect();
        blocks.sort_by_key(|b| {
            pipeline
                .index_of(b)
                .and_then(|i| pipeline.topo_order().iter().position(|t| *t == i))
        });
        Ok(IngestResponse {
            acknowledged: true,
            run_status: if accepted.is_empty() {
                handle.doc().status.as_str().to_string()
            } else {
                "corrections-pending".to_string()
            },
            blocks_to_rerun: blocks,
        })
    }

    /// The version-over-version table and the ship decision.
    pub async fn convergence(&self, run_id: &str) -> Result<(RunDoc, Convergence)> {
        let handle = self.open(run_id).await?;
        let feedback = self.store.feedback(&handle.doc().run_id).await?;
        let items = self.store.items(&handle.doc().run_id, None, None).await?;
        let table = convergence_of(&handle, &feedback, &items);
        Ok((handle.doc().clone(), table))
    }

    /// After blocks completed: the accepted items their router corrections
    /// carried become resolved in the run's current version.
    pub(crate) async fn resolve_completed(
        &self,
        handle: &mut RunHandle,
        actor: &str,
        records: &[EventRecord],
    ) -> Result<()> {
        let completed: Vec<String> = records
            .iter()
            .filter_map(|r| r.event.done_block().map(str::to_string))
            .filter(|block| {
                handle.doc().blocks.get(block).is_some_and(|s| {
                    s.status == BlockStatus::Done
                        && s.corrections.as_ref().is_some_and(|c| {
                            c.items.iter().any(|i| i.improvement_item_id.is_some())
                        })
                })
            })
            .collect();
        if completed.is_empty() {
            return Ok(());
        }
        let run_id = handle.doc().run_id.clone();
        let version = handle.doc().version;
        for block in completed {
            let items = self
                .store
                .items(&run_id, Some("accepted"), Some(&block))
                .await?;
            let refs: Vec<ItemRef> = items
                .iter()
                .map(|i| ItemRef {
                    id: i.id.clone(),
                    source_key: i.source_key.clone(),
                    skill_target: i.skill_target.clone(),
                    status: i.status.clone(),
                })
                .collect();
            let (events, note) = loop_core::resolutions(handle.doc(), &block, &refs);
            if events.is_empty() {
                continue;
            }
            let resolved: BTreeSet<&str> = events
                .iter()
                .filter_map(|e| match e {
                    Event::ItemChanged { item, .. } => Some(item.as_str()),
                    _ => None,
                })
                .collect();
            let now = now_ms();
            let resolved_items: Vec<ImprovementItem> = items
                .into_iter()
                .filter(|i| resolved.contains(i.id.as_str()))
                .map(|mut item| {
                    item.status = "resolved".to_string();
                    item.resolved_in_version = Some(format!("v{version}"));
                    item.resolution_notes = Some(note.clone());
                    item.updated_at = now;
                    item
                })
                .collect();
            // Resolving the last items can make the run ready to ship.
            let before = self.store.items(&run_id, None, None).await?;
            let after = replaced(&before, &resolved_items);
            let emitted = self.ready_flip(handle, &before, &after).await?;
            // The items, their events and the feed event: one commit.
            let writes = Writes {
                items: &resolved_items,
                emitted: &emitted,
                ..Writes::default()
            };
            let mut committed = None;
            for _ in 0..crate::handle::MAX_CONFLICTS {
                committed = handle.apply_once(actor, events.clone(), &writes).await?;
                if committed.is_some() {
                    break;
                }
            }
            let Some(records) = committed else {
                return Err(EngineError::TooManyConflicts {
                    run_id,
                    tries: crate::handle::MAX_CONFLICTS,
                });
            };
            self.notify(&records, handle);
        }
        Ok(())
    }

    /// `run.ready_to_ship` when changing the run's items from `before` to
    /// `after` makes it meet its convergence criteria (it did not before).
    async fn ready_flip(
        &self,
        handle: &RunHandle,
        before: &[ImprovementItem],
        after: &[ImprovementItem],
    ) -> Result<Vec<factory_core::bus::BusEvent>> {
        let feedback = self.store.feedback(&handle.doc().run_id).await?;
        let was = convergence_of(handle, &feedback, before).ready_to_ship;
        let now = convergence_of(handle, &feedback, after);
        Ok(if now.ready_to_ship && !was {
            vec![factory_core::bus::ready_to_ship(handle.doc(), now.version)]
        } else {
            Vec::new()
        })
    }
}

/// `items` with each of `changed` in place of the item of the same id.
fn replaced(items: &[ImprovementItem], changed: &[ImprovementItem]) -> Vec<ImprovementItem> {
    items
        .iter()
        .map(|item| {
            changed
                .iter()
                .find(|c| c.id == item.id)
                .unwrap_or(item)
                .clone()
        })
        .collect()
}

/// The version-over-version table of the run in `handle`, from its stored
/// reviews and items (read by the caller, who may need them for more).
pub(crate) fn convergence_of(
    handle: &RunHandle,
    feedback: &[FeedbackRecord],
    items: &[ImprovementItem],
) -> Convergence {
    let doc = handle.doc();
    let spec = handle
        .pipeline()
        .template()
        .convergence
        .clone()
        .unwrap_or_default();
    let reviews: Vec<ReviewStats> = feedback.iter().map(review_stats).collect();
    let items: Vec<ItemStats> = items
        .iter()
        .map(|i| ItemStats {
            priority: i.priority.clone(),
            status: i.status.clone(),
            opened_in: i
                .prompt_version
                .as_deref()
                .and_then(loop_core::parse_version)
                .unwrap_or(1),
            resolved_in: i
                .resolved_in_version
                .as_deref()
                .and_then(loop_core::parse_version),
        })
        .collect();
    let published = loop_core::published_versions(handle.pipeline(), doc);
    loop_core::convergence(doc, &spec, &reviews, &items, &published)
}

/// The run's accepted items that `router` routes (those of its `sources`
/// review pages, or all), most urgent first.
pub(crate) async fn accepted_items(
    store: &dyn factory_store::Store,
    run_id: &str,
    router: &factory_core::template::Block,
) -> Result<Vec<loop_core::AcceptedItem>> {
    // Validation refused bad sources; should one slip by, route nothing
    // rather than every page's items.
    let sources = match loop_core::router_sources(&router.inputs.config) {
        Ok(sources) => sources,
        Err(_) => Some(BTreeSet::new()),
    };
    let mut items: Vec<loop_core::AcceptedItem> = store
        .items(run_id, Some("accepted"), None)
        .await?
        .into_iter()
        .filter(|i| sources.as_ref().is_none_or(|s| s.contains(&i.source)))
        .map(|i| loop_core::AcceptedItem {
            id: i.id,
            source_key: i.source_key,
            skill_target: i.skill_target,
            priority: i.priority,
            source_text: i.source_text,
            expert_correction: i.expert_correction,
            source: if i.source.is_empty() {
                "review".to_string()
            } else {
                i.source
            },
            feedback_ids: {
                let mut ids: Vec<String> = i
                    .flagged_by
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|vote| vote.get("feedback_id")?.as_str().map(str::to_string))
                    .collect();
                ids.sort();
                ids.dedup();
                ids
            },
        })
        .collect();
    items.sort_by(|a, b| {
        loop_core::priority_rank(&a.priority)
            .cmp(&loop_core::priority_rank(&b.priority))
            .then(a.skill_target.cmp(&b.skill_target))
    });
    Ok(items)
}

/// The router's routing once `preceding` (its attempt's finish, or its gate's
/// approval) leaves it done: the `corrections_routed` event and the resets,
/// to commit together with `preceding`. No events when it is not done yet.
pub(crate) fn routing_after(
    pipeline: &factory_core::Pipeline,
    doc: &RunDoc,
    router: &str,
    preceding: &[Event],
    items: &[loop_core::AcceptedItem],
    now: factory_core::Millis,
) -> Result<Vec<Event>> {
    let mut scratch = doc.clone();
    factory_core::commit_in_place(&mut scratch, preceding.to_vec(), "scratch", now)?;
    if scratch
        .blocks
        .get(router)
        .is_none_or(|s| s.status != BlockStatus::Done)
    {
        return Ok(Vec::new());
    }
    Ok(loop_core::route(pipeline, &scratch, router, items)?.events)
}

/// audit-analyze: the llm step when `llm` serves `model` (the model's
/// answer checked, keywords for what it did not place), else — or when the
/// call fails — the keyword fallback. Returns the analysis and what
/// classified it (`llm:<model>` or `keywords`; None without free text).
pub async fn analyze_free_text(
    llm: Option<&factory_runtime::llm::LlmSettings>,
    pipeline: &factory_core::Pipeline,
    model: Option<&str>,
    page: &str,
    free_text: &str,
) -> (factory_core::audit_analyze::Analysis, Option<String>) {
    use factory_core::audit_analyze as analyze;
    if free_text.trim().is_empty() {
        return (analyze::Analysis::default(), None);
    }
    let keywords = || {
        (
            analyze::classify(pipeline, page, free_text),
            Some("keywords".to_string()),
        )
    };
    let (Some(settings), Some(ask)) = (llm, analyze::llm_ask(pipeline, page, free_text)) else {
        return keywords();
    };
    let Ok(resolved) = settings.resolve(model) else {
        return keywords();
    };
    let request = factory_llm::ChatRequest {
        model: resolved.model.clone(),
        system: vec![factory_llm::Part::cacheable(ask.system)],
        user: vec![factory_llm::Part::new(ask.user)],
        max_tokens: 2048,
        temperature: Some(0.0),
        response_format: factory_llm::ResponseFormat::JsonSchema {
            name: "findings".to_string(),
            schema: ask.schema,
        },
        ..Default::default()
    };
    match resolved.client.complete(&request, ANALYZE_TIMEOUT).await {
        Ok(reply) => {
            let analysis =
                analyze::classify_with_llm(pipeline, page, free_text, &reply.text, &reply.model);
            // The answer counts when it was read (even placing nothing) or
            // placed at least one sentence.
            let used = analysis.llm_problem.is_none()
                || analysis
                    .items
                    .iter()
                    .any(|i| matches!(i.method, analyze::Method::Llm { .. }));
            let classifier = if used {
                format!("llm:{}", reply.model)
            } else {
                "keywords".to_string()
            };
            (analysis, Some(classifier))
        }
        Err(error) => {
            tracing::warn!(%error, page, "audit-analyze's llm step failed; keywords used");
            let (mut analysis, classifier) = keywords();
            analysis.llm_problem = Some(format!(
                "the llm step failed ({error}); keywords classified the free text"
            ));
            (analysis, classifier)
        }
    }
}

/// How long audit-analyze's llm step may take before the keywords decide.
const ANALYZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// The items audit-analyze classified from a submission's free text, marked
/// as machine-classified in their source text and keyed by their sentence
/// (the same sentence from two testers is the same item).
fn machine_items(analysis: &factory_core::audit_analyze::Analysis) -> Vec<SubmittedItem> {
    analysis
        .items
        .iter()
        .map(|c| SubmittedItem {
            source_key: c.source_key.clone(),
            skill_target: c.skill_target.clone(),
            verdict: c.verdict,
            correction: c.sentence.clone(),
            source_text: format!("[{}] {}", c.method.mark(), c.sentence),
            priority: Some(c.priority.as_str().to_string()),
            finding_type: Some(c.finding_type.to_string()),
        })
        .collect()
}

/// True for the engine-run `corrections-router` builtin.
pub(crate) fn is_router(block: &factory_core::template::Block) -> bool {
    block.runtime == Runtime::Builtin
        && block.inputs.config.get("builtin").and_then(Value::as_str) == Some("corrections-router")
}

/// The router's attempt: its plan as the declared artifacts.
pub(crate) fn router_execution(
    pipeline: &factory_core::Pipeline,
    doc: &RunDoc,
    block: &factory_core::template::Block,
    items: &[loop_core::AcceptedItem],
) -> factory_runtime::Execution {
    let plan = loop_core::plan(pipeline, doc.version, &block.id, items);
    let mut execution = factory_runtime::Execution::default();
    for artifact in &block.outputs.artifacts {
        let content = match artifact.format {
            factory_core::template::ArtifactFormat::Json => {
                serde_json::to_string_pretty(&plan.value).unwrap_or_default()
            }
            _ if plan.targets.is_empty() => "no accepted items: proceed\n".to_string(),
            _ => format!("{}\n", plan.reason),
        };
        execution
            .artifacts
            .insert(artifact.key.clone(), content.into_bytes());
    }
    execution
        .metrics
        .insert("routed_items".to_string(), json!(items.len()));
    execution
}

/// A stored submission reduced to what the convergence table counts.
pub fn review_stats(record: &FeedbackRecord) -> ReviewStats {
    let ratings: Vec<Rating> = record
        .items
        .get("ratings")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let items: Vec<SubmittedItem> = record
        .items
        .get("items")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    ReviewStats {
        version: loop_core::parse_version(&record.version).unwrap_or(1),
        source: record.source.clone(),
        tester: record.tester.clone(),
        ratings: ratings
            .iter()
            .map(|r| (r.scenario.clone(), r.sounds_like_me))
            .collect(),
        verdicts: items
            .iter()
            .map(|i| (i.source_key.clone(), i.verdict))
            .collect(),
    }
}
