//! The `http` runtime: send a block's inputs to a service (publishing a page,
//! syncing a finished clone to the platform it lives on) and keep the
//! response as the block's artifacts.
//!
//! What is sent is parsed by [`factory_core::http_call`]: the legacy body
//! (run id, block, attempt, params, config, every input), one mapped body, or
//! one mapped request per entry of `requests`. Every request carries an
//! `Idempotency-Key` that is the same for every try of the same content in
//! a run version ([`http_call::idempotency_key`]), so a retry after a
//! timeout updates what the first try created instead of creating it twice.
//! 429, 5xx, connection errors and unreadable bodies are retried (3 tries
//! within the block's timeout); any other status fails the attempt with a
//! body excerpt.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use factory_core::http_call::{self, HttpCall, Method, RunField, Shape, Source, Target};
use factory_core::template::ArtifactFormat;
use serde_json::{Value, json};

use crate::{AttemptInput, Execution, InputArtifact};

const MAX_TRIES: u32 = 3;
/// A response bigger than this fails the attempt rather than filling memory.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

fn too_large(label: &str, url: &str) -> Failed {
    Failed {
        message: format!(
            "{label}{} answered with more than {} MiB; the http runtime keeps responses up to that size",
            redact_url(url),
            MAX_RESPONSE_BYTES >> 20
        ),
        timed_out: false,
    }
}

/// What keeps the call from being made, if it can be known before the run:
/// a `url_env` that is not set (unless the call is `optional`: it is then
/// left out), or an `auth_env` that is not set for a call that will be made.
pub fn url_problem(
    config: &BTreeMap<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let optional = config.get("optional") == Some(&Value::Bool(true));
    if let Some(name) = config.get("url_env").and_then(Value::as_str)
        && config.get("url").is_none()
        && !set(name)
    {
        return (!optional).then(|| format!("environment variable `{name}` (its URL) is not set"));
    }
    let name = config.get("auth_env").and_then(Value::as_str)?;
    (!set(name)).then(|| format!("environment variable `{name}` (its bearer token) is not set"))
}

/// One request to send: where, with which key and body.
struct Outgoing {
    name: Option<String>,
    url: String,
    body: Value,
}

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let call = match http_call::parse(block, None) {
        Ok(call) => call,
        Err(errors) => {
            let list: Vec<String> = errors
                .iter()
                .map(|e| format!("inputs.config.{}: {}", e.key, e.message))
                .collect();
            return Execution::failed(format!("block `{}`: {}", block.id, list.join("; ")));
        }
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = match &call.target {
        Target::Url(url) => url.clone(),
        Target::Env(name) => match env(name) {
            Some(url) => url,
            None if call.optional => return left_out(&input, name),
            None => {
                return Execution::failed(format!(
                    "block `{}`: environment variable `{name}` is not set",
                    block.id
                ));
            }
        },
    };
    let token = match &call.auth_env {
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
    let outgoing = match requests(&input, &call, &url) {
        Ok(outgoing) => outgoing,
        Err(error) => return Execution::failed(format!("block `{}`: {error}", block.id)),
    };

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_millis(block.timeout);
    let mut answers: Vec<(Option<String>, String)> = Vec::new();
    for request in &outgoing {
        let key = http_call::idempotency_key(
            input.run_id,
            input.run_version,
            &block.id,
            request.name.as_deref(),
            &request.body,
        );
        match send(&client, &call, request, &key, token.as_deref(), deadline).await {
            Ok(text) => answers.push((request.name.clone(), text)),
            Err(failed) => return failed.into_execution(block, &answers),
        }
    }
    let (text, response) = match answers.as_slice() {
        [(None, text)] => (text.clone(), parse_lenient(text)),
        _ => {
            let combined: serde_json::Map<String, Value> = answers
                .iter()
                .map(|(name, text)| (name.clone().unwrap_or_default(), parse_lenient(text)))
                .collect();
            let value = Value::Object(combined);
            (value.to_string(), value)
        }
    };
    if call.response.is_empty() {
        into_artifacts(&input, &text)
    } else {
        picked_artifacts(&input, &call, &text, &response)
    }
}

/// A JSON response as JSON, anything else as a string.
fn parse_lenient(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The requests the call makes, bodies filled from the attempt's inputs.
fn requests(input: &AttemptInput<'_>, call: &HttpCall, url: &str) -> Result<Vec<Outgoing>, String> {
    Ok(match &call.shape {
        Shape::Legacy { settings } => {
            let mut inputs = serde_json::Map::new();
            for artifact in &input.inputs {
                inputs.insert(
                    format!("{}.{}", artifact.block, artifact.key),
                    artifact_value(artifact)?,
                );
            }
            vec![Outgoing {
                name: None,
                url: url.to_string(),
                body: json!({
                    "run_id": input.run_id,
                    "block": input.block.id,
                    "attempt": input.attempt,
                    "params": input.params,
                    "config": settings,
                    "inputs": inputs,
                }),
            }]
        }
        Shape::Body(fields) => vec![Outgoing {
            name: None,
            url: url.to_string(),
            body: fill(input, fields)?,
        }],
        Shape::Requests(requests) => requests
            .iter()
            .map(|request| {
                Ok(Outgoing {
                    name: Some(request.name.clone()),
                    url: http_call::join(url, &request.path),
                    body: fill(input, &request.body)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

/// A mapped body with every source read.
fn fill(input: &AttemptInput<'_>, fields: &BTreeMap<String, Source>) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for (field, source) in fields {
        let value = match source {
            Source::Value(value) => value.clone(),
            Source::Param(name) => input.params.get(name).cloned().unwrap_or(Value::Null),
            Source::Run(RunField::Id) => Value::from(input.run_id),
            Source::Run(RunField::Version) => Value::from(input.run_version),
            Source::Group(fields) => fill(input, fields)?,
            Source::Uploads => Value::Array(
                input
                    .inputs
                    .iter()
                    .filter(|a| a.block == "uploads")
                    .map(|a| match std::str::from_utf8(&a.content) {
                        Ok(text) => json!({"name": a.key, "content": text}),
                        // A binary file (a PDF book) goes whole, not mangled.
                        Err(_) => json!({
                            "name": a.key,
                            "content_base64": base64::engine::general_purpose::STANDARD.encode(&a.content),
                        }),
                    })
                    .collect(),
            ),
            Source::Artifact { block, key } => {
                let instance_of = |name: &str| {
                    name == block
                        || name
                            .strip_prefix(block.as_str())
                            .is_some_and(|rest| rest.starts_with('['))
                };
                // A dependency listed twice is read once.
                let mut seen = std::collections::BTreeSet::new();
                let found: Vec<&InputArtifact> = input
                    .inputs
                    .iter()
                    .filter(|a| &a.key == key && instance_of(&a.block))
                    .filter(|a| seen.insert(a.block.as_str()))
                    .collect();
                match found.as_slice() {
                    [] => Value::Null,
                    [one] if one.block == *block => artifact_value(one)?,
                    many => Value::Object(
                        many.iter()
                            .map(|a| Ok((a.block.clone(), artifact_value(a)?)))
                            .collect::<Result<_, String>>()?,
                    ),
                }
            }
        };
        out.insert(field.clone(), value);
    }
    Ok(Value::Object(out))
}

/// An artifact as a request value: JSON as JSON, a directory as a list of
/// `{path, content}` (`{path, content_base64}` for its binary files), media
/// as `{media_type, content_base64}`, anything else as text.
fn artifact_value(artifact: &InputArtifact) -> Result<Value, String> {
    use base64::Engine as _;
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    if artifact.format.is_media() {
        return Ok(json!({
            "media_type": artifact.format.media_type(),
            "content_base64": base64(&artifact.content),
        }));
    }
    let text = String::from_utf8_lossy(&artifact.content).into_owned();
    Ok(match artifact.format {
        ArtifactFormat::Json => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ArtifactFormat::Directory => {
            let files = crate::directory::bundle_files(&artifact.content)
                .map_err(|e| format!("artifact `{}.{}`: {e}", artifact.block, artifact.key))?;
            let binary = crate::directory::bundle_binary_files(&artifact.content)
                .map_err(|e| format!("artifact `{}.{}`: {e}", artifact.block, artifact.key))?;
            Value::Array(
                files
                    .into_iter()
                    .map(|(path, content)| json!({"path": path, "content": content}))
                    .chain(binary.into_iter().map(
                        |(path, bytes)| json!({"path": path, "content_base64": base64(&bytes)}),
                    ))
                    .collect(),
            )
        }
        _ => Value::String(text),
    })
}

/// Why a request did not succeed.
struct Failed {
    message: String,
    timed_out: bool,
}

impl Failed {
    fn into_execution(
        self,
        block: &factory_core::template::Block,
        sent: &[(Option<String>, String)],
    ) -> Execution {
        let done: Vec<&str> = sent.iter().filter_map(|(n, _)| n.as_deref()).collect();
        let after = if done.is_empty() {
            String::new()
        } else {
            format!(
                " (after {} succeeded; a retry sends them again under the same idempotency keys)",
                done.join(", ")
            )
        };
        Execution {
            timed_out: self.timed_out,
            error: Some(format!("block `{}`: {}{after}", block.id, self.message)),
            ..Execution::default()
        }
    }
}

/// One request, retried on 429, 5xx and connection errors while time is left.
async fn send(
    client: &reqwest::Client,
    call: &HttpCall,
    request: &Outgoing,
    idempotency_key: &str,
    token: Option<&str>,
    deadline: Instant,
) -> Result<String, Failed> {
    let method = match call.method {
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    };
    let label = match &request.name {
        Some(name) => format!("request `{name}`: "),
        None => String::new(),
    };
    let mut last_error = String::from("no time left for the request");
    for attempt in 1..=MAX_TRIES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let mut builder = client
            .request(method.clone(), &request.url)
            .timeout(remaining)
            .header("Idempotency-Key", idempotency_key)
            .json(&request.body);
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        for (name, value) in &call.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => {
                let timed_out = error.is_timeout();
                // A request that cannot even be built will not build next time.
                let fatal = error.is_builder();
                last_error = format!(
                    "{label}cannot reach {}: {}",
                    redact_url(&request.url),
                    error.without_url()
                );
                if timed_out || fatal {
                    return Err(Failed {
                        message: last_error,
                        timed_out,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
        };
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large(&label, &request.url));
        }
        let text = match response.bytes().await {
            Ok(bytes) if bytes.len() > MAX_RESPONSE_BYTES => {
                return Err(too_large(&label, &request.url));
            }
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => {
                last_error = format!(
                    "{label}{} answered HTTP {} but its body could not be read: {}",
                    redact_url(&request.url),
                    status.as_u16(),
                    error.without_url()
                );
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
        };
        if status.is_success() {
            return Ok(text);
        }
        // Secrets out first, then cut: a cut must not leave half a token.
        let mut redacted = text;
        if let Some(token) = token {
            redacted = redacted.replace(token, "[redacted]");
        }
        for value in call.headers.values().filter(|v| v.len() >= 8) {
            redacted = redacted.replace(value.as_str(), "[redacted]");
        }
        let excerpt: String = redacted.chars().take(300).collect();
        last_error = format!(
            "{label}{} answered HTTP {}: {excerpt}",
            redact_url(&request.url),
            status.as_u16()
        );
        let retryable = status.as_u16() == 429 || status.is_server_error();
        if !retryable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    Err(Failed {
        message: last_error,
        timed_out: false,
    })
}

/// An optional call whose URL is not set: done without a request, each
/// artifact saying so (JSON: `{"sent": false, "reason": …}`).
fn left_out(input: &AttemptInput<'_>, variable: &str) -> Execution {
    let reason = format!("not sent: environment variable `{variable}` (the URL) is not set");
    let mut execution = Execution {
        stdout: reason.clone().into_bytes(),
        ..Execution::default()
    };
    for artifact in &input.block.outputs.artifacts {
        let bytes = match artifact.format {
            ArtifactFormat::Json => {
                serde_json::to_vec_pretty(&json!({"sent": false, "reason": reason}))
                    .unwrap_or_default()
            }
            ArtifactFormat::Md => format!("# Not sent\n\n{reason}.\n").into_bytes(),
            _ => format!("{reason}\n").into_bytes(),
        };
        execution.artifacts.insert(artifact.key.clone(), bytes);
    }
    execution
}

/// The artifacts `response` points at.
fn picked_artifacts(
    input: &AttemptInput<'_>,
    call: &HttpCall,
    text: &str,
    response: &Value,
) -> Execution {
    let block = input.block;
    let mut execution = Execution {
        stdout: text.as_bytes().to_vec(),
        ..Execution::default()
    };
    for artifact in &block.outputs.artifacts {
        let pointer = call.response.get(&artifact.key).map_or("", String::as_str);
        match http_call::pick(response, pointer) {
            Some(Value::String(s)) => {
                execution
                    .artifacts
                    .insert(artifact.key.clone(), s.as_bytes().to_vec());
            }
            Some(Value::Null) | None => {
                execution.error = Some(format!(
                    "block `{}`: the response has nothing at `{pointer}` for artifact `{}`",
                    block.id, artifact.key
                ));
                return execution;
            }
            Some(value) => {
                let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
                execution.artifacts.insert(artifact.key.clone(), bytes);
            }
        }
    }
    check_formats(block, &mut execution);
    execution
}

fn check_formats(block: &factory_core::template::Block, execution: &mut Execution) {
    if execution.error.is_some() {
        return;
    }
    for artifact in &block.outputs.artifacts {
        if let Some(bytes) = execution.artifacts.get(&artifact.key)
            && let Some(problem) =
                crate::check_format(block, &artifact.key, &artifact.path, artifact.format, bytes)
        {
            execution.error = Some(problem);
            return;
        }
    }
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
    check_formats(block, &mut execution);
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
        let mut config = config;
        config.insert("auth_env".into(), Value::from("SYNC_TOKEN"));
        let only_url = |name: &str| (name == "SYNC_URL").then(|| "http://x".to_string());
        assert!(
            url_problem(&config, &only_url)
                .unwrap()
                .contains("SYNC_TOKEN")
        );
        // Optional and its URL unset: left out, so no token is needed.
        config.insert("optional".into(), Value::Bool(true));
        assert!(url_problem(&config, &|_| None).is_none());
        assert!(
            url_problem(&config, &only_url)
                .unwrap()
                .contains("SYNC_TOKEN")
        );
    }
}
