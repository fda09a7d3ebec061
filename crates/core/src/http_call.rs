//! What an `http` block sends, parsed once from its `inputs.config` so that
//! validation and the runtime agree: where the URL comes from, whether the
//! call may be left out, and — when the block declares a mapping — which
//! upstream artifact, param or uploaded file goes into which request field.
//!
//! Three shapes, all under the same retry and idempotency rules:
//! - **legacy** (no `body`, no `requests`): one request carrying the run id,
//!   block, attempt, params, the rest of the config and every input keyed
//!   `block.key`;
//! - **`body`**: one request whose JSON body is exactly the declared mapping
//!   (a batch endpoint taking the whole bundle);
//! - **`requests`**: one request per entry, each to `URL + path` with its own
//!   mapped body (an endpoint per artifact type).
//!
//! A mapping value is a *source* when it is an object with exactly one of
//! the keys `artifact` (`"block.key"`, a dependency), `param`, `uploads`
//! (`true`: the files `inputs.files` matched), `run` (`"id"` or
//! `"version"`) or `value` (a literal); any other object is a nested group
//! of fields.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::template::{ArtifactFormat, Block};

/// Config keys that steer the call; in the legacy shape every other key is
/// sent as `config`.
pub const CALL_KEYS: &[&str] = &[
    "url", "url_env", "auth_env", "method", "headers", "optional", "body", "requests", "response",
];

/// Where the URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Url(String),
    Env(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Post,
    Put,
}

/// Which field of the run a `run` source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunField {
    Id,
    Version,
}

/// One value of a mapped body.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A dependency's artifact: JSON parsed, a directory as a list of
    /// `{path, content}`, anything else as text; a fan-out dependency as an
    /// object keyed by instance.
    Artifact {
        block: String,
        key: String,
    },
    Param(String),
    /// The run's uploaded files matched by `inputs.files`, as a list of
    /// `{name, content}`.
    Uploads,
    Run(RunField),
    Value(Value),
    Group(BTreeMap<String, Source>),
}

/// One request of the `requests` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub name: String,
    /// Appended to the URL; starts with `/`.
    pub path: String,
    pub body: BTreeMap<String, Source>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Legacy { settings: BTreeMap<String, Value> },
    Body(BTreeMap<String, Source>),
    Requests(Vec<Request>),
}

/// A parsed `http` config.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub target: Target,
    pub auth_env: Option<String>,
    pub method: Method,
    pub headers: BTreeMap<String, String>,
    /// With `url_env` unset, the block is done without a call and its
    /// artifacts say why (instead of the run being refused).
    pub optional: bool,
    pub shape: Shape,
    /// Artifact key → JSON pointer into the response (`""`: all of it). In
    /// the `requests` shape the response is an object keyed by request name.
    pub response: BTreeMap<String, String>,
}

/// A config key with a value the call cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The config key (dotted below it, e.g. `body.theme.artifact`).
    pub key: String,
    pub message: String,
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> CallError {
    CallError {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses `block`'s config; `params` are the template's declared params
/// (None: not checked — the runtime, after validation did, reads a param a
/// run leaves unset as null). Every problem is reported, not only the first.
pub fn parse(block: &Block, params: Option<&BTreeSet<&str>>) -> Result<HttpCall, Vec<CallError>> {
    let config = &block.inputs.config;
    let mut errors = Vec::new();
    let string = |key: &str, errors: &mut Vec<CallError>| match config.get(key) {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            errors.push(problem(key, "must be a non-empty string"));
            None
        }
    };
    let url = string("url", &mut errors);
    let url_env = string("url_env", &mut errors);
    let target = match (url, url_env) {
        (Some(_), Some(_)) => {
            errors.push(problem(
                "url_env",
                "`url` and `url_env` exclude each other: keep the one the URL comes from",
            ));
            None
        }
        (Some(url), _) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            errors.push(problem(
                "url",
                format!("`{url}` is not an http(s) URL (use an absolute URL such as https://example.com/hook)"),
            ));
            None
        }
        (Some(url), _) => Some(Target::Url(url)),
        (None, Some(name)) => Some(Target::Env(name)),
        (None, None) => {
            if !errors.iter().any(|e| e.key == "url" || e.key == "url_env") {
                errors.push(problem(
                    "url",
                    "an `http` block needs `url` or `url_env` (set \"url\": \"https://…\" or \"url_env\": \"SYNC_URL\")",
                ));
            }
            None
        }
    };
    let auth_env = string("auth_env", &mut errors);
    let method = match config.get("method") {
        None => Method::Post,
        Some(Value::String(m)) if m.eq_ignore_ascii_case("post") => Method::Post,
        Some(Value::String(m)) if m.eq_ignore_ascii_case("put") => Method::Put,
        Some(_) => {
            errors.push(problem("method", "must be \"POST\" or \"PUT\""));
            Method::Post
        }
    };
    let mut headers = BTreeMap::new();
    match config.get("headers") {
        None => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let at = format!("headers.{name}");
                if name.is_empty() || !name.chars().all(is_token_char) {
                    errors.push(problem(
                        at,
                        "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                    ));
                } else if RESERVED_HEADERS
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(name))
                {
                    errors.push(problem(at, "is set by the runtime (the token comes from `auth_env`; Idempotency-Key, Content-Type and Content-Length from the request)"));
                } else {
                    match value.as_str() {
                        Some(v) if v.chars().all(|c| c == '\t' || !c.is_control()) => {
                            headers.insert(name.clone(), v.to_string());
                        }
                        Some(_) => errors.push(problem(
                            at,
                            "has a control character (a header value is one line)",
                        )),
                        None => errors.push(problem(at, "must be a string (a header value)")),
                    }
                }
            }
        }
        Some(_) => errors.push(problem("headers", "must be an object of header: value")),
    }
    let optional = match config.get("optional") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(problem("optional", "must be true or false"));
            false
        }
    };
    if optional && !matches!(target, Some(Target::Env(_)) | None) {
        errors.push(problem(
            "optional",
            "only a `url_env` call can be left out (a fixed `url` is always set); remove `optional`",
        ));
    }
    if optional {
        for artifact in &block.outputs.artifacts {
            if !matches!(
                artifact.format,
                ArtifactFormat::Json | ArtifactFormat::Md | ArtifactFormat::Text
            ) {
                errors.push(problem(
                    "optional",
                    format!(
                        "artifact `{}` is {}; an optional call writes a note in place of its response, which only a json, md or text artifact can hold",
                        artifact.key,
                        artifact.format.as_str()
                    ),
                ));
            }
        }
    }

    let depends: BTreeSet<(&str, &str)> = block
        .inputs
        .depends
        .iter()
        .map(|d| (d.block.as_str(), d.key.as_str()))
        .collect();
    let mut used = BTreeSet::new();
    let context = Context {
        depends: &depends,
        params,
        has_files: !block.inputs.files.is_empty(),
    };
    let shape = match (config.get("body"), config.get("requests")) {
        (Some(_), Some(_)) => {
            errors.push(problem(
                "requests",
                "`body` (one request) and `requests` (one per entry) exclude each other; keep one",
            ));
            Shape::Body(BTreeMap::new())
        }
        (Some(body), None) => Shape::Body(context.fields("body", body, &mut used, &mut errors)),
        (None, Some(requests)) => {
            Shape::Requests(context.requests(requests, &mut used, &mut errors))
        }
        (None, None) => Shape::Legacy {
            settings: config
                .iter()
                .filter(|(key, _)| !CALL_KEYS.contains(&key.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    };
    if !matches!(shape, Shape::Legacy { .. }) {
        for key in config.keys().filter(|k| !CALL_KEYS.contains(&k.as_str())) {
            errors.push(problem(
                key.clone(),
                "is not an `http` setting; with `body` or `requests` the request holds only what they map (move it into the mapping as {\"value\": …})",
            ));
        }
        for (block_id, key) in &depends {
            if !used.contains(&(block_id.to_string(), key.to_string())) {
                errors.push(problem(
                    if matches!(shape, Shape::Body(_)) { "body" } else { "requests" },
                    format!("dependency `{block_id}.{key}` is read by no field; map it (\"field\": {{\"artifact\": \"{block_id}.{key}\"}}) or drop the dependency"),
                ));
            }
        }
    }
    let mut response = BTreeMap::new();
    match config.get("response") {
        None => {}
        Some(Value::Object(map)) => {
            for (key, pointer) in map {
                if !block.outputs.artifacts.iter().any(|a| &a.key == key) {
                    errors.push(problem(
                        format!("response.{key}"),
                        format!("`{key}` is not one of the block's artifacts"),
                    ));
                }
                match pointer.as_str() {
                    Some(p) if p.is_empty() || p.starts_with('/') => {
                        response.insert(key.clone(), p.to_string());
                    }
                    _ => errors.push(problem(
                        format!("response.{key}"),
                        "must be a JSON pointer into the response (\"\" for all of it, or like \"/profile/url\")",
                    )),
                }
            }
            for artifact in &block.outputs.artifacts {
                if !map.contains_key(&artifact.key) {
                    errors.push(problem(
                        "response",
                        format!("artifact `{}` has no pointer; with `response` every artifact needs one", artifact.key),
                    ));
                }
            }
        }
        Some(_) => errors.push(problem(
            "response",
            "must be an object of artifact key: JSON pointer",
        )),
    }
    match (errors.is_empty(), target) {
        (true, Some(target)) => Ok(HttpCall {
            target,
            auth_env,
            method,
            headers,
            optional,
            shape,
            response,
        }),
        _ => Err(errors),
    }
}

struct Context<'a> {
    depends: &'a BTreeSet<(&'a str, &'a str)>,
    params: Option<&'a BTreeSet<&'a str>>,
    has_files: bool,
}

const SOURCE_KEYS: &[&str] = &["artifact", "param", "uploads", "run", "value"];

impl Context<'_> {
    fn requests(
        &self,
        value: &Value,
        used: &mut BTreeSet<(String, String)>,
        errors: &mut Vec<CallError>,
    ) -> Vec<Request> {
        let Some(map) = value.as_object().filter(|m| !m.is_empty()) else {
            errors.push(problem(
                "requests",
                "must be a non-empty object of name: {\"path\": \"/…\", \"body\": {…}}",
            ));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, request) in map {
            let at = format!("requests.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                errors.push(problem(
                    at.clone(),
                    "a request's name is 1–64 of a-z, 0-9, - and _ (it is part of the idempotency key)",
                ));
            }
            let Some(request) = request.as_object() else {
                errors.push(problem(at, "must be an object with `path` and `body`"));
                continue;
            };
            for key in request.keys().filter(|k| *k != "path" && *k != "body") {
                errors.push(problem(
                    format!("{at}.{key}"),
                    "is not a request setting (`path` and `body` only)",
                ));
            }
            let path = match request.get("path").and_then(Value::as_str) {
                Some(p) if safe_path(p) => p.to_string(),
                _ => {
                    errors.push(problem(
                        format!("{at}.path"),
                        "must be a path starting with `/`, appended to the URL: no `..`, `.`, `//`, a backslash, `?`, `#` or percent-encoded dot or slash, so it stays under the URL",
                    ));
                    String::new()
                }
            };
            let body = match request.get("body") {
                Some(body) => self.fields(&format!("{at}.body"), body, used, errors),
                None => {
                    errors.push(problem(format!("{at}.body"), "is missing"));
                    BTreeMap::new()
                }
            };
            out.push(Request {
                name: name.clone(),
                path,
                body,
            });
        }
        out
    }

    fn fields(
        &self,
        at: &str,
        value: &Value,
        used: &mut BTreeSet<(String, String)>,
        errors: &mut Vec<CallError>,
    ) -> BTreeMap<String, Source> {
        let Some(map) = value.as_object() else {
            errors.push(problem(
                at,
                "must be an object of field: source ({\"artifact\": \"block.key\"}, {\"param\": …}, {\"uploads\": true}, {\"run\": \"id\"}, {\"value\": …})",
            ));
            return BTreeMap::new();
        };
        map.iter()
            .map(|(field, value)| {
                let source = self.source(&format!("{at}.{field}"), value, used, errors);
                (field.clone(), source)
            })
            .collect()
    }

    fn source(
        &self,
        at: &str,
        value: &Value,
        used: &mut BTreeSet<(String, String)>,
        errors: &mut Vec<CallError>,
    ) -> Source {
        let Some(map) = value.as_object() else {
            errors.push(problem(
                at,
                "must be a source object (a literal goes in {\"value\": …})",
            ));
            return Source::Value(Value::Null);
        };
        let is_source =
            map.len() == 1 && SOURCE_KEYS.contains(&map.keys().next().unwrap().as_str());
        if !is_source {
            // `{"param": …, "value": …}` is a source written twice, not a
            // group; a group may still have a field named like a source.
            if map.len() > 1 && map.keys().all(|k| SOURCE_KEYS.contains(&k.as_str())) {
                errors.push(problem(
                    at,
                    "a source has exactly one of artifact, param, uploads, run, value",
                ));
            }
            return Source::Group(self.fields(at, value, used, errors));
        }
        let (kind, v) = map.iter().next().expect("one entry");
        match (kind.as_str(), v) {
            ("artifact", Value::String(name)) => match name.split_once('.') {
                Some((block, key)) if self.depends.contains(&(block, key)) => {
                    used.insert((block.to_string(), key.to_string()));
                    Source::Artifact {
                        block: block.to_string(),
                        key: key.to_string(),
                    }
                }
                _ => {
                    errors.push(problem(
                        format!("{at}.artifact"),
                        format!("`{name}` is not one of the block's dependencies (`inputs.depends`, written block.key)"),
                    ));
                    Source::Value(Value::Null)
                }
            },
            ("param", Value::String(name))
                if self.params.is_none_or(|p| p.contains(name.as_str())) =>
            {
                Source::Param(name.clone())
            }
            ("param", Value::String(name)) => {
                errors.push(problem(
                    format!("{at}.param"),
                    format!("`{name}` is not a declared param of the template"),
                ));
                Source::Value(Value::Null)
            }
            ("uploads", Value::Bool(true)) if self.has_files => Source::Uploads,
            ("uploads", Value::Bool(true)) => {
                errors.push(problem(
                    format!("{at}.uploads"),
                    "the block matches no uploaded files; set `inputs.files` (e.g. [\"*\"])",
                ));
                Source::Value(Value::Null)
            }
            ("run", Value::String(f)) if f == "id" => Source::Run(RunField::Id),
            ("run", Value::String(f)) if f == "version" => Source::Run(RunField::Version),
            ("value", v) => Source::Value(v.clone()),
            (kind, _) => {
                errors.push(problem(
                    format!("{at}.{kind}"),
                    match kind {
                        "artifact" => "must be \"block.key\"",
                        "param" => "must be a param name",
                        "uploads" => "must be true",
                        _ => "must be \"id\" or \"version\"",
                    },
                ));
                Source::Value(Value::Null)
            }
        }
    }
}

/// Header names the runtime sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "idempotency-key",
    "content-type",
    "content-length",
    "host",
];

/// A header name's characters (RFC 9110 `token`).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A request path that stays under the URL it is appended to.
fn safe_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains("//")
        && !path.contains(['\\', '?', '#'])
        && !path.chars().any(char::is_control)
        && !lower.contains("%2e")
        && !lower.contains("%2f")
        && !path
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
}

/// `path` appended to `url`'s path (before its query, if it has one).
pub fn join(url: &str, path: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let joined = format!("{}{path}", base.trim_end_matches('/'));
    match query {
        Some(query) => format!("{joined}?{query}"),
        None => joined,
    }
}

/// The `Idempotency-Key` a request carries: run, version, block and
/// request, and a digest of the body — the same for every try of the same
/// content, so a retried call updates rather than duplicates, and a new key
/// for new content (which a server following the IETF draft would refuse
/// under the old one).
pub fn idempotency_key(
    run_id: &str,
    run_version: u32,
    block: &str,
    request: Option<&str>,
    body: &Value,
) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let digest = &digest[..16];
    match request {
        Some(name) => format!("factory-{run_id}-v{run_version}-{block}-{name}-{digest}"),
        None => format!("factory-{run_id}-v{run_version}-{block}-{digest}"),
    }
}

/// The value at `pointer` in a response (`""`: the whole response).
pub fn pick<'a>(response: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        Some(response)
    } else {
        response.pointer(pointer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Block;
    use serde_json::json;

    fn block(config: Value, depends: Value, artifacts: Value) -> Block {
        serde_json::from_value(json!({
            "id": "sync", "name": "Sync", "layer": "L4", "type": "orchestrate",
            "runtime": "http",
            "inputs": {"depends": depends, "config": config},
            "outputs": {"artifacts": artifacts}
        }))
        .unwrap()
    }

    fn params() -> BTreeSet<&'static str> {
        BTreeSet::from(["expert_name"])
    }

    #[test]
    fn a_body_mapping_parses_into_sources() {
        let b = block(
            json!({"url_env": "OS_URL", "body": {
                "expert": {"param": "expert_name"},
                "run": {"run": "id"},
                "profile": {"system_prompt": {"artifact": "compiler.system-prompt"}, "kind": {"value": "clone"}}
            }, "response": {"profile": "/profile"}}),
            json!([{"block": "compiler", "key": "system-prompt"}]),
            json!([{"key": "profile", "path": "p.json", "format": "json"}]),
        );
        let call = parse(&b, Some(&params())).unwrap();
        assert_eq!(call.target, Target::Env("OS_URL".into()));
        let Shape::Body(body) = call.shape else {
            panic!()
        };
        assert_eq!(body["expert"], Source::Param("expert_name".into()));
        assert_eq!(body["run"], Source::Run(RunField::Id));
        let Source::Group(profile) = &body["profile"] else {
            panic!()
        };
        assert_eq!(
            profile["system_prompt"],
            Source::Artifact {
                block: "compiler".into(),
                key: "system-prompt".into()
            }
        );
        assert_eq!(profile["kind"], Source::Value(json!("clone")));
        assert_eq!(call.response["profile"], "/profile");
    }

    #[test]
    fn every_mapping_mistake_is_named() {
        let b = block(
            json!({"url_env": "OS_URL", "extra": 1, "requests": {
                "theme": {"path": "theme", "body": {
                    "t": {"artifact": "nowhere.tokens"},
                    "p": {"param": "undeclared"},
                    "u": {"uploads": true},
                    "x": "literal",
                    "both": {"param": "expert_name", "value": 1}
                }, "verb": "PATCH"}
            }, "response": {"missing": "x"}}),
            json!([{"block": "compiler", "key": "system-prompt"}]),
            json!([{"key": "profile", "path": "p.json", "format": "json"}]),
        );
        let errors = parse(&b, Some(&params())).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "extra",
            "requests.theme.path",
            "requests.theme.verb",
            "requests.theme.body.t.artifact",
            "requests.theme.body.p.param",
            "requests.theme.body.u.uploads",
            "requests.theme.body.x",
            "requests.theme.body.both",
            "response.missing",
            "response",
            "requests",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        let unread = errors.iter().find(|e| e.key == "requests").unwrap();
        assert!(
            unread.message.contains("compiler.system-prompt"),
            "{}",
            unread.message
        );
    }

    #[test]
    fn optional_needs_an_env_url_and_note_holding_artifacts() {
        let b = block(
            json!({"url": "https://x.test/hook", "optional": true}),
            json!([]),
            json!([{"key": "u", "path": "u.txt", "format": "url"}]),
        );
        let errors = parse(&b, Some(&params())).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.key == "optional"));
        let b = block(
            json!({"url_env": "HOOK", "optional": true}),
            json!([]),
            json!([{"key": "r", "path": "r.json", "format": "json"}]),
        );
        assert!(parse(&b, Some(&params())).unwrap().optional);
    }

    #[test]
    fn the_legacy_shape_sends_the_other_keys_as_settings() {
        let b = block(
            json!({"url": "http://127.0.0.1:1/x", "site": "a"}),
            json!([]),
            json!([]),
        );
        let call = parse(&b, Some(&params())).unwrap();
        assert_eq!(
            call.shape,
            Shape::Legacy {
                settings: BTreeMap::from([("site".into(), json!("a"))])
            }
        );
    }

    #[test]
    fn idempotency_keys_follow_the_version_and_the_content() {
        let body = json!({"a": 1});
        let key = idempotency_key("r1", 1, "sync", None, &body);
        assert!(
            key.starts_with("factory-r1-v1-sync-") && key.len() == "factory-r1-v1-sync-".len() + 16,
            "{key}"
        );
        assert_eq!(
            key,
            idempotency_key("r1", 1, "sync", None, &json!({"a": 1}))
        );
        assert_ne!(key, idempotency_key("r1", 2, "sync", None, &body));
        assert_ne!(
            key,
            idempotency_key("r1", 1, "sync", None, &json!({"a": 2}))
        );
        assert!(
            idempotency_key("r1", 1, "sync", Some("theme"), &body)
                .starts_with("factory-r1-v1-sync-theme-")
        );
    }

    #[test]
    fn paths_stay_under_the_url_and_headers_are_checked() {
        for bad in [
            "/../x",
            "/a/%2E%2E/x",
            "//evil",
            "/a?b",
            "/a#b",
            "/a\\b",
            "x",
            "/a/./b",
            "/a%2fb",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
        assert!(safe_path("/profile/theme-v2"));
        assert_eq!(
            join("https://h/api?k=v", "/theme"),
            "https://h/api/theme?k=v"
        );
        assert_eq!(join("https://h/api/", "/theme"), "https://h/api/theme");
        let b = block(
            json!({"url": "https://x.test", "url_env": "X", "headers": {"X Bad": "v", "Authorization": "t", "X-Ok": "a\nb", "X-Fine": "v"},
                   "requests": {"Thème": {"path": "/t", "body": {}}}}),
            json!([]),
            json!([]),
        );
        let errors = parse(&b, Some(&params())).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "url_env",
            "headers.X Bad",
            "headers.Authorization",
            "headers.X-Ok",
            "requests.Thème",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        assert!(!keys.contains(&"headers.X-Fine"), "{keys:?}");
    }
}
