//! Pattern 2 through the real binary: signed webhooks into `factory serve`,
//! records moving through their states, and a kill -9 in the middle.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use factory_server::signature::HookSecret;
use serde_json::{Value, json};

use super::{BIN, factory, repo_root};

/// A `factory serve` child and where it listens.
pub(super) struct Server {
    pub(super) child: Child,
    pub(super) addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `factory serve` over `templates`; its steps append to `log` (as
/// `STREAM_LOG`) when given.
pub(super) fn serve(db: &Path, templates: &Path, secret: &str, log: Option<&Path>) -> Server {
    let mut child = std::process::Command::new(BIN)
        .env("FACTORY_DB", db)
        .env("INGEST_WEBHOOK_SECRET", secret)
        .env("STREAM_LOG", log.unwrap_or(Path::new("/dev/null")))
        .env("FACTORY_WORK_DIR", db.parent().unwrap().join("work"))
        .args(["serve", "--no-auth", "--addr", "127.0.0.1:0", "--templates"])
        .arg(templates)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Server { child, addr }
}

/// One HTTP/1.1 request with extra headers; the status and body.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A refused large body may be answered before it is all sent.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn signed(secret: &HookSecret, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), secret.sign(id, timestamp, body)),
    ]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn deliver(
    addr: &str,
    secret: &HookSecret,
    path: &str,
    id: &str,
    payload: &Value,
) -> (u16, String) {
    let body = serde_json::to_vec(payload).unwrap();
    request(
        addr,
        "POST",
        path,
        &signed(secret, id, now_secs(), &body),
        &body,
    )
}

/// `factory records TEMPLATE --json`, read from the database file.
pub(super) fn records(db: &Path, template: &str) -> Value {
    let output = factory(db)
        .args(["records", template, "--json", "--limit", "10000"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Records per (state, status).
fn counts(db: &Path, template: &str) -> BTreeMap<(String, String), u64> {
    records(db, template)["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["state"].as_str().unwrap().to_string(),
                    c["status"].as_str().unwrap().to_string(),
                ),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub(super) fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_example(to: &Path) -> PathBuf {
    let templates = to.join("templates");
    std::fs::create_dir_all(templates.join("ingest-steps")).unwrap();
    let root = repo_root().join("templates");
    std::fs::copy(
        root.join("ingest-stream.json"),
        templates.join("ingest-stream.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("ingest-steps/step.py"),
        templates.join("ingest-steps/step.py"),
    )
    .unwrap();
    templates
}

/// The README's example: every kind of delivery the hook must refuse,
/// replays acknowledged once, items through five states, a failed item
/// retried by a person.
#[test]
fn signed_webhooks_feed_records_through_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let templates = copy_example(dir.path());
    let secret_text = HookSecret::generate();
    let secret = HookSecret::parse(&secret_text).unwrap();
    let server = serve(&db, &templates, &secret_text, None);
    let addr = server.addr.as_str();
    let hook = "/api/v1/hooks/ingest-stream/intake";

    // Refused, and nothing stored: no signature, a wrong one, a stale or
    // future timestamp, a signature over another body.
    let body = serde_json::to_vec(&json!({"item_id": "bad", "text": "x"})).unwrap();
    let other = HookSecret::parse(&HookSecret::generate()).unwrap();
    let now = now_secs();
    for (headers, code) in [
        (Vec::new(), "missing_signature_header"),
        (signed(&other, "m0", now, &body), "bad_signature"),
        (signed(&secret, "m0", now - 301, &body), "stale_timestamp"),
        (signed(&secret, "m0", now + 400, &body), "stale_timestamp"),
        (
            signed(&secret, "m0", now, b"{\"item_id\": \"other\"}"),
            "bad_signature",
        ),
    ] {
        let (status, reply) = request(addr, "POST", hook, &headers, &body);
        assert_eq!(status, 401, "{reply}");
        assert!(reply.contains(code), "{code}: {reply}");
    }
    // Unknown hooks, junk bodies, a body over the bound.
    let (status, reply) = deliver(
        addr,
        &secret,
        "/api/v1/hooks/ingest-stream/transcribe",
        "m1",
        &json!({}),
    );
    assert_eq!(status, 404, "{reply}");
    assert!(reply.contains("intake"), "names the hooks it has: {reply}");
    let (status, _) = deliver(addr, &secret, "/api/v1/hooks/nope/intake", "m1", &json!({}));
    assert_eq!(status, 404);
    let junk = b"not json";
    let (status, reply) = request(
        addr,
        "POST",
        hook,
        &signed(&secret, "m2", now_secs(), junk),
        junk,
    );
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = deliver(addr, &secret, hook, "m3", &json!({"title": "no key"}));
    assert_eq!(status, 422, "{reply}");
    assert!(reply.contains("item_id"), "{reply}");
    let big = vec![b' '; 1024 * 1024 + 1];
    let (status, _) = request(
        addr,
        "POST",
        hook,
        &signed(&secret, "m4", now_secs(), &big),
        &big,
    );
    assert_eq!(status, 413);
    assert!(
        counts(&db, "ingest-stream").is_empty(),
        "a refused delivery stored something"
    );

    // Good deliveries; the declared path `feeds/items` reaches the same intake.
    let texts = [
        (
            "a1",
            "Human feedback for machine learning pipelines keeps them honest.",
        ),
        ("a2", "A recipe for bread: flour, water, salt and time."),
        (
            "a3",
            "Pipelines that learn from human review converge faster.",
        ),
    ];
    for (n, (key, text)) in texts.iter().enumerate() {
        let (status, reply) = deliver(
            addr,
            &secret,
            hook,
            &format!("msg-{n}"),
            &json!({"item_id": key, "text": text}),
        );
        assert_eq!(status, 202, "{reply}");
        assert!(reply.contains("\"receipt\":\"created\""), "{reply}");
    }
    let (status, reply) = deliver(
        addr,
        &secret,
        "/api/v1/hooks/feeds/items",
        "msg-9",
        &json!({"item_id": "empty"}),
    );
    assert_eq!(status, 202, "{reply}");
    // A delivery may name any path: the example reads only its watched folder.
    let peek = json!({"item_id": "peek", "path": "/etc/hostname"});
    let (status, reply) = deliver(addr, &secret, hook, "msg-11", &peek);
    assert_eq!(status, 202, "{reply}");
    // A replayed webhook-id is acknowledged, not processed again; a new
    // delivery of a known item makes no second record.
    let (status, reply) = deliver(
        addr,
        &secret,
        hook,
        "msg-0",
        &json!({"item_id": "a1", "text": "changed"}),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"receipt\":\"replayed\""), "{reply}");
    let (status, reply) = deliver(
        addr,
        &secret,
        hook,
        "msg-10",
        &json!({"item_id": "a1", "text": "changed"}),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"receipt\":\"known_record\""), "{reply}");

    let scored = ("scored".to_string(), "done".to_string());
    let failed = ("received".to_string(), "failed".to_string());
    wait_for(
        Duration::from_secs(60),
        "three items scored and two failed",
        || {
            let c = counts(&db, "ingest-stream");
            c.get(&scored) == Some(&3) && c.get(&failed) == Some(&2)
        },
    );

    // What the steps wrote, through the API.
    let (status, reply) = request(addr, "GET", "/api/v1/records/ingest-stream/a1", &[], b"");
    assert_eq!(status, 200, "{reply}");
    let a1: Value = serde_json::from_str(&reply).unwrap();
    let data = &a1["record"]["data"];
    assert_eq!(
        data["text"], texts[0].1,
        "the replayed delivery changed nothing"
    );
    assert!(
        data["transcript"]
            .as_str()
            .unwrap()
            .starts_with("Human feedback")
    );
    assert!(
        data["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "feedback"),
        "{data}"
    );
    assert_eq!(data["embedding"].as_array().unwrap().len(), 64);
    let score_a1 = data["score"].as_f64().unwrap();
    let moves: Vec<&str> = a1["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "moved")
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(moves, ["transcribed", "annotated", "embedded", "scored"]);
    let (_, reply) = request(addr, "GET", "/api/v1/records/ingest-stream/a2", &[], b"");
    let score_a2 = serde_json::from_str::<Value>(&reply).unwrap()["record"]["data"]["score"]
        .as_f64()
        .unwrap();
    assert!(
        score_a1 > score_a2,
        "the on-topic item scores higher: {score_a1} vs {score_a2}"
    );

    // The failed item: its error, through the API's filter; a person
    // retries it; a done item cannot be retried.
    let (status, reply) = request(
        addr,
        "GET",
        "/api/v1/records?template=ingest-stream&status=failed",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{reply}");
    let listed: Value = serde_json::from_str(&reply).unwrap();
    let failed_record = |key: &str| {
        listed["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{key} not failed: {listed}"))
            .clone()
    };
    let empty = failed_record("empty");
    assert_eq!(empty["attempts"], 2);
    assert!(
        empty["error"]
            .as_str()
            .unwrap()
            .contains("nothing to transcribe")
    );
    let peek = failed_record("peek");
    assert!(
        peek["error"]
            .as_str()
            .unwrap()
            .contains("outside the watched folder"),
        "{peek}"
    );
    let (status, _) = request(
        addr,
        "GET",
        "/api/v1/records?template=ingest-stream&status=stuck",
        &[],
        b"",
    );
    assert_eq!(status, 400);
    let (status, reply) = request(
        addr,
        "POST",
        "/api/v1/records/ingest-stream/a1/retry",
        &[],
        b"",
    );
    assert_eq!(status, 409, "{reply}");
    let (status, reply) = request(
        addr,
        "POST",
        "/api/v1/records/ingest-stream/empty/retry",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{reply}");
    wait_for(
        Duration::from_secs(30),
        "the retried item to fail again",
        || {
            let (_, reply) = request(addr, "GET", "/api/v1/records/ingest-stream/empty", &[], b"");
            let kinds: Vec<String> = serde_json::from_str::<Value>(&reply).unwrap()["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["kind"].as_str().unwrap().to_string())
                .collect();
            kinds
                == [
                    "received",
                    "attempt_failed",
                    "failed",
                    "retried",
                    "attempt_failed",
                    "failed",
                ]
        },
    );

    // A person adds an item: through the API (the manual intake `add`) and
    // the CLI (with the template's file); a known key changes nothing.
    let by_hand = serde_json::to_vec(
        &json!({"item_id": "hand-1", "text": "Pipelines learn from human feedback."}),
    )
    .unwrap();
    let (status, reply) = request(addr, "POST", "/api/v1/records/ingest-stream", &[], &by_hand);
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = request(addr, "POST", "/api/v1/records/ingest-stream", &[], &by_hand);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("known_record"), "{reply}");
    let (status, reply) = request(
        addr,
        "POST",
        "/api/v1/records/ingest-stream?block=intake",
        &[],
        &by_hand,
    );
    assert_eq!(status, 422, "a webhook intake is not manual: {reply}");
    let item = dir.path().join("item.json");
    std::fs::write(
        &item,
        r#"{"item_id": "hand-2", "text": "Added from the command line."}"#,
    )
    .unwrap();
    let output = factory(&db)
        .args(["records", "ingest-stream", "--add"])
        .arg(&item)
        .arg("--from")
        .arg(templates.join("ingest-stream.json"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for(Duration::from_secs(30), "both added items scored", || {
        counts(&db, "ingest-stream").get(&scored) == Some(&5)
    });
    let (_, reply) = request(
        addr,
        "GET",
        "/api/v1/records/ingest-stream/hand-2",
        &[],
        b"",
    );
    let received = &serde_json::from_str::<Value>(&reply).unwrap()["history"][0];
    assert_eq!(received["block"], "add", "{reply}");
    assert_eq!(received["by"], "cli:tester", "{reply}");

    // The CLI shows the same.
    let output = factory(&db)
        .args(["records", "ingest-stream"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("scored") && text.contains("nothing to transcribe"),
        "{text}"
    );
}

/// A four-state stream whose steps log every record they handle: the
/// server is killed (SIGKILL) mid-stream and started again. Every record
/// reaches the last state; each moved through each state exactly once
/// (its history); what the steps wrote shows none lost, and the only
/// repeats are of batches in flight at the kill.
#[test]
fn records_survive_a_kill_9_midstream() {
    const RECORDS: usize = 300;
    const BATCH: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let log = dir.path().join("written.log");
    // Each step appends "<block> <key>" per record, then writes its results.
    let step = templates.join("step.sh");
    std::fs::write(
        &step,
        r#"#!/bin/sh
set -eu
input=$(sed -n 's/.*: *"\([^"]*\)".*/\1/p' "$FACTORY_INPUTS" | head -n 1)
keys=$(grep -o '"key": *"[^"]*"' "$input" | sed 's/.*"\([^"]*\)"$/\1/')
sleep 0.02
out="$FACTORY_OUTPUT_DIR/results.json"
printf '[' > "$out"
sep=''
for key in $keys; do
  echo "$FACTORY_BLOCK_ID $key" >> "$STREAM_LOG"
  printf '%s{"key": "%s", "data": {"%s": true}}' "$sep" "$key" "$FACTORY_BLOCK_ID" >> "$out"
  sep=','
done
printf ']' >> "$out"
"#,
    )
    .unwrap();
    let stage = |id: &str, after: &str, key: &str| {
        json!({
            "id": id, "name": id, "layer": "L1", "type": "build", "runtime": "command", "timeout": 5000,
            "lifecycle": {"mode": "daemon"},
            "inputs": {"depends": [{"block": after, "key": key}],
                       "config": {"command": ["sh", "${FACTORY_TEMPLATE_DIR}/step.sh"], "batch": BATCH}},
            "outputs": {"artifacts": [{"key": "results", "path": "results.json", "format": "json"}]}
        })
    };
    let template = json!({
        "id": "kill", "name": "Kill", "version": "1",
        "blocks": [
            {"id": "intake", "name": "intake", "layer": "L0", "type": "ingest", "runtime": "builtin",
             "trigger": {"type": "webhook", "secret_env": "INGEST_WEBHOOK_SECRET"},
             "lifecycle": {"mode": "daemon"},
             "record_state": {"track_per": "id", "states": ["raw", "one", "two", "three"]},
             "inputs": {"config": {"builtin": "noop"}},
             "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}},
            stage("first", "intake", "records"),
            stage("second", "first", "results"),
            stage("third", "second", "results"),
        ]
    });
    std::fs::write(
        templates.join("kill.json"),
        serde_json::to_vec_pretty(&template).unwrap(),
    )
    .unwrap();
    let output = factory(&db)
        .arg("validate")
        .arg(templates.join("kill.json"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let secret_text = HookSecret::generate();
    let secret = HookSecret::parse(&secret_text).unwrap();
    let mut server = serve(&db, &templates, &secret_text, Some(&log));
    for n in 0..RECORDS {
        let (status, reply) = deliver(
            &server.addr,
            &secret,
            "/api/v1/hooks/kill/intake",
            &format!("m{n}"),
            &json!({"id": format!("r{n:04}")}),
        );
        assert_eq!(status, 202, "{reply}");
    }
    let three = ("three".to_string(), "done".to_string());
    wait_for(Duration::from_secs(60), "some records through", || {
        counts(&db, "kill").get(&three).copied().unwrap_or(0) >= 30
    });
    // SIGKILL: no shutdown, leases left behind, a batch perhaps half written.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let at_kill = counts(&db, "kill");
    assert!(
        at_kill.get(&three).copied().unwrap_or(0) < RECORDS as u64,
        "the kill came too late to test anything: {at_kill:?}"
    );
    // Deliveries redelivered after the restart (a sender that saw no reply
    // sends again) are acknowledged, not processed twice.
    let server = serve(&db, &templates, &secret_text, Some(&log));
    for n in 0..20 {
        let (status, _) = deliver(
            &server.addr,
            &secret,
            "/api/v1/hooks/kill/intake",
            &format!("m{n}"),
            &json!({"id": format!("r{n:04}")}),
        );
        assert_eq!(status, 200);
    }
    wait_for(
        Duration::from_secs(120),
        "every record through after the restart",
        || counts(&db, "kill").get(&three).copied().unwrap_or(0) == RECORDS as u64,
    );
    assert_eq!(counts(&db, "kill").len(), 1, "{:?}", counts(&db, "kill"));

    // Each record moved through each state once, by its history.
    for n in [0, RECORDS / 2, RECORDS - 1] {
        let output = factory(&db)
            .args(["records", "kill", "--json", "--key", &format!("r{n:04}")])
            .output()
            .unwrap();
        let record: Value = serde_json::from_slice(&output.stdout).unwrap();
        let moves: Vec<&str> = record["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["kind"] == "moved")
            .map(|h| h["to"].as_str().unwrap())
            .collect();
        assert_eq!(moves, ["one", "two", "three"], "{record}");
        let data = &record["record"]["data"];
        assert!(
            data["first"] == true && data["second"] == true && data["third"] == true,
            "{data}"
        );
    }
    // What the steps wrote: every (step, record) at least once; more only
    // for batches in flight at the kill (at most one per step).
    let written = std::fs::read_to_string(&log).unwrap();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in written.lines() {
        *seen.entry(line).or_default() += 1;
    }
    let distinct: BTreeSet<&str> = seen.keys().copied().collect();
    assert_eq!(distinct.len(), RECORDS * 3, "a record was lost by a step");
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        repeats <= BATCH * 3,
        "{repeats} repeated step executions; only in-flight batches may repeat"
    );
    eprintln!(
        "kill -9 midstream: {RECORDS} records, {repeats} step executions repeated (in-flight batches), 0 lost, 0 moved twice"
    );
}

/// The example's watched folder: its cron intake fires as the server
/// starts (the current minute's tick), takes each text file as an item once,
/// and the items move to the last state; a restart does not take them again.
#[test]
fn a_cron_intake_takes_each_file_of_a_watched_folder_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let templates = copy_example(dir.path());
    let inbox = templates.join("ingest-inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("a.txt"),
        "Human feedback makes machine learning pipelines better.",
    )
    .unwrap();
    std::fs::write(inbox.join("b.txt"), "A note about bread.").unwrap();
    std::fs::write(inbox.join("ignored.md"), "not a .txt file").unwrap();
    let secret = HookSecret::generate();
    let server = serve(&db, &templates, &secret, None);
    let scored = ("scored".to_string(), "done".to_string());
    wait_for(Duration::from_secs(60), "both files scored", || {
        counts(&db, "ingest-stream").get(&scored) == Some(&2)
    });
    let listed = records(&db, "ingest-stream");
    let firings = listed["firings"].as_array().unwrap();
    let first = firings.last().unwrap();
    assert_eq!(first["block"], "watch-folder", "{listed}");
    assert_eq!(first["created"], 2, "{listed}");
    assert!(first["error"].is_null(), "{listed}");
    let keys: BTreeSet<&str> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from(["file:a.txt", "file:b.txt"]));
    drop(server);

    // Started again: the tick it fired is not fired again, and a later one
    // finds the files known.
    let _server = serve(&db, &templates, &secret, None);
    std::thread::sleep(Duration::from_secs(2));
    let again = records(&db, "ingest-stream");
    assert_eq!(again["records"].as_array().unwrap().len(), 2, "{again}");
    for firing in again["firings"].as_array().unwrap() {
        assert!(
            firing["created"] == 2 || firing["created"] == 0,
            "a file taken twice: {again}"
        );
    }
    let output = factory(&db)
        .args(["records", "ingest-stream", "--key", "file:a.txt", "--json"])
        .output()
        .unwrap();
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    let received: Vec<&Value> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "received")
        .collect();
    assert_eq!(received.len(), 1, "{record}");
    assert_eq!(received[0]["block"], "watch-folder");
    assert!(
        received[0]["tick"].as_i64().unwrap() % 60_000 == 0,
        "a minute's tick: {record}"
    );
    assert!(
        record["record"]["data"]["transcript"]
            .as_str()
            .unwrap()
            .starts_with("Human feedback")
    );
}

/// `factory worker --templates` runs a stream's stages without a server:
/// records added by hand (the manual intake, from the CLI) move to the
/// last state, and SIGTERM stops the worker cleanly.
#[test]
fn a_worker_runs_the_stages_of_its_stream_templates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let stage = |id: &str, after: &str| {
        json!({
            "id": id, "name": id, "layer": "L1", "type": "build", "runtime": "builtin",
            "lifecycle": {"mode": "daemon"},
            "inputs": {"depends": [{"block": after, "key": "records"}], "config": {"builtin": "noop", "batch": 10}},
            "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}
        })
    };
    let template = json!({
        "id": "by-hand", "name": "By hand", "version": "1",
        "blocks": [
            {"id": "add", "name": "add", "layer": "L0", "type": "ingest", "runtime": "builtin",
             "trigger": {"type": "manual"}, "lifecycle": {"mode": "daemon"},
             "record_state": {"track_per": "id", "states": ["new", "seen", "done"]},
             "inputs": {"config": {"builtin": "noop"}},
             "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}},
            stage("see", "add"),
            stage("finish", "see"),
        ]
    });
    let file = templates.join("by-hand.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&template).unwrap()).unwrap();
    for n in 0..3 {
        let item = dir.path().join(format!("item-{n}.json"));
        std::fs::write(&item, format!("{{\"id\": \"r{n}\"}}")).unwrap();
        let output = factory(&db)
            .args(["records", "by-hand", "--add"])
            .arg(&item)
            .arg("--from")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut worker = std::process::Command::new(BIN)
        .env("FACTORY_DB", &db)
        .env("FACTORY_WORK_DIR", dir.path().join("work"))
        .args(["worker", "--templates"])
        .arg(&templates)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = ("done".to_string(), "done".to_string());
    wait_for(
        Duration::from_secs(30),
        "the worker to move the records",
        || counts(&db, "by-hand").get(&done) == Some(&3),
    );
    // SAFETY: signals the child this test spawned and still owns.
    unsafe {
        libc::kill(worker.id() as i32, libc::SIGTERM);
    }
    let status = worker.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
