//! `templates/meeting-brief.json` end to end against a local server that
//! speaks the OpenAI wire format: four perspectives at once, one whose
//! replies cannot be used until it is retried alone, and the brief that
//! weighs what the others made.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{factory, read_request, respond, status_json, stream_reply};

/// A model server that answers many requests at once (each after a short
/// delay, so overlapping calls show), and sends an empty reply to the
/// partnership-risk perspective while `refuse_risk` is set.
struct Model {
    prompts: Mutex<Vec<(String, String)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    refuse_risk: AtomicBool,
}

impl Model {
    fn start() -> (Arc<Model>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let model = Arc::new(Model {
            prompts: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            refuse_risk: AtomicBool::new(true),
        });
        let server = model.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || {
                    let _ = server.serve(stream);
                });
            }
        });
        (model, url)
    }

    /// The prompts sent for `block`, in order.
    fn prompts_for(&self, block: &str) -> Vec<String> {
        self.prompts
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| b == block)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let (request_line, body) = read_request(&stream);
        if request_line.starts_with("GET /v1/models") {
            let models = json!({"object": "list", "data": [{"id": "small", "object": "model"}]});
            return respond(&mut stream, "200 OK", &models.to_string());
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let prompt: String = request["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let block = prompt
            .split("Run the block `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .unwrap_or_default()
            .to_string();
        self.prompts
            .lock()
            .unwrap()
            .push((block.clone(), prompt.clone()));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let text = if block == "perspective[partnership-risk]"
            && self.refuse_risk.load(Ordering::SeqCst)
        {
            String::new()
        } else if let Some(key) = block
            .strip_prefix("perspective[")
            .and_then(|k| k.strip_suffix(']'))
        {
            format!(
                "# {key}: Acme Robotics\n\n## Summary\n\nFrom the {key} perspective, Acme Robotics leases picking arms to mid-size retailers and installs them in eleven days on average.\n\n## Findings\n\n- Acme Robotics quotes a monthly lease of about 4,800 dollars per arm.\n- Its {key} case rests on installation speed against Pickwell's six weeks.\n\n## Questions to ask\n\n- What does the {key} view say about next year?\n\n## Confidence\n\nMedium: two findings from the notes.\n"
            )
        } else {
            let seen: Vec<&str> = [
                "positioning",
                "gap-analysis",
                "competitive-landscape",
                "partnership-risk",
            ]
            .into_iter()
            .filter(|key| prompt.contains(&format!("perspective[{key}].analysis")))
            .collect();
            format!(
                "# Meeting brief: Acme Robotics\n\n## Bottom line\n\nAcme Robotics is worth a pilot; weigh {} perspectives: {}.\n",
                seen.len(),
                seen.join(", ")
            )
        };
        if request["stream"] == true {
            return stream_reply(&mut stream, &text);
        }
        let body = json!({
            "model": "small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": text.len() / 4}
        });
        respond(&mut stream, "200 OK", &body.to_string())
    }
}

fn run(db: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    factory(db)
        .current_dir(&root)
        .env("FACTORY_LLM_BASE_URL", url)
        .env("FACTORY_LLM_MODEL", "small")
        .env("FACTORY_LLM_CONCURRENCY", "4")
        .env("FACTORY_LLM_CONTEXT", "32768")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_brief_from_four_perspectives_one_retried_alone() {
    let (model, url) = Model::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");

    let output = run(
        &db,
        &url,
        &[
            "run",
            "templates/meeting-brief.json",
            "--param",
            "entity=Acme Robotics",
            "--param",
            "notes=Leases picking arms; 11-day installs.",
            "--retry-backoff-ms",
            "20",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The perspective the model cannot answer fails (after its retry); three
    // of four are enough for the brief, which is written; the run says it
    // failed and how to go on.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("factory retry") && stderr.contains("'perspective[partnership-risk]'"),
        "{stderr}"
    );
    let run_id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let status = status_json(&db, &run_id);
    let block = |id: &str| {
        status["blocks"][id]["status"]
            .as_str()
            .unwrap_or("absent")
            .to_string()
    };
    assert_eq!(block("perspective"), "done");
    assert_eq!(block("perspective[partnership-risk]"), "failed");
    assert_eq!(block("strategic-brief"), "done");

    // Four calls at once, each told its perspective; the entity reaches all.
    assert!(
        model.most_in_flight.load(Ordering::SeqCst) >= 3,
        "perspectives ran one by one"
    );
    for (key, item) in [
        ("positioning", "Positioning"),
        ("gap-analysis", "Gap analysis"),
        ("competitive-landscape", "Competitive landscape"),
    ] {
        let prompts = model.prompts_for(&format!("perspective[{key}]"));
        assert_eq!(prompts.len(), 1, "{key}");
        assert!(
            prompts[0].contains(&format!("## Your item: `{key}`\n")) && prompts[0].contains(item),
            "{}",
            prompts[0]
        );
        assert!(
            prompts[0].contains("Acme Robotics") && prompts[0].contains("# Meeting perspective")
        );
    }
    assert_eq!(
        model.prompts_for("perspective[partnership-risk]").len(),
        2,
        "one retry, then failed"
    );
    let briefs = model.prompts_for("strategic-brief");
    assert_eq!(briefs.len(), 1);
    assert!(
        briefs[0].contains("## perspective[positioning].analysis")
            && !briefs[0].contains("perspective[partnership-risk].analysis")
    );

    // The model recovers; the failed perspective is retried alone, and the
    // brief is written again from all four.
    model.refuse_risk.store(false, Ordering::SeqCst);
    let output = run(
        &db,
        &url,
        &["retry", &run_id, "perspective[partnership-risk]", "--quiet"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_json(&db, &run_id);
    assert_eq!(status["status"], "done");
    assert_eq!(model.prompts_for("perspective[partnership-risk]").len(), 3);
    assert_eq!(
        model.prompts_for("perspective[positioning]").len(),
        1,
        "the others keep what they made"
    );
    let briefs = model.prompts_for("strategic-brief");
    assert_eq!(briefs.len(), 2);
    assert!(
        briefs[1].contains("## perspective[partnership-risk].analysis"),
        "{}",
        briefs[1]
    );

    // After the meeting, people rate what they used. Partnership risk was
    // no help to three of them; competitive landscape lacked something.
    let rate = |actor: &str, block: &str, score: &str, comment: &str| {
        let output = run(
            &db,
            &url,
            &[
                "--actor",
                actor,
                "rate",
                &run_id,
                block,
                "--score",
                score,
                "--comment",
                comment,
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &stderr,
        )
    };
    for actor in ["ann", "bob", "cy"] {
        let (code, text) = rate(
            actor,
            "perspective[partnership-risk]",
            "1",
            "nothing we did not know",
        );
        assert_eq!(code, Some(0), "{text}");
    }
    let (code, text) = rate(
        "ann",
        "perspective[competitive-landscape]",
        "3",
        "Name Pickwell's prices",
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(r#"3/5 (entity="Acme Robotics")"#), "{text}");
    rate("ann", "perspective[gap-analysis]", "5", "");
    rate("bob", "strategic-brief", "4", "Shorter, please");
    // What cannot be rated says why, and changes nothing.
    let (code, text) = rate("ann", "perspective", "4", "");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("rate each of them"), "{text}");
    let (code, text) = rate("ann", "strategic-brief", "7", "");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("from 1 to 5"), "{text}");
    let summary = run(&db, &url, &["ratings", "--template", "meeting-brief"]);
    let summary = String::from_utf8_lossy(&summary.stdout);
    let risk_line = summary
        .lines()
        .find(|l| l.starts_with("perspective[partnership-risk]"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        risk_line.contains(" 3 ") && risk_line.contains("1.00"),
        "{risk_line}"
    );

    // The next brief on the same entity hears them: the poorly rated
    // perspective is left out, the others' prompts quote what readers said,
    // the brief reads the best-rated first. The unrated perspective's
    // inputs did not change: its earlier answer stands in (no call).
    let output = run(
        &db,
        &url,
        &[
            "run",
            "templates/meeting-brief.json",
            "--param",
            "entity=Acme Robotics",
            "--param",
            "notes=Leases picking arms; 11-day installs.",
            "--quiet",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let text = run(&db, &url, &["status", &second]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("[left out by past ratings: partnership-risk (1.0 over 3)]"),
        "{text}"
    );
    let status = status_json(&db, &second);
    assert_eq!(
        status["blocks"]["perspective"]["left_out"][0]["key"],
        "partnership-risk"
    );
    assert_eq!(
        model.prompts_for("perspective[partnership-risk]").len(),
        3,
        "left out"
    );
    assert_eq!(
        model.prompts_for("perspective[positioning]").len(),
        1,
        "memoized"
    );
    let landscape = model.prompts_for("perspective[competitive-landscape]");
    assert_eq!(landscape.len(), 2);
    assert!(
        landscape[1].contains("## Your perspective: `competitive-landscape`")
            && landscape[1].contains("1 rating(s), mean 3.0 of 5")
            && landscape[1].contains("- 3/5: Name Pickwell's prices"),
        "{}",
        landscape[1]
    );
    assert!(!landscape[0].contains("What readers said"));
    let briefs = model.prompts_for("strategic-brief");
    assert_eq!(briefs.len(), 3);
    let brief = &briefs[2];
    assert!(brief.contains("- 4/5: Shorter, please"), "{brief}");
    let at = |key: &str| {
        brief
            .find(&format!("## perspective[{key}].analysis"))
            .unwrap()
    };
    assert!(
        at("gap-analysis") < at("positioning") && at("positioning") < at("competitive-landscape")
    );
    assert!(!brief.contains("## perspective[partnership-risk].analysis"));
}

/// The offline variant README shows: shell steps in place of the model.
#[test]
fn the_offline_meeting_brief_runs_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let brief = |run: &str| {
        let output = factory(&db)
            .current_dir(&root)
            .args(["artifacts", run, "strategic-brief", "--key", "brief"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let output = factory(&db)
        .current_dir(&root)
        .args(["run", "examples/meeting-brief/pipeline.json", "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let text = brief(&run);
    for title in [
        "### Positioning",
        "### Gap analysis",
        "### Competitive landscape",
        "### Partnership risk",
    ] {
        assert!(text.contains(title), "{text}");
    }
    assert!(text.contains("- Who owns the integration on their side after the CTO's departure?"));

    // A fifth perspective the notes say nothing about: it fails, the brief
    // is written from the other four, and the run says how to go on.
    let output = factory(&db)
        .current_dir(&root)
        .args(["run", "examples/meeting-brief/pipeline.json", "--quiet", "-p"])
        .arg(r#"perspectives=["Positioning", "Gap analysis", "Competitive landscape", "Partnership risk", "Pricing"]"#)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'perspective[pricing]'"), "{stderr}");
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let text = brief(&run);
    assert!(
        text.contains("4 perspective analyses made") && !text.contains("Pricing:"),
        "{text}"
    );
    let status = status_json(&db, &run);
    assert_eq!(status["blocks"]["perspective[pricing]"]["status"], "failed");
}
