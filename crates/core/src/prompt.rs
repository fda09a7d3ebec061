//! Prompt assembly for `llm` blocks, and parsing the reply back into the
//! block's declared artifacts. Pure: the runtime reads the skill file and the
//! upstream artifacts and hands their text in.
//!
//! Layout, chosen for prompt caching: providers cache a prefix, so what sibling
//! blocks share comes first. The upstream artifacts (sorted by block and key,
//! so blocks with the same inputs produce byte-identical text) form the first,
//! cacheable system part; the block's own skill follows; the user message
//! carries the run's specifics (params, config) and, last, the corrections the
//! block must apply.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::run::Corrections;
use crate::template::{ArtifactFormat, Block};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptPart {
    pub text: String,
    pub cacheable: bool,
}

/// The assembled prompt: system parts (cacheable prefix first) and user parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub system: Vec<PromptPart>,
    pub user: Vec<PromptPart>,
}

impl Prompt {
    /// The whole prompt as one text, for `factory prompt` and the audit trail.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (role, parts) in [("SYSTEM", &self.system), ("USER", &self.user)] {
            for part in parts {
                let cache = if part.cacheable { " (cacheable)" } else { "" };
                let _ = writeln!(out, "===== {role}{cache} =====\n{}\n", part.text.trim_end());
            }
        }
        out
    }
}

/// An upstream artifact as prompt input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamText {
    pub block: String,
    pub key: String,
    pub format: ArtifactFormat,
    pub text: String,
}

pub struct PromptInputs<'a> {
    pub block: &'a Block,
    /// The text of `skills/<skill>/SKILL.md`.
    pub skill: Option<&'a str>,
    pub params: &'a BTreeMap<String, Value>,
    pub upstream: Vec<UpstreamText>,
    pub corrections: Option<&'a Corrections>,
}

/// Keys of `inputs.config` that steer the runtime rather than the model.
const RUNTIME_KEYS: &[&str] = &["max_tokens", "temperature", "stream"];

pub fn assemble(inputs: &PromptInputs<'_>) -> Prompt {
    let block = inputs.block;
    let mut system = Vec::new();

    let mut upstream = inputs.upstream.clone();
    upstream.sort_by(|a, b| (&a.block, &a.key).cmp(&(&b.block, &b.key)));
    if !upstream.is_empty() {
        let mut text = String::from(
            "# UPSTREAM ARTIFACTS\nThese are the outputs of earlier blocks of this pipeline. Build on them; do not contradict them.\n",
        );
        for artifact in &upstream {
            let _ = write!(
                text,
                "\n## {}.{} ({})\n{}\n",
                artifact.block,
                artifact.key,
                format_name(artifact.format),
                artifact.text.trim_end()
            );
        }
        system.push(PromptPart {
            text,
            cacheable: true,
        });
    }

    let mut instructions = String::new();
    match inputs.skill {
        Some(skill) => instructions.push_str(skill.trim_end()),
        None => {
            let _ = write!(
                instructions,
                "# {}\n{}",
                block.name,
                block.description.as_deref().unwrap_or("")
            );
        }
    }
    let _ = write!(instructions, "\n\n{}", output_contract(block));
    system.push(PromptPart {
        text: instructions,
        cacheable: false,
    });

    let mut task = format!("Run the block `{}` ({}) now.\n", block.id, block.name);
    if !inputs.params.is_empty() {
        task.push_str("\n## Run parameters\n");
        for (name, value) in inputs.params {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            let _ = writeln!(task, "- {name}: {text}");
        }
    }
    let config: Vec<(&String, &Value)> = block
        .inputs
        .config
        .iter()
        .filter(|(key, _)| !RUNTIME_KEYS.contains(&key.as_str()))
        .collect();
    if !config.is_empty() {
        task.push_str("\n## Block configuration\n");
        for (key, value) in config {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            let _ = writeln!(task, "- {key}: {}", substitute_params(&text, inputs.params));
        }
    }
    let mut user = vec![PromptPart {
        text: task,
        cacheable: false,
    }];
    if let Some(corrections) = inputs.corrections.filter(|c| !c.items.is_empty()) {
        user.push(PromptPart {
            text: corrections_section(corrections),
            cacheable: false,
        });
    }
    Prompt { system, user }
}

/// The "EXPERT CORRECTIONS (MUST APPLY)" section of the feedback-loop seed.
pub fn corrections_section(corrections: &Corrections) -> String {
    let mut text = String::from(
        "## EXPERT CORRECTIONS (MUST APPLY)\nThe expert reviewed the previous version and flagged these corrections.\nApply each one. Do not remove correct content — only fix flagged items.\n",
    );
    let _ = writeln!(text, "{}\n", corrections.instruction);
    for item in &corrections.items {
        let _ = writeln!(
            text,
            "- FINDING: {}\n  CORRECTION: {}\n  PRIORITY: {}\n",
            item.finding, item.correction, item.priority
        );
    }
    text
}

fn format_name(format: ArtifactFormat) -> &'static str {
    match format {
        ArtifactFormat::Md => "markdown",
        ArtifactFormat::Json => "json",
        ArtifactFormat::Html => "html",
        ArtifactFormat::Text => "text",
        ArtifactFormat::Url => "url",
        ArtifactFormat::Csv => "csv",
        ArtifactFormat::Yaml => "yaml",
        ArtifactFormat::Directory => "directory bundle (json)",
    }
}

/// `{{params.NAME}}` in config values becomes the run param's value.
fn substitute_params(text: &str, params: &BTreeMap<String, Value>) -> String {
    let mut out = text.to_string();
    for (name, value) in params {
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        out = out.replace(&format!("{{{{params.{name}}}}}"), &value);
    }
    out
}

/// How the reply must be shaped so it can be split into artifacts.
pub fn output_contract(block: &Block) -> String {
    let artifacts = &block.outputs.artifacts;
    match artifacts.as_slice() {
        [] => "## Output\nReply with your result as plain text.".to_string(),
        [only] => format!(
            "## Output\nReply with the content of the artifact `{}` ({}) and nothing else: no preamble, no closing remarks.{}",
            only.key,
            format_name(only.format),
            if only.format == ArtifactFormat::Json {
                " It must be one valid JSON document."
            } else {
                ""
            }
        ),
        several => {
            let mut text = String::from(
                "## Output\nReply with one fenced section per artifact, each opened by a line ```artifact:<key> and closed by a line ```. Nothing outside these sections is kept.\n",
            );
            for artifact in several {
                let _ = writeln!(
                    text,
                    "- ```artifact:{}  ({})",
                    artifact.key,
                    format_name(artifact.format)
                );
            }
            text
        }
    }
}

/// Why a reply could not be turned into the block's artifacts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply has no section for artifact `{0}` (expected a ```artifact:{0} fence)")]
    MissingSection(String),
    #[error("artifact `{key}` is not valid JSON: {error}")]
    InvalidJson { key: String, error: String },
    #[error("the reply is empty")]
    Empty,
}

/// Splits a model reply into the block's declared artifacts (see
/// [`output_contract`]). Reports every problem it finds.
pub fn parse_reply(
    block: &Block,
    reply: &str,
) -> Result<BTreeMap<String, String>, Vec<ReplyError>> {
    let artifacts = &block.outputs.artifacts;
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    if reply.trim().is_empty() {
        return Err(vec![ReplyError::Empty]);
    }
    match artifacts.as_slice() {
        [] => {}
        [only] => {
            out.insert(only.key.clone(), strip_single_fence(reply));
        }
        several => {
            let sections = fenced_sections(reply);
            for artifact in several {
                match sections.get(artifact.key.as_str()) {
                    Some(text) => {
                        out.insert(artifact.key.clone(), text.clone());
                    }
                    None => errors.push(ReplyError::MissingSection(artifact.key.clone())),
                }
            }
        }
    }
    for artifact in artifacts {
        if artifact.format == ArtifactFormat::Json
            && let Some(text) = out.get(&artifact.key)
            && let Err(error) = serde_json::from_str::<Value>(text)
        {
            errors.push(ReplyError::InvalidJson {
                key: artifact.key.clone(),
                error: error.to_string(),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A reply that is exactly one fenced block (```json … ```) loses the fence.
fn strip_single_fence(reply: &str) -> String {
    let trimmed = reply.trim();
    if let Some(rest) = trimmed.strip_prefix("```")
        && let Some(body) = rest.strip_suffix("```")
        && let Some(newline) = body.find('\n')
        && !body[newline..].contains("\n```")
    {
        return body[newline + 1..].trim_end().to_string() + "\n";
    }
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}\n")
    }
}

/// `artifact:<key>` fences. A fence line inside a section that is not a bare
/// closing fence (e.g. ```json) nests one level, so artifacts may contain code.
fn fenced_sections(reply: &str) -> BTreeMap<&str, String> {
    let mut sections = BTreeMap::new();
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        let Some(key) = line.trim().strip_prefix("```artifact:") else {
            continue;
        };
        let key = key.trim();
        let mut body = String::new();
        let mut depth = 0;
        for inner in lines.by_ref() {
            let fence = inner.trim();
            if fence == "```" {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            } else if fence.starts_with("```") {
                depth += 1;
            }
            body.push_str(inner);
            body.push('\n');
        }
        sections.insert(key, body);
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::CorrectionItem;

    fn block(artifacts: serde_json::Value) -> Block {
        serde_json::from_value(serde_json::json!({
            "id": "soul-extractor", "name": "Soul Extractor", "layer": "L2", "type": "extract",
            "runtime": "llm", "skill": "soul-extractor",
            "inputs": {"config": {"focus": "values of {{params.expert_name}}", "max_tokens": 4000}},
            "outputs": {"artifacts": artifacts}
        }))
        .unwrap()
    }

    fn upstream(block: &str, key: &str, text: &str) -> UpstreamText {
        UpstreamText {
            block: block.into(),
            key: key.into(),
            format: ArtifactFormat::Json,
            text: text.into(),
        }
    }

    #[test]
    fn shared_upstream_comes_first_and_is_identical_across_siblings() {
        let params = BTreeMap::from([("expert_name".to_string(), Value::from("Marisol Vega"))]);
        let soul =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let mut voice = soul.clone();
        voice.id = "voice-extractor".into();
        let ups = vec![
            upstream("expert-framework-creator", "expert-framework", "{\"a\":1}"),
            upstream("rubric-builder", "rubric", "{}"),
        ];
        let mut reversed = ups.clone();
        reversed.reverse();
        let a = assemble(&PromptInputs {
            block: &soul,
            skill: Some("# Skill"),
            params: &params,
            upstream: ups,
            corrections: None,
        });
        let b = assemble(&PromptInputs {
            block: &voice,
            skill: Some("# Skill B"),
            params: &params,
            upstream: reversed,
            corrections: None,
        });
        assert!(a.system[0].cacheable);
        assert_eq!(a.system[0], b.system[0], "byte-identical cacheable prefix");
        assert!(
            a.system[0]
                .text
                .contains("## expert-framework-creator.expert-framework (json)")
        );
        let task = &a.user[0].text;
        assert!(task.contains("- expert_name: Marisol Vega"));
        assert!(task.contains("- focus: values of Marisol Vega"), "{task}");
        assert!(
            !task.contains("max_tokens"),
            "runtime knobs stay out of the prompt"
        );
        assert!(
            a.system[1]
                .text
                .contains("Reply with the content of the artifact `soul-json`")
        );
    }

    #[test]
    fn corrections_section_is_last_and_lists_every_item() {
        let params = BTreeMap::new();
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let corrections = Corrections {
            version: "v1→v2".into(),
            source: "gate rejection".into(),
            items: vec![CorrectionItem {
                finding: "Missing value".into(),
                correction: "I never rank people".into(),
                priority: "critical".into(),
                improvement_item_id: None,
            }],
            instruction: "IMPORTANT: apply".into(),
        };
        let prompt = assemble(&PromptInputs {
            block: &b,
            skill: None,
            params: &params,
            upstream: vec![],
            corrections: Some(&corrections),
        });
        let last = &prompt.user.last().unwrap().text;
        assert!(last.starts_with("## EXPERT CORRECTIONS (MUST APPLY)"));
        assert!(last.contains(
            "- FINDING: Missing value\n  CORRECTION: I never rank people\n  PRIORITY: critical"
        ));
        assert!(prompt.render().contains("===== SYSTEM ====="));
    }

    #[test]
    fn single_artifact_replies_lose_a_wrapping_fence() {
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let parsed = parse_reply(&b, "```json\n{\"values\": [1]}\n```").unwrap();
        assert_eq!(parsed["soul-json"], "{\"values\": [1]}\n");
        let errors = parse_reply(&b, "Here you go: {\"values\": [1]").unwrap_err();
        assert!(matches!(&errors[0], ReplyError::InvalidJson { key, .. } if key == "soul-json"));
        assert_eq!(
            parse_reply(&b, "  \n").unwrap_err(),
            vec![ReplyError::Empty]
        );
    }

    #[test]
    fn several_artifacts_come_from_named_fences() {
        let b = block(serde_json::json!([
            {"key": "system-prompt", "path": "system-prompt.md", "format": "md"},
            {"key": "tool-configs", "path": "tools.json", "format": "json"}
        ]));
        let reply = "Intro text\n```artifact:system-prompt\n# Prompt\n```python\nprint(1)\n```\nend\n```\n```artifact:tool-configs\n{\"tools\": []}\n```\n";
        let parsed = parse_reply(&b, reply).unwrap();
        assert_eq!(
            parsed["system-prompt"],
            "# Prompt\n```python\nprint(1)\n```\nend\n"
        );
        assert_eq!(parsed["tool-configs"], "{\"tools\": []}\n");
        let errors = parse_reply(&b, "```artifact:system-prompt\nx\n```").unwrap_err();
        assert_eq!(
            errors,
            vec![ReplyError::MissingSection("tool-configs".into())]
        );
    }
}
