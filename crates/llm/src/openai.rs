//! OpenAI-compatible chat completions: `POST {base}/chat/completions` with an
//! optional bearer key. One client serves OpenAI, OpenRouter, vLLM, Ollama and
//! LM Studio; only the base URL differs.

use async_trait::async_trait;
use serde_json::{Value, json};

use std::time::Instant;

use crate::{
    ChatRequest, ChatResponse, LlmError, ModelInfo, Provider, ResponseFormat, StreamLimits,
    Transcript, Usage, read_json_body, read_sse, send_checked, send_within, stream_error,
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

    /// Name, base URL and key, for the media calls beside chat.
    pub(crate) fn parts(&self) -> (&str, &str, Option<&str>) {
        (&self.name, &self.base_url, self.api_key.as_deref())
    }

    /// A POST to this endpoint, with the key.
    pub(crate) fn post(&self, url: &str) -> reqwest::RequestBuilder {
        let call = self.http.post(url);
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
    }

    /// A GET without the key (an image URL a server answered with may be
    /// on another host).
    pub(crate) fn get_plain(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url)
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
        if let Some(top_p) = request.top_p {
            body["top_p"] = json!(top_p);
        }
        if let Some(seed) = request.seed {
            body["seed"] = json!(seed);
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        match &request.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => {
                body["response_format"] = json!({"type": "json_object"});
            }
            ResponseFormat::JsonObjectWithSchema { schema } => {
                body["response_format"] = json!({"type": "json_object", "schema": schema});
            }
            ResponseFormat::JsonSchema { name, schema } => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema},
                });
            }
        }
        if request.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// An `{"error": {…}}` object in a 200 body or a stream chunk.
    fn error_from(&self, error: &Value) -> LlmError {
        let field = |key: &str| error.get(key).and_then(Value::as_str);
        stream_error(
            &self.name,
            field("type").or(field("code")).unwrap_or("error"),
            field("message").unwrap_or_default(),
        )
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

    async fn send(
        &self,
        request: &ChatRequest,
        limits: &StreamLimits,
        transcript: &mut Transcript,
    ) -> Result<ChatResponse, LlmError> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = OpenAiCompatible::body(request);
        transcript.request = body.clone();
        let mut call = self.http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let transport = |message: String| transport_error(&self.name, &url, message);
        let sent_at = Instant::now();
        let response = send_within(
            &self.name,
            limits,
            request.stream,
            send_checked(&self.name, &url, call, self.api_key.as_deref()),
        )
        .await?;

        let mut usage = Usage::default();
        let mut finish_reason = None;
        let mut model = request.model.clone();
        if request.stream {
            let mut done = false;
            let progress = transcript.progress.clone();
            let text = &mut transcript.text;
            read_sse(
                &self.name,
                response,
                limits,
                sent_at,
                &mut transcript.raw_response,
                |event| {
                    if event.data.trim() == "[DONE]" {
                        done = true;
                        return Ok(());
                    }
                    let data: Value = serde_json::from_str(&event.data)
                        .map_err(|e| self.malformed(format!("chunk is not JSON: {e}")))?;
                    if let Some(error) = data.get("error") {
                        return Err(self.error_from(error));
                    }
                    if let Some(m) = data.get("model").and_then(Value::as_str) {
                        model = m.to_string();
                    }
                    if let Some(choice) = data.get("choices").and_then(|c| c.get(0)) {
                        if let Some(delta) = choice["delta"].get("content").and_then(Value::as_str)
                        {
                            text.push_str(delta);
                            if let Some(progress) = &progress {
                                progress(text);
                            }
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
            let data =
                read_json_body(&self.name, &url, response, &mut transcript.raw_response).await?;
            if let Some(error) = data.get("error") {
                return Err(self.error_from(error));
            }
            let choice = data
                .get("choices")
                .and_then(|c| c.get(0))
                .ok_or_else(|| self.malformed("no `choices[0]` in the completion"))?;
            transcript.text = choice["message"]
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
            text: transcript.text.clone(),
            stop_reason: finish_reason,
            usage,
            model,
            latency_ms: 0,
            queued_ms: 0,
            attempts: 1,
            response_format: request.response_format.clone(),
            notes: Vec::new(),
            raw_request: body,
            raw_response: transcript.raw_response.clone(),
        })
    }

    /// `GET {base}/models`; context windows from the fields servers use for
    /// them (vLLM `max_model_len`, OpenRouter and LM Studio `context_length`,
    /// llama.cpp `meta.n_ctx`), else llama.cpp's `/props` (`n_ctx`).
    async fn models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        let url = format!("{}/models", self.base_url);
        let mut call = self.http.get(&url);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = send_checked(&self.name, &url, call, self.api_key.as_deref()).await?;
        let mut raw = String::new();
        let data = read_json_body(&self.name, &url, response, &mut raw).await?;
        let mut models: Vec<ModelInfo> = data
            .get("data")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| {
                        let id = m.get("id").and_then(Value::as_str)?.to_string();
                        let window = ["max_model_len", "context_length", "loaded_context_length"]
                            .iter()
                            .find_map(|k| m.get(*k).and_then(Value::as_u64))
                            .or_else(|| m.pointer("/meta/n_ctx").and_then(Value::as_u64));
                        Some(ModelInfo {
                            id,
                            context_window: window,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if models.iter().all(|m| m.context_window.is_none())
            && let Some(n_ctx) = self.llama_cpp_n_ctx().await
        {
            for model in &mut models {
                model.context_window = Some(n_ctx);
            }
        }
        Ok(models)
    }
}

impl OpenAiCompatible {
    /// llama.cpp's server reports its runtime window at `/props` beside `/v1`.
    async fn llama_cpp_n_ctx(&self) -> Option<u64> {
        let root = self.base_url.strip_suffix("/v1")?;
        let response = self.http.get(format!("{root}/props")).send().await.ok()?;
        let data: Value = response.error_for_status().ok()?.json().await.ok()?;
        data.pointer("/default_generation_settings/n_ctx")
            .or_else(|| data.get("n_ctx"))
            .and_then(Value::as_u64)
    }
}
