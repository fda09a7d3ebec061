//! The `llm` runtime: assemble the prompt from the block's SKILL.md, upstream
//! artifacts, params and corrections; call the provider the block's model
//! resolves to; split the reply into the declared artifacts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use factory_core::prompt::{self, PromptInputs, UpstreamText};
use factory_llm::{Anthropic, ChatRequest, Client, LlmError, OpenAiCompatible, Part, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AttemptInput, Execution};

/// Built-in model aliases; `FACTORY_MODEL_<ALIAS>` overrides each.
const ALIASES: &[(&str, &str)] = &[
    ("opus", "anthropic:claude-opus-4-5"),
    ("sonnet", "anthropic:claude-sonnet-4-5"),
    ("haiku", "anthropic:claude-haiku-4-5"),
];

/// Which providers are configured, and how model names resolve to them.
/// Built from the environment; keys stay inside the provider clients.
pub struct LlmSettings {
    clients: BTreeMap<String, Client>,
    aliases: BTreeMap<String, String>,
    default_model: String,
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("providers", &self.clients.keys().collect::<Vec<_>>())
            .field("aliases", &self.aliases)
            .field("default_model", &self.default_model)
            .finish()
    }
}

/// One call's record for the attempt: what was asked, what came back, what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    pub provider: String,
    pub model: String,
    pub usage: factory_llm::Usage,
    pub latency_ms: u64,
    pub calls: u32,
    pub stop_reason: Option<String>,
    /// The prompt as text (what `factory prompt` shows).
    pub prompt: String,
    pub raw_request: Value,
    pub raw_response: String,
}

impl LlmSettings {
    /// Reads provider settings through `lookup` (the environment in the CLI):
    /// `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`, `OPENAI_API_KEY`/`OPENAI_BASE_URL`,
    /// `OPENROUTER_API_KEY`/`OPENROUTER_BASE_URL`, `FACTORY_LLM_BASE_URL` (a local
    /// OpenAI-compatible server such as Ollama, provider `local`),
    /// `FACTORY_DEFAULT_MODEL`, `FACTORY_MODEL_<ALIAS>`, `FACTORY_LLM_CONCURRENCY`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> LlmSettings {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let concurrency = get("FACTORY_LLM_CONCURRENCY")
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let retry = RetryPolicy::default();
        let mut clients = BTreeMap::new();
        let anthropic_key = get("ANTHROPIC_API_KEY");
        let anthropic_url = get("ANTHROPIC_BASE_URL");
        if anthropic_key.is_some() || anthropic_url.is_some() {
            let provider =
                Anthropic::new(anthropic_url.as_deref(), anthropic_key.unwrap_or_default());
            clients.insert(
                "anthropic".to_string(),
                Client::new(Arc::new(provider), concurrency, retry),
            );
        }
        for (name, key_var, url_var, default_url) in [
            (
                "openai",
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
                "https://api.openai.com/v1",
            ),
            (
                "openrouter",
                "OPENROUTER_API_KEY",
                "OPENROUTER_BASE_URL",
                "https://openrouter.ai/api/v1",
            ),
        ] {
            let key = get(key_var);
            let url = get(url_var);
            if key.is_some() || url.is_some() {
                let base = url.unwrap_or_else(|| default_url.to_string());
                let provider = OpenAiCompatible::new(name, &base, key);
                clients.insert(
                    name.to_string(),
                    Client::new(Arc::new(provider), concurrency, retry),
                );
            }
        }
        if let Some(url) = get("FACTORY_LLM_BASE_URL") {
            let provider = OpenAiCompatible::new("local", &url, get("FACTORY_LLM_API_KEY"));
            clients.insert(
                "local".to_string(),
                Client::new(Arc::new(provider), concurrency, retry),
            );
        }
        let aliases = ALIASES
            .iter()
            .map(|(alias, target)| {
                let configured = get(&format!("FACTORY_MODEL_{}", alias.to_ascii_uppercase()));
                (
                    alias.to_string(),
                    configured.unwrap_or_else(|| target.to_string()),
                )
            })
            .collect();
        LlmSettings {
            clients,
            aliases,
            default_model: get("FACTORY_DEFAULT_MODEL").unwrap_or_else(|| "sonnet".to_string()),
        }
    }

    /// Resolves a block's `model` (alias, `provider:model`, or null for the
    /// default) to a configured client and the provider's model id.
    pub fn resolve(&self, model: Option<&str>) -> Result<(&Client, String), String> {
        let asked = model.unwrap_or(&self.default_model);
        let target = self.aliases.get(asked).map_or(asked, String::as_str);
        let Some((provider, model_id)) = target.split_once(':') else {
            return Err(format!(
                "model `{asked}` is neither an alias ({}) nor `provider:model` (providers: anthropic, openai, openrouter, local)",
                self.aliases.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        match self.clients.get(provider) {
            Some(client) => Ok((client, model_id.to_string())),
            None => Err(format!(
                "model `{asked}` needs provider `{provider}`, which is not configured: {}",
                match provider {
                    "anthropic" =>
                        "set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL for a compatible local server)",
                    "openai" => "set OPENAI_API_KEY (and OPENAI_BASE_URL for another endpoint)",
                    "openrouter" => "set OPENROUTER_API_KEY",
                    "local" =>
                        "set FACTORY_LLM_BASE_URL to an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1",
                    _ => "use one of anthropic, openai, openrouter, local",
                }
            )),
        }
    }
}

/// Where a block's skill lives: `skills/<skill>/SKILL.md` beside the template.
pub fn skill_path(template_dir: &std::path::Path, skill: &str) -> std::path::PathBuf {
    template_dir.join("skills").join(skill).join("SKILL.md")
}

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let Some(settings) = input.llm.as_deref() else {
        return Execution::failed(format!(
            "block `{}` needs an LLM provider and none is configured",
            block.id
        ));
    };
    let (client, model) = match settings.resolve(block.model.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => return Execution::failed(format!("block `{}`: {error}", block.id)),
    };
    let skill_text = match (&block.skill, &input.template_dir) {
        (Some(skill), Some(dir)) => {
            let path = skill_path(dir, skill);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(error) => {
                    return Execution::failed(format!(
                        "block `{}`: cannot read its skill {}: {error}",
                        block.id,
                        path.display()
                    ));
                }
            }
        }
        _ => None,
    };
    let upstream = input
        .inputs
        .iter()
        .map(|artifact| UpstreamText {
            block: artifact.block.clone(),
            key: artifact.key.clone(),
            format: artifact.format,
            text: String::from_utf8_lossy(&artifact.content).into_owned(),
        })
        .collect();
    let assembled = prompt::assemble(&PromptInputs {
        block,
        skill: skill_text.as_deref(),
        params: input.params,
        upstream,
        corrections: input.corrections,
    });
    let parts = |parts: &[prompt::PromptPart]| -> Vec<Part> {
        parts
            .iter()
            .map(|p| Part {
                text: p.text.clone(),
                cacheable: p.cacheable,
            })
            .collect()
    };
    let config = &block.inputs.config;
    let request = ChatRequest {
        model,
        system: parts(&assembled.system),
        user: parts(&assembled.user),
        max_tokens: config
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(8_192) as u32,
        temperature: config.get("temperature").and_then(Value::as_f64),
        stream: config
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let response = match client
        .complete(&request, Duration::from_millis(block.timeout))
        .await
    {
        Ok(response) => response,
        Err(error) => {
            let timed_out = matches!(error, LlmError::Timeout { .. });
            return Execution {
                timed_out,
                error: Some(format!("block `{}`: {error}", block.id)),
                ..Execution::default()
            };
        }
    };
    let call = LlmCall {
        provider: client.provider_name().to_string(),
        model: response.model.clone(),
        usage: response.usage,
        latency_ms: response.latency_ms,
        calls: response.attempts,
        stop_reason: response.stop_reason.clone(),
        prompt: assembled.render(),
        raw_request: response.raw_request.clone(),
        raw_response: response.raw_response.clone(),
    };
    let mut execution = Execution {
        stdout: response.text.clone().into_bytes(),
        llm: Some(Box::new(call)),
        ..Execution::default()
    };
    if response.truncated {
        execution.error = Some(format!(
            "block `{}`: the reply was cut off at max_tokens ({}); raise inputs.config.max_tokens",
            block.id, request.max_tokens
        ));
        return execution;
    }
    match prompt::parse_reply(block, &response.text) {
        Ok(artifacts) => {
            execution.metrics = metrics_from_artifacts(block, &artifacts);
            execution.artifacts = artifacts
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
        }
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            execution.error = Some(format!("block `{}`: {}", block.id, text.join("; ")));
        }
    }
    execution
}

/// A model cannot write `metrics.json`, so a declared metric (e.g. the
/// clone-tester's `score`) is read from the same-named top-level field of the
/// block's JSON artifacts, first artifact first.
fn metrics_from_artifacts(
    block: &factory_core::template::Block,
    artifacts: &BTreeMap<String, String>,
) -> BTreeMap<String, Value> {
    let parsed: Vec<Value> = block
        .outputs
        .artifacts
        .iter()
        .filter(|a| a.format == factory_core::template::ArtifactFormat::Json)
        .filter_map(|a| artifacts.get(&a.key))
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    let mut metrics = BTreeMap::new();
    for metric in &block.outputs.metrics {
        if let Some(value) = parsed.iter().find_map(|doc| doc.get(&metric.key)) {
            metrics.insert(metric.key.clone(), value.clone());
        }
    }
    metrics
}
