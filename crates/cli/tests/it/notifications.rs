//! Notifications through the real binary: `factory serve` with a
//! factory.toml that sends gate and run notifications to a signed webhook
//! and to a real SMTP server (aiosmtpd with STARTTLS), killed with -9
//! between an event and its delivery, twice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factory_server::signature::{self, HookSecret};
use serde_json::Value;

use super::{BIN, factory, repo_root};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// aiosmtpd (scripts/smtp-sink.py) with STARTTLS required.
struct Sink {
    child: Child,
    port: u16,
    ca: String,
    out: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    fn start(dir: &Path) -> Sink {
        let out = dir.join("mail.jsonl");
        let mut child = Command::new("python3")
            .arg(repo_root().join("scripts/smtp-sink.py"))
            .arg("--out")
            .arg(&out)
            .arg("--starttls")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("smtp-sink did not start ({e}): {line:?}"));
        Sink {
            child,
            port: ready["port"].as_u64().unwrap() as u16,
            ca: ready["ca"].as_str().unwrap().to_string(),
            out,
        }
    }

    fn subjects(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["subject"].to_string())
            .collect()
    }
}

/// An HTTP receiver that keeps every request's headers and body and
/// answers 204.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Request>>>);

/// A request's headers (names in lower case) and body.
type Request = (Vec<(String, String)>, Vec<u8>);

impl Received {
    fn listen(listener: TcpListener) -> Received {
        let received = Received::default();
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        if name == "content-length" {
                            length = value.parse().unwrap_or(0);
                        }
                        headers.push((name, value.to_string()));
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                keep.0.lock().unwrap().push((headers, body));
                let _ = stream.write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        received
    }

    fn bodies(&self) -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let secret = HookSecret::parse(SECRET).unwrap();
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(headers, body)| {
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                signature::verify(
                    &secret,
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                    body,
                    now,
                )
                .expect("every delivery is signed with the channel's secret");
                serde_json::from_slice(body).unwrap()
            })
            .collect()
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(db: &Path, config: &Path) -> Server {
    let mut child = Command::new(BIN)
        .env("FACTORY_DB", db)
        .env("NOTIFY_SECRET", SECRET)
        .env("FACTORY_WORK_DIR", db.parent().unwrap().join("work"))
        .arg("--config")
        .arg(config)
        .args(["serve", "--no-auth", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening on http://"), "{first}");
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Server(child)
}

/// `factory notifications --json`.
fn outbox(db: &Path) -> Vec<Value> {
    let output = factory(db)
        .args(["notifications", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn gates_and_finished_runs_reach_people_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let sink = Sink::start(dir.path());
    // The webhook's port, with nobody listening yet: its first tries fail.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let config = dir.path().join("factory.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[notifications]
base_url = "http://factory.test"
retry_initial_ms = 200

[notifications.channels.hook]
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/notify"
secret_env = "NOTIFY_SECRET"

[notifications.channels.mail]
kind = "email"
host = "127.0.0.1"
port = {}
from = "factory@example.test"
to = ["reviewers@example.test"]
ca_file = "{}"

[[notifications.rules]]
on = ["gate.waiting", "run.finished", "run.failed"]
channels = ["hook", "mail"]
"#,
            sink.port, sink.ca
        ),
    )
    .unwrap();
    let template = dir.path().join("gated.json");
    std::fs::write(
        &template,
        r#"{ "id": "gated", "name": "Gated", "version": "1.0.0", "blocks": [
          { "id": "draft", "name": "Draft the brief", "layer": "L0", "type": "build", "runtime": "builtin",
            "inputs": { "config": { "builtin": "noop" } },
            "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] },
            "execution": { "human_gate": "after", "separate_reviewer": true } } ] }"#,
    )
    .unwrap();

    let server = serve(&db, &config);
    let output = factory(&db)
        .args(["run", template.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();

    // The mail goes out; the webhook is tried and refused (nobody listens).
    until("the gate's mail", || {
        (sink.subjects().len() == 1).then_some(())
    });
    assert!(
        sink.subjects()[0].contains("Waiting for approval: draft in gated"),
        "{:?}",
        sink.subjects()
    );
    let hook = until("a failed try of the webhook", || {
        outbox(&db)
            .into_iter()
            .find(|n| n["channel"] == "hook" && n["attempts"].as_u64() >= Some(1))
    });
    assert_eq!(hook["status"], "pending", "{hook}");
    assert!(
        hook["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{hook}"
    );

    // kill -9 between the event and its delivery.
    drop(server);
    let received = Received::listen(TcpListener::bind(("127.0.0.1", hook_port)).unwrap());
    let server = serve(&db, &config);
    until("the gate's webhook after the restart", || {
        (received.bodies().len() == 1).then_some(())
    });
    let gate = &received.bodies()[0];
    assert_eq!(gate["occasion"], "gate.waiting");
    assert_eq!(gate["run_id"], run.as_str());
    assert_eq!(
        gate["link"],
        format!("http://factory.test/runs/{run}/blocks/draft").as_str()
    );
    assert!(
        gate["text"]
            .as_str()
            .unwrap()
            .contains("Who may approve: anyone with the reviewer, operator or admin role, except cli:tester (who set this pass in motion"),
        "{gate}"
    );

    // kill -9 again, and the run finishes while no notifier runs: its
    // event waits in the feed and goes out once the server is back.
    drop(server);
    factory(&db)
        .env("FACTORY_ACTOR", "cli:reviewer")
        .args(["approve", &run, "draft"])
        .assert()
        .success();
    let _server = serve(&db, &config);
    until("the finished run's webhook", || {
        (received.bodies().len() == 2).then_some(())
    });
    until("the finished run's mail", || {
        (sink.subjects().len() == 2).then_some(())
    });
    assert_eq!(received.bodies()[1]["occasion"], "run.finished");
    // Nothing more comes: each notification was delivered once.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(received.bodies().len(), 2);
    assert_eq!(sink.subjects().len(), 2, "{:?}", sink.subjects());
    let rows = outbox(&db);
    assert_eq!(rows.len(), 4, "two occasions, two channels: {rows:?}");
    assert!(rows.iter().all(|n| n["status"] == "delivered"), "{rows:?}");
    let text = factory(&db).args(["notifications"]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("gate.waiting") && text.contains("delivered"),
        "{text}"
    );
}

#[test]
fn a_bad_notifications_section_stops_serve_with_its_place_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let config = dir.path().join("factory.toml");
    std::fs::write(
        &config,
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"https://h.test\"\n\n[[notifications.rules]]\non = [\"gate.waiting\"]\nchannels = [\"slack\"]\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .env("FACTORY_DB", &db)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--no-auth", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("factory.toml: [notifications.rules][0] channels names `slack`"),
        "{stderr}"
    );
    // The other commands read their part of the file and go on.
    factory(&db)
        .arg("--config")
        .arg(&config)
        .args(["runs"])
        .assert()
        .success();
}
