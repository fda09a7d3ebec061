//! Runs a trigger starts: in a dag-batch template, a block without
//! dependencies may carry a `cron` or an `event` trigger. Each tick, or
//! each feed event its filter matches, starts a new run of the whole
//! template (the block runs first, like any root block). Runs a person
//! starts (`factory run`, the API, the workbench) are unaffected.
//!
//! A cron tick's run takes every param's default; an event's run takes
//! each param whose name is a field of the event's payload from it, and
//! the defaults for the rest.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::bus::{BusEvent, EventFilter};
use crate::diagnostics::{Diagnostic, codes};
use crate::template::{LifecycleMode, Template, TriggerType};

/// A block whose trigger starts runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Starter {
    pub block: String,
    pub kind: StarterKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StarterKind {
    Cron {
        expression: String,
        timezone: Option<String>,
        catch_up: u32,
    },
    Event(EventFilter),
}

/// True for a block whose trigger starts runs of a dag-batch template.
pub fn starts_runs(block: &crate::template::Block) -> bool {
    matches!(
        block.trigger.trigger_type,
        TriggerType::Cron | TriggerType::Event
    ) && block.inputs.depends.is_empty()
        && block.lifecycle.as_ref().map(|l| l.mode) != Some(LifecycleMode::Daemon)
}

/// The starters of a template that is not a stream template (a stream's
/// triggers feed records instead). Expects a validated template.
pub fn starters(template: &Template) -> Vec<Starter> {
    if crate::stream::is_stream(template) {
        return Vec::new();
    }
    template
        .blocks
        .iter()
        .filter(|b| starts_runs(b))
        .filter_map(|b| {
            let kind = match b.trigger.trigger_type {
                TriggerType::Cron => StarterKind::Cron {
                    expression: b.trigger.cron.clone()?,
                    timezone: b.trigger.timezone.clone(),
                    catch_up: b.trigger.catch_up.unwrap_or(0),
                },
                TriggerType::Event => {
                    StarterKind::Event(EventFilter::parse(b.trigger.event.as_deref()?).ok()?)
                }
                _ => return None,
            };
            Some(Starter {
                block: b.id.clone(),
                kind,
            })
        })
        .collect()
}

/// What only the whole template can tell: a cron tick passes no params,
/// so each must have a default.
pub(crate) fn check(template: &Template) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if crate::stream::is_stream(template) {
        return out;
    }
    let Some(cron) = template
        .blocks
        .iter()
        .find(|b| starts_runs(b) && b.trigger.trigger_type == TriggerType::Cron)
    else {
        return out;
    };
    for (name, spec) in &template.params {
        if spec.required && spec.default.is_none() {
            out.push(
                Diagnostic::error(
                    codes::TRIGGER,
                    format!("$.params.{name}"),
                    format!(
                        "param `{name}` is required and has no default, but block `{}`'s cron trigger starts runs that nobody passes params to",
                        cron.id
                    ),
                )
                .in_block(cron.id.clone())
                .with_help("give the param a `default`, or start runs by hand or from an `event` trigger"),
            );
        }
    }
    out
}

/// The params of a run an event starts: each declared param that the
/// payload has a field of the same name for.
pub fn params_from_event(template: &Template, event: &BusEvent) -> BTreeMap<String, Value> {
    template
        .params
        .keys()
        .filter_map(|name| {
            event
                .payload
                .get(name)
                .map(|value| (name.clone(), value.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: serde_json::Value) -> Template {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn root_blocks_with_cron_or_event_triggers_start_runs_and_others_do_not() {
        let t = template(serde_json::json!({
            "id": "t", "name": "T", "version": "1",
            "params": {"entity": {"required": true}},
            "blocks": [
                {"id": "nightly", "name": "N", "layer": "L1", "type": "build", "runtime": "builtin",
                 "trigger": {"type": "cron", "cron": "0 6 * * *", "catch_up": 2},
                 "inputs": {"config": {"builtin": "noop"}}},
                {"id": "on-entity", "name": "E", "layer": "L1", "type": "build", "runtime": "builtin",
                 "trigger": {"type": "event", "event": "entity.created(gate=2)"},
                 "inputs": {"config": {"builtin": "noop"}}},
                {"id": "after", "name": "A", "layer": "L2", "type": "build", "runtime": "builtin",
                 "inputs": {"depends": [{"block": "nightly", "key": "out"}], "config": {"builtin": "noop"}}}
            ]
        }));
        let starters = starters(&t);
        assert_eq!(starters.len(), 2);
        assert_eq!(
            starters[0].kind,
            StarterKind::Cron {
                expression: "0 6 * * *".into(),
                timezone: None,
                catch_up: 2
            }
        );
        match &starters[1].kind {
            StarterKind::Event(filter) => assert_eq!(filter.to_string(), "entity.created(gate=2)"),
            other => panic!("{other:?}"),
        }
        let problems = check(&t);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("`entity` is required"));

        let mut payload = serde_json::Map::new();
        payload.insert("entity".into(), "acme".into());
        payload.insert("gate".into(), 2.into());
        let event = BusEvent {
            name: "entity.created".into(),
            template_id: "src".into(),
            run_id: None,
            block: None,
            record_key: None,
            payload,
        };
        let params = params_from_event(&t, &event);
        assert_eq!(params.len(), 1, "only declared params are taken");
        assert_eq!(params["entity"], "acme");
    }
}
