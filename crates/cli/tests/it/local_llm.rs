//! `factory run` against a local OpenAI-compatible server that behaves like
//! llama.cpp's (`llama_cpp.server` 0.3.36) at its worst: one request at a
//! time, no usage in streams, 200 with an empty body for a streamed prompt
//! that does not fit its window and 400 `context_length_exceeded` for the
//! same prompt unstreamed, a 500 for `response_format: json_schema`, a tiny
//! model that writes broken JSON unless JSON mode constrains it, and now and
//! then an empty 200 body. Set up as a user would: two variables.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{factory, read_request, respond, sent_prompt, status_json, stream_reply};

/// What the fake server saw and how it behaves.
struct FakeLlama {
    /// Its context window, in its own tokens (4 characters each).
    window: usize,
    /// How long each reply takes to start.
    delay: Duration,
    requests: Mutex<Vec<Value>>,
    /// Non-streamed requests answered so far (every first one gets an empty body).
    unstreamed: Mutex<usize>,
}

impl FakeLlama {
    fn start(window: usize, delay: Duration) -> (Arc<FakeLlama>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let fake = Arc::new(FakeLlama {
            window,
            delay,
            requests: Mutex::new(Vec::new()),
            unstreamed: Mutex::new(0),
        });
        let server = fake.clone();
        // One connection at a time, like a one-slot server: the others wait
        // in the listen queue, and that waiting is the server's, not ours.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = server.serve(stream);
            }
        });
        (fake, url)
    }

    fn requests_for(&self, block: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| block_of(r).as_deref() == Some(block))
            .cloned()
            .collect()
    }

    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let (request_line, body) = read_request(&stream);
        if request_line.starts_with("GET /v1/models") {
            // llama-cpp-python lists the alias and nothing of its window.
            return respond(
                &mut stream,
                "200 OK",
                &json!({"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "me"}]})
                    .to_string(),
            );
        }
        if !request_line.starts_with("POST /v1/chat/completions") {
            return respond(&mut stream, "404 Not Found", "{\"detail\":\"Not Found\"}");
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.requests.lock().unwrap().push(request.clone());
        let streamed = request["stream"] == true;
        let prompt: usize = request["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["content"].as_str().map_or(0, str::len))
                    .sum()
            })
            .unwrap_or(0);
        let prompt_tokens = prompt / 4;
        if prompt_tokens > self.window {
            if streamed {
                // What llama_cpp.server does: 200, then nothing.
                return stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                );
            }
            let error = json!({"error": {"message": format!("Requested tokens ({prompt_tokens}) exceed context window of {}", self.window), "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}});
            return respond(&mut stream, "400 Bad Request", &error.to_string());
        }
        let format = &request["response_format"];
        if format["type"] == "json_schema" {
            let error = json!({"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}", "type": "internal_server_error"}});
            return respond(&mut stream, "500 Internal Server Error", &error.to_string());
        }
        if !streamed {
            let mut count = self.unstreamed.lock().unwrap();
            *count += 1;
            if *count == 1 {
                return respond(&mut stream, "200 OK", "");
            }
        }
        std::thread::sleep(self.delay);
        let block = block_of(&request).unwrap_or_default();
        let text = reply(&block, format);
        if streamed {
            stream_reply(&mut stream, &text)
        } else {
            let body = json!({
                "model": "tiny", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": text.len() / 4, "total_tokens": prompt_tokens + text.len() / 4}
            });
            respond(&mut stream, "200 OK", &body.to_string())
        }
    }
}

fn block_of(request: &Value) -> Option<String> {
    request["messages"]
        .as_array()?
        .iter()
        .filter_map(|m| m["content"].as_str())
        .find_map(|c| c.split("Run the block `").nth(1))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string)
}

/// A tiny model: valid JSON only when JSON mode holds it to it (with the
/// schema's required keys when one is given), otherwise a fenced object with
/// a trailing comma.
fn reply(block: &str, format: &Value) -> String {
    match format["type"].as_str() {
        Some("json_object") => match format["schema"]["required"].as_array() {
            Some(keys) => {
                let object: serde_json::Map<String, Value> = keys
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|key| {
                        let value = if format["schema"]["properties"][key]["type"] == "string" {
                            json!(format!("# {key}\n\nMarisol Vega counts to seven."))
                        } else {
                            json!({"block": block, "entries": 5})
                        };
                        (key.to_string(), value)
                    })
                    .collect();
                Value::Object(object).to_string()
            }
            None => json!({"block": block, "facts": ["Marisol Vega", "Seven Second Silence"]})
                .to_string(),
        },
        _ => format!(
            "Sure! Here is the JSON:\n```json\n{{\n  \"block\": \"{block}\",\n  \"facts\": [\"Marisol Vega\",],\n}}\n```"
        ),
    }
}

fn write_template(dir: &Path) -> std::path::PathBuf {
    let skill = dir.join("skills/facts");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "# Facts\nList the facts about the subject as JSON.\n",
    )
    .unwrap();
    let json_block = |id: &str, config: Value| {
        json!({
            "id": id, "name": id, "layer": "L0", "type": "extract", "runtime": "llm",
            "skill": "facts", "model": "sonnet", "timeout": 1500,
            "execution": {"retryable": true, "max_retries": 1},
            "inputs": {"config": config},
            "outputs": {"artifacts": [{"key": "facts", "path": "facts.json", "format": "json"}]}
        })
    };
    let mut blocks: Vec<Value> = (1..=4)
        .map(|n| json_block(&format!("facts-{n}"), json!({})))
        .collect();
    // One block reads its reply unstreamed (and meets the empty-body glitch).
    blocks.push(json_block(
        "facts-5",
        json!({"stream": false, "temperature": 0.9}),
    ));
    // One block without structured output: the tiny model breaks its JSON.
    blocks.push(json_block("loose", json!({"structured_output": "off"})));
    // One block whose prompt cannot fit the 2,048-token window.
    blocks.push(json_block(
        "overlong",
        json!({"notes": "every word of these notes counts ".repeat(1_500)}),
    ));
    blocks.push(json!({
        "id": "summary", "name": "Summary", "layer": "L1", "type": "build", "runtime": "llm",
        "skill": "facts", "model": "opus", "timeout": 1500,
        "inputs": {"depends": (1..=5).map(|n| json!({"block": format!("facts-{n}"), "key": "facts"})).collect::<Vec<_>>()},
        "outputs": {"artifacts": [
            {"key": "summary", "path": "summary.md", "format": "md"},
            {"key": "index", "path": "index.json", "format": "json"}
        ]}
    }));
    let template =
        json!({"id": "local-facts", "name": "Local facts", "version": "1", "blocks": blocks});
    let path = dir.join("local-facts.json");
    std::fs::write(&path, serde_json::to_string_pretty(&template).unwrap()).unwrap();
    path
}

/// `factory run TEMPLATE` on a local OpenAI-compatible server set up with
/// the two variables and a window; the exit code and the run id.
pub(super) fn run_on_local(
    db: &Path,
    template: &Path,
    url: &str,
    model: &str,
    context: &str,
) -> (Option<i32>, String) {
    let output = factory(db)
        .env("FACTORY_LLM_BASE_URL", url)
        .env("FACTORY_LLM_MODEL", model)
        .env("FACTORY_LLM_CONTEXT", context)
        .args([
            "run",
            template.to_str().unwrap(),
            "--quiet",
            "--retry-backoff-ms",
            "10",
        ])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap().trim().to_string(),
    )
}

/// `factory run t.json` from the template's own folder finds its skills
/// (the file's parent is the empty path; it once named no folder, and every
/// llm block was refused with "skill : No such file or directory").
#[test]
fn a_template_named_without_its_folder_finds_its_skills() {
    let dir = tempfile::tempdir().unwrap();
    let template = write_template(dir.path());
    let output = factory(&dir.path().join("factory.db"))
        .env("FACTORY_LLM_BASE_URL", "http://127.0.0.1:9/v1")
        .env("FACTORY_LLM_MODEL", "tiny")
        .current_dir(dir.path())
        .args([
            "run",
            template.file_name().unwrap().to_str().unwrap(),
            "--no-run",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8(output.stdout).unwrap().trim().is_empty());
}

#[test]
fn a_run_on_a_one_slot_local_server_set_up_with_two_variables() {
    let (fake, url) = FakeLlama::start(2_048, Duration::from_millis(250));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = write_template(dir.path());
    let env = |command: &mut assert_cmd::Command| {
        command
            .env("FACTORY_LLM_BASE_URL", &url)
            .env("FACTORY_LLM_MODEL", "tiny")
            .env("FACTORY_LLM_CONTEXT", "2048")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("FACTORY_LLM_CONCURRENCY")
            .current_dir(dir.path());
    };

    let mut doctor = factory(&db);
    env(&mut doctor);
    let output = doctor
        .env("FACTORY_LLM_RPM", "600")
        .env("FACTORY_LLM_TPM", "90000")
        .args(["doctor", template.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains(
            "local       ok: 1 call at a time, 600 requests a minute, 90000 tokens a minute; serves tiny"
        )
            && report.contains("sonnet → local:tiny (context window 2048 tokens, configured)")
            && report.contains("opus → local:tiny"),
        "{report}"
    );

    let mut run = factory(&db);
    env(&mut run);
    let output = run
        .args([
            "run",
            template.to_str().unwrap(),
            "--retry-backoff-ms",
            "10",
            "--quiet",
            "--llm",
            "temperature=0.3",
            "--llm",
            "seed=5",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "two blocks fail: {stderr}");
    let run_id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let doc = status_json(&db, &run_id);
    let block = |id: &str| doc["blocks"][id].clone();
    let llm = |id: &str, attempt: usize| block(id)["history"][attempt]["report"]["llm"].clone();

    // JSON mode made every JSON block parse at its first attempt, although
    // five ran "in parallel" on one slot with 1.5 s timeouts: the queue is
    // not counted against them.
    for n in 1..=5 {
        let id = format!("facts-{n}");
        assert_eq!(block(&id)["status"], "done", "{id}: {}", block(&id));
        assert_eq!(block(&id)["attempts"], 1, "{id}");
        let sent = fake.requests_for(&id);
        assert_eq!(
            sent.last().unwrap()["response_format"],
            json!({"type": "json_object"})
        );
        assert_eq!(
            sent.last().unwrap()["model"],
            "tiny",
            "FACTORY_LLM_MODEL reaches aliases"
        );
    }
    let queued: u64 = (1..=5)
        .map(|n| {
            llm(&format!("facts-{n}"), 0)["queued_ms"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        queued >= 500,
        "the blocks queued for the one slot: {queued} ms"
    );

    // Streams carry no usage: counted by the estimator and marked; the
    // unstreamed block has the server's counts (after one empty 200 body).
    let streamed = llm("facts-1", 0);
    assert_eq!(streamed["estimated"], true, "{streamed}");
    assert!(streamed["input_tokens"].as_u64().unwrap() > 10);
    assert!(streamed["output_tokens"].as_u64().unwrap() > 5);
    let unstreamed = llm("facts-5", 0);
    assert!(unstreamed.get("estimated").is_none(), "{unstreamed}");
    assert_eq!(
        unstreamed["calls"], 2,
        "the empty body was retried by the client"
    );
    assert!(unstreamed["input_tokens"].as_u64().unwrap() > 0);

    // Several artifacts: one JSON object keyed by artifact. The server
    // refused json_schema (500) and took its own json_object+schema form.
    assert_eq!(block("summary")["status"], "done", "{}", block("summary"));
    let summary = llm("summary", 0);
    assert_eq!(
        summary["response_format"], "json_object+schema",
        "{summary}"
    );
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("refused response_format `json_schema`")
            && notes.contains("max_tokens lowered from 8192 to"),
        "{notes}"
    );
    let index = factory(&db)
        .args(["artifacts", &run_id, "summary", "--key", "index"])
        .output()
        .unwrap();
    let index: Value = serde_json::from_slice(&index.stdout).expect("index is JSON");
    assert_eq!(index["entries"], 5);

    // Without JSON mode the tiny model's reply breaks; the retry is told so
    // in its own section, quoting the offending lines, never as an expert's
    // correction, and both failed attempts keep their prompts.
    assert_eq!(block("loose")["status"], "failed");
    assert_eq!(block("loose")["attempts"], 2);
    assert!(
        fake.requests_for("loose")[0]
            .get("response_format")
            .is_none()
    );
    let retry = sent_prompt(&db, &run_id, "loose", 2);
    assert!(
        retry.contains("## YOUR PREVIOUS REPLY COULD NOT BE USED\nThe reply to attempt 1 could not be used because artifact `facts` is not valid JSON: trailing comma")
            && retry.contains("\"Marisol Vega\",],")
            && retry.contains("^ here"),
        "{retry}"
    );
    assert!(!retry.contains("EXPERT CORRECTIONS"), "{retry}");
    assert_eq!(
        retry.matches("COULD NOT BE USED").count(),
        1,
        "notes do not pile up"
    );

    // The overlong block failed at once, without a call, saying why.
    let overlong = block("overlong");
    assert_eq!(overlong["status"], "failed");
    assert_eq!(overlong["attempts"], 1, "not retried: no retry can fix it");
    let error = overlong["error"].as_str().unwrap();
    assert!(
        error.contains("has a context window of 2048 tokens (configured); nothing was sent")
            && error.contains("upstream_max_chars"),
        "{error}"
    );
    assert!(fake.requests_for("overlong").is_empty());
    assert!(sent_prompt(&db, &run_id, "overlong", 1).contains("every word of these notes"));
    let unsent = llm("overlong", 0);
    assert_eq!(
        (unsent["calls"].clone(), unsent["input_tokens"].clone()),
        (json!(0), json!(0)),
        "nothing sent, nothing counted"
    );

    // Nothing of the transport or the server entered a prompt.
    for request in fake.requests.lock().unwrap().iter() {
        let text = request["messages"].to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("HTTP"),
            "{text}"
        );
    }
    let status = factory(&db).args(["status", &run_id]).output().unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(
        status.contains(
            "tokens of 7 attempts estimated (the server reported no usage); 1 attempt got no reply"
        ) && status.contains("facts-1")
            && status.contains("(estimated)"),
        "{status}"
    );
}

/// A prompt the factory believes fits (its window is set too large) but the
/// server does not: the empty 200 stream is diagnosed by asking again
/// without streaming, and the overflow is never retried.
#[test]
fn an_overflow_the_server_reports_is_named_and_not_retried() {
    let (fake, url) = FakeLlama::start(256, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let skill = dir.path().join("skills/facts");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(skill.join("SKILL.md"), "# Facts\n".repeat(200)).unwrap();
    let template = dir.path().join("one.json");
    std::fs::write(
        &template,
        json!({"id": "one", "name": "One", "version": "1", "blocks": [{
            "id": "edge", "name": "Edge", "layer": "L0", "type": "extract", "runtime": "llm",
            "skill": "facts", "execution": {"retryable": true, "max_retries": 2},
            "outputs": {"artifacts": [{"key": "facts", "path": "facts.json", "format": "json"}]}
        }]})
        .to_string(),
    )
    .unwrap();
    let (code, run_id) = run_on_local(&db, &template, &url, "tiny", "100000");
    assert_eq!(code, Some(1));
    let doc = status_json(&db, &run_id);
    let edge = &doc["blocks"]["edge"];
    assert_eq!(edge["attempts"], 1, "{edge}");
    let error = edge["error"].as_str().unwrap();
    assert!(
        error.contains("refused the prompt: it does not fit the model's context window")
            && error.contains("exceed context window of 256")
            && error.contains("not retried"),
        "{error}"
    );
    let sent = fake.requests_for("edge");
    assert_eq!(
        sent.len(),
        2,
        "one streamed call, one unstreamed to learn why"
    );
    assert_eq!(
        (sent[0]["stream"].clone(), sent[1].get("stream")),
        (json!(true), None)
    );
    let call = &edge["history"][0]["report"]["llm"];
    assert_eq!(
        call["notes"][0],
        "the stream was empty; asked again without streaming"
    );
    assert!(call["error"].as_str().unwrap().contains("context window"));
    assert!(sent_prompt(&db, &run_id, "edge", 1).contains("# Facts"));
}

/// `factory prompt --attempt N` on an attempt still waiting for the model:
/// rebuilt from the run's state, and said to be so.
#[test]
fn the_prompt_of_a_running_attempt_can_be_read() {
    let (_fake, url) = FakeLlama::start(2_048, Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = write_template(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_factory"))
        .env("FACTORY_DB", &db)
        .env("FACTORY_LLM_BASE_URL", &url)
        .env("FACTORY_LLM_MODEL", "tiny")
        .env("FACTORY_LLM_CONTEXT", "2048")
        .current_dir(dir.path())
        .args(["run", template.to_str().unwrap(), "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut run_id = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut run_id)
        .unwrap();
    let run_id = run_id.trim().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let running = loop {
        let doc = status_json(&db, &run_id);
        let running = doc["blocks"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, s)| s["status"] == "running")
            .map(|(id, _)| id.clone());
        if let Some(id) = running {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "no block started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = factory(&db)
        .args(["prompt", &run_id, &running, "--attempt", "1"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("attempt 1 is running"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("Run the block `{running}`"))
    );
}
