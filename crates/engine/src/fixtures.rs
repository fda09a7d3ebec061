//! Template transformations for benchmarks and tests.

use serde_json::{Value, json};

/// The same DAG, wiring and gates with every block a `noop` builtin (reporting
/// `score` 90), no required env and no goldens (their paths are relative to a
/// template file a copy does not have). Measures the engine, not the blocks.
pub fn all_noop(template_json: &str) -> Result<String, serde_json::Error> {
    let mut value: Value = serde_json::from_str(template_json)?;
    if let Some(blocks) = value["blocks"].as_array_mut() {
        for block in blocks {
            block["runtime"] = json!("builtin");
            block["inputs"]["config"] = json!({"builtin": "noop", "metrics": {"score": 90}});
            block["inputs"]["env"] = json!([]);
            if let Some(block) = block.as_object_mut() {
                block.remove("audit");
            }
            // A no-op writes no gaps.
            if let Some(outputs) = block.get_mut("outputs").and_then(Value::as_object_mut) {
                outputs.remove("gaps");
            }
        }
    }
    Ok(value.to_string())
}

/// A gap-analyzer reply for test stand-ins of the model: two gaps about
/// Marisol Vega, g01 (high, frameworks-json) whose terms a compiled prompt
/// naming the Seven Second Silence and its 310 negotiators covers, and g02
/// (low, voice-json) that nothing takes up.
pub fn gap_analysis() -> Value {
    json!({
        "expert": "Marisol Vega",
        "summary": {"total": 2, "critical": 0, "high": 1, "medium": 0, "low": 1, "ready_for_compilation": true, "verdict": "Marisol Vega's extraction is nearly complete."},
        "gaps": [
            {"id": "g01", "type": "thin", "severity": "high", "artifact": "frameworks-json", "path": "$.frameworks[0]", "skill_target": "framework-extractor",
             "finding": "The Seven Second Silence has no negotiators count", "resolution": {"action": "State the 310 negotiators figure"}},
            {"id": "g02", "type": "thin", "severity": "low", "artifact": "voice-json", "path": "$.phrasing_patterns", "skill_target": "voice-extractor",
             "finding": "Voice phrasing patterns have only two samples", "resolution": {"action": "Ask Marisol for recorded calls"}}
        ]
    })
}

/// The shipped 31-block clone-factory template, every block a no-op.
pub fn clone_factory_noop() -> String {
    all_noop(include_str!("../../../templates/clone-factory.json"))
        .unwrap_or_else(|e| panic!("templates/clone-factory.json is not JSON: {e}"))
}

/// A no-op block `id` at `layer` after `after`.
fn noop(id: String, layer: &str, after: Vec<String>) -> Value {
    json!({
        "id": id, "name": id, "layer": layer, "type": "build", "runtime": "builtin",
        "inputs": {
            "depends": after.iter().map(|b| json!({"block": b, "key": "out"})).collect::<Vec<_>>(),
            "config": {"builtin": "noop"}
        },
        "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]},
        "execution": {"max_retries": 0}
    })
}

fn template(id: &str, blocks: Vec<Value>) -> String {
    json!({"id": id, "name": id, "version": "1", "blocks": blocks}).to_string()
}

/// `n` no-op blocks, each after the one before: every transition waits for
/// the previous one, so the engine's cost per transition is all there is.
pub fn chain(n: usize) -> String {
    template(
        "chain",
        (0..n)
            .map(|i| {
                let after = if i == 0 {
                    vec![]
                } else {
                    vec![format!("b{}", i - 1)]
                };
                noop(format!("b{i}"), "L0", after)
            })
            .collect(),
    )
}

/// A root, `width` no-op blocks after it, and one block that joins them all
/// (`width + 2` blocks).
pub fn fan_out(width: usize) -> String {
    let mut blocks = vec![noop("root".into(), "L0", vec![])];
    blocks.extend((0..width).map(|i| noop(format!("w{i}"), "L1", vec!["root".into()])));
    blocks.push(noop(
        "join".into(),
        "L2",
        (0..width).map(|i| format!("w{i}")).collect(),
    ));
    template("fan-out", blocks)
}

/// `rows × width` no-op blocks in rows, each after one to three blocks of
/// the rows before it (mostly the row just before, sometimes further up),
/// chosen by a fixed pseudo-random sequence: a pipeline shaped like a real
/// one, for measuring pages and layouts at size.
pub fn layered(rows: usize, width: usize) -> String {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below.max(1) as u64) as usize
    };
    let mut blocks = Vec::with_capacity(rows * width);
    for r in 0..rows {
        for c in 0..width {
            let mut after: Vec<String> = Vec::new();
            if r > 0 {
                for _ in 0..1 + next(3) {
                    let up = if next(4) == 0 { next(r) } else { r - 1 };
                    let id = format!("r{up}c{}", next(width));
                    if !after.contains(&id) {
                        after.push(id);
                    }
                }
            }
            blocks.push(noop(format!("r{r}c{c}"), "L0", after));
        }
    }
    template("layered", blocks)
}

/// `template_json` with every `noop` block turned into a `sleep` of `ms`
/// milliseconds: blocks that take time without using the processor, for
/// measuring how throughput grows with workers.
pub fn sleeping(template_json: &str, ms: u64) -> Result<String, serde_json::Error> {
    let mut value: Value = serde_json::from_str(template_json)?;
    if let Some(blocks) = value["blocks"].as_array_mut() {
        for block in blocks {
            if block["inputs"]["config"]["builtin"] == "noop" {
                block["inputs"]["config"] = json!({"builtin": "sleep", "ms": ms});
                block["timeout"] = json!(ms.saturating_mul(10).max(10_000));
            }
        }
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shapes_validate_with_the_blocks_they_promise() {
        let chain = factory_core::validate_str(&super::chain(5));
        assert_eq!(chain.pipeline.map(|p| p.len()), Some(5));
        let fan = factory_core::validate_str(&super::fan_out(7));
        assert_eq!(fan.pipeline.map(|p| p.len()), Some(9));
        let slow = super::sleeping(&super::fan_out(3), 50).unwrap();
        let validated = factory_core::validate_str(&slow);
        let pipeline = validated.pipeline.expect("a sleeping fan validates");
        assert!(
            pipeline
                .blocks()
                .iter()
                .all(|b| b.inputs.config["builtin"] == "sleep" && b.inputs.config["ms"] == 50)
        );
    }
}
