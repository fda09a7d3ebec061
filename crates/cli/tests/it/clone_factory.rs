//! The whole clone-factory template, end to end through the CLI, against a
//! local server speaking the Anthropic Messages wire format (streaming) and a
//! local publishing/sync service. The provider code path is the one a user
//! with an API key takes; only the base URL differs.

use std::sync::Mutex;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{factory, repo_root, sent_prompt, status_json};

const INPUT_TOKENS: u64 = 1_000;
const OUTPUT_TOKENS: u64 = 200;

/// Plausible artifacts per block, from the template's declarations and the
/// golden examples.
struct FakeModel {
    template: Value,
    calls: Mutex<u64>,
}

impl FakeModel {
    fn content(&self, block: &str, key: &str, format: &str) -> String {
        let golden = |file: &str| {
            std::fs::read_to_string(repo_root().join("templates/golden").join(file)).unwrap()
        };
        match (block, key) {
            ("soul-extractor", _) => golden("soul.json"),
            ("voice-extractor", _) => golden("voice.json"),
            ("framework-extractor", _) => golden("frameworks.json"),
            ("resource-extractor", _) => golden("resources.json"),
            ("offer-extractor", _) => golden("offers.json"),
            ("clone-tester", "test-results") => json!({"score": 91, "scenarios": [{"id": "s1", "score": 91, "notes": "Marisol Vega's Seven Second Silence applied"}]}).to_string(),
            _ => match format {
                "json" => json!({"block": block, "expert": "Marisol Vega", "items": [{"name": "Seven Second Silence", "steps": 3}]}).to_string(),
                "md" => format!("# {block}\n\n## Findings\n\n- Marisol Vega teaches the Seven Second Silence to 310 negotiators.\n- The 42 Percent Anchor opens every offer.\n"),
                "html" => format!("<!doctype html><html><body><h1>{block}</h1><p>Marisol Vega: Seven Second Silence.</p></body></html>"),
                "url" => format!("https://pages.example.test/marisol-vega/{block}"),
                "directory" => json!({"files": {"seven-second-silence.md": "# Seven Second Silence\n\nCount to 7 after the offer.\n"}}).to_string(),
                _ => format!("{block} v1\n"),
            },
        }
    }

    fn reply(&self, block_id: &str) -> String {
        let block = self.template["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == block_id)
            .unwrap_or_else(|| panic!("unknown block {block_id}"));
        let artifacts = block["outputs"]["artifacts"].as_array().unwrap();
        if artifacts.len() == 1 {
            let a = &artifacts[0];
            return self.content(
                block_id,
                a["key"].as_str().unwrap(),
                a["format"].as_str().unwrap(),
            );
        }
        artifacts
            .iter()
            .map(|a| {
                let key = a["key"].as_str().unwrap();
                format!(
                    "```artifact:{key}\n{}\n```\n",
                    self.content(block_id, key, a["format"].as_str().unwrap())
                        .trim_end()
                )
            })
            .collect()
    }
}

impl Respond for FakeModel {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        assert_eq!(request.headers.get("x-api-key").unwrap(), "sk-e2e-test");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let user = body["messages"][0]["content"].to_string();
        let block = user
            .split("Run the block `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .expect("the task names the block")
            .to_string();
        *self.calls.lock().unwrap() += 1;
        let text = self.reply(&block);
        let events = [
            json!({"type": "message_start", "message": {"model": body["model"], "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": OUTPUT_TOKENS}}),
            json!({"type": "message_stop"}),
        ];
        let sse: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect();
        ResponseTemplate::new(200)
            .insert_header("content-type", "text/event-stream")
            .set_body_string(sse)
    }
}

#[test]
fn the_whole_clone_factory_runs_against_a_local_provider() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(MockServer::start());
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    runtime.block_on(async {
        Mock::given(method("POST")).and(path("/v1/messages")).respond_with(FakeModel { template, calls: Mutex::new(0) }).mount(&server).await;
        Mock::given(method("POST")).and(path("/sync")).respond_with(ResponseTemplate::new(200).set_body_string("https://notebook.example.test/marisol-vega")).mount(&server).await;
        Mock::given(method("POST"))
            .and(path("/publish"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"publish-manifest": {"pages": 4}, "live-url": "https://marisol.example.test"})))
            .mount(&server)
            .await;
    });

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let env = |command: &mut assert_cmd::Command| {
        command
            .env("ANTHROPIC_BASE_URL", server.uri())
            .env("ANTHROPIC_API_KEY", "sk-e2e-test")
            .env("MASTERYOS_SYNC_URL", format!("{}/sync", server.uri()))
            .env("PUBLISH_URL", format!("{}/publish", server.uri()))
            .env("FACTORY_WORK_DIR", dir.path().join("work"))
            .current_dir(dir.path());
    };
    let template = repo_root().join("templates/clone-factory.json");
    let mut run = factory(&db);
    env(&mut run);
    let output = run
        .args([
            "run",
            template.to_str().unwrap(),
            "-p",
            "expert_name=Marisol Vega",
            "--retry-backoff-ms",
            "10",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run_id = String::from_utf8(output.stdout).unwrap().trim().to_string();

    // Gates, through the CLI: reject the framework once, then approve everything.
    let mut rejected = false;
    let mut gates = Vec::new();
    for _ in 0..20 {
        let doc = status_json(&db, &run_id);
        if doc["status"] == "done" {
            break;
        }
        assert_eq!(
            doc["status"],
            "waiting",
            "{}",
            serde_json::to_string_pretty(&doc["blocks"]).unwrap()
        );
        let waiting: Vec<String> = doc["blocks"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, s)| s["status"] == "waiting")
            .map(|(id, _)| id.clone())
            .collect();
        for block in waiting {
            let mut command = factory(&db);
            env(&mut command);
            if block == "expert-framework-creator" && !rejected {
                rejected = true;
                command.args([
                    "reject",
                    &run_id,
                    &block,
                    "--feedback",
                    "Name the 42 Percent Anchor explicitly",
                    "--retry-backoff-ms",
                    "10",
                    "--quiet",
                ]);
            } else {
                gates.push(block.clone());
                command.args([
                    "approve",
                    &run_id,
                    &block,
                    "--retry-backoff-ms",
                    "10",
                    "--quiet",
                ]);
            }
            command.assert().success();
        }
    }
    let doc = status_json(&db, &run_id);
    assert_eq!(doc["status"], "done");
    assert_eq!(
        gates,
        [
            "expert-framework-creator",
            "extraction-reviewer",
            "gap-analyzer",
            "clone-tester",
            "expert-audit"
        ]
    );
    assert_eq!(doc["blocks"]["clone-tester"]["score"], 91.0);

    // The cacheable prefix is byte-identical for extractors with the same inputs.
    let system_prefix = |block: &str| {
        let attempts = doc["blocks"][block]["history"].as_array().unwrap().len();
        let prompt = sent_prompt(&db, &run_id, block, attempts as u32);
        prompt
            .split("===== SYSTEM =====")
            .next()
            .unwrap()
            .to_string()
    };
    let soul = system_prefix("soul-extractor");
    assert!(
        soul.contains("(cacheable)")
            && soul.contains("## expert-framework-creator.expert-framework"),
        "{soul}"
    );
    assert_eq!(soul, system_prefix("voice-extractor"));
    assert_eq!(soul, system_prefix("framework-extractor"));

    // Upstream artifacts and params reach the prompt; the rejection became corrections.
    let gap = sent_prompt(&db, &run_id, "gap-analyzer", 1);
    assert!(
        gap.contains("## soul-extractor.soul-json (json)") && gap.contains("Marisol Vega"),
        "{gap}"
    );
    let framework = sent_prompt(&db, &run_id, "expert-framework-creator", 2);
    assert!(
        framework.contains("EXPERT CORRECTIONS (MUST APPLY)")
            && framework.contains("Name the 42 Percent Anchor explicitly"),
        "{framework}"
    );

    // Accounting: every llm attempt recorded its tokens; status totals them.
    let mut attempts = 0u64;
    for state in doc["blocks"].as_object().unwrap().values() {
        for attempt in state["history"].as_array().unwrap() {
            if let Some(llm) = attempt["report"].get("llm") {
                attempts += 1;
                assert_eq!(llm["input_tokens"], INPUT_TOKENS);
                assert_eq!(llm["output_tokens"], OUTPUT_TOKENS);
                assert!(!llm.to_string().contains("sk-e2e-test"));
            }
        }
    }
    // 21 llm blocks (the review pages and the router are builtins), plus the
    // re-run after the rejection.
    assert!(attempts >= 22, "{attempts} llm attempts");
    let status = factory(&db).args(["status", &run_id]).output().unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    let expected = format!(
        "llm: {attempts} attempts, {} input tokens (0 cache reads, 0 cache writes), {} output tokens",
        attempts * INPUT_TOKENS,
        attempts * OUTPUT_TOKENS
    );
    assert!(status.contains(&expected), "{status}");
    // The http blocks published through the local service.
    assert_eq!(doc["blocks"]["publish-orchestrator"]["status"], "done");
    let live = factory(&db)
        .args([
            "artifacts",
            &run_id,
            "publish-orchestrator",
            "--key",
            "live-url",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(live.stdout).unwrap(),
        "https://marisol.example.test"
    );
    drop(runtime);
}
