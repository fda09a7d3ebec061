//! Stream records: deliveries, claims under leases and stage moves.

use std::collections::BTreeSet;
use std::sync::Arc;

use factory_core::stream::settle::{Move, RecordEvent};
use factory_store::{NewStreamRecord, Receipt, RecordFilter, StageMoves, Store};
use serde_json::json;

const T: &str = "ingest";

async fn deliver(store: &dyn Store, key: &str, webhook_id: Option<&str>, at: i64) -> Receipt {
    let data = json!({"video_id": key, "title": format!("video {key}")});
    store
        .receive_record(&NewStreamRecord {
            template_id: T,
            block: "intake",
            key,
            state: "raw",
            data: &data,
            webhook_id,
            tick: None,
            by: None,
            event: None,
            at,
        })
        .await
        .unwrap()
}

fn moves<'a>(owner: &'a str, moves: &'a [Move], now: i64) -> StageMoves<'a> {
    StageMoves {
        template_id: T,
        block: "annotate",
        from_state: "raw",
        to_state: "annotated",
        to_last: false,
        owner,
        moves,
        now,
    }
}

pub async fn contract(store: Arc<dyn Store>) {
    let s = store.as_ref();
    // Deliveries: a new key is a record; a replayed webhook-id stores
    // nothing; a new delivery of a known key does not make a second record.
    assert_eq!(
        deliver(s, "a", Some("msg_1"), 1_000).await,
        Receipt::Created
    );
    assert_eq!(
        deliver(s, "a", Some("msg_1"), 1_001).await,
        Receipt::Replayed
    );
    assert_eq!(
        deliver(s, "a", Some("msg_2"), 1_002).await,
        Receipt::KnownRecord
    );
    assert_eq!(deliver(s, "b", None, 1_003).await, Receipt::Created);
    assert_eq!(
        deliver(s, "c", Some("msg_3"), 1_004).await,
        Receipt::Created
    );

    // Claims: oldest first, never the same record to two live leases.
    let first = s
        .claim_records(T, "raw", 2, "w1", 2_000, 10_000)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(first[0].data["title"], "video a");
    let second = s
        .claim_records(T, "raw", 5, "w2", 2_000, 10_000)
        .await
        .unwrap();
    assert_eq!(
        second.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(
        s.claim_records(T, "raw", 5, "w3", 2_000, 10_000)
            .await
            .unwrap()
            .is_empty()
    );

    // w1 moves a on and fails b for a retry at 5 000; a move by a worker
    // without the lease does not apply.
    let decided = [
        Move::Advance {
            key: "a".into(),
            attempt: 1,
            data: json!({"video_id": "a", "tags": ["x"]}),
        },
        Move::Retry {
            key: "b".into(),
            attempt: 1,
            error: "no transcript".into(),
            at: 5_000,
        },
    ];
    assert_eq!(
        s.settle_records(&moves("w2", &decided, 3_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.settle_records(&moves("w1", &decided, 3_000))
            .await
            .unwrap(),
        2
    );
    // The same moves again (a redelivered result): nothing moves twice.
    assert_eq!(
        s.settle_records(&moves("w1", &decided, 3_001))
            .await
            .unwrap(),
        0
    );

    // b waits for its retry time; c's lease (w2) expires at 10 000.
    assert!(
        s.claim_records(T, "raw", 5, "w3", 4_000, 20_000)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = s
        .claim_records(T, "raw", 5, "w3", 5_000, 20_000)
        .await
        .unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|c| (c.key.as_str(), c.attempts))
            .collect::<Vec<_>>(),
        [("b", 1)]
    );
    let expired = s
        .claim_records(T, "raw", 5, "w4", 10_001, 20_000)
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    // w2 lost c's lease: its late move does not apply.
    let late = [Move::Advance {
        key: "c".into(),
        attempt: 1,
        data: json!({}),
    }];
    assert_eq!(
        s.settle_records(&moves("w2", &late, 10_002)).await.unwrap(),
        0
    );
    let give_up = [Move::GiveUp {
        key: "b".into(),
        attempt: 2,
        error: "still no transcript".into(),
    }];
    assert_eq!(
        s.settle_records(&moves("w3", &give_up, 10_003))
            .await
            .unwrap(),
        1
    );

    // Listing and counts.
    let counts = s.count_records(T, 10_004).await.unwrap();
    let summary: Vec<(String, String, u64, u64)> = counts
        .into_iter()
        .map(|c| (c.state, c.status, c.count, c.working))
        .collect();
    assert_eq!(
        summary,
        [
            ("annotated".into(), "ready".into(), 1, 0),
            ("raw".into(), "failed".into(), 1, 0),
            ("raw".into(), "ready".into(), 1, 1),
        ]
    );
    let failed = s
        .list_records(
            &RecordFilter {
                template_id: T.into(),
                status: Some("failed".into()),
                limit: 10,
                ..RecordFilter::default()
            },
            10_004,
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].key.as_str(), failed[0].attempts), ("b", 2));
    assert_eq!(failed[0].error.as_deref(), Some("still no transcript"));
    assert!(failed[0].data.is_none());
    let all = s
        .list_records(
            &RecordFilter {
                template_id: T.into(),
                limit: 10,
                ..RecordFilter::default()
            },
            10_004,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().find(|r| r.key == "c").unwrap().working);

    // A record's data and history.
    let (a, history) = s.record(T, "a", 10_004).await.unwrap().unwrap();
    assert_eq!(a.state, "annotated");
    assert_eq!(a.data.unwrap()["tags"], json!(["x"]));
    assert_eq!(history.iter().map(|h| h.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(
        matches!(&history[0].event, RecordEvent::Received { webhook_id: Some(id), .. } if id == "msg_1")
    );
    assert!(
        matches!(&history[1].event, RecordEvent::Moved { from, to, attempt: 1, .. } if from == "raw" && to == "annotated")
    );
    let (_, b_history) = s.record(T, "b", 10_004).await.unwrap().unwrap();
    let kinds: Vec<&str> = b_history.iter().map(|h| h.event.kind()).collect();
    assert_eq!(kinds, ["received", "attempt_failed", "failed"]);
    assert!(s.record(T, "nope", 0).await.unwrap().is_none());

    // A person retries the failed record; a record that is not failed is not retried.
    assert!(s.retry_record(T, "b", "ana", 11_000).await.unwrap());
    assert!(!s.retry_record(T, "b", "ana", 11_001).await.unwrap());
    assert!(!s.retry_record(T, "a", "ana", 11_001).await.unwrap());
    let again = s
        .claim_records(T, "raw", 5, "w5", 11_002, 20_000)
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .map(|c| (c.key.as_str(), c.attempts))
            .collect::<Vec<_>>(),
        [("b", 0)]
    );

    // Leases of a dead worker are released at once.
    let owners: BTreeSet<String> = s.record_lease_owners().await.unwrap().into_iter().collect();
    assert!(owners.contains("w4") && owners.contains("w5"), "{owners:?}");
    assert_eq!(s.release_record_leases("w5").await.unwrap(), 1);
    assert_eq!(
        s.claim_records(T, "raw", 5, "w6", 11_003, 20_000)
            .await
            .unwrap()
            .len(),
        1
    );

    deliveries_written_together(s).await;
    cron_ticks_are_claimed_once(s).await;
    racing_claims_take_each_record_once(store).await;
}

/// Several deliveries in one transaction (the intake's group commit): in
/// order, a repeated webhook-id is a replay and a repeated key a known
/// record, within the batch as across batches.
async fn deliveries_written_together(s: &dyn Store) {
    const G: &str = "group";
    let data = json!({"id": 1});
    let delivery = |key: &'static str, webhook_id: &'static str| NewStreamRecord {
        template_id: G,
        block: "intake",
        key,
        state: "raw",
        data: &data,
        webhook_id: Some(webhook_id),
        tick: None,
        by: None,
        event: None,
        at: 5,
    };
    let receipts = s
        .receive_records(&[
            delivery("x", "w1"),
            delivery("x", "w1"),
            delivery("x", "w2"),
            delivery("y", "w3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        receipts,
        [
            Receipt::Created,
            Receipt::Replayed,
            Receipt::KnownRecord,
            Receipt::Created
        ]
    );
    let again = s
        .receive_records(&[delivery("y", "w3"), delivery("z", "w4")])
        .await
        .unwrap();
    assert_eq!(again, [Receipt::Replayed, Receipt::Created]);
    let (_, history) = s.record(G, "x", 6).await.unwrap().unwrap();
    assert_eq!(history.len(), 1, "one record, received once: {history:?}");
}

/// Workers claiming at once from one state: every record is claimed by
/// exactly one of them.
async fn racing_claims_take_each_record_once(store: Arc<dyn Store>) {
    const RACE: &str = "race";
    for n in 0..60 {
        let data = json!({"id": n});
        let key = format!("r{n:02}");
        store
            .receive_record(&NewStreamRecord {
                template_id: RACE,
                block: "intake",
                key: &key,
                state: "raw",
                data: &data,
                webhook_id: None,
                tick: None,
                by: None,
                event: None,
                at: 1,
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("racer-{w}");
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim_records(RACE, "raw", 7, &owner, 10, 100_000)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break mine;
                }
                mine.extend(claimed.into_iter().map(|c| c.key));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 60, "a record was claimed twice or not at all");
    assert_eq!(distinct.len(), 60);
}

/// A cron tick is claimed by one process; a claim whose firing never
/// finished (its process died) is taken again once stale, a finished one
/// never; the last firing ignores stale unfinished claims.
async fn cron_ticks_are_claimed_once(s: &dyn Store) {
    use factory_store::FiringOutcome;
    const C: &str = "cron";
    assert_eq!(s.last_firing(C, "watch", 0).await.unwrap(), None);
    assert!(
        s.claim_firing(C, "watch", 60_000, 60_100, 3, 0)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_firing(C, "watch", 60_000, 60_200, 0, 0)
            .await
            .unwrap(),
        "claimed twice"
    );
    assert_eq!(s.last_firing(C, "watch", 0).await.unwrap(), Some(60_000));
    // Its process died: once the claim is stale the tick is missed, and may
    // be claimed again.
    assert_eq!(s.last_firing(C, "watch", 90_000).await.unwrap(), None);
    assert!(
        s.claim_firing(C, "watch", 60_000, 95_000, 0, 90_000)
            .await
            .unwrap()
    );
    let outcome = FiringOutcome {
        created: 2,
        known: 1,
        rejected: 1,
        error: Some("bad\0item".into()),
        run_id: Some("run-of-tick".into()),
    };
    s.finish_firing(C, "watch", 60_000, &outcome, 95_500)
        .await
        .unwrap();
    assert!(
        !s.claim_firing(C, "watch", 60_000, 200_000, 0, 190_000)
            .await
            .unwrap(),
        "a finished tick again"
    );
    assert_eq!(
        s.last_firing(C, "watch", 190_000).await.unwrap(),
        Some(60_000)
    );
    let firings = s.firings(C, 10).await.unwrap();
    assert_eq!(firings.len(), 1);
    let f = &firings[0];
    assert_eq!(
        (
            f.tick,
            f.fired_at,
            f.finished_at,
            f.created,
            f.known,
            f.rejected
        ),
        (60_000, 95_000, Some(95_500), Some(2), Some(1), Some(1))
    );
    assert_eq!(
        f.error.as_deref(),
        Some("bad\u{FFFD}item"),
        "a NUL is stored as a replacement character on both stores"
    );
    assert_eq!(f.run_id.as_deref(), Some("run-of-tick"));
}
