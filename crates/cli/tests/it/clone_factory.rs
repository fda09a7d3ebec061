//! The whole clone-factory template, end to end through the CLI, against a
//! local server speaking the Anthropic Messages wire format (streaming) and a
//! local publishing/sync service. The provider code path is the one a user
//! with an API key takes; only the base URL differs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

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
    /// The block of each call, in order.
    calls: Arc<Mutex<Vec<String>>>,
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
            // Two gaps: the compiler's prompt takes up g01, nothing takes up g02.
            ("gap-analyzer", _) => factory_engine::fixtures::gap_analysis().to_string(),
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

    /// An artifact's content; with corrections in the prompt a JSON object
    /// gains a `revised` field and text a line, so the output differs.
    fn revised(&self, block: &str, key: &str, format: &str, corrected: bool) -> String {
        let content = self.content(block, key, format);
        if !corrected {
            return content;
        }
        match serde_json::from_str::<Value>(&content) {
            Ok(Value::Object(mut fields)) => {
                fields.insert("revised".into(), json!(true));
                Value::Object(fields).to_string()
            }
            _ if format == "url" => format!("{}-revised", content.trim_end()),
            _ => format!("{}\n\nRevised as the expert asked.\n", content.trim_end()),
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
        if artifacts.len() == 1 {
            let a = &artifacts[0];
            return self.revised(
                block_id,
                a["key"].as_str().unwrap(),
                a["format"].as_str().unwrap(),
                corrected,
            );
        }
        artifacts
            .iter()
            .map(|a| {
                let key = a["key"].as_str().unwrap();
                format!(
                    "```artifact:{key}\n{}\n```\n",
                    self.revised(block_id, key, a["format"].as_str().unwrap(), corrected)
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
        // `factory ask`: answers from the run brief it was given.
        let system = body["system"].to_string();
        if system.contains("assistant for one run") {
            let accepted: Vec<&str> = system
                .split("\\n- ")
                .filter(|l| l.starts_with('g') && l.contains(" [accepted] "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_c", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": format!("Accepted gaps: {}.", accepted.join(", "))}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 900, "output_tokens": 6}
            }));
        }
        // clone-compiler's gap check (`gap_check: "llm"`): the system prompt
        // states the 310 negotiators (g01); nothing takes up g02.
        if system.contains("addresses known gaps") {
            // Asked with a schema, Anthropic answers through the output tool.
            assert_eq!(body["tool_choice"]["name"], "emit_output");
            let verdicts = json!({"gaps": [
                {"id": "g01", "addressed": true, "reason": "The system prompt states the 310 negotiators figure."},
                {"id": "g02", "addressed": false, "reason": "Nothing about recorded calls."}
            ]});
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_g", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "emit_output", "input": verdicts}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 400, "output_tokens": 30}
            }));
        }
        let user = body["messages"][0]["content"].to_string();
        let block = user
            .split("Run the block `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .expect("the task names the block")
            .to_string();
        self.calls.lock().unwrap().push(block.clone());
        let text = self.reply(&block, user.contains("EXPERT CORRECTIONS"));
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

/// The local model, sync and publishing services.
struct Services {
    /// Serves the mocks; kept for as long as the services are used.
    runtime: tokio::runtime::Runtime,
    server: MockServer,
    calls: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Services {
    fn start() -> Services {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(MockServer::start());
        let template: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
        )
        .unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let model = FakeModel {
            template,
            calls: calls.clone(),
        };
        runtime.block_on(async {
            Mock::given(method("POST")).and(path("/v1/messages")).respond_with(model).mount(&server).await;
            Mock::given(method("POST")).and(path("/notebook")).respond_with(ResponseTemplate::new(200).set_body_string("https://notebook.example.test/marisol-vega")).mount(&server).await;
            // MasteryOS is busy once, then takes the clone.
            Mock::given(method("POST"))
                .and(path("/masteryos"))
                .respond_with(ResponseTemplate::new(503).set_body_string("deploying"))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path("/masteryos"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"profile_id": "mv-1", "profile_url": "https://os.example.test/experts/marisol-vega", "knowledge_files": 1})))
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path("/publish"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"publish-manifest": {"pages": 4}, "live-url": "https://marisol.example.test"})))
                .mount(&server)
                .await;
        });
        Services {
            runtime,
            server,
            calls,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The requests the services received at `at`, in order.
    fn received(&self, at: &str) -> Vec<Request> {
        self.runtime
            .block_on(self.server.received_requests())
            .unwrap()
            .into_iter()
            .filter(|r| r.url.path() == at)
            .collect()
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("factory.db")
    }

    /// `factory` against the local services.
    fn factory(&self) -> assert_cmd::Command {
        let mut command = factory(&self.db());
        command
            .env("ANTHROPIC_BASE_URL", self.server.uri())
            .env("ANTHROPIC_API_KEY", "sk-e2e-test")
            .env("MASTERYBOOK_URL", format!("{}/notebook", self.server.uri()))
            .env("MASTERYOS_URL", format!("{}/masteryos", self.server.uri()))
            .env("MASTERYOS_TOKEN", "os-e2e-token")
            .env("PUBLISH_URL", format!("{}/publish", self.server.uri()))
            .env("FACTORY_WORK_DIR", self.dir.path().join("work"))
            .current_dir(self.dir.path());
        command
    }

    /// Starts a run of clone-factory for Marisol Vega (`extra` arguments
    /// added) and returns its id.
    fn run(&self, extra: &[&str]) -> String {
        let template = repo_root().join("templates/clone-factory.json");
        let output = self
            .factory()
            .args([
                "run",
                template.to_str().unwrap(),
                "-p",
                "expert_name=Marisol Vega",
                "--retry-backoff-ms",
                "10",
                "--quiet",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Decides every gate through the CLI until the run is done: rejects
    /// each block of `rejections` once with its feedback, approves the
    /// rest. Returns the approved gates in order.
    fn settle(&self, run_id: &str, rejections: &[(&str, &str)]) -> Vec<String> {
        let db = self.db();
        let mut rejected = BTreeSet::new();
        let mut gates = Vec::new();
        for _ in 0..20 {
            let doc = status_json(&db, run_id);
            if doc["status"] == "done" {
                return gates;
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
                let mut command = self.factory();
                match rejections.iter().find(|(b, _)| *b == block) {
                    Some((_, feedback)) if rejected.insert(block.clone()) => {
                        command.args(["reject", run_id, &block, "--feedback", feedback]);
                    }
                    _ => {
                        gates.push(block.clone());
                        command.args(["approve", run_id, &block]);
                    }
                }
                command
                    .args(["--retry-backoff-ms", "10", "--quiet"])
                    .assert()
                    .success();
            }
        }
        panic!("run {run_id} did not finish: {}", status_json(&db, run_id));
    }
}

#[test]
fn the_whole_clone_factory_runs_against_a_local_provider() {
    let services = Services::start();
    let db = services.db();
    let notes = services.dir.path().join("negotiation-notes.md");
    std::fs::write(
        &notes,
        "# Notes\n\nThe Seven Second Silence, taught since 2014.\n",
    )
    .unwrap();
    // A binary source too (a scanned page): it must arrive whole.
    let scan = services.dir.path().join("scan.bin");
    std::fs::write(&scan, [0xff, 0x00, 0x01]).unwrap();
    let run_id = services.run(&[
        "-p",
        "expert_slug=marisol-vega",
        "--file",
        notes.to_str().unwrap(),
        "--file",
        scan.to_str().unwrap(),
    ]);

    // Gates, through the CLI: reject the framework once, then approve everything.
    let gates = services.settle(
        &run_id,
        &[(
            "expert-framework-creator",
            "Name the 42 Percent Anchor explicitly",
        )],
    );
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
    // Gaps: gap-analyzer's two became the run's; the compiler's prompt
    // listed both, its system prompt covers g01's terms (addressed), nothing
    // took up g02, which the boarding step still saw.
    let compiler = sent_prompt(&db, &run_id, "clone-compiler", 1);
    assert!(
        compiler.contains("## OPEN GAPS")
            && compiler.contains(
                "- g01 (high) in frameworks-json at $.frameworks[0]: The Seven Second Silence"
            )
            && compiler.contains("- g02 (low)"),
        "{compiler}"
    );
    let boarding = sent_prompt(&db, &run_id, "boarding-orchestrator", 1);
    assert!(
        boarding.contains("- g02 (low)") && !boarding.contains("- g01 ("),
        "{boarding}"
    );
    let gaps_of = || -> Vec<Value> {
        let out = factory(&db)
            .args(["gaps", &run_id, "--json"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let gaps = gaps_of();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert_eq!(
        (gaps[0]["status"].as_str(), gaps[0]["by"].as_str()),
        (Some("addressed"), Some("clone-compiler")),
        "{gaps:?}"
    );
    // clone-compiler asks the model (`gap_check: "llm"`); its verdict and
    // reason decide, and the check is kept in the attempt's report.
    assert!(
        gaps[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("clone-compiler: ")
            && gaps[0]["reason"].as_str().unwrap().ends_with(
                " judged it addressed: The system prompt states the 310 negotiators figure."
            ),
        "{gaps:?}"
    );
    let checks = &status_json(&db, &run_id)["blocks"]["clone-compiler"]["history"][0]["report"]["gap_checks"];
    assert_eq!(checks["verdicts"]["g02"]["addressed"], false, "{checks}");
    assert!(checks.get("problem").is_none(), "{checks}");
    assert_eq!(gaps[1]["status"], "open");
    factory(&db)
        .args([
            "gap",
            &run_id,
            "g02",
            "--accept",
            "--note",
            "Calls come after launch",
        ])
        .assert()
        .success();
    let listed = factory(&db).args(["gaps", &run_id]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("accepted by cli:tester: Calls come after launch")
            && listed.starts_with("2 gaps, 0 open"),
        "{listed}"
    );
    // The META chat: the brief names the run's blocks and gaps; the model
    // is asked with it and the answer is kept.
    let brief = factory(&db)
        .args(["ask", &run_id, "--brief"])
        .output()
        .unwrap();
    assert!(brief.status.success());
    let brief = String::from_utf8(brief.stdout).unwrap();
    assert!(
        brief.contains("- `masteryos-sync` (Sync to MasteryOS)")
            && brief.contains("g02 [accepted]")
            && brief.contains("accepted by cli:tester: Calls come after launch"),
        "{brief}"
    );
    let asked = services
        .factory()
        .args(["ask", &run_id, "Which gaps did we accept?"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&asked.stderr);
    assert!(asked.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&asked.stdout),
        "Accepted gaps: g02.\n"
    );
    assert!(stderr.contains("900 tokens in"), "{stderr}");
    // Kept: the next question carries the conversation so far.
    let again = services
        .factory()
        .args(["ask", &run_id, "And the open ones?"])
        .output()
        .unwrap();
    assert!(again.status.success());
    let sent = services.received("/v1/messages");
    let last: Value = serde_json::from_slice(&sent.last().unwrap().body).unwrap();
    let transcript = last["messages"].to_string();
    assert!(
        transcript.contains("user: Which gaps did we accept?")
            && transcript.contains("assistant: Accepted gaps: g02.")
            && transcript.contains("user: And the open ones?"),
        "{transcript}"
    );
    let refused = factory(&db).args(["ask", &run_id, "hi"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("provider"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for (args, says) in [
        (vec!["gap", &run_id, "g02", "--accept"], "already accepted"),
        (vec!["gap", &run_id, "g99", "--reopen"], "no gap `g99`"),
    ] {
        let out = factory(&db).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }

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

    // The uploaded sources went to the MasteryBook notebook.
    let notebook = services.received("/notebook");
    assert_eq!(notebook.len(), 1);
    let body: Value = serde_json::from_slice(&notebook[0].body).unwrap();
    assert_eq!(body["expert"], "Marisol Vega");
    assert_eq!(body["slug"], "marisol-vega");
    assert_eq!(
        body["sources"],
        json!([
            {"name": "negotiation-notes.md", "content": "# Notes\n\nThe Seven Second Silence, taught since 2014.\n"},
            {"name": "scan.bin", "content_base64": "/wAB"}
        ])
    );

    // The finished clone went to MasteryOS: each artifact of seed 000's table
    // under its field, with the token, retried after a 503 under one key.
    let synced = services.received("/masteryos");
    assert_eq!(synced.len(), 2, "a 503, then the accepted call");
    // The key names run, version and block, and the content's digest.
    let sent: Value = serde_json::from_slice(&synced[1].body).unwrap();
    let key = factory_core::http_call::idempotency_key(&run_id, 1, "masteryos-sync", None, &sent);
    assert!(key.starts_with(&format!("factory-{run_id}-v1-masteryos-sync-")));
    for request in &synced {
        assert_eq!(
            request.headers.get("idempotency-key").unwrap(),
            key.as_str()
        );
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            "Bearer os-e2e-token"
        );
    }
    let body: Value = serde_json::from_slice(&synced[1].body).unwrap();
    let artifact = |block: &str, key: &str| -> String {
        let out = factory(&db)
            .args(["artifacts", &run_id, block, "--key", key])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let as_json =
        |block: &str, key: &str| -> Value { serde_json::from_str(&artifact(block, key)).unwrap() };
    assert_eq!(
        body["expert"],
        json!({"name": "Marisol Vega", "slug": "marisol-vega"})
    );
    assert_eq!(body["factory"], json!({"run": run_id, "version": 1}));
    assert_eq!(
        body["system_prompt"].as_str().unwrap(),
        artifact("clone-compiler", "system-prompt")
    );
    assert_eq!(
        body["knowledge_files"],
        json!([{"path": "seven-second-silence.md", "content": "# Seven Second Silence\n\nCount to 7 after the offer.\n"}])
    );
    assert_eq!(
        body["experiences"],
        as_json("framework-extractor", "frameworks-json")
    );
    assert_eq!(
        body["resources"],
        as_json("resource-extractor", "resources-json")
    );
    assert_eq!(
        body["cta_config"],
        as_json("offer-extractor", "offers-json")
    );
    assert_eq!(
        body["theme"],
        as_json("design-system-extractor", "design-tokens")
    );
    assert_eq!(
        body["onboarding_flow"],
        as_json("onboarding-builder", "onboarding-config")
    );
    assert!(
        body["boarding_pack"].as_str().unwrap().contains("<html"),
        "{body}"
    );
    assert_eq!(
        artifact("masteryos-sync", "profile-url"),
        "https://os.example.test/experts/marisol-vega"
    );
    assert_eq!(
        as_json("masteryos-sync", "masteryos-profile")["profile_id"],
        "mv-1"
    );

    // Sending it again (the "Sync to MasteryOS" button's re-run) re-runs the
    // sync alone, under the same key: MasteryOS updates the same profile.
    let before: Vec<usize> = doc["blocks"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["history"].as_array().unwrap().len())
        .collect();
    services
        .factory()
        .args(["retry", &run_id, "masteryos-sync", "--quiet"])
        .assert()
        .success();
    let again = status_json(&db, &run_id);
    assert_eq!(again["status"], "done");
    let after: Vec<usize> = again["blocks"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["history"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        after.iter().sum::<usize>(),
        before.iter().sum::<usize>() + 1
    );
    let synced = services.received("/masteryos");
    assert_eq!(synced.len(), 3);
    assert_eq!(
        synced[2].headers.get("idempotency-key").unwrap(),
        key.as_str()
    );

    // The factory audits the run: its wiring table is the template's.
    let meta = factory(&db)
        .args(["meta-audit", &run_id, "--quiet"])
        .output()
        .unwrap();
    let meta_id = String::from_utf8(meta.stdout).unwrap().trim().to_string();
    let report = |block: &str, key: &str| -> serde_json::Value {
        let out = factory(&db)
            .args(["artifacts", &meta_id, block, "--key", key])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{block}.{key}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(super::repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    let mut declared = BTreeSet::new();
    let mut read = BTreeSet::new();
    for block in template["blocks"].as_array().unwrap() {
        for a in block["outputs"]["artifacts"].as_array().unwrap() {
            declared.insert(format!(
                "{}.{}",
                block["id"].as_str().unwrap(),
                a["key"].as_str().unwrap()
            ));
        }
        for d in block["inputs"]["depends"].as_array().into_iter().flatten() {
            read.insert(format!(
                "{}.{}",
                d["block"].as_str().unwrap(),
                d["key"].as_str().unwrap()
            ));
        }
    }
    let wiring = report("cross-block-consistency", "wiring");
    assert_eq!(wiring["fields"], declared.len(), "{wiring}");
    assert_eq!(
        wiring["wired"],
        declared.intersection(&read).count(),
        "{wiring}"
    );
    assert_eq!(wiring["broken"], serde_json::json!([]), "{wiring}");
    assert!(!wiring["terms"].as_array().unwrap().is_empty());
    let specificity = report("specificity-deep-check", "specificity");
    assert_eq!(specificity["subject"], "Marisol Vega");
    assert!(
        specificity["subject_mentions"].as_u64().unwrap() > 0,
        "{specificity}"
    );
    let aggregate = report("run-aggregate", "aggregate");
    assert!(
        aggregate["blocks"].as_array().unwrap().len() >= 21,
        "{aggregate}"
    );
    // Passing, the scorecard waits at its gate; failing, the meta-audit
    // stops at the aggregate and says why.
    let meta_status = status_json(&db, &meta_id);
    if aggregate["passed"] == true {
        assert_eq!(meta_status["status"], "waiting", "{meta_status}");
    } else {
        assert_eq!(meta_status["status"], "failed", "{meta_status}");
        assert!(!aggregate["reasons"].as_array().unwrap().is_empty());
    }
}

/// The llm blocks of clone-factory that read a review page's html or link
/// (a `review-page` builtin: its page and link are the run's own).
fn readers_of_review_pages() -> Vec<String> {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    let blocks = template["blocks"].as_array().unwrap();
    // A page's html and its url carry the run's own id; its other
    // artifacts (the extraction version) are the same from run to run.
    let per_run: BTreeSet<(&str, &str)> = blocks
        .iter()
        .filter(|b| b["inputs"]["config"]["builtin"] == "review-page")
        .flat_map(|b| {
            b["outputs"]["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["format"] == "html" || a["format"] == "url")
                .map(|a| (b["id"].as_str().unwrap(), a["key"].as_str().unwrap()))
        })
        .collect();
    let mut readers: Vec<String> = blocks
        .iter()
        .filter(|b| b["runtime"] == "llm")
        .filter(|b| {
            b["inputs"]["depends"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| {
                    per_run.contains(&(d["block"].as_str().unwrap(), d["key"].as_str().unwrap()))
                })
        })
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    readers.sort();
    readers
}

/// The blocks of clone-factory downstream of `block` (itself included).
fn downstream_of(block: &str) -> BTreeSet<String> {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("templates/clone-factory.json")).unwrap(),
    )
    .unwrap();
    let mut found = BTreeSet::from([block.to_string()]);
    loop {
        let more: Vec<String> = template["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| !found.contains(b["id"].as_str().unwrap()))
            .filter(|b| {
                b["inputs"]["depends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| found.contains(d["block"].as_str().unwrap()))
            })
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

#[test]
fn a_second_run_calls_the_model_only_for_what_a_rejection_changed() {
    let services = Services::start();
    let db = services.db();
    let first = services.run(&[]);
    services.settle(&first, &[]);
    let first_calls = services.calls.lock().unwrap().len();
    assert!(
        first_calls >= 21,
        "one call or more per llm block: {first_calls}"
    );

    // The same run again: every llm block is answered from the first run's
    // accepted attempts, but those that read a review page, whose link is
    // the run's own (so their input did change).
    let same = services.run(&[]);
    services.settle(&same, &[]);
    let mut again: Vec<String> = services.calls.lock().unwrap()[first_calls..].to_vec();
    again.sort();
    assert_eq!(
        again,
        readers_of_review_pages(),
        "a second identical run's calls"
    );
    let first_calls = first_calls + again.len();
    let doc = status_json(&db, &same);
    let reused = &doc["blocks"]["voice-extractor"]["history"][0]["report"]["reused"];
    assert_eq!(reused["run_id"], first.as_str(), "{reused}");
    assert_eq!(reused["block"], "voice-extractor");
    assert!(
        doc["blocks"]["voice-extractor"]["history"][0]["report"]
            .get("llm")
            .is_none()
    );

    // Another run with voice-extractor stopping at a gate, where it is
    // rejected: its corrections go to the model, its new output is new
    // input for what depends on it, and nothing else calls.
    let second = services.run(&["--set-autonomy", "voice-extractor=gate"]);
    services.settle(
        &second,
        &[("voice-extractor", "Warmer, and shorter sentences")],
    );
    let calls: Vec<String> = services.calls.lock().unwrap()[first_calls..].to_vec();
    let called: BTreeSet<String> = calls.iter().cloned().collect();
    assert_eq!(
        calls.iter().filter(|b| *b == "voice-extractor").count(),
        1,
        "{calls:?}"
    );
    let downstream = downstream_of("voice-extractor");
    assert!(
        called.is_subset(&downstream),
        "{called:?} outside {downstream:?}"
    );
    for direct in ["clone-compiler", "gap-analyzer"] {
        assert!(called.contains(direct), "{direct} did not call: {calls:?}");
    }
    let doc = status_json(&db, &second);
    for (id, state) in doc["blocks"].as_object().unwrap() {
        let last = state["history"].as_array().unwrap().last().unwrap();
        let llm = last["report"].get("llm").is_some();
        let was_reused = last["report"].get("reused").is_some();
        if called.contains(id) {
            assert!(llm && !was_reused, "{id}: {last}");
        } else if !downstream.contains(id)
            && state["history"][0]["report"].get("memo_key").is_some()
        {
            assert!(was_reused && !llm, "{id} should have been reused: {last}");
        }
    }
    // The prompt of a reused attempt is the one its source sent.
    let soul = sent_prompt(&db, &second, "soul-extractor", 1);
    assert_eq!(soul, sent_prompt(&db, &first, "soul-extractor", 1));
    // Status says so.
    let status = services
        .factory()
        .args(["status", &second])
        .output()
        .unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(status.contains("[reused: run "), "{status}");
    assert!(status.contains("memo: "), "{status}");
}
