//! Prompt assembly for `llm` blocks, and parsing the reply back into the
//! block's declared artifacts. Pure: the runtime reads the skill file and the
//! upstream artifacts and hands their text in.
//!
//! Layout, chosen for prompt caching: providers cache a prefix, so what sibling
//! blocks share comes first. The upstream artifacts (sorted by block and key,
//! a fan-out's instances in the run's order, so blocks with the same inputs
//! produce byte-identical text) form the first,
//! cacheable system part; the block's own skill follows; the user message
//! carries the run's specifics (params, config) and, last, the corrections the
//! block must apply.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::run::{Corrections, ReplyNote};
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

    /// The prompt as an image model gets it: one text, what to draw first
    /// (the skill and output note, the task with its parameters and
    /// configuration, any corrections), then the material to draw from
    /// (the upstream artifacts). An image model has no system role and
    /// weighs the start of its prompt most.
    pub fn for_image(&self) -> String {
        let (material, instructions): (Vec<&PromptPart>, Vec<&PromptPart>) =
            self.system.iter().partition(|part| part.cacheable);
        instructions
            .into_iter()
            .chain(&self.user)
            .chain(material)
            .map(|part| part.text.trim_end())
            .collect::<Vec<_>>()
            .join("\n\n")
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
    /// Why the previous reply could not be used, if it could not.
    pub reply_note: Option<&'a ReplyNote>,
    /// How the reply must carry the artifacts.
    pub shape: ReplyShape,
    /// For an instance of a fan-out block: the item it runs for.
    pub item: Option<&'a crate::run::InstanceOf>,
    /// For a lens block: its perspective and what past ratings said.
    pub lens: Option<&'a crate::lens::Brief>,
    /// The "OPEN GAPS" section ([`crate::gaps::prompt_section`]).
    pub open_gaps: Option<&'a str>,
}

/// How a reply carries a block's artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyShape {
    /// One artifact: the whole reply; several: one ```artifact:<key> fence each.
    #[default]
    Plain,
    /// One JSON object keyed by artifact key (asked for when the provider
    /// constrains the reply to JSON and the block has several artifacts).
    JsonEnvelope,
    /// An image model's prompt: the reply is the picture, no text contract.
    Image,
}

impl ReplyShape {
    /// The shape for a block whose reply the provider constrains to JSON
    /// (`json`) or not.
    pub fn for_block(block: &Block, json: bool) -> ReplyShape {
        if json && block.outputs.artifacts.len() > 1 {
            ReplyShape::JsonEnvelope
        } else {
            ReplyShape::Plain
        }
    }
}

/// Keys of `inputs.config` that steer the runtime rather than the model
/// (documented in the README's "LLM blocks").
pub const RUNTIME_KEYS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "structured_output",
    "json_schema",
    "first_token_timeout_ms",
    "idle_timeout_ms",
    "upstream_max_chars",
    "gap_check",
];

pub fn assemble(inputs: &PromptInputs<'_>) -> Prompt {
    let block = inputs.block;
    let mut system = Vec::new();

    let mut upstream = inputs.upstream.clone();
    // By block and key; a fan-out block's instances stay in the order the
    // run gives them (a lens puts the best-rated perspective first). Stable,
    // so the same inputs still make the same text.
    upstream.sort_by(|a, b| {
        (crate::run::group_id(&a.block), &a.key).cmp(&(crate::run::group_id(&b.block), &b.key))
    });
    if let Some(limit) = block
        .inputs
        .config
        .get("upstream_max_chars")
        .and_then(Value::as_u64)
    {
        for artifact in &mut upstream {
            trim_to(&mut artifact.text, limit as usize);
        }
    }
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
    let _ = write!(instructions, "\n\n{}", output_contract(block, inputs.shape));
    system.push(PromptPart {
        text: instructions,
        cacheable: false,
    });

    let mut task = if inputs.shape == ReplyShape::Image {
        format!("Make the image for `{}` ({}) now.\n", block.id, block.name)
    } else {
        format!("Run the block `{}` ({}) now.\n", block.id, block.name)
    };
    if !inputs.params.is_empty() {
        task.push_str("\n## Run parameters\n");
        for (name, value) in inputs.params {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            let _ = writeln!(task, "- {name}: {text}");
        }
    }
    if let Some(item) = inputs.item {
        let text = item.item.as_str().map_or_else(
            || serde_json::to_string_pretty(&item.item).unwrap_or_default(),
            str::to_string,
        );
        let _ = write!(
            task,
            "\n## Your item: `{}`\nThis block runs once for each item of a list; this run is for this item only. Work on it alone; the other items are handled by other runs of the block.\n{}\n",
            item.key,
            text.trim_end()
        );
    }
    if let Some(lens) = inputs.lens {
        task.push_str(&lens.prompt_section());
    }
    let config: Vec<(&String, &Value)> = block
        .inputs
        .config
        .iter()
        .filter(|(key, _)| {
            let runtime_keys = if block.runtime == crate::template::Runtime::Image {
                crate::media_options::IMAGE_KEYS
            } else {
                RUNTIME_KEYS
            };
            !runtime_keys.contains(&key.as_str())
        })
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
    if let Some(gaps) = inputs.open_gaps {
        user.push(PromptPart {
            text: gaps.to_string(),
            cacheable: false,
        });
    }
    if let Some(corrections) = inputs.corrections.filter(|c| !c.items.is_empty()) {
        user.push(PromptPart {
            text: corrections_section(corrections),
            cacheable: false,
        });
    }
    if let Some(note) = inputs.reply_note {
        user.push(PromptPart {
            text: reply_note_section(note),
            cacheable: false,
        });
    }
    Prompt { system, user }
}

/// Cuts `text` to at most `limit` characters (at a character boundary) and
/// says how much was left out, so the model knows the artifact goes on.
fn trim_to(text: &mut String, limit: usize) {
    let count = text.chars().count();
    if count <= limit {
        return;
    }
    let cut = text
        .char_indices()
        .nth(limit)
        .map_or(text.len(), |(i, _)| i);
    text.truncate(cut);
    let _ = write!(
        text,
        "\n[… {} more characters left out: inputs.config.upstream_max_chars = {limit}]",
        count - limit
    );
}

/// The section the retry of an unusable reply reads: the engine's word,
/// apart from any person's corrections, quoting the offending part.
pub fn reply_note_section(note: &ReplyNote) -> String {
    let mut text = format!(
        "## YOUR PREVIOUS REPLY COULD NOT BE USED\nThe reply to attempt {} could not be used because {}.\n",
        note.attempt,
        note.problem.trim_end_matches('.')
    );
    if let Some(excerpt) = &note.excerpt {
        let _ = writeln!(
            text,
            "The part of that reply that caused it:\n~~~\n{}\n~~~",
            excerpt.trim_end()
        );
    }
    text.push_str("Reply again, following the output instructions exactly.\n");
    text
}

/// The corrections section: the feedback-loop seed's "EXPERT CORRECTIONS
/// (MUST APPLY)" for people's corrections, "AUDIT FINDINGS" for the
/// automatic audit's, each with its instruction and items.
pub fn corrections_section(corrections: &Corrections) -> String {
    let heading = if corrections.source.starts_with("auto-audit") {
        "## AUDIT FINDINGS (MUST FIX)"
    } else {
        "## EXPERT CORRECTIONS (MUST APPLY)"
    };
    let mut text = format!("{heading}\n");
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
        ArtifactFormat::Directory => "directory bundle (json)",
        other => other.as_str(),
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
pub fn output_contract(block: &Block, shape: ReplyShape) -> String {
    let artifacts = &block.outputs.artifacts;
    if shape == ReplyShape::Image {
        return format!(
            "## The image\nMake one image ({}). Put words into the picture only where these instructions ask for them, spelled exactly as given; the upstream artifacts after them are material to draw from, not text to print.",
            artifacts.first().map_or("png", |a| a.format.as_str())
        );
    }
    if shape == ReplyShape::JsonEnvelope && artifacts.len() > 1 {
        let mut text = String::from(
            "## Output\nReply with one JSON object and nothing else. It has exactly these keys, one per artifact:\n",
        );
        for artifact in artifacts {
            let value = match artifact.format {
                ArtifactFormat::Json | ArtifactFormat::Directory => "the JSON value itself",
                _ => "the whole text as one JSON string",
            };
            let _ = writeln!(
                text,
                "- \"{}\": {} ({})",
                artifact.key,
                value,
                format_name(artifact.format)
            );
        }
        return text;
    }
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
    #[error("the reply's JSON object has no key `{0}` for that artifact")]
    MissingKey(String),
    #[error("the reply is not the JSON object of artifacts asked for: {0}")]
    NotAnEnvelope(String),
    #[error("artifact `{key}` is not valid JSON: {error}")]
    InvalidJson {
        key: String,
        error: String,
        /// The lines around the error.
        excerpt: String,
    },
    #[error("the reply is empty")]
    Empty,
}

/// The most a reply excerpt quotes.
const EXCERPT_CHARS: usize = 600;

/// The part of `reply` that the first of `errors` is about, bounded: the
/// lines around a JSON error, or the start of a reply that lacks a section.
pub fn reply_excerpt(errors: &[ReplyError], reply: &str) -> Option<String> {
    let excerpt = match errors.first()? {
        ReplyError::InvalidJson { excerpt, .. } => excerpt.clone(),
        ReplyError::MissingSection(_)
        | ReplyError::MissingKey(_)
        | ReplyError::NotAnEnvelope(_) => reply.trim().chars().take(EXCERPT_CHARS).collect(),
        ReplyError::Empty => return None,
    };
    Some(bound(&excerpt))
}

fn bound(text: &str) -> String {
    if text.chars().count() <= EXCERPT_CHARS {
        return text.to_string();
    }
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    out.push_str(" […]");
    out
}

/// Lines `line - 2 ..= line + 1` (1-based) of `text`, the error's line marked.
fn lines_around(text: &str, line: usize, column: usize) -> String {
    let first = line.saturating_sub(3);
    let mut out = String::new();
    for (i, content) in text.lines().enumerate().skip(first).take(4) {
        let _ = writeln!(out, "{content}");
        if i + 1 == line {
            let _ = writeln!(
                out,
                "{}^ here",
                " ".repeat(column.saturating_sub(1).min(200))
            );
        }
    }
    if out.is_empty() {
        out = text
            .chars()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    }
    bound(&out)
}

/// Reasoning models (DeepSeek-R1, Qwen3, …) open their reply with a
/// `<think>…</think>` block; it is not part of the answer.
pub fn strip_reasoning(reply: &str) -> &str {
    let mut rest = reply.trim_start();
    while let Some(after) = rest.strip_prefix("<think>") {
        match after.find("</think>") {
            Some(end) => rest = after[end + "</think>".len()..].trim_start(),
            // Thinking that never ended: there is no answer.
            None => return "",
        }
    }
    rest
}

/// Splits a model reply into the block's declared artifacts (see
/// [`output_contract`]). Reports every problem it finds.
pub fn parse_reply(
    block: &Block,
    reply: &str,
    shape: ReplyShape,
) -> Result<BTreeMap<String, String>, Vec<ReplyError>> {
    let artifacts = &block.outputs.artifacts;
    let reply = strip_reasoning(reply);
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    if reply.trim().is_empty() {
        return Err(vec![ReplyError::Empty]);
    }
    match artifacts.as_slice() {
        [] => {}
        [only] => {
            let mut text = strip_single_fence(reply);
            // Models often wrap the JSON in a sentence and a fence ("Sure!
            // Here is the JSON: ```json …```"): take the one fenced block.
            if only.format == ArtifactFormat::Json
                && serde_json::from_str::<Value>(&text).is_err()
                && let Some(inner) = sole_fenced_block(reply)
            {
                text = inner;
            }
            out.insert(only.key.clone(), text);
        }
        several if shape == ReplyShape::JsonEnvelope => {
            let mut text = strip_single_fence(reply);
            if let Some(repaired) = escape_control_characters(&text) {
                text = repaired;
            }
            let object = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(object)) => object,
                Ok(other) => {
                    return Err(vec![ReplyError::NotAnEnvelope(format!(
                        "it is a JSON {}, not an object",
                        json_kind(&other)
                    ))]);
                }
                Err(error) => {
                    return Err(vec![ReplyError::InvalidJson {
                        key: "(the reply)".to_string(),
                        excerpt: lines_around(&text, error.line(), error.column()),
                        error: error.to_string(),
                    }]);
                }
            };
            for artifact in several {
                match object.get(&artifact.key) {
                    None => errors.push(ReplyError::MissingKey(artifact.key.clone())),
                    Some(value) => {
                        let text = match (artifact.format, value) {
                            (
                                ArtifactFormat::Json | ArtifactFormat::Directory,
                                Value::String(s),
                            ) if serde_json::from_str::<Value>(s).is_ok() => s.clone(),
                            (ArtifactFormat::Json | ArtifactFormat::Directory, value) => {
                                serde_json::to_string_pretty(value).unwrap_or_default()
                            }
                            (_, Value::String(s)) => s.clone(),
                            (_, value) => value.to_string(),
                        };
                        out.insert(artifact.key.clone(), format!("{}\n", text.trim_end()));
                    }
                }
            }
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
            && let Some(text) = out.get_mut(&artifact.key)
            && let Some(repaired) = escape_control_characters(text)
        {
            *text = repaired;
        }
        if artifact.format == ArtifactFormat::Json
            && let Some(text) = out.get(&artifact.key)
            && let Err(error) = serde_json::from_str::<Value>(text)
        {
            errors.push(ReplyError::InvalidJson {
                key: artifact.key.clone(),
                excerpt: lines_around(text, error.line(), error.column()),
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

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
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

/// JSON whose strings hold raw line breaks or tabs (small models write them;
/// JSON forbids them) with those characters escaped, when that is all that
/// kept it from parsing. The value is the one the writer meant, so nothing
/// is guessed; anything else wrong leaves the text as it was (None).
fn escape_control_characters(text: &str) -> Option<String> {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    for c in text.chars() {
        if in_string && !escaped && (c as u32) < 0x20 {
            changed = true;
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                other => {
                    let _ = write!(out, "\\u{:04x}", other as u32);
                }
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    (changed && serde_json::from_str::<serde::de::IgnoredAny>(&out).is_ok()).then_some(out)
}

/// The body of the reply's only fenced block, when it has exactly one.
fn sole_fenced_block(reply: &str) -> Option<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in reply.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) => current = Some(String::new()),
            (Some(body), true) => {
                blocks.push(std::mem::take(body));
                current = None;
            }
            (Some(body), false) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, false) => {}
        }
    }
    match blocks.as_slice() {
        [only] if current.is_none() => Some(only.clone()),
        _ => None,
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

    /// `templates/golden/social-card.prompt.md` is the whole prompt
    /// clone-factory's image block sends for the golden expert: the golden
    /// example of an image prompt, kept true here.
    #[test]
    fn the_social_card_prompt_for_the_golden_expert_is_its_golden_example() {
        let template: crate::template::Template =
            serde_json::from_str(include_str!("../../../templates/clone-factory.json")).unwrap();
        let card = template
            .blocks
            .iter()
            .find(|b| b.id == "social-card")
            .expect("clone-factory has a social-card block");
        let golden = |block: &str, key: &str, text: &str| UpstreamText {
            block: block.into(),
            key: key.into(),
            format: ArtifactFormat::Json,
            text: text.into(),
        };
        let params: BTreeMap<String, Value> =
            [("expert_name".to_string(), Value::from("Marisol Vega"))].into();
        let prompt = assemble(&PromptInputs {
            block: card,
            skill: Some(include_str!(
                "../../../templates/skills/social-card/SKILL.md"
            )),
            params: &params,
            upstream: vec![
                golden(
                    "framework-extractor",
                    "frameworks-json",
                    include_str!("../../../templates/golden/frameworks.json"),
                ),
                golden(
                    "soul-extractor",
                    "soul-json",
                    include_str!("../../../templates/golden/soul.json"),
                ),
                golden(
                    "extraction-router",
                    "correction-plan",
                    "{\"routed\": [], \"improvement_summary\": \"First pass: no corrections.\"}",
                ),
            ],
            corrections: None,
            reply_note: None,
            shape: ReplyShape::Image,
            item: None,
            lens: None,
            open_gaps: None,
        })
        .for_image();
        let expected = include_str!("../../../templates/golden/social-card.prompt.md");
        assert!(
            prompt.trim_end() == expected.trim_end(),
            "the social card's prompt changed; if that is meant, write this to templates/golden/social-card.prompt.md:\n{prompt}"
        );
        assert!(prompt.chars().count() <= crate::media_options::DEFAULT_MAX_PROMPT_CHARS);
    }

    #[test]
    fn a_fan_outs_instances_keep_the_runs_order_among_sorted_blocks() {
        let params = BTreeMap::new();
        let soul =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let prompt = assemble(&PromptInputs {
            block: &soul,
            skill: None,
            params: &params,
            upstream: vec![
                upstream("zeta", "out", "z"),
                upstream("lens[risk]", "out", "r"),
                upstream("lens[gaps]", "out", "g"),
                upstream("alpha", "out", "a"),
            ],
            corrections: None,
            reply_note: None,
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
        });
        let text = &prompt.system[0].text;
        let at = |id: &str| text.find(&format!("## {id}.out")).unwrap();
        assert!(at("alpha") < at("lens[risk]"));
        assert!(
            at("lens[risk]") < at("lens[gaps]"),
            "the run's order, not the alphabet"
        );
        assert!(at("lens[gaps]") < at("zeta"));
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
            reply_note: None,
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
        });
        let b = assemble(&PromptInputs {
            block: &voice,
            skill: Some("# Skill B"),
            params: &params,
            upstream: reversed,
            corrections: None,
            reply_note: None,
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
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
            reply_note: None,
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
        });
        let last = &prompt.user.last().unwrap().text;
        assert!(last.starts_with("## EXPERT CORRECTIONS (MUST APPLY)\nIMPORTANT: apply\n"));
        assert!(last.contains(
            "- FINDING: Missing value\n  CORRECTION: I never rank people\n  PRIORITY: critical"
        ));
        assert!(prompt.render().contains("===== SYSTEM ====="));
    }

    #[test]
    fn single_artifact_replies_lose_a_wrapping_fence() {
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let parsed = parse_reply(&b, "```json\n{\"values\": [1]}\n```", ReplyShape::Plain).unwrap();
        assert_eq!(parsed["soul-json"], "{\"values\": [1]}\n");
        let errors =
            parse_reply(&b, "Here you go: {\"values\": [1]", ReplyShape::Plain).unwrap_err();
        assert!(matches!(&errors[0], ReplyError::InvalidJson { key, .. } if key == "soul-json"));
        assert_eq!(
            parse_reply(&b, "  \n", ReplyShape::Plain).unwrap_err(),
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
        let parsed = parse_reply(&b, reply, ReplyShape::Plain).unwrap();
        assert_eq!(
            parsed["system-prompt"],
            "# Prompt\n```python\nprint(1)\n```\nend\n"
        );
        assert_eq!(parsed["tool-configs"], "{\"tools\": []}\n");
        let errors =
            parse_reply(&b, "```artifact:system-prompt\nx\n```", ReplyShape::Plain).unwrap_err();
        assert_eq!(
            errors,
            vec![ReplyError::MissingSection("tool-configs".into())]
        );
    }

    #[test]
    fn a_reply_note_is_its_own_last_section_and_quotes_the_reply() {
        let params = BTreeMap::new();
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let reply = "{\n  \"values\": [\n    \"a\",\n  ]\n}";
        let errors = parse_reply(&b, reply, ReplyShape::Plain).unwrap_err();
        let excerpt = reply_excerpt(&errors, reply).unwrap();
        assert!(
            excerpt.contains("\"a\",") && excerpt.contains("^ here"),
            "{excerpt}"
        );
        let note = ReplyNote {
            attempt: 2,
            problem: errors[0].to_string(),
            excerpt: Some(excerpt),
        };
        let prompt = assemble(&PromptInputs {
            block: &b,
            skill: None,
            params: &params,
            upstream: vec![],
            corrections: None,
            reply_note: Some(&note),
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
        });
        let last = &prompt.user.last().unwrap().text;
        assert!(last.starts_with("## YOUR PREVIOUS REPLY COULD NOT BE USED\nThe reply to attempt 2 could not be used because artifact `soul-json` is not valid JSON: trailing comma"), "{last}");
        assert!(!prompt.render().contains("EXPERT CORRECTIONS"));
    }

    #[test]
    fn audit_findings_are_not_presented_as_an_experts() {
        let corrections = Corrections {
            version: "v1→v2".into(),
            source: "auto-audit A:4.0".into(),
            items: vec![],
            instruction: "fix".into(),
        };
        assert!(corrections_section(&corrections).starts_with("## AUDIT FINDINGS (MUST FIX)\nfix"));
    }

    #[test]
    fn json_wrapped_in_prose_and_a_fence_is_found() {
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let parsed = parse_reply(
            &b,
            "Sure! Here is the JSON:\n```json\n{\"a\": 1}\n```\nHope it helps.",
            ReplyShape::Plain,
        )
        .unwrap();
        assert_eq!(parsed["soul-json"], "{\"a\": 1}\n");
        // Broken JSON inside the fence is reported against the fence's lines.
        let reply = "Here:\n```json\n{\n  \"a\": [1,],\n}\n```";
        let errors = parse_reply(&b, reply, ReplyShape::Plain).unwrap_err();
        let excerpt = reply_excerpt(&errors, reply).unwrap();
        assert!(excerpt.starts_with("{\n  \"a\": [1,],"), "{excerpt}");
        // Two fences: ambiguous, nothing is guessed.
        assert!(parse_reply(&b, "```\n{}\n```\n```\n{}\n```", ReplyShape::Plain).is_err());
    }

    #[test]
    fn raw_line_breaks_inside_json_strings_are_escaped() {
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let parsed = parse_reply(
            &b,
            "{\"quote\": \"line one\nline two\tend\", \"n\": 1}",
            ReplyShape::Plain,
        )
        .unwrap();
        let value: Value = serde_json::from_str(&parsed["soul-json"]).unwrap();
        assert_eq!(value["quote"], "line one\nline two\tend");
        // Anything else wrong is still reported, not guessed at.
        assert!(parse_reply(&b, "{\"a\": \"x\ny\",}", ReplyShape::Plain).is_err());
        // Line breaks between values are JSON's own and stay.
        assert_eq!(escape_control_characters("{\n  \"a\": 1\n}"), None);
    }

    #[test]
    fn reasoning_is_stripped_before_parsing() {
        let b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        let parsed = parse_reply(
            &b,
            "<think>\nThe user wants {JSON\n</think>\n\n{\"a\": 1}",
            ReplyShape::Plain,
        )
        .unwrap();
        assert_eq!(parsed["soul-json"], "{\"a\": 1}\n");
        assert_eq!(
            parse_reply(&b, "<think>never ends {", ReplyShape::Plain).unwrap_err(),
            vec![ReplyError::Empty]
        );
        // Only a leading block is reasoning; a `<think>` inside the answer stays.
        assert_eq!(strip_reasoning("a <think>b</think>"), "a <think>b</think>");
    }

    #[test]
    fn a_json_envelope_carries_several_artifacts() {
        let b = block(serde_json::json!([
            {"key": "system-prompt", "path": "system-prompt.md", "format": "md"},
            {"key": "tool-configs", "path": "tools.json", "format": "json"}
        ]));
        assert_eq!(ReplyShape::for_block(&b, true), ReplyShape::JsonEnvelope);
        let contract = output_contract(&b, ReplyShape::JsonEnvelope);
        assert!(
            contract.contains("\"tool-configs\": the JSON value itself"),
            "{contract}"
        );
        let parsed = parse_reply(
            &b,
            "{\"system-prompt\": \"# Prompt\\nBe kind.\", \"tool-configs\": {\"tools\": []}}",
            ReplyShape::JsonEnvelope,
        )
        .unwrap();
        assert_eq!(parsed["system-prompt"], "# Prompt\nBe kind.\n");
        assert_eq!(
            serde_json::from_str::<Value>(&parsed["tool-configs"]).unwrap(),
            serde_json::json!({"tools": []})
        );
        let errors =
            parse_reply(&b, "{\"system-prompt\": \"x\"}", ReplyShape::JsonEnvelope).unwrap_err();
        assert_eq!(errors, vec![ReplyError::MissingKey("tool-configs".into())]);
        let errors = parse_reply(&b, "[1]", ReplyShape::JsonEnvelope).unwrap_err();
        assert!(matches!(&errors[0], ReplyError::NotAnEnvelope(_)));
    }

    #[test]
    fn upstream_can_be_trimmed_per_artifact() {
        let params = BTreeMap::new();
        let mut b =
            block(serde_json::json!([{"key": "soul-json", "path": "soul.json", "format": "json"}]));
        b.inputs
            .config
            .insert("upstream_max_chars".into(), Value::from(10));
        let prompt = assemble(&PromptInputs {
            block: &b,
            skill: None,
            params: &params,
            upstream: vec![upstream("a", "k", "0123456789ABCDEFGHIJ")],
            corrections: None,
            reply_note: None,
            shape: ReplyShape::Plain,
            item: None,
            lens: None,
            open_gaps: None,
        });
        let text = &prompt.system[0].text;
        assert!(
            text.contains("0123456789\n[… 10 more characters left out"),
            "{text}"
        );
        assert!(!text.contains("ABC"));
        assert!(!prompt.user[0].text.contains("upstream_max_chars"));
    }
}
