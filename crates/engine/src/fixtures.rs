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
        }
    }
    Ok(value.to_string())
}

/// The shipped 26-block clone-factory template, every block a no-op.
pub fn clone_factory_noop() -> String {
    all_noop(include_str!("../../../templates/clone-factory.json"))
        .unwrap_or_else(|e| panic!("templates/clone-factory.json is not JSON: {e}"))
}
