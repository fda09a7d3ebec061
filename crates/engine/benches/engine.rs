//! End-to-end runs of no-op builtin blocks on the SQLite store, every
//! transition committed durably (WAL, synchronous=NORMAL: survives a process
//! crash). Throughput is reported as blocks per second.
//!
//! `cargo bench -p factory-engine --bench engine`
//! (`-- memo`: memoized attempts; `-- feedback`: review consensus;
//! `-- fan_out`: 1,000 instances made at run time)

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use factory_core::template::Autonomy;
use factory_core::transitions::RunRequest;
use factory_engine::{Engine, EngineConfig, Outcome, fixtures};
use serde_json::{Value, json};

/// A multi-threaded runtime and an engine without a concurrency limit on a
/// fresh SQLite file in `dir` (kept for as long as the engine is used).
fn sqlite_engine() -> (tokio::runtime::Runtime, tempfile::TempDir, Arc<Engine>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let store = runtime
        .block_on(factory_store::open(db.to_str().unwrap()))
        .unwrap();
    let engine = Arc::new(Engine::new(
        Arc::from(store),
        EngineConfig {
            max_concurrency: 0,
            work_root: dir.path().join("work"),
            ..EngineConfig::default()
        },
    ));
    (runtime, dir, engine)
}

/// Creates a run of `source` and drives it to done.
async fn create_and_drive(
    engine: &Engine,
    source: &str,
    request: RunRequest,
) -> factory_core::run::RunDoc {
    let doc = engine.create_run(source, None, request).await.unwrap();
    let (outcome, doc) = engine.drive(&doc.run_id).await.unwrap();
    assert_eq!(outcome, Outcome::Done);
    doc
}

type Overrides = std::collections::BTreeMap<String, Autonomy>;
type Params = std::collections::BTreeMap<String, Value>;

/// Every block of `source` auto (measure the engine, not a person at a
/// gate), and each required param set.
fn unattended(source: &str) -> (Overrides, Params) {
    let pipeline = factory_engine::load_pipeline(source).unwrap();
    let overrides = pipeline
        .blocks()
        .iter()
        .map(|b| (b.id.clone(), Autonomy::Auto))
        .collect();
    let params = pipeline
        .template()
        .params
        .iter()
        .filter(|(_, spec)| spec.required)
        .map(|(name, _)| (name.clone(), json!("Bench")))
        .collect();
    (overrides, params)
}

fn bench(c: &mut Criterion) {
    let (runtime, _dir, engine) = sqlite_engine();

    let mut group = c.benchmark_group("engine_sqlite_noop");
    group.sample_size(10);
    for (name, source, blocks) in [
        ("chain_40", fixtures::chain(40), 40u64),
        ("fan_out_200_join", fixtures::fan_out(200), 202),
        (
            "clone_factory_28",
            factory_engine::fixtures::clone_factory_noop(),
            28,
        ),
    ] {
        let (overrides, params) = unattended(&source);
        group.throughput(Throughput::Elements(blocks));
        group.bench_with_input(
            BenchmarkId::new("create_and_drive", name),
            &source,
            |b, source| {
                b.to_async(&runtime).iter(|| {
                    let engine = engine.clone();
                    let overrides = overrides.clone();
                    let params = params.clone();
                    async move {
                        let request = RunRequest {
                            params,
                            overrides,
                            ..RunRequest::default()
                        };
                        create_and_drive(&engine, source, request).await;
                    }
                })
            },
        );
    }
    group.finish();
}

/// A chain of `n` command blocks, each reading the one before and writing
/// a small JSON artifact.
fn command_chain(n: usize) -> String {
    let blocks: Vec<Value> = (0..n)
        .map(|i| {
            let mut block = json!({
                "id": format!("c{i}"), "name": format!("c{i}"), "layer": "L0", "type": "build",
                "runtime": "command",
                "inputs": {"config": {"command": ["sh", "-c", r#"printf '{"n": 1}' > "$FACTORY_OUTPUT_DIR/out.json""#]}},
                "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]}
            });
            if i > 0 {
                block["inputs"]["depends"] = json!([{"block": format!("c{}", i - 1), "key": "out"}]);
            }
            block
        })
        .collect();
    json!({
        "id": "memo-bench", "name": "Memo bench", "version": "1",
        "params": {"seed": {"default": "0"}}, "blocks": blocks
    })
    .to_string()
}

/// Memoized attempts: a 40-block chain of commands run anew (`--no-cache`)
/// against the same chain answered from memos; a memo key and one lookup
/// in a store holding a few thousand memos.
fn bench_memo(c: &mut Criterion) {
    let (runtime, _dir, engine) = sqlite_engine();
    let source = command_chain(40);
    let run = |no_cache: bool, seed: usize| {
        let engine = engine.clone();
        let source = source.clone();
        async move {
            let request = RunRequest {
                params: std::collections::BTreeMap::from([("seed".to_string(), json!(seed))]),
                no_cache,
                ..RunRequest::default()
            };
            let doc = engine.create_run(&source, None, request).await.unwrap();
            let (outcome, doc) = engine.drive(&doc.run_id).await.unwrap();
            assert_eq!(outcome, Outcome::Done);
            doc
        }
    };
    // Fill the store: 50 runs of 40 blocks with another param each, 2,000
    // memos.
    let mut last = None;
    for seed in 0..50 {
        last = Some(runtime.block_on(run(false, seed)));
    }
    let doc = last.unwrap();
    let report = doc.blocks["c39"]
        .last_success()
        .unwrap()
        .report
        .clone()
        .unwrap();
    let key = report.memo_key.clone().expect("a memoized block has a key");

    let mut group = c.benchmark_group("memo");
    group.sample_size(10);
    group.throughput(Throughput::Elements(40));
    group.bench_function("command_chain_40_run_anew", |b| {
        b.to_async(&runtime).iter(|| run(true, 0))
    });
    group.bench_function("command_chain_40_reused", |b| {
        b.to_async(&runtime).iter(|| async {
            let doc = run(false, 0).await;
            assert!(
                doc.blocks["c39"].history[0]
                    .report
                    .as_ref()
                    .unwrap()
                    .reused
                    .is_some()
            );
        })
    });
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.bench_function("lookup", |b| {
        b.to_async(&runtime).iter(|| async {
            let hit = engine.store().memo(&key).await.unwrap();
            assert!(hit.is_some());
        })
    });
    let pipeline = factory_engine::load_pipeline(&source).unwrap();
    let block = pipeline.block("c20").unwrap();
    let none = std::collections::BTreeMap::new();
    group.bench_function("key", |b| {
        b.iter(|| {
            factory_core::memo::memo_key(&factory_core::memo::MemoInputs {
                open_gaps: None,
                template: pipeline.template(),
                block,
                model: None,
                sampling: &none,
                params: &none,
                inputs: vec![factory_core::memo::InputHash {
                    block: "c19",
                    key: "out",
                    hash: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    path: "out.json",
                    format: factory_core::template::ArtifactFormat::Json,
                }],
                corrections: None,
                reply_note: None,
                files: std::collections::BTreeMap::new(),
                item: None,
                past_ratings: None,
            })
        })
    });
    group.finish();
}

/// An extraction block and its review page, gated after.
const REVIEW_LOOP: &str = r#"{
  "id": "review-bench", "name": "Review bench", "version": "1",
  "blocks": [
    { "id": "extract", "name": "Extract", "layer": "L0", "type": "extract", "runtime": "builtin",
      "inputs": { "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "facts", "path": "facts.json", "format": "json" }] } },
    { "id": "review", "name": "Review", "layer": "L1", "type": "validate", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "extract", "key": "facts" }], "config": { "builtin": "review-page", "page": "extraction-review" } },
      "outputs": { "artifacts": [{ "key": "url", "path": "url.txt", "format": "url" }] },
      "execution": { "human_gate": "after" } }
  ]
}"#;

/// Three testers each judge 300 items of one review (a third flagged by
/// each, overlapping): consensus is recomputed for every judged item after
/// every submission.
fn bench_feedback(c: &mut Criterion) {
    use factory_core::consensus::TesterRole;
    use factory_engine::feedback::{Submission, Tester};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feedback.db");
    let store = runtime
        .block_on(factory_store::open(db.to_str().unwrap()))
        .unwrap();
    let engine = Arc::new(Engine::new(
        Arc::from(store),
        EngineConfig {
            work_root: dir.path().join("work"),
            ..EngineConfig::default()
        },
    ));
    const ITEMS: usize = 300;
    let submissions: Vec<(Tester, Submission)> = [
        ("samuel", TesterRole::Expert),
        ("will", TesterRole::ProductLead),
        ("derek", TesterRole::Team),
    ]
    .iter()
    .enumerate()
    .map(|(t, (name, role))| {
        let items: Vec<Value> = (0..ITEMS)
            .map(|i| {
                json!({
                    "source_key": format!("extract:$.items[{i}]"),
                    "skill_target": "extract",
                    "verdict": if (i + t) % 3 == 0 { "wrong" } else { "correct" },
                    "priority": "medium",
                    "correction": format!("fix {i}"),
                })
            })
            .collect();
        (
            Tester {
                name: name.to_string(),
                role: *role,
            },
            serde_json::from_value(json!({ "items": items })).unwrap(),
        )
    })
    .collect();
    let mut group = c.benchmark_group("feedback_sqlite");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ITEMS * submissions.len()) as u64));
    group.bench_function("three_reviews_of_300_items", |b| {
        b.to_async(&runtime).iter(|| {
            let engine = engine.clone();
            let submissions = submissions.clone();
            async move {
                let doc = engine
                    .create_run(REVIEW_LOOP, None, RunRequest::default())
                    .await
                    .unwrap();
                let (outcome, _) = engine.drive(&doc.run_id).await.unwrap();
                assert_eq!(outcome, Outcome::Waiting);
                for (tester, submission) in submissions {
                    engine
                        .submit_feedback(
                            factory_core::transitions::Principal::new("bench"),
                            &doc.run_id,
                            "review",
                            &tester,
                            submission,
                        )
                        .await
                        .unwrap();
                }
            }
        })
    });
    group.finish();
}

/// A `noop` block fanned out over a param of `n` items, and a join.
fn dynamic_fan_out(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| format!("item {i}")).collect();
    json!({
        "id": "fan-out-bench", "name": "Fan-out bench", "version": "1",
        "params": {"items": {"default": items}},
        "blocks": [
            {"id": "each", "name": "each", "layer": "L0", "type": "build", "runtime": "builtin",
             "inputs": {"config": {"builtin": "noop"}},
             "fan_out": {"over": {"param": "items"}, "max": n},
             "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]}},
            {"id": "join", "name": "join", "layer": "L1", "type": "build", "runtime": "builtin",
             "inputs": {"config": {"builtin": "noop"}, "depends": [{"block": "each", "key": "out"}]},
             "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]}}
        ]
    })
    .to_string()
}

/// Dynamic fan-out: 1,000 instances of a no-op block made at run time and
/// joined, against the same 1,000 blocks written out in the template.
fn bench_fan_out(c: &mut Criterion) {
    let (runtime, _dir, engine) = sqlite_engine();
    let mut group = c.benchmark_group("fan_out_sqlite");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1_000));
    for (name, source) in [
        ("dynamic_1000_join", dynamic_fan_out(1_000)),
        ("static_1000_join", fixtures::fan_out(1_000)),
    ] {
        group.bench_with_input(
            BenchmarkId::new("create_and_drive", name),
            &source,
            |b, source| {
                b.to_async(&runtime).iter(|| {
                    let engine = engine.clone();
                    async move {
                        let doc = create_and_drive(&engine, source, RunRequest::default()).await;
                        assert!(doc.blocks.len() >= 1_001);
                    }
                })
            },
        );
    }
    group.finish();
}

/// The meta-audit of a finished run of 31 blocks (clone-factory's shape)
/// and of 1,000 (a chain): its five built-ins read the target from the
/// store, its reports are audited. The scorecard's gate is lowered and the
/// 5.0 threshold set to 0 (no-op outputs score low): the engine is timed,
/// not a person.
fn bench_meta_audit(c: &mut Criterion) {
    let (runtime, _dir, engine) = sqlite_engine();
    let mut template: Value =
        serde_json::from_str(include_str!("../../../templates/meta-audit-factory.json")).unwrap();
    template["blocks"][0]["execution"]["threshold"]["min"] = json!(0.0);
    let meta = template.to_string();
    let mut group = c.benchmark_group("meta_audit_sqlite");
    group.sample_size(10);
    for (name, source) in [
        (
            "clone_factory_28",
            factory_engine::fixtures::clone_factory_noop(),
        ),
        ("chain_1000", fixtures::chain(1_000)),
    ] {
        let (overrides, params) = unattended(&source);
        let target = runtime.block_on(create_and_drive(
            &engine,
            &source,
            RunRequest {
                params,
                overrides,
                ..RunRequest::default()
            },
        ));
        group.bench_with_input(BenchmarkId::new("meta_audit_of", name), &meta, |b, meta| {
            b.to_async(&runtime).iter(|| {
                let engine = engine.clone();
                let target = target.run_id.clone();
                async move {
                    let request = RunRequest {
                        params: [("target_run".to_string(), json!(target))].into(),
                        overrides: [("audit-scorecard-publisher".to_string(), Autonomy::Auto)]
                            .into(),
                        ..RunRequest::default()
                    };
                    create_and_drive(&engine, meta, request).await;
                }
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench,
    bench_feedback,
    bench_memo,
    bench_fan_out,
    bench_meta_audit
);
criterion_main!(benches);
