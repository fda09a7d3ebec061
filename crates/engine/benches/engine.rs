//! End-to-end runs of no-op builtin blocks on the SQLite store, every
//! transition committed durably (WAL, synchronous=NORMAL: survives a process
//! crash). Throughput is reported as blocks per second.
//!
//! `cargo bench -p factory-engine --bench engine`

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use factory_core::template::Autonomy;
use factory_core::transitions::RunRequest;
use factory_engine::{Engine, EngineConfig, Outcome};
use serde_json::{Value, json};

fn noop(id: String, layer: &str, depends: Vec<String>) -> Value {
    json!({
        "id": id, "name": id, "layer": layer, "type": "build", "runtime": "builtin",
        "inputs": {"depends": depends.iter().map(|d| json!({"block": d, "key": "out"})).collect::<Vec<_>>(),
                   "config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]},
        "execution": {"max_retries": 0}
    })
}

fn template(blocks: Vec<Value>) -> String {
    json!({"id": "bench", "name": "Bench", "version": "1", "blocks": blocks}).to_string()
}

fn chain(n: usize) -> String {
    template(
        (0..n)
            .map(|i| {
                noop(
                    format!("b{i}"),
                    "L0",
                    if i == 0 {
                        vec![]
                    } else {
                        vec![format!("b{}", i - 1)]
                    },
                )
            })
            .collect(),
    )
}

fn fan_out(width: usize) -> String {
    let mut blocks = vec![noop("root".into(), "L0", vec![])];
    blocks.extend((0..width).map(|i| noop(format!("w{i}"), "L1", vec!["root".into()])));
    blocks.push(noop(
        "join".into(),
        "L2",
        (0..width).map(|i| format!("w{i}")).collect(),
    ));
    template(blocks)
}

fn bench(c: &mut Criterion) {
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

    let mut group = c.benchmark_group("engine_sqlite_noop");
    group.sample_size(10);
    for (name, source, blocks) in [
        ("chain_40", chain(40), 40u64),
        ("fan_out_200_join", fan_out(200), 202),
        (
            "clone_factory_26",
            factory_engine::fixtures::clone_factory_noop(),
            26,
        ),
    ] {
        let pipeline = factory_engine::load_pipeline(&source).unwrap();
        // Every block auto: measure the engine, not a person at a gate.
        let overrides: std::collections::BTreeMap<String, Autonomy> = pipeline
            .blocks()
            .iter()
            .map(|b| (b.id.clone(), Autonomy::Auto))
            .collect();
        let params: std::collections::BTreeMap<String, Value> = pipeline
            .template()
            .params
            .iter()
            .filter(|(_, spec)| spec.required)
            .map(|(name, _)| (name.clone(), json!("Bench")))
            .collect();
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
                        let doc = engine.create_run(source, None, request).await.unwrap();
                        let (outcome, _) = engine.drive(&doc.run_id).await.unwrap();
                        assert_eq!(outcome, Outcome::Done);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
