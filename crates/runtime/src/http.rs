//! The `http` runtime: POST a JSON body built from the block's inputs to a
//! service (publishing a page, syncing outputs to another platform) and keep
//! the response as the block's artifact.
//!
//! Config (`inputs.config`): `url` or `url_env` (an environment variable that
//! holds the URL), optional `auth_env` (an environment variable holding a
//! bearer token), `method` (`POST` by default, or `PUT`), and `headers` (static
//! extra headers). Everything else in the config is sent in the body.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use factory_core::template::ArtifactFormat;
use serde_json::{Value, json};

use crate::{AttemptInput, Execution};

/// Config keys that steer the call and are not sent.
const CALL_KEYS: &[&str] = &["url", "url_env", "auth_env", "method", "headers"];
const MAX_TRIES: u32 = 3;

/// Where the block's URL comes from, if it can be known before the run.
pub fn url_problem(
    config: &BTreeMap<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    if config.get("url").and_then(Value::as_str).is_some() {
        return None;
    }
    let name = config.get("url_env").and_then(Value::as_str)?;
    env(name)
        .filter(|v| !v.trim().is_empty())
        .is_none()
        .then(|| format!("environment variable `{name}` (its URL) is not set"))
}

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let config = &block.inputs.config;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = match (
        config.get("url").and_then(Value::as_str),
        config.get("url_env").and_then(Value::as_str),
    ) {
        (Some(url), _) => url.to_string(),
        (None, Some(name)) => match env(name) {
            Some(url) => url,
            None => {
                return Execution::failed(format!(
                    "block `{}`: environment variable `{name}` is not set",
                    block.id
                ));
            }
        },
        (None, None) => {
            return Execution::failed(format!("block `{}` has no `url` or `url_env`", block.id));
        }
    };
    let token = match config.get("auth_env").and_then(Value::as_str) {
        Some(name) => match env(name) {
            Some(token) => Some(token),
            None => {
                return Execution::failed(format!(
                    "block `{}`: environment variable `{name}` is not set",
                    block.id
                ));
            }
        },
        None => None,
    };

    let mut inputs = serde_json::Map::new();
    for artifact in &input.inputs {
        let text = String::from_utf8_lossy(&artifact.content).into_owned();
        let value = match artifact.format {
            ArtifactFormat::Json => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            _ => Value::String(text),
        };
        inputs.insert(format!("{}.{}", artifact.block, artifact.key), value);
    }
    let settings: serde_json::Map<String, Value> = config
        .iter()
        .filter(|(key, _)| !CALL_KEYS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body = json!({
        "run_id": input.run_id,
        "block": block.id,
        "attempt": input.attempt,
        "params": input.params,
        "config": settings,
        "inputs": inputs,
    });

    let client = reqwest::Client::new();
    let method = match config
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
    {
        "PUT" | "put" => reqwest::Method::PUT,
        _ => reqwest::Method::POST,
    };
    let deadline = Instant::now() + Duration::from_millis(block.timeout);
    let mut last_error = String::new();
    for attempt in 1..=MAX_TRIES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let mut call = client
            .request(method.clone(), &url)
            .timeout(remaining)
            .json(&body);
        if let Some(token) = &token {
            call = call.bearer_auth(token);
        }
        if let Some(Value::Object(headers)) = config.get("headers") {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    call = call.header(name.as_str(), value);
                }
            }
        }
        let response = match call.send().await {
            Ok(response) => response,
            Err(error) => {
                let timed_out = error.is_timeout();
                last_error = format!("cannot reach {}: {}", redact_url(&url), error.without_url());
                if timed_out {
                    return Execution {
                        timed_out: true,
                        error: Some(format!("block `{}`: {last_error}", block.id)),
                        ..Execution::default()
                    };
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return into_artifacts(&input, &text);
        }
        let mut excerpt: String = text.chars().take(300).collect();
        if let Some(token) = &token {
            excerpt = excerpt.replace(token.as_str(), "[redacted]");
        }
        last_error = format!(
            "{} answered HTTP {}: {excerpt}",
            redact_url(&url),
            status.as_u16()
        );
        let retryable = status.as_u16() == 429 || status.is_server_error();
        if !retryable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    Execution::failed(format!("block `{}`: {last_error}", block.id))
}

/// One declared artifact takes the whole response; several take the
/// same-named fields of a JSON object response.
fn into_artifacts(input: &AttemptInput<'_>, text: &str) -> Execution {
    let block = input.block;
    let mut execution = Execution {
        stdout: text.as_bytes().to_vec(),
        ..Execution::default()
    };
    match block.outputs.artifacts.as_slice() {
        [] => {}
        [only] => {
            execution
                .artifacts
                .insert(only.key.clone(), text.as_bytes().to_vec());
        }
        several => {
            let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(text).ok();
            for artifact in several {
                match parsed.as_ref().and_then(|object| object.get(&artifact.key)) {
                    Some(Value::String(s)) => {
                        execution
                            .artifacts
                            .insert(artifact.key.clone(), s.as_bytes().to_vec());
                    }
                    Some(value) => {
                        execution
                            .artifacts
                            .insert(artifact.key.clone(), value.to_string().into_bytes());
                    }
                    None => {
                        execution.error = Some(format!(
                            "block `{}`: the response has no field `{}` (with several artifacts the response must be a JSON object keyed by artifact)",
                            block.id, artifact.key
                        ));
                    }
                }
            }
        }
    }
    if execution.error.is_none() {
        for artifact in &block.outputs.artifacts {
            if let Some(bytes) = execution.artifacts.get(&artifact.key)
                && let Some(problem) = crate::check_format(
                    block,
                    &artifact.key,
                    &artifact.path,
                    artifact.format,
                    bytes,
                )
            {
                execution.error = Some(problem);
            }
        }
    }
    execution
}

/// Drops credentials and query strings from a URL for messages.
fn redact_url(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    match (without_query.find("://"), without_query.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!(
            "{}{}",
            &without_query[..scheme + 3],
            &without_query[at + 1..]
        ),
        _ => without_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pw@host/p?token=x"),
            "https://host/p"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8/sync"),
            "http://127.0.0.1:8/sync"
        );
    }

    #[test]
    fn unset_url_env_is_reported_before_the_run() {
        let config = BTreeMap::from([("url_env".to_string(), Value::from("SYNC_URL"))]);
        assert!(
            url_problem(&config, &|_| None)
                .unwrap()
                .contains("SYNC_URL")
        );
        assert!(url_problem(&config, &|_| Some("http://x".into())).is_none());
    }
}
