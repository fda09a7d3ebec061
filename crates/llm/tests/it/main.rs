//! The real clients against local servers that speak each wire format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factory_llm::{Anthropic, ChatRequest, Client, LlmError, OpenAiCompatible, Part, RetryPolicy};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-secret-0123456789";

fn request(stream: bool) -> ChatRequest {
    ChatRequest {
        model: "claude-test".into(),
        system: vec![
            Part::cacheable("shared upstream context"),
            Part::new("skill for this block"),
        ],
        user: vec![Part::new("produce the artifact")],
        max_tokens: 1024,
        temperature: None,
        stream,
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn anthropic(server: &MockServer) -> Client {
    Client::new(
        Arc::new(Anthropic::new(Some(&server.uri()), KEY)),
        4,
        fast_retries(),
    )
}

fn openai(server: &MockServer) -> Client {
    Client::new(
        Arc::new(OpenAiCompatible::new(
            "openrouter",
            &format!("{}/v1", server.uri()),
            Some(KEY.into()),
        )),
        4,
        fast_retries(),
    )
}

fn message(text: &str, stop: &str) -> Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-2026",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "usage": {"input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}
    })
}

#[tokio::test]
async fn anthropic_messages_round_trip_with_cache_control_and_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(json!({
            "model": "claude-test",
            "system": [{"type": "text", "text": "shared upstream context", "cache_control": {"type": "ephemeral"}}]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("the artifact", "end_turn")))
        .expect(1)
        .mount(&server)
        .await;
    let response = anthropic(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.text, "the artifact");
    assert_eq!(response.model, "claude-test-2026");
    assert_eq!(
        (
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.usage.cache_read_tokens
        ),
        (120, 30, 100)
    );
    assert!(!response.truncated);
    assert_eq!(response.attempts, 1);
    assert!(!response.raw_request.to_string().contains(KEY));
    // The uncached system part has no cache_control.
    assert!(
        response.raw_request["system"][1]
            .get("cache_control")
            .is_none()
    );
}

#[tokio::test]
async fn anthropic_streaming_assembles_deltas_and_usage() {
    let server = MockServer::start().await;
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-test-2026\",\"usage\":{\"input_tokens\":50,\"cache_creation_input_tokens\":40,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello, \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Marisol.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":12}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(stream),
        )
        .mount(&server)
        .await;
    let response = anthropic(&server)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.text, "Hello, Marisol.");
    assert_eq!(
        (
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.usage.cache_write_tokens
        ),
        (50, 12, 40)
    );
    assert!(
        response.truncated,
        "stop_reason max_tokens is a cut-off reply"
    );
    assert_eq!(response.stop_reason.as_deref(), Some("max_tokens"));
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_servers_delay() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.15")
                .set_body_string("slow down"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .mount(&server)
        .await;
    let started = Instant::now();
    let response = anthropic(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "waited for retry-after"
    );
}

#[tokio::test]
async fn overload_and_server_errors_give_up_after_the_retry_budget() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(529)
                .set_body_string("{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}"),
        )
        .expect(3)
        .mount(&server)
        .await;
    let error = anthropic(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LlmError::Http { status: 529, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("overloaded_error"), "{error}");
}

#[tokio::test]
async fn client_errors_are_not_retried_and_never_show_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_string(format!("invalid x-api-key: {KEY}")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let error = anthropic(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("401") && text.contains("[redacted]"),
        "{text}"
    );
    assert!(!text.contains(KEY), "{text}");
    assert!(!format!("{error:?}").contains(KEY));
}

#[tokio::test]
async fn malformed_bodies_are_reported_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"content\": [oops"))
        .expect(1)
        .mount(&server)
        .await;
    let error = anthropic(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::Malformed { .. }), "{error}");
    assert!(error.to_string().contains("not JSON"), "{error}");
}

#[tokio::test]
async fn a_slow_reply_is_cancelled_at_the_deadline() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(message("late", "end_turn"))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let started = Instant::now();
    let error = anthropic(&server)
        .complete(&request(false), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LlmError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_stream_cut_short_is_incomplete_and_retried() {
    let server = MockServer::start().await;
    let cut = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"par\"}}\n\n";
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(cut))
        .expect(3)
        .mount(&server)
        .await;
    let error = anthropic(&server)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::Incomplete { .. }), "{error}");
}

#[tokio::test]
async fn openai_compatible_round_trip_with_bearer_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_partial_json(json!({"model": "claude-test", "messages": [{"role": "system"}, {"role": "user", "content": "produce the artifact"}]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "c1", "model": "vendor/model-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 80, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 64}}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let response = openai(&server)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.text, "done");
    assert!(response.truncated, "finish_reason length");
    assert_eq!(
        (
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.usage.cache_read_tokens
        ),
        (80, 20, 64)
    );
    assert_eq!(response.model, "vendor/model-x");
}

#[tokio::test]
async fn openai_compatible_streaming_with_usage_chunk_and_done() {
    let server = MockServer::start().await;
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Seven \"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"seconds\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string(stream))
        .mount(&server)
        .await;
    let response = openai(&server)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.text, "Seven seconds");
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (9, 2)
    );
    assert!(!response.truncated);
}

#[tokio::test]
async fn a_local_server_without_a_key_gets_no_auth_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}),
        ))
        .mount(&server)
        .await;
    let client = Client::new(
        Arc::new(OpenAiCompatible::new(
            "ollama",
            &format!("{}/v1", server.uri()),
            None,
        )),
        1,
        fast_retries(),
    );
    client
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    let received = server.received_requests().await.unwrap();
    assert!(received[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_concurrency_limit_serialises_calls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(message("ok", "end_turn"))
                .set_delay(Duration::from_millis(200)),
        )
        .mount(&server)
        .await;
    let client = Client::new(
        Arc::new(Anthropic::new(Some(&server.uri()), KEY)),
        1,
        fast_retries(),
    );
    let started = Instant::now();
    let one = request(false);
    let (a, b) = tokio::join!(
        client.complete(&one, Duration::from_secs(5)),
        client.complete(&one, Duration::from_secs(5))
    );
    a.unwrap();
    b.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "one call at a time"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_names_the_url_not_the_key() {
    let client = Client::new(
        Arc::new(Anthropic::new(Some("http://127.0.0.1:9"), KEY)),
        1,
        fast_retries(),
    );
    let error = client
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("127.0.0.1:9") && !text.contains(KEY),
        "{text}"
    );
}
