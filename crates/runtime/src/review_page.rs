//! The `review-page` builtin: publishes one of the review pages that
//! `factory serve` renders live (`/runs/<run>/review/<block>`), and records
//! what it was built from.
//!
//! The page itself is not a static file: testers' verdicts, ratings and chat
//! go to the server, which stores them as feedback and improvement items. The
//! artifacts are the link and a snapshot of what was put up for review:
//! `url`/`text` artifacts whose key ends in `version` get the run version
//! (`v2`), other `url`/`text` artifacts the page's path; `html`/`md` a summary
//! page; `json` the same summary as data.

use factory_core::feedback;
use factory_core::template::ArtifactFormat;
use serde_json::{Value, json};

use crate::{AttemptInput, Execution};

pub(crate) fn produce(input: &AttemptInput<'_>) -> Execution {
    let block = input.block;
    let page = block
        .inputs
        .config
        .get("page")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let url = format!("/runs/{}/review/{}", input.run_id, block.id);
    let version = format!("v{}", input.run_version);

    let mut reviewed = Vec::new();
    match page {
        "extraction-review" => {
            for artifact in &input.inputs {
                if artifact.format != ArtifactFormat::Json {
                    continue;
                }
                let Ok(document) = serde_json::from_slice::<Value>(&artifact.content) else {
                    return Execution::failed(format!(
                        "block `{}`: `{}.{}` is not valid JSON, so its items cannot be reviewed",
                        block.id, artifact.block, artifact.key
                    ));
                };
                let items = feedback::extraction_items(&artifact.block, &document).len();
                reviewed
                    .push(json!({"block": artifact.block, "key": artifact.key, "items": items}));
            }
        }
        "expert-audit" => {
            for artifact in &input.inputs {
                if artifact.format != ArtifactFormat::Json {
                    continue;
                }
                let scenarios = serde_json::from_slice::<Value>(&artifact.content)
                    .map(|v| feedback::scenarios(&v).len())
                    .unwrap_or(0);
                reviewed.push(
                    json!({"block": artifact.block, "key": artifact.key, "scenarios": scenarios}),
                );
            }
        }
        other => {
            return Execution::failed(format!(
                "block `{}`: unknown review page `{other}` (use extraction-review or expert-audit)",
                block.id
            ));
        }
    }
    let summary = json!({
        "page": page,
        "url": url,
        "version": version,
        "reviewed": reviewed,
        "note": "reviews are submitted on the page; the corrections router reads the accepted improvement items",
    });

    let mut execution = Execution::default();
    for artifact in &block.outputs.artifacts {
        let content = match artifact.format {
            ArtifactFormat::Url | ArtifactFormat::Text if artifact.key.ends_with("version") => {
                format!("{version}\n")
            }
            ArtifactFormat::Url | ArtifactFormat::Text => format!("{url}\n"),
            ArtifactFormat::Html => {
                let rows: String = reviewed
                    .iter()
                    .map(|r| {
                        format!(
                            "<li><code>{}.{}</code>: {} to review</li>",
                            escape(r["block"].as_str().unwrap_or_default()),
                            escape(r["key"].as_str().unwrap_or_default()),
                            r.get("items")
                                .or_else(|| r.get("scenarios"))
                                .unwrap_or(&json!(0))
                        )
                    })
                    .collect();
                format!(
                    "<!doctype html><meta charset=\"utf-8\"><title>{page} {version}</title><h1>{page} — {version}</h1><p>Review on <a href=\"{url}\">{url}</a>.</p><ul>{rows}</ul>\n",
                )
            }
            ArtifactFormat::Md => format!(
                "# {page} — {version}\n\nReview on {url}.\n\n{}\n",
                reviewed
                    .iter()
                    .map(|r| format!("- `{}.{}`", r["block"], r["key"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            _ => summary.to_string(),
        };
        execution
            .artifacts
            .insert(artifact.key.clone(), content.into_bytes());
    }
    execution
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
