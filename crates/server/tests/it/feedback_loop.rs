//! The feedback loop end to end (issue 6): the shipped clone-factory template
//! on a real server against a local provider speaking the Anthropic wire
//! format. Three testers review through their review links (with a
//! disagreement and a tie), the corrections router sends the accepted items
//! back, exactly the targeted blocks and their dependents re-run with the
//! corrections in their prompts, items resolve, and the second version is
//! ready to ship.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::{TestServer, block_status};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// Answers every block of the template with plausible artifacts. The clone
/// tester scores 86 until its prompt carries expert corrections, then 93;
/// the review chat answers in the expert's voice.
const MARKER: &str = "applies expert corrections";

pub struct FakeModel {
    template: Value,
}

impl FakeModel {
    fn content(&self, block: &str, key: &str, format: &str, corrected: bool) -> String {
        let golden = |file: &str| {
            std::fs::read_to_string(repo_root().join("templates/golden").join(file)).unwrap()
        };
        match (block, key) {
            ("soul-extractor", _) => golden("soul.json"),
            ("voice-extractor", _) => golden("voice.json"),
            ("framework-extractor", _) => golden("frameworks.json"),
            ("resource-extractor", _) => golden("resources.json"),
            ("offer-extractor", _) => golden("offers.json"),
            // Two gaps: the compiler's prompt takes up g01, nothing takes up g02.
            ("gap-analyzer", _) => factory_engine::fixtures::gap_analysis().to_string(),
            ("clone-tester", "test-results") => json!({
                "score": if corrected { 93 } else { 86 },
                "scenarios": (1..=5).map(|n| json!({"id": format!("s{n}"), "prompt": format!("Client question {n}"), "response": format!("Say the number. One number. Now stop. ({n})")})).collect::<Vec<_>>()
            })
            .to_string(),
            ("clone-compiler", "system-prompt") if corrected => {
                format!("You are Marisol Vega's clone ({MARKER}). Say the number, then pause for seven seconds.\n")
            }
            _ => match format {
                "json" => json!({"block": block, "expert": "Marisol Vega", "items": [{"name": "Seven Second Silence", "steps": 3}]}).to_string(),
                "md" => format!("# {block}\n\n## Findings\n\n- Marisol Vega teaches the Seven Second Silence to 310 negotiators.\n"),
                "html" => format!("<!doctype html><html><body><h1>{block}</h1><p>Marisol Vega.</p></body></html>"),
                "url" => format!("https://pages.example.test/marisol-vega/{block}"),
                "directory" => json!({"files": {"seven-second-silence.md": "# Seven Second Silence\n"}}).to_string(),
                _ => format!("{block}\n"),
            },
        }
    }

    fn reply(&self, block_id: &str, corrected: bool) -> String {
        let block = self.template["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == block_id)
            .unwrap_or_else(|| panic!("unknown block {block_id}"));
        let artifacts = block["outputs"]["artifacts"].as_array().unwrap();
        let one = |a: &Value| {
            self.content(
                block_id,
                a["key"].as_str().unwrap(),
                a["format"].as_str().unwrap(),
                corrected,
            )
        };
        if artifacts.len() == 1 {
            return one(&artifacts[0]);
        }
        artifacts
            .iter()
            .map(|a| {
                format!(
                    "```artifact:{}\n{}\n```\n",
                    a["key"].as_str().unwrap(),
                    one(a).trim_end()
                )
            })
            .collect()
    }
}

impl Respond for FakeModel {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let all = body.to_string();
        let user = body["messages"][0]["content"].to_string();
        let system = match &body["system"] {
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            other => other.as_str().unwrap_or_default().to_string(),
        };
        // Like a real server at its worst: now and then a 200 with nothing in it.
        if user.contains("(junk)") {
            return ResponseTemplate::new(200).set_body_string("");
        }
        // audit-analyze's llm step: sentences that speak of promises are the
        // voice's (no keyword would say so); the rest are left to keywords.
        if system.contains("You classify a reviewer's free-text feedback") {
            let text = body["messages"][0]["content"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    body["messages"][0]["content"][0]["text"]
                        .as_str()
                        .map(str::to_string)
                })
                .unwrap_or_default();
            let findings: Vec<Value> = text
                .lines()
                .filter_map(|line| line.split_once(". "))
                .filter(|(_, sentence)| sentence.contains("promise"))
                .filter_map(|(n, _)| n.parse::<u64>().ok())
                .map(|n| json!({"sentence": n, "block": "voice-extractor", "verdict": "needs_work", "priority": "critical", "finding_type": "voice"}))
                .collect();
            // Asked with a schema, Anthropic answers through the output tool.
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_a", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "tool_use", "id": "toolu_1", "name": body["tool_choice"]["name"], "input": {"findings": findings}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 50, "output_tokens": 10}
            }));
        }
        // The META chat: answers from the run brief it was given.
        if system.contains("assistant for one run") {
            let open: Vec<&str> = system
                .lines()
                .filter(|l| l.starts_with("- g") && l.contains(" [open] "))
                .filter_map(|l| l[2..].split(' ').next())
                .collect();
            let failed: Vec<&str> = system
                .lines()
                .filter(|l| l.starts_with("- `") && l.ends_with(": failed"))
                .filter_map(|l| l.split('`').nth(1))
                .collect();
            let text = format!(
                "Open gaps: {}. Failed blocks: {}.",
                open.join(", "),
                if failed.is_empty() {
                    "none".to_string()
                } else {
                    failed.join(", ")
                }
            );
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_c", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 300, "output_tokens": 12}
            }));
        }
        let text = match user
            .split("Run the block `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
        {
            // Corrections reach the prompt of a corrected block; its output
            // carries a marker that downstream blocks (the tester) then see.
            Some(block) => self.reply(block, all.contains("- FINDING: ") || all.contains(MARKER)),
            None => "Let's GO! Say the number, then stop talking.".to_string(),
        };
        let usage = json!({"input_tokens": 100, "output_tokens": 20});
        if body["stream"] == true {
            let events = [
                json!({"type": "message_start", "message": {"model": body["model"], "usage": {"input_tokens": 100, "output_tokens": 1}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 20}}),
                json!({"type": "message_stop"}),
            ];
            let sse: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            return ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse);
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": usage
        }))
    }
}

/// A server with the shipped clone-factory template (its skills and golden
/// examples) and a local provider; the three http blocks point at the mock.
pub async fn clone_factory_server() -> (TestServer, MockServer) {
    clone_factory_server_on(false).await
}

/// [`clone_factory_server`] on SQLite or on a fresh PostgreSQL database.
pub async fn clone_factory_server_on(postgres: bool) -> (TestServer, MockServer) {
    let provider = MockServer::start().await;
    let mut template: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(FakeModel {
            template: template.clone(),
        })
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string("https://notebook.example.test/mv"),
        )
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/masteryos"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"profile_id": "mv-1", "profile_url": "https://os.example.test/experts/mv"}),
        ))
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/publish"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"publish-manifest": {"pages": 4}, "live-url": "https://marisol.example.test"}),
        ))
        .mount(&provider)
        .await;
    let uri = provider.uri();
    let settings = factory_runtime::llm::LlmSettings::from_lookup(|name| match name {
        "ANTHROPIC_API_KEY" => Some("sk-loop-test".into()),
        "ANTHROPIC_BASE_URL" => Some(uri.clone()),
        _ => None,
    });
    let t = if postgres {
        TestServer::start_postgres_with(Some(settings)).await
    } else {
        TestServer::start_with(Some(settings)).await
    };
    for block in template["blocks"].as_array_mut().unwrap() {
        match block["id"].as_str().unwrap() {
            "masterybook-sync" => block["inputs"]["config"] = json!({"url": format!("{uri}/sync")}),
            "publish-orchestrator" => {
                block["inputs"]["config"] = json!({"url": format!("{uri}/publish")})
            }
            "masteryos-sync" => {
                let config = block["inputs"]["config"].as_object_mut().unwrap();
                config.remove("url_env");
                config.remove("auth_env");
                config.insert("url".into(), json!(format!("{uri}/masteryos")));
            }
            _ => {}
        }
    }
    std::fs::write(
        t.templates.join("clone-factory.json"),
        serde_json::to_string_pretty(&template).unwrap(),
    )
    .unwrap();
    for dir in ["skills", "golden"] {
        copy_dir(
            &repo_root().join("templates").join(dir),
            &t.templates.join(dir),
        );
    }
    (t, provider)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub const REVIEW_GATES: &[&str] = &["extraction-reviewer", "expert-audit"];

/// Approves every gate except the review pages' until one of `stop_at` waits.
pub async fn run_to(t: &TestServer, run: &str, stop_at: &str) -> Value {
    for _ in 0..40 {
        let doc = t
            .wait_for(run, "the run to stop", |d| {
                d["status"] != "running"
                    || d["blocks"]
                        .as_object()
                        .unwrap()
                        .values()
                        .any(|s| s["status"] == "waiting")
            })
            .await;
        if block_status(&doc, stop_at) == "waiting" || doc["status"] == "done" {
            return doc;
        }
        assert_ne!(doc["status"], "failed", "{}", doc["blocks"]);
        let mut approved = false;
        for (id, state) in doc["blocks"].as_object().unwrap() {
            if state["status"] == "waiting" && !REVIEW_GATES.contains(&id.as_str()) {
                let (s, b) = t
                    .call(
                        Method::POST,
                        &format!("/api/v1/runs/{run}/blocks/{id}/approve"),
                        "reviewer",
                        None,
                    )
                    .await;
                assert_eq!(s, 200, "{b}");
                approved = true;
            }
        }
        if !approved {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    panic!("{stop_at} never waited");
}

/// Runs to the extraction review and approves it as it stands (no findings,
/// so the extraction router passes), then on to `stop_at`.
pub async fn past_the_extraction_review(t: &TestServer, run: &str, stop_at: &str) -> Value {
    run_to(t, run, "extraction-reviewer").await;
    approve_extraction_review(t, run).await;
    run_to(t, run, stop_at).await
}

/// A reviewer approves the waiting extraction review as it stands.
pub async fn approve_extraction_review(t: &TestServer, run: &str) {
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/extraction-reviewer/approve"),
            "reviewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

/// Review links for a tester; returns the token their links carry.
pub async fn review_token(t: &TestServer, run: &str, tester: &str, role: &str) -> (String, Value) {
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/review-links"),
            "operator",
            Some(json!({"tester": tester, "tester_role": role})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let url = b["links"][0]["url"].as_str().unwrap();
    let token = url.split("token=").nth(1).unwrap().to_string();
    (token, b)
}

pub async fn submit(
    t: &TestServer,
    token: &str,
    run: &str,
    block: &str,
    body: Value,
) -> (u16, Value) {
    let response = t
        .http
        .post(t.url(&format!("/api/v1/runs/{run}/blocks/{block}/feedback")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn verdict(key: &str, verdict: &str, priority: &str, correction: &str) -> Value {
    let target = key.split(':').next().unwrap();
    json!({"source_key": key, "skill_target": target, "verdict": verdict, "priority": priority, "correction": correction})
}

async fn items(t: &TestServer, run: &str, query: &str) -> Vec<Value> {
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}{query}"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["total"].as_u64().unwrap() as usize,
        b["items"].as_array().unwrap().len()
    );
    b["items"].as_array().unwrap().clone()
}

fn item<'a>(items: &'a [Value], key: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["source_key"] == key)
        .unwrap_or_else(|| panic!("no item {key}: {items:?}"))
}

/// The prompt an attempt (1-based) of a block sent to the provider.
async fn prompt(t: &TestServer, doc: &Value, block: &str, attempt: usize) -> String {
    let hash = doc["blocks"][block]["history"][attempt - 1]["report"]["llm"]["prompt"]["hash"]
        .as_str()
        .unwrap_or_else(|| panic!("{block} attempt {attempt} recorded no prompt"));
    String::from_utf8(t.store.get_blob(hash).await.unwrap()).unwrap()
}

fn attempts(doc: &Value, block: &str) -> usize {
    doc["blocks"][block]["history"]
        .as_array()
        .map_or(0, Vec::len)
}

const VOICE: &str = "voice-extractor:$.tone.summary";
const SOUL: &str = "soul-extractor:$.identity.one_line";
const DISPUTED: &str = "voice-extractor:$.tone.traits[0].trait";
const LONE: &str = "soul-extractor:$.identity.roles[0]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_route_corrections_back_until_the_clone_is_ready_to_ship() {
    the_whole_loop(false).await;
}

/// The same two rounds with PostgreSQL as the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_the_same_on_postgres() {
    the_whole_loop(true).await;
}

/// Under the `expert-2` profile most gates are off, but the expert's two
/// review pages still stop the run, and their findings still reach the
/// blocks that caused them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_routes_corrections_under_expert_2() {
    let (t, _provider) = clone_factory_server_on(false).await;
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "clone-factory", "params": {"expert_name": "Marisol Vega"}, "autonomy_profile": "expert-2"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    assert_eq!(b["blocks"]["deep-research"]["autonomy"], "auto");
    for gated in ["extraction-reviewer", "expert-audit", "clone-tester"] {
        assert_eq!(b["blocks"][gated]["autonomy"], "gate", "{gated}");
    }
    let doc = run_to(&t, &run, "extraction-reviewer").await;
    assert_eq!(block_status(&doc, "extraction-reviewer"), "waiting");
    assert!(
        doc["blocks"]["voice-extractor"]["decisions"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "extractors ran without a gate"
    );

    let (samuel, _) = review_token(&t, &run, "samuel-ngu", "expert").await;
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({
            "items": [verdict(VOICE, "wrong", "high", "I use 'Let's GO!' not 'Let us proceed'")],
            "close": true
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], true, "{b}");

    // The extraction router sends the finding back before anything is compiled.
    let doc = t
        .wait_for(
            &run,
            "the corrected re-run to reach the extraction review",
            |d| d["version"] == 2 && block_status(d, "extraction-reviewer") == "waiting",
        )
        .await;
    assert_eq!(attempts(&doc, "clone-compiler"), 0);
    assert_eq!(attempts(&doc, "voice-extractor"), 2);
    let voice_prompt = prompt(&t, &doc, "voice-extractor", 2).await;
    assert!(
        voice_prompt.contains("I use 'Let's GO!' not 'Let us proceed'"),
        "{voice_prompt}"
    );
    assert_eq!(
        attempts(&doc, "soul-extractor"),
        1,
        "nothing was routed to soul"
    );
}

async fn the_whole_loop(postgres: bool) {
    let (t, provider) = clone_factory_server_on(postgres).await;
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "clone-factory", "params": {"expert_name": "Marisol Vega"}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    run_to(&t, &run, "extraction-reviewer").await;

    let (samuel, links) = review_token(&t, &run, "samuel-ngu", "expert").await;
    assert_eq!(
        links["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["block"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["extraction-reviewer", "expert-audit"]
    );
    let (will, _) = review_token(&t, &run, "will-preble", "product_lead").await;
    let (derek, _) = review_token(&t, &run, "derek", "team").await;

    // A review link opens its run's review page and nothing else.
    let page = t
        .http
        .get(t.url(&format!("/runs/{run}/review/extraction-reviewer")))
        .bearer_auth(&derek)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(VOICE) && html.contains("Calm, direct and warm"),
        "every extraction item is listed"
    );
    for (path, role_needed) in [
        (format!("/api/v1/runs/{run}"), "viewer"),
        ("/api/v1/runs".to_string(), "viewer"),
        (format!("/runs/{run}"), "viewer"),
    ] {
        let r = t
            .http
            .get(t.url(&path))
            .bearer_auth(&derek)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            403,
            "{path} ({role_needed}) must be refused to a review link"
        );
    }

    // Bad submissions are refused by name and store nothing.
    for (body, names) in [
        (
            json!({"items": [{"source_key": "x:$.a", "skill_target": "ghost", "verdict": "wrong"}]}),
            "skill_target `ghost`",
        ),
        (
            json!({"items": [{"source_key": VOICE, "skill_target": "voice-extractor", "verdict": "wrong", "priority": "urgent"}]}),
            "priority `urgent`",
        ),
        (
            json!({"items": [verdict(VOICE, "wrong", "high", ""), verdict(VOICE, "correct", "high", "")]}),
            "judged twice",
        ),
        (
            json!({"items": [{"source_key": " ", "skill_target": "voice-extractor", "verdict": "wrong"}]}),
            "source_key is empty",
        ),
    ] {
        let (s, b) = submit(&t, &samuel, &run, "extraction-reviewer", body).await;
        assert_eq!(s, 422, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(names),
            "{b}"
        );
    }
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({"tester_role": "external"}),
    )
    .await;
    assert_eq!(s, 403, "a review link cannot change who it reviews as: {b}");
    let (s, b) = submit(&t, &samuel, &run, "expert-audit", json!({"ratings": []})).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not published its review page yet"),
        "{b}"
    );
    assert!(items(&t, &run, "").await.is_empty());

    // Extraction review, version 1.
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({
            "items": [
                verdict(VOICE, "wrong", "high", "I use 'Let's GO!' not 'Let us proceed'"),
                verdict(SOUL, "needs_work", "critical", "I never rank people against each other"),
                verdict("voice-extractor:$.expert", "correct", "low", ""),
                verdict("soul-extractor:$.expert", "correct", "low", ""),
            ],
            "free_text": "Mostly right."
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"], "v1");
    let change = |key: &str| {
        b["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source_key"] == key)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        change(VOICE)["to"],
        "accepted",
        "the expert alone confirms (3.0 ≥ 2.0)"
    );
    assert!(
        change(VOICE)["reason"]
            .as_str()
            .unwrap()
            .contains("samuel-ngu (expert 3.0)")
    );
    assert_eq!(
        b["changes"].as_array().unwrap().len(),
        2,
        "items cleared by everyone are no findings"
    );

    // Disagreement: the team member flags, the product lead clears and wins.
    let (s, b) = submit(&t, &derek, &run, "extraction-reviewer", json!({
        "items": [verdict(DISPUTED, "wrong", "medium", "Say 'Blunt'"), verdict(LONE, "needs_work", "low", "Mediator first")]
    })).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = submit(&t, &will, &run, "extraction-reviewer", json!({
        "items": [verdict(DISPUTED, "correct", "medium", ""), verdict(SOUL, "correct", "critical", "")]
    })).await;
    assert_eq!(s, 200, "{b}");
    // Tie on SOUL: expert 3.0 flags, product lead 2.0 + team 1.0 clear.
    let (s, b) = submit(
        &t,
        &derek,
        &run,
        "extraction-reviewer",
        json!({
            "items": [verdict(SOUL, "correct", "critical", "")]
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let all = items(&t, &run, "").await;
    assert_eq!(item(&all, VOICE)["status"], "accepted");
    assert_eq!(item(&all, VOICE)["consensus_score"], 3.0);
    assert_eq!(item(&all, VOICE)["source"], "extraction-review");
    assert_eq!(
        item(&all, VOICE)["expert_correction"],
        "I use 'Let's GO!' not 'Let us proceed'"
    );
    assert_eq!(
        item(&all, DISPUTED)["status"],
        "rejected",
        "2.0 clearing outweighs 1.0 flagging"
    );
    assert_eq!(
        item(&all, LONE)["status"],
        "open",
        "one team member (1.0) needs more validation"
    );
    assert_eq!(
        item(&all, SOUL)["status"],
        "triage",
        "3.0 against 3.0 is a tie"
    );
    assert_eq!(item(&all, SOUL)["flagged_by"][0]["tester"], "samuel-ngu");
    assert_eq!(item(&all, SOUL)["flagged_by"][0]["weight"], 3.0);
    let accepted = items(&t, &run, "&status=accepted&skill_target=voice-extractor").await;
    assert_eq!(accepted.len(), 1);

    // Every status change is an event with its reason.
    let (_, events) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    let changes: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "item_changed")
        .collect();
    let soul_triage = changes
        .iter()
        .find(|e| e["source_key"] == SOUL && e["to"] == "triage")
        .expect("triage event");
    assert!(
        soul_triage["reason"].as_str().unwrap().contains("a tie"),
        "{soul_triage}"
    );
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "feedback_submitted"
                && e["tester"] == "will-preble"
                && e["tester_role"] == "product_lead")
    );

    // Closing is refused while a critical item is in triage.
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({"close": true}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], false);
    assert!(b["gate"]["reason"].as_str().unwrap().contains(SOUL), "{b}");
    assert_eq!(
        block_status(&t.doc(&run).await, "extraction-reviewer"),
        "waiting"
    );
    // The team settles the tie, then the review closes.
    let soul_id = item(&all, SOUL)["id"].as_str().unwrap().to_string();
    let (s, b) = t
        .call(
            Method::PATCH,
            &format!("/api/v1/improvement-items/{soul_id}"),
            "reviewer",
            Some(
                json!({"status": "accepted", "resolution_notes": "team call: the expert is right"}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "accepted");
    // A later vote that leaves the consensus where it was (still a tie)
    // does not undo the team's decision.
    let (s, b) = submit(
        &t,
        &derek,
        &run,
        "extraction-reviewer",
        json!({"items": [verdict(SOUL, "correct", "critical", "")]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changes"][0]["to"], "accepted", "{b}");
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({"close": true}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], true, "{b}");

    // The extraction router routes the review's accepted items at once: the
    // extractors re-run with them and the expert reviews the corrected
    // extraction before anything is compiled from it.
    let doc = t
        .wait_for(&run, "the re-run to reach the extraction review", |d| {
            d["version"] == 2 && block_status(d, "extraction-reviewer") == "waiting"
        })
        .await;
    assert_eq!(
        attempts(&doc, "clone-compiler"),
        0,
        "nothing was compiled from the uncorrected extraction"
    );
    let (_, events) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    let events = events["events"].as_array().unwrap().clone();
    let routed = events
        .iter()
        .find(|e| e["type"] == "corrections_routed")
        .expect("routed")
        .clone();
    assert_eq!(routed["router"], "extraction-router");
    assert_eq!(
        (routed["from"].as_u64(), routed["to"].as_u64()),
        (Some(1), Some(2))
    );
    let targets: Vec<&String> = routed["targets"].as_object().unwrap().keys().collect();
    assert_eq!(targets, ["soul-extractor", "voice-extractor"]);
    // Exactly the targets and their descendants that had run were reset, in
    // the router's commit.
    let pipeline = factory_engine::load_pipeline(
        &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    let had_run: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "block_started" && e["seq"].as_u64() < routed["seq"].as_u64())
        .map(|e| e["block"].as_str().unwrap())
        .collect();
    let mut expected = std::collections::BTreeSet::new();
    for target in &targets {
        let i = pipeline.index_of(target).unwrap();
        expected.insert(target.to_string());
        for d in pipeline.descendants(i) {
            expected.insert(pipeline.blocks()[d].id.clone());
        }
    }
    expected.retain(|b| had_run.contains(b.as_str()));
    assert!(expected.contains("extraction-reviewer") && expected.contains("voice-extractor"));
    assert!(
        !had_run.contains("gap-analyzer") && !had_run.contains("lead-magnet-builder"),
        "what reads the extractions waits for the router: {had_run:?}"
    );
    let reset: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| {
            e["type"] == "block_reset"
                && e["seq"].as_u64() < routed["seq"].as_u64()
                && e["at"] == routed["at"]
        })
        .map(|e| e["block"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reset, expected);
    // The routed corrections reached the targets' stored rows: the store
    // holds exactly what the log replays to.
    let stored = t.store.load_run(&run).await.unwrap().doc;
    let log = t.store.events(&run, 0).await.unwrap();
    assert_eq!(factory_core::run::RunDoc::replay(&log).unwrap(), stored);
    assert!(stored.blocks["voice-extractor"].corrections.is_some());
    assert_eq!(routed["targets"]["voice-extractor"]["version"], "v1→v2");
    assert_eq!(
        routed["targets"]["soul-extractor"]["items"][0]["priority"],
        "critical"
    );
    for kept in [
        "framework-extractor",
        "resource-extractor",
        "offer-extractor",
        "deep-research",
        "rubric-builder",
    ] {
        assert_eq!(attempts(&doc, kept), 1, "{kept} keeps its artifacts");
    }
    for rerun in ["voice-extractor", "soul-extractor", "extraction-reviewer"] {
        assert_eq!(attempts(&doc, rerun), 2, "{rerun} re-ran");
    }
    let voice_prompt = prompt(&t, &doc, "voice-extractor", 2).await;
    assert!(
        voice_prompt.contains("## EXPERT CORRECTIONS (MUST APPLY)")
            && voice_prompt.contains("I use 'Let's GO!' not 'Let us proceed'"),
        "{voice_prompt}"
    );
    assert!(
        !voice_prompt.contains("I never rank people"),
        "soul's correction stays with soul"
    );
    assert!(
        !prompt(&t, &doc, "voice-extractor", 1)
            .await
            .contains("- FINDING: ")
    );

    // Resolution: the corrected extractors' items are resolved in v2.
    let all = items(&t, &run, "").await;
    for key in [VOICE, SOUL] {
        assert_eq!(item(&all, key)["status"], "resolved", "{key}");
        assert_eq!(item(&all, key)["resolved_in_version"], "v2");
        assert!(
            item(&all, key)["resolution_notes"]
                .as_str()
                .unwrap()
                .contains("attempt 2")
        );
    }

    // Version 2: the expert finds the extraction right; it is compiled.
    let keys = [
        VOICE,
        SOUL,
        "voice-extractor:$.expert",
        "soul-extractor:$.expert",
        DISPUTED,
        "voice-extractor:$.tone.traits[0].example",
        "soul-extractor:$.source",
        "voice-extractor:$.source",
        "soul-extractor:$.identity.origin_story",
        LONE,
    ];
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({
            "items": keys.iter().map(|k| verdict(k, "correct", "low", "")).collect::<Vec<_>>(),
            "close": true
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"], "v2");
    assert_eq!(b["gate"]["approved"], true, "{b}");

    // Expert audit, version 2: three of five scenarios sound like the expert.
    let doc = run_to(&t, &run, "expert-audit").await;
    assert_eq!(doc["version"], 2, "nothing left to route after the review");
    assert_eq!(doc["blocks"]["clone-tester"]["score"], 86.0);
    let audit_page = t
        .http
        .get(t.url(&format!("/runs/{run}/review/expert-audit")))
        .bearer_auth(&samuel)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit_page.contains("Client question 3") && audit_page.contains("Talk to the clone"),
        "{audit_page}"
    );
    let chat = t
        .http
        .post(t.url(&format!(
            "/api/v1/runs/{run}/blocks/expert-audit/review-chat"
        )))
        .bearer_auth(&samuel)
        .json(&json!({"message": "How do you open a salary talk?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status().as_u16(), 200);
    assert!(
        chat.json::<Value>().await.unwrap()["reply"]
            .as_str()
            .unwrap()
            .contains("Let's GO!")
    );
    let ratings: Vec<Value> = (1..=5)
        .map(|n| json!({"scenario": format!("s{n}"), "sounds_like_me": n <= 3}))
        .collect();
    let (s, b) = submit(&t, &samuel, &run, "expert-audit", json!({
        "ratings": ratings,
        "items": [{"source_key": "expert-audit:scenario:s4", "skill_target": "clone-compiler", "verdict": "wrong", "priority": "high",
                   "source_text": "Scenario s4", "correction": "Pause for seven seconds after the number"}],
        "answers": [{"question": "What would you never say?", "answer": "Let us proceed"}],
        "close": true
    })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], true, "{b}");
    let audit_feedback = b["feedback_id"].as_str().unwrap().to_string();

    // The corrections router sends the audit's item to the compiler; the run
    // re-compiles, re-tests and stops at the expert audit again (v3). The
    // extraction is not reviewed again: nothing before the compiler changed.
    let doc = run_to(&t, &run, "expert-audit").await;
    assert_eq!(doc["version"], 3);
    let (_, events) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    let second = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "corrections_routed")
        .nth(1)
        .expect("routed again")
        .clone();
    assert_eq!(second["router"], "corrections-router");
    // The router's plan records the audit's feedback_id and improvement
    // summary (seed 002's expert-audit outputs, which exist only once the
    // expert has submitted).
    let (s, plan) = t
        .call_text(
            &format!("/api/v1/runs/{run}/blocks/corrections-router/artifacts/correction-plan"),
            "viewer",
        )
        .await;
    assert_eq!(s, 200, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["feedback_ids"], json!([audit_feedback]), "{plan}");
    assert_eq!(
        plan["improvement_summary"]["by_source"],
        json!({"expert-audit": 1}),
        "{plan}"
    );
    assert_eq!(
        second["targets"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["clone-compiler"]
    );
    assert_eq!(attempts(&doc, "extraction-reviewer"), 2);
    assert_eq!(doc["blocks"]["clone-tester"]["score"], 93.0);
    let compiler = prompt(&t, &doc, "clone-compiler", 2).await;
    assert!(
        compiler.contains("Pause for seven seconds after the number"),
        "{compiler}"
    );
    let all = items(&t, &run, "").await;
    assert_eq!(item(&all, "expert-audit:scenario:s4")["status"], "resolved");
    assert_eq!(
        item(&all, VOICE)["status"],
        "resolved",
        "a later 'correct' keeps it resolved"
    );
    assert_eq!(
        item(&all, LONE)["status"],
        "rejected",
        "the expert cleared the lone flag"
    );

    let ratings: Vec<Value> = (1..=5)
        .map(|n| json!({"scenario": format!("s{n}"), "sounds_like_me": true}))
        .collect();
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "expert-audit",
        json!({"ratings": ratings, "close": true}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], true, "{b}");
    let doc = run_to(&t, &run, "never").await;
    assert_eq!(
        doc["status"], "done",
        "no accepted items: the router lets the run proceed"
    );
    assert_eq!(doc["version"], 3);
    assert_eq!(attempts(&doc, "boarding-orchestrator"), 1);

    // The finished clone went to MasteryOS; its Outputs tab sends it again
    // (same key: the run version's), re-running nothing else.
    let synced = |received: Vec<wiremock::Request>| -> Vec<String> {
        received
            .into_iter()
            .filter(|r| r.url.path() == "/masteryos")
            .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
            .collect()
    };
    let first = provider.received_requests().await.unwrap();
    let body: Value = first
        .iter()
        .find(|r| r.url.path() == "/masteryos")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .unwrap();
    let key = factory_core::http_call::idempotency_key(&run, 3, "masteryos-sync", None, &body);
    assert_eq!(
        synced(provider.received_requests().await.unwrap()),
        std::slice::from_ref(&key)
    );
    let page = format!("/runs/{run}/blocks/masteryos-sync");
    let (s, html) = t.call_text(&page, "operator").await;
    assert_eq!(s, 200);
    assert!(
        html.contains("id=\"send-again-form\"") && html.contains(">Sync to MasteryOS</button>"),
        "{html}"
    );
    assert!(html.contains("nothing else re-runs"), "{html}");
    let (_, html) = t.call_text(&page, "viewer").await;
    assert!(!html.contains("send-again-form"), "a viewer cannot send it");
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/masteryos-sync/run"),
            "operator",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let doc = t
        .wait_for(&run, "the sync to run again", |d| {
            d["status"] == "done"
                && d["blocks"]["masteryos-sync"]["history"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 2
        })
        .await;
    assert_eq!(attempts(&doc, "boarding-orchestrator"), 1);
    assert_eq!(attempts(&doc, "publish-orchestrator"), 1);
    assert_eq!(
        synced(provider.received_requests().await.unwrap()),
        [key.clone(), key]
    );

    // clone-compiler asked the model about the gaps (`gap_check: "llm"`);
    // this provider answered prose, so the terms decided, and the report says why.
    let doc = t.doc(&run).await;
    let checks = &doc["blocks"]["clone-compiler"]["history"][0]["report"]["gap_checks"];
    assert!(
        checks["problem"]
            .as_str()
            .is_some_and(|p| p.contains("no JSON object") && p.ends_with("the terms decide")),
        "{checks}"
    );
    // The gaps gap-analyzer found (in v2, again): listed, shown on its page,
    // and decided by a reviewer.
    let (s, g) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/gaps"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{g}");
    let ids: Vec<&str> = g["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gap"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["g01", "g02"], "{g}");
    assert!(
        g["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["source"] == "gap-analyzer")
    );
    let (_, html) = t
        .call_text(&format!("/runs/{run}/blocks/gap-analyzer"), "reviewer")
        .await;
    assert!(
        html.contains("id=\"gaps\"") && html.contains("data-gap=\"g02\""),
        "{html}"
    );
    let decide = |id: &str, status: &str, role: &'static str| {
        let path = format!("/api/v1/runs/{run}/gaps/{id}");
        let body = json!({"status": status, "note": "Calls come after launch"});
        let t = &t;
        async move { t.call(Method::POST, &path, role, Some(body)).await }
    };
    let (s, b) = decide("g02", "accepted", "reviewer").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gap"]["status"], "accepted");
    assert_eq!(b["gap"]["reason"], "Calls come after launch");
    assert_eq!(decide("g02", "accepted", "reviewer").await.0, 409);
    assert_eq!(decide("g02", "addressed", "reviewer").await.0, 422);
    assert_eq!(decide("g77", "open", "reviewer").await.0, 404);
    assert_eq!(decide("g02", "open", "viewer").await.0, 403);

    // Convergence across the three versions: v3 is ready to ship.
    let (s, c) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/convergence"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |r: &Value| {
        (
            r["auto_score"].as_f64(),
            r["approval"].as_f64(),
            r["accuracy"].as_f64(),
            r["critical"].as_u64(),
            r["high"].as_u64(),
        )
    };
    // v1: reviewed, never compiled; each tester's latest verdict per item:
    // samuel 2 of 4 correct, derek 1 of 3 (he cleared the soul item
    // later), will 2 of 2; the soul item was open at the end of v1.
    assert_eq!(row(&rows[0]), (None, None, Some(55.6), Some(1), Some(1)));
    assert_eq!(rows[0]["status"], "superseded");
    // v2: the corrected extraction, compiled and audited; the audit's high
    // item was open at its end.
    assert_eq!(
        row(&rows[1]),
        (Some(86.0), Some(60.0), Some(100.0), Some(0), Some(1))
    );
    // v3: only the compiler changed, so v2's extraction accuracy carries.
    assert_eq!(
        row(&rows[2]),
        (Some(93.0), Some(100.0), Some(100.0), Some(0), Some(0))
    );
    assert_eq!(c["ready_to_ship"], true, "{c}");
    assert_eq!(rows[2]["status"], "ready_to_ship");

    // The feed told of every review and, once, of the run becoming ready
    // to ship (what notification rules send).
    let (s, feed) = t
        .call(
            Method::GET,
            &format!("/api/v1/events?run={run}&name=review.submitted&limit=1000"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{feed}");
    let reviews = feed["events"].as_array().unwrap();
    let (_, log) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    let submitted = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "feedback_submitted")
        .count();
    assert!(submitted >= 3, "{log}");
    assert_eq!(reviews.len(), submitted, "one event per review: {feed}");
    let first = reviews.last().unwrap();
    assert_eq!(first["payload"]["source"], "extraction-review", "{first}");
    assert!(first["payload"]["items"].as_u64().unwrap() > 0, "{first}");
    assert!(first["payload"]["tester"].is_string(), "{first}");
    let (_, ready) = t
        .call(
            Method::GET,
            &format!("/api/v1/events?run={run}&name=run.ready_to_ship"),
            "viewer",
            None,
        )
        .await;
    let ready = ready["events"].as_array().unwrap();
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["payload"]["version"], "v3");
    // A person reopens a settled critical item (none may be open): not ready; settling
    // it again makes the run ready once more, and the feed says so — a
    // change of items, not only a review, can make a run ready to ship.
    let (_, settled) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}&status=resolved"),
            "viewer",
            None,
        )
        .await;
    let weighty = settled["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["priority"] == "critical")
        .unwrap_or_else(|| panic!("a resolved critical item: {settled}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    for status in ["accepted", "resolved"] {
        let (s, b) = t
            .call(
                Method::PATCH,
                &format!("/api/v1/improvement-items/{weighty}"),
                "reviewer",
                Some(json!({"status": status, "resolution_notes": "checked again"})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let (_, c) = t
            .call(
                Method::GET,
                &format!("/api/v1/runs/{run}/convergence"),
                "viewer",
                None,
            )
            .await;
        assert_eq!(c["ready_to_ship"], status == "resolved", "{status}: {c}");
    }
    let (_, ready) = t
        .call(
            Method::GET,
            &format!("/api/v1/events?run={run}&name=run.ready_to_ship"),
            "viewer",
            None,
        )
        .await;
    let ready = ready["events"].as_array().unwrap();
    assert_eq!(ready.len(), 2, "{ready:?}");
    assert_eq!(
        ready[0]["payload"]["version"], "v3",
        "newest first: {ready:?}"
    );
    let page = t
        .http
        .get(t.url(&format!("/runs/{run}/convergence")))
        .bearer_auth(&t.tokens["viewer"])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Ready to ship") && page.contains("86.0%") && page.contains("93.0%"),
        "{page}"
    );
}

/// audit-analyze: a review's free text becomes classified items beside the
/// marked ones, machine-classified and keyed by sentence; a sentence that
/// names no block stays free text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_feedback_becomes_classified_items() {
    let (t, _provider) = clone_factory_server().await;
    let run = t
        .start_run("clone-factory", json!({"expert_name": "Marisol Vega"}))
        .await;
    run_to(&t, &run, "extraction-reviewer").await;
    let (samuel, _) = review_token(&t, &run, "samuel-ngu", "expert").await;
    let free_text = "Her tone is far too formal in every sample. \
                     The offers list the wrong price for the VIP Day! \
                     It was lovely to read overall.";
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({"free_text": free_text}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["unclassified"],
        json!(["It was lovely to read overall"]),
        "{b}"
    );
    let found = items(&t, &run, "").await;
    let machine: Vec<&Value> = found
        .iter()
        .filter(|i| {
            i["source_key"]
                .as_str()
                .unwrap()
                .starts_with("free-text:extraction-reviewer:")
        })
        .collect();
    let mut targets: Vec<(&str, &str)> = machine
        .iter()
        .map(|i| {
            (
                i["skill_target"].as_str().unwrap(),
                i["priority"].as_str().unwrap(),
            )
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [("offer-extractor", "high"), ("voice-extractor", "medium")],
        "{found:?}"
    );
    assert!(
        machine.iter().all(|i| i["source_text"]
            .as_str()
            .unwrap()
            .starts_with("[machine-classified from free text by keywords: ")),
        "{machine:?}"
    );
    // The same sentence from a second tester is the same item.
    let (ada, _) = review_token(&t, &run, "ada", "team").await;
    let (s, b) = submit(
        &t,
        &ada,
        &run,
        "extraction-reviewer",
        json!({"free_text": "Her tone is far too formal in every sample."}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let again = items(&t, &run, "").await;
    assert_eq!(again.len(), found.len(), "{again:?}");
}

/// audit-analyze's llm step: with a provider configured, the model places
/// the sentences keywords cannot (a promise → the voice); keywords still
/// place what the model leaves; a provider answering 200 with an empty body
/// leaves the keywords in charge, and the answer says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_is_classified_by_the_llm_step_when_a_provider_answers() {
    let (t, _provider) = clone_factory_server().await;
    let run = t
        .start_run("clone-factory", json!({"expert_name": "Marisol Vega"}))
        .await;
    run_to(&t, &run, "extraction-reviewer").await;
    let (samuel, _) = review_token(&t, &run, "samuel-ngu", "expert").await;
    let free_text = "She would never promise results within a week. \
                     The offers list the wrong price for the VIP Day! \
                     It was lovely to read overall.";
    let (s, b) = submit(
        &t,
        &samuel,
        &run,
        "extraction-reviewer",
        json!({"free_text": free_text}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["classifier"].as_str().unwrap().starts_with("llm:"), "{b}");
    assert!(b.get("analysis_problem").is_none(), "{b}");
    assert_eq!(b["unclassified"], json!(["It was lovely to read overall"]));
    let found = items(&t, &run, "").await;
    let mut machine: Vec<(String, String, String)> = found
        .iter()
        .filter(|i| i["source_key"].as_str().unwrap().starts_with("free-text:"))
        .map(|i| {
            let text = i["source_text"].as_str().unwrap();
            (
                i["skill_target"].as_str().unwrap().to_string(),
                i["priority"].as_str().unwrap().to_string(),
                text[..text.find(']').unwrap()].to_string(),
            )
        })
        .collect();
    machine.sort();
    assert_eq!(machine.len(), 2, "{found:?}");
    assert_eq!(machine[0].0, "offer-extractor");
    assert_eq!(
        machine[0].2,
        "[machine-classified from free text by keywords: offers, price"
    );
    assert_eq!(
        (machine[1].0.as_str(), machine[1].1.as_str()),
        ("voice-extractor", "critical")
    );
    assert!(
        machine[1]
            .2
            .starts_with("[machine-classified from free text by llm "),
        "{machine:?}"
    );

    // The provider answers 200 with an empty body: keywords, and why.
    let (ada, _) = review_token(&t, &run, "ada", "team").await;
    let (s, b) = submit(
        &t,
        &ada,
        &run,
        "extraction-reviewer",
        json!({"free_text": "The offers quote a made up price (junk)."}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["classifier"], "keywords", "{b}");
    assert!(
        b["analysis_problem"]
            .as_str()
            .unwrap()
            .starts_with("the llm step failed"),
        "{b}"
    );
    let after = items(&t, &run, "").await;
    assert_eq!(
        after.len(),
        found.len() + 1,
        "the keywords still made an item"
    );
}

/// The META chat: a question about the run goes to the model with the
/// run's brief — blocks and their states, gaps, corrections — and the
/// answer, grounded in it, is kept with the question; viewers read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_chat_answers_from_the_whole_run() {
    let (t, provider) = clone_factory_server().await;
    let run = t
        .start_run("clone-factory", json!({"expert_name": "Marisol Vega"}))
        .await;
    run_to(&t, &run, "extraction-reviewer").await;
    // A team member's remark (weight 1.0: the item stays open, nothing is
    // routed), then the review is approved and the gaps are found.
    let (derek, _) = review_token(&t, &run, "derek", "team").await;
    let (s, b) = submit(
        &t,
        &derek,
        &run,
        "extraction-reviewer",
        json!({"free_text": "The offers list the wrong price for the VIP Day!"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    past_the_extraction_review(&t, &run, "gap-analyzer").await;
    t.wait_for(&run, "the gaps", |d| d["gaps"]["g02"].is_object())
        .await;

    let ask = |role: &'static str, message: &'static str| {
        let t = &t;
        let run = run.clone();
        async move {
            t.call(
                Method::POST,
                &format!("/api/v1/runs/{run}/chat"),
                role,
                Some(json!({ "message": message })),
            )
            .await
        }
    };
    let (s, b) = ask("reviewer", "What is still open in this run?").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["reply"], "Open gaps: g01, g02. Failed blocks: none.",
        "{b}"
    );
    assert!(b["context_chars"].as_u64().unwrap() > 2000, "{b}");

    // What the model was given: the whole run.
    let requests = provider.received_requests().await.unwrap();
    let chat: Value = requests
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .rfind(|b| b.to_string().contains("assistant for one run"))
        .unwrap();
    let system = chat["system"].to_string();
    for needle in [
        "template `clone-factory`",
        "- `offer-extractor` (",
        "- `extraction-reviewer` (",
        "at its after-gate",
        "- `gap-analyzer` (",
        "g01 [open]",
        "for `offer-extractor` (from extraction-review)",
        "wrong price for the VIP Day",
    ] {
        assert!(system.contains(needle), "{needle} not in {system}");
    }
    assert!(chat.to_string().contains("What is still open in this run?"));

    // A second turn carries the first.
    let (s, _) = ask("reviewer", "And which blocks failed?").await;
    assert_eq!(s, 200);
    let requests = provider.received_requests().await.unwrap();
    let last: Value = serde_json::from_slice(&requests.last().unwrap().body).unwrap();
    assert!(last["messages"].to_string().contains("Open gaps: g01, g02"));

    // Kept: four messages, in order, readable by a viewer; the run page shows them.
    let (s, history) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/chat"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let messages = history["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[0]["actor"], "user:reviewer");
    assert_eq!(history["unavailable"], Value::Null);
    // Not the block chats': the review page's chat is empty.
    let (_, block_chat) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/extraction-reviewer/chat"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(block_chat["messages"], json!([]));
    let (s, page) = t.call_text(&format!("/runs/{run}"), "reviewer").await;
    assert_eq!(s, 200);
    assert!(page.contains("id=\"run-chat-form\""), "{page}");
    assert!(page.contains("Open gaps: g01, g02. Failed blocks: none."));

    // Refusals: a viewer may not ask, an empty question, and a provider
    // that answers 200 with nothing — none of them is kept.
    let (s, _) = ask("viewer", "hello?").await;
    assert_eq!(s, 403);
    let (s, b) = ask("reviewer", "   ").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("empty_message"))
    );
    let (s, b) = ask("reviewer", "Anything else? (junk)").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (502, Some("llm_error")),
        "{b}"
    );
    let (_, history) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/chat"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
}
