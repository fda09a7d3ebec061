//! `lens`: the analytical-lens fields ([`crate::lens`]).
//!
//! What must hold: a perspective is named where the block has one to take
//! (a fixed `lens.perspective`, or a fan-out whose instance keys name
//! them, never both); an aggregate (a lens block without a perspective)
//! reads at least one perspective block; `lens.aggregates` names declared
//! params; and the fields that act through past ratings (`drop_below`,
//! `review_below`, `min_ratings`) sit where they act: on a fan-out lens
//! with `feedback_loop`. Only `llm` and `command` blocks take a lens: a
//! prompt or a step is what hears the perspective and the ratings.

use std::collections::BTreeSet;

use crate::diagnostics::{Diagnostic, codes};
use crate::lens::Role;
use crate::template::{Runtime, Template};

pub(super) fn check(template: &Template, out: &mut Vec<Diagnostic>) {
    let stream = matches!(crate::stream::plan(template), Ok(Some(_)));
    for (i, block) in template.blocks.iter().enumerate() {
        let Some(lens) = &block.lens else {
            continue;
        };
        let at = |suffix: &str| format!("$.blocks[{i}].lens{suffix}");
        let mut push = |path: String, message: String, help: &str| {
            out.push(
                Diagnostic::error(codes::LENS, path, message)
                    .with_help(help.to_string())
                    .in_block(block.id.clone()),
            );
        };
        if stream {
            push(
                at(""),
                "`lens` in a stream template: a stream moves records through stages; a lens fans out perspectives and rolls them up in a run".into(),
                "remove `lens`, or make a dag-batch template of it",
            );
            continue;
        }
        // Only a prompt or a step hears a perspective and past ratings.
        if !matches!(block.runtime, Runtime::Llm | Runtime::Command) {
            push(
                at(""),
                format!(
                    "`lens` on a `{}` block: its perspective and past ratings would reach no prompt or step",
                    serde_json::to_value(block.runtime)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
                "put the lens on an `llm` or `command` block",
            );
        }
        if let Some(perspective) = &lens.perspective {
            if perspective.trim().is_empty() {
                push(
                    at(".perspective"),
                    "`lens.perspective` is empty".into(),
                    "name the angle, e.g. `\"positioning\"`, or remove it to make the block an aggregate",
                );
            } else if block.fan_out.is_some() {
                push(
                    at(".perspective"),
                    "`lens.perspective` on a fan-out block: each instance is the perspective its key names".into(),
                    "remove `lens.perspective` (list the perspectives in the fan-out's list), or remove `fan_out`",
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (n, name) in lens.aggregates.iter().flatten().enumerate() {
            if !template.params.contains_key(name) {
                push(
                    at(&format!(".aggregates[{n}]")),
                    format!(
                        "`{name}` is not a declared param; ratings roll up on the values of params"
                    ),
                    "declare it under `params` (e.g. `entity_id`) or name a declared param",
                );
            } else if !seen.insert(name) {
                push(
                    at(&format!(".aggregates[{n}]")),
                    format!("`{name}` is listed twice"),
                    "list each param once",
                );
            }
        }
        let fan_out_loop = block.fan_out.is_some() && lens.feedback_loop;
        for (field, set) in [
            ("drop_below", lens.drop_below.is_some()),
            ("review_below", lens.review_below.is_some()),
            ("min_ratings", lens.min_ratings.is_some()),
        ] {
            if set && !fan_out_loop {
                let why = if block.fan_out.is_none() {
                    "it acts on the perspectives of a fan-out lens, and this block does not fan out"
                } else {
                    "it acts through past ratings, and `feedback_loop` is off"
                };
                push(
                    at(&format!(".{field}")),
                    format!("`lens.{field}` would do nothing: {why}"),
                    "remove it, or set `feedback_loop: true` on a fan-out lens block",
                );
            }
        }
        if lens.min_ratings.is_some() && lens.drop_below.is_none() && fan_out_loop {
            push(
                at(".min_ratings"),
                "`lens.min_ratings` without `drop_below` would do nothing: it is how many ratings a perspective needs before it can be dropped".into(),
                "add `drop_below`, or remove `min_ratings`",
            );
        }
        if block.fan_out.is_none() && lens.perspective.is_none() {
            let reads_perspectives = block.inputs.depends.iter().any(|dep| {
                template
                    .blocks
                    .iter()
                    .find(|b| b.id == dep.block)
                    .and_then(crate::lens::role)
                    .is_some_and(|role| role != Role::Aggregate)
            });
            if !reads_perspectives {
                push(
                    at(""),
                    "a lens block without a perspective is an aggregate, and this one reads no perspective block".into(),
                    "depend on a fan-out lens block or on blocks with `lens.perspective`, or give this block a `lens.perspective`",
                );
            }
        }
    }
}
