//! The real clients against local servers that speak each wire format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factory_llm::{
    Anthropic, ChatRequest, Client, Limits, LlmError, OpenAiCompatible, Part, RateLimit,
    ResponseFormat, RetryPolicy, StreamLimits, TimeoutKind, TokenLimit,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod media;

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
        stream,
        ..Default::default()
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
        matches!(error.error, LlmError::Http { status: 529, .. }),
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
    assert!(matches!(error.error, LlmError::Malformed { .. }), "{error}");
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
            error.error,
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
    assert!(
        matches!(error.error, LlmError::Incomplete { .. }),
        "{error}"
    );
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

fn rate(requests: u32, window_ms: u64) -> RateLimit {
    RateLimit {
        requests,
        window: Duration::from_millis(window_ms),
    }
}

/// Two requests per 800 ms: of three calls at once (concurrency allows all
/// three), two start at once and the third waits for the window, as queueing.
#[tokio::test]
async fn the_rate_limit_spaces_requests_over_its_window() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .expect(3)
        .mount(&server)
        .await;
    let client = Client::new(
        Arc::new(Anthropic::new(Some(&server.uri()), KEY)),
        3,
        fast_retries(),
    )
    .with_rate(rate(2, 800));
    let one = request(false);
    let (a, b, c) = tokio::join!(
        client.complete(&one, Duration::from_secs(5)),
        client.complete(&one, Duration::from_secs(5)),
        client.complete(&one, Duration::from_secs(5))
    );
    let mut queued: Vec<u64> = [a, b, c].map(|r| r.unwrap().queued_ms).to_vec();
    queued.sort();
    assert!(queued[1] < 790, "two start at once: {queued:?}");
    assert!(
        queued[2] >= 790,
        "the third waits for the window: {queued:?}"
    );
}

fn tokens(tokens: u64, window_ms: u64) -> TokenLimit {
    TokenLimit {
        tokens,
        window: Duration::from_millis(window_ms),
    }
}

/// A tokens-per-minute limit counts a request's estimated prompt plus its
/// `max_tokens` (1,024) until the reply's usage (150) corrects it. With room
/// for two replies' usage and one estimate: two calls at once do not both
/// fit, so the second waits while the first is in flight (300 ms here) and
/// goes once the first's reply has corrected its count, long before the
/// window ends; one after the other, three go at once; a fourth does not.
#[tokio::test]
async fn the_token_limit_counts_estimates_until_the_usage_corrects_them() {
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(message("ok", "end_turn"))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&slow)
        .await;
    let one = request(false);
    let estimate = one.estimated_prompt_tokens() + 1024;
    let room = 2 * 150 + estimate;
    let client = anthropic(&slow).with_token_limit(tokens(room, 10_000));
    let (a, b) = tokio::join!(
        client.complete(&one, Duration::from_secs(5)),
        client.complete(&one, Duration::from_secs(5))
    );
    let mut queued: Vec<u64> = [a, b].map(|r| r.unwrap().queued_ms).to_vec();
    queued.sort();
    assert!(queued[0] < 200, "the first goes at once: {queued:?}");
    assert!(
        (250..2_000).contains(&queued[1]),
        "the second waits for the first's reply, not for the window: {queued:?}"
    );

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .mount(&server)
        .await;
    let client = anthropic(&server).with_token_limit(tokens(room, 60_000));
    for n in 1..=3 {
        let reply = client.complete(&one, Duration::from_secs(5)).await.unwrap();
        assert!(
            reply.queued_ms < 400,
            "call {n} waited {} ms",
            reply.queued_ms
        );
    }
    let fourth = tokio::time::timeout(
        Duration::from_millis(600),
        client.complete(&one, Duration::from_secs(5)),
    )
    .await;
    assert!(fourth.is_err(), "450 + one estimate is over: it waits");
}

/// A request larger than the whole limit is not stuck for ever: it goes
/// alone, once nothing else is counted.
#[tokio::test]
async fn a_request_larger_than_the_token_limit_goes_alone() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .expect(1)
        .mount(&server)
        .await;
    let client = anthropic(&server).with_token_limit(tokens(500, 60_000));
    let reply = client
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(reply.queued_ms < 400, "{}", reply.queued_ms);
    assert_eq!(client.token_limit().map(|l| l.tokens), Some(500));
}

/// A retry is a request too: after a 500, the second request waits for its
/// turn; a turn that would come after the deadline ends the call as a timeout.
#[tokio::test]
async fn retries_count_against_the_rate_limit() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("busy"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .mount(&server)
        .await;
    let client = anthropic(&server).with_rate(rate(1, 600));
    let reply = client
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.attempts, 2);
    assert!(
        reply.latency_ms >= 590,
        "the retry waited: {}",
        reply.latency_ms
    );

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("busy"))
        .expect(1)
        .mount(&server)
        .await;
    let client = anthropic(&server).with_rate(rate(1, 60_000));
    let started = Instant::now();
    let failure = client
        .complete(&request(false), Duration::from_millis(700))
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.error,
            LlmError::Timeout {
                kind: TimeoutKind::Total,
                ..
            }
        ),
        "{}",
        failure.error
    );
    assert!(
        failure.notes.iter().any(|n| n.contains("rate limit")),
        "{:?}",
        failure.notes
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ends at the deadline, not the turn"
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

fn local(server: &MockServer, concurrency: usize) -> Client {
    Client::new(
        Arc::new(OpenAiCompatible::new(
            "local",
            &format!("{}/v1", server.uri()),
            None,
        )),
        concurrency,
        fast_retries(),
    )
}

fn completion(text: &str) -> Value {
    json!({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]})
}

/// llama.cpp's server answers an over-long prompt with 200 and an empty body
/// when streaming, and with 400 `context_length_exceeded` when not: the
/// client asks once more without streaming and reports the overflow, which
/// nobody retries.
#[tokio::test]
async fn an_empty_stream_is_diagnosed_without_streaming_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(ResponseTemplate::new(200).insert_header("content-type", "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Requested tokens (9012) exceed context window of 8192",
            "type": "invalid_request_error", "code": "context_length_exceeded"}})))
        .expect(1)
        .mount(&server)
        .await;
    let failure = local(&server, 1)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, LlmError::ContextOverflow { .. }),
        "{}",
        failure.error
    );
    assert!(failure.error.is_permanent());
    assert!(failure.to_string().contains("context window"), "{failure}");
    assert_eq!(failure.attempts, 2);
    assert_eq!(
        failure.usage,
        factory_llm::Usage::default(),
        "a refused prompt costs nothing"
    );
    assert_eq!(
        failure.notes,
        vec!["the stream was empty; asked again without streaming".to_string()]
    );
}

#[tokio::test]
async fn a_refused_json_schema_falls_back_to_json_mode() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"response_format": {"type": "json_schema"}})))
        // What llama-cpp-python 0.3.36 answers (a 500, not a 422).
        .respond_with(ResponseTemplate::new(500).set_body_string(
            r#"{"error":{"message":"1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}","type":"internal_server_error"}}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"response_format": {"type": "json_object", "schema": {"type": "object"}}, "seed": 7, "top_p": 0.5, "stop": ["END"]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("{\"a\": 1}")))
        .expect(1)
        .mount(&server)
        .await;
    let mut asked = request(false);
    asked.response_format = ResponseFormat::JsonSchema {
        name: "facts".into(),
        schema: json!({"type": "object"}),
    };
    asked.seed = Some(7);
    asked.top_p = Some(0.5);
    asked.stop = vec!["END".into()];
    let client = local(&server, 1);
    let response = client
        .complete(&asked, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        response.response_format,
        ResponseFormat::JsonObjectWithSchema {
            schema: json!({"type": "object"})
        }
    );
    assert_eq!(response.attempts, 2);
    assert!(response.notes[0].contains("refused response_format `json_schema`"));
    // The next call starts with the form this server takes: one call.
    server.reset().await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"response_format": {"type": "json_object", "schema": {"type": "object"}}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("{\"a\": 2}")))
        .expect(1)
        .mount(&server)
        .await;
    let response = client
        .complete(&asked, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (response.text.as_str(), response.attempts),
        ("{\"a\": 2}", 1)
    );
}

#[tokio::test]
async fn a_stream_without_usage_is_counted_and_marked_estimated() {
    let server = MockServer::start().await;
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"The quick brown fox \"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"jumps over the lazy dog.\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(stream))
        .mount(&server)
        .await;
    let response = local(&server, 1)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(response.usage.estimated);
    assert_eq!(response.usage.output_tokens, 10);
    assert!(response.usage.input_tokens > 10, "{:?}", response.usage);
}

#[tokio::test]
async fn waiting_for_a_slot_does_not_count_against_the_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("ok"))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&server)
        .await;
    let client = local(&server, 1);
    let one = request(false);
    // Each call takes 300 ms of a 600 ms limit; the third waits 600 ms first.
    let (a, b, c) = tokio::join!(
        client.complete(&one, Duration::from_millis(600)),
        client.complete(&one, Duration::from_millis(600)),
        client.complete(&one, Duration::from_millis(600))
    );
    let queued: Vec<u64> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("no call timed out").queued_ms)
        .collect();
    assert!(queued.iter().any(|q| *q >= 550), "{queued:?}");
}

#[tokio::test]
async fn a_failed_call_keeps_its_request_and_partial_reply() {
    let server = MockServer::start().await;
    let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"par\"}}]}\n\n";
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(cut))
        .mount(&server)
        .await;
    let failure = local(&server, 1)
        .complete(&request(true), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(failure.error, LlmError::Incomplete { .. }));
    assert_eq!(failure.attempts, 3, "retried up to the policy's limit");
    assert_eq!(failure.partial_text, "{\"par");
    assert_eq!(failure.raw_request["model"], "claude-test");
    assert!(failure.usage.estimated && failure.usage.input_tokens > 0);
}

#[tokio::test]
async fn an_empty_200_body_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("second time")))
        .mount(&server)
        .await;
    let response = local(&server, 1)
        .complete(&request(false), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (response.text.as_str(), response.attempts),
        ("second time", 2)
    );
}

/// A raw HTTP server that sends a streamed reply's chunks with pauses
/// between them, which wiremock cannot do.
async fn pausing_stream_server(chunks: Vec<(Duration, &'static str)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for (pause, data) in chunks {
                    tokio::time::sleep(pause).await;
                    let frame = format!("{:x}\r\n{data}\r\n", data.len());
                    if socket.write_all(frame.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    format!("http://{address}/v1")
}

#[tokio::test]
async fn stream_limits_name_the_one_that_fired() {
    let hello = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let done = "data: [DONE]\n\n";
    let limits = Limits {
        total: Duration::from_secs(10),
        stream: StreamLimits {
            first_token: Some(Duration::from_millis(600)),
            idle: Some(Duration::from_millis(600)),
        },
    };
    let client = |url: &str| {
        Client::new(
            Arc::new(OpenAiCompatible::new("local", url, None)),
            1,
            fast_retries(),
        )
    };
    // Slow to start.
    let url = pausing_stream_server(vec![(Duration::from_millis(2_500), hello)]).await;
    let failure = client(&url)
        .complete(&request(true), limits)
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.error,
            LlmError::Timeout {
                kind: TimeoutKind::FirstToken,
                timeout_ms: 600,
                ..
            }
        ),
        "{}",
        failure.error
    );
    assert!(failure.to_string().contains("first token"), "{failure}");
    // Starts, then stalls mid-reply: the partial reply is kept.
    let url = pausing_stream_server(vec![
        (Duration::ZERO, hello),
        (Duration::from_millis(2_500), done),
    ])
    .await;
    let failure = client(&url)
        .complete(&request(true), limits)
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.error,
            LlmError::Timeout {
                kind: TimeoutKind::Idle,
                ..
            }
        ),
        "{}",
        failure.error
    );
    assert_eq!(failure.partial_text, "Hel");
    // Within both limits, a slow but steady stream finishes.
    let url = pausing_stream_server(vec![
        (Duration::from_millis(100), hello),
        (Duration::from_millis(100), hello),
        (Duration::from_millis(100), done),
    ])
    .await;
    let response = client(&url).complete(&request(true), limits).await.unwrap();
    assert_eq!(response.text, "HelHel");
}

/// Anthropic's structured output: a forced tool call whose input is the JSON,
/// unstreamed and streamed (`input_json_delta`).
#[tokio::test]
async fn anthropic_json_comes_through_a_forced_tool() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({
            "tool_choice": {"type": "tool", "name": "emit_output"},
            "tools": [{"name": "emit_output", "input_schema": {"type": "object", "required": ["a"]}}],
            "stream": true
        })))
        .respond_with(ResponseTemplate::new(200).set_body_string(concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"emit_output\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\": \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"[1, 2]}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"tool_choice": {"type": "tool", "name": "emit_output"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "claude-test", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t2", "name": "emit_output", "input": {"a": [3]}}],
            "usage": {"input_tokens": 30, "output_tokens": 9}
        })))
        .mount(&server)
        .await;
    let mut asked = request(true);
    asked.response_format = ResponseFormat::JsonSchema {
        name: "facts".into(),
        schema: json!({"type": "object", "required": ["a"]}),
    };
    let client = anthropic(&server);
    let streamed = client
        .complete(&asked, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&streamed.text).unwrap(),
        json!({"a": [1, 2]})
    );
    asked.stream = false;
    let whole = client
        .complete(&asked, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&whole.text).unwrap(),
        json!({"a": [3]})
    );
    assert!(!whole.truncated);
}

/// Waiters take turns in arrival order: a large request that does not fit
/// yet is not overtaken by a small one that would, so it is not starved.
/// A failed request counts what the server did (nothing, for a refusal),
/// not its estimate; one larger than the whole limit says so in its notes.
#[tokio::test]
async fn token_waiters_keep_their_order_and_failures_count_what_they_used() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .mount(&server)
        .await;
    let small = request(false);
    let mut large = request(false);
    large.max_tokens = 4_000;
    let small_estimate = small.estimated_prompt_tokens() + 1024;
    let large_estimate = large.estimated_prompt_tokens() + 4_000;
    // Room for a small one on top of a settled reply (150), not a large one.
    let limit = 150 + small_estimate.max(large_estimate - 200);
    let client = anthropic(&server).with_token_limit(tokens(limit, 900));
    client
        .complete(&small, Duration::from_secs(5))
        .await
        .unwrap();
    let large_client = client.clone();
    let large_call = tokio::spawn(async move {
        large_client
            .complete(&large, Duration::from_secs(5))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let small_reply = client
        .complete(&small, Duration::from_secs(5))
        .await
        .unwrap();
    let large_reply = large_call.await.unwrap();
    assert!(
        large_reply.queued_ms >= 800,
        "the large one waited for the window: {}",
        large_reply.queued_ms
    );
    assert!(
        small_reply.queued_ms + 50 >= large_reply.queued_ms,
        "the small one, behind it, did not overtake it: {} vs {}",
        small_reply.queued_ms,
        large_reply.queued_ms
    );

    // A refused request (400, no work done) counts nothing: the next fits.
    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad request"))
        .up_to_n_times(1)
        .mount(&refusing)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("ok", "end_turn")))
        .mount(&refusing)
        .await;
    let client = anthropic(&refusing).with_token_limit(tokens(small_estimate + 10, 60_000));
    assert!(
        client
            .complete(&small, Duration::from_secs(5))
            .await
            .is_err()
    );
    let next = client
        .complete(&small, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        next.queued_ms < 400,
        "the refusal was not counted: {}",
        next.queued_ms
    );

    // Larger than the whole limit: sent alone, and the notes say why.
    let client = anthropic(&server).with_token_limit(tokens(100, 60_000));
    let reply = client
        .complete(&small, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        reply
            .notes
            .iter()
            .any(|n| n.contains("exceed the limit of 100 tokens a minute")),
        "{:?}",
        reply.notes
    );
}
