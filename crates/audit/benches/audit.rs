//! Audit time on large artifacts.
//!
//! `cargo bench -p factory-audit --bench audit`
//!
//! Targets: under 2 ms for a ~100 KB JSON artifact with a golden example and
//! an upstream input, and over 100 MB/s on a ~1 MB Markdown artifact.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use factory_audit::{Artifact, AuditInput, Format, Upstream, audit};
use serde_json::{Value, json};

const GOLDEN: &[u8] = include_bytes!("../../../templates/golden/frameworks.json");
const UPSTREAM: &[u8] = include_bytes!("../tests/fixtures/expert-framework.json");
const GOOD: &[u8] = include_bytes!("../tests/fixtures/frameworks.good.json");
const PLAYBOOK: &[u8] = include_bytes!("../tests/fixtures/playbook.good.md");

/// The good frameworks fixture with its frameworks repeated (ids and numbers
/// varied) until the document reaches `target_bytes`.
fn large_frameworks_json(target_bytes: usize) -> Vec<u8> {
    let mut document: Value = serde_json::from_slice(GOOD).expect("fixture parses");
    let originals = document["frameworks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut frameworks = Vec::new();
    let mut copy = 0;
    let base_bytes = GOOD.len();
    while base_bytes + serde_json::to_vec_pretty(&json!(frameworks)).map_or(0, |bytes| bytes.len())
        < target_bytes
    {
        for original in &originals {
            let mut framework = original.clone();
            framework["id"] = json!(format!("{}-{copy}", original["id"].as_str().unwrap_or("f")));
            framework["success_metric"] = json!(format!(
                "Variant {copy}: {}",
                original["success_metric"].as_str().unwrap_or("")
            ));
            frameworks.push(framework);
        }
        copy += 1;
    }
    document["frameworks"] = Value::Array(frameworks);
    serde_json::to_vec_pretty(&document).expect("serialises")
}

/// The good playbook fixture repeated, numbered, until `target_bytes`.
fn large_markdown(target_bytes: usize) -> Vec<u8> {
    let playbook = String::from_utf8_lossy(PLAYBOOK);
    let mut text = String::with_capacity(target_bytes + PLAYBOOK.len());
    let mut part = 0;
    while text.len() < target_bytes {
        text.push_str(&playbook.replace(
            "# Marisol Vega's Negotiation Playbook",
            &format!("# Playbook part {part}"),
        ));
        text.push('\n');
        part += 1;
    }
    text.into_bytes()
}

fn input<'a>(
    path: &'a str,
    format: Format,
    content: &'a [u8],
    golden: Option<&'a [u8]>,
) -> AuditInput<'a> {
    AuditInput {
        block: "bench",
        artifacts: vec![Artifact {
            key: "out",
            path,
            format,
            content: Some(content),
        }],
        upstream: vec![Upstream {
            block: "expert-framework-creator",
            key: "expert-framework",
            format: Format::Json,
            content: UPSTREAM,
        }],
        golden: golden
            .map(|golden| ("out", golden))
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        consumed_downstream: BTreeSet::from(["out"]),
        subject: Some("Marisol Vega"),
        self_score: Some(8.0),
        previous: None,
    }
}

fn bench_audit(c: &mut Criterion) {
    let json_artifact = large_frameworks_json(100 * 1024);
    let markdown_artifact = large_markdown(1024 * 1024);

    let mut group = c.benchmark_group("audit");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    group.throughput(Throughput::Bytes(json_artifact.len() as u64));
    let json_input = input(
        "frameworks.json",
        Format::Json,
        &json_artifact,
        Some(GOLDEN),
    );
    group.bench_function(
        format!("json_{}KB_golden_upstream", json_artifact.len() / 1024),
        |b| b.iter(|| audit(black_box(&json_input))),
    );

    group.throughput(Throughput::Bytes(markdown_artifact.len() as u64));
    let markdown_input = input("playbook.md", Format::Markdown, &markdown_artifact, None);
    group.bench_function(
        format!("markdown_{}KB_upstream", markdown_artifact.len() / 1024),
        |b| b.iter(|| audit(black_box(&markdown_input))),
    );
    group.finish();
}

criterion_group!(benches, bench_audit);
criterion_main!(benches);
