//! Engine-side blocks that need no subprocess.
//!
//! `noop` writes each declared artifact with a small placeholder and reports
//! `inputs.config.metrics` (an object) as its metrics: enough to exercise
//! wiring, thresholds and benchmarks without a process per block. `sleep`
//! does the same after `inputs.config.ms` milliseconds, honouring the timeout.

use std::time::Duration;

use factory_core::template::ArtifactFormat;
use serde_json::Value;

use crate::{AttemptInput, Execution};

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let config = &block.inputs.config;
    match config.get("builtin").and_then(Value::as_str) {
        Some("noop") => produce(&input),
        Some("review-page") => crate::review_page::produce(&input),
        // Needs the store's improvement items: the engine runs it itself.
        Some("corrections-router") => Execution::failed(format!(
            "block `{}`: the corrections router runs inside the engine, not in a runtime",
            block.id
        )),
        // Read other runs from the store: the engine runs them itself.
        Some(
            name @ ("run-aggregate"
            | "specificity-deep-check"
            | "cross-block-consistency"
            | "delta-report"
            | "audit-scorecard"),
        ) => Execution::failed(format!(
            "block `{}`: the meta-audit step `{name}` runs inside the engine, not in a runtime",
            block.id
        )),
        Some("sleep") => {
            let ms = config.get("ms").and_then(Value::as_u64).unwrap_or(0);
            if ms > block.timeout {
                tokio::time::sleep(Duration::from_millis(block.timeout)).await;
                return Execution {
                    timed_out: true,
                    error: Some(format!(
                        "block `{}` timed out after {} ms",
                        block.id, block.timeout
                    )),
                    ..Execution::default()
                };
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            produce(&input)
        }
        Some(other) => {
            Execution::failed(format!("block `{}`: unknown builtin `{other}`", block.id))
        }
        None => Execution::failed(format!(
            "block `{}`: `inputs.config.builtin` is not set",
            block.id
        )),
    }
}

fn produce(input: &AttemptInput<'_>) -> Execution {
    let block = input.block;
    let mut execution = Execution::default();
    for artifact in &block.outputs.artifacts {
        if let Some(kind) = artifact.format.media_kind() {
            execution.artifacts.insert(
                artifact.key.clone(),
                factory_audit::media::placeholder(kind),
            );
            continue;
        }
        let content = match artifact.format {
            ArtifactFormat::Json => serde_json::json!({
                "builtin": "noop",
                "block": block.id,
                "attempt": input.attempt,
            })
            .to_string(),
            ArtifactFormat::Directory => serde_json::json!({ "files": {} }).to_string(),
            _ => format!("{} (attempt {})\n", block.name, input.attempt),
        };
        execution
            .artifacts
            .insert(artifact.key.clone(), content.into_bytes());
    }
    if let Some(Value::Object(metrics)) = block.inputs.config.get("metrics") {
        execution.metrics = metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    execution
}
