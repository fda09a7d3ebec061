//! Token estimation cost per call: the prompt of a clone-factory extractor
//! (its skill plus the golden examples as upstream), repeated to about 10k
//! tokens. Target: under 1 ms.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn prompt_of(tokens: u64) -> String {
    let parts = [
        include_str!("../../../templates/skills/soul-extractor/SKILL.md"),
        include_str!("../../../templates/golden/frameworks.json"),
        include_str!("../../../templates/golden/voice.json"),
        include_str!("../../../README.md"),
    ];
    let mut text = String::new();
    while factory_llm::tokens::estimate(&text) < tokens {
        for part in parts {
            text.push_str(part);
        }
    }
    text
}

fn estimate(c: &mut Criterion) {
    let prompt = prompt_of(10_000);
    let mut group = c.benchmark_group("tokens");
    group.throughput(criterion::Throughput::Bytes(prompt.len() as u64));
    group.bench_function("estimate_10k_token_prompt", |b| {
        b.iter(|| factory_llm::tokens::estimate(black_box(&prompt)))
    });
    group.finish();
}

criterion_group!(benches, estimate);
criterion_main!(benches);
