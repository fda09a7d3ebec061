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
    prices: BTreeMap<String, Price>,
}

/// `factory.toml`: what the environment cannot say well. Keys are never in
/// the file, only the names of the variables that hold them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Model for blocks whose `model` is null.
    pub default_model: Option<String>,
    /// Extra or replaced aliases: `fast = "openrouter:some/model"`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Extra providers, e.g. a vLLM server: `[providers.vllm] kind = "openai"`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// USD per million tokens, keyed by the provider's model id.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Calls in flight per provider.
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The environment variable holding the key.
    pub api_key_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Anthropic,
    Openai,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

impl Price {
    pub fn cost(&self, usage: &factory_llm::Usage) -> f64 {
        let per_token = |price: f64, tokens: u64| price * tokens as f64 / 1_000_000.0;
        per_token(self.input, usage.input_tokens)
            + per_token(self.output, usage.output_tokens)
            + per_token(self.cache_read, usage.cache_read_tokens)
            + per_token(self.cache_write, usage.cache_write_tokens)
    }
}

impl LlmConfig {
    /// Parses `factory.toml`; the error names the file and the position.
    pub fn parse(text: &str, file: &str) -> Result<LlmConfig, String> {
        toml::from_str(text).map_err(|error| format!("{file}: {error}"))
    }
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("providers", &self.clients.keys().collect::<Vec<_>>())
            .field("aliases", &self.aliases)
            .field("default_model", &self.default_model)
            .field("prices", &self.prices.keys().collect::<Vec<_>>())
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
    /// From the config's price table; None when the model has no price.
    pub cost_usd: Option<f64>,
}

impl LlmSettings {
    /// Reads provider settings through `lookup` (the environment in the CLI):
    /// `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`, `OPENAI_API_KEY`/`OPENAI_BASE_URL`,
    /// `OPENROUTER_API_KEY`/`OPENROUTER_BASE_URL`, `FACTORY_LLM_BASE_URL` (a local
    /// OpenAI-compatible server such as Ollama, provider `local`),
    /// `FACTORY_DEFAULT_MODEL`, `FACTORY_MODEL_<ALIAS>`, `FACTORY_LLM_CONCURRENCY`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> LlmSettings {
        LlmSettings::from_config(LlmConfig::default(), lookup)
    }

    /// [`LlmSettings::from_lookup`] plus a config file's providers, aliases,
    /// default model and prices (the file wins over built-in defaults, the
    /// environment's `FACTORY_*` variables win over the file).
    pub fn from_config(config: LlmConfig, lookup: impl Fn(&str) -> Option<String>) -> LlmSettings {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let concurrency = get("FACTORY_LLM_CONCURRENCY")
            .and_then(|v| v.parse().ok())
            .or(config.concurrency)
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
        for (name, provider) in &config.providers {
            let key = provider.api_key_env.as_deref().and_then(&get);
            let client: Arc<dyn factory_llm::Provider> = match provider.kind {
                ProviderKind::Anthropic => Arc::new(Anthropic::new(
                    provider.base_url.as_deref(),
                    key.unwrap_or_default(),
                )),
                ProviderKind::Openai => Arc::new(OpenAiCompatible::new(
                    name.clone(),
                    provider
                        .base_url
                        .as_deref()
                        .unwrap_or("https://api.openai.com/v1"),
                    key,
                )),
            };
            clients.insert(name.clone(), Client::new(client, concurrency, retry));
        }
        let mut aliases: BTreeMap<String, String> = ALIASES
            .iter()
            .map(|(alias, target)| (alias.to_string(), target.to_string()))
            .collect();
        aliases.extend(config.aliases.clone());
        for (alias, target) in aliases.iter_mut() {
            if let Some(configured) = get(&format!("FACTORY_MODEL_{}", alias.to_ascii_uppercase()))
            {
                *target = configured;
            }
        }
        LlmSettings {
            clients,
            aliases,
            default_model: get("FACTORY_DEFAULT_MODEL")
                .or(config.default_model)
                .unwrap_or_else(|| "sonnet".to_string()),
            prices: config.prices,
        }
    }

    /// The cost of a call, when the model has a price.
    pub fn cost(&self, model: &str, usage: &factory_llm::Usage) -> Option<f64> {
        self.prices.get(model).map(|price| price.cost(usage))
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
    let (client, model) = match settings.resolve(input.model.as_deref()) {
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
        cost_usd: settings
            .cost(&request.model, &response.usage)
            .or_else(|| settings.cost(&response.model, &response.usage)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_adds_providers_aliases_and_prices() {
        let config = LlmConfig::parse(
            r#"
default_model = "fast"
[aliases]
fast = "vllm:qwen-72b"
[providers.vllm]
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"
[prices."qwen-72b"]
input = 1.0
output = 2.0
"#,
            "factory.toml",
        )
        .unwrap();
        let settings = LlmSettings::from_config(config, |_| None);
        let (client, model) = settings.resolve(None).unwrap();
        assert_eq!(
            (client.provider_name(), model.as_str()),
            ("vllm", "qwen-72b")
        );
        let usage = factory_llm::Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            ..Default::default()
        };
        assert_eq!(settings.cost("qwen-72b", &usage), Some(2.0));
        let Err(error) = settings.resolve(Some("opus")) else {
            panic!("opus needs an Anthropic key")
        };
        assert!(error.contains("ANTHROPIC_API_KEY"), "{error}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = LlmConfig::parse("default_model = \"haiku\"", "factory.toml").unwrap();
        let settings = LlmSettings::from_config(config, |name| match name {
            "FACTORY_DEFAULT_MODEL" => Some("local:llama".into()),
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            _ => None,
        });
        assert_eq!(settings.resolve(None).unwrap().1, "llama");
    }

    #[test]
    fn bad_config_names_the_file_and_field() {
        let error =
            LlmConfig::parse("[prices.m]\ninput = 1\noutptu = 2\n", "factory.toml").unwrap_err();
        assert!(
            error.starts_with("factory.toml") && error.contains("outptu"),
            "{error}"
        );
    }
}
