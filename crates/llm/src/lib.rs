//! Thin clients for the two LLM wire protocols the engine speaks: the
//! Anthropic Messages API and OpenAI-compatible chat completions (OpenAI,
//! OpenRouter, vLLM, Ollama, LM Studio).
//!
//! Why in-house: a pipeline engine needs exact control of retries and
//! rate-limit headers, the usage numbers (including prompt-cache reads and
//! writes) and the raw request/response of every call for the audit trail.
//!
//! [`Client`] wraps a [`Provider`] with what every call needs: a per-provider
//! concurrency limit, retries with backoff on 429/529/5xx (honouring
//! `retry-after`), and one deadline that cancels the call, retries included.
//!
//! Architecture Invariant: an API key never appears in an error, a log line,
//! a recorded request or a recorded response. Keys live only in the provider
//! structs (whose `Debug` redacts them) and in request headers.

mod anthropic;
pub mod media;
mod openai;
pub mod sse;
pub mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OnceCell, Semaphore};

pub use anthropic::{Anthropic, DEFAULT_BASE_URL as ANTHROPIC_BASE_URL};
pub use media::{
    Gemini, ImageRequest, MediaCall, MediaClient, MediaProvider, MediaReply, SpeechRequest,
};
pub use openai::OpenAiCompatible;

/// A piece of prompt text. Cacheable parts must come first: providers cache
/// a prefix, so content shared by sibling blocks goes before their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cacheable: bool,
}

impl Part {
    pub fn new(text: impl Into<String>) -> Part {
        Part {
            text: text.into(),
            cacheable: false,
        }
    }

    pub fn cacheable(text: impl Into<String>) -> Part {
        Part {
            text: text.into(),
            cacheable: true,
        }
    }
}

/// What shape the provider is asked to constrain the reply to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// No constraint: the prompt's output contract is all there is.
    #[default]
    Text,
    /// Any one JSON object (OpenAI's JSON mode; llama.cpp and vLLM enforce it
    /// with a grammar).
    JsonObject,
    /// JSON matching `schema` (OpenAI structured outputs).
    JsonSchema { name: String, schema: Value },
    /// JSON mode with the schema beside it, `{"type": "json_object",
    /// "schema": …}`: llama-cpp-python's form, which it turns into a grammar.
    /// Only asked for after a server refused `json_schema`.
    JsonObjectWithSchema { schema: Value },
}

impl ResponseFormat {
    /// The next weaker format, for a server that refuses this one.
    pub fn weaker(&self) -> Option<ResponseFormat> {
        match self {
            ResponseFormat::JsonSchema { schema, .. } => {
                Some(ResponseFormat::JsonObjectWithSchema {
                    schema: schema.clone(),
                })
            }
            ResponseFormat::JsonObjectWithSchema { .. } => Some(ResponseFormat::JsonObject),
            ResponseFormat::JsonObject => Some(ResponseFormat::Text),
            ResponseFormat::Text => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ResponseFormat::Text => "text",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema { .. } => "json_schema",
            ResponseFormat::JsonObjectWithSchema { .. } => "json_object+schema",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model id (aliases are resolved before this point).
    pub model: String,
    pub system: Vec<Part>,
    pub user: Vec<Part>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// For reproducible sampling where the server supports it (not Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Stream the reply (server-sent events) instead of one JSON body.
    #[serde(default)]
    pub stream: bool,
}

impl ChatRequest {
    /// Estimated prompt tokens: the text of every part plus the chat
    /// template's framing per message.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        let text: u64 = self
            .system
            .iter()
            .chain(&self.user)
            .map(|p| tokens::estimate(&p.text))
            .sum();
        let messages = 1 + u64::from(!self.system.is_empty());
        text + messages * tokens::MESSAGE_OVERHEAD
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// The server reported no usage; these are the factory's own estimate
    /// ([`tokens::estimate`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl Usage {
    fn estimated(request: &ChatRequest, reply: &str) -> Usage {
        Usage {
            input_tokens: request.estimated_prompt_tokens(),
            output_tokens: tokens::estimate(reply),
            estimated: true,
            ..Usage::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub text: String,
    /// The provider's own word (`end_turn`, `max_tokens`, `stop`, `length`, …).
    pub stop_reason: Option<String>,
    /// The reply was cut off at the token limit.
    pub truncated: bool,
    pub usage: Usage,
    pub model: String,
    /// From sending to the end of the reply (retries included, waiting for a
    /// concurrency slot not).
    pub latency_ms: u64,
    /// Time spent waiting for one of the provider's concurrency slots.
    #[serde(default)]
    pub queued_ms: u64,
    /// HTTP calls made, including retries and fallbacks.
    pub attempts: u32,
    /// The format the answering call asked for (after any fallback).
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// What the client did besides the plain call (fallbacks), in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The request body as sent (no headers, so no key).
    pub raw_request: serde_json::Value,
    /// The response body as received (the SSE text when streaming).
    pub raw_response: String,
}

/// Which of a call's time limits ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// The whole call, retries included (the block's `timeout`).
    Total,
    /// No byte of the reply arrived in time (streaming).
    FirstToken,
    /// The stream went silent mid-reply.
    Idle,
}

impl TimeoutKind {
    fn describe(self, timeout_ms: u64, attempts: u32) -> String {
        match self {
            TimeoutKind::Total => format!(
                "did not finish within {timeout_ms} ms (the block's timeout, counted from sending; after {attempts} call(s)); raise the block's `timeout` or lower inputs.config.max_tokens"
            ),
            TimeoutKind::FirstToken => format!(
                "sent no first token within {timeout_ms} ms (time-to-first-token limit; a long prompt on a slow server takes long to read: raise inputs.config.first_token_timeout_ms)"
            ),
            TimeoutKind::Idle => format!(
                "went silent mid-reply for {timeout_ms} ms (idle limit, inputs.config.idle_timeout_ms)"
            ),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("{provider} answered HTTP {status}: {excerpt}")]
    Http {
        provider: String,
        status: u16,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    #[error("{provider} reported an error ({kind}): {message}")]
    Provider {
        provider: String,
        kind: String,
        message: String,
    },
    #[error("{provider} {}", .kind.describe(*.timeout_ms, *.attempts))]
    Timeout {
        provider: String,
        kind: TimeoutKind,
        timeout_ms: u64,
        attempts: u32,
    },
    #[error("cannot reach {provider} at {url}: {message}")]
    Transport {
        provider: String,
        url: String,
        message: String,
    },
    #[error("{provider} sent a malformed response: {message}")]
    Malformed { provider: String, message: String },
    #[error("{provider}'s stream ended before the message was complete")]
    Incomplete { provider: String },
    /// HTTP 200 with no body: a glitch worth another call.
    #[error("{provider} answered 200 with an empty body")]
    EmptyBody { provider: String },
    /// HTTP 200 and a stream with no event at all. llama.cpp's server answers
    /// an over-long prompt this way; the client asks again without streaming
    /// to learn why.
    #[error(
        "{provider} answered 200 with an empty stream (llama.cpp's server does this when the prompt does not fit its context window)"
    )]
    EmptyStream { provider: String },
    /// The server refused the prompt as too long for the model's window.
    #[error(
        "{provider} refused the prompt: it does not fit the model's context window ({message}); use a model with a larger window, or trim what the block reads"
    )]
    ContextOverflow { provider: String, message: String },
    /// The provider cannot do what was asked (speech from an image-only API).
    #[error("{provider} cannot do this: {what}")]
    Unsupported { provider: String, what: String },
    /// The provider declined the request (a safety block): the same request
    /// will be declined again.
    #[error("{provider} refused the request: {message}")]
    Refused { provider: String, message: String },
}

impl LlmError {
    /// Worth another try: rate limits, overload, server errors, broken connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Http { status, .. } => {
                *status == 429 || *status == 529 || (500..=599).contains(status)
            }
            LlmError::Provider { kind, .. } => {
                matches!(
                    kind.as_str(),
                    "overloaded_error" | "rate_limit_error" | "api_error"
                )
            }
            LlmError::Transport { .. }
            | LlmError::Incomplete { .. }
            | LlmError::EmptyBody { .. } => true,
            LlmError::Timeout { .. }
            | LlmError::Malformed { .. }
            | LlmError::EmptyStream { .. }
            | LlmError::ContextOverflow { .. }
            | LlmError::Unsupported { .. }
            | LlmError::Refused { .. } => false,
        }
    }

    /// The same prompt can never succeed on this model: no retry, by the
    /// client or the engine, can help.
    pub fn is_permanent(&self) -> bool {
        match self {
            LlmError::ContextOverflow { .. }
            | LlmError::Unsupported { .. }
            | LlmError::Refused { .. } => true,
            // Bad request, unauthorised, forbidden, unknown model: the
            // request or the set-up must change first.
            LlmError::Http { status, .. } => matches!(status, 400 | 401 | 403 | 404 | 413 | 422),
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A 400/422 (or, from llama-cpp-python, a 500) that names the response
    /// format: the server does not accept the structured-output request, so
    /// a weaker one is worth a try.
    fn refuses_response_format(&self) -> bool {
        match self {
            LlmError::Http {
                status: 400 | 422 | 500,
                excerpt,
                ..
            } => {
                let text = excerpt.to_ascii_lowercase();
                text.contains("response_format")
                    || text.contains("json_schema")
                    || text.contains("json_object")
            }
            _ => false,
        }
    }
}

/// Words servers use when a prompt is longer than the model's window.
const OVERFLOW_MARKERS: &[&str] = &[
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "exceeds the available context",
    "n_ctx",
];

/// Whether an error text from a server says the prompt did not fit.
pub(crate) fn mentions_overflow(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    OVERFLOW_MARKERS.iter().any(|m| text.contains(m))
}

/// Streaming limits besides the total: how long the first byte of the reply
/// and each gap between chunks may take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    pub first_token: Option<Duration>,
    pub idle: Option<Duration>,
}

/// All the time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From sending to the end of the reply, retries included; waiting for a
    /// concurrency slot is not counted.
    pub total: Duration,
    pub stream: StreamLimits,
}

impl From<Duration> for Limits {
    fn from(total: Duration) -> Limits {
        Limits {
            total,
            stream: StreamLimits::default(),
        }
    }
}

/// Told the reply so far as a stream arrives (the whole text each time), so
/// a caller can show a reply while it is being written. Called often: it
/// should be cheap or throttle itself.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// What one HTTP call has sent and received so far. The provider fills it in
/// as it goes, so a call that fails or times out still leaves its request and
/// partial reply for the record.
#[derive(Clone, Default)]
pub struct Transcript {
    pub request: Value,
    pub raw_response: String,
    pub text: String,
    /// Who is told of the text as it grows (streaming replies only).
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript")
            .field("request", &self.request)
            .field("raw_response", &self.raw_response)
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

/// A model the provider serves, as its `models` endpoint describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// The context window the server runs it with, where it says so.
    pub context_window: Option<u64>,
}

/// One wire protocol against one endpoint.
#[async_trait]
pub trait Provider: Send + Sync {
    /// A short name for messages, e.g. `anthropic` or `openrouter`.
    fn name(&self) -> &str;

    /// One HTTP call, no retries. Records what it sends and receives in
    /// `transcript` as it goes.
    async fn send(
        &self,
        request: &ChatRequest,
        limits: &StreamLimits,
        transcript: &mut Transcript,
    ) -> Result<ChatResponse, LlmError>;

    /// The models the endpoint serves (`GET …/models`).
    async fn models(&self) -> Result<Vec<ModelInfo>, LlmError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(1_000),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base_delay.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1).min(16))
                .unwrap_or(u32::MAX),
        );
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// A call that did not produce a reply, with everything it did produce:
/// the request, the partial reply, the (estimated) tokens so far.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct CallFailure {
    pub error: LlmError,
    /// The last request body sent (Null when nothing was sent).
    pub raw_request: Value,
    pub raw_response: String,
    /// The reply text received before the failure.
    pub partial_text: String,
    pub usage: Usage,
    pub attempts: u32,
    pub latency_ms: u64,
    pub queued_ms: u64,
    pub notes: Vec<String>,
}

/// A limit on calls in flight that several processes hold together: workers
/// on many machines calling one provider keep to its limit as a fleet (the
/// engine backs it with the store).
#[async_trait]
pub trait SharedLimit: Send + Sync {
    /// Waits for one of `limit` slots of `key`; the slot is given back when
    /// the returned guard is dropped.
    async fn acquire(&self, key: &str, limit: usize) -> Result<SharedPermit, String>;

    /// Waits until fewer than `requests` requests under `key` started in the
    /// last `window`, and counts one more (it is never given back: it ages
    /// out of the window).
    async fn spend(&self, key: &str, requests: u32, window: Duration) -> Result<(), String>;

    /// Waits until `amount` more tokens under `key` fit `limit` for the
    /// last `window` (a spend larger than the whole limit waits for an
    /// empty window), and counts them; returns the spend's holder, by which
    /// [`SharedLimit::settle_tokens`] corrects the amount once the reply
    /// says what the request really used.
    async fn spend_tokens(
        &self,
        key: &str,
        limit: u64,
        amount: u64,
        window: Duration,
    ) -> Result<String, String>;

    /// Sets the amount of the spend `holder` made under `key`.
    async fn settle_tokens(&self, key: &str, holder: &str, amount: u64) -> Result<(), String>;
}

/// At most `tokens` tokens (prompt plus the reply's `max_tokens`, corrected
/// to the reply's usage once it is known) in any `window`: a provider's
/// tokens-per-minute limit. Every request counts, retries included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimit {
    pub tokens: u64,
    pub window: Duration,
}

impl TokenLimit {
    pub fn per_minute(tokens: u64) -> TokenLimit {
        TokenLimit {
            tokens: tokens.max(1),
            window: Duration::from_secs(60),
        }
    }
}

/// This process's own record of its last requests (a sliding window of
/// weighted entries: a request's tokens for the token limit, one per request
/// for the rate limit), so a limit holds without a store and before the
/// store is asked. Token waiters take turns in arrival order (`order`, a
/// fair lock held while waiting), so a large request is not overtaken for
/// ever by smaller ones that fit.
#[derive(Default)]
struct TokenWindow {
    spends: std::sync::Mutex<TokenSpends>,
    order: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct TokenSpends {
    next: u64,
    spends: std::collections::VecDeque<(Instant, u64, u64)>,
}

impl TokenWindow {
    /// Counts `amount` tokens now and returns the spend's id, or says how
    /// long to wait until enough of the window has aged out for them. A
    /// spend larger than the whole limit goes alone, into an empty window.
    fn try_spend(&self, limit: TokenLimit, amount: u64) -> Result<u64, Duration> {
        let mut window = self.spends.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while window
            .spends
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) >= limit.window)
        {
            window.spends.pop_front();
        }
        let spent: u64 = window.spends.iter().map(|(_, _, n)| n).sum();
        if window.spends.is_empty() || spent.saturating_add(amount) <= limit.tokens {
            let id = window.next;
            window.next += 1;
            window.spends.push_back((now, id, amount));
            return Ok(id);
        }
        // The wait until the oldest spends that must age out have.
        let mut left = spent;
        for (at, _, n) in &window.spends {
            left -= n;
            if left == 0 || left.saturating_add(amount) <= limit.tokens {
                return Err((*at + limit.window).saturating_duration_since(now));
            }
        }
        Err(limit.window)
    }

    /// Replaces the estimate of spend `id` with what was used.
    fn settle(&self, id: u64, amount: u64) {
        let mut window = self.spends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spend) = window.spends.iter_mut().find(|(_, i, _)| *i == id) {
            spend.2 = amount;
        }
    }
}

/// One request's tokens counted against the limit: in this process's
/// window and, when the limit is shared, the fleet's.
struct TokenTicket {
    local: u64,
    shared: Option<String>,
    /// The estimate was larger than the whole limit (it went alone).
    oversized: Option<(u64, u64)>,
}

/// At most `requests` requests started in any `window`: a provider's
/// requests-per-minute limit. Every request counts, retries included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    pub fn per_minute(requests: u32) -> RateLimit {
        RateLimit {
            requests: requests.max(1),
            window: Duration::from_secs(60),
        }
    }
}

/// The shared budget of a provider's tokens, beside its `… requests` slots.
fn tokens_key(key: &str) -> String {
    format!("{key} tokens")
}

/// A slot of a [`SharedLimit`], given back when dropped.
pub struct SharedPermit(pub Box<dyn Send + Sync>);

/// A provider with a concurrency limit, retries and a deadline.
#[derive(Clone)]
pub struct Client {
    provider: Arc<dyn Provider>,
    permits: Arc<Semaphore>,
    /// The same limit held with other processes, under this key.
    shared: Option<(Arc<dyn SharedLimit>, String)>,
    max_concurrent: usize,
    /// Requests per window, this process's and (when shared) the fleet's.
    rate: Option<(RateLimit, Arc<TokenWindow>)>,
    /// Tokens per window, likewise.
    tokens: Option<(TokenLimit, Arc<TokenWindow>)>,
    retry: RetryPolicy,
    models: Arc<OnceCell<Vec<ModelInfo>>>,
    /// Response formats this endpoint refused: later calls start weaker
    /// instead of being refused again.
    refused: Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
}

impl Client {
    pub fn new(provider: Arc<dyn Provider>, max_concurrent: usize, retry: RetryPolicy) -> Client {
        Client {
            provider,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            shared: None,
            max_concurrent: max_concurrent.max(1),
            rate: None,
            tokens: None,
            retry,
            models: Arc::new(OnceCell::new()),
            refused: Arc::default(),
        }
    }

    /// This client with its limit held together with other processes under
    /// `key` (the same key on every worker for the same endpoint). The
    /// process's own limit still applies first.
    pub fn sharing_limit(&self, limit: Arc<dyn SharedLimit>, key: String) -> Client {
        Client {
            shared: Some((limit, key)),
            ..self.clone()
        }
    }

    /// This client with at most `rate.requests` requests started per
    /// `rate.window` (held by the fleet too once the limit is shared).
    pub fn with_rate(&self, rate: RateLimit) -> Client {
        Client {
            rate: Some((rate, Arc::default())),
            ..self.clone()
        }
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate.as_ref().map(|(rate, _)| *rate)
    }

    /// This client with at most `limit.tokens` tokens per `limit.window`
    /// (held by the fleet too once the limit is shared).
    pub fn with_token_limit(&self, limit: TokenLimit) -> Client {
        Client {
            tokens: Some((limit, Arc::default())),
            ..self.clone()
        }
    }

    pub fn token_limit(&self) -> Option<TokenLimit> {
        self.tokens.as_ref().map(|(limit, _)| *limit)
    }

    /// Waits until `request`'s tokens (its estimated prompt and its
    /// `max_tokens`) fit the token limit: this process's window, then the
    /// fleet's (best effort, as for requests).
    async fn token_turn(&self, request: &ChatRequest) -> Option<TokenTicket> {
        let (limit, window) = self.tokens.as_ref()?;
        let amount = request
            .estimated_prompt_tokens()
            .saturating_add(u64::from(request.max_tokens));
        // In arrival order: held until this request is counted, here and
        // in the fleet's budget.
        let _turn = window.order.lock().await;
        let local = loop {
            match window.try_spend(*limit, amount) {
                Ok(id) => break id,
                // Looked at again within 200 ms: a reply settling its
                // estimate down may make room before anything ages out.
                Err(wait) => tokio::time::sleep(wait.min(Duration::from_millis(200))).await,
            }
        };
        let shared = match &self.shared {
            Some((shared, key)) => match shared
                .spend_tokens(&tokens_key(key), limit.tokens, amount, limit.window)
                .await
            {
                Ok(holder) => Some(holder),
                Err(error) => {
                    tracing::warn!(%error, key, "shared LLM token limit unavailable; using this process's own");
                    None
                }
            },
            None => None,
        };
        Some(TokenTicket {
            local,
            shared,
            oversized: (amount > limit.tokens).then_some((amount, limit.tokens)),
        })
    }

    /// Corrects a request's counted tokens to what the reply says it used.
    async fn settle_tokens(&self, ticket: Option<TokenTicket>, usage: &Usage) {
        let (Some(ticket), Some((_, window))) = (ticket, &self.tokens) else {
            return;
        };
        let used = usage
            .input_tokens
            .saturating_add(usage.output_tokens)
            .saturating_add(usage.cache_write_tokens);
        window.settle(ticket.local, used);
        if let (Some(holder), Some((shared, key))) = (ticket.shared, &self.shared)
            && let Err(error) = shared.settle_tokens(&tokens_key(key), &holder, used).await
        {
            tracing::warn!(%error, key, "could not settle a shared LLM token spend");
        }
    }

    /// Waits for a turn under the rate limit: first this process's own
    /// window, then the fleet's. Like the concurrency limit, the fleet's is
    /// best effort: when the store cannot be asked, the process's own holds.
    async fn rate_turn(&self) {
        let Some((rate, window)) = &self.rate else {
            return;
        };
        // Requests weigh one each.
        let per_request = TokenLimit {
            tokens: u64::from(rate.requests),
            window: rate.window,
        };
        while let Err(wait) = window.try_spend(per_request, 1) {
            tokio::time::sleep(wait).await;
        }
        if let Some((limit, key)) = &self.shared
            && let Err(error) = limit
                .spend(&format!("{key} requests"), rate.requests, rate.window)
                .await
        {
            tracing::warn!(%error, key, "shared LLM rate limit unavailable; using this process's own");
        }
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// Calls in flight at once.
    pub fn concurrency(&self) -> usize {
        self.max_concurrent
    }

    /// Asks the endpoint which models it serves (uncached: for `factory doctor`).
    pub async fn probe(&self, timeout: Duration) -> Result<Vec<ModelInfo>, LlmError> {
        match tokio::time::timeout(timeout, self.provider.models()).await {
            Ok(result) => result,
            Err(_) => Err(LlmError::Timeout {
                provider: self.provider.name().to_string(),
                kind: TimeoutKind::Total,
                timeout_ms: timeout.as_millis() as u64,
                attempts: 1,
            }),
        }
    }

    /// The context window the server reports for `model`, asked once per
    /// client (a failed probe counts as "not reported"). A server that serves
    /// one model answers for it whatever id it was given (llama.cpp).
    pub async fn discovered_context_window(&self, model: &str) -> Option<u64> {
        let models = self
            .models
            .get_or_init(|| async { self.probe(Duration::from_secs(5)).await.unwrap_or_default() })
            .await;
        models
            .iter()
            .find(|m| m.id == model)
            .or(match models.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .and_then(|m| m.context_window)
    }

    /// Sends `request`, retrying what is worth retrying, within `limits`.
    /// The total limit starts when a concurrency slot is free: waiting for a
    /// slot is queueing, not the model taking too long. Two fallbacks change
    /// the request instead of repeating it: an empty stream is asked again
    /// without streaming (to learn the real error), and a refused response
    /// format is asked again with the next weaker one. Dropping the future
    /// cancels the call.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        limits: impl Into<Limits>,
    ) -> Result<ChatResponse, CallFailure> {
        self.complete_with_progress(request, limits, None).await
    }

    /// [`Client::complete`], telling `progress` the reply so far as a
    /// streamed reply arrives (each retry starts it again from nothing).
    pub async fn complete_with_progress(
        &self,
        request: &ChatRequest,
        limits: impl Into<Limits>,
        progress: Option<Progress>,
    ) -> Result<ChatResponse, CallFailure> {
        let limits = limits.into();
        let queued = Instant::now();
        let _permit = self.permits.acquire().await;
        // Best effort: when the shared limit cannot be asked (the database is
        // unreachable), the call goes ahead under this process's own limit.
        let _shared = match &self.shared {
            Some((limit, key)) => match limit.acquire(key, self.max_concurrent).await {
                Ok(permit) => Some(permit),
                Err(error) => {
                    tracing::warn!(%error, key, "shared LLM limit unavailable; using this process's own");
                    None
                }
            },
            None => None,
        };
        self.rate_turn().await;
        let mut ticket = self.token_turn(request).await;
        let queued_ms = queued.elapsed().as_millis() as u64;
        let started = Instant::now();
        let deadline = started + limits.total;
        let mut request = request.clone();
        let mut notes = Vec::new();
        if let Some((amount, limit)) = ticket.as_ref().and_then(|t| t.oversized) {
            notes.push(format!(
                "the request's estimated {amount} tokens (prompt and max_tokens) exceed the limit of {limit} tokens a minute: it was sent alone, once nothing else was counted; lower max_tokens or raise tokens_per_minute"
            ));
        }
        {
            let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            while refused.contains(request.response_format.as_str())
                && let Some(weaker) = request.response_format.weaker()
            {
                notes.push(format!(
                    "asked with response_format `{}`: this server refused `{}` before",
                    weaker.as_str(),
                    request.response_format.as_str()
                ));
                request.response_format = weaker;
            }
        }
        let mut calls = 0;
        let mut retries = 0;
        let mut fresh_connection_tried = false;
        loop {
            calls += 1;
            // Every request counts against the rate limits, a retry too; a
            // turn that comes after the deadline ends the call.
            let turn = if calls > 1 {
                let turn = async {
                    self.rate_turn().await;
                    self.token_turn(&request).await
                };
                Some(tokio::time::timeout_at(deadline.into(), turn).await)
            } else {
                None
            };
            if let Some(Ok(next)) = turn {
                ticket = next;
            } else if let Some(Err(_)) = turn {
                notes.push("the time ran out waiting for the provider's rate limit".to_string());
                return Err(CallFailure {
                    error: LlmError::Timeout {
                        provider: self.provider.name().to_string(),
                        kind: TimeoutKind::Total,
                        timeout_ms: limits.total.as_millis() as u64,
                        attempts: calls - 1,
                    },
                    raw_request: Value::Null,
                    raw_response: String::new(),
                    partial_text: String::new(),
                    usage: Usage::default(),
                    attempts: calls - 1,
                    latency_ms: started.elapsed().as_millis() as u64,
                    queued_ms,
                    notes,
                });
            }
            let mut transcript = Transcript {
                progress: progress.clone(),
                ..Transcript::default()
            };
            let result = tokio::time::timeout_at(
                deadline.into(),
                self.provider
                    .send(&request, &limits.stream, &mut transcript),
            )
            .await;
            let error = match result {
                Err(_) => LlmError::Timeout {
                    provider: self.provider.name().to_string(),
                    kind: TimeoutKind::Total,
                    timeout_ms: limits.total.as_millis() as u64,
                    attempts: calls,
                },
                Ok(Ok(mut response)) => {
                    response.attempts = calls;
                    response.latency_ms = started.elapsed().as_millis() as u64;
                    response.queued_ms = queued_ms;
                    response.response_format = request.response_format.clone();
                    response.notes = notes;
                    let usage = &mut response.usage;
                    if usage.input_tokens == 0 && usage.output_tokens == 0 {
                        *usage = Usage::estimated(&request, &response.text);
                    } else if usage.output_tokens == 0 && !response.text.is_empty() {
                        usage.output_tokens = tokens::estimate(&response.text);
                        usage.estimated = true;
                    }
                    self.settle_tokens(ticket.take(), &response.usage).await;
                    return Ok(response);
                }
                Ok(Err(error)) => error,
            };
            // The prompt counts only if the server got to work on it: a reply
            // began, or it ran out of time while generating. A request that
            // failed counts that much against the token limit, not its
            // estimate.
            let worked = !transcript.text.is_empty() || matches!(error, LlmError::Timeout { .. });
            let spent = if worked {
                Usage::estimated(&request, &transcript.text)
            } else {
                Usage::default()
            };
            self.settle_tokens(ticket.take(), &spent).await;
            let fallback = match &error {
                LlmError::EmptyStream { .. } if request.stream => {
                    request.stream = false;
                    Some("the stream was empty; asked again without streaming".to_string())
                }
                error if error.refuses_response_format() => {
                    self.refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(request.response_format.as_str());
                    request.response_format.weaker().map(|weaker| {
                        let note = format!(
                            "the server refused response_format `{}`; asked again with `{}`",
                            request.response_format.as_str(),
                            weaker.as_str()
                        );
                        request.response_format = weaker;
                        note
                    })
                }
                _ => None,
            };
            if let Some(note) = fallback
                && Instant::now() < deadline
            {
                tracing::info!(provider = self.provider.name(), %error, "{note}");
                notes.push(note);
                continue;
            }
            retries += 1;
            let fail = |error: LlmError, notes: Vec<String>| CallFailure {
                usage: spent,
                raw_request: transcript.request.clone(),
                raw_response: transcript.raw_response.clone(),
                partial_text: transcript.text.clone(),
                attempts: calls,
                latency_ms: started.elapsed().as_millis() as u64,
                queued_ms,
                notes,
                error,
            };
            if !error.is_retryable() || retries >= self.retry.max_attempts {
                return Err(fail(error, notes));
            }
            // A connection kept alive after a failed reply may be gone at the
            // server (llama.cpp's drops it after an empty stream): the first
            // transport error is tried again at once, on a fresh connection.
            let delay = if matches!(error, LlmError::Transport { .. }) && !fresh_connection_tried {
                fresh_connection_tried = true;
                Duration::ZERO
            } else {
                self.retry.delay(retries, error.retry_after())
            };
            if Instant::now() + delay >= deadline {
                return Err(fail(error, notes));
            }
            tracing::warn!(provider = self.provider.name(), calls, ?delay, %error, "retrying LLM call");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Parses a `retry-after` header given in seconds (integer or decimal).
pub(crate) fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let seconds: f64 = value?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3_600.0)))
}

/// The start of a body for an error message, with the key scrubbed in case
/// a server echoes it.
pub(crate) fn excerpt(body: &str, key: Option<&str>) -> String {
    let mut text: String = body.chars().take(400).collect();
    if body.chars().count() > 400 {
        text.push('…');
    }
    match key {
        Some(key) if !key.is_empty() => text.replace(key, "[redacted]"),
        _ => text,
    }
}

/// Sends a request; a transport failure names the URL (never headers), a
/// non-2xx answer becomes [`LlmError::Http`] with `retry-after` and an
/// excerpt scrubbed of `key`, or [`LlmError::ContextOverflow`] when it says
/// the prompt is too long. Both providers go through here.
pub(crate) async fn send_checked(
    provider: &str,
    url: &str,
    call: reqwest::RequestBuilder,
    key: Option<&str>,
) -> Result<reqwest::Response, LlmError> {
    let response = call
        .send()
        .await
        .map_err(|e| transport_error(provider, url, e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = parse_retry_after(response.headers().get("retry-after"));
    let text = response.text().await.unwrap_or_default();
    if matches!(status.as_u16(), 400 | 413 | 422) && mentions_overflow(&text) {
        return Err(LlmError::ContextOverflow {
            provider: provider.to_string(),
            message: excerpt(&text, key),
        });
    }
    Err(LlmError::Http {
        provider: provider.to_string(),
        status: status.as_u16(),
        excerpt: excerpt(&text, key),
        retry_after,
    })
}

/// Reads a non-streamed body into `raw` (kept for the audit trail) and parses it.
pub(crate) async fn read_json_body(
    provider: &str,
    url: &str,
    response: reqwest::Response,
    raw: &mut String,
) -> Result<serde_json::Value, LlmError> {
    *raw = response
        .text()
        .await
        .map_err(|e| transport_error(provider, url, e.without_url().to_string()))?;
    if raw.trim().is_empty() {
        return Err(LlmError::EmptyBody {
            provider: provider.to_string(),
        });
    }
    serde_json::from_str(raw).map_err(|e| LlmError::Malformed {
        provider: provider.to_string(),
        message: format!("body is not JSON: {e}: {}", excerpt(raw, None)),
    })
}

pub(crate) fn transport_error(provider: &str, url: &str, message: String) -> LlmError {
    LlmError::Transport {
        provider: provider.to_string(),
        url: url.to_string(),
        message,
    }
}

/// An error event inside a stream: an overflow when its message says so.
pub(crate) fn stream_error(provider: &str, kind: &str, message: &str) -> LlmError {
    if mentions_overflow(kind) || mentions_overflow(message) {
        LlmError::ContextOverflow {
            provider: provider.to_string(),
            message: message.to_string(),
        }
    } else {
        LlmError::Provider {
            provider: provider.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
        }
    }
}

/// Reads a streamed body to the end into `raw`, feeding SSE events to
/// `on_event`, within the stream limits: the first chunk must come within
/// `first_token` of the call, each later one within `idle` of the last.
/// Returns how many events arrived; a stream with none and no bytes is
/// [`LlmError::EmptyStream`].
pub(crate) async fn read_sse(
    provider: &str,
    response: reqwest::Response,
    limits: &StreamLimits,
    sent_at: Instant,
    raw: &mut String,
    mut on_event: impl FnMut(&sse::SseEvent) -> Result<(), LlmError>,
    transport_error: impl Fn(String) -> LlmError,
) -> Result<usize, LlmError> {
    use futures_util::StreamExt;
    let mut parser = sse::SseParser::default();
    let mut stream = response.bytes_stream();
    let mut events = 0;
    loop {
        let (limit, kind) = if raw.is_empty() {
            (
                limits
                    .first_token
                    .map(|t| t.saturating_sub(sent_at.elapsed())),
                TimeoutKind::FirstToken,
            )
        } else {
            (limits.idle, TimeoutKind::Idle)
        };
        let next = match limit {
            Some(limit) => match tokio::time::timeout(limit, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let full = match kind {
                        TimeoutKind::FirstToken => limits.first_token,
                        _ => limits.idle,
                    };
                    return Err(LlmError::Timeout {
                        provider: provider.to_string(),
                        kind,
                        timeout_ms: full.unwrap_or_default().as_millis() as u64,
                        attempts: 1,
                    });
                }
            },
            None => stream.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| transport_error(e.to_string()))?;
        raw.push_str(&String::from_utf8_lossy(&chunk));
        for event in parser.push(&chunk) {
            events += 1;
            on_event(&event)?;
        }
    }
    if let Some(event) = parser.finish() {
        events += 1;
        on_event(&event)?;
    }
    if events == 0 && raw.trim().is_empty() {
        return Err(LlmError::EmptyStream {
            provider: provider.to_string(),
        });
    }
    Ok(events)
}

/// Waits for the response headers within the first-token limit (a server
/// that reads the prompt before answering holds them back).
pub(crate) async fn send_within(
    provider: &str,
    limits: &StreamLimits,
    stream: bool,
    send: impl std::future::Future<Output = Result<reqwest::Response, LlmError>>,
) -> Result<reqwest::Response, LlmError> {
    match (stream, limits.first_token) {
        (true, Some(limit)) => {
            tokio::time::timeout(limit, send)
                .await
                .map_err(|_| LlmError::Timeout {
                    provider: provider.to_string(),
                    kind: TimeoutKind::FirstToken,
                    timeout_ms: limit.as_millis() as u64,
                    attempts: 1,
                })?
        }
        _ => send.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(policy.delay(1, None), Duration::from_millis(100));
        assert_eq!(policy.delay(3, None), Duration::from_millis(400));
        assert_eq!(policy.delay(9, None), Duration::from_secs(1));
        assert_eq!(
            policy.delay(1, Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn excerpts_never_carry_the_key() {
        let text = excerpt("invalid key sk-secret-123 given", Some("sk-secret-123"));
        assert_eq!(text, "invalid key [redacted] given");
    }
}
