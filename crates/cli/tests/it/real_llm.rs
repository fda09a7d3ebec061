//! The opt-in real-model group: `scripts/real-llm.sh` builds llama.cpp's
//! server (llama-cpp-python) with SmolLM2-135M-Instruct and runs these with
//! `--ignored`, `FACTORY_REAL_LLM_URL` and `FACTORY_REAL_LLM_MODEL` set. They
//! are ignored by default: the server takes minutes to build and the model
//! is slow on two cores; `local_llm.rs` covers each failure mode against a
//! local server that behaves like this one.

use std::path::Path;

use serde_json::{Value, json};

use super::{repo_root, status_json};

fn server() -> (String, String) {
    let url = std::env::var("FACTORY_REAL_LLM_URL")
        .expect("FACTORY_REAL_LLM_URL: run scripts/real-llm.sh, which starts the server");
    let model = std::env::var("FACTORY_REAL_LLM_MODEL").unwrap_or_else(|_| "smollm2".into());
    (url, model)
}

/// Ten small JSON blocks at once on the one-slot server: `golden` (the
/// default, `auto`, with a golden example whose shape becomes the schema),
/// `json_object` (JSON mode without a schema) or `off`.
fn json_blocks(dir: &Path, variant: &str) -> std::path::PathBuf {
    let skill = dir.join("skills/fact-sheet");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "# Fact sheet\nWrite a short fact sheet about the topic in the block configuration, as a JSON object with the keys \"topic\" (a string), \"facts\" (a list of three short strings) and \"confidence\" (a number from 0 to 1).\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    std::fs::write(
        dir.join("golden/sheet.json"),
        r#"{"topic": "Salt", "facts": ["Salt is sodium chloride.", "It preserves food.", "Seawater holds about 3.5 % salt."], "confidence": 0.9}"#,
    )
    .unwrap();
    let structured = if variant == "golden" { "auto" } else { variant };
    let topics = [
        "the Moon",
        "honey bees",
        "the Danube",
        "copper",
        "penguins",
        "the violin",
        "Mount Fuji",
        "coffee",
        "the Sahara",
        "lighthouses",
    ];
    let blocks: Vec<Value> = topics
        .iter()
        .enumerate()
        .map(|(i, topic)| {
            json!({
                "id": format!("sheet-{i}"), "name": format!("Fact sheet {i}"), "layer": "L0",
                "type": "extract", "runtime": "llm", "skill": "fact-sheet", "timeout": 120000,
                "execution": {"retryable": true, "max_retries": 2},
                "inputs": {"config": {"topic": topic, "max_tokens": 300, "temperature": 0.2, "seed": 1, "structured_output": structured}},
                "outputs": {"artifacts": [{"key": "sheet", "path": "sheet.json", "format": "json"}]},
                "audit": if variant == "golden" { json!({"golden": {"sheet": "golden/sheet.json"}}) } else { json!({}) }
            })
        })
        .collect();
    let path = dir.join(format!("sheets-{variant}.json"));
    std::fs::write(
        &path,
        json!({"id": "sheets", "name": "Sheets", "version": "1", "blocks": blocks}).to_string(),
    )
    .unwrap();
    path
}

fn run(db: &Path, template: &Path, context: &str) -> (Option<i32>, String) {
    let (url, model) = server();
    super::local_llm::run_on_local(db, template, &url, &model, context)
}

/// First-attempt parse rate of the ten JSON blocks; every block ran, none
/// timed out while queueing for the one slot.
fn first_attempt_parses(db: &Path, run_id: &str) -> usize {
    let doc = status_json(db, run_id);
    let mut parsed = 0;
    for (id, block) in doc["blocks"].as_object().unwrap() {
        let first = &block["history"][0];
        assert!(
            first["outcome"] != "timed_out",
            "{id} timed out: {}",
            first["report"]["error"]
        );
        let call = &first["report"]["llm"];
        assert!(call["input_tokens"].as_u64().unwrap() > 0, "{id}: {call}");
        if first["outcome"] == "succeeded" {
            parsed += 1;
        }
    }
    parsed
}

#[test]
#[ignore = "needs a real model server: scripts/real-llm.sh"]
fn real_llm_json_blocks_parse_with_structured_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let (_, on) = run(&db, &json_blocks(dir.path(), "golden"), "8192");
    let with = first_attempt_parses(&db, &on);
    let (_, mode) = run(&db, &json_blocks(dir.path(), "json_object"), "8192");
    let json_mode = first_attempt_parses(&db, &mode);
    let (_, off) = run(&db, &json_blocks(dir.path(), "off"), "8192");
    let without = first_attempt_parses(&db, &off);
    println!(
        "real_llm: JSON blocks parsed at the first attempt: {with}/10 with structured output (schema from the golden example), {json_mode}/10 with JSON mode alone, {without}/10 without"
    );
    assert!(
        with >= 9,
        "{with}/10 with structured output (target ≥ 90 %)"
    );
    let doc = status_json(&db, &on);
    assert_eq!(doc["status"], "done", "retries settle the rest");
    let sent = &doc["blocks"]["sheet-0"]["history"][0]["report"]["llm"];
    assert_eq!(sent["response_format"], "json_object+schema", "{sent}");
}

#[test]
#[ignore = "needs a real model server: scripts/real-llm.sh"]
fn real_llm_context_overflow_is_caught_before_and_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let skill = dir.path().join("skills/long");
    std::fs::create_dir_all(&skill).unwrap();
    // About 12k tokens of a real skill text: more than the 8,192 window.
    let text =
        std::fs::read_to_string(repo_root().join("templates/skills/clone-compiler/SKILL.md"))
            .unwrap();
    std::fs::write(skill.join("SKILL.md"), text.repeat(5)).unwrap();
    let template = dir.path().join("long.json");
    std::fs::write(
        &template,
        json!({"id": "long", "name": "Long", "version": "1", "blocks": [{
            "id": "long", "name": "Long", "layer": "L0", "type": "extract", "runtime": "llm",
            "skill": "long", "timeout": 300000, "execution": {"retryable": true, "max_retries": 2},
            "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]}
        }]})
        .to_string(),
    )
    .unwrap();
    // The factory knows the window: nothing is sent.
    let (code, run_id) = run(&db, &template, "8192");
    assert_eq!(code, Some(1));
    let doc = status_json(&db, &run_id);
    let error = doc["blocks"]["long"]["error"].as_str().unwrap().to_string();
    assert!(error.contains("nothing was sent"), "{error}");
    assert_eq!(doc["blocks"]["long"]["attempts"], 1);
    // It is told a larger window: the server's own refusal is recognised.
    let (code, run_id) = run(&db, &template, "100000");
    assert_eq!(code, Some(1));
    let doc = status_json(&db, &run_id);
    let block = &doc["blocks"]["long"];
    let error = block["error"].as_str().unwrap();
    println!("real_llm: server-side overflow: {error}");
    assert!(
        error.contains("context window") && error.contains("not retried"),
        "{error}"
    );
    assert_eq!(block["attempts"], 1);
    let call = &block["history"][0]["report"]["llm"];
    // Streamed (an empty 200), then unstreamed to learn why — on a fresh
    // connection when the server dropped the kept-alive one.
    assert!(call["calls"].as_u64().unwrap() <= 3, "{call}");
    assert_eq!(
        call["notes"][0],
        "the stream was empty; asked again without streaming"
    );
}

/// Estimated tokens against the server's count on the unstreamed path, for
/// clone-factory-sized prompts (a skill with golden examples as upstream).
#[test]
#[ignore = "needs a real model server: scripts/real-llm.sh"]
fn real_llm_token_estimates_match_the_server() {
    let (url, model) = server();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = factory_llm::Client::new(
        std::sync::Arc::new(factory_llm::OpenAiCompatible::new("local", &url, None)),
        1,
        factory_llm::RetryPolicy::default(),
    );
    let root = repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let mut worst: f64 = 0.0;
    for (skill, golden) in [
        ("soul-extractor", "soul.json"),
        ("voice-extractor", "voice.json"),
        ("framework-extractor", "frameworks.json"),
        ("offer-extractor", "offers.json"),
        ("resource-extractor", "resources.json"),
    ] {
        let request = factory_llm::ChatRequest {
            model: model.clone(),
            system: vec![
                factory_llm::Part::cacheable(format!(
                    "# UPSTREAM ARTIFACTS\n{}",
                    read(&format!("templates/golden/{golden}"))
                )),
                factory_llm::Part::new(read(&format!("templates/skills/{skill}/SKILL.md"))),
            ],
            user: vec![factory_llm::Part::new("Run the block now.")],
            max_tokens: 1,
            ..Default::default()
        };
        let response = runtime
            .block_on(client.complete(&request, std::time::Duration::from_secs(300)))
            .unwrap();
        assert!(
            !response.usage.estimated,
            "the unstreamed path reports usage"
        );
        let estimate = request.estimated_prompt_tokens() as f64;
        let reported = response.usage.input_tokens as f64;
        let error = (estimate - reported) / reported;
        println!(
            "real_llm: {skill}: estimated {estimate}, server {reported} ({:+.1} %)",
            error * 100.0
        );
        worst = worst.max(error.abs());
    }
    assert!(
        worst <= 0.10,
        "estimates within 10 % of the server's count (worst {:.1} %)",
        worst * 100.0
    );
}

/// Gaps and the META chat on the real model: a gap source (a command block
/// writing gaps.json) and an `llm` block that reads it — its prompt carries
/// the OPEN GAPS section and the run finishes; then `factory ask` sends the
/// run's brief with a question and keeps the answer.
#[test]
#[ignore = "needs a real model server: scripts/real-llm.sh"]
fn real_llm_open_gaps_reach_the_prompt_and_the_run_can_be_asked_about() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let skill = dir.path().join("skills/pitch");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "# Pitch\nWrite a three-sentence sales pitch for the offers you are given. Mention each offer's name and price.\n",
    )
    .unwrap();
    let offers = r#"{"offers": [{"name": "Clarity Call", "price_usd": 250}, {"name": "VIP Day", "price_usd": 4500}]}"#;
    let gaps = r#"{"gaps": [{"id": "g01", "severity": "high", "skill_target": "offers", "artifact": "offers-json", "finding": "The VIP Day price is not confirmed by the expert: do not quote a price for the VIP Day, invite the reader to a Clarity Call instead"}]}"#;
    let template = dir.path().join("gaps.json");
    std::fs::write(
        &template,
        json!({"id": "gaps", "name": "Gaps", "version": "1", "blocks": [
            {"id": "offers", "name": "Offers", "layer": "L0", "type": "extract", "runtime": "command",
             "inputs": {"config": {"command": ["sh", "-c", format!("printf '%s' '{offers}' > $FACTORY_OUTPUT_DIR/offers.json")]}},
             "outputs": {"artifacts": [{"key": "offers-json", "path": "offers.json", "format": "json"}]}},
            {"id": "analyzer", "name": "Gap analyzer", "layer": "L1", "type": "validate", "runtime": "command",
             "inputs": {"depends": [{"block": "offers", "key": "offers-json"}],
                        "config": {"command": ["sh", "-c", format!("printf '%s' '{gaps}' > $FACTORY_OUTPUT_DIR/gaps.json")]}},
             "outputs": {"artifacts": [{"key": "gaps-json", "path": "gaps.json", "format": "json"}], "gaps": "gaps-json"}},
            {"id": "pitch", "name": "Pitch", "layer": "L2", "type": "build", "runtime": "llm", "skill": "pitch",
             "timeout": 300000, "execution": {"retryable": true, "max_retries": 2},
             "inputs": {"depends": [{"block": "offers", "key": "offers-json"}, {"block": "analyzer", "key": "gaps-json"}],
                        "config": {"max_tokens": 200, "temperature": 0.2, "seed": 1, "gap_check": "llm"}},
             "outputs": {"artifacts": [{"key": "pitch", "path": "pitch.md", "format": "md"}]}}
        ]})
        .to_string(),
    )
    .unwrap();
    let (code, run_id) = run(&db, &template, "8192");
    assert_eq!(code, Some(0), "the run finishes: {run_id}");
    let prompt = super::sent_prompt(&db, &run_id, "pitch", 1);
    assert!(prompt.contains("OPEN GAPS"), "{prompt}");
    assert!(prompt.contains("g01"), "{prompt}");
    let doc = status_json(&db, &run_id);
    println!(
        "real_llm: gap g01 after the pitch: {} ({}); the model's check: {}",
        doc["gaps"]["g01"]["status"],
        doc["gaps"]["g01"]["reason"],
        doc["blocks"]["pitch"]["history"][0]["report"]["gap_checks"]
    );
    // The check ran (a verdict or a stated problem) and the gap was decided
    // by it or by the terms; never left unrecorded.
    let checks = &doc["blocks"]["pitch"]["history"][0]["report"]["gap_checks"];
    assert!(
        checks["verdicts"].get("g01").is_some() || checks["problem"].is_string(),
        "{checks}"
    );

    let (url, model) = server();
    let output = super::factory(&db)
        .env("FACTORY_LLM_BASE_URL", &url)
        .env("FACTORY_LLM_MODEL", &model)
        .args(["ask", &run_id, "Which gaps are still open in this run?"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).to_string();
    let note = String::from_utf8_lossy(&output.stderr).to_string();
    println!("real_llm: factory ask answered: {answer:?} {note}");
    assert!(output.status.success(), "{note}");
    assert!(!answer.trim().is_empty());
    assert!(note.contains("characters of run context"), "{note}");
}
