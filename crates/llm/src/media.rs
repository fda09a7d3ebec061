//! Image and speech generation: OpenAI-compatible `POST {base}/images/generations`
//! and `POST {base}/audio/speech` (OpenAI, LocalAI, sd-server, Kokoro-FastAPI…),
//! and Gemini's `models/{model}:generateContent` with image output.
//!
//! [`MediaClient`] gives a [`MediaProvider`] what [`crate::Client`] gives a
//! chat provider: a concurrency limit, retries with backoff on 429/5xx and
//! broken connections (honouring `retry-after`), one deadline for the call,
//! retries included, and a record of every request and response — with the
//! image and audio bytes left out of the record (they are the artifact).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::{
    CallFailure, LlmError, RetryPolicy, TimeoutKind, Transcript, Usage, excerpt, send_checked,
    transport_error,
};

/// The most a reply body may carry: a 64 MiB artifact, base64-encoded in JSON.
pub const MAX_BODY_BYTES: usize = 96 * 1024 * 1024;

/// One picture from a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub model: String,
    pub prompt: String,
    /// `WIDTHxHEIGHT` or `auto` (OpenAI-compatible).
    pub size: Option<String>,
    /// OpenAI-compatible `quality`.
    pub quality: Option<String>,
    /// Gemini's `imageConfig.aspectRatio`.
    pub aspect_ratio: Option<String>,
    /// `png`, `jpeg` or `webp`: what the block declared.
    pub format: String,
}

/// Speech for one piece of text.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    pub voice: String,
    pub speed: Option<f64>,
    pub instructions: Option<String>,
    /// `mp3`, `wav` or `opus` (Ogg Opus).
    pub format: String,
}

/// What a media call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaReply {
    pub bytes: Vec<u8>,
    /// The media type the provider said it sent, when it did.
    pub media_type: Option<String>,
    pub model: String,
    /// Tokens, where the provider reports them (gpt-image-1, Gemini).
    pub usage: Usage,
    /// The prompt as the provider rewrote it (`dall-e-3`), or Gemini's
    /// text beside the image.
    pub revised_prompt: Option<String>,
    pub raw_request: Value,
    /// The response with its base64 and audio bytes replaced by their size.
    pub raw_response: String,
    pub latency_ms: u64,
    pub attempts: u32,
    pub queued_ms: u64,
    pub notes: Vec<String>,
}

/// What to make.
#[derive(Debug, Clone, Copy)]
pub enum MediaCall<'a> {
    Image(&'a ImageRequest),
    Speech(&'a SpeechRequest),
}

/// One wire protocol for media, one HTTP call, no retries.
#[async_trait]
pub trait MediaProvider: Send + Sync {
    fn name(&self) -> &str;
    async fn send_media(
        &self,
        call: MediaCall<'_>,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError>;
}

/// A media provider with a concurrency limit, retries and a deadline.
#[derive(Clone)]
pub struct MediaClient {
    provider: Arc<dyn MediaProvider>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    retry: RetryPolicy,
}

impl MediaClient {
    pub fn new(
        provider: Arc<dyn MediaProvider>,
        max_concurrent: usize,
        retry: RetryPolicy,
    ) -> MediaClient {
        MediaClient {
            provider,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            retry,
        }
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    pub fn concurrency(&self) -> usize {
        self.max_concurrent
    }

    /// Makes `call` within `total` (from sending, retries included; waiting
    /// for a slot is not counted).
    pub async fn make(
        &self,
        call: MediaCall<'_>,
        total: Duration,
    ) -> Result<MediaReply, CallFailure> {
        let queued = Instant::now();
        let _permit = self.permits.acquire().await.ok();
        let queued_ms = queued.elapsed().as_millis() as u64;
        let started = Instant::now();
        let deadline = started + total;
        let mut attempts = 0;
        let mut notes = Vec::new();
        loop {
            attempts += 1;
            let mut transcript = Transcript::default();
            let result = tokio::time::timeout_at(
                deadline.into(),
                self.provider.send_media(call, &mut transcript),
            )
            .await;
            let error = match result {
                Ok(Ok(mut reply)) => {
                    reply.latency_ms = started.elapsed().as_millis() as u64;
                    reply.attempts = attempts;
                    reply.queued_ms = queued_ms;
                    notes.append(&mut reply.notes);
                    reply.notes = notes;
                    return Ok(reply);
                }
                Ok(Err(error)) => error,
                Err(_) => LlmError::Timeout {
                    provider: self.provider.name().to_string(),
                    kind: TimeoutKind::Total,
                    timeout_ms: total.as_millis() as u64,
                    attempts,
                },
            };
            let fail = |error: LlmError, notes: Vec<String>| CallFailure {
                error,
                raw_request: transcript.request.clone(),
                raw_response: transcript.raw_response.clone(),
                partial_text: String::new(),
                usage: Usage::default(),
                attempts,
                latency_ms: started.elapsed().as_millis() as u64,
                queued_ms,
                notes,
            };
            if !error.is_retryable() || attempts >= self.retry.max_attempts {
                return Err(fail(error, notes));
            }
            let delay = self.retry.delay(attempts, error.retry_after());
            if Instant::now() + delay >= deadline {
                return Err(fail(error, notes));
            }
            notes.push(format!("call {attempts} failed ({error}); tried again"));
            tracing::warn!(provider = self.provider.name(), attempts, ?delay, %error, "retrying media call");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`].
pub(crate) async fn read_capped(
    provider: &str,
    url: &str,
    response: reqwest::Response,
) -> Result<Vec<u8>, LlmError> {
    use futures_util::StreamExt;
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large(provider));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| transport_error(provider, url, e.without_url().to_string()))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large(provider));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON reply of at most [`MAX_BODY_BYTES`]; `raw` keeps an excerpt of
/// a body that is not JSON (the caller records the parsed one, elided).
pub(crate) async fn read_json_capped(
    provider: &str,
    url: &str,
    response: reqwest::Response,
    raw: &mut String,
) -> Result<Value, LlmError> {
    let body = read_capped(provider, url, response).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(LlmError::EmptyBody {
            provider: provider.to_string(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        *raw = excerpt(
            &String::from_utf8_lossy(&body[..body.len().min(4096)]),
            None,
        );
        LlmError::Malformed {
            provider: provider.to_string(),
            message: format!("body is not JSON: {e}: {raw}"),
        }
    })
}

fn too_large(provider: &str) -> LlmError {
    LlmError::Malformed {
        provider: provider.to_string(),
        message: format!("the reply is larger than {MAX_BODY_BYTES} bytes"),
    }
}

/// Decodes one base64 image, naming where it was.
pub(crate) fn decode(provider: &str, field: &str, data: &str) -> Result<Vec<u8>, LlmError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| LlmError::Malformed {
            provider: provider.to_string(),
            message: format!("`{field}` is not base64: {e}"),
        })
}

/// `value` with every long base64 string replaced by its length, and every
/// `url` without its query (a signed URL's signature is a secret), for the
/// record.
pub(crate) fn elide_base64(value: &Value) -> Value {
    match value {
        Value::Object(map) if map.get("url").is_some_and(Value::is_string) => {
            let mut map = map.clone();
            if let Some(Value::String(url)) = map.get_mut("url")
                && let Some((base, _)) = url.split_once('?')
            {
                *url = format!("{base}?[query left out]");
            }
            elide_object(&map)
        }
        Value::Object(map) => elide_object(map),
        Value::String(s) if s.len() > 256 && !s.contains(' ') => Value::String(format!(
            "[{} characters of base64 left out: the artifact]",
            s.len()
        )),
        Value::Array(items) => Value::Array(items.iter().map(elide_base64).collect()),
        other => other.clone(),
    }
}

fn elide_object(map: &serde_json::Map<String, Value>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), elide_base64(v)))
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// OpenAI-compatible

impl crate::OpenAiCompatible {
    async fn image(
        &self,
        request: &ImageRequest,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError> {
        let (name, base, key) = self.parts();
        let url = format!("{base}/images/generations");
        let mut body = json!({"model": request.model, "prompt": request.prompt, "n": 1});
        if let Some(size) = &request.size {
            body["size"] = json!(size);
        }
        if let Some(quality) = &request.quality {
            body["quality"] = json!(quality);
        }
        let model = request.model.to_ascii_lowercase();
        if model.starts_with("gpt-image") {
            // gpt-image models always answer in base64 and refuse
            // `response_format`; they make PNG unless told otherwise.
            if request.format != "png" {
                body["output_format"] = json!(request.format);
            }
        } else {
            // DALL·E and most local servers answer with a URL unless asked.
            body["response_format"] = json!("b64_json");
        }
        transcript.request = body.clone();
        let response = send_checked(name, &url, self.post(&url).json(&body), key).await?;
        let data = read_json_capped(name, &url, response, &mut transcript.raw_response).await?;
        transcript.raw_response = elide_base64(&data).to_string();
        if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
            return Err(crate::stream_error(
                name,
                error.get("code").and_then(Value::as_str).unwrap_or("error"),
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ));
        }
        let first = data
            .get("data")
            .and_then(|d| d.get(0))
            .ok_or_else(|| malformed(name, "no `data[0]` in the images response"))?;
        let bytes = match (
            first.get("b64_json").and_then(Value::as_str),
            first.get("url").and_then(Value::as_str),
        ) {
            (Some(b64), _) => decode(name, "data[0].b64_json", b64)?,
            (None, Some(image_url)) => {
                // Named without its query: a signed URL's signature is a secret.
                let label = image_url.split('?').next().unwrap_or_default();
                let response = send_checked(name, label, self.get_plain(image_url), None).await?;
                read_capped(name, label, response).await?
            }
            (None, None) => {
                return Err(malformed(
                    name,
                    "`data[0]` has neither `b64_json` nor `url`",
                ));
            }
        };
        let mut usage = Usage::default();
        if let Some(u) = data.get("usage") {
            usage.input_tokens = u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0);
            usage.output_tokens = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
        }
        Ok(MediaReply {
            bytes,
            media_type: None,
            model: request.model.clone(),
            usage,
            revised_prompt: first
                .get("revised_prompt")
                .and_then(Value::as_str)
                .map(str::to_string),
            raw_request: body,
            raw_response: transcript.raw_response.clone(),
            latency_ms: 0,
            attempts: 1,
            queued_ms: 0,
            notes: Vec::new(),
        })
    }

    async fn speech(
        &self,
        request: &SpeechRequest,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError> {
        let (name, base, key) = self.parts();
        let url = format!("{base}/audio/speech");
        let mut body = json!({
            "model": request.model,
            "input": request.input,
            "voice": request.voice,
            "response_format": request.format,
        });
        if let Some(speed) = request.speed {
            body["speed"] = json!(speed);
        }
        if let Some(instructions) = &request.instructions {
            body["instructions"] = json!(instructions);
        }
        transcript.request = body.clone();
        let response = send_checked(name, &url, self.post(&url).json(&body), key).await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_capped(name, &url, response).await?;
        if bytes.is_empty() {
            return Err(LlmError::EmptyBody {
                provider: name.to_string(),
            });
        }
        if media_type.as_deref().is_some_and(|t| t.contains("json")) {
            // An error object with a 200: say what it said.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            transcript.raw_response = text.clone();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let error = value.get("error").unwrap_or(&value);
            return Err(crate::stream_error(
                name,
                error.get("code").and_then(Value::as_str).unwrap_or("error"),
                &error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| excerpt(&text, key), str::to_string),
            ));
        }
        transcript.raw_response = format!(
            "[{} bytes of {} left out: the artifact]",
            bytes.len(),
            media_type.as_deref().unwrap_or("audio")
        );
        Ok(MediaReply {
            bytes,
            media_type,
            model: request.model.clone(),
            usage: Usage::default(),
            revised_prompt: None,
            raw_request: body,
            raw_response: transcript.raw_response.clone(),
            latency_ms: 0,
            attempts: 1,
            queued_ms: 0,
            notes: Vec::new(),
        })
    }
}

#[async_trait]
impl MediaProvider for crate::OpenAiCompatible {
    fn name(&self) -> &str {
        self.parts().0
    }

    async fn send_media(
        &self,
        call: MediaCall<'_>,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError> {
        match call {
            MediaCall::Image(request) => self.image(request, transcript).await,
            MediaCall::Speech(request) => self.speech(request, transcript).await,
        }
    }
}

fn malformed(provider: &str, message: &str) -> LlmError {
    LlmError::Malformed {
        provider: provider.to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Gemini

/// Gemini's API root, up to and including the version.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// Gemini's native API, for image generation (`gemini-2.5-flash-image`):
/// `POST {base}/models/{model}:generateContent`, key in `x-goog-api-key`.
/// Chat goes to its OpenAI-compatible endpoint (`{base}/openai`) instead.
pub struct Gemini {
    name: String,
    base_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Gemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemini")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Gemini {
    pub fn new(name: impl Into<String>, base_url: Option<&str>, api_key: Option<String>) -> Gemini {
        Gemini {
            name: name.into(),
            base_url: base_url
                .unwrap_or(GEMINI_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            // The key is a custom header, which reqwest would carry across
            // a redirect to another host: redirects are not followed.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// Where its OpenAI-compatible chat endpoint is.
    pub fn openai_base_url(&self) -> String {
        format!("{}/openai", self.base_url)
    }

    async fn image(
        &self,
        request: &ImageRequest,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError> {
        let name = self.name.as_str();
        let model = request.model.trim_start_matches("models/");
        let url = format!("{}/models/{model}:generateContent", self.base_url);
        let mut generation = json!({"responseModalities": ["TEXT", "IMAGE"]});
        if let Some(ratio) = &request.aspect_ratio {
            generation["imageConfig"] = json!({"aspectRatio": ratio});
        }
        let body = json!({
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": generation,
        });
        transcript.request = body.clone();
        let mut call = self.http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.header("x-goog-api-key", key);
        }
        let response = send_checked(name, &url, call, self.api_key.as_deref()).await?;
        let data = read_json_capped(name, &url, response, &mut transcript.raw_response).await?;
        transcript.raw_response = elide_base64(&data).to_string();
        if let Some(error) = data.get("error") {
            return Err(crate::stream_error(
                name,
                error
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("error"),
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ));
        }
        if let Some(reason) = data
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(LlmError::Refused {
                provider: name.to_string(),
                message: format!("the prompt was blocked ({reason})"),
            });
        }
        let candidate = data
            .pointer("/candidates/0")
            .ok_or_else(|| malformed(name, "no `candidates[0]` in the response"))?;
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut text = String::new();
        let mut image = None;
        for part in &parts {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                text.push_str(t);
            }
            let inline = part.get("inlineData").or_else(|| part.get("inline_data"));
            if let (None, Some(inline)) = (&image, inline) {
                let mime = inline
                    .get("mimeType")
                    .or_else(|| inline.get("mime_type"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if mime.starts_with("image/") {
                    let data = inline
                        .get("data")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    image = Some((decode(name, "inlineData.data", data)?, mime));
                }
            }
        }
        let finish = candidate
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some((bytes, mime)) = image else {
            if matches!(
                finish,
                "SAFETY" | "IMAGE_SAFETY" | "PROHIBITED_CONTENT" | "BLOCKLIST" | "RECITATION"
            ) {
                return Err(LlmError::Refused {
                    provider: name.to_string(),
                    message: format!("no image: finishReason {finish}"),
                });
            }
            return Err(malformed(
                name,
                &format!(
                    "the reply has no image (finishReason {}){}",
                    if finish.is_empty() { "none" } else { finish },
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!("; it said: {}", excerpt(&text, None))
                    }
                ),
            ));
        };
        let mut usage = Usage::default();
        if let Some(u) = data.get("usageMetadata") {
            usage.input_tokens = u
                .get("promptTokenCount")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            usage.output_tokens = u
                .get("candidatesTokenCount")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        Ok(MediaReply {
            bytes,
            media_type: Some(mime),
            model: data
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(model)
                .to_string(),
            usage,
            revised_prompt: Some(text).filter(|t| !t.trim().is_empty()),
            raw_request: body,
            raw_response: transcript.raw_response.clone(),
            latency_ms: 0,
            attempts: 1,
            queued_ms: 0,
            notes: Vec::new(),
        })
    }
}

#[async_trait]
impl MediaProvider for Gemini {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send_media(
        &self,
        call: MediaCall<'_>,
        transcript: &mut Transcript,
    ) -> Result<MediaReply, LlmError> {
        match call {
            MediaCall::Image(request) => self.image(request, transcript).await,
            MediaCall::Speech(_) => Err(LlmError::Unsupported {
                provider: self.name.clone(),
                what: "speech through Gemini's API is not supported yet; use an OpenAI-compatible /audio/speech endpoint (openai, local, or a [providers.x] kind = \"openai\")".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_leaves_base64_out_but_keeps_the_rest() {
        let value = json!({"data": [{"b64_json": "A".repeat(1000), "revised_prompt": "a cat"}], "usage": {"input_tokens": 5}});
        let elided = elide_base64(&value);
        assert_eq!(elided["data"][0]["revised_prompt"], "a cat");
        assert_eq!(elided["usage"]["input_tokens"], 5);
        assert!(
            elided["data"][0]["b64_json"]
                .as_str()
                .unwrap()
                .starts_with("[1000 characters")
        );
        let signed = json!({"data": [{"url": "https://cdn.example/img.png?sig=SECRET&exp=1"}]});
        let elided = elide_base64(&signed);
        assert_eq!(
            elided["data"][0]["url"],
            "https://cdn.example/img.png?[query left out]"
        );
    }

    #[test]
    fn bad_base64_names_its_field() {
        let error = decode("openai", "data[0].b64_json", "not base64!").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`data[0].b64_json` is not base64"),
            "{error}"
        );
    }
}
