//! A block's state in words, for the block page: what it waits for, who may
//! act, why it cannot move, when it retries. Pure: the page passes in the
//! run, the template and (for a guarded gate) who may not approve.

use std::collections::{BTreeSet, VecDeque};

use factory_core::run::{BlockStatus, GatePhase, Millis, RunDoc};
use factory_core::template::Template;

use super::render;

/// The sentence for `block`'s state, or None when its status says it all
/// (done, or a state nothing explains further).
pub fn state_in_words(
    template: &Template,
    doc: &RunDoc,
    block: &str,
    now: Millis,
    may_not_approve: &BTreeSet<String>,
) -> Option<String> {
    let state = doc.blocks.get(block)?;
    let spec = template.blocks.iter().find(|b| b.id == block)?;
    let name = |id: &str| {
        template
            .blocks
            .iter()
            .find(|b| b.id == id)
            .map_or(id.to_string(), |b| b.name.clone())
    };
    match state.status {
        BlockStatus::Waiting => {
            let what = match state.gate {
                Some(GatePhase::Before) => "to approve it before it runs",
                _ => "to approve or reject its output; nothing downstream runs until then",
            };
            let except = if spec.execution.separate_reviewer && !may_not_approve.is_empty() {
                format!(
                    ", except {} (who set this pass in motion: the block asks for a separate reviewer)",
                    people(may_not_approve)
                )
            } else {
                String::new()
            };
            Some(format!(
                "Waits for a person {what}. Anyone with the reviewer role or above may decide{except}."
            ))
        }
        BlockStatus::Pending => {
            let open = open_upstream(template, doc, block);
            (!open.is_empty()).then(|| format!("Waits for {}.", open.join(", ")))
        }
        BlockStatus::Blocked => {
            let failed = failed_ancestors(template, doc, block);
            Some(if failed.is_empty() {
                "Blocked: an upstream block cannot finish.".to_string()
            } else {
                let named: Vec<String> = failed
                    .iter()
                    .map(|id| {
                        let error = doc.blocks[id.as_str()]
                            .error
                            .as_deref()
                            .map(|e| format!(": {}", render::clip(e, 160)))
                            .unwrap_or_default();
                        format!("{} failed{error}", name(id))
                    })
                    .collect();
                format!(
                    "Blocked because {}. Re-run {} (Logic tab of its page, or `factory retry {} {}`) and this block runs after it.",
                    named.join("; "),
                    if failed.len() == 1 { "it" } else { "them" },
                    doc.run_id.as_str(),
                    failed[0]
                )
            })
        }
        BlockStatus::Ready => match state.not_before.filter(|at| *at > now) {
            Some(at) => Some(format!(
                "Ready; retries in {}{}.",
                render::duration((at - now) as u64),
                state
                    .history
                    .last()
                    .and_then(|a| a.why.as_deref())
                    .map(|why| format!(" (attempt {}: {why})", state.history.len()))
                    .unwrap_or_default()
            )),
            None => Some("Ready: it starts when a worker has a free slot.".to_string()),
        },
        BlockStatus::Running => state.history.last().map(|attempt| {
            format!(
                "Running attempt #{} for {}, on {}.",
                attempt.n,
                render::duration((now - attempt.started_at).max(0) as u64),
                attempt.owner
            )
        }),
        BlockStatus::Failed => Some(format!(
            "Failed{}. Re-run on the Logic tab (or `factory retry {} {block}`) runs it again.",
            state
                .error
                .as_deref()
                .map(|e| format!(": {}", render::clip(e, 200)))
                .unwrap_or_default(),
            doc.run_id.as_str()
        )),
        BlockStatus::Done => None,
    }
}

/// `block`'s dependencies that are not done yet, as "Name (status)", once
/// each, in the order the template declares them. Also the graph's tooltip.
pub fn open_upstream(template: &Template, doc: &RunDoc, block: &str) -> Vec<String> {
    let upstream = waits_on(template, doc, block);
    let mut seen = BTreeSet::new();
    upstream
        .iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .filter_map(|id| {
            let status = doc.blocks.get(id)?.status;
            let name = template
                .blocks
                .iter()
                .find(|b| b.id == id)
                .map_or(id, |b| b.name.as_str());
            (status != BlockStatus::Done).then(|| format!("{name} ({})", status.as_str()))
        })
        .collect()
}

/// What `block` waits on in this run: its dependencies, or for a fan-out
/// block that has expanded, its instances.
fn waits_on(template: &Template, doc: &RunDoc, block: &str) -> Vec<String> {
    if let Some(keys) = doc.blocks.get(block).and_then(|s| s.instances.as_ref()) {
        return keys
            .iter()
            .map(|key| factory_core::run::instance_id(block, key))
            .collect();
    }
    template
        .blocks
        .iter()
        .find(|b| b.id == block)
        .map(|spec| {
            spec.inputs
                .depends
                .iter()
                .map(|d| d.block.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The failed blocks upstream of `block`, through blocked ones, nearest
/// first.
fn failed_ancestors(template: &Template, doc: &RunDoc, block: &str) -> Vec<String> {
    let mut failed = Vec::new();
    let mut seen = BTreeSet::from([block.to_string()]);
    let mut queue = VecDeque::from([block.to_string()]);
    while let Some(at) = queue.pop_front() {
        for id in &waits_on(template, doc, &at) {
            if !seen.insert(id.clone()) {
                continue;
            }
            match doc.blocks.get(id).map(|s| s.status) {
                Some(BlockStatus::Failed) => failed.push(id.clone()),
                Some(BlockStatus::Blocked) => queue.push_back(id.clone()),
                _ => {}
            }
        }
    }
    failed
}

/// `a`, `a and b`, `a, b and c`, without the `user:` prefix of actors.
fn people(actors: &BTreeSet<String>) -> String {
    let names: Vec<&str> = actors
        .iter()
        .map(|a| a.strip_prefix("user:").unwrap_or(a))
        .collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factory_core::run::EventRecord;
    use factory_core::{transitions, validate};

    const TEMPLATE: &str = r#"{"id": "t", "name": "T", "version": "1.0.0", "blocks": [
      {"id": "a", "name": "Fetch", "layer": "L0", "type": "build", "runtime": "builtin",
       "inputs": {"config": {"builtin": "noop"}}, "outputs": {"artifacts": [{"key": "out", "path": "o", "format": "text"}]}},
      {"id": "b", "name": "Check", "layer": "L1", "type": "build", "runtime": "builtin",
       "inputs": {"config": {"builtin": "noop"}, "depends": [{"block": "a", "key": "out"}]},
       "outputs": {"artifacts": [{"key": "out", "path": "o", "format": "text"}]},
       "execution": {"human_gate": "after", "separate_reviewer": true}},
      {"id": "c", "name": "Publish", "layer": "L2", "type": "build", "runtime": "builtin",
       "inputs": {"config": {"builtin": "noop"}, "depends": [{"block": "b", "key": "out"}]},
       "outputs": {"artifacts": [{"key": "out", "path": "o", "format": "text"}]}}
    ]}"#;

    fn run() -> (Template, RunDoc) {
        let pipeline = validate::validate_str(TEMPLATE).pipeline.unwrap();
        let request = transitions::RunRequest {
            run_id: "01a2b3c4-run".into(),
            ..Default::default()
        };
        let created = transitions::create_run(&pipeline, &request, &|_| true).unwrap();
        let doc = RunDoc::from_created(&EventRecord {
            seq: 1,
            at: 0,
            actor: "user:ana".into(),
            event: created,
        })
        .unwrap();
        (pipeline.template().clone(), doc)
    }

    #[test]
    fn a_pending_block_names_what_it_waits_for() {
        let (template, doc) = run();
        let words = state_in_words(&template, &doc, "c", 0, &BTreeSet::new()).unwrap();
        assert_eq!(words, "Waits for Check (pending).");
    }

    #[test]
    fn a_waiting_gate_says_who_may_decide() {
        let (template, mut doc) = run();
        let b = doc.blocks.get_mut("b").unwrap();
        b.status = BlockStatus::Waiting;
        b.gate = Some(GatePhase::After);
        let words = state_in_words(
            &template,
            &doc,
            "b",
            0,
            &BTreeSet::from(["user:ana".to_string()]),
        )
        .unwrap();
        assert!(words.contains("approve or reject its output"), "{words}");
        assert!(
            words.contains("reviewer role or above may decide, except ana"),
            "{words}"
        );
    }

    #[test]
    fn a_blocked_block_names_the_failure_upstream_and_how_to_go_on() {
        let (template, mut doc) = run();
        let a = doc.blocks.get_mut("a").unwrap();
        a.status = BlockStatus::Failed;
        a.error = Some("exit status 2: no such file".into());
        doc.blocks.get_mut("b").unwrap().status = BlockStatus::Blocked;
        doc.blocks.get_mut("c").unwrap().status = BlockStatus::Blocked;
        let words = state_in_words(&template, &doc, "c", 0, &BTreeSet::new()).unwrap();
        assert!(
            words.starts_with("Blocked because Fetch failed: exit status 2: no such file."),
            "{words}"
        );
        assert!(words.contains("factory retry 01a2b3c4-run a"), "{words}");
    }

    #[test]
    fn a_ready_block_in_backoff_says_when_it_retries() {
        let (template, mut doc) = run();
        let a = doc.blocks.get_mut("a").unwrap();
        a.status = BlockStatus::Ready;
        a.not_before = Some(1_500);
        let words = state_in_words(&template, &doc, "a", 0, &BTreeSet::new()).unwrap();
        assert_eq!(words, "Ready; retries in 1.5 s.");
        assert!(
            state_in_words(&template, &doc, "a", 2_000, &BTreeSet::new())
                .unwrap()
                .starts_with("Ready: it starts")
        );
    }

    #[test]
    fn names_are_listed_in_words() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(people(&set(&["user:a"])), "a");
        assert_eq!(people(&set(&["user:a", "user:b", "c"])), "c, a and b");
    }
}
