//! The feedback loop's decisions (seed `002`): routing accepted findings back
//! to the blocks that caused them, resolving them when those blocks complete,
//! the review pages' items, and the version-over-version convergence table
//! with its ship criteria.
//!
//! Pure like the scheduler: the engine reads improvement items and review
//! submissions from the store, hands them here as plain values, and records
//! the events this module returns, so every routing and resolution is
//! explainable from the run's log.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::consensus::Verdict;
use crate::pipeline::Pipeline;
use crate::run::{BlockStatus, CorrectionItem, Corrections, Event, RunDoc};
use crate::template::ConvergenceSpec;
use crate::transitions::TransitionError;

/// Where a finding came from: the two review pages of seed `002`.
pub const EXTRACTION_REVIEW: &str = "extraction-review";
pub const EXPERT_AUDIT: &str = "expert-audit";

/// An accepted improvement item, as the router needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedItem {
    pub id: String,
    pub source_key: String,
    pub skill_target: String,
    /// `critical`, `high`, `medium` or `low`.
    pub priority: String,
    pub source_text: String,
    pub expert_correction: String,
    /// Which review produced it (`extraction-review`, `expert-audit`, …).
    pub source: String,
    /// The submissions that flagged it (seed 002's `feedback_id`s).
    pub feedback_ids: Vec<String>,
}

/// What one pass of the corrections router decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The `BlockReset`s then `CorrectionsRouted`; empty when nothing is routed.
    pub events: Vec<Event>,
    /// The `correction-plan` artifact: items grouped by target block.
    pub plan: Value,
    /// The blocks that get corrections, in pipeline order.
    pub targets: Vec<String>,
}

/// How urgent a finding is; routing and display put critical first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Critical,
    High,
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Medium,
        Priority::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(text: &str) -> Result<Priority, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not one of critical, high, medium, low"))
    }
}

/// Where an improvement item stands. Stored as its name; the engine's
/// decisions compare these, not strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    Open,
    Accepted,
    Rejected,
    Triage,
    Resolved,
}

impl ItemStatus {
    pub const ALL: [ItemStatus; 5] = [
        ItemStatus::Open,
        ItemStatus::Accepted,
        ItemStatus::Rejected,
        ItemStatus::Triage,
        ItemStatus::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Open => "open",
            ItemStatus::Accepted => "accepted",
            ItemStatus::Rejected => "rejected",
            ItemStatus::Triage => "triage",
            ItemStatus::Resolved => "resolved",
        }
    }
}

impl std::str::FromStr for ItemStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<ItemStatus, String> {
        ItemStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!("`{text}` is not one of open, accepted, rejected, triage, resolved")
            })
    }
}

impl From<crate::consensus::ConsensusStatus> for ItemStatus {
    fn from(status: crate::consensus::ConsensusStatus) -> ItemStatus {
        use crate::consensus::ConsensusStatus;
        match status {
            ConsensusStatus::Open => ItemStatus::Open,
            ConsensusStatus::Accepted => ItemStatus::Accepted,
            ConsensusStatus::Rejected => ItemStatus::Rejected,
            ConsensusStatus::Triage => ItemStatus::Triage,
        }
    }
}

/// What one review does to one item, decided from every vote that counts
/// (after a resolution, only later versions' votes).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemVerdict {
    /// `None` for an item no earlier review had flagged.
    pub from: Option<ItemStatus>,
    pub to: ItemStatus,
    /// A resolved item flagged again: its resolution no longer holds.
    pub reopened: bool,
    pub consensus: crate::consensus::Consensus,
    /// The heaviest flagging vote (an index into `votes`): its priority and
    /// correction become the item's.
    pub heaviest: Option<usize>,
}

/// Judges one item after the review `this_review` (whose votes are among
/// `votes`). `None` when the item was never flagged and is not now: not a
/// finding. A person's decision (PATCH) stands while the votes leave the
/// consensus where it was; a resolved item stays resolved unless flagged again.
pub fn judge_item(
    existing: Option<ItemStatus>,
    votes: &[crate::consensus::Vote],
    this_review: &str,
) -> Option<ItemVerdict> {
    use crate::consensus::consensus;
    let decided = consensus(votes);
    if existing.is_none() && decided.flagged_by.is_empty() {
        return None;
    }
    let before: Vec<crate::consensus::Vote> = votes
        .iter()
        .filter(|vote| vote.feedback_id != this_review)
        .cloned()
        .collect();
    let unchanged = consensus(&before).status == decided.status;
    let heaviest = votes
        .iter()
        .enumerate()
        .filter(|(_, vote)| vote.verdict.flags())
        .max_by(|(_, a), (_, b)| a.role.weight().total_cmp(&b.role.weight()))
        .map(|(index, _)| index);
    let mut to = ItemStatus::from(decided.status);
    let mut reopened = false;
    match existing {
        Some(ItemStatus::Resolved) if decided.flagged_by.is_empty() => to = ItemStatus::Resolved,
        Some(ItemStatus::Resolved) => reopened = true,
        Some(status) if unchanged => to = status,
        _ => {}
    }
    Some(ItemVerdict {
        from: existing,
        to,
        reopened,
        consensus: decided,
        heaviest,
    })
}

/// Whether a review may close its page's gate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateOutcome {
    pub approved: bool,
    pub reason: String,
}

/// A review closes its gate when the block waits at its after-gate and no
/// critical item of the run is open or in triage. `items`: every item of
/// the run as it will be after the review, as `(source_key, priority, status)`.
pub fn review_closes(
    block: &str,
    state: &crate::run::BlockState,
    items: &[(&str, Option<Priority>, ItemStatus)],
    actor: &str,
) -> GateOutcome {
    if state.status != BlockStatus::Waiting || state.gate != Some(crate::run::GatePhase::After) {
        return GateOutcome {
            approved: false,
            reason: format!(
                "the review was stored, but `{block}` is {} and not waiting at its gate, so there is nothing to close",
                state.status.as_str()
            ),
        };
    }
    let blocking: Vec<String> = items
        .iter()
        .filter(|(_, priority, status)| {
            *priority == Some(Priority::Critical)
                && matches!(status, ItemStatus::Open | ItemStatus::Triage)
        })
        .map(|(key, _, status)| format!("{key} [{}]", status.as_str()))
        .collect();
    let accepted = items
        .iter()
        .filter(|(_, _, status)| *status == ItemStatus::Accepted)
        .count();
    if blocking.is_empty() {
        GateOutcome {
            approved: true,
            reason: format!(
                "review closed by {actor}: no critical item open or in triage; {accepted} accepted item(s) go to the corrections router"
            ),
        }
    } else {
        GateOutcome {
            approved: false,
            reason: format!(
                "{} critical item(s) still open or in triage ({}): settle them (PATCH improvement-items) or approve the gate to accept the rest",
                blocking.len(),
                blocking.join(", ")
            ),
        }
    }
}

/// Priority order for routing and display: critical first, unknown last.
pub fn priority_rank(priority: &str) -> u8 {
    priority
        .parse::<Priority>()
        .map_or(4, |priority| priority as u8)
}

/// The priorities by name, most urgent first (for forms).
pub const PRIORITIES: &[&str] = &["critical", "high", "medium", "low"];

/// The corrections a router pass would send, before any block is reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The `correction-plan` artifact: items grouped by target block.
    pub value: Value,
    /// Target block → its new corrections.
    pub targets: BTreeMap<String, Corrections>,
    /// The targets in pipeline order.
    pub order: Vec<String>,
    /// One sentence for the `corrections_routed` event.
    pub reason: String,
}

/// The review pages whose accepted items a corrections router routes, from
/// its `inputs.config.sources`; None (absent): every page's. A router placed
/// right after one review (clone-factory's extraction router) routes that
/// review's items before the run goes on, so later blocks are built on the
/// corrected outputs; a later router takes the rest.
pub fn router_sources(
    config: &BTreeMap<String, Value>,
) -> Result<Option<BTreeSet<String>>, String> {
    let Some(value) = config.get("sources") else {
        return Ok(None);
    };
    let list = value
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or("`sources` must be a non-empty list of review pages")?;
    let mut out = BTreeSet::new();
    for page in list {
        match page.as_str() {
            Some(name) if crate::validate::REVIEW_PAGES.contains(&name) => {
                out.insert(name.to_string());
            }
            _ => {
                return Err(format!(
                    "`sources` names {page}, which is not a review page"
                ));
            }
        }
    }
    Ok(Some(out))
}

/// Groups accepted items by target block, most urgent first, as corrections
/// `v{version}→v{version+1}`. Items whose target is not a block of the
/// pipeline (or is the router) are listed as unroutable.
pub fn plan(pipeline: &Pipeline, version: u32, router: &str, items: &[AcceptedItem]) -> Plan {
    let mut by_target: BTreeMap<usize, Vec<&AcceptedItem>> = BTreeMap::new();
    let mut unroutable = Vec::new();
    for item in items {
        match pipeline.index_of(&item.skill_target) {
            Some(i) if item.skill_target != router => by_target.entry(i).or_default().push(item),
            _ => unroutable.push(item),
        }
    }
    let label = format!("v{version}→v{}", version + 1);
    let mut order: Vec<usize> = by_target.keys().copied().collect();
    order.sort_by_key(|i| pipeline.topo_order().iter().position(|t| t == i));
    let mut routed = serde_json::Map::new();
    let mut targets = BTreeMap::new();
    let mut counts = Vec::new();
    for &i in &order {
        let mut group = by_target[&i].clone();
        group.sort_by(|a, b| {
            priority_rank(&a.priority)
                .cmp(&priority_rank(&b.priority))
                .then(a.source_key.cmp(&b.source_key))
        });
        let block = &pipeline.blocks()[i].id;
        counts.push(format!(
            "{block} ({} item{})",
            group.len(),
            if group.len() == 1 { "" } else { "s" }
        ));
        routed.insert(
            block.clone(),
            Value::Array(
                group
                    .iter()
                    .map(|item| {
                        serde_json::json!({
                            "id": item.id,
                            "source_key": item.source_key,
                            "source_text": item.source_text,
                            "expert_correction": item.expert_correction,
                            "priority": item.priority,
                            "feedback_ids": item.feedback_ids,
                        })
                    })
                    .collect(),
            ),
        );
        let sources: BTreeSet<&str> = group.iter().map(|item| item.source.as_str()).collect();
        targets.insert(
            block.clone(),
            Corrections {
                version: label.clone(),
                source: sources.into_iter().collect::<Vec<_>>().join(" + "),
                items: group
                    .iter()
                    .map(|item| CorrectionItem {
                        finding: item.source_text.clone(),
                        correction: item.expert_correction.clone(),
                        priority: item.priority.clone(),
                        improvement_item_id: Some(item.id.clone()),
                    })
                    .collect(),
                instruction: pipeline.template().corrections_instruction().to_string(),
            },
        );
    }
    let order: Vec<String> = order
        .iter()
        .map(|&i| pipeline.blocks()[i].id.clone())
        .collect();
    let routed_count = items.len() - unroutable.len();
    // Seed 002's expert-audit outputs `feedback_id` and `improvement_summary`
    // exist only once a review is submitted, after the page's own artifacts:
    // the router that acts on them records them.
    let feedback_ids: BTreeSet<&str> = items
        .iter()
        .flat_map(|item| item.feedback_ids.iter().map(String::as_str))
        .collect();
    let mut by_priority = serde_json::Map::new();
    let mut by_source = serde_json::Map::new();
    for item in items {
        for (map, key) in [
            (&mut by_priority, &item.priority),
            (&mut by_source, &item.source),
        ] {
            let n = map.get(key.as_str()).and_then(Value::as_u64).unwrap_or(0);
            map.insert(key.clone(), serde_json::json!(n + 1));
        }
    }
    let value = serde_json::json!({
        "feedback_ids": feedback_ids,
        "improvement_summary": {
            "accepted_items": items.len(),
            "routed": routed_count,
            "by_priority": by_priority,
            "by_source": by_source,
        },
        "version": if targets.is_empty() { format!("v{version}") } else { label },
        "routed": Value::Object(routed),
        "blocks_to_rerun": order,
        "unroutable": unroutable.iter().map(|item| serde_json::json!({
            "id": item.id,
            "skill_target": item.skill_target,
            "reason": format!("`{}` is not a block this router can send corrections to", item.skill_target),
        })).collect::<Vec<_>>(),
        "proceed": targets.is_empty(),
    });
    Plan {
        value,
        targets,
        order,
        reason: format!(
            "{routed_count} accepted item{} routed to {}",
            if routed_count == 1 { "" } else { "s" },
            counts.join(", ")
        ),
    }
}

/// Groups accepted items by target block and, when there are any, writes each
/// group into that block's corrections (`vN→vN+1`) and resets the targets and
/// everything downstream of them, and only those, to pending. `doc` must
/// already show the router's own attempt as finished (it is reset too: it runs
/// again after the next reviews). A running block among them is an error: the
/// router's attempt is then retried.
pub fn route(
    pipeline: &Pipeline,
    doc: &RunDoc,
    router: &str,
    items: &[AcceptedItem],
) -> Result<Routing, TransitionError> {
    let Plan {
        value,
        targets,
        order,
        reason,
    } = plan(pipeline, doc.version, router, items);
    if targets.is_empty() {
        return Ok(Routing {
            events: Vec::new(),
            plan: value,
            targets: Vec::new(),
        });
    }
    let from = doc.version;
    let label = format!("v{from}→v{}", from + 1);
    let targets_at: Vec<usize> = order
        .iter()
        .filter_map(|id| pipeline.index_of(id))
        .collect();
    // Resets first: a reset starts a new pass and clears old corrections, so
    // the new ones are routed after it.
    let mut events = Vec::new();
    for (i, regroup) in pipeline.reset_plan(&targets_at) {
        let id = &pipeline.blocks()[i].id;
        let state = doc
            .blocks
            .get(id)
            .ok_or_else(|| TransitionError::UnknownBlock(id.clone()))?;
        if state.status == BlockStatus::Running {
            return Err(TransitionError::DependentRunning {
                block: router.to_string(),
                dependent: id.clone(),
            });
        }
        if !crate::transitions::needs_reset(state, regroup) {
            continue;
        }
        events.push(Event::BlockReset {
            block: id.clone(),
            reason: if targets.contains_key(id) {
                format!("corrections {label} from `{router}`")
            } else {
                format!("upstream of it is re-running with corrections {label}")
            },
            fresh: false,
            regroup,
        });
    }
    events.push(Event::CorrectionsRouted {
        router: router.to_string(),
        from,
        to: from + 1,
        targets: targets.clone(),
        reason,
    });
    Ok(Routing {
        events,
        plan: value,
        targets: order,
    })
}

/// An item as the resolution step sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRef {
    pub id: String,
    pub source_key: String,
    pub skill_target: String,
    pub status: String,
}

/// When `block` has just completed with router corrections, its accepted
/// items become `resolved` in the run's current version. Returns the events
/// (one `ItemChanged` per item) and the resolution note to store.
pub fn resolutions(doc: &RunDoc, block: &str, items: &[ItemRef]) -> (Vec<Event>, String) {
    let Some(state) = doc.blocks.get(block) else {
        return (Vec::new(), String::new());
    };
    let Some(corrections) = &state.corrections else {
        return (Vec::new(), String::new());
    };
    let ids: BTreeSet<&str> = corrections
        .items
        .iter()
        .filter_map(|c| c.improvement_item_id.as_deref())
        .collect();
    let attempt = state.last_success().map_or(0, |a| a.n);
    let note = format!(
        "Auto-resolved via corrections-router re-run: `{block}` attempt {attempt} completed with corrections {}",
        corrections.version
    );
    let events = items
        .iter()
        .filter(|item| ids.contains(item.id.as_str()) && item.status == "accepted")
        .map(|item| Event::ItemChanged {
            item: item.id.clone(),
            source_key: item.source_key.clone(),
            skill_target: item.skill_target.clone(),
            from: item.status.clone(),
            to: "resolved".to_string(),
            reason: note.clone(),
        })
        .collect();
    (events, note)
}

// ── Review pages ──

/// One reviewable item of an extraction JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewItem {
    /// `<block>:<json path>`: "the same item" across testers.
    pub source_key: String,
    pub skill_target: String,
    pub path: String,
    pub text: String,
}

/// At most this many items per document, so a huge extraction stays usable.
pub const MAX_ITEMS_PER_DOCUMENT: usize = 400;

/// Every leaf of an extraction JSON as a reviewable item (objects and arrays
/// are walked; strings, numbers and booleans are items).
pub fn extraction_items(block: &str, document: &Value) -> Vec<ReviewItem> {
    let mut items = Vec::new();
    walk(block, "$", document, &mut items);
    items
}

fn walk(block: &str, path: &str, value: &Value, out: &mut Vec<ReviewItem>) {
    if out.len() >= MAX_ITEMS_PER_DOCUMENT {
        return;
    }
    let text = match value {
        Value::Object(map) => {
            for (key, child) in map {
                walk(block, &format!("{path}.{key}"), child, out);
            }
            return;
        }
        Value::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                walk(block, &format!("{path}[{i}]"), child, out);
            }
            return;
        }
        Value::Null => return,
        Value::String(s) if s.trim().is_empty() => return,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    out.push(ReviewItem {
        source_key: format!("{block}:{path}"),
        skill_target: block.to_string(),
        path: path.to_string(),
        text,
    });
}

/// A scenario of the expert audit page (from the clone tester's results).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub id: String,
    pub prompt: String,
    pub response: String,
}

/// The scenarios in a clone tester's `test-results` JSON: `scenarios[]` (or
/// `results[]`) objects with `id`/`name`, `prompt`/`input` and
/// `response`/`output`. Missing fields become empty text.
pub fn scenarios(test_results: &Value) -> Vec<Scenario> {
    let list = test_results
        .get("scenarios")
        .or_else(|| test_results.get("results"))
        .and_then(Value::as_array);
    let text = |v: &Value, keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k))
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_default()
    };
    list.map(|list| {
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                let id = text(v, &["id", "name"]);
                Scenario {
                    id: if id.is_empty() {
                        format!("scenario-{}", i + 1)
                    } else {
                        id
                    },
                    prompt: text(v, &["prompt", "input", "question"]),
                    response: text(v, &["response", "output", "answer"]),
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The audit page's open questions when the block's config names none.
pub const DEFAULT_QUESTIONS: &[&str] = &[
    "Where did the clone sound most like you, and where least?",
    "Which of your frameworks did it explain wrongly or leave out?",
    "What would you never say that the clone said?",
    "Which offer or resource did it describe inaccurately?",
    "What must be fixed before you would let clients talk to it?",
];

// ── Convergence ──

/// One tester's submission, reduced to what the convergence table counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewStats {
    pub version: u32,
    pub source: String,
    pub tester: String,
    /// Expert audit: scenario → "sounds like me".
    pub ratings: Vec<(String, bool)>,
    /// Extraction review: source key → verdict.
    pub verdicts: Vec<(String, Verdict)>,
}

/// An item, reduced to what the convergence table counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemStats {
    pub priority: String,
    pub status: String,
    pub opened_in: u32,
    pub resolved_in: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    Superseded,
    Current,
    ReadyToShip,
}

/// One row of the version-over-version table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    pub version: u32,
    /// Percent, from the convergence score block's metric in this version.
    pub auto_score: Option<f64>,
    /// Percent of scenario ratings that "sound like me".
    pub approval: Option<f64>,
    /// Percent of extraction verdicts that are "correct".
    pub accuracy: Option<f64>,
    /// Critical and high items still open at the end of this version.
    pub critical: u32,
    pub high: u32,
    pub status: VersionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Convergence {
    pub run_id: String,
    /// The run's current version.
    pub version: u32,
    pub rows: Vec<VersionRow>,
    pub ready_to_ship: bool,
    /// Why the current version is not ready yet (empty when it is).
    pub unmet: Vec<String>,
    pub criteria: ConvergenceSpec,
}

/// Parses `v3` (or `3`) to 3.
pub fn parse_version(label: &str) -> Option<u32> {
    label.trim().trim_start_matches('v').parse().ok()
}

/// The versions in which each review page (`extraction-review`,
/// `expert-audit`) was published — a succeeded attempt of a block serving
/// it — or is still to be: a page block that is not done counts for the
/// current version (it will publish in it, so nothing is carried into it).
pub fn published_versions(pipeline: &Pipeline, doc: &RunDoc) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for block in pipeline.blocks() {
        let config = &block.inputs.config;
        let Some(page) = config
            .get("page")
            .and_then(Value::as_str)
            .filter(|_| config.get("builtin").and_then(Value::as_str) == Some("review-page"))
        else {
            continue;
        };
        let versions = out.entry(page.to_string()).or_default();
        if let Some(state) = doc.blocks.get(&block.id) {
            versions.extend(
                state
                    .history
                    .iter()
                    .filter(|a| a.outcome == Some(crate::run::AttemptOutcome::Succeeded))
                    .map(|a| a.version),
            );
            if state.status != BlockStatus::Done {
                versions.insert(doc.version);
            }
        }
    }
    out
}

/// The table of seed `002`: per version the automated score, expert approval,
/// extraction accuracy and open critical/high items, and whether the current
/// version meets every ship criterion.
///
/// A review page that was not published again in a version (its inputs did
/// not change: a correction routed only to blocks after it) keeps the
/// figure of its last earlier version with answers — the extraction the
/// expert judged in v2 is the one v3 is built on. `published`
/// ([`published_versions`]) says which pages ran in which versions; a page
/// missing from it is never carried.
pub fn convergence(
    doc: &RunDoc,
    spec: &ConvergenceSpec,
    reviews: &[ReviewStats],
    items: &[ItemStats],
    published: &BTreeMap<String, BTreeSet<u32>>,
) -> Convergence {
    let current = doc.version;
    let mut rows: Vec<VersionRow> = Vec::new();
    for version in 1..=current {
        let auto_score = spec.score_block.as_deref().and_then(|block| {
            doc.blocks.get(block)?.history.iter().rev().find_map(|a| {
                (a.version == version && a.outcome == Some(crate::run::AttemptOutcome::Succeeded))
                    .then(|| a.report.as_ref()?.metrics.get(&spec.score_metric)?.as_f64())
                    .flatten()
            })
        });
        let ratings = latest_answers(reviews, version, EXPERT_AUDIT, |r| &r.ratings);
        let verdicts = latest_answers(reviews, version, EXTRACTION_REVIEW, |r| &r.verdicts);
        let percent = |hits: usize, total: usize| {
            (total > 0).then(|| (hits as f64 * 1000.0 / total as f64).round() / 10.0)
        };
        let carried = |page: &str, own: Option<f64>, earlier: fn(&VersionRow) -> Option<f64>| {
            let not_rerun = published
                .get(page)
                .is_some_and(|versions| !versions.is_empty() && !versions.contains(&version));
            match (own, rows.last()) {
                (None, Some(previous)) if not_rerun => earlier(previous),
                _ => own,
            }
        };
        let approval = carried(
            EXPERT_AUDIT,
            percent(ratings.iter().filter(|r| **r).count(), ratings.len()),
            |row| row.approval,
        );
        let accuracy = carried(
            EXTRACTION_REVIEW,
            percent(
                verdicts.iter().filter(|v| **v == Verdict::Correct).count(),
                verdicts.len(),
            ),
            |row| row.accuracy,
        );
        let open_at = |priority: &str| {
            items
                .iter()
                .filter(|item| {
                    item.priority == priority
                        && item.opened_in <= version
                        && item.status != "rejected"
                        && item.resolved_in.is_none_or(|r| r > version)
                        && (version < current || item.status != "resolved")
                })
                .count() as u32
        };
        rows.push(VersionRow {
            version,
            auto_score,
            approval,
            accuracy,
            critical: open_at("critical"),
            high: open_at("high"),
            status: if version < current {
                VersionStatus::Superseded
            } else {
                VersionStatus::Current
            },
        });
    }
    let mut unmet = Vec::new();
    if let Some(row) = rows.last() {
        let v = row.version;
        if let Some(block) = &spec.score_block {
            match row.auto_score {
                Some(score) if score >= spec.min_score => {}
                Some(score) => unmet.push(format!(
                    "automated score {score:.1}% in v{v} is below {:.0}%",
                    spec.min_score
                )),
                None => unmet.push(format!(
                    "`{block}` has no `{}` in v{v} yet",
                    spec.score_metric
                )),
            }
        }
        match row.approval {
            Some(rate) if rate >= spec.min_approval => {}
            Some(rate) => unmet.push(format!(
                "expert approval {rate:.1}% in v{v} is below {:.0}%",
                spec.min_approval
            )),
            None => unmet.push(format!("no expert-audit ratings for v{v} yet")),
        }
        match row.accuracy {
            Some(rate) if rate >= spec.min_accuracy => {}
            Some(rate) => unmet.push(format!(
                "extraction accuracy {rate:.1}% in v{v} is below {:.0}%",
                spec.min_accuracy
            )),
            None => unmet.push(format!("no extraction-review verdicts for v{v} yet")),
        }
        if row.critical > spec.max_critical {
            unmet.push(format!(
                "{} critical item(s) open (at most {})",
                row.critical, spec.max_critical
            ));
        }
        if row.high > spec.max_high {
            unmet.push(format!(
                "{} high item(s) open (at most {})",
                row.high, spec.max_high
            ));
        }
    }
    let ready_to_ship = !rows.is_empty() && unmet.is_empty();
    if ready_to_ship && let Some(row) = rows.last_mut() {
        row.status = VersionStatus::ReadyToShip;
    }
    Convergence {
        run_id: doc.run_id.clone(),
        version: current,
        rows,
        ready_to_ship,
        unmet,
        criteria: spec.clone(),
    }
}

/// Each tester's latest answer per item (or scenario) in one version: a
/// tester who changes their mind, or closes the review with an empty
/// submission, is counted once with what they said last.
fn latest_answers<T: Copy>(
    reviews: &[ReviewStats],
    version: u32,
    source: &str,
    answers: impl Fn(&ReviewStats) -> &Vec<(String, T)>,
) -> Vec<T> {
    let mut latest: BTreeMap<(&str, &str), T> = BTreeMap::new();
    for review in reviews
        .iter()
        .filter(|r| r.version == version && r.source == source)
    {
        for (key, answer) in answers(review) {
            latest.insert((review.tester.as_str(), key.as_str()), *answer);
        }
    }
    latest.into_values().collect()
}

#[cfg(test)]
mod tests;
