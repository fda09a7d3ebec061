//! Scheduler decision time on large random DAGs.
//!
//! `cargo bench -p factory-core --bench scheduler`

use std::collections::BTreeMap;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use factory_core::run::{Event, EventRecord, RunDoc};
use factory_core::scheduler::RunIndex;
use factory_core::template::Template;
use factory_core::transitions::{RunRequest, create_run};
use factory_core::{Pipeline, commit, commit_in_place, decide, validate_template};
use serde_json::json;

/// A random DAG: each block depends on up to 3 earlier blocks (deterministic LCG).
fn random_dag(n: usize) -> Pipeline {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let blocks: Vec<_> = (0..n)
        .map(|i| {
            let mut depends = BTreeMap::new();
            if i > 0 {
                for _ in 0..(next() % 4) {
                    let upstream = next() % i;
                    depends.insert(upstream, json!({"block": format!("b{upstream}"), "key": "out"}));
                }
            }
            json!({
                "id": format!("b{i}"), "name": format!("Block {i}"), "layer": format!("L{}", i / 100),
                "type": "build", "runtime": "builtin",
                "inputs": {"depends": depends.into_values().collect::<Vec<_>>(), "config": {"builtin": "noop"}},
                "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]}
            })
        })
        .collect();
    let template: Template = serde_json::from_value(
        json!({"id": "bench", "name": "Bench", "version": "1", "blocks": blocks}),
    )
    .unwrap();
    validate_template(template).pipeline.expect("valid DAG")
}

fn new_run(pipeline: &Pipeline) -> RunDoc {
    let event = create_run(
        pipeline,
        &RunRequest {
            run_id: "bench".into(),
            ..RunRequest::default()
        },
        &|_| true,
    )
    .unwrap();
    RunDoc::from_created(&EventRecord {
        seq: 1,
        at: 0,
        actor: "bench".into(),
        event,
    })
    .unwrap()
}

/// Marks the first half of the topological order done, the way a run would.
fn half_done(pipeline: &Pipeline, mut doc: RunDoc) -> RunDoc {
    let half = pipeline.len() / 2;
    for &i in &pipeline.topo_order()[..half] {
        let id = pipeline.blocks()[i].id.clone();
        let mut events = vec![Event::BlockReady {
            block: id.clone(),
            reason: "bench".into(),
        }];
        events.extend(one_block(&id));
        commit(&mut doc, events, "bench", 0).unwrap();
    }
    doc
}

/// A ready block starts, succeeds and is done.
fn one_block(id: &str) -> Vec<Event> {
    let id = id.to_string();
    vec![
        Event::BlockStarted {
            block: id.clone(),
            attempt: 1,
            owner: "bench".into(),
            lease_expires_at: 0,
        },
        Event::AttemptFinished {
            block: id.clone(),
            attempt: 1,
            outcome: factory_core::run::AttemptOutcome::Succeeded,
            report: Default::default(),
            score: None,
        },
        Event::BlockDone { block: id },
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_decide");
    group.sample_size(20);
    for n in [1_000usize, 10_000] {
        let pipeline = random_dag(n);
        let fresh = new_run(&pipeline);
        let midway = half_done(&pipeline, fresh.clone());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("fresh_run", n), &n, |b, _| {
            b.iter(|| decide(&pipeline, &fresh, 0, 8))
        });
        group.bench_with_input(BenchmarkId::new("half_done", n), &n, |b, _| {
            b.iter(|| decide(&pipeline, &midway, 0, 8))
        });
    }
    group.finish();

    // What the engine pays per transition: one block of a half-done run
    // starts, finishes and is done; the index takes the commit in and
    // decides. Flat in the run's size, where `decide` above is linear.
    let mut group = c.benchmark_group("scheduler_incremental");
    group.sample_size(20);
    for n in [1_000usize, 10_000] {
        let pipeline = random_dag(n);
        let mut midway = half_done(&pipeline, new_run(&pipeline));
        let mut index = RunIndex::new(&pipeline, &midway);
        let ready = index.decide(&pipeline, &midway, 0, 8, usize::MAX);
        let records = commit(&mut midway, ready.events, "bench", 0).unwrap();
        index.observe(&pipeline, &midway, &records);
        let block = index
            .decide(&pipeline, &midway, 0, 8, 1)
            .startable
            .pop()
            .expect("a ready block");
        group.bench_with_input(BenchmarkId::new("one_block_step", n), &n, |b, _| {
            b.iter_batched(
                || (midway.clone(), index.clone()),
                |(mut doc, mut index)| {
                    let records = commit_in_place(&mut doc, one_block(&block), "bench", 1).unwrap();
                    index.observe(&pipeline, &doc, &records);
                    let decision = index.decide(&pipeline, &doc, 1, 8, 8);
                    // Returned, so criterion drops the run outside the timing.
                    (doc, index, decision)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("validate");
    group.sample_size(10);
    let pipeline = random_dag(10_000);
    let template = pipeline.template().clone();
    group.bench_function("validate_template_10000", |b| {
        b.iter(|| validate_template(template.clone()).pipeline.is_some())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
