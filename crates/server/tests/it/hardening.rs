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
        let response = t
            .http
            .post(t.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&next={next}"))
            .send()
            .await
            .unwrap();
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

    let wrong = t
        .http
        .post(t.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=pf_wrong&next=/")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let page = wrong.text().await.unwrap();
    assert!(page.contains("unknown or revoked"), "{page}");

    let right = t
        .http
        .post(t.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}&next=/", t.tokens["viewer"]))
        .send()
        .await
        .unwrap();
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
