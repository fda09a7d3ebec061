//! The server against requests a browser on another site, or a prober,
//! would send: off-site redirects, cross-site form posts, made-up methods,
//! sign-in and sign-out, headers on every page.

use reqwest::Method;
use reqwest::header::{CONTENT_SECURITY_POLICY, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::{TestServer, block_status};

fn location(headers: &HeaderMap) -> &str {
    headers[LOCATION].to_str().unwrap()
}

/// Posts the sign-in form with `body` (form-encoded).
async fn sign_in(t: &TestServer, body: impl Into<reqwest::Body>) -> reqwest::Response {
    t.http
        .post(t.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_goes_only_to_a_path_on_this_server() {
    let t = TestServer::start().await;
    let token = &t.tokens["viewer"];
    for (next, expected) in [
        ("/runs/abc", "/runs/abc"),
        ("//evil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("/%5C%5Cevil.example", "/"),
        ("/%09/evil.example", "/"),
        ("/%0A/evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
    ] {
        // Signed in already (a token in the link), and through the form.
        let response = t
            .http
            .get(t.url(&format!("/login?token={token}&next={next}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "{next}");
        assert_eq!(location(response.headers()), expected, "{next}");
        let response = sign_in(&t, format!("token={token}&next={next}")).await;
        assert_eq!(response.status().as_u16(), 303, "{next}");
        assert_eq!(location(response.headers()), expected, "POST {next}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_posts_the_token_says_when_it_is_wrong_and_signs_out() {
    let t = TestServer::start().await;
    let form = t
        .http
        .get(t.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains(r#"method="post""#), "{form}");

    let wrong = sign_in(&t, "token=pf_wrong&next=/").await;
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let page = wrong.text().await.unwrap();
    assert!(page.contains("unknown or revoked"), "{page}");
    let smuggling = sign_in(&t, "token=pf_x%3B+Domain%3Devil.example&next=/").await;
    assert_eq!(smuggling.status().as_u16(), 401);
    assert!(smuggling.headers().get(SET_COOKIE).is_none());

    let right = sign_in(&t, format!("token={}&next=/", t.tokens["viewer"])).await;
    assert_eq!(right.status().as_u16(), 303);
    let cookie = right.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("factory_token=pf_") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let home = t
        .http
        .get(t.url("/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status().as_u16(), 200);
    assert!(home.text().await.unwrap().contains("Sign out"));

    let out = t
        .http
        .post(t.url("/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(location(out.headers()), "/login");
    let cleared = out.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("factory_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_site_cannot_approve_or_retry() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Cross-site").await;
    t.wait_for(&run, "draft at its gate", |d| {
        block_status(d, "draft") == "waiting"
    })
    .await;
    let approve = t.url(&format!("/api/v1/runs/{run}/blocks/draft/approve"));
    // A form on another site, as a browser sends it (with the reviewer's cookie).
    for headers in [
        vec![
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let mut request = t
            .http
            .post(&approve)
            .header("cookie", format!("factory_token={}", t.tokens["reviewer"]))
            .header("content-type", "text/plain")
            .body("");
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 403, "{headers:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "cross_site", "{body}");
    }
    // Without a browser's headers, a form-encoded note is still not JSON.
    let response = t
        .http
        .post(&approve)
        .bearer_auth(&t.tokens["admin"])
        .header("content-type", "application/x-www-form-urlencoded")
        .body("note=approved")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let retry = t.url(&format!("/api/v1/runs/{run}/blocks/draft/retry"));
    let response = t
        .http
        .post(&retry)
        .bearer_auth(&t.tokens["operator"])
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        block_status(&t.doc(&run).await, "draft"),
        "waiting",
        "nothing was approved"
    );
    // The server's own pages (same origin) and non-browser clients still work.
    let host = t.base.trim_start_matches("http://").to_string();
    let response = t
        .http
        .post(&approve)
        .bearer_auth(&t.tokens["admin"])
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_strict_policy_and_nosniff() {
    let t = TestServer::start().await;
    for (path, role) in [
        ("/", Some("viewer")),
        ("/login", None),
        ("/api/v1/health", None),
        ("/assets/workbench.js", None),
        ("/no/such/page", Some("viewer")),
    ] {
        let response = t.request(Method::GET, path, role).send().await.unwrap();
        let headers = response.headers();
        let policy = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            policy.contains("script-src 'self'")
                && policy.contains("frame-ancestors 'none'")
                && !policy.contains("unsafe-inline"),
            "{path}: {policy}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
    }
    // The pages keep to the policy: no inline script, style or handler.
    let run = t.create_review_run("Policy").await;
    for path in [
        "/".to_string(),
        format!("/runs/{run}"),
        "/login".to_string(),
    ] {
        let page = t
            .request(Method::GET, &path, Some("viewer"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for inline in ["style=\"", "<script>", " onclick=", " onload="] {
            assert!(!page.contains(inline), "{path} has {inline}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let t = TestServer::start().await;
    for n in 0..50 {
        let method = Method::from_bytes(format!("PROBE{n}").as_bytes()).unwrap();
        let _ = t
            .http
            .request(method, t.url(&format!("/nothing/{n}")))
            .send()
            .await
            .unwrap();
    }
    let metrics = t
        .request(Method::GET, "/metrics", Some("viewer"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("PROBE"), "made-up methods became labels");
    assert!(metrics.contains(r#"method="OTHER""#), "{metrics}");
    assert!(!metrics.contains("/nothing/"), "raw paths became labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_the_largest_seq_are_none() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Events").await;
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events?after={}", u64::MAX),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"], json!([]), "the whole log was replayed");
}

/// True when the stream ends (the server closes it) within `within`.
async fn ends_within(response: reqwest::Response, within: std::time::Duration) -> bool {
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_the_streams_it_opened() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Streams").await;
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/tokens",
            "admin",
            Some(json!({"name": "dashboard", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (secret, id) = (
        b["token"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    let open = |path: String| {
        t.http
            .get(t.url(&path))
            .bearer_auth(&secret)
            .header("accept", "text/event-stream")
            .send()
    };
    let one = open(format!("/api/v1/runs/{run}/stream")).await.unwrap();
    let all = open("/api/v1/stream".to_string()).await.unwrap();
    let kept = t
        .request(
            Method::GET,
            &format!("/api/v1/runs/{run}/stream"),
            Some("viewer"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!((one.status().as_u16(), all.status().as_u16()), (200, 200));

    let (s, b) = t
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            "admin",
            None,
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let within = std::time::Duration::from_secs(3);
    assert!(ends_within(one, within).await, "the run stream kept going");
    assert!(
        ends_within(all, within).await,
        "the all-runs stream kept going"
    );
    assert!(
        !ends_within(kept, std::time::Duration::from_millis(500)).await,
        "another token's stream was closed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json_and_every_page_error_a_page() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Shapes").await;
    let big = "x".repeat(3 * 1024 * 1024);
    for (method, path, body, status, code) in [
        (
            Method::GET,
            format!("/api/v1/runs/{run}/events?after=soon"),
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/runs/%FF%FE/events".to_string(),
            None,
            400,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/v1/runs".to_string(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("/api/v1/runs/{run}/blocks/draft/reject"),
            Some(format!("{{\"feedback\": \"{big}\"}}")),
            413,
            "body_too_large",
        ),
    ] {
        let mut request = t.request(method.clone(), &path, Some("admin"));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}"
        );
        if status == 405 {
            assert!(response.headers().contains_key("allow"), "405 keeps Allow");
        }
        if status == 413 {
            // The unread body ends the connection; the client must not reuse it.
            assert_eq!(response.headers()["connection"], "close");
        }
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 20,
            "{body}"
        );
    }
    for (path, role, status, says) in [
        ("/no/such/page".to_string(), "viewer", 404, "nothing at"),
        (
            format!("/runs/{run}/review/draft"),
            "viewer",
            403,
            "needs the reviewer role",
        ),
    ] {
        let response = t
            .request(Method::GET, &path, Some(role))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains(says) && page.contains("<html"),
            "{path}: {page}"
        );
    }
}

/// A TCP proxy to `target` that can cut every connection at once and refuse
/// new ones: a database outage without stopping the shared server.
async fn cuttable_proxy(target: String) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut stop = cut_rx.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|cut| *cut) => return,
            };
            let Ok((mut client, _)) = accepted else {
                return;
            };
            let target = target.clone();
            let mut stop = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = stop.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (port, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_quick_503_and_health_says_so() {
    let url = factory_store::testing::fresh_postgres_database().await;
    // postgres://user@host:port/db → the proxy in place of host:port.
    let authority_start = url
        .find('@')
        .map_or(url.find("://").unwrap() + 3, |at| at + 1);
    let authority_end = authority_start + url[authority_start..].find('/').unwrap();
    let target = url[authority_start..authority_end].to_string();
    let (port, cut) = cuttable_proxy(target).await;
    let proxied = format!(
        "{}127.0.0.1:{port}{}",
        &url[..authority_start],
        &url[authority_end..]
    );
    let t = TestServer::start_on_url(proxied).await;
    let run = t.create_review_run("Outage").await;
    let (s, health) = t.call(Method::GET, "/api/v1/health", "viewer", None).await;
    assert_eq!((s, health["store"].as_str()), (200, Some("ok")), "{health}");

    cut.send(true).unwrap();
    let started = std::time::Instant::now();
    let (s, health) = t.call(Method::GET, "/api/v1/health", "viewer", None).await;
    assert_eq!(s, 503, "{health}");
    assert_eq!(health["status"], "unavailable");
    // Bounds well above the timeouts (1.5 s, 3 s) and below the old 10 s wait,
    // so a loaded machine cannot flip them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "health took {:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let (s, b) = t
        .call(Method::GET, &format!("/api/v1/runs/{run}"), "viewer", None)
        .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "store_unavailable", "{b}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "the API waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_have_the_documented_limits_and_plain_unique_names() {
    use base64::Engine as _;
    let t = TestServer::start().await;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let create = |files: serde_json::Value| {
        t.call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(
                json!({"template": "review-demo", "params": {"title": "Uploads"}, "files": files}),
            ),
        )
    };
    // Just under the 10 MiB per file: accepted (axum's 2 MiB default answered first before).
    let nine_mib = vec![b'a'; 9 * 1024 * 1024];
    let (s, b) = create(json!([{"name": "big.txt", "content_base64": encode(&nine_mib)}])).await;
    assert_eq!(
        s,
        201,
        "{}",
        b.to_string().chars().take(300).collect::<String>()
    );
    let run = b["run_id"].as_str().unwrap().to_string();
    let (_, files) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/files"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(
        files["files"][0]["size"],
        9 * 1024 * 1024,
        "stored with the run"
    );

    let eleven_mib = vec![b'a'; 11 * 1024 * 1024];
    let (s, b) = create(json!([{"name": "huge.txt", "content_base64": encode(&eleven_mib)}])).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["code"], "file_too_large");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("huge.txt"),
        "{b}"
    );

    for (files, code) in [
        (
            json!([{"name": "a\u{0}.txt", "content_base64": encode(b"x")}]),
            "bad_file_name",
        ),
        (
            json!([{"name": "../up.txt", "content_base64": encode(b"x")}]),
            "bad_file_name",
        ),
        (
            json!([
                {"name": "notes.txt", "content_base64": encode(b"one")},
                {"name": "notes.txt", "content_base64": encode(b"two")}
            ]),
            "duplicate_file",
        ),
    ] {
        let (s, b) = create(files).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["error"]["code"], code, "{b}");
    }
    let (_, runs) = t.call(Method::GET, "/api/v1/runs", "viewer", None).await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        1,
        "refused requests created no run"
    );
}

/// A small deterministic generator (xorshift), so a failing body can be
/// reproduced from its case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn value(&mut self, depth: u32) -> serde_json::Value {
        match if depth > 3 {
            self.below(5)
        } else {
            self.below(8)
        } {
            0 => serde_json::Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.next() as i64),
            3 => json!(f64::from(self.below(1000) as u32) / 7.0),
            4 => {
                let words = [
                    "",
                    "x",
                    "gate",
                    "auto",
                    "expert",
                    "../../etc",
                    "\u{0}",
                    "☃",
                    "a very long value",
                ];
                json!(words[self.below(words.len())].repeat(1 + self.below(3)))
            }
            5 => serde_json::Value::Array(
                (0..self.below(4)).map(|_| self.value(depth + 1)).collect(),
            ),
            _ => {
                let keys = [
                    "template",
                    "params",
                    "feedback",
                    "note",
                    "autonomy",
                    "tester",
                    "tester_role",
                    "items",
                    "close",
                    "name",
                    "role",
                    "status",
                    "message",
                    "files",
                    "overrides",
                    "zzz",
                ];
                let mut object = serde_json::Map::new();
                for _ in 0..self.below(5) {
                    object.insert(
                        keys[self.below(keys.len())].to_string(),
                        self.value(depth + 1),
                    );
                }
                serde_json::Value::Object(object)
            }
        }
    }

    /// Raw bytes, broken JSON, or a JSON value of any shape.
    fn body(&mut self) -> Vec<u8> {
        match self.below(4) {
            0 => (0..self.below(64)).map(|_| self.next() as u8).collect(),
            1 => {
                let mut text = self.value(0).to_string().into_bytes();
                text.truncate(self.below(text.len() + 1));
                text
            }
            2 => "[".repeat(1 + self.below(300)).into_bytes(),
            _ => self.value(0).to_string().into_bytes(),
        }
    }
}

/// Every state-changing API route, sent generated bodies as every role:
/// never a 5xx, and every error is JSON with a code. `FACTORY_FUZZ_CASES`
/// (default 12 per route and role) runs it longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bodies_never_break_the_api() {
    let t = TestServer::start().await;
    let run = t.create_review_run("Fuzz").await;
    let cases: usize = std::env::var("FACTORY_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let mut sent = 0;
    for (verb, route, _) in factory_server::auth::ROUTES {
        if *verb == "GET" || !route.starts_with("/api/") {
            continue;
        }
        let path = crate::api::concrete(route, &run, "pf_00000000");
        for role in ["reviewer", "operator", "admin"] {
            for case in 0..cases {
                let body = rng.body();
                let response = t
                    .request(
                        Method::from_bytes(verb.as_bytes()).unwrap(),
                        &path,
                        Some(role),
                    )
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                sent += 1;
                let status = response.status().as_u16();
                let is_json = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
                let text = response.text().await.unwrap();
                let shown = String::from_utf8_lossy(&body);
                assert!(
                    status < 500,
                    "{verb} {route} as {role}, case {case}: {status} {text} for {shown:?}"
                );
                if status >= 400 {
                    assert!(is_json, "{verb} {route} case {case}: {status} {text}");
                    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert!(error["error"]["code"].is_string(), "{text}");
                }
            }
        }
    }
    assert!(sent > 100, "only {sent} requests");
}
