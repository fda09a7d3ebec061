//! Who may approve and whose vote counts, through every route a person could
//! try: autonomy overrides, review links minted for made-up testers, and
//! review bodies that claim another tester or a heavier role.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{TestServer, block_status};

/// Registers the `guarded-review` template (a review page whose gate asks
/// for a separate reviewer).
async fn register_guarded(t: &TestServer) {
    let template: Value = serde_json::from_str(crate::GUARDED_TEMPLATE).unwrap();
    t.register_template(&template).await;
}

/// A `guarded-review` run created by the operator, waiting at its review gate.
async fn waiting_review(t: &TestServer) -> String {
    register_guarded(t).await;
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "guarded-review"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    t.wait_for(&run, "the review gate", |d| {
        block_status(d, "review") == "waiting"
    })
    .await;
    run
}

async fn mint_link(t: &TestServer, role: &str, run: &str, tester: &str) -> String {
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/review-links"),
            role,
            Some(json!({"tester": tester, "tester_role": "expert"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let url = b["links"][0]["url"].as_str().unwrap();
    url.split("token=").nth(1).unwrap().to_string()
}

async fn submit(t: &TestServer, token: &str, run: &str, body: Value) -> (u16, Value) {
    crate::feedback_loop::submit(t, token, run, "review", body).await
}

async fn events_of(t: &TestServer, run: &str, kind: &str) -> Vec<Value> {
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/events"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

fn item(key: &str) -> Value {
    json!({"source_key": key, "skill_target": "extract", "verdict": "wrong", "priority": "high", "correction": "fix it"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creator_cannot_switch_off_a_separate_reviewers_gate() {
    let t = TestServer::start().await;
    register_guarded(&t).await;
    for level in ["auto", "guided"] {
        let (s, b) = t
            .call(
                Method::POST,
                "/api/v1/runs",
                "operator",
                Some(json!({"template": "guarded-review", "overrides": {"review": level}})),
            )
            .await;
        assert_eq!(s, 403, "{b}");
        assert_eq!(b["error"]["code"], "separate_reviewer", "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("asks for a separate reviewer"),
            "{b}"
        );
    }
    let (_, runs) = t.call(Method::GET, "/api/v1/runs", "viewer", None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "nothing created");

    let run = waiting_review(&t).await;
    let path = format!("/api/v1/runs/{run}/blocks/review/autonomy");
    let (s, b) = t
        .call(
            Method::PUT,
            &path,
            "operator",
            Some(json!({"autonomy": "auto"})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "separate_reviewer");
    assert_eq!(t.doc(&run).await["blocks"]["review"]["autonomy"], "gate");
    // Someone who did not start the run may change it.
    let (s, b) = t
        .call(
            Method::PUT,
            &path,
            "admin",
            Some(json!({"autonomy": "auto"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["blocks"]["review"]["autonomy"], "auto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_link_acts_for_the_person_who_minted_it() {
    let t = TestServer::start().await;
    let run = waiting_review(&t).await;
    let puppet = mint_link(&t, "operator", &run, "puppet").await;
    let (s, b) = submit(
        &t,
        &puppet,
        &run,
        json!({"items": [item("extract:$.a")], "close": true}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "self_approval", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acts for `user:operator`, who minted its review link"),
        "{b}"
    );
    // Refused before anything was stored: no vote, no item, still waiting.
    assert!(events_of(&t, &run, "feedback_submitted").await.is_empty());
    let (_, items) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(items["total"], 0, "{items}");
    assert_eq!(block_status(&t.doc(&run).await, "review"), "waiting");
    // Without closing, the puppet's review is just a vote.
    let (s, b) = submit(&t, &puppet, &run, json!({"items": [item("extract:$.a")]})).await;
    assert_eq!(s, 200, "{b}");

    // A link minted by someone else closes the gate.
    let tess = mint_link(&t, "admin", &run, "tess").await;
    let (s, b) = submit(&t, &tess, &run, json!({"close": true})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gate"]["approved"], true, "{b}");
    let approved = events_of(&t, &run, "gate_approved").await;
    assert_eq!(approved[0]["actor"], "reviewer:tess");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_counts_as_the_credential_says() {
    let t = TestServer::start().await;
    let run = waiting_review(&t).await;

    // A token without a granted tester role does not vote, whatever it claims.
    let (s, b) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/review/feedback"),
            "operator",
            Some(json!({"tester_role": "expert", "items": [item("extract:$.a")]})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "no_tester_role", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--tester-role"),
        "{b}"
    );

    // An admin grants a role when creating a token.
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/tokens",
            "admin",
            Some(json!({"name": "derek", "role": "reviewer", "tester_role": "team"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["tester_role"], "team");
    let derek = b["token"].as_str().unwrap().to_string();
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/tokens",
            "admin",
            Some(json!({"name": "x", "role": "reviewer", "tester_role": "boss"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["code"], "bad_tester_role");

    // Claiming another tester, or a heavier role, is refused and stores nothing.
    let tess = mint_link(&t, "admin", &run, "tess").await;
    let (s, _) = submit(&t, &tess, &run, json!({"items": [item("extract:$.b")]})).await;
    assert_eq!(s, 200);
    for claim in [
        json!({"tester": "tess", "items": [item("extract:$.b")]}),
        json!({"tester_role": "expert", "items": [item("extract:$.b")]}),
        json!({"tester": "derek", "tester_role": "expert"}),
    ] {
        let (s, b) = submit(&t, &derek, &run, claim.clone()).await;
        assert_eq!(s, 403, "{claim}: {b}");
        assert_eq!(b["error"]["code"], "not_your_vote", "{b}");
    }
    assert_eq!(events_of(&t, &run, "feedback_submitted").await.len(), 1);

    // Stating what the credential says is fine; the vote weighs as a team member's.
    let (s, b) = submit(
        &t,
        &derek,
        &run,
        json!({"tester": "derek", "tester_role": "team", "items": [item("extract:$.b")]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let submitted = events_of(&t, &run, "feedback_submitted").await;
    let last = submitted.last().unwrap();
    assert_eq!(
        (last["tester"].as_str(), last["tester_role"].as_str()),
        (Some("derek"), Some("team"))
    );
    let (_, items) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}"),
            "viewer",
            None,
        )
        .await;
    let flagged = items["items"][0]["flagged_by"].as_array().unwrap().clone();
    let mut weights: Vec<(String, f64)> = flagged
        .iter()
        .map(|v| {
            (
                v["tester"].as_str().unwrap().to_string(),
                v["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        weights,
        vec![("derek".to_string(), 1.0), ("tess".to_string(), 3.0)]
    );
}
