//! The image and speech clients against local servers that speak OpenAI's
//! and Gemini's wire formats, at their worst: a 429, a 200 with an empty
//! body, a URL instead of base64, a JSON error under a 200, a safety block.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use factory_audit::media::{MediaKind, inspect, samples};
use factory_llm::{
    Gemini, ImageRequest, LlmError, MediaCall, MediaClient, OpenAiCompatible, SpeechRequest,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{KEY, fast_retries};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn image(model: &str, format: &str) -> ImageRequest {
    ImageRequest {
        model: model.into(),
        prompt: "A social card for a course on negotiation".into(),
        size: Some("1536x1024".into()),
        quality: Some("low".into()),
        aspect_ratio: None,
        format: format.into(),
    }
}

fn openai(server: &MockServer) -> MediaClient {
    MediaClient::new(
        Arc::new(OpenAiCompatible::new(
            "openai",
            &format!("{}/v1", server.uri()),
            Some(KEY.into()),
        )),
        2,
        fast_retries(),
    )
}

async fn sent(server: &MockServer, at: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == at)
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

#[tokio::test]
async fn gpt_image_answers_in_base64_after_a_429_and_an_empty_body() {
    let server = MockServer::start().await;
    let png = samples::png_rgb(64, 32, [200, 40, 40]);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1,
            "data": [{"b64_json": b64(&png)}],
            "usage": {"input_tokens": 31, "output_tokens": 272, "total_tokens": 303}
        })))
        .mount(&server)
        .await;
    let request = image("gpt-image-1", "png");
    let reply = openai(&server)
        .make(MediaCall::Image(&request), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.bytes, png);
    assert_eq!(
        inspect(MediaKind::Png, &reply.bytes).unwrap().width,
        Some(64)
    );
    assert_eq!(reply.attempts, 3, "a 429 and an empty body are tried again");
    assert_eq!(
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (31, 272)
    );
    assert!(
        !reply.raw_response.contains(&b64(&png)),
        "the record leaves the image out"
    );
    assert!(reply.raw_response.contains("characters of base64 left out"));
    let bodies = sent(&server, "/v1/images/generations").await;
    let body = bodies.last().unwrap();
    assert_eq!(body["model"], "gpt-image-1");
    assert_eq!(body["n"], 1);
    assert_eq!(body["size"], "1536x1024");
    assert_eq!(body["quality"], "low");
    assert!(
        body.get("response_format").is_none(),
        "gpt-image refuses it: {body}"
    );
    assert!(
        body.get("output_format").is_none(),
        "png is its default: {body}"
    );
    // Another format is asked for by name.
    let jpeg = image("gpt-image-1", "jpeg");
    let _ = openai(&server)
        .make(MediaCall::Image(&jpeg), Duration::from_secs(10))
        .await;
    let bodies = sent(&server, "/v1/images/generations").await;
    assert_eq!(bodies.last().unwrap()["output_format"], "jpeg");
}

#[tokio::test]
async fn a_server_that_answers_with_a_url_is_followed_for_the_bytes() {
    let server = MockServer::start().await;
    let png = samples::png_rgb(8, 8, [0, 0, 255]);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(body_partial_json(json!({"response_format": "b64_json"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{"url": format!("{}/generated/1.png", server.uri()), "revised_prompt": "a blue square"}]
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/generated/1.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png.clone()))
        .mount(&server)
        .await;
    let request = image("dall-e-3", "png");
    let reply = openai(&server)
        .make(MediaCall::Image(&request), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.bytes, png);
    assert_eq!(reply.revised_prompt.as_deref(), Some("a blue square"));
    // The key goes to the API, never to the image's host.
    let fetched = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/generated/1.png")
        .unwrap();
    assert!(fetched.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_refused_prompt_is_permanent_and_names_the_reason_without_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"message": format!("Your request was rejected by the safety system (key {KEY})"), "code": "moderation_blocked"}
        })))
        .mount(&server)
        .await;
    let request = image("gpt-image-1", "png");
    let failure = openai(&server)
        .make(MediaCall::Image(&request), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(failure.error.is_permanent(), "{}", failure.error);
    assert_eq!(failure.attempts, 1, "a 400 is not tried again");
    let text = failure.error.to_string();
    assert!(
        text.contains("safety system") && !text.contains(KEY),
        "{text}"
    );
}

#[tokio::test]
async fn gemini_draws_through_generate_content_and_a_safety_block_is_final() {
    let server = MockServer::start().await;
    let png = samples::png_rgb(16, 9, [10, 120, 10]);
    Mock::given(method("POST"))
        .and(path(
            "/v1beta/models/gemini-2.5-flash-image:generateContent",
        ))
        .and(header("x-goog-api-key", KEY))
        .and(body_partial_json(
            json!({"generationConfig": {"imageConfig": {"aspectRatio": "16:9"}}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Here is your card."},
                {"inlineData": {"mimeType": "image/png", "data": b64(&png)}}
            ]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290},
            "modelVersion": "gemini-2.5-flash-image"
        })))
        .mount(&server)
        .await;
    let client = MediaClient::new(
        Arc::new(Gemini::new(
            "gemini",
            Some(&format!("{}/v1beta", server.uri())),
            Some(KEY.into()),
        )),
        1,
        fast_retries(),
    );
    let mut request = image("gemini-2.5-flash-image", "png");
    (request.size, request.quality, request.aspect_ratio) = (None, None, Some("16:9".into()));
    let reply = client
        .make(MediaCall::Image(&request), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.bytes, png);
    assert_eq!(reply.media_type.as_deref(), Some("image/png"));
    assert_eq!(reply.usage.output_tokens, 1290);
    assert_eq!(reply.revised_prompt.as_deref(), Some("Here is your card."));
    let body = &sent(
        &server,
        "/v1beta/models/gemini-2.5-flash-image:generateContent",
    )
    .await[0];
    assert_eq!(body["contents"][0]["parts"][0]["text"], request.prompt);
    assert_eq!(
        body["generationConfig"]["responseModalities"],
        json!(["TEXT", "IMAGE"])
    );

    let blocked = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "promptFeedback": {"blockReason": "SAFETY"}
        })))
        .mount(&blocked)
        .await;
    let client = MediaClient::new(
        Arc::new(Gemini::new(
            "gemini",
            Some(&format!("{}/v1beta", blocked.uri())),
            Some(KEY.into()),
        )),
        1,
        fast_retries(),
    );
    let failure = client
        .make(MediaCall::Image(&request), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, LlmError::Refused { .. }),
        "{}",
        failure.error
    );
    assert!(failure.error.is_permanent());
    assert_eq!(failure.attempts, 1);
    // Speech is not something this client claims to do.
    let speech = SpeechRequest {
        model: "x".into(),
        input: "hi".into(),
        voice: "alloy".into(),
        speed: None,
        instructions: None,
        format: "mp3".into(),
    };
    let failure = client
        .make(MediaCall::Speech(&speech), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, LlmError::Unsupported { .. }),
        "{}",
        failure.error
    );
}

#[tokio::test]
async fn speech_comes_back_as_audio_bytes_and_a_json_error_under_200_is_an_error() {
    let server = MockServer::start().await;
    let wav = samples::wav(1500);
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(ResponseTemplate::new(200).insert_header("content-type", "audio/wav"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .and(body_partial_json(json!({"voice": "onyx"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"error": {"message": "voice not found", "code": "invalid_voice"}}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/wav")
                .set_body_bytes(wav.clone()),
        )
        .mount(&server)
        .await;
    let mut request = SpeechRequest {
        model: "gpt-4o-mini-tts".into(),
        input: "Welcome to the show.".into(),
        voice: "alloy".into(),
        speed: Some(1.1),
        instructions: Some("Warm and unhurried.".into()),
        format: "wav".into(),
    };
    let reply = openai(&server)
        .make(MediaCall::Speech(&request), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.bytes, wav);
    assert_eq!(reply.attempts, 2, "the empty body is asked again");
    assert_eq!(reply.media_type.as_deref(), Some("audio/wav"));
    assert!(
        reply.raw_response.contains("bytes of audio/wav left out"),
        "{}",
        reply.raw_response
    );
    let body = &sent(&server, "/v1/audio/speech").await[1];
    assert_eq!(
        body,
        &json!({"model": "gpt-4o-mini-tts", "input": "Welcome to the show.", "voice": "alloy",
                "response_format": "wav", "speed": 1.1, "instructions": "Warm and unhurried."})
    );
    request.voice = "onyx".into();
    let failure = openai(&server)
        .make(MediaCall::Speech(&request), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        failure.error.to_string().contains("voice not found"),
        "{}",
        failure.error
    );
}
