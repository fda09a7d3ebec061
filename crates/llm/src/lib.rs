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
mod openai;
pub mod sse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use anthropic::Anthropic;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model id (aliases are resolved before this point).
    pub model: String,
    pub system: Vec<Part>,
    pub user: Vec<Part>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Stream the reply (server-sent events) instead of one JSON body.
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
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
    pub latency_ms: u64,
    /// Calls made, including retries.
    pub attempts: u32,
    /// The request body as sent (no headers, so no key).
    pub raw_request: serde_json::Value,
    /// The response body as received (the SSE text when streaming).
    pub raw_response: String,
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
    #[error("{provider} did not answer within {timeout_ms} ms (after {attempts} attempt(s))")]
    Timeout {
        provider: String,
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
            LlmError::Transport { .. } | LlmError::Incomplete { .. } => true,
            LlmError::Timeout { .. } | LlmError::Malformed { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One wire protocol against one endpoint.
#[async_trait]
pub trait Provider: Send + Sync {
    /// A short name for messages, e.g. `anthropic` or `openrouter`.
    fn name(&self) -> &str;

    /// One HTTP call, no retries.
    async fn send(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;
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

/// A provider with a concurrency limit, retries and a deadline.
#[derive(Clone)]
pub struct Client {
    provider: Arc<dyn Provider>,
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(provider: Arc<dyn Provider>, max_concurrent: usize, retry: RetryPolicy) -> Client {
        Client {
            provider,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            retry,
        }
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// Sends `request`, retrying what is worth retrying, all within `timeout`
    /// (waiting for a concurrency slot included). Dropping the future cancels
    /// the call.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let timed_out = |attempts| LlmError::Timeout {
            provider: self.provider.name().to_string(),
            timeout_ms: timeout.as_millis() as u64,
            attempts,
        };
        let _permit = match tokio::time::timeout_at(deadline.into(), self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(timed_out(0)),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result =
                tokio::time::timeout_at(deadline.into(), self.provider.send(request)).await;
            let error = match result {
                Err(_) => return Err(timed_out(attempt)),
                Ok(Ok(mut response)) => {
                    response.attempts = attempt;
                    response.latency_ms = started.elapsed().as_millis() as u64;
                    return Ok(response);
                }
                Ok(Err(error)) => error,
            };
            if !error.is_retryable() || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, error.retry_after());
            if Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::warn!(provider = self.provider.name(), attempt, ?delay, %error, "retrying LLM call");
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

/// Sends a request; a transport failure names the URL (never headers), and a
/// non-2xx answer becomes [`LlmError::Http`] with `retry-after` and an
/// excerpt scrubbed of `key`. Both providers go through here.
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
    Err(LlmError::Http {
        provider: provider.to_string(),
        status: status.as_u16(),
        excerpt: excerpt(&text, key),
        retry_after,
    })
}

/// Reads a non-streamed body: the raw text (kept for the audit trail) and its JSON.
pub(crate) async fn read_json_body(
    provider: &str,
    url: &str,
    response: reqwest::Response,
) -> Result<(String, serde_json::Value), LlmError> {
    let raw = response
        .text()
        .await
        .map_err(|e| transport_error(provider, url, e.without_url().to_string()))?;
    let data = serde_json::from_str(&raw).map_err(|e| LlmError::Malformed {
        provider: provider.to_string(),
        message: format!("body is not JSON: {e}: {}", excerpt(&raw, None)),
    })?;
    Ok((raw, data))
}

pub(crate) fn transport_error(provider: &str, url: &str, message: String) -> LlmError {
    LlmError::Transport {
        provider: provider.to_string(),
        url: url.to_string(),
        message,
    }
}

/// Reads a streamed body to the end, feeding SSE events to `on_event`.
pub(crate) async fn read_sse(
    response: reqwest::Response,
    mut on_event: impl FnMut(&sse::SseEvent) -> Result<(), LlmError>,
    transport_error: impl Fn(String) -> LlmError,
) -> Result<String, LlmError> {
    use futures_util::StreamExt;
    let mut parser = sse::SseParser::default();
    let mut raw = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport_error(e.to_string()))?;
        raw.push_str(&String::from_utf8_lossy(&chunk));
        for event in parser.push(&chunk) {
            on_event(&event)?;
        }
    }
    if let Some(event) = parser.finish() {
        on_event(&event)?;
    }
    Ok(raw)
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
