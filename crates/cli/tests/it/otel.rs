//! Spans to an OpenTelemetry collector: off by default, on with the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT`, a run span with an attempt span
//! per block inside it, and a run that never waits for a missing collector.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;

/// What a collector was sent: (path, JSON body) per request.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// An OTLP/HTTP collector on loopback that keeps every body it is sent.
fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (request_line, body) = read_request(&stream);
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            keep.lock()
                .unwrap()
                .push((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
    (url, got)
}

fn template(dir: &Path) -> PathBuf {
    let block = |id: &str, depends: Value| {
        serde_json::json!({
            "id": id, "name": id, "layer": "L0", "type": "build", "runtime": "builtin",
            "inputs": {"config": {"builtin": "noop"}, "depends": depends},
            "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
        })
    };
    let path = dir.join("traced.json");
    std::fs::write(
        &path,
        serde_json::json!({"id": "traced", "name": "Traced", "version": "1", "blocks": [
            block("first", serde_json::json!([])),
            block("second", serde_json::json!([{"block": "first", "key": "out"}])),
        ]})
        .to_string(),
    )
    .unwrap();
    path
}

/// A span: name, id, parent id, attributes.
type Span = (String, String, String, BTreeMap<String, String>);

/// Every span in what the collector got, with its attributes as strings.
fn spans(got: &[(String, Value)]) -> Vec<Span> {
    let mut out = Vec::new();
    for (path, body) in got {
        assert_eq!(path, "/v1/traces");
        for resource in body["resourceSpans"].as_array().unwrap() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some(Value::from("process-factory")));
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let attributes = span["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            let value = a["value"].as_object().unwrap().values().next().unwrap();
                            let value = value.as_str().map_or(value.to_string(), str::to_string);
                            (a["key"].as_str().unwrap().to_string(), value)
                        })
                        .collect();
                    out.push((
                        span["name"].as_str().unwrap().to_string(),
                        span["spanId"].as_str().unwrap().to_string(),
                        span["parentSpanId"].as_str().unwrap_or("").to_string(),
                        attributes,
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn runs_and_attempts_are_exported_as_spans_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = template(dir.path());
    let (url, got) = collector();

    // Off by default: nothing is sent.
    factory(&db)
        .args(["run", template.to_str().unwrap(), "-q"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .assert()
        .success();
    std::thread::sleep(Duration::from_millis(200));
    assert!(got.lock().unwrap().is_empty());

    // On: the run span and one attempt span per block, inside it.
    let output = factory(&db)
        .args(["run", template.to_str().unwrap(), "-q"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    // The last batch is sent before the process exits.
    let spans = spans(&got.lock().unwrap());
    let runs: Vec<_> = spans.iter().filter(|s| s.0 == "run").collect();
    assert_eq!(runs.len(), 1, "{spans:?}");
    assert_eq!(runs[0].3["run"], run);
    let attempts: Vec<_> = spans.iter().filter(|s| s.0 == "attempt").collect();
    let mut blocks: Vec<&str> = attempts.iter().map(|s| s.3["block"].as_str()).collect();
    blocks.sort();
    assert_eq!(blocks, ["first", "second"], "{spans:?}");
    for attempt in attempts {
        assert_eq!(attempt.2, runs[0].1, "inside the run span: {attempt:?}");
        assert_eq!(attempt.3["run"], run);
        assert_eq!(attempt.3["attempt"], "1");
        assert_eq!(attempt.3["outcome"], "ok");
    }

    // A collector that is not there costs the run nothing but a warning.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    factory(&db)
        .args(["run", template.to_str().unwrap(), "-q"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &gone)
        .assert()
        .success();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
