//! `factory worker`: standing processes that serve every run of a
//! PostgreSQL store, share the work without running a block twice, and
//! finish what they run when stopped with SIGTERM.

use super::*;

/// A template of `width` command blocks after a root, each appending
/// "<block> <attempt> <worker pid>" to its mark file and sleeping `secs`.
fn wide_template(dir: &Path, id: &str, width: usize, secs: &str) -> PathBuf {
    let mut blocks = vec![serde_json::json!({
        "id": "root", "name": "Root", "layer": "L0", "type": "build", "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
    })];
    for i in 0..width {
        blocks.push(serde_json::json!({
            "id": format!("w{i}"), "name": format!("Worker {i}"), "layer": "L1", "type": "build", "runtime": "command",
            "inputs": {"depends": [{"block": "root", "key": "out"}],
                       "config": {"command": ["sh", "-c", format!("echo \"$FACTORY_BLOCK_ID $FACTORY_ATTEMPT $PPID\" >> $MARK_DIR/$FACTORY_RUN_ID.$FACTORY_BLOCK_ID; sleep {secs}; echo ok > $FACTORY_OUTPUT_DIR/out.txt")]}},
            "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]},
            "execution": {"max_retries": 0}
        }));
    }
    let path = dir.join(format!("{id}.json"));
    std::fs::write(
        &path,
        serde_json::json!({"id": id, "name": id, "version": "1", "blocks": blocks}).to_string(),
    )
    .unwrap();
    path
}

fn create_run(url: &str, template: &Path, env: &[(&str, &str)]) -> String {
    let created = factory(Path::new(url))
        .args(["run", template.to_str().unwrap(), "--no-run"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn wait_done(url: &str, run: &str) -> Value {
    wait_while_running(
        Duration::from_secs(90),
        &format!("the workers did not finish {run}"),
        || status_json(Path::new(url), run),
    )
}

struct Worker {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<Vec<String>>,
    /// host:port of its `/metrics`.
    metrics: String,
}

/// The sum of a metric's samples (all label sets) in a worker's `/metrics`.
fn metric(worker: &Worker, name: &str, labels: &str) -> f64 {
    let (status, body) = http(&worker.metrics, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fresh PostgreSQL database and a scratch directory.
fn fresh_store() -> (String, tempfile::TempDir) {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(factory_store::testing::fresh_postgres_database());
    (url, tempfile::tempdir().unwrap())
}

/// Starts `factory worker` and returns once it says it serves.
fn start_worker(url: &str, marks: &Path, work: &Path, env: &[(&str, &str)]) -> Worker {
    let mut child = std::process::Command::new(BIN)
        .args([
            "worker",
            "--slots",
            "2",
            "--max-concurrency",
            "0",
            "--lease-ms",
            "3000",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--work-dir")
        .arg(work)
        .env("FACTORY_DB", url)
        .env("MARK_DIR", marks)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (banner, stderr) = worker_banner(&mut child);
    assert!(banner.contains("2 blocks at once"), "{banner}");
    let metrics = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {banner}"))
        .to_string();
    Worker {
        child,
        stderr,
        metrics,
    }
}

fn sigterm(worker: &Worker) {
    // SAFETY: sends a signal to a child this test spawned and still owns.
    unsafe {
        libc::kill(worker.child.id() as i32, libc::SIGTERM);
    }
}

#[test]
fn standing_workers_serve_new_runs_share_them_and_finish_on_sigterm() {
    let (url, dir) = fresh_store();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let workers = [
        start_worker(&url, &marks, &dir.path().join("work-a"), &[]),
        start_worker(&url, &marks, &dir.path().join("work-b"), &[]),
    ];
    let pids: Vec<String> = workers.iter().map(|w| w.child.id().to_string()).collect();

    // Runs created after the workers started: they learn of them from the
    // database, with nobody driving the runs.
    let wide = wide_template(dir.path(), "wide", 6, "0.3");
    let runs = [create_run(&url, &wide, &[]), create_run(&url, &wide, &[])];
    let mut ran_by = std::collections::BTreeSet::new();
    for run in &runs {
        let doc = wait_done(&url, run);
        assert_eq!(doc["status"], "done", "{doc}");
        for i in 0..6 {
            let lines = std::fs::read_to_string(marks.join(format!("{run}.w{i}"))).unwrap();
            assert_eq!(
                lines.lines().count(),
                1,
                "{run} w{i} ran more than once: {lines}"
            );
            let pid = lines.split_whitespace().nth(2).unwrap().to_string();
            assert!(
                pids.contains(&pid),
                "w{i} ran in {pid}, not a worker: {pids:?}"
            );
            ran_by.insert(pid);
            assert_eq!(doc["blocks"][format!("w{i}")]["attempts"], 1);
        }
    }
    assert_eq!(ran_by.len(), 2, "both workers ran blocks: {ran_by:?}");

    // Each worker's /metrics counts what it did: together, 14 claims and 14
    // attempts that ended well, none running now.
    let total =
        |name: &str, labels: &str| -> f64 { workers.iter().map(|w| metric(w, name, labels)).sum() };
    assert_eq!(total("factory_worker_claims_total", ""), 14.0);
    assert_eq!(
        total(
            "factory_worker_attempt_duration_seconds_count",
            "outcome=\"ok\""
        ),
        14.0
    );
    assert_eq!(total("factory_worker_attempts_running", ""), 0.0);
    assert_eq!(total("factory_worker_lease_losses_total", ""), 0.0);
    for worker in &workers {
        assert!(
            metric(worker, "factory_worker_claims_total", "") >= 1.0,
            "each worker claimed blocks"
        );
    }

    // SIGTERM while a block runs: the worker stops starting blocks, lets the
    // running one finish and records it, then exits 0.
    let slow = wide_template(dir.path(), "slow", 1, "2");
    let run = create_run(&url, &slow, &[]);
    let mark = marks.join(format!("{run}.w0"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "nobody started the slow block");
        std::thread::sleep(Duration::from_millis(20));
    }
    for worker in &workers {
        sigterm(worker);
    }
    for worker in workers {
        let Worker {
            mut child, stderr, ..
        } = worker;
        let status = child.wait().unwrap();
        let lines = stderr.join().unwrap();
        assert!(status.success(), "{status:?}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("shutting down")),
            "{lines:?}"
        );
    }
    let doc = status_json(Path::new(&url), &run);
    assert_eq!(
        doc["status"], "done",
        "the running block was finished and recorded: {doc}"
    );
    assert_eq!(doc["blocks"]["w0"]["attempts"], 1);
}

/// An OpenAI-compatible server that answers every chat call after `delay`,
/// many at once, and counts the most calls it had in flight together.
struct CountingLlm {
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
}

impl CountingLlm {
    fn start(delay: Duration) -> (std::sync::Arc<CountingLlm>, String) {
        use std::io::Write;
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let llm = std::sync::Arc::new(CountingLlm {
            in_flight: 0.into(),
            most: 0.into(),
            calls: 0.into(),
        });
        let server = llm.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let llm = server.clone();
                std::thread::spawn(move || {
                    let (request_line, body) = read_request(&stream);
                    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let text = "## Notes\n\nThe shared limit held: one reply among many.\n";
                    let (kind, reply) = if !request_line.starts_with("POST") {
                        (
                            "application/json",
                            serde_json::json!({"object": "list", "data": [{"id": "tiny"}]})
                                .to_string(),
                        )
                    } else {
                        let now = llm.in_flight.fetch_add(1, SeqCst) + 1;
                        llm.most.fetch_max(now, SeqCst);
                        llm.calls.fetch_add(1, SeqCst);
                        std::thread::sleep(delay);
                        llm.in_flight.fetch_sub(1, SeqCst);
                        if request["stream"] == true {
                            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]});
                            (
                                "text/event-stream",
                                format!("data: {chunk}\n\ndata: [DONE]\n\n"),
                            )
                        } else {
                            let reply = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
                            ("application/json", reply.to_string())
                        }
                    };
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                            reply.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        (llm, url)
    }
}

#[test]
fn workers_keep_a_providers_concurrency_limit_together() {
    use std::sync::atomic::Ordering::SeqCst;
    let (url, dir) = fresh_store();
    let (llm, llm_url) = CountingLlm::start(Duration::from_millis(300));
    // Two calls in flight to the provider, for the whole fleet: each worker
    // alone would make two (it runs up to two blocks), together four.
    let env = [
        ("FACTORY_LLM_BASE_URL", llm_url.as_str()),
        ("FACTORY_LLM_MODEL", "tiny"),
        ("FACTORY_LLM_CONCURRENCY", "2"),
    ];
    let workers = [
        start_worker(&url, dir.path(), &dir.path().join("work-a"), &env),
        start_worker(&url, dir.path(), &dir.path().join("work-b"), &env),
    ];
    let skill = dir.path().join("skills/notes");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(skill.join("SKILL.md"), "# Notes\nWrite short notes.\n").unwrap();
    let blocks: Vec<Value> = (0..8)
        .map(|i| {
            serde_json::json!({
                "id": format!("n{i}"), "name": format!("Notes {i}"), "layer": "L0", "type": "build",
                "runtime": "llm", "skill": "notes", "execution": {"max_retries": 0},
                "outputs": {"artifacts": [{"key": "notes", "path": "notes.md", "format": "md"}]}
            })
        })
        .collect();
    let template = dir.path().join("notes.json");
    std::fs::write(
        &template,
        serde_json::json!({"id": "notes", "name": "Notes", "version": "1", "blocks": blocks})
            .to_string(),
    )
    .unwrap();
    let run = create_run(&url, &template, &env);
    let doc = wait_done(&url, &run);
    assert_eq!(doc["status"], "done", "{doc}");
    assert_eq!(llm.calls.load(SeqCst), 8);
    assert_eq!(
        llm.most.load(SeqCst),
        2,
        "at most two calls in flight across both workers, and both slots used"
    );
    let claimed: Vec<f64> = workers
        .iter()
        .map(|w| metric(w, "factory_worker_claims_total", ""))
        .collect();
    assert!(
        claimed.iter().all(|c| *c >= 1.0),
        "both workers ran blocks: {claimed:?}"
    );
    for worker in workers {
        sigterm(&worker);
        let Worker { mut child, .. } = worker;
        assert!(child.wait().unwrap().success());
    }
}
