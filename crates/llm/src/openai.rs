//! OpenAI-compatible chat completions: `POST {base}/chat/completions` with an
//! optional bearer key. One client serves OpenAI, OpenRouter, vLLM, Ollama and
//! LM Studio; only the base URL differs.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{
    ChatRequest, ChatResponse, LlmError, Provider, Usage, read_json_body, read_sse, send_checked,
    transport_error,
};

pub struct OpenAiCompatible {
    name: String,
    base_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl OpenAiCompatible {
    /// `base_url` up to and including the version, e.g.
    /// `https://openrouter.ai/api/v1` or `http://127.0.0.1:11434/v1`.
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        api_key: Option<String>,
    ) -> OpenAiCompatible {
        OpenAiCompatible {
            name: name.into(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    fn body(request: &ChatRequest) -> Value {
        let join = |parts: &[crate::Part]| {
            parts
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        };
        let mut messages = Vec::new();
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": join(&request.system)}));
        }
        messages.push(json!({"role": "user", "content": join(&request.user)}));
        let mut body = json!({
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        });
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if request.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    fn malformed(&self, message: impl Into<String>) -> LlmError {
        LlmError::Malformed {
            provider: self.name.clone(),
            message: message.into(),
        }
    }
}

fn usage_from(value: &Value, usage: &mut Usage) {
    if let Some(n) = value.get("prompt_tokens").and_then(Value::as_u64) {
        usage.input_tokens = n;
    }
    if let Some(n) = value.get("completion_tokens").and_then(Value::as_u64) {
        usage.output_tokens = n;
    }
    if let Some(n) = value
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
    {
        usage.cache_read_tokens = n;
    }
}

#[async_trait]
impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = OpenAiCompatible::body(request);
        let mut call = self.http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let transport = |message: String| transport_error(&self.name, &url, message);
        let response = send_checked(&self.name, &url, call, self.api_key.as_deref()).await?;

        let mut text = String::new();
        let mut usage = Usage::default();
        let mut finish_reason = None;
        let mut model = request.model.clone();
        let raw_response;
        if request.stream {
            let mut done = false;
            raw_response = read_sse(
                response,
                |event| {
                    if event.data.trim() == "[DONE]" {
                        done = true;
                        return Ok(());
                    }
                    let data: Value = serde_json::from_str(&event.data)
                        .map_err(|e| self.malformed(format!("chunk is not JSON: {e}")))?;
                    if let Some(error) = data.get("error") {
                        return Err(LlmError::Provider {
                            provider: self.name.clone(),
                            kind: error
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("error")
                                .to_string(),
                            message: error
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        });
                    }
                    if let Some(m) = data.get("model").and_then(Value::as_str) {
                        model = m.to_string();
                    }
                    if let Some(choice) = data.get("choices").and_then(|c| c.get(0)) {
                        if let Some(delta) = choice["delta"].get("content").and_then(Value::as_str)
                        {
                            text.push_str(delta);
                        }
                        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                            finish_reason = Some(reason.to_string());
                        }
                    }
                    if let Some(u) = data.get("usage").filter(|u| u.is_object()) {
                        usage_from(u, &mut usage);
                    }
                    Ok(())
                },
                transport,
            )
            .await?;
            if !done {
                return Err(LlmError::Incomplete {
                    provider: self.name.clone(),
                });
            }
        } else {
            let data;
            (raw_response, data) = read_json_body(&self.name, &url, response).await?;
            let choice = data
                .get("choices")
                .and_then(|c| c.get(0))
                .ok_or_else(|| self.malformed("no `choices[0]` in the completion"))?;
            text = choice["message"]
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| self.malformed("no `choices[0].message.content` in the completion"))?
                .to_string();
            finish_reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(m) = data.get("model").and_then(Value::as_str) {
                model = m.to_string();
            }
            if let Some(u) = data.get("usage") {
                usage_from(u, &mut usage);
            }
        }
        Ok(ChatResponse {
            truncated: finish_reason.as_deref() == Some("length"),
            text,
            stop_reason: finish_reason,
            usage,
            model,
            latency_ms: 0,
            attempts: 1,
            raw_request: body,
            raw_response,
        })
    }
}
