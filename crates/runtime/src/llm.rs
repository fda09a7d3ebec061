//! The `llm` runtime: assemble the prompt from the block's SKILL.md, upstream
//! artifacts, params and corrections; call the provider the block's model
//! resolves to; split the reply into the declared artifacts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use factory_core::prompt::{self, PromptInputs, ReplyShape};
use factory_core::run::FailureKind;
use factory_llm::tokens::{self, Fit};
use factory_llm::{
    Anthropic, CallFailure, ChatRequest, Client, Limits, LlmError, OpenAiCompatible, Part,
    RateLimit, ResponseFormat, RetryPolicy, StreamLimits, TokenLimit,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AttemptInput, Execution};

use factory_llm::ANTHROPIC_BASE_URL as ANTHROPIC_ENDPOINT;

/// Built-in model aliases; `FACTORY_MODEL_<ALIAS>` overrides each.
const ALIASES: &[(&str, &str)] = &[
    ("opus", "anthropic:claude-opus-4-5"),
    ("sonnet", "anthropic:claude-sonnet-4-5"),
    ("haiku", "anthropic:claude-haiku-4-5"),
];

/// Built-in aliases of image and speech models; `FACTORY_MODEL_<ALIAS>`
/// overrides each. `FACTORY_LLM_MODEL` does not repoint them (a chat model
/// draws no pictures).
const MEDIA_ALIASES: &[(&str, &str)] = &[
    ("gpt-image", "openai:gpt-image-1"),
    ("nano-banana", "gemini:gemini-2.5-flash-image"),
    ("tts", "openai:gpt-4o-mini-tts"),
];

/// The image model for image blocks that name none.
pub const DEFAULT_IMAGE_MODEL: &str = "gpt-image";
/// The speech model for speech blocks that name none.
pub const DEFAULT_SPEECH_MODEL: &str = "tts";

/// Which providers are configured, and how model names resolve to them.
/// Built from the environment; keys stay inside the provider clients.
#[derive(Clone)]
pub struct LlmSettings {
    providers: BTreeMap<String, ProviderEntry>,
    aliases: BTreeMap<String, String>,
    default_model: String,
    /// For `image` blocks without a model (`default_image_model`,
    /// `FACTORY_IMAGE_MODEL`).
    default_image_model: String,
    /// For `speech` blocks without a model.
    default_speech_model: String,
    prices: BTreeMap<String, Price>,
    /// Context windows by the provider's model id (`[context_windows]`).
    context_windows: BTreeMap<String, u64>,
    /// Settings that could not be used, in words (shown by the CLI and doctor).
    warnings: Vec<String>,
}

/// A configured provider: its client and what the configuration says of it.
#[derive(Clone)]
struct ProviderEntry {
    client: Client,
    /// Images and speech, where the provider's API makes them.
    media: Option<factory_llm::MediaClient>,
    /// What its limit is shared under across processes: the provider's name
    /// and endpoint (with the host for a server on loopback, which is each
    /// machine's own).
    limit_key: String,
    kind: ProviderKind,
    /// The window every model of this provider runs with, when configured
    /// (`[providers.x] context_window`, `FACTORY_LLM_CONTEXT` for `local`).
    context_window: Option<u64>,
    /// Where it came from, for `factory doctor`.
    origin: String,
}

/// A block's model resolved to a configured provider.
pub struct Resolved<'a> {
    pub client: &'a Client,
    /// The provider's name (`anthropic`, `local`, a `[providers.x]` name).
    pub provider: &'a str,
    pub kind: ProviderKind,
    /// The provider's model id.
    pub model: String,
    configured_window: Option<u64>,
}

/// Where a context window figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSource {
    Configured,
    Server,
    Default,
}

impl WindowSource {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowSource::Configured => "configured",
            WindowSource::Server => "reported by the server",
            WindowSource::Default => {
                "default; set it with [context_windows] or FACTORY_LLM_CONTEXT"
            }
        }
    }
}

/// The context window assumed for a model nobody describes: the large
/// families by name, else 8,192 tokens (what small local servers run with).
pub fn default_context_window(kind: ProviderKind, model: &str) -> u64 {
    let model = model.to_ascii_lowercase();
    if kind == ProviderKind::Anthropic || model.contains("claude") {
        200_000
    } else if [
        "gpt-4o",
        "gpt-4.1",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "gemini",
        "llama-3.1",
        "llama-3.3",
    ]
    .iter()
    .any(|family| model.contains(family))
    {
        128_000
    } else {
        8_192
    }
}

/// `factory.toml`: what the environment cannot say well. Keys are never in
/// the file, only the names of the variables that hold them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Model for blocks whose `model` is null.
    pub default_model: Option<String>,
    /// Model for `image` blocks whose `model` is null.
    pub default_image_model: Option<String>,
    /// Model for `speech` blocks whose `model` is null.
    pub default_speech_model: Option<String>,
    /// Extra or replaced aliases: `fast = "openrouter:some/model"`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Extra providers, e.g. a vLLM server: `[providers.vllm] kind = "openai"`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// USD per million tokens, keyed by the provider's model id.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Context windows in tokens, keyed by the provider's model id.
    #[serde(default)]
    pub context_windows: BTreeMap<String, u64>,
    /// Calls in flight per provider (default 4; 1 for a server on loopback).
    pub concurrency: Option<usize>,
    /// Requests started per minute per provider (default: no limit).
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute per provider (default: no limit).
    pub tokens_per_minute: Option<u64>,
    /// `[notifications]`: read and checked by `factory_notify`, not here.
    #[serde(default)]
    pub notifications: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The environment variable holding the key.
    pub api_key_env: Option<String>,
    /// Calls in flight at once to this provider.
    pub concurrency: Option<usize>,
    /// Requests started per minute (the provider's RPM limit), retries
    /// included; every worker of a store keeps it together.
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (the provider's TPM limit): each request counts
    /// its estimated prompt plus `max_tokens` until the reply's usage
    /// corrects it; retries included; every worker of a store keeps it
    /// together.
    pub tokens_per_minute: Option<u64>,
    /// The context window of the models it serves, in tokens.
    pub context_window: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Anthropic,
    Openai,
    /// Google's Gemini API: images natively, chat through its
    /// OpenAI-compatible endpoint.
    Gemini,
}

/// USD per million tokens, per image and per million characters spoken.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
    /// Per image an `image` block makes (on top of any token prices).
    #[serde(default)]
    pub per_image: f64,
    /// Per million characters a `speech` block speaks.
    #[serde(default)]
    pub per_million_characters: f64,
}

impl Price {
    pub fn cost(&self, usage: &factory_llm::Usage) -> f64 {
        let per_token = |price: f64, tokens: u64| price * tokens as f64 / 1_000_000.0;
        per_token(self.input, usage.input_tokens)
            + per_token(self.output, usage.output_tokens)
            + per_token(self.cache_read, usage.cache_read_tokens)
            + per_token(self.cache_write, usage.cache_write_tokens)
    }

    /// A media call's cost: its tokens, images and characters.
    pub fn media_cost(&self, usage: &factory_llm::Usage, images: u32, characters: u64) -> f64 {
        self.cost(usage)
            + self.per_image * f64::from(images)
            + self.per_million_characters * characters as f64 / 1_000_000.0
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
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
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
    /// Time spent waiting for a concurrency slot (not counted in the timeout).
    pub queued_ms: u64,
    /// The response format asked for (after any fallback).
    pub response_format: String,
    /// What the runtime or client adjusted, in words (a shrunk max_tokens,
    /// a fallback), for the record.
    pub notes: Vec<String>,
    /// Why the call failed, when it did; the reply fields then hold what
    /// arrived before the failure.
    pub error: Option<String>,
    /// Images made (`image` blocks).
    #[serde(default)]
    pub images: u32,
    /// Characters spoken (`speech` blocks).
    #[serde(default)]
    pub characters: u64,
}

impl LlmSettings {
    /// These settings with every provider's concurrency limit held together
    /// with the other processes that share `limit` (workers of one store).
    pub fn sharing_limits(&self, limit: Arc<dyn factory_llm::SharedLimit>) -> LlmSettings {
        let mut shared = self.clone();
        for entry in shared.providers.values_mut() {
            entry.client = entry
                .client
                .sharing_limit(limit.clone(), entry.limit_key.clone());
        }
        shared
    }

    /// Reads provider settings through `lookup` (the environment in the CLI):
    /// `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`, `OPENAI_API_KEY`/`OPENAI_BASE_URL`,
    /// `OPENROUTER_API_KEY`/`OPENROUTER_BASE_URL`, `FACTORY_LLM_BASE_URL` (a local
    /// OpenAI-compatible server such as Ollama, provider `local`),
    /// `FACTORY_DEFAULT_MODEL`, `FACTORY_MODEL_<ALIAS>`, `FACTORY_LLM_CONCURRENCY`,
    /// `FACTORY_LLM_RPM`, `FACTORY_LLM_TPM`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> LlmSettings {
        LlmSettings::from_config(LlmConfig::default(), lookup)
    }

    /// [`LlmSettings::from_lookup`] plus a config file's providers, aliases,
    /// default model and prices (the file wins over built-in defaults, the
    /// environment's `FACTORY_*` variables win over the file).
    pub fn from_config(config: LlmConfig, lookup: impl Fn(&str) -> Option<String>) -> LlmSettings {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();
        let mut number = |name: &str| -> Option<u64> {
            let value = get(name)?;
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    warnings.push(format!(
                        "{name}=`{value}` is not a positive whole number; it is ignored"
                    ));
                    None
                }
            }
        };
        let env_concurrency = number("FACTORY_LLM_CONCURRENCY").map(|n| n as usize);
        let env_rpm = number("FACTORY_LLM_RPM").map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let env_tpm = number("FACTORY_LLM_TPM");
        let local_context = number("FACTORY_LLM_CONTEXT");
        let rpm = |configured: Option<u32>| {
            configured
                .or(env_rpm)
                .or(config.requests_per_minute)
                .filter(|n| *n > 0)
        };
        let tpm = |configured: Option<u64>| {
            configured
                .or(env_tpm)
                .or(config.tokens_per_minute)
                .filter(|n| *n > 0)
        };
        // A server on this machine usually serves one request at a time;
        // more calls in flight only queue there, where the timeout counts.
        let concurrency = |configured: Option<usize>, base_url: Option<&str>| {
            configured
                .or(env_concurrency)
                .or(config.concurrency)
                .unwrap_or(if base_url.is_some_and(is_loopback) {
                    1
                } else {
                    4
                })
        };
        let zero_rpm = config
            .requests_per_minute
            .map(|n| ("requests_per_minute".to_string(), n))
            .into_iter()
            .chain(config.providers.iter().filter_map(|(name, p)| {
                p.requests_per_minute
                    .map(|n| (format!("[providers.{name}] requests_per_minute"), n))
            }));
        let zero_tpm = config
            .tokens_per_minute
            .map(|n| ("tokens_per_minute".to_string(), n))
            .into_iter()
            .chain(config.providers.iter().filter_map(|(name, p)| {
                p.tokens_per_minute
                    .map(|n| (format!("[providers.{name}] tokens_per_minute"), n))
            }));
        let zero_rpm = zero_rpm
            .map(|(field, n)| (field, u64::from(n)))
            .chain(zero_tpm);
        for (field, _) in zero_rpm.filter(|(_, n)| *n == 0).collect::<Vec<_>>() {
            warnings.push(format!(
                "{field} = 0 would stop every call; it is ignored: remove it for no limit"
            ));
        }
        let retry = RetryPolicy::default();
        let mut providers = BTreeMap::new();
        let mut add =
            |name: &str,
             provider: Arc<dyn factory_llm::Provider>,
             media: Option<Arc<dyn factory_llm::MediaProvider>>,
             kind: ProviderKind,
             (concurrency, rpm, tpm, endpoint): (usize, Option<u32>, Option<u64>, &str),
             context_window: Option<u64>,
             origin: String| {
                let limit_key = if is_loopback(endpoint) {
                    format!("llm {name} {endpoint} on {}", crate::process::hostname())
                } else {
                    format!("llm {name} {endpoint}")
                };
                let client = Client::new(provider, concurrency, retry);
                let client = match rpm {
                    Some(rpm) => client.with_rate(RateLimit::per_minute(rpm)),
                    None => client,
                };
                let client = match tpm {
                    Some(tpm) => client.with_token_limit(TokenLimit::per_minute(tpm)),
                    None => client,
                };
                let media =
                    media.map(|media| factory_llm::MediaClient::new(media, concurrency, retry));
                providers.insert(
                    name.to_string(),
                    ProviderEntry {
                        client,
                        media,
                        limit_key,
                        kind,
                        context_window,
                        origin,
                    },
                );
            };
        let anthropic_key = get("ANTHROPIC_API_KEY");
        let anthropic_url = get("ANTHROPIC_BASE_URL");
        if anthropic_key.is_some() || anthropic_url.is_some() {
            let provider =
                Anthropic::new(anthropic_url.as_deref(), anthropic_key.unwrap_or_default());
            add(
                "anthropic",
                Arc::new(provider),
                None,
                ProviderKind::Anthropic,
                (
                    concurrency(None, anthropic_url.as_deref()),
                    rpm(None),
                    tpm(None),
                    anthropic_url.as_deref().unwrap_or(ANTHROPIC_ENDPOINT),
                ),
                None,
                "ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL".to_string(),
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
                let provider = Arc::new(OpenAiCompatible::new(name, &base, key));
                // OpenRouter makes images through chat, not /images.
                let media = (name == "openai")
                    .then(|| provider.clone() as Arc<dyn factory_llm::MediaProvider>);
                add(
                    name,
                    provider,
                    media,
                    ProviderKind::Openai,
                    (concurrency(None, Some(&base)), rpm(None), tpm(None), &base),
                    None,
                    format!("{key_var} / {url_var}"),
                );
            }
        }
        let local_model = get("FACTORY_LLM_MODEL");
        if let Some(url) = get("FACTORY_LLM_BASE_URL") {
            let provider = Arc::new(OpenAiCompatible::new(
                "local",
                &url,
                get("FACTORY_LLM_API_KEY"),
            ));
            add(
                "local",
                provider.clone(),
                Some(provider),
                ProviderKind::Openai,
                (concurrency(None, Some(&url)), rpm(None), tpm(None), &url),
                local_context,
                "FACTORY_LLM_BASE_URL".to_string(),
            );
        }
        let gemini_key = get("GEMINI_API_KEY");
        let gemini_url = get("GEMINI_BASE_URL");
        if gemini_key.is_some() || gemini_url.is_some() {
            let (chat, media) = gemini("gemini", gemini_url.as_deref(), gemini_key);
            let base = gemini_url
                .as_deref()
                .unwrap_or(factory_llm::media::GEMINI_BASE_URL);
            add(
                "gemini",
                chat,
                Some(media),
                ProviderKind::Gemini,
                (concurrency(None, Some(base)), rpm(None), tpm(None), base),
                None,
                "GEMINI_API_KEY / GEMINI_BASE_URL".to_string(),
            );
        }
        for (name, provider) in &config.providers {
            let key = provider.api_key_env.as_deref().and_then(&get);
            type Chat = Arc<dyn factory_llm::Provider>;
            type Media = Option<Arc<dyn factory_llm::MediaProvider>>;
            let (client, media, base): (Chat, Media, Option<&str>) = match provider.kind {
                ProviderKind::Anthropic => (
                    Arc::new(Anthropic::new(
                        provider.base_url.as_deref(),
                        key.unwrap_or_default(),
                    )),
                    None,
                    provider.base_url.as_deref(),
                ),
                ProviderKind::Openai => {
                    let base = provider
                        .base_url
                        .as_deref()
                        .unwrap_or("https://api.openai.com/v1");
                    let openai = Arc::new(OpenAiCompatible::new(name.clone(), base, key));
                    (openai.clone(), Some(openai), Some(base))
                }
                ProviderKind::Gemini => {
                    let (chat, media) = gemini(name, provider.base_url.as_deref(), key);
                    (
                        chat,
                        Some(media),
                        Some(
                            provider
                                .base_url
                                .as_deref()
                                .unwrap_or(factory_llm::media::GEMINI_BASE_URL),
                        ),
                    )
                }
            };
            add(
                name,
                client,
                media,
                provider.kind,
                (
                    concurrency(provider.concurrency, base),
                    rpm(provider.requests_per_minute),
                    tpm(provider.tokens_per_minute),
                    base.unwrap_or(ANTHROPIC_ENDPOINT),
                ),
                provider.context_window,
                format!("[providers.{name}] in factory.toml"),
            );
        }
        let mut aliases: BTreeMap<String, String> = ALIASES
            .iter()
            .chain(MEDIA_ALIASES)
            .map(|(alias, target)| (alias.to_string(), target.to_string()))
            .collect();
        aliases.extend(config.aliases.clone());
        for (alias, target) in aliases.iter_mut() {
            let variable = format!(
                "FACTORY_MODEL_{}",
                alias.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(configured) = get(&variable) {
                *target = configured;
            } else if let Some(model) = &local_model
                && providers.contains_key("local")
                && !MEDIA_ALIASES.iter().any(|(media, _)| media == alias)
            {
                // One variable points every alias at the local server.
                *target = format!("local:{model}");
            }
        }
        if local_model.is_some() && !providers.contains_key("local") {
            warnings.push(
                "FACTORY_LLM_MODEL is set but FACTORY_LLM_BASE_URL is not, so it is ignored: set both"
                    .to_string(),
            );
        }
        let default_model = get("FACTORY_DEFAULT_MODEL")
            .or_else(|| {
                local_model
                    .as_ref()
                    .filter(|_| providers.contains_key("local"))
                    .map(|model| format!("local:{model}"))
            })
            .or(config.default_model)
            .unwrap_or_else(|| "sonnet".to_string());
        let default_image_model = get("FACTORY_IMAGE_MODEL")
            .or(config.default_image_model)
            .unwrap_or_else(|| DEFAULT_IMAGE_MODEL.to_string());
        let default_speech_model = get("FACTORY_SPEECH_MODEL")
            .or(config.default_speech_model)
            .unwrap_or_else(|| DEFAULT_SPEECH_MODEL.to_string());
        LlmSettings {
            providers,
            aliases,
            default_model,
            default_image_model,
            default_speech_model,
            prices: config.prices,
            context_windows: config.context_windows,
            warnings,
        }
    }

    /// Settings that could not be used, in words.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Each configured provider: name, client, where its settings came from.
    pub fn providers(&self) -> impl Iterator<Item = (&str, &Client, &str)> {
        self.providers
            .iter()
            .map(|(name, entry)| (name.as_str(), &entry.client, entry.origin.as_str()))
    }

    /// What a block's `model` (or null) resolves to, without needing the
    /// provider: `(asked, provider, model id)`.
    pub fn target(&self, model: Option<&str>) -> (String, Option<String>, String) {
        let asked = model.unwrap_or(&self.default_model);
        let target = self.aliases.get(asked).map_or(asked, String::as_str);
        match target.split_once(':') {
            Some((provider, id)) => (
                asked.to_string(),
                Some(provider.to_string()),
                id.to_string(),
            ),
            None => (asked.to_string(), None, target.to_string()),
        }
    }

    /// The context window for a resolved model, and where the figure came
    /// from: configuration first, then what the server reports, then
    /// [`default_context_window`].
    pub async fn context_window(&self, resolved: &Resolved<'_>) -> (u64, WindowSource) {
        if let Some(window) = self
            .context_windows
            .get(&resolved.model)
            .copied()
            .or(resolved.configured_window)
        {
            return (window, WindowSource::Configured);
        }
        if resolved.kind == ProviderKind::Openai
            && let Some(window) = resolved
                .client
                .discovered_context_window(&resolved.model)
                .await
        {
            return (window, WindowSource::Server);
        }
        (
            default_context_window(resolved.kind, &resolved.model),
            WindowSource::Default,
        )
    }

    /// The cost of a call, when the model has a price.
    pub fn cost(&self, model: &str, usage: &factory_llm::Usage) -> Option<f64> {
        self.prices.get(model).map(|price| price.cost(usage))
    }

    /// Resolves a block's `model` (alias, `provider:model`, or null for the
    /// default) to a configured provider and the provider's model id.
    pub fn resolve(&self, model: Option<&str>) -> Result<Resolved<'_>, String> {
        let (asked, provider, model_id) = self.target(model);
        let Some(provider) = provider else {
            return Err(format!(
                "model `{asked}` is neither an alias ({}) nor `provider:model` (providers: anthropic, openai, openrouter, gemini, local{})",
                self.aliases.keys().cloned().collect::<Vec<_>>().join(", "),
                self.providers
                    .keys()
                    .filter(|p| {
                        !["anthropic", "openai", "openrouter", "gemini", "local"]
                            .contains(&p.as_str())
                    })
                    .map(|p| format!(", {p}"))
                    .collect::<String>()
            ));
        };
        match self.providers.get_key_value(provider.as_str()) {
            Some((name, entry)) => Ok(Resolved {
                client: &entry.client,
                provider: name,
                kind: entry.kind,
                model: model_id,
                configured_window: entry.context_window,
            }),
            None => Err(format!(
                "model `{asked}` needs provider `{provider}`, which is not configured: {}",
                missing_provider_hint(&provider)
            )),
        }
    }
}

/// Gemini's two faces: chat through its OpenAI-compatible endpoint, images
/// through its own API; one key for both.
fn gemini(
    name: &str,
    base_url: Option<&str>,
    key: Option<String>,
) -> (
    Arc<dyn factory_llm::Provider>,
    Arc<dyn factory_llm::MediaProvider>,
) {
    let native = factory_llm::Gemini::new(name, base_url, key.clone());
    let chat = OpenAiCompatible::new(name, &native.openai_base_url(), key);
    (Arc::new(chat), Arc::new(native))
}

/// An image or speech block's model resolved to a provider that makes media.
pub struct ResolvedMedia<'a> {
    pub client: &'a factory_llm::MediaClient,
    pub provider: &'a str,
    pub kind: ProviderKind,
    pub model: String,
}

impl LlmSettings {
    /// The model an image or speech block without one uses.
    pub fn default_media_model(&self, runtime: factory_core::template::Runtime) -> &str {
        if runtime == factory_core::template::Runtime::Speech {
            &self.default_speech_model
        } else {
            &self.default_image_model
        }
    }

    /// What an image or speech block's `model` (or null) resolves to,
    /// without needing the provider: `(asked, provider, model id)`.
    pub fn media_target(
        &self,
        model: Option<&str>,
        runtime: factory_core::template::Runtime,
    ) -> (String, Option<String>, String) {
        self.target(Some(model.unwrap_or(self.default_media_model(runtime))))
    }

    /// Resolves an image or speech block's model to a configured provider
    /// whose API makes media.
    pub fn resolve_media(
        &self,
        model: Option<&str>,
        runtime: factory_core::template::Runtime,
    ) -> Result<ResolvedMedia<'_>, String> {
        let (asked, provider, model_id) = self.media_target(model, runtime);
        let what = if runtime == factory_core::template::Runtime::Speech {
            "speech"
        } else {
            "images"
        };
        let Some(provider) = provider else {
            return Err(format!(
                "model `{asked}` is neither an alias ({}) nor `provider:model`",
                MEDIA_ALIASES
                    .iter()
                    .map(|(alias, _)| *alias)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match self.providers.get_key_value(provider.as_str()) {
            Some((name, entry)) => match &entry.media {
                Some(client) => Ok(ResolvedMedia {
                    client,
                    provider: name,
                    kind: entry.kind,
                    model: model_id,
                }),
                None => Err(format!(
                    "model `{asked}` is on provider `{name}`, whose API makes no {what}: use an OpenAI-compatible endpoint (openai, local, or [providers.x] kind = \"openai\") or Gemini (GEMINI_API_KEY, {what} = images only)"
                )),
            },
            None => Err(format!(
                "model `{asked}` needs provider `{provider}`, which is not configured: {}",
                media_provider_hint(&provider, runtime)
            )),
        }
    }

    /// Whether a block's image or speech model names a provider that is not
    /// configured — the one case an optional block is left out for. A model
    /// that does not parse, or a configured provider that makes no media,
    /// is a mistake and stays an error.
    pub fn media_provider_missing(
        &self,
        model: Option<&str>,
        runtime: factory_core::template::Runtime,
    ) -> bool {
        // Only the providers that make media and are set up by their keys
        // can be "not configured"; any other name is a typo or a provider
        // without media, which is an error whether optional or not.
        let (_, provider, _) = self.media_target(model, runtime);
        provider.is_some_and(|p| {
            ["openai", "gemini", "local"].contains(&p.as_str()) && !self.providers.contains_key(&p)
        })
    }

    /// A media call's cost, when the model has a price.
    pub fn media_cost(
        &self,
        model: &str,
        usage: &factory_llm::Usage,
        images: u32,
        characters: u64,
    ) -> Option<f64> {
        // A price that says nothing of what this call used is no price: a
        // speech model priced by tokens, which /audio/speech does not report,
        // has cost unknown, not $0.
        self.prices.get(model).and_then(|price| {
            let tokens = usage.input_tokens + usage.output_tokens > 0
                && (price.input > 0.0 || price.output > 0.0);
            let priced = tokens
                || (images > 0 && price.per_image > 0.0)
                || (characters > 0 && price.per_million_characters > 0.0);
            priced.then(|| price.media_cost(usage, images, characters))
        })
    }
}

/// What to set for an image or speech provider that is not configured.
fn media_provider_hint(provider: &str, runtime: factory_core::template::Runtime) -> String {
    let variable = if runtime == factory_core::template::Runtime::Speech {
        "FACTORY_SPEECH_MODEL"
    } else {
        "FACTORY_IMAGE_MODEL"
    };
    let specific = match provider {
        "openai" => "set OPENAI_API_KEY (and OPENAI_BASE_URL for another endpoint)",
        "gemini" => "set GEMINI_API_KEY (and GEMINI_BASE_URL for another endpoint)",
        "local" => "set FACTORY_LLM_BASE_URL to an OpenAI-compatible server",
        _ => "add it as [providers.NAME] in factory.toml",
    };
    format!(
        "{specific}; or point {variable} (or the block's `model`) at a provider you have, e.g. {variable}=local:<its model> with FACTORY_LLM_BASE_URL set"
    )
}

/// What to set for a provider that is not configured. Every hint also names
/// the one-line set-up for a local server, the common case without a key.
pub fn missing_provider_hint(provider: &str) -> String {
    let specific = match provider {
        "anthropic" => "set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL for a compatible server)",
        "openai" => "set OPENAI_API_KEY (and OPENAI_BASE_URL for another endpoint)",
        "openrouter" => "set OPENROUTER_API_KEY",
        "gemini" => "set GEMINI_API_KEY (or GEMINI_BASE_URL for another endpoint)",
        "local" => {
            "set FACTORY_LLM_BASE_URL to an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1"
        }
        _ => {
            "add it as [providers.NAME] in factory.toml, or use anthropic, openai, openrouter or local"
        }
    };
    if provider == "local" {
        specific.to_string()
    } else {
        format!(
            "{specific}; or run every block on a local OpenAI-compatible server (Ollama, vLLM, llama.cpp) with FACTORY_LLM_BASE_URL=http://127.0.0.1:11434/v1 FACTORY_LLM_MODEL=<its model>"
        )
    }
}

/// Whether a base URL points at this machine.
fn is_loopback(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where a block's skill lives: `skills/<skill>/SKILL.md` beside the
/// template, refused when a symlink leads out of the template's folder.
pub fn skill_path(
    template_dir: &std::path::Path,
    skill: &str,
) -> Result<std::path::PathBuf, String> {
    crate::confine::within(template_dir, &skill_relative(skill))
}

fn skill_relative(skill: &str) -> String {
    format!("skills/{skill}/SKILL.md")
}

/// A block's skill text, read only from inside the template's folder (a
/// symlink out of it is refused).
pub fn read_skill(template_dir: &std::path::Path, skill: &str) -> Result<String, String> {
    let bytes = crate::confine::read(template_dir, &skill_relative(skill))?;
    String::from_utf8(bytes).map_err(|_| format!("skill `{skill}` is not UTF-8 text"))
}

/// Default `max_tokens` when a block sets none.
const DEFAULT_MAX_TOKENS: u32 = 8_192;
/// A reply shrunk to fit the window keeps at least this many tokens (or the
/// block's whole `max_tokens` when that is smaller); less fails the attempt.
const MIN_REPLY_TOKENS: u32 = 1_024;
/// A stream that goes silent this long mid-reply is given up.
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let fail = |kind: FailureKind, message: String| Execution {
        failure: Some(kind),
        ..Execution::failed(format!("block `{}`: {message}", block.id))
    };
    let Some(settings) = input.llm.as_deref() else {
        return fail(
            FailureKind::Permanent,
            "needs an LLM provider and none is configured".to_string(),
        );
    };
    let resolved = match settings.resolve(input.model.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => return fail(FailureKind::Permanent, error),
    };
    let options = match factory_core::llm_options::parse(
        &factory_core::llm_options::with_run_defaults(&block.inputs.config, input.run_sampling),
    ) {
        Ok(options) => options,
        Err(problems) => {
            let text: Vec<String> = problems
                .iter()
                .map(|p| format!("inputs.config.{} must be {}", p.key, p.message))
                .collect();
            return fail(FailureKind::Permanent, text.join("; "));
        }
    };
    let skill_text = match (&block.skill, &input.template_dir) {
        (Some(skill), Some(dir)) => match read_skill(dir, skill) {
            Ok(text) => Some(text),
            Err(error) => {
                return fail(
                    FailureKind::Permanent,
                    format!("cannot read its skill: {error}"),
                );
            }
        },
        _ => None,
    };
    let golden = golden_schemas(block, input.golden);
    let response_format = response_format(block, &options, resolved.kind, &golden);
    let shape = ReplyShape::for_block(block, response_format != ResponseFormat::Text);
    let upstream = crate::upstream_texts(&input.inputs);
    let assembled = prompt::assemble(&PromptInputs {
        block,
        skill: skill_text.as_deref(),
        params: input.params,
        upstream,
        corrections: input.corrections,
        reply_note: input.reply_note,
        shape,
        item: input.item,
        lens: input.lens,
        open_gaps: input.open_gaps.as_deref(),
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
    let mut notes = Vec::new();
    if options.seed.is_some() && resolved.kind == ProviderKind::Anthropic {
        notes.push("seed is not sent: Anthropic's API has no seed".to_string());
    }
    let mut request = ChatRequest {
        model: resolved.model.clone(),
        system: parts(&assembled.system),
        user: parts(&assembled.user),
        max_tokens: options.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: options.temperature,
        top_p: options.top_p,
        seed: options.seed,
        stop: options.stop.clone(),
        response_format,
        stream: options.stream.unwrap_or(true),
    };
    let prompt_text = assembled.render();

    // Does it fit the model's window? Decided before any call.
    let (window, source) = settings.context_window(&resolved).await;
    let estimate = tokens::conservative(request.estimated_prompt_tokens());
    match tokens::fit(estimate, request.max_tokens, window, MIN_REPLY_TOKENS) {
        Fit::Fits => {}
        Fit::Shrink { max_tokens } => {
            notes.push(format!(
                "max_tokens lowered from {} to {max_tokens} to fit the context window ({window} tokens, {}) after a prompt of about {estimate} tokens",
                request.max_tokens,
                source.as_str()
            ));
            request.max_tokens = max_tokens;
        }
        Fit::TooLong => {
            let mut execution = fail(
                FailureKind::Permanent,
                format!(
                    "the prompt is about {estimate} tokens (estimated) and the reply needs at least {}, but model `{}` on `{}` has a context window of {window} tokens ({}); nothing was sent. Use a model with a larger window (factory run … --model {}=PROVIDER:MODEL), give the server a larger window if it can take one (and tell the factory: [context_windows] in factory.toml or FACTORY_LLM_CONTEXT), or trim what the block reads with inputs.config.upstream_max_chars",
                    MIN_REPLY_TOKENS.min(request.max_tokens),
                    resolved.model,
                    resolved.provider,
                    source.as_str(),
                    block.id
                ),
            );
            execution.llm = Some(Box::new(LlmCall {
                provider: resolved.provider.to_string(),
                model: resolved.model.clone(),
                // Nothing was sent, so nothing is counted (the estimate is
                // in the error).
                usage: factory_llm::Usage::default(),
                latency_ms: 0,
                calls: 0,
                stop_reason: None,
                prompt: prompt_text,
                raw_request: Value::Null,
                raw_response: String::new(),
                cost_usd: None,
                queued_ms: 0,
                response_format: request.response_format.as_str().to_string(),
                notes,
                error: execution.error.clone(),
                images: 0,
                characters: 0,
            }));
            return execution;
        }
    }

    let limits = Limits {
        total: Duration::from_millis(block.timeout),
        stream: StreamLimits {
            first_token: options.first_token_timeout_ms.map(Duration::from_millis),
            idle: Some(Duration::from_millis(
                options.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            )),
        },
    };
    let response = match resolved
        .client
        .complete_with_progress(&request, limits, input.progress.clone())
        .await
    {
        Ok(response) => response,
        Err(failure) => {
            return failed_call(block, settings, &resolved, prompt_text, notes, failure);
        }
    };
    notes.extend(response.notes.iter().cloned());
    let call = LlmCall {
        provider: resolved.provider.to_string(),
        model: response.model.clone(),
        usage: response.usage,
        latency_ms: response.latency_ms,
        calls: response.attempts,
        stop_reason: response.stop_reason.clone(),
        prompt: prompt_text,
        raw_request: response.raw_request.clone(),
        raw_response: response.raw_response.clone(),
        cost_usd: settings
            .cost(&request.model, &response.usage)
            .or_else(|| settings.cost(&response.model, &response.usage)),
        queued_ms: response.queued_ms,
        response_format: response.response_format.as_str().to_string(),
        notes,
        error: None,
        images: 0,
        characters: 0,
    };
    let mut execution = Execution {
        stdout: response.text.clone().into_bytes(),
        llm: Some(Box::new(call)),
        ..Execution::default()
    };
    if response.truncated {
        let shrunk = request.max_tokens < options.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        execution.error = Some(format!(
            "block `{}`: the reply was cut off at max_tokens ({}){}",
            block.id,
            request.max_tokens,
            if shrunk {
                format!(
                    ", which was lowered to fit the model's context window of {window} tokens; use a model with a larger window or trim the prompt (inputs.config.upstream_max_chars)"
                )
            } else {
                "; raise inputs.config.max_tokens".to_string()
            }
        ));
        execution.failure = Some(FailureKind::Reply);
        let tail: String = {
            let chars: Vec<char> = response.text.chars().collect();
            chars[chars.len().saturating_sub(300)..].iter().collect()
        };
        execution.reply_excerpt = Some(format!("[…]{tail}"));
        return execution;
    }
    match prompt::parse_reply(block, &response.text, shape) {
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
            execution.failure = Some(FailureKind::Reply);
            execution.reply_excerpt =
                prompt::reply_excerpt(&errors, prompt::strip_reasoning(&response.text));
        }
    }
    execution
}

/// How a block's reply carries its artifacts under these settings (the
/// prompt's output contract depends on it): for `factory prompt`.
pub fn reply_shape(
    settings: &LlmSettings,
    block: &factory_core::template::Block,
    model: Option<&str>,
) -> ReplyShape {
    let Ok(options) = factory_core::llm_options::parse(&block.inputs.config) else {
        return ReplyShape::Plain;
    };
    let kind = settings
        .resolve(model)
        .map_or(ProviderKind::Openai, |r| r.kind);
    ReplyShape::for_block(
        block,
        response_format(block, &options, kind, &BTreeMap::new()) != ResponseFormat::Text,
    )
}

/// What the provider is asked to constrain the reply to. By default
/// (`auto`) JSON mode only where the whole reply is JSON (one JSON artifact,
/// or several artifacts in one JSON object) and only on OpenAI-compatible
/// providers; on Anthropic a block asks for it (`json_object`,
/// `json_schema`), which becomes a forced tool call.
fn response_format(
    block: &factory_core::template::Block,
    options: &factory_core::llm_options::LlmOptions,
    kind: ProviderKind,
    golden: &BTreeMap<String, Value>,
) -> ResponseFormat {
    use factory_core::llm_options::StructuredOutput;
    use factory_core::template::ArtifactFormat;
    let artifacts = &block.outputs.artifacts;
    let json_reply = match artifacts.as_slice() {
        [] => false,
        [only] => only.format == ArtifactFormat::Json,
        _ => true,
    };
    let schema = || {
        let schema = options
            .json_schema
            .clone()
            .or_else(|| match artifacts.as_slice() {
                [only] => golden.get(&only.key).cloned(),
                _ => Some(envelope_schema(artifacts, golden)),
            });
        match schema {
            Some(schema) => ResponseFormat::JsonSchema {
                name: block.id.replace('-', "_"),
                schema,
            },
            None => ResponseFormat::JsonObject,
        }
    };
    match options.structured_output {
        StructuredOutput::Off => ResponseFormat::Text,
        // Claude follows the output contract; its forced tool use is there
        // when a block asks for it, and must carry an object.
        StructuredOutput::Auto if kind == ProviderKind::Anthropic => ResponseFormat::Text,
        StructuredOutput::JsonObject if kind == ProviderKind::Anthropic && artifacts.len() > 1 => {
            schema()
        }
        StructuredOutput::JsonObject => ResponseFormat::JsonObject,
        StructuredOutput::JsonSchema => schema(),
        StructuredOutput::Auto if !json_reply => ResponseFormat::Text,
        StructuredOutput::Auto
            if options.json_schema.is_some()
                || artifacts.len() > 1
                || artifacts.iter().any(|a| golden.contains_key(&a.key)) =>
        {
            schema()
        }
        StructuredOutput::Auto => ResponseFormat::JsonObject,
    }
}

/// The shapes the block's JSON artifacts must have, by artifact key: their
/// golden examples' shapes, and the first one also carries the block's
/// declared metrics as top-level numbers (that is where an `llm` block
/// reports them, see `metrics_from_artifacts`).
fn golden_schemas(
    block: &factory_core::template::Block,
    golden: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, Value> {
    let json_artifacts: Vec<_> = block
        .outputs
        .artifacts
        .iter()
        .filter(|a| a.format == factory_core::template::ArtifactFormat::Json)
        .collect();
    let mut schemas: BTreeMap<String, Value> = json_artifacts
        .iter()
        .filter_map(|a| {
            let example: Value = serde_json::from_slice(golden.get(&a.key)?).ok()?;
            Some((
                a.key.clone(),
                factory_core::llm_options::schema_of(&example),
            ))
        })
        .collect();
    if let (Some(first), false) = (json_artifacts.first(), block.outputs.metrics.is_empty()) {
        let schema = schemas.entry(first.key.clone()).or_insert_with(
            || serde_json::json!({"type": "object", "properties": {}, "required": []}),
        );
        if schema.get("type").and_then(Value::as_str) == Some("object") {
            for metric in &block.outputs.metrics {
                schema["properties"][&metric.key] = serde_json::json!({"type": "number"});
                let key = Value::from(metric.key.as_str());
                match schema["required"].as_array_mut() {
                    Some(required) if !required.contains(&key) => required.push(key),
                    Some(_) => {}
                    None => schema["required"] = Value::Array(vec![key]),
                }
            }
        }
    }
    schemas
}

/// The schema of the one-object reply that carries several artifacts: each
/// key required, text artifacts as strings, JSON ones shaped like their
/// golden example when there is one.
fn envelope_schema(
    artifacts: &[factory_core::template::ArtifactSpec],
    golden: &BTreeMap<String, Value>,
) -> Value {
    use factory_core::template::ArtifactFormat;
    let properties: serde_json::Map<String, Value> = artifacts
        .iter()
        .map(|a| {
            let schema = match a.format {
                ArtifactFormat::Json | ArtifactFormat::Directory => golden
                    .get(&a.key)
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({})),
                _ => serde_json::json!({"type": "string"}),
            };
            (a.key.clone(), schema)
        })
        .collect();
    let required: Vec<&str> = artifacts.iter().map(|a| a.key.as_str()).collect();
    serde_json::json!({"type": "object", "properties": properties, "required": required})
}

/// A call that produced no reply: recorded with what it did produce, and
/// classified so the engine retries only what a retry can fix.
fn failed_call(
    block: &factory_core::template::Block,
    settings: &LlmSettings,
    resolved: &Resolved<'_>,
    prompt_text: String,
    notes: Vec<String>,
    failure: CallFailure,
) -> Execution {
    let cost = settings.cost(&resolved.model, &failure.usage);
    failed_call_record(
        block,
        (resolved.provider, &resolved.model),
        prompt_text,
        notes,
        failure,
        cost,
    )
}

/// A provider call (chat, image or speech) that made nothing: its record
/// with what it did produce, and its class — permanent or worth a retry.
pub(crate) fn failed_call_record(
    block: &factory_core::template::Block,
    (provider, model): (&str, &str),
    prompt_text: String,
    mut notes: Vec<String>,
    failure: CallFailure,
    cost_usd: Option<f64>,
) -> Execution {
    let kind = if failure.error.is_permanent() {
        FailureKind::Permanent
    } else {
        FailureKind::Provider
    };
    notes.extend(failure.notes.iter().cloned());
    let message = format!("block `{}`: {}", block.id, failure.error);
    Execution {
        timed_out: matches!(failure.error, LlmError::Timeout { .. }),
        error: Some(message.clone()),
        failure: Some(kind),
        stdout: failure.partial_text.clone().into_bytes(),
        llm: Some(Box::new(LlmCall {
            provider: provider.to_string(),
            model: model.to_string(),
            usage: failure.usage,
            latency_ms: failure.latency_ms,
            calls: failure.attempts,
            stop_reason: None,
            prompt: prompt_text,
            raw_request: failure.raw_request,
            raw_response: failure.raw_response,
            cost_usd,
            queued_ms: failure.queued_ms,
            response_format: String::new(),
            notes,
            error: Some(message),
            images: 0,
            characters: 0,
        })),
        ..Execution::default()
    }
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
    fn media_models_resolve_to_providers_that_make_media_and_are_priced_by_what_they_use() {
        let config = LlmConfig::parse(
            r#"
[prices."gpt-image-1"]
per_image = 0.04
input = 5.0
[prices."gpt-4o-mini-tts"]
input = 0.6
[prices."tts-1"]
per_million_characters = 15.0
"#,
            "factory.toml",
        )
        .unwrap();
        let lookup = |name: &str| match name {
            "OPENAI_API_KEY" => Some("sk-x".to_string()),
            "ANTHROPIC_API_KEY" => Some("sk-y".to_string()),
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:9/v1".to_string()),
            "FACTORY_LLM_MODEL" => Some("tiny".to_string()),
            _ => None,
        };
        let settings = LlmSettings::from_config(config, lookup);
        use factory_core::template::Runtime;
        let image = settings.resolve_media(None, Runtime::Image).unwrap();
        assert_eq!(
            (image.provider, image.model.as_str()),
            ("openai", "gpt-image-1")
        );
        // FACTORY_LLM_MODEL points chat aliases at the local server, not media ones.
        assert_eq!(
            settings
                .resolve_media(Some("tts"), Runtime::Speech)
                .unwrap()
                .provider,
            "openai"
        );
        let error = settings
            .resolve_media(Some("anthropic:claude-x"), Runtime::Image)
            .err()
            .unwrap();
        assert!(error.contains("makes no images"), "{error}");
        assert!(!settings.media_provider_missing(Some("anthropic:claude-x"), Runtime::Image));
        assert!(!settings.media_provider_missing(Some("no-such-alias"), Runtime::Image));
        assert!(!settings.media_provider_missing(Some("opnai:gpt-image-1"), Runtime::Image));
        assert!(settings.media_provider_missing(Some("nano-banana"), Runtime::Image));
        let usage = factory_llm::Usage {
            input_tokens: 100_000,
            ..Default::default()
        };
        assert_eq!(
            settings.media_cost("gpt-image-1", &usage, 1, 0),
            Some(0.04 + 0.5)
        );
        // Priced by tokens, but speech reports none: unknown, not $0.
        let none = factory_llm::Usage::default();
        assert_eq!(
            settings.media_cost("gpt-4o-mini-tts", &none, 0, 5_000),
            None
        );
        assert_eq!(
            settings.media_cost("tts-1", &none, 0, 2_000_000),
            Some(30.0)
        );
    }

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
        let resolved = settings.resolve(None).unwrap();
        assert_eq!(
            (resolved.client.provider_name(), resolved.model.as_str()),
            ("vllm", "qwen-72b")
        );
        // A provider on loopback serves one call at a time by default.
        assert_eq!(resolved.client.concurrency(), 1);
        let usage = factory_llm::Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            ..Default::default()
        };
        assert_eq!(settings.cost("qwen-72b", &usage), Some(2.0));
        let Err(error) = settings.resolve(Some("opus")).map(|r| r.model) else {
            panic!("opus needs an Anthropic key")
        };
        assert!(error.contains("ANTHROPIC_API_KEY"), "{error}");
    }

    #[test]
    fn requests_per_minute_come_from_the_provider_the_environment_or_the_file() {
        let file = r#"
requests_per_minute = 600
[providers.vllm]
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"
requests_per_minute = 30
[providers.other]
kind = "openai"
base_url = "https://example.invalid/v1"
"#;
        let rpm = |settings: &LlmSettings, name: &str| {
            settings
                .providers()
                .find(|(provider, _, _)| *provider == name)
                .and_then(|(_, client, _)| client.rate_limit())
                .map(|rate| (rate.requests, rate.window.as_secs()))
        };
        let config = LlmConfig::parse(file, "factory.toml").unwrap();
        let settings = LlmSettings::from_config(config.clone(), |_| None);
        assert_eq!(rpm(&settings, "vllm"), Some((30, 60)));
        assert_eq!(rpm(&settings, "other"), Some((600, 60)));
        let settings = LlmSettings::from_config(config, |name| {
            (name == "FACTORY_LLM_RPM").then(|| "120".to_string())
        });
        assert_eq!(
            rpm(&settings, "vllm"),
            Some((30, 60)),
            "the provider's own wins"
        );
        assert_eq!(
            rpm(&settings, "other"),
            Some((120, 60)),
            "the environment beats the file"
        );
        let settings = LlmSettings::from_lookup(|name| match name {
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            _ => None,
        });
        assert_eq!(rpm(&settings, "local"), None, "no limit unless one is set");

        let zero = LlmConfig::parse(
            "[providers.v]\nkind = \"openai\"\nrequests_per_minute = 0",
            "factory.toml",
        )
        .unwrap();
        let settings = LlmSettings::from_config(zero, |_| None);
        assert_eq!(rpm(&settings, "v"), None);
        assert!(
            settings.warnings()[0].contains("[providers.v] requests_per_minute = 0"),
            "{:?}",
            settings.warnings()
        );
        let typo = LlmConfig::parse("[providers.v]\nkind = \"openai\"\nrpm = 5", "factory.toml")
            .unwrap_err();
        assert!(typo.contains("rpm"), "{typo}");
    }

    #[test]
    fn tokens_per_minute_come_from_the_provider_the_environment_or_the_file() {
        let file = r#"
tokens_per_minute = 200000
[providers.vllm]
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"
tokens_per_minute = 30000
[providers.other]
kind = "openai"
base_url = "https://example.invalid/v1"
[providers.zero]
kind = "openai"
base_url = "https://zero.invalid/v1"
tokens_per_minute = 0
"#;
        let tpm = |settings: &LlmSettings, name: &str| {
            settings
                .providers()
                .find(|(provider, _, _)| *provider == name)
                .and_then(|(_, client, _)| client.token_limit())
                .map(|limit| (limit.tokens, limit.window.as_secs()))
        };
        let config = LlmConfig::parse(file, "factory.toml").unwrap();
        let settings = LlmSettings::from_config(config.clone(), |_| None);
        assert_eq!(tpm(&settings, "vllm"), Some((30_000, 60)));
        assert_eq!(tpm(&settings, "other"), Some((200_000, 60)));
        assert_eq!(
            tpm(&settings, "zero"),
            None,
            "0 is ignored, as for requests"
        );
        assert!(
            settings
                .warnings()
                .iter()
                .any(|w| w.contains("[providers.zero] tokens_per_minute = 0")),
            "{:?}",
            settings.warnings()
        );
        let settings = LlmSettings::from_config(config, |name| {
            (name == "FACTORY_LLM_TPM").then(|| "50000".to_string())
        });
        assert_eq!(
            tpm(&settings, "vllm"),
            Some((30_000, 60)),
            "the provider's own wins"
        );
        assert_eq!(
            tpm(&settings, "other"),
            Some((50_000, 60)),
            "the environment beats the file"
        );
        let settings = LlmSettings::from_lookup(|name| match name {
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            _ => None,
        });
        assert_eq!(tpm(&settings, "local"), None, "no limit unless one is set");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = LlmConfig::parse("default_model = \"haiku\"", "factory.toml").unwrap();
        let settings = LlmSettings::from_config(config, |name| match name {
            "FACTORY_DEFAULT_MODEL" => Some("local:llama".into()),
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            _ => None,
        });
        assert_eq!(settings.resolve(None).unwrap().model, "llama");
    }

    #[test]
    fn one_variable_points_every_alias_at_the_local_server() {
        let settings = LlmSettings::from_lookup(|name| match name {
            "FACTORY_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            "FACTORY_LLM_MODEL" => Some("qwen2.5".into()),
            "FACTORY_MODEL_HAIKU" => Some("openrouter:x/y".into()),
            _ => None,
        });
        for model in [None, Some("opus"), Some("sonnet")] {
            let resolved = settings.resolve(model).unwrap();
            assert_eq!(
                (resolved.provider, resolved.model.as_str()),
                ("local", "qwen2.5")
            );
        }
        // An explicit alias variable still wins; a pinned provider keeps its own.
        assert_eq!(
            settings.target(Some("haiku")).1.as_deref(),
            Some("openrouter")
        );
        assert!(settings.resolve(Some("anthropic:claude-x")).is_err());
        assert!(settings.warnings().is_empty());

        let settings = LlmSettings::from_lookup(|name| match name {
            "FACTORY_LLM_MODEL" => Some("qwen2.5".into()),
            "FACTORY_LLM_CONTEXT" => Some("16k".into()),
            _ => None,
        });
        let warnings = settings.warnings().join("\n");
        assert!(
            warnings.contains("FACTORY_LLM_CONTEXT=`16k` is not a positive whole number")
                && warnings.contains("FACTORY_LLM_BASE_URL is not"),
            "{warnings}"
        );
    }

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8080/v1"));
        assert!(is_loopback("http://localhost:11434/v1"));
        assert!(is_loopback("http://[::1]:8000/v1"));
        assert!(!is_loopback("https://api.openai.com/v1"));
        assert!(!is_loopback("http://10.0.0.5:8000/v1"));
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

    #[test]
    fn json_mode_where_the_reply_is_json() {
        let block = |artifacts: Value, config: Value| -> factory_core::template::Block {
            serde_json::from_value(serde_json::json!({
                "id": "b", "name": "B", "layer": "L0", "type": "extract", "runtime": "llm",
                "skill": "s", "inputs": {"config": config}, "outputs": {"artifacts": artifacts}
            }))
            .unwrap()
        };
        let json_one = serde_json::json!([{"key": "j", "path": "j.json", "format": "json"}]);
        let md_one = serde_json::json!([{"key": "m", "path": "m.md", "format": "md"}]);
        let mixed = serde_json::json!([
            {"key": "m", "path": "m.md", "format": "md"},
            {"key": "j", "path": "j.json", "format": "json"}
        ]);
        let decide = |artifacts: &Value, config: Value, kind| {
            let b = block(artifacts.clone(), config);
            let options = factory_core::llm_options::parse(&b.inputs.config).unwrap();
            response_format(&b, &options, kind, &BTreeMap::new())
        };
        use ProviderKind::{Anthropic, Openai};
        let none = serde_json::json!({});
        assert_eq!(
            decide(&json_one, none.clone(), Openai),
            ResponseFormat::JsonObject
        );
        assert_eq!(decide(&md_one, none.clone(), Openai), ResponseFormat::Text);
        let ResponseFormat::JsonSchema { schema, .. } = decide(&mixed, none.clone(), Openai) else {
            panic!("several artifacts: one object with their keys")
        };
        assert_eq!(schema["required"], serde_json::json!(["m", "j"]));
        assert_eq!(schema["properties"]["m"]["type"], "string");
        assert_eq!(
            decide(
                &json_one,
                serde_json::json!({"structured_output": "off"}),
                Openai
            ),
            ResponseFormat::Text
        );
        // Anthropic: the prompt contract unless the block asks.
        assert_eq!(
            decide(&json_one, none.clone(), Anthropic),
            ResponseFormat::Text
        );
        assert_eq!(
            decide(
                &json_one,
                serde_json::json!({"structured_output": "json_object"}),
                Anthropic
            ),
            ResponseFormat::JsonObject
        );
        assert!(matches!(
            decide(
                &json_one,
                serde_json::json!({"json_schema": {"type": "object"}}),
                Openai
            ),
            ResponseFormat::JsonSchema { .. }
        ));
        // A golden example gives the shape.
        let b = block(json_one.clone(), none.clone());
        let golden = golden_schemas(
            &b,
            &BTreeMap::from([("j".to_string(), br#"{"name": "x", "n": 1}"#.to_vec())]),
        );
        let options = factory_core::llm_options::parse(&b.inputs.config).unwrap();
        let ResponseFormat::JsonSchema { schema, .. } =
            response_format(&b, &options, Openai, &golden)
        else {
            panic!("the golden's shape")
        };
        assert_eq!(schema["required"], serde_json::json!(["name", "n"]));
        // Declared metrics are required numbers of the first JSON artifact.
        let mut scored = block(mixed.clone(), none.clone());
        scored.outputs.metrics =
            serde_json::from_value(serde_json::json!([{"key": "score", "type": "number"}]))
                .unwrap();
        let golden = golden_schemas(&scored, &BTreeMap::new());
        assert_eq!(golden["j"]["required"], serde_json::json!(["score"]));
        assert_eq!(golden["j"]["properties"]["score"]["type"], "number");
        let ResponseFormat::JsonSchema { schema, .. } =
            response_format(&scored, &options, Openai, &golden)
        else {
            panic!("an envelope")
        };
        assert_eq!(
            schema["properties"]["j"]["required"],
            serde_json::json!(["score"])
        );
    }
}
