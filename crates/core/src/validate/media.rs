//! `image` and `speech` blocks: one media artifact of a kind the provider
//! makes, knobs that parse, and (speech) a script to read.

use crate::diagnostics::{Diagnostic, codes};
use crate::media_options::{is_optional, parse_image, parse_speech};
use crate::template::{ArtifactFormat, Block, Runtime, Template};

/// An optional image or speech block may be left out (done without its
/// artifact), so no block may read that artifact: it would read nothing.
/// A speech block speaks one script, never a fan-out's many.
pub(super) fn check_optional_readers(template: &Template, out: &mut Vec<Diagnostic>) {
    for (i, block) in template.blocks.iter().enumerate() {
        for (n, dep) in block.inputs.depends.iter().enumerate() {
            let Some(source) = template.blocks.iter().find(|b| b.id == dep.block) else {
                continue;
            };
            let script = block
                .inputs
                .config
                .get("script")
                .and_then(|s| s.as_str())
                .and_then(|s| s.trim().split_once('.'));
            let is_script = block.runtime == Runtime::Speech
                && script.is_none_or(|(b, k)| b == dep.block && k == dep.key);
            if is_script && source.fan_out.is_some() {
                out.push(
                    Diagnostic::error(
                        codes::RUNTIME_CONFIG,
                        format!("$.blocks[{i}].inputs.depends[{n}]"),
                        format!(
                            "speech block `{}` would speak `{}.{}`, which fans out into one artifact per item; it speaks one script",
                            block.id, dep.block, dep.key
                        ),
                    )
                    .in_block(block.id.clone())
                    .with_help("have one block join the items into one script and speak that"),
                );
            }
            if source.runtime.makes_media() && is_optional(&source.inputs.config) {
                out.push(
                    Diagnostic::error(
                        codes::RUNTIME_CONFIG,
                        format!("$.blocks[{i}].inputs.depends[{n}]"),
                        format!(
                            "block `{}` reads `{}.{}`, which is optional: it is left out when no provider for its model is configured, and this block would read nothing",
                            block.id, dep.block, dep.key
                        ),
                    )
                    .in_block(block.id.clone())
                    .with_help(format!(
                        "remove the dependency, or make `{}` required (drop inputs.config.optional)",
                        dep.block
                    )),
                );
            }
        }
    }
}

pub(super) fn check(i: usize, block: &Block, error: &mut impl FnMut(String, String, &str)) {
    let config_path = |key: &str| format!("$.blocks[{i}].inputs.config.{key}");
    let (kinds, example): (&[ArtifactFormat], &str) = match block.runtime {
        Runtime::Image => (
            &[
                ArtifactFormat::Png,
                ArtifactFormat::Jpeg,
                ArtifactFormat::Webp,
            ],
            "{\"key\": \"card\", \"path\": \"card.png\", \"format\": \"png\"}",
        ),
        _ => (
            &[
                ArtifactFormat::Mp3,
                ArtifactFormat::Wav,
                ArtifactFormat::Ogg,
            ],
            "{\"key\": \"episode\", \"path\": \"episode.mp3\", \"format\": \"mp3\"}",
        ),
    };
    let names = kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let runtime = block.runtime.as_str();
    let a = if block.runtime == Runtime::Image {
        "an"
    } else {
        "a"
    };
    match block.outputs.artifacts.as_slice() {
        [only] if kinds.contains(&only.format) => {}
        [only] => error(
            format!("$.blocks[{i}].outputs.artifacts[0].format"),
            format!(
                "{a} `{runtime}` block makes one {names} artifact; `{}` is declared `{}`",
                only.key,
                only.format.as_str()
            ),
            &format!("declare one of {names}"),
        ),
        artifacts => error(
            format!("$.blocks[{i}].outputs.artifacts"),
            format!(
                "{a} `{runtime}` block makes exactly one artifact ({names}); it declares {}",
                artifacts.len()
            ),
            &format!("declare one, e.g. {example}; make several with several blocks or `fan_out`"),
        ),
    }
    if block.runtime == Runtime::Image {
        if block.skill.as_deref().is_none_or(str::is_empty)
            && block
                .description
                .as_deref()
                .is_none_or(|d| d.trim().is_empty())
        {
            error(
                format!("$.blocks[{i}].skill"),
                "an `image` block needs a `skill` (skills/<skill>/SKILL.md says what to draw) or a `description`".into(),
                "set \"skill\": \"<name>\"",
            );
        }
        if let Err(problems) = parse_image(&block.inputs.config) {
            for problem in problems {
                error(
                    config_path(&problem.key),
                    format!("`{}` must be {}", problem.key, problem.message),
                    "fix the value, or remove the key to use the default (README, \"Image and speech blocks\")",
                );
            }
        }
        return;
    }
    if block.skill.is_some() {
        error(
            format!("$.blocks[{i}].skill"),
            "a `speech` block has no prompt, so a `skill` would be read by nobody".into(),
            "remove `skill`; the text to speak is an upstream artifact (inputs.config.script), and how to speak it goes in inputs.config.instructions",
        );
    }
    let problems = parse_speech(&block.inputs.config).err().unwrap_or_default();
    for problem in &problems {
        error(
            config_path(&problem.key),
            format!("`{}` must be {}", problem.key, problem.message),
            "see README, \"Image and speech blocks\"",
        );
    }
    // Checked even when other settings are wrong: a script that is not
    // wired in is its own mistake.
    if !problems.iter().any(|p| p.key == "script") {
        let script = block
            .inputs
            .config
            .get("script")
            .and_then(|s| s.as_str())
            .and_then(|s| s.trim().split_once('.'))
            .map(|(b, k)| (b.to_string(), k.to_string()));
        {
            let depends = &block.inputs.depends;
            match &script {
                Some((from, key)) if !depends.iter().any(|d| &d.block == from && &d.key == key) => {
                    error(
                        config_path("script"),
                        format!(
                            "the script `{from}.{key}` is not one of this block's dependencies"
                        ),
                        &format!(
                            "add {{\"block\": \"{from}\", \"key\": \"{key}\"}} to `inputs.depends`, or name one of them"
                        ),
                    )
                }
                Some(_) => {}
                None if depends.len() != 1 => error(
                    config_path("script"),
                    format!(
                        "a `speech` block with {} dependencies must say which one is the script",
                        depends.len()
                    ),
                    "set \"script\": \"BLOCK.KEY\" (the upstream artifact to speak), or depend on the script alone",
                ),
                None => {}
            }
        }
    }
}
