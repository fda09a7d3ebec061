//! Black-box tests of the `factory` binary: real processes, real SQLite files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

mod clone_factory;
mod convergence;
mod fleet_netns;
mod local_llm;
mod media;
mod media_gen;
mod meeting_brief;
mod meta_audit;
mod notifications;
mod otel;
mod polish;
mod real_llm;
mod stream;
mod triggers;
mod worker;

const BIN: &str = env!("CARGO_BIN_EXE_factory");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn factory(db: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("FACTORY_DB", db)
        .env("FACTORY_ACTOR", "cli:tester")
        .env_remove("FACTORY_WORK_DIR");
    command
}

/// The prompt attempt `attempt` (1-based, as `factory prompt` counts) of a
/// block sent, through `factory prompt`; fails if it recorded none.
fn sent_prompt(db: &Path, run: &str, block: &str, attempt: u32) -> String {
    let output = factory(db)
        .args(["prompt", run, block, "--attempt", &attempt.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "factory prompt {block} --attempt {attempt}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Reads `read` (a run's status document) every 100 ms until the run is no
/// longer running, and returns that document; fails after `limit` with `what`.
fn wait_while_running(limit: Duration, what: &str, mut read: impl FnMut() -> Value) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let doc = read();
        if doc["status"] != "running" {
            return doc;
        }
        assert!(Instant::now() < deadline, "{what}: {doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A started `factory worker`'s banner (its first stderr line, which must
/// say it serves) and a thread that collects the rest of its stderr.
fn worker_banner(
    child: &mut std::process::Child,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.starts_with("worker "), "{banner}");
    let rest = std::thread::spawn(move || lines.map_while(|l| l.ok()).collect());
    (banner, rest)
}

/// Writes a whole HTTP/1.1 response with a JSON `body` and closes.
fn respond(stream: &mut std::net::TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    std::io::Write::write_all(
        stream,
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// Writes `text` as an OpenAI-style chat stream: 16-byte deltas, a stop
/// chunk and `[DONE]`, with no usage (as local servers send it).
fn stream_reply(stream: &mut std::net::TcpStream, text: &str) -> std::io::Result<()> {
    let mut sse = String::new();
    for piece in text.as_bytes().chunks(16) {
        let delta = serde_json::json!({"choices": [{"index": 0, "delta": {"content": String::from_utf8_lossy(piece)}, "finish_reason": null}]});
        sse.push_str(&format!("data: {delta}\n\n"));
    }
    sse.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    std::io::Write::write_all(
        stream,
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{sse}"
        )
        .as_bytes(),
    )
}

/// Reads one HTTP/1.1 request from a test server's connection: its request
/// line and body (by content-length).
fn read_request(stream: &std::net::TcpStream) -> (String, Vec<u8>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut length = 0;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 2 {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length];
    let _ = std::io::Read::read_exact(&mut reader, &mut body);
    (request_line, body)
}

fn status_json(db: &Path, run: &str) -> Value {
    let output = factory(db)
        .args(["status", run, "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn validate_reports_every_problem_with_file_path_and_block() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(
        &file,
        r#"{"id": "t", "name": "T", "version": "1", "blocks": [
            {"id": "a", "name": "A", "layer": "L0", "type": "build", "runtime": "builtin", "inputs": {"config": {"builtin": "noop"}}, "executon": {}},
            {"id": "b", "name": "B", "layer": "L1", "type": "build", "runtime": "comand"}
        ]}"#,
    )
    .unwrap();
    factory(&dir.path().join("db"))
        .args(["validate", file.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.json"))
        .stderr(predicate::str::contains(
            "$.blocks[0].executon (block `a`): unknown field `executon`",
        ))
        .stderr(predicate::str::contains("did you mean `execution`?"))
        .stderr(predicate::str::contains("$.blocks[1].runtime (block `b`)"))
        .stderr(predicate::str::contains("did you mean `command`?"))
        .stdout(predicate::str::contains("2 errors"));

    std::fs::write(&file, "{\"id\": \"t\",\n  \"name\": }").unwrap();
    factory(&dir.path().join("db"))
        .args(["validate", "--json", file.to_str().unwrap()])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("\"code\": \"TPL0001\""))
        .stdout(predicate::str::contains("\"line\": 2"));

    factory(&dir.path().join("db"))
        .args(["validate", "/no/such/file.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read the file"));
}

#[test]
fn shipped_templates_validate_and_draw() {
    let root = repo_root();
    let db = root.join("target/unused.db");
    for template in [
        "templates/clone-factory.json",
        "examples/offline/pipeline.json",
    ] {
        factory(&db)
            .current_dir(&root)
            .args(["validate", template])
            .assert()
            .success()
            .stdout(predicate::str::contains("valid"));
    }
    factory(&db)
        .current_dir(&root)
        .args([
            "graph",
            "templates/clone-factory.json",
            "--format",
            "mermaid",
        ])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("flowchart TD"))
        .stdout(predicate::str::contains("clone_tester --> expert_audit"));
    factory(&db)
        .current_dir(&root)
        .args(["graph", "templates/clone-factory.json", "--format", "dot"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "\"clone-compiler\" -> \"clone-tester\"",
        ));
    factory(&db)
        .current_dir(&root)
        .args(["graph", "templates/clone-factory.json"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "L3.5\n  clone-tester [gate:after, score ≥ 85",
        ));
    let schema = factory(&db).arg("schema").output().unwrap();
    let schema: Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert_eq!(schema["title"], "Process Factory template");
    assert!(schema["$defs"]["Block"]["properties"]["execution"].is_object());
}

#[test]
fn bench_times_a_run_of_the_shape_and_size_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    let output = factory(&db)
        .args(["bench", "--shape", "chain", "--blocks", "12", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(figures["blocks"], 12);
    // run_created, then per block at least ready, started and finished.
    assert!(figures["events"].as_u64().unwrap() > 36, "{figures}");
    assert!(
        figures["document_bytes"].as_u64().unwrap() > 12 * 100,
        "{figures}"
    );
    assert!(figures["per_block_ms"].as_f64().unwrap() > 0.0, "{figures}");
    let output = factory(&db)
        .args(["bench", "--shape", "fan", "--blocks", "10"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("fan 10 blocks: "));
    factory(&db)
        .args(["bench", "--shape", "ring"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("use `chain`, `fan` or `stream`"));
    // Records through a stream of no-op steps, fed by signed webhooks.
    let output = factory(&db)
        .args([
            "bench",
            "--shape",
            "stream",
            "--records",
            "300",
            "--batch",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(figures["records"], 300, "{figures}");
    assert_eq!(figures["lost"], 0, "{figures}");
    assert!(
        figures["records_per_s"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
}

#[test]
fn set_autonomy_cannot_lower_a_separate_reviewers_gate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = dir.path().join("guarded.json");
    std::fs::write(
        &template,
        r#"{ "id": "guarded", "name": "Guarded", "version": "1.0.0", "blocks": [
          { "id": "draft", "name": "Draft", "layer": "L0", "type": "build", "runtime": "builtin",
            "inputs": { "config": { "builtin": "noop" } },
            "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] },
            "execution": { "human_gate": "after", "separate_reviewer": true } } ] }"#,
    )
    .unwrap();
    factory(&db)
        .args(["run", template.to_str().unwrap(), "--set-autonomy", "draft=auto"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "block `draft`'s gate asks for a separate reviewer, and whoever creates the run may not lower it",
        ));
    // Raising a gate, or none at all, is fine: the run stops at the gate.
    factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "--set-autonomy",
            "draft=gate",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("draft waits for approval"));
}

#[test]
fn the_offline_example_runs_through_its_gate() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = root.join("examples/offline/pipeline.json");

    // Missing required param: exit 2, named, nothing stored.
    factory(&db)
        .args(["run", template.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "missing required run param `title`",
        ));

    let output = factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "--param",
            "title=Test Report",
            "--retry-backoff-ms",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(run.len(), 36, "prints the run id: {run}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("summarize waits for approval"), "{stderr}");
    assert_eq!(status_json(&db, &run)["status"], "waiting");

    // A unique prefix of the run id works.
    factory(&db)
        .args([
            "approve",
            &run[..13],
            "summarize",
            "--note",
            "ok",
            "--retry-backoff-ms",
            "20",
        ])
        .assert()
        .success();
    let doc = status_json(&db, &run);
    assert_eq!(doc["status"], "done");
    assert_eq!(doc["blocks"]["quality-check"]["attempts"], 2);
    assert_eq!(
        doc["blocks"]["summarize"]["decisions"][0]["actor"],
        "cli:tester"
    );

    // Approving again is an input error, not a crash.
    factory(&db)
        .args(["approve", &run, "summarize", "--no-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not waiting at a gate"));
    factory(&db)
        .args(["status", "nonexistent-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not found"));
    factory(&db)
        .args(["artifacts", &run, "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no block `nope`"));

    factory(&db)
        .args(["artifacts", &run, "publish", "--key", "report"])
        .assert()
        .success()
        .stdout(predicate::str::contains("<title>Test Report</title>"));
    factory(&db)
        .args(["artifacts", &run, "quality-check", "--diff", "1", "2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("+++ check (attempt 2)"));
    factory(&db)
        .args(["logs", &run, "quality-check", "--attempt", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("simulating a truncated read"));
    factory(&db)
        .args(["events", &run])
        .assert()
        .success()
        .stdout(predicate::str::contains("retry_scheduled"));
    factory(&db)
        .args(["runs"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&run));
}

#[test]
fn rejection_feeds_back_into_the_rerun() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = root.join("examples/offline/pipeline.json");
    let output = factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "-p",
            "title=T",
            "--quiet",
        ])
        .output()
        .unwrap();
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    factory(&db)
        .args([
            "reject",
            &run,
            "summarize",
            "--feedback",
            "Add the top words in bold",
            "--quiet",
        ])
        .assert()
        .success();
    let summary = factory(&db)
        .args(["artifacts", &run, "summarize", "--key", "summary"])
        .output()
        .unwrap();
    let summary = String::from_utf8(summary.stdout).unwrap();
    assert!(
        summary.contains("## Reviewer corrections applied\n- Add the top words in bold"),
        "{summary}"
    );
    let doc = status_json(&db, &run);
    assert_eq!(
        doc["blocks"]["summarize"]["status"], "waiting",
        "waits again for a decision"
    );
    assert_eq!(
        doc["blocks"]["summarize"]["corrections"]["version"],
        "v1→v2"
    );
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

/// kill -9 the engine mid-block, then `factory resume`: the running block is
/// re-run as a new attempt, the finished upstream artifact is intact and not
/// re-executed, and the orphaned attempt's processes are gone.
#[test]
fn kill_dash_nine_then_resume_continues_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let template = dir.path().join("crash.json");
    std::fs::write(
        &template,
        serde_json::json!({
            "id": "crash", "name": "Crash", "version": "1",
            "blocks": [
                {"id": "first", "name": "First", "layer": "L0", "type": "build", "runtime": "command",
                 "inputs": {"config": {"command": ["sh", "-c", "echo run >> $MARK_DIR/first-runs; printf first-output > $FACTORY_OUTPUT_DIR/out.txt"]}},
                 "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}},
                {"id": "slow", "name": "Slow", "layer": "L1", "type": "build", "runtime": "command",
                 "inputs": {"depends": [{"block": "first", "key": "out"}],
                            "config": {"command": ["sh", "-c",
                    "if [ $FACTORY_ATTEMPT = 1 ]; then sleep 60 & echo $! > $MARK_DIR/sleep.pid; echo $$ > $MARK_DIR/slow-1.pid; wait; fi; cat $(sed -n 's/.*\"first.out\": \"\\([^\"]*\\)\".*/\\1/p' $FACTORY_INPUTS) > $FACTORY_OUTPUT_DIR/out.txt; echo \" attempt $FACTORY_ATTEMPT\" >> $FACTORY_OUTPUT_DIR/out.txt"]}},
                 "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}},
                {"id": "last", "name": "Last", "layer": "L2", "type": "build", "runtime": "builtin",
                 "inputs": {"depends": [{"block": "slow", "key": "out"}], "config": {"builtin": "noop"}},
                 "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}}
            ]
        })
        .to_string(),
    )
    .unwrap();

    // A long lease: recovery must come from seeing the dead owner, not expiry.
    let mut engine = std::process::Command::new(BIN)
        .args(["run", template.to_str().unwrap(), "--lease-ms", "600000"])
        .env("FACTORY_DB", &db)
        .env("MARK_DIR", &marks)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(engine.stdout.take().unwrap());
    let mut run = String::new();
    stdout.read_line(&mut run).unwrap();
    let run = run.trim().to_string();
    wait_for(&marks.join("slow-1.pid"), Duration::from_secs(30));
    wait_for(&marks.join("sleep.pid"), Duration::from_secs(5));
    engine.kill().unwrap(); // SIGKILL
    engine.wait().unwrap();

    let doc = status_json(&db, &run);
    assert_eq!(
        doc["blocks"]["slow"]["status"], "running",
        "the crash left it running"
    );
    assert_eq!(doc["blocks"]["first"]["status"], "done");

    let started = Instant::now();
    factory(&db)
        .env("MARK_DIR", &marks)
        .args(["resume", &run])
        .assert()
        .success();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reclaimed without waiting for the lease"
    );

    let doc = status_json(&db, &run);
    assert_eq!(doc["status"], "done");
    let slow = &doc["blocks"]["slow"];
    assert_eq!(slow["attempts"], 2);
    assert_eq!(slow["history"][0]["outcome"], "abandoned");
    assert!(
        slow["history"][0]["report"]["error"]
            .as_str()
            .unwrap()
            .contains("no longer running")
    );
    assert_eq!(slow["history"][1]["outcome"], "succeeded");
    assert_eq!(
        doc["blocks"]["first"]["attempts"], 1,
        "finished work is not redone"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("first-runs")).unwrap(),
        "run\n"
    );
    let out = factory(&db)
        .args(["artifacts", &run, "slow", "--key", "out"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "first-output attempt 2\n"
    );

    // Nothing of the killed attempt is still running.
    let sleep_pid = std::fs::read_to_string(marks.join("sleep.pid"))
        .unwrap()
        .trim()
        .to_string();
    let shell_pid = std::fs::read_to_string(marks.join("slow-1.pid"))
        .unwrap()
        .trim()
        .to_string();
    assert!(!alive(&shell_pid), "the attempt's shell survived");
    assert!(
        !alive(&sleep_pid),
        "the attempt's background sleep survived"
    );

    let events = factory(&db)
        .args(["events", &run, "--json"])
        .output()
        .unwrap();
    let kinds: Vec<Value> = String::from_utf8(events.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].clone())
        .collect();
    assert!(kinds.contains(&Value::from("attempt_abandoned")));
}

#[test]
fn audit_scores_files_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    let good = dir.path().join("notes.md");
    let bad = dir.path().join("filler.md");
    let upstream = dir.path().join("brief.md");
    std::fs::write(&upstream, "# Brief\n\nMarisol Vega teaches the Seven Second Silence and the 42 Percent Anchor to procurement negotiators.\n").unwrap();
    std::fs::write(&good, "# Marisol Vega's methods\n\n## Seven Second Silence\n\n- After the offer, Marisol Vega counts to 7 before answering.\n- In 2024 she trained 310 procurement negotiators with it.\n\n## 42 Percent Anchor\n\n- Open at 42% of the target discount, as Marisol Vega teaches.\n").unwrap();
    std::fs::write(&bad, "# Notes\n\nIn today's fast-paced world, unlock your potential with cutting-edge, world-class synergies. TODO: add examples. [INSERT STORY HERE]\n").unwrap();

    let json_for = |file: &Path| -> Value {
        let output = factory(&db)
            .args([
                "audit",
                file.to_str().unwrap(),
                "--upstream",
                upstream.to_str().unwrap(),
                "--subject",
                "Marisol Vega",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let good_report = json_for(&good);
    let bad_report = json_for(&bad);
    let composite = |r: &Value| r["composite"].as_f64().unwrap();
    assert!(
        composite(&good_report) > composite(&bad_report) + 1.5,
        "{good_report} vs {bad_report}"
    );
    assert!(good_report["badge"].as_str().unwrap().starts_with("A:"));
    assert!(bad_report["d4"]["score"].as_f64() < good_report["d4"]["score"].as_f64());

    factory(&db)
        .args([
            "audit",
            bad.to_str().unwrap(),
            "--subject",
            "Marisol Vega",
            "--min",
            "9.5",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("D2 specificity"))
        .stdout(predicate::str::contains("filler.md"))
        .stdout(predicate::str::contains("fix suggestions"));
    factory(&db)
        .args(["audit", "/no/such.md"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read artifact"));

    // The one line the no-op builtin writes is junk, and --explain says why.
    let noop = dir.path().join("research.md");
    std::fs::write(&noop, "Deep Research (attempt 1)\n").unwrap();
    let output = factory(&db)
        .args(["audit", noop.to_str().unwrap(), "--explain", "--min", "6"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "below --min 6");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("A:0.5  research.md"), "{text}");
    for expected in [
        "D5 second-order effects (d5, weight 20%): n/a",
        "n/a         upstream:none",
        "judged 100% present:research.md",
        "→ moved by present:research.md −10.0",
        "(d5 n/a, weights renormalised)",
        "capped at 0.5 (junk signal): research.md: is what the no-op builtin writes, not work",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // Each suggestion names its artifact and location once.
    assert!(
        text.contains("[critical] d1: research.md: holds only what the no-op builtin writes"),
        "{text}"
    );
    assert!(!text.contains("research.md: research.md"), "{text}");
}

/// Two engine processes drive the same run on one PostgreSQL database at the
/// same time: every block runs exactly once and both see the run finish.
#[test]
fn two_workers_share_a_run_on_postgres_without_running_a_block_twice() {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(factory_store::testing::fresh_postgres_database());
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut blocks = vec![serde_json::json!({
        "id": "root", "name": "Root", "layer": "L0", "type": "build", "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
    })];
    for i in 0..12 {
        blocks.push(serde_json::json!({
            "id": format!("w{i}"), "name": format!("Worker {i}"), "layer": "L1", "type": "build", "runtime": "command",
            "inputs": {"depends": [{"block": "root", "key": "out"}],
                       "config": {"command": ["sh", "-c", "echo \"$FACTORY_BLOCK_ID $FACTORY_ATTEMPT $PPID\" >> $MARK_DIR/$FACTORY_BLOCK_ID; sleep 1; echo ok > $FACTORY_OUTPUT_DIR/out.txt"]}},
            "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]},
            "execution": {"parallel_group": "wide", "max_retries": 0}
        }));
    }
    blocks.push(serde_json::json!({
        "id": "join", "name": "Join", "layer": "L2", "type": "build", "runtime": "builtin",
        "inputs": {"depends": (0..12).map(|i| serde_json::json!({"block": format!("w{i}"), "key": "out"})).collect::<Vec<_>>(),
                   "config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
    }));
    let template = dir.path().join("wide.json");
    std::fs::write(
        &template,
        serde_json::json!({"id": "wide", "name": "Wide", "version": "1", "blocks": blocks})
            .to_string(),
    )
    .unwrap();

    let created = factory(Path::new(&url))
        .env("FACTORY_DB", &url)
        .args(["run", template.to_str().unwrap(), "--no-run"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let run = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();

    let spawn = || {
        std::process::Command::new(BIN)
            .args([
                "resume",
                &run,
                "--max-concurrency",
                "0",
                "--slots",
                "3",
                "--lease-ms",
                "3000",
                "--quiet",
            ])
            .env("FACTORY_DB", &url)
            .env("MARK_DIR", &marks)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    for worker in [first, second] {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut runners = std::collections::BTreeSet::new();
    for i in 0..12 {
        let lines = std::fs::read_to_string(marks.join(format!("w{i}"))).unwrap();
        assert_eq!(lines.lines().count(), 1, "w{i} ran more than once: {lines}");
        runners.insert(lines.split_whitespace().nth(2).unwrap().to_string());
    }
    let output = factory(Path::new(&url))
        .env("FACTORY_DB", &url)
        .args(["status", &run, "--json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["status"], "done");
    for i in 0..12 {
        assert_eq!(doc["blocks"][format!("w{i}")]["attempts"], 1);
    }
    // Both processes did work (each claims up to 3 blocks at a time).
    assert_eq!(runners.len(), 2, "work was not shared: {runners:?}");
}

#[test]
fn a_broken_config_file_is_an_input_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("factory.toml");
    std::fs::write(&config, "[prices.m]\ninput = 1\noutptu = 2\n").unwrap();
    let template = repo_root().join("examples/offline/pipeline.json");
    factory(&dir.path().join("db"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            template.to_str().unwrap(),
            "-p",
            "title=x",
            "--no-run",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("factory.toml"))
        .stderr(predicate::str::contains("outptu"));
}

/// A bare HTTP/1.1 request (the test needs no client library for this).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_shares_the_store_with_the_cli_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let created = factory(&db)
        .args(["token", "create", "--role", "operator", "--name", "ana"])
        .output()
        .unwrap();
    assert!(created.status.success());
    let token = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.starts_with("pf_"), "{token}");
    let listed = factory(&db).args(["token", "list"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("operator") && listed.contains("ana"),
        "{listed}"
    );
    assert!(
        !listed.contains(&token[3..]),
        "the secret is never shown again"
    );
    factory(&db)
        .args(["token", "create", "--role", "root"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "viewer, reviewer, operator or admin",
        ));

    let examples = repo_root().join("examples/offline");
    let mut server = std::process::Command::new(BIN)
        .env("FACTORY_DB", &db)
        .args(["serve", "--addr", "127.0.0.1:0", "--templates"])
        .arg(&examples)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    assert_eq!(http(&addr, "GET", "/api/v1/health", None, "").0, 200);
    let (status, body) = http(&addr, "GET", "/api/v1/runs", None, "");
    assert_eq!(status, 401, "{body}");

    // A run started in the CLI is visible to, and continued by, the server.
    let output = factory(&db)
        .args(["run", "--quiet"])
        .arg(examples.join("pipeline.json"))
        .args(["--param", "title=Shared"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let (status, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/runs/{run}"),
        Some(&token),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"waiting\""), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        &format!("/api/v1/runs/{run}/blocks/summarize/approve"),
        Some(&token),
        "{\"note\": \"from the API\"}",
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = status_json(&db, &run);
        if doc["status"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not finish the run: {doc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: the server stops and exits 0.
    // SAFETY: sends a signal to the child this test spawned and still owns.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let started = Instant::now();
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // --no-auth is refused off loopback.
    factory(&db)
        .args(["serve", "--no-auth", "--addr", "0.0.0.0:0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("loopback"));
}
