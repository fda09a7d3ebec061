//! `fan_out`: a block that runs once per item of a list known at run time.
//!
//! What must hold before a run starts: the list has exactly one source, and
//! that source is something the block can read when it becomes ready (a
//! declared param, or a JSON artifact of one of its own dependencies); the
//! bounds make sense; and the block is of a kind whose instances the engine
//! can tell apart (an `llm` or `image` block gets its item in the prompt, a `command`
//! block in `FACTORY_ITEM`).

use crate::diagnostics::{Diagnostic, codes};
use crate::template::{ArtifactFormat, FAN_OUT_LIMIT, Need, Runtime, Template};

pub(super) fn check(template: &Template, out: &mut Vec<Diagnostic>) {
    let stream = matches!(crate::stream::plan(template), Ok(Some(_)));
    for (i, block) in template.blocks.iter().enumerate() {
        let Some(fan_out) = &block.fan_out else {
            continue;
        };
        let at = |suffix: &str| format!("$.blocks[{i}].fan_out{suffix}");
        let mut push = |diagnostic: Diagnostic| out.push(diagnostic.in_block(block.id.clone()));
        let error = |path: String, message: String, help: &str| {
            Diagnostic::error(codes::FAN_OUT, path, message).with_help(help.to_string())
        };
        if stream {
            push(error(
                at(""),
                "`fan_out` in a stream template: a stream moves records, one block per stage"
                    .into(),
                "remove `fan_out`; a stream already runs its stages once per record",
            ));
        }
        // The `noop` and `sleep` built-ins read nothing, so a map of them is
        // harmless (a bench, a placeholder); other built-ins read the run's
        // own state, the same for every instance.
        let placeholder = block.runtime == Runtime::Builtin
            && matches!(
                block.inputs.config.get("builtin").and_then(|b| b.as_str()),
                Some("noop" | "sleep")
            );
        if !matches!(
            block.runtime,
            Runtime::Llm | Runtime::Image | Runtime::Command
        ) && !placeholder
        {
            push(error(
                format!("$.blocks[{i}].runtime"),
                format!(
                    "`fan_out` on a `{}` block: only `llm`, `image` and `command` blocks can tell their instances apart (the item reaches an llm or image block's prompt and a command's FACTORY_ITEM)",
                    block.runtime.as_str()
                ),
                "fan out an `llm`, `image` or `command` block (or the `noop` and `sleep` built-ins, which do nothing with it)",
            ));
        }
        if !block.outputs.emits.is_empty() {
            push(error(
                format!("$.blocks[{i}].outputs.emits"),
                "`outputs.emits` on a fan-out block: its instances would each emit, once per item"
                    .into(),
                "emit from the block that reads the group's artifacts",
            ));
        }
        let source = &fan_out.over;
        match (&source.param, &source.block, &source.artifact) {
            (Some(param), None, None) => {
                if !template.params.contains_key(param) {
                    push(error(
                        at(".over.param"),
                        format!(
                            "the list comes from param `{param}`, which the template does not declare"
                        ),
                        "declare it under `params` (a JSON array), or name a declared param",
                    ));
                }
            }
            (None, Some(from), Some(artifact)) => {
                if !block.inputs.depends.iter().any(|d| &d.block == from) {
                    push(error(
                        at(".over.block"),
                        format!(
                            "the list comes from block `{from}`, which is not one of this block's dependencies, so it may not be done when the list is read"
                        ),
                        &format!(
                            "add {{\"block\": \"{from}\", \"key\": \"{artifact}\"}} to `inputs.depends`"
                        ),
                    ));
                }
                let source_block = template.blocks.iter().find(|b| &b.id == from);
                if source_block.is_some_and(|b| b.fan_out.is_some()) {
                    push(error(
                        at(".over.block"),
                        format!(
                            "the list comes from `{from}`, which fans out itself: it makes one `{artifact}` per instance, not one list"
                        ),
                        "read the list from a block that runs once (for example one that merges the instances' lists)",
                    ));
                }
                match source_block.map(|b| b.outputs.artifacts.iter().find(|a| &a.key == artifact))
                {
                    None => {}
                    Some(None) => push(error(
                        at(".over.artifact"),
                        format!("block `{from}` has no artifact `{artifact}`"),
                        "name one of its `outputs.artifacts` keys",
                    )),
                    Some(Some(spec)) if spec.format != ArtifactFormat::Json => push(error(
                        at(".over.artifact"),
                        format!(
                            "`{from}.{artifact}` is not a `json` artifact, so it cannot hold a list"
                        ),
                        "read the list from a `json` artifact",
                    )),
                    Some(Some(_)) => {}
                }
            }
            _ => push(error(
                at(".over"),
                "`fan_out.over` must name either a `param`, or a `block` and its `artifact`".into(),
                "e.g. {\"param\": \"perspectives\"} or {\"block\": \"planner\", \"artifact\": \"plan\", \"pointer\": \"/items\"}",
            )),
        }
        if let Some(pointer) = &source.pointer
            && !pointer.is_empty()
            && !pointer.starts_with('/')
        {
            push(error(
                at(".over.pointer"),
                format!("`{pointer}` is not a JSON pointer"),
                "start it with `/`, e.g. `/perspectives` or `/plan/items` (RFC 6901)",
            ));
        }
        if fan_out.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            push(error(
                at(".key"),
                "`fan_out.key` is empty".into(),
                "name the field of each item that names its instance, or remove `key`",
            ));
        }
        if fan_out.max == 0 || fan_out.max > FAN_OUT_LIMIT {
            push(error(
                at(".max"),
                format!(
                    "`fan_out.max` is {}; it must be 1 to {FAN_OUT_LIMIT}",
                    fan_out.max
                ),
                "set the most instances the list may make",
            ));
        }
        if let Need::AtLeast(k) = fan_out.need
            && (k == 0 || k > fan_out.max)
        {
            push(error(
                at(".need"),
                format!(
                    "`need: {{\"at_least\": {k}}}` must be between 1 and `max` ({})",
                    fan_out.max
                ),
                "use \"all\", \"any\", or at_least 1 to max",
            ));
        }
    }
}
