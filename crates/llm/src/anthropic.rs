//! The Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key` and
//! `anthropic-version`; cacheable parts carry `cache_control: ephemeral`.

use async_trait::async_trait;
use serde_json::{Value, json};

use std::time::Instant;

use crate::{
    ChatRequest, ChatResponse, LlmError, ModelInfo, Provider, ResponseFormat, StreamLimits,
    Transcript, Usage, read_json_body, read_sse, send_checked, send_within, stream_error,
    transport_error,
};

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const API_VERSION: &str = "2023-06-01";

/// The tool a JSON reply is forced through: Anthropic's way to structured
/// output is a tool call whose input is the JSON.
pub const OUTPUT_TOOL: &str = "emit_output";

pub struct Anthropic {
    name: String,
    base_url: String,
    api_key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

impl Anthropic {
    pub fn new(base_url: Option<&str>, api_key: impl Into<String>) -> Anthropic {
        Anthropic {
            name: "anthropic".to_string(),
            base_url: base_url
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
            api_key: api_key.into(),
            http: reqwest::Client::new(),
        }
    }

    fn body(request: &ChatRequest) -> Value {
        let blocks = |parts: &[crate::Part]| -> Vec<Value> {
            parts
                .iter()
                .map(|part| {
                    let mut block = json!({"type": "text", "text": part.text});
                    if part.cacheable {
                        block["cache_control"] = json!({"type": "ephemeral"});
                    }
                    block
                })
                .collect()
        };
        let mut body = json!({
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": blocks(&request.user)}],
        });
        if !request.system.is_empty() {
            body["system"] = Value::Array(blocks(&request.system));
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(top_p) = request.top_p {
            body["top_p"] = json!(top_p);
        }
        if !request.stop.is_empty() {
            body["stop_sequences"] = json!(request.stop);
        }
        let schema = match &request.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. }
            | ResponseFormat::JsonObjectWithSchema { schema } => Some(schema.clone()),
        };
        if let Some(schema) = schema {
            body["tools"] = json!([{
                "name": OUTPUT_TOOL,
                "description": "Return the result: its input is the whole reply, as JSON.",
                "input_schema": schema,
            }]);
            body["tool_choice"] = json!({"type": "tool", "name": OUTPUT_TOOL});
        }
        if request.stream {
            body["stream"] = json!(true);
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
    let get = |key: &str| value.get(key).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        usage.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        usage.output_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        usage.cache_read_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        usage.cache_write_tokens = n;
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(
        &self,
        request: &ChatRequest,
        limits: &StreamLimits,
        transcript: &mut Transcript,
    ) -> Result<ChatResponse, LlmError> {
        let url = format!("{}/v1/messages", self.base_url);
        let body = Anthropic::body(request);
        transcript.request = body.clone();
        let call = self
            .http
            .post(&url)
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let sent_at = Instant::now();
        let response = send_within(
            &self.name,
            limits,
            request.stream,
            send_checked(&self.name, &url, call, Some(&self.api_key)),
        )
        .await?;

        let mut usage = Usage::default();
        let mut stop_reason = None;
        let mut model = request.model.clone();
        if request.stream {
            let mut stopped = false;
            let progress = transcript.progress.clone();
            let text = &mut transcript.text;
            read_sse(
                &self.name,
                response,
                limits,
                sent_at,
                &mut transcript.raw_response,
                |event| {
                    let data: Value = serde_json::from_str(&event.data).map_err(|e| {
                        self.malformed(format!(
                            "event `{}` is not JSON: {e}",
                            event.event.as_deref().unwrap_or("?")
                        ))
                    })?;
                    match data.get("type").and_then(Value::as_str).unwrap_or_default() {
                        "message_start" => {
                            if let Some(message) = data.get("message") {
                                if let Some(m) = message.get("model").and_then(Value::as_str) {
                                    model = m.to_string();
                                }
                                if let Some(u) = message.get("usage") {
                                    usage_from(u, &mut usage);
                                }
                            }
                        }
                        "content_block_delta" => {
                            let delta = &data["delta"];
                            // Text, or the forced tool's input arriving as JSON pieces.
                            if let Some(piece) = delta
                                .get("text")
                                .or_else(|| delta.get("partial_json"))
                                .and_then(Value::as_str)
                            {
                                text.push_str(piece);
                                if let Some(progress) = &progress {
                                    progress(text);
                                }
                            }
                        }
                        "message_delta" => {
                            if let Some(reason) =
                                data["delta"].get("stop_reason").and_then(Value::as_str)
                            {
                                stop_reason = Some(reason.to_string());
                            }
                            if let Some(u) = data.get("usage") {
                                usage_from(u, &mut usage);
                            }
                        }
                        "message_stop" => stopped = true,
                        "error" => {
                            return Err(stream_error(
                                &self.name,
                                data["error"]["type"].as_str().unwrap_or("error"),
                                data["error"]["message"].as_str().unwrap_or_default(),
                            ));
                        }
                        _ => {}
                    }
                    Ok(())
                },
                |message| transport_error(&self.name, &url, message),
            )
            .await?;
            if !stopped {
                return Err(LlmError::Incomplete {
                    provider: self.name.clone(),
                });
            }
        } else {
            let data =
                read_json_body(&self.name, &url, response, &mut transcript.raw_response).await?;
            let content = data
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| self.malformed("no `content` array in the message"))?;
            for block in content {
                if block.get("type").and_then(Value::as_str) == Some("tool_use")
                    && let Some(input) = block.get("input")
                {
                    transcript.text.push_str(&input.to_string());
                } else if block.get("type").and_then(Value::as_str) == Some("text") {
                    transcript.text.push_str(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
            }
            stop_reason = data
                .get("stop_reason")
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
            truncated: stop_reason.as_deref() == Some("max_tokens"),
            text: transcript.text.clone(),
            stop_reason,
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

    /// `GET {base}/v1/models` (the list says nothing of context windows).
    async fn models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        let url = format!("{}/v1/models", self.base_url);
        let call = self
            .http
            .get(&url)
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION);
        let response = send_checked(&self.name, &url, call, Some(&self.api_key)).await?;
        let mut raw = String::new();
        let data = read_json_body(&self.name, &url, response, &mut raw).await?;
        Ok(data
            .get("data")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str))
                    .map(|id| ModelInfo {
                        id: id.to_string(),
                        context_window: None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
