//! The JSON API over real HTTP: roles route by route, errors, the gate flow,
//! live streams, restarts and shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TestServer, block_status};

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_api_routes() {
    let t = TestServer::start().await;
    let response = t
        .request(Method::GET, "/api/v1/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the document is public");
    let doc: Value = response.json().await.unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = factory_server::auth::ROUTES
        .iter()
        .filter(|(_, path, _)| path.starts_with("/api/") || *path == "/metrics")
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

/// The document says what the server does: every answer's status is
/// documented (exactly, or as 4XX/5XX), a success has the documented content
/// type (none for 204), and a field the server insists on is `required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_what_the_server_answers() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Conformance").await;
    t.wait_for(&run, "draft at its gate", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    let (_, doc) = t
        .call(Method::GET, "/api/v1/openapi.json", "viewer", None)
        .await;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path.ends_with("/stream") {
            continue; // streams never end; their content type is checked below
        }
        for (verb, op) in ops.as_object().unwrap() {
            let concrete_path = concrete(path, &run, "pf_00000000");
            let mut request =
                t.request(method(&verb.to_uppercase()), &concrete_path, Some("admin"));
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if !op["requestBody"].is_null() {
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = response.text().await.unwrap();
            let what = format!(
                "{} {path} → {status} {content_type} {body:.200}",
                verb.to_uppercase()
            );
            let responses = &op["responses"];
            let range = format!("{}XX", status / 100);
            let documented = if responses[status.to_string()].is_object() {
                &responses[status.to_string()]
            } else {
                &responses[range.as_str()]
            };
            assert!(documented.is_object(), "undocumented status: {what}");
            match documented["content"].as_object() {
                None => assert!(body.is_empty(), "documented without a body: {what}"),
                Some(content) => {
                    let essence = content_type.split(';').next().unwrap_or("").trim();
                    assert!(
                        content.contains_key(essence) || content.contains_key("*/*"),
                        "content type not documented: {what}"
                    );
                }
            }
            // A field the server says is missing must be documented as required.
            if status == 422
                && let Some(field) = body
                    .split("missing field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next())
            {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert!(
                    required.contains(&field),
                    "`{field}` not marked required: {what}"
                );
            }
            for field in schema["required"].as_array().into_iter().flatten() {
                assert!(
                    schema["properties"][field.as_str().unwrap()].is_object(),
                    "required `{field}` is not a property of {path}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
    // A stream is documented as one.
    let response = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/stream"),
            Some("viewer"),
        )
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        doc["paths"]["/api/v1/runs/{run}/stream"]["get"]["responses"]["200"]["content"]
            [&content_type]
            .is_object(),
        "{content_type}"
    );
}

/// Fills a route pattern with ids that exist.
pub fn concrete(route: &str, run: &str, token_id: &str) -> String {
    route
        .replace("{run}", run)
        .replace("{block}", "draft")
        .replace("{key}", "draft")
        .replace("{name}", "notes.txt")
        .replace("{template}", "review-demo")
        .replace("{id}", token_id)
        .replace("{file}", "workbench.css")
        .replace("{*path}", "no-such/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_its_role() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Roles").await;
    let roles = ["viewer", "reviewer", "operator", "admin"];
    for (verb, route, needed) in factory_server::auth::ROUTES {
        if route.ends_with("/stream") {
            continue; // streams never end; checked in their own tests
        }
        let path = concrete(route, &run, "pf_00000000");
        let is_api = route.starts_with("/api/") || *route == "/metrics";
        // Without a token.
        let response = t
            .request(method(verb), &path, None)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        match needed {
            None => assert!(
                status != 401 && status != 403,
                "{verb} {route} is public but answered {status}"
            ),
            Some(_) if is_api => assert_eq!(status, 401, "{verb} {route} without a token"),
            Some(_) => {
                assert_eq!(status, 303, "{verb} {route} page without a token");
                let location = response.headers()["location"].to_str().unwrap();
                assert!(location.starts_with("/login?next="), "{location}");
            }
        }
        let Some(needed) = needed else { continue };
        for role in roles {
            let allowed = role.parse::<factory_server::auth::Role>().unwrap() >= *needed;
            let response = t
                .request(method(verb), &path, Some(role))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_ne!(status, 500, "{verb} {route} as {role}: {body}");
            // A page answers a person with a page; the API with a JSON code.
            let refused_by_role = status == 403
                && if is_api {
                    body.contains("\"forbidden\"")
                } else {
                    body.contains("<html") && body.contains("role")
                };
            if allowed {
                // A 403 with another code is a rule of the route itself (no
                // tester role, self-approval), not the role table.
                assert!(
                    status != 401 && !refused_by_role,
                    "{verb} {route} as {role} should be allowed: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{verb} {route} as {role}: {body}");
                assert!(refused_by_role, "{body}");
                assert!(
                    body.contains(needed.as_str()),
                    "names the role needed: {body}"
                );
            }
        }
    }
    // A wrong or revoked token is refused like a missing one.
    let response = t
        .http
        .get(t.url("/api/v1/runs"))
        .bearer_auth("pf_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// (method, path, role, body, expected status, error code, what the message names)
type BadRequest<'a> = (
    Method,
    String,
    &'a str,
    Option<Value>,
    u16,
    &'a str,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_errors() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Errors").await;
    let expect = |status: u16, body: &Value, want_status: u16, code: &str| {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    };
    let runs = "/api/v1/runs".to_string();
    let block = |b: &str, action: &str| format!("/api/v1/runs/{run}/blocks/{b}/{action}");
    let cases: Vec<BadRequest> = vec![
        (
            Method::GET,
            "/api/v1/runs/no-such-run".into(),
            "viewer",
            None,
            404,
            "run_not_found",
            "no-such-run",
        ),
        (
            Method::POST,
            block("nope", "approve"),
            "reviewer",
            None,
            404,
            "unknown_block",
            "nope",
        ),
        // Not waiting yet, or never a gate.
        (
            Method::POST,
            block("publish", "approve"),
            "reviewer",
            None,
            409,
            "not_waiting",
            "publish",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(json!({"template": "review-demo", "paramz": {}})),
            422,
            "bad_request_body",
            "paramz",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(json!({"template": "nope"})),
            404,
            "template_not_found",
            "review-demo",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(json!({"template": "review-demo"})),
            422,
            "invalid_run_request",
            "title",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(
                json!({"template": "review-demo", "params": {"title": "x"}, "sampling": {"max_tokens": 5}}),
            ),
            422,
            "invalid_run_request",
            "`max_tokens` cannot be set per run",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(
                json!({"template": "review-demo", "params": {"title": "x"}, "max_concurrency": -1}),
            ),
            422,
            "bad_request_body",
            "max_concurrency",
        ),
        (
            Method::POST,
            runs.clone(),
            "operator",
            Some(
                json!({"template": "review-demo", "params": {"title": "x"}, "files": [{"name": "../etc", "content_base64": "aGk="}]}),
            ),
            422,
            "bad_file_name",
            "../etc",
        ),
        (
            Method::PUT,
            block("draft", "autonomy"),
            "operator",
            Some(json!({"autonomy": "sometimes"})),
            422,
            "bad_request_body",
            "sometimes",
        ),
        (
            Method::PUT,
            format!("/api/v1/runs/{run}/reflection"),
            "reviewer",
            Some(json!({"worked": "a", "broke": "", "change": "", "automate": ""})),
            409,
            "run_not_finished",
            "done or failed",
        ),
        // The feedback loop's routes.
        (
            Method::POST,
            block("draft", "feedback"),
            "reviewer",
            Some(json!({"tester_role": "team", "items": []})),
            422,
            "bad_review",
            "block `draft` has no review page",
        ),
        (
            Method::POST,
            block("draft", "feedback"),
            "admin",
            Some(json!({"items": []})),
            422,
            "missing_tester_role",
            "tester_role",
        ),
        (
            Method::POST,
            block("draft", "feedback"),
            "admin",
            Some(json!({"tester_role": "boss"})),
            422,
            "bad_tester_role",
            "boss",
        ),
        (
            Method::POST,
            block("draft", "feedback"),
            "reviewer",
            Some(json!({"tester_role": "expert"})),
            403,
            "not_your_vote",
            "reviews as reviewer (team)",
        ),
        (
            Method::POST,
            block("draft", "feedback"),
            "operator",
            Some(json!({"items": []})),
            403,
            "no_tester_role",
            "--tester-role",
        ),
        (
            Method::POST,
            block("draft", "feedback"),
            "reviewer",
            Some(json!({"tester_role": "team", "verdicts": []})),
            422,
            "unknown_field",
            "verdicts",
        ),
        (
            Method::POST,
            format!("/api/v1/runs/{run}/review-links"),
            "operator",
            Some(json!({"tester": "derek", "tester_role": "team"})),
            422,
            "no_review_pages",
            "review-demo",
        ),
        (
            Method::POST,
            format!("/api/v1/runs/{run}/review-links"),
            "operator",
            Some(json!({"tester": "derek", "tester_role": "intern"})),
            422,
            "bad_tester_role",
            "intern",
        ),
        (
            Method::GET,
            "/api/v1/improvement-items?run_id=no-such-run".into(),
            "viewer",
            None,
            404,
            "run_not_found",
            "no-such-run",
        ),
        (
            Method::GET,
            format!("/api/v1/improvement-items?run_id={run}&status=done"),
            "viewer",
            None,
            422,
            "bad_status",
            "done",
        ),
        (
            Method::PATCH,
            "/api/v1/improvement-items/item-nope".into(),
            "reviewer",
            Some(json!({"status": "accepted"})),
            404,
            "not_found",
            "item-nope",
        ),
        (
            Method::POST,
            "/api/v1/corrections-ingest".into(),
            "operator",
            Some(json!({"run_id": run, "source": "expert-audit", "by_skill": {"ghost": 2}})),
            422,
            "bad_review",
            "ghost",
        ),
        (
            Method::GET,
            "/api/v1/nothing-here".into(),
            "viewer",
            None,
            404,
            "no_such_route",
            "/api/v1",
        ),
    ];
    for (method, path, role, body, status, code, names) in cases {
        let (s, b) = t.call(method.clone(), &path, role, body).await;
        expect(s, &b, status, code);
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(names),
            "{method} {path}: `{message}` should name `{names}`"
        );
    }
    // Malformed JSON and a missing content type.
    let response = t
        .request(Method::POST, "/api/v1/runs", Some("operator"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "bad_json"
    );
    let response = t
        .request(Method::POST, "/api/v1/runs", Some("operator"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // A run's own concurrency limit, and that it runs every block anew,
    // are kept in its document.
    let (s, created) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(
                json!({"template": "review-demo", "params": {"title": "x"}, "max_concurrency": 2, "no_cache": true}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["max_concurrency"], 2, "{created}");
    assert_eq!(created["no_cache"], true, "{created}");

    // Approving twice: the second is a 409, and the store is unchanged by it.
    t.wait_for(&run, "draft waiting", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            Some(json!({"note": "ok"})),
        )
        .await;
    assert_eq!(s, 200);
    let before = t.doc(&run).await["seq"].clone();
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            None,
        )
        .await;
    expect(s, &b, 409, "not_waiting");
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/reject"),
            "reviewer",
            Some(json!({"feedback": "  "})),
        )
        .await;
    assert!(s == 409 || s == 422, "{s} {b}");
    let done = t
        .wait_for(&run, "run done", |d| d["status"] == "done")
        .await;
    assert!(done["seq"].as_u64() >= before.as_u64());
    // The no-auth mode is refused off loopback.
    let store = t.store.clone();
    let refused = factory_server::start(
        store,
        crate::engine_config(std::path::Path::new("/tmp"), None),
        factory_server::ServerConfig {
            addr: "0.0.0.0:0".parse().unwrap(),
            no_auth: true,
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(refused.to_string().contains("loopback"), "{refused}");
}

/// An operator starts a run of `review-demo` titled `title`, with one file.
pub(crate) async fn start_review_demo(t: &TestServer, title: &str) -> (String, Value) {
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({
                "template": "review-demo",
                "params": {"title": title},
                "files": [{"name": "notes.txt", "content_base64": "c291cmNlIG1hdGVyaWFs"}]
            })),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    (body["run_id"].as_str().unwrap().to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_through_its_gate_with_reviews_and_reflection() {
    let t = TestServer::start().await;
    let (run, body) = start_review_demo(&t, "Quarterly notes").await;
    assert_eq!(body["params"]["title"], "Quarterly notes");
    let (s, files) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/files"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(files["files"][0]["name"], "notes.txt");
    let raw = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/files/notes.txt"),
            Some("viewer"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "source material");

    t.wait_for(&run, "draft at its gate", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    // The operator started the run, and the gate wants a separate reviewer.
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "operator",
            None,
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "self_approval");
    // A reviewer rejects with feedback: the block re-runs with it.
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/reject"),
            "reviewer",
            Some(json!({"feedback": "Name the quarter"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let doc = t
        .wait_for(&run, "second attempt at the gate", |d| {
            block_status(d, "draft") == "waiting" && d["blocks"]["draft"]["attempts"] == 2
        })
        .await;
    assert_eq!(
        doc["blocks"]["draft"]["decisions"][0]["actor"],
        "user:reviewer"
    );
    assert_eq!(doc["blocks"]["draft"]["decisions"][0]["approved"], false);
    let (_, second) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/draft/artifacts"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(second["attempt"], 2);
    let text = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/draft/artifacts/draft?attempt=2"),
            Some("viewer"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Name the quarter"), "{text}");
    assert!(
        text.contains("Source: source material"),
        "the block read the upload: {text}"
    );
    let (s, diff) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/draft/diff?a=1&b=2"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{diff}");
    assert_eq!(diff["artifacts"]["draft"]["changed"], true);
    let unified = diff["artifacts"]["draft"]["unified"].as_str().unwrap();
    assert!(
        unified.contains("-Attempt 1.") && unified.contains("+Attempt 2."),
        "{unified}"
    );

    // Drafts are kept with the run.
    let (s, _) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{run}/drafts/reflection"),
            "reviewer",
            Some(json!({"worked": "half-typed"})),
        )
        .await;
    assert_eq!(s, 204);
    let (_, drafts) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/drafts"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(drafts["drafts"]["reflection"]["worked"], "half-typed");

    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            Some(json!({"note": "good now"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let doc = t
        .wait_for(&run, "run done", |d| d["status"] == "done")
        .await;
    assert_eq!(block_status(&doc, "publish"), "done");
    let decisions = &doc["blocks"]["draft"]["decisions"];
    assert_eq!(decisions[1]["actor"], "user:reviewer");
    assert_eq!(decisions[1]["note"], "good now");

    // The event log explains who did what.
    let (_, events) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    let actors: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(actors.contains(&("run_created".into(), "user:operator".into())));
    assert!(actors.contains(&("gate_rejected".into(), "user:reviewer".into())));
    assert!(actors.contains(&("gate_approved".into(), "user:reviewer".into())));

    // Reflection, then process memory on the next run of the template.
    let answers = json!({"worked": "gates", "broke": "nothing", "change": "shorter drafts", "automate": "publishing"});
    let (s, b) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{run}/reflection"),
            "reviewer",
            Some(answers),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let (_, memory) = t
        .call(
            Method::GET,
            "/api/v1/templates/review-demo/memory",
            "viewer",
            None,
        )
        .await;
    assert_eq!(memory["reflections"][0]["body"]["change"], "shorter drafts");
    let next = t.create_review_run("Next quarter").await;
    let page = t
        .request(Method::GET, &format!("/runs/{next}"), Some("viewer"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("shorter drafts"),
        "memory shown on the next run's page"
    );

    // Autonomy for this run only: not by the operator who started it (the
    // draft's gate asks for a separate reviewer), by someone else; then the
    // metrics saw all of it.
    let (s, b) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{next}/blocks/draft/autonomy"),
            "operator",
            Some(json!({"autonomy": "auto"})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "separate_reviewer", "{b}");
    let (s, b) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{next}/blocks/draft/autonomy"),
            "admin",
            Some(json!({"autonomy": "auto"})),
        )
        .await;
    assert!(s == 200 || s == 409, "{s} {b}");
    let metrics = t
        .request(Method::GET, "/metrics", Some("viewer"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("factory_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/api/v1/runs/{run}/blocks/{block}/approve\""));
    assert!(metrics.contains("factory_runs{status=\"done\"}"));
}

/// Reads SSE events (id, event) until `stop` says so.
async fn read_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&str, &str) -> bool,
) -> Vec<(String, String)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("{name}: "))
                            .or_else(|| l.strip_prefix(&format!("{name}:")))
                    })
                    .unwrap_or("")
                    .to_string()
            };
            let (id, event) = (field("id"), field("event"));
            if event.is_empty() {
                continue;
            }
            seen.push((id.clone(), event.clone()));
            if stop(&id, &event) {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_every_change_and_resume_after_a_restart() {
    let mut t = TestServer::start().await;
    let run = t.create_review_run("Live").await;
    let response = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/stream?after=0"),
            Some("viewer"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = read_events(response, |_, e| e == "block_waiting").await;
    let kinds: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(kinds[0], "hello");
    assert_eq!(kinds[1], "run_created");
    assert!(
        kinds.contains(&"block_started") && kinds.contains(&"attempt_finished"),
        "{kinds:?}"
    );
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|(id, _)| id.parse().ok())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let last_seen = *ids.last().unwrap();

    // The server restarts; meanwhile the gate is approved by someone else.
    t.stop().await;
    let store = t.store.clone();
    let engine = factory_engine::Engine::new(
        store,
        crate::engine_config(std::path::Path::new("/tmp/pf-test-work"), None),
    );
    engine
        .approve_by("user:someone", &run, "draft", None)
        .await
        .unwrap();
    t.boot(None).await;
    // Reconnecting with Last-Event-ID delivers what was missed, then live events.
    let response = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/stream"),
            Some("viewer"),
        )
        .header("last-event-id", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let mut approved = false;
    let events = read_events(response, |_, e| {
        approved |= e == "gate_approved";
        approved && e == "block_done"
    })
    .await;
    let kinds: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        kinds.contains(&"gate_approved"),
        "missed events replayed: {kinds:?}"
    );
    let first_id: u64 = events[1].0.parse().unwrap();
    assert_eq!(first_id, last_seen + 1);
    t.wait_for(&run, "done after restart", |d| d["status"] == "done")
        .await;

    // The all-runs stream sees a run created by another process (the CLI path).
    let response = t
        .request(Method::GET, "/api/v1/stream", Some("viewer"))
        .send()
        .await
        .unwrap();
    let engine = factory_engine::Engine::new(
        t.store.clone(),
        crate::engine_config(std::path::Path::new("/tmp/pf-test-work"), None),
    );
    let other = engine
        .create_run_by(
            "cli:someone",
            crate::SLOW_TEMPLATE,
            None,
            Default::default(),
        )
        .await
        .unwrap();
    let other_id = other.run_id.clone();
    let events = read_events(response, |id, e| {
        e == "run_created" && id.starts_with(&other_id)
    })
    .await;
    assert!(events.iter().any(|(id, _)| id.starts_with(&other_id)));
    // …and the server drives it, since it is running and nobody else is.
    t.wait_for(&other_id, "the CLI-created run done", |d| {
        d["status"] == "done"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_blocks_finish() {
    let mut t = TestServer::start().await;
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "slow-demo"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let run = body["run_id"].as_str().unwrap().to_string();
    t.wait_for(&run, "slow running", |d| {
        block_status(d, "slow") == "running"
    })
    .await;
    // An open event stream (a browser tab) does not hold the shutdown up.
    let stream = t
        .request(Method::GET, "/api/v1/stream", Some("viewer"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::timeout(Duration::from_secs(15), t.stop())
        .await
        .expect("shutdown finishes with a stream open");
    drop(stream);
    // The running block finished and was recorded; nothing new was started.
    let stored = t.store.load_run(&run).await.unwrap();
    assert_eq!(stored.doc.blocks["slow"].status.as_str(), "done");
    assert_ne!(stored.doc.blocks["after"].status.as_str(), "running");
    assert!(stored.doc.blocks["slow"].last_success().is_some());
    // The next server finishes the run.
    t.boot(None).await;
    t.wait_for(&run, "done after restart", |d| d["status"] == "done")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_managed_by_admins_and_revocable() {
    let t = TestServer::start().await;
    let (s, created) = t
        .call(
            Method::POST,
            "/api/v1/tokens",
            "admin",
            Some(json!({"name": "ci-bot", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/tokens",
            "admin",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("bad_role")));
    let whoami: Value = t
        .http
        .get(t.url("/api/v1/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami, json!({"actor": "user:ci-bot", "role": "viewer"}));
    let (_, listed) = t.call(Method::GET, "/api/v1/tokens", "admin", None).await;
    assert!(
        !listed.to_string().contains(&secret[3..]),
        "secrets never listed"
    );
    assert!(
        !listed.to_string().contains("\"hash\""),
        "hashes never listed"
    );
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            "admin",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let response = t
        .http
        .get(t.url("/api/v1/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            "admin",
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Templates: validate explains, register stores, then runs can use it.
    let (s, v) = t
        .call(
            Method::POST,
            "/api/v1/templates/validate",
            "viewer",
            Some(json!({"source": "{\"id\": 1}"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["valid"], false);
    assert!(!v["diagnostics"].as_array().unwrap().is_empty());
    let mut template: Value = serde_json::from_str(crate::SLOW_TEMPLATE).unwrap();
    template["id"] = json!("registered-slow");
    t.register_template(&template).await;
    let (_, list) = t
        .call(Method::GET, "/api/v1/templates", "viewer", None)
        .await;
    assert!(list.to_string().contains("registered-slow"));
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "registered-slow"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_chat_talks_to_the_configured_provider() {
    // Without a provider: a clear 422, and the page says so.
    let t = TestServer::start().await;
    let run = t.create_review_run("Chat").await;
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/chat"),
            "reviewer",
            Some(json!({"message": "hi"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["code"], "llm_not_configured");
    // The run's META chat says the same, and its history says why.
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/chat"),
            "reviewer",
            Some(json!({"message": "hi"})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("llm_not_configured")),
        "{b}"
    );
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/chat"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["messages"], json!([]));
    assert!(
        b["unavailable"]
            .as_str()
            .unwrap()
            .contains("no LLM provider"),
        "{b}"
    );
    drop(t);

    // With a local server speaking the Anthropic wire format.
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/v1/messages"))
        .and(wiremock::matchers::body_string_contains("Attempt 1."))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "The draft names no quarter."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 40, "output_tokens": 7}
        })))
        .expect(1)
        .mount(&provider)
        .await;
    let uri = provider.uri();
    let settings = factory_runtime::llm::LlmSettings::from_lookup(|name| match name {
        "ANTHROPIC_API_KEY" => Some("test-key".into()),
        "ANTHROPIC_BASE_URL" => Some(uri.clone()),
        "FACTORY_DEFAULT_MODEL" => Some("anthropic:claude-test".into()),
        _ => None,
    });
    let t = TestServer::start_with(Some(settings)).await;
    let run = t.create_review_run("Chat").await;
    t.wait_for(&run, "draft done", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/chat"),
            "reviewer",
            Some(json!({"message": "What is missing?"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["reply"], "The draft names no quarter.");
    let (_, history) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/draft/chat"),
            "viewer",
            None,
        )
        .await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["actor"], "user:reviewer");
    assert_eq!(messages[1]["text"], "The draft names no quarter.");
    // A viewer reads the chat but cannot post.
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/chat"),
            "viewer",
            Some(json!({"message": "x"})),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_the_same_on_postgres() {
    let t = TestServer::start_postgres().await;
    let run = t.create_review_run("On PostgreSQL").await;
    t.wait_for(&run, "gate", |d| block_status(d, "draft") == "waiting")
        .await;
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/reject"),
            "reviewer",
            Some(json!({"feedback": "more"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    t.wait_for(&run, "second attempt", |d| {
        block_status(d, "draft") == "waiting" && d["blocks"]["draft"]["attempts"] == 2
    })
    .await;
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    t.wait_for(&run, "done", |d| d["status"] == "done").await;
    let (s, b) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{run}/reflection"),
            "reviewer",
            Some(json!({"worked": "pg", "broke": "", "change": "", "automate": ""})),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let (_, memory) = t
        .call(
            Method::GET,
            "/api/v1/templates/review-demo/memory",
            "viewer",
            None,
        )
        .await;
    assert_eq!(memory["reflections"][0]["body"]["worked"], "pg");
}

/// Pages and assets carry an ETag and answer 304 to a browser that has the
/// same body; text is gzipped for clients that ask; the event stream is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_assets_are_tagged_and_compressed() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Cached").await;
    t.wait_for(&run, "the gate", |d| d["status"] == "waiting")
        .await;
    let get = |path: String, headers: Vec<(&'static str, String)>| {
        let mut request = t.request(Method::GET, &path, Some("viewer"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };

    // An asset: tagged, then 304 with no body for the same tag.
    let css = get("/assets/workbench.css".into(), vec![]).await.unwrap();
    assert_eq!(css.status(), 200);
    let tag = css.headers()["etag"].to_str().unwrap().to_string();
    assert!(tag.starts_with("W/\""), "{tag}");
    let again = get(
        "/assets/workbench.css".into(),
        vec![("if-none-match", tag.clone())],
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), tag);
    assert!(again.bytes().await.unwrap().is_empty());

    // A page: the same until the run changes, then a new body and tag. (A
    // page of a running or waiting run changes by itself: it shows elapsed
    // times. A finished run's does not.)
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    t.wait_for(&run, "the run done", |d| d["status"] == "done")
        .await;
    let page = format!("/runs/{run}");
    let first = get(page.clone(), vec![]).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "private, no-cache");
    let tag = first.headers()["etag"].to_str().unwrap().to_string();
    let identity = first.bytes().await.unwrap().len();
    let unchanged = get(page.clone(), vec![("if-none-match", tag.clone())])
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304, "nothing changed");
    let (s, body) = t
        .call(
            Method::PUT,
            &format!("/api/v1/runs/{run}/reflection"),
            "reviewer",
            Some(json!({"worked": "the gate", "broke": "", "change": "", "automate": ""})),
        )
        .await;
    assert_eq!(s, 204, "{body}");
    let changed = get(page.clone(), vec![("if-none-match", tag.clone())])
        .await
        .unwrap();
    assert_eq!(changed.status(), 200, "the page changed");
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), tag);

    // gzip when asked: this small page (6 KB) to about a third, so only
    // "smaller" holds for it whatever its timings print; a large text (the
    // 100 KB OpenAPI document) to well under a third.
    let gzipped = get(page, vec![("accept-encoding", "gzip".into())])
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 200);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let compressed = gzipped.bytes().await.unwrap().len();
    assert!(
        compressed < identity,
        "gzip: {compressed} bytes of {identity}"
    );
    let size = |encoding: &'static str| {
        let request = get(
            "/api/v1/openapi.json".into(),
            vec![("accept-encoding", encoding.into())],
        );
        async move { request.await.unwrap().bytes().await.unwrap().len() }
    };
    let (whole, compressed) = (size("identity").await, size("gzip").await);
    assert!(
        compressed * 3 < whole,
        "gzip: {compressed} bytes of {whole}"
    );

    // The event stream is never compressed (it would be held back).
    let stream = get(
        format!("/api/v1/runs/{run}/stream"),
        vec![("accept-encoding", "gzip".into())],
    )
    .await
    .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers().get("content-encoding").is_none());
    assert!(stream.headers().get("etag").is_none());
}

/// The runs home as an inbox: filtered by status, template and text, 50 a
/// page with a link to the older ones, a waiting run linking to its gate,
/// who started each run; the same filters and a cursor on the JSON API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_home_filters_searches_and_pages() {
    let t = TestServer::start().await;
    t.register_template(&json!({
        "id": "quick", "name": "Quick", "version": "1.0.0",
        "blocks": [{ "id": "only", "name": "Only", "layer": "L0", "type": "build", "runtime": "builtin",
            "inputs": { "config": { "builtin": "noop" } },
            "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }]
    }))
    .await;
    let mut quick = Vec::new();
    for _ in 0..51 {
        quick.push(t.start_run("quick", json!({})).await);
    }
    let review = t.create_review_run("Marisol Vega").await;
    t.wait_for(&review, "the gate", |d| d["status"] == "waiting")
        .await;
    t.wait_for(quick.last().unwrap(), "the last quick run", |d| {
        d["status"] == "done"
    })
    .await;
    let page = |query: String| {
        let t = &t;
        async move {
            let (s, html) = t.call_text(&format!("/{query}"), "viewer").await;
            assert_eq!(s, 200, "{html}");
            let rows: Vec<String> = html
                .split("data-run-id=\"")
                .skip(1)
                .map(|rest| rest.split('"').next().unwrap().to_string())
                .collect();
            (html, rows)
        }
    };

    let (html, rows) = page("?status=waiting".into()).await;
    assert_eq!(rows, vec![review.clone()]);
    assert!(
        html.contains(&format!(
            "class=\"waiting-at\" href=\"/runs/{review}/blocks/draft\""
        )),
        "a waiting run links to its gate"
    );
    assert!(html.contains("<td>operator</td>"), "who started it");
    let (_, rows) = page("?q=marisol".into()).await;
    assert_eq!(rows, vec![review.clone()], "search finds a param value");
    let (_, rows) = page(format!("?q={}", &review[..13])).await;
    assert_eq!(rows, vec![review.clone()], "search finds a run id prefix");

    let (html, first) = page("?tpl=quick".into()).await;
    assert_eq!(first.len(), 50, "a page is 50 runs");
    assert!(first.iter().all(|r| quick.contains(r)));
    assert!(
        html.contains("figure class=\"quality-chart\""),
        "the template's quality over time"
    );
    let older = html
        .split("rel=\"next\" href=\"")
        .nth(1)
        .expect("a link to older runs")
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let (html, rest) = page(older.trim_start_matches('/').to_string()).await;
    assert_eq!(rest.len(), 1);
    assert!(!first.contains(&rest[0]));
    assert!(html.contains("Newest runs") && !html.contains("rel=\"next\""));
    let (s, body) = t
        .call(Method::GET, "/?status=sleeping", "viewer", None)
        .await;
    assert_eq!(s, 400, "{body}");

    // The JSON API: the same filters, 20 a page, following `next`.
    let mut seen = std::collections::BTreeSet::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(cursor) => format!("/api/v1/runs?template=quick&limit=20&before={cursor}"),
            None => "/api/v1/runs?template=quick&limit=20".to_string(),
        };
        let (s, body) = t.call(Method::GET, &path, "viewer", None).await;
        assert_eq!(s, 200, "{body}");
        for run in body["runs"].as_array().unwrap() {
            assert!(seen.insert(run["run_id"].as_str().unwrap().to_string()));
            assert_eq!(run["started_by"], "user:operator");
        }
        match body["next"].as_str() {
            Some(cursor) => next = Some(cursor.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 51);
    let (s, body) = t
        .call(Method::GET, "/api/v1/runs?before=yesterday", "viewer", None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("bad_cursor"))
    );
}

/// A run that cannot be created for many blocks' sake says each reason once,
/// grouped, as a list the form shows; the new-run form says it up front, and
/// that the settings belong where the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_cannot_run_here_says_why_once_and_up_front() {
    let t = TestServer::start().await;
    let block = |id: &str| {
        json!({"id": id, "name": id, "layer": "L0", "type": "build", "runtime": "llm", "model": "sonnet", "skill": id,
               "outputs": {"artifacts": [{"key": id, "path": format!("{id}.md"), "format": "md"}]}})
    };
    t.register_template(&json!({
        "id": "needs-llm", "name": "Needs an LLM", "version": "1.0.0",
        "blocks": [block("a"), block("b"), block("c"), block("d")]
    }))
    .await;
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "needs-llm"})),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["code"], "llm_not_configured");
    assert_eq!(
        body["error"]["problems"],
        json!(["4 blocks (a, b, c and 1 more): no LLM provider is configured"]),
        "one line for one reason"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("process that runs `factory serve`"),
        "{message}"
    );

    let (s, html) = t.call_text("/?template=needs-llm", "operator").await;
    assert_eq!(s, 200);
    assert!(html.contains("id=\"cannot-run\""), "{html}");
    assert!(html.contains("This server cannot run needs-llm as it is:"));
    assert!(html.contains("<li>4 blocks (a, b, c and 1 more): no LLM provider is configured</li>"));
    assert!(html.contains("— cannot run here"));
    // A template that can run says nothing of the kind.
    let (_, html) = t.call_text("/?template=review-demo", "operator").await;
    assert!(!html.contains("id=\"cannot-run\""));

    // Several param problems: each on its own line too.
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "review-demo", "params": {"titel": "x"}})),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    let problems = body["error"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the run cannot be created (2 problems)"
    );
}

/// Polls a log URL (10 s at most) until it answers a live log (`x-factory-log:
/// live`) containing `needle`; that text, or None.
async fn live_log_containing(t: &TestServer, path: &str, needle: &str) -> Option<String> {
    for _ in 0..100 {
        let response = t
            .request(Method::GET, path, Some("viewer"))
            .send()
            .await
            .unwrap();
        let live = response
            .headers()
            .get("x-factory-log")
            .is_some_and(|v| v == "live");
        let text = response.text().await.unwrap_or_default();
        if live && text.contains(needle) {
            return Some(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A running command's output is readable while it runs (the end of it so
/// far, published by the worker on its lease), on the API and the block
/// page; once it ends, the stored logs take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_commands_output_is_visible_while_it_runs() {
    let t = TestServer::start().await;
    t.register_template(&json!({
        "id": "ticker", "name": "Ticker", "version": "1.0.0",
        "blocks": [{ "id": "tick", "name": "Tick", "layer": "L0", "type": "build", "runtime": "command",
            "timeout": 60000,
            "inputs": { "config": { "command": ["sh", "-c",
                "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; echo warn $i >&2; sleep 0.3; done; echo done > \"$FACTORY_OUTPUT_DIR/out.txt\""] } },
            "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }]
    }))
    .await;
    let run = t.start_run("ticker", json!({})).await;
    let logs = format!("/api/v1/runs/{run}/blocks/tick/logs/stdout?attempt=1");
    let live = live_log_containing(&t, &logs, "tick 2")
        .await
        .expect("the output so far, while the block runs");
    assert!(!live.contains("tick 10"), "not yet the whole: {live}");
    let doc = t.doc(&run).await;
    assert_eq!(block_status(&doc, "tick"), "running");
    let (_, html) = t
        .call_text(&format!("/runs/{run}/blocks/tick"), "viewer")
        .await;
    assert!(
        html.contains("data-live-log=\""),
        "the page asks for more as it runs"
    );
    let (_, stderr) = t
        .call_text(
            &format!("/api/v1/runs/{run}/blocks/tick/logs/stderr?attempt=1"),
            "viewer",
        )
        .await;
    assert!(stderr.contains("warn 1"), "{stderr}");

    t.wait_for(&run, "the run done", |d| d["status"] == "done")
        .await;
    let response = t
        .request(Method::GET, &logs, Some("viewer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-factory-log"], "stored");
    let whole = response.text().await.unwrap();
    assert!(
        whole.contains("tick 1\n") && whole.contains("tick 10\n"),
        "{whole}"
    );
    let (_, html) = t
        .call_text(&format!("/runs/{run}/blocks/tick"), "viewer")
        .await;
    assert!(!html.contains("data-live-log=\""));
}

/// An OpenAI-compatible server that streams its reply slowly (one word every
/// 150 ms, no usage), one connection at a time, like a small local model.
fn slow_streaming_llm(words: usize) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            if request_line.starts_with("GET") {
                let models = r#"{"data":[{"id":"slow"}]}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{models}",
                    models.len()
                );
                continue;
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            );
            for n in 1..=words {
                let chunk = json!({"choices": [{"delta": {"content": format!("word{n} ")}}]});
                if write!(stream, "data: {chunk}\n\n").is_err() {
                    break;
                }
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(150));
            }
            let end = json!({"choices": [{"delta": {}, "finish_reason": "stop"}]});
            let _ = write!(stream, "data: {end}\n\ndata: [DONE]\n\n");
        }
    });
    url
}

/// An `llm` block's reply is readable while it streams in, from the API and
/// the block page; the finished reply is the artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_reply_is_visible_while_it_streams_in() {
    let url = slow_streaming_llm(16);
    let settings = factory_runtime::llm::LlmSettings::from_lookup(|name| match name {
        "FACTORY_LLM_BASE_URL" => Some(url.clone()),
        "FACTORY_LLM_MODEL" => Some("slow".into()),
        _ => None,
    });
    let t = TestServer::start_with(Some(settings)).await;
    std::fs::create_dir_all(t.templates.join("skills/writer")).unwrap();
    std::fs::write(
        t.templates.join("skills/writer/SKILL.md"),
        "# Writer\n\nWrite sixteen words.\n",
    )
    .unwrap();
    std::fs::write(
        t.templates.join("writer.json"),
        json!({"id": "writer", "name": "Writer", "version": "1.0.0",
            "blocks": [{"id": "write", "name": "Write", "layer": "L0", "type": "build", "runtime": "llm",
                "skill": "writer", "timeout": 60000,
                "outputs": {"artifacts": [{"key": "text", "path": "text.md", "format": "md"}]},
                "execution": {"max_retries": 0}}]})
        .to_string(),
    )
    .unwrap();
    let run = t.start_run("writer", json!({})).await;
    let reply = format!("/api/v1/runs/{run}/blocks/write/logs/reply?attempt=1");
    let partial = live_log_containing(&t, &reply, "word3 ")
        .await
        .expect("the reply so far, while it streams");
    assert!(!partial.contains("word16"), "not yet the whole: {partial}");
    let (_, html) = t
        .call_text(&format!("/runs/{run}/blocks/write"), "viewer")
        .await;
    assert!(
        html.contains("data-live-log=\""),
        "the page asks for more as it streams"
    );
    assert!(html.contains("<code>reply</code>"));

    t.wait_for(&run, "the run done", |d| d["status"] == "done")
        .await;
    let (_, text) = t
        .call_text(
            &format!("/api/v1/runs/{run}/blocks/write/artifacts/text"),
            "viewer",
        )
        .await;
    assert!(text.contains("word1 ") && text.contains("word16"), "{text}");
}

/// A block's attempts on demand: the run without them (`?history=none`),
/// one block with all of them from its own rows, equal to the same block in
/// the whole document; a bad `history` and an unknown block say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocks_attempts_are_read_on_demand() {
    let t = TestServer::start().await;
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("failed-once");
    t.register_template(&json!({
        "id": "flaky", "name": "Flaky", "version": "1.0.0",
        "blocks": [{ "id": "flaky", "name": "Flaky", "layer": "L0", "type": "build", "runtime": "command",
            "inputs": { "config": { "command": ["sh", "-c", format!(
                "test -e '{m}' || {{ touch '{m}'; exit 3; }}; echo ok > \"$FACTORY_OUTPUT_DIR/out.txt\"",
                m = mark.display())] } },
            "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }]
    }))
    .await;
    let run = t.start_run("flaky", json!({})).await;
    let doc = t
        .wait_for(&run, "the retried block", |d| d["status"] == "done")
        .await;
    let whole = &doc["blocks"]["flaky"];
    assert_eq!(whole["history"].as_array().unwrap().len(), 2, "{whole}");

    let (status, block) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{}/blocks/flaky", &run[..13]),
            "viewer",
            None,
        )
        .await;
    assert_eq!(status, 200, "{block}");
    assert_eq!(&block, whole, "the block's rows make the document's block");
    assert_eq!(block["history"][0]["outcome"], "failed");
    assert_eq!(block["history"][1]["outcome"], "succeeded");

    let (status, heads) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}?history=none"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(status, 200, "{heads}");
    assert_eq!(heads["blocks"]["flaky"]["status"], "done");
    assert_eq!(heads["blocks"]["flaky"]["attempts"], 2);
    assert!(heads["blocks"]["flaky"].get("history").is_none(), "{heads}");
    assert_eq!(heads["status"], "done");

    let (status, error) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}?history=some"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "bad_history");
    let (status, error) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/flakey"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "unknown_block");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("flaky"),
        "{error}"
    );
    let (status, _) = t
        .call(
            Method::GET,
            "/api/v1/runs/nope/blocks/flaky",
            "viewer",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

/// The event feed over the API: a run's events by run, by a name prefix,
/// paged back with `before`, and an unknown query field refused.
#[tokio::test]
async fn the_event_feed_lists_a_runs_events_filtered_and_paged() {
    let t = TestServer::start().await;
    let (run, _) = start_review_demo(&t, "Feed notes").await;
    t.wait_for(&run, "draft at its gate", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    let (s, feed) = t
        .call(
            Method::GET,
            &format!("/api/v1/events?run={}", &run[..13]),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{feed}");
    let names: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"run.created"), "newest first: {feed}");
    assert!(names.contains(&"gate.waiting"), "{feed}");
    assert!(
        feed["vocabulary"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "trigger.fired")
    );
    let (_, gates) = t
        .call(
            Method::GET,
            &format!("/api/v1/events?run={run}&name=gate."),
            "viewer",
            None,
        )
        .await;
    let gates = gates["events"].as_array().unwrap();
    assert!(!gates.is_empty() && gates.iter().all(|e| e["name"] == "gate.waiting"));
    assert_eq!(gates[0]["payload"]["block"], "draft");

    // One at a time, back to the first.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    for _ in 0..names.len() + 1 {
        let path = match before {
            Some(b) => format!("/api/v1/events?run={run}&limit=1&before={b}"),
            None => format!("/api/v1/events?run={run}&limit=1"),
        };
        let (s, page) = t.call(Method::GET, &path, "viewer", None).await;
        assert_eq!(s, 200, "{page}");
        if let Some(e) = page["events"].as_array().unwrap().first() {
            seen.push(e["name"].as_str().unwrap().to_string());
        }
        match page["next_before"].as_i64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen, names,
        "paging gives the same events in the same order"
    );

    let (s, bad) = t
        .call(Method::GET, "/api/v1/events?kind=run", "viewer", None)
        .await;
    assert_eq!(s, 400, "{bad}");
}

/// Ratings through the API: who may rate, what may be rated, one rating
/// per person and output, read back per run and per template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lens_ratings_are_taken_per_person_and_read_back_per_run_and_template() {
    let t = TestServer::start().await;
    t.register_template(&serde_json::from_str(crate::LENS_TEMPLATE).unwrap())
        .await;
    let run = t.start_run("lens-demo", json!({"entity": "Acme"})).await;
    t.wait_for(&run, "the run to end", |d| d["status"] == "done")
        .await;
    let path = format!("/api/v1/runs/{run}/ratings");
    let rate = |role: &'static str, body: Value| {
        let path = path.clone();
        let t = &t;
        async move { t.call(Method::POST, &path, role, Some(body)).await }
    };

    let (s, body) = rate("viewer", json!({"block": "brief", "score": 4})).await;
    assert_eq!(s, 403, "a viewer does not rate: {body}");
    let (s, body) = rate("reviewer", json!({"block": "perspective", "score": 4})).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("bad_rating")),
        "{body}"
    );
    let (s, body) = rate("reviewer", json!({"block": "brief", "score": 0})).await;
    assert_eq!(s, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 to 5"),
        "{body}"
    );
    let (s, body) = rate(
        "reviewer",
        json!({"block": "perspective[pricing]", "score": 3}),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = rate(
        "reviewer",
        json!({"block": "brief", "score": 4, "stars": 5}),
    )
    .await;
    assert_eq!(s, 422, "an unknown field is refused: {body}");

    let (s, body) = rate(
        "reviewer",
        json!({"block": "perspective[partnership-risk]", "score": 2, "comment": "thin"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["perspective"], "partnership-risk");
    assert_eq!(body["aggregate_key"], r#"entity="Acme""#);
    // Rating again replaces; another person's rating counts on its own.
    rate(
        "reviewer",
        json!({"block": "perspective[partnership-risk]", "score": 1, "comment": "no use at all"}),
    )
    .await;
    rate(
        "operator",
        json!({"block": "perspective[partnership-risk]", "score": 2}),
    )
    .await;
    rate(
        "operator",
        json!({"block": "brief", "score": 5, "comment": "clear"}),
    )
    .await;

    let (s, of_run) = t.call(Method::GET, &path, "viewer", None).await;
    assert_eq!(s, 200);
    assert_eq!(of_run["ratings"].as_array().unwrap().len(), 3, "{of_run}");
    assert_eq!(of_run["past_ratings"], json!([]));
    let (s, of_template) = t
        .call(
            Method::GET,
            "/api/v1/templates/lens-demo/ratings",
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let risk = of_template["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["perspective"] == "partnership-risk")
        .unwrap();
    assert_eq!(
        (risk["count"].as_u64(), risk["mean"].as_f64()),
        (Some(2), Some(1.5))
    );
    assert_eq!(risk["comments"][0]["comment"], "no use at all");

    // The next run for Acme starts from them, and says so.
    let next = t.start_run("lens-demo", json!({"entity": "Acme"})).await;
    let doc = t.doc(&next).await;
    assert_eq!(doc["past_ratings"].as_array().unwrap().len(), 2, "{doc}");
}
