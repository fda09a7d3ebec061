//! `image` and `speech` blocks through the real binary against a local
//! server that speaks OpenAI's wire format for chat, images and speech —
//! one connection at a time, and at its worst: the first image call
//! answers 200 with an empty body, no call reports usage but the image's.
//! It returns real bytes: a PNG any decoder shows, WAV audio as long as
//! the text it speaks.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use factory_audit::media::{MediaKind, inspect, samples};
use serde_json::{Value, json};

use super::{factory, read_request, repo_root, respond, status_json, stream_reply};

const SCRIPT: &str = "HOST: Welcome. Today: negotiation for first-time managers.\n\
GUEST: Anchor first. Say your number before they say theirs.\n\
GUEST: Trade, never concede. Every yes buys something back.\n\
HOST: And the walk-away?\n\
GUEST: Name it before you sit down. Then you can listen.\n\
HOST: Thanks for listening.";

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<(String, Value)>>,
    /// Answer images with a JPEG (a provider that ignores the asked format).
    jpeg: bool,
}

impl Fake {
    fn start(jpeg: bool) -> (Arc<Fake>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let fake = Arc::new(Fake {
            jpeg,
            ..Fake::default()
        });
        let server = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = server.serve(stream);
            }
        });
        (fake, url)
    }

    fn sent(&self, path: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let (line, body) = read_request(&stream);
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let seen = {
            let mut requests = self.requests.lock().unwrap();
            requests.push((path.clone(), body.clone()));
            requests.iter().filter(|(p, _)| *p == path).count()
        };
        match path.as_str() {
            "/v1/chat/completions" if body["stream"] == true => stream_reply(&mut stream, SCRIPT),
            "/v1/chat/completions" => respond(
                &mut stream,
                "200 OK",
                &json!({"choices": [{"message": {"role": "assistant", "content": SCRIPT}, "finish_reason": "stop"}]}).to_string(),
            ),
            "/v1/images/generations" if seen == 1 => respond(&mut stream, "200 OK", ""),
            "/v1/images/generations" => {
                let bytes = if self.jpeg {
                    // SOI, a SOF0 of 4×4, EOI: a JPEG by its header.
                    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x04, 0x00, 0x04, 0x03];
                    jpeg.extend_from_slice(&[0; 9]);
                    jpeg.extend_from_slice(&[0xFF, 0xD9]);
                    jpeg
                } else {
                    samples::png_rgb(300, 200, [30, 90, 200])
                };
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                respond(
                    &mut stream,
                    "200 OK",
                    &json!({"created": 1, "data": [{"b64_json": b64}], "usage": {"input_tokens": 120, "output_tokens": 4160}}).to_string(),
                )
            }
            "/v1/audio/speech" => {
                // 40 ms per character, so the length says what was spoken.
                let chars = body["input"].as_str().unwrap_or_default().chars().count();
                let wav = samples::wav(40 * chars as u32);
                std::io::Write::write_all(
                    &mut stream,
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: audio/wav\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        wav.len()
                    )
                    .as_bytes(),
                )?;
                std::io::Write::write_all(&mut stream, &wav)
            }
            _ => respond(&mut stream, "404 Not Found", "{}"),
        }
    }
}

fn run(dir: &std::path::Path, url: Option<&str>) -> std::process::Output {
    let config = dir.join("factory.toml");
    std::fs::write(
        &config,
        "[prices.\"gpt-image-1\"]\nper_image = 0.04\n\n[prices.\"gpt-4o-mini-tts\"]\nper_million_characters = 15.0\n",
    )
    .unwrap();
    let template = repo_root().join("examples/media-gen/pipeline.json");
    let mut command = factory(&dir.join("factory.db"));
    command
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            template.to_str().unwrap(),
        ])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("FACTORY_LLM_BASE_URL")
        .env_remove("FACTORY_IMAGE_MODEL")
        .env_remove("FACTORY_SPEECH_MODEL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    if let Some(url) = url {
        command
            .env("OPENAI_BASE_URL", url)
            .env("OPENAI_API_KEY", "sk-local-test")
            .env("FACTORY_DEFAULT_MODEL", "openai:tiny");
    }
    command.output().unwrap()
}

fn last_report(doc: &Value, block: &str) -> Value {
    doc["blocks"][block]["history"]
        .as_array()
        .and_then(|h| h.last())
        .map(|a| a["report"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn a_card_is_drawn_and_a_script_is_spoken_through_local_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, url) = Fake::start(false);
    let output = run(dir.path(), Some(&url));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run_id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let db = dir.path().join("factory.db");
    let doc = status_json(&db, &run_id);
    assert_eq!(doc["status"], "done", "{doc}");

    // The card: a real PNG, its facts kept, the call priced per image.
    let card = last_report(&doc, "card");
    assert_eq!(card["artifacts"]["card"]["media"]["width"], 300, "{card}");
    assert_eq!(card["llm"]["images"], 1, "{card}");
    assert_eq!(card["llm"]["cost_usd"], 0.04, "{card}");
    assert_eq!(card["llm"]["model"], "gpt-image-1");
    assert!(
        card["llm"]["calls"].as_u64().unwrap() >= 2,
        "the empty body was asked again: {card}"
    );
    let bytes = factory(&db)
        .args(["artifacts", &run_id, "card", "--key", "card"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        bytes,
        samples::png_rgb(300, 200, [30, 90, 200]),
        "stored byte for byte"
    );
    // Its prompt was assembled like an llm block's: the skill, the
    // upstream brief, the block's style; the call's knobs went to the API.
    let sent = fake.sent("/v1/images/generations");
    let asked = sent.last().unwrap();
    let prompt = asked["prompt"].as_str().unwrap();
    for part in [
        "Leave the lower fifth empty",
        "# Negotiation for first-time managers",
        "style: flat illustration, two colours",
        "## The image",
    ] {
        assert!(
            prompt.contains(part),
            "`{part}` missing from the image prompt:\n{prompt}"
        );
    }
    assert!(
        !prompt.contains("1536x1024"),
        "knobs are not prompt text: {prompt}"
    );
    assert_eq!(
        (asked["size"].as_str(), asked.get("quality")),
        (Some("1536x1024"), None)
    );

    // The episode: one request per speaker turn run, two voices, joined
    // into one WAV as long as all the pieces.
    let speech = fake.sent("/v1/audio/speech");
    let voices: Vec<&str> = speech
        .iter()
        .map(|r| r["voice"].as_str().unwrap())
        .collect();
    assert_eq!(
        voices,
        ["alloy", "onyx", "alloy", "onyx", "alloy"],
        "{speech:?}"
    );
    assert!(
        speech
            .iter()
            .all(|r| !r["input"].as_str().unwrap().contains("HOST:"))
    );
    assert_eq!(
        speech[0]["instructions"],
        "A relaxed, warm conversation between two colleagues."
    );
    let spoken: usize = speech
        .iter()
        .map(|r| r["input"].as_str().unwrap().chars().count())
        .sum();
    let episode = last_report(&doc, "episode");
    assert_eq!(
        episode["artifacts"]["episode"]["media"]["duration_ms"],
        40 * spoken as u64,
        "{episode}"
    );
    assert_eq!(episode["llm"]["characters"], spoken as u64);
    let cost = episode["llm"]["cost_usd"].as_f64().unwrap();
    assert!((cost - spoken as f64 * 15.0 / 1e6).abs() < 1e-9, "{cost}");
    let audio = factory(&db)
        .args(["artifacts", &run_id, "episode", "--key", "episode"])
        .output()
        .unwrap()
        .stdout;
    inspect(MediaKind::Wav, &audio).unwrap();
}

#[test]
fn a_provider_that_sends_another_format_fails_the_attempt_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, url) = Fake::start(true);
    let output = run(dir.path(), Some(&url));
    let run_id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let doc = status_json(&dir.path().join("factory.db"), &run_id);
    assert_eq!(doc["blocks"]["card"]["status"], "failed", "{doc}");
    let error = last_report(&doc, "card")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("card") && error.contains("the provider sent image/jpeg"),
        "{error}"
    );
    // It would come again on every try: not retried, not paid for twice.
    let attempts = doc["blocks"]["card"]["history"].as_array().unwrap().len();
    assert_eq!(attempts, 1, "{doc}");
}

/// An optional image block without its provider: the run starts, the block
/// is done without its card and says why, `factory doctor` calls it left out
/// rather than missing — and once the provider is set, the next run draws
/// the card instead of reusing the left-out attempt from the memo.
#[test]
fn an_optional_card_is_left_out_without_its_provider_and_drawn_once_it_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("optional.json");
    std::fs::write(
        &template,
        json!({
            "id": "optional-card", "name": "Optional card", "version": "1",
            "blocks": [
                {"id": "brief", "name": "Brief", "layer": "L0", "type": "build", "runtime": "command",
                 "inputs": {"config": {"command": ["sh", "-c", "echo '# Anchor first' > \"$FACTORY_OUTPUT_DIR/brief.md\""]}},
                 "outputs": {"artifacts": [{"key": "brief", "path": "brief.md", "format": "md"}]}},
                {"id": "card", "name": "Card", "layer": "L1", "type": "build", "runtime": "image",
                 "description": "A card for the brief.",
                 "inputs": {"depends": [{"block": "brief", "key": "brief"}], "config": {"aspect_ratio": "3:2", "optional": true}},
                 "outputs": {"artifacts": [{"key": "card", "path": "card.png", "format": "png"}]}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let db = dir.path().join("factory.db");
    let run = |url: Option<&str>| {
        let mut command = factory(&db);
        command
            .args(["run", template.to_str().unwrap()])
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("FACTORY_LLM_BASE_URL")
            .env_remove("FACTORY_IMAGE_MODEL");
        if let Some(url) = url {
            command
                .env("OPENAI_BASE_URL", url)
                .env("OPENAI_API_KEY", "sk-local-test");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let first = run(None);
    let doc = status_json(&db, &first);
    assert_eq!(doc["status"], "done", "{doc}");
    let report = last_report(&doc, "card");
    assert!(
        report["artifacts"].as_object().is_none_or(|a| a.is_empty()),
        "{report}"
    );
    let logs = factory(&db)
        .args(["logs", &first, "card"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("not made") && logs.contains("OPENAI_API_KEY"),
        "{logs}"
    );
    let doctor = factory(&db)
        .args(["doctor", template.to_str().unwrap()])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("FACTORY_LLM_BASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("left out (optional)") && !text.contains("MISSING"),
        "{text}"
    );

    let (fake, url) = Fake::start(false);
    let second = run(Some(&url));
    let doc = status_json(&db, &second);
    let report = last_report(&doc, "card");
    assert!(
        report["reused"].is_null(),
        "a left-out attempt is never reused: {report}"
    );
    assert_eq!(
        report["artifacts"]["card"]["media"]["width"], 300,
        "{report}"
    );
    let sent = fake.sent("/v1/images/generations");
    assert_eq!(
        sent.last().unwrap()["size"],
        "1536x1024",
        "3:2 asked as OpenAI's size"
    );
}

#[test]
fn without_a_provider_for_images_the_run_is_refused_with_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "card",
        "gpt-image",
        "OPENAI_API_KEY",
        "FACTORY_IMAGE_MODEL",
        "episode",
        "tts",
    ] {
        assert!(stderr.contains(part), "`{part}` missing: {stderr}");
    }
}
