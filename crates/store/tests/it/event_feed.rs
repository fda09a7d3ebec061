//! The event feed: events land with the change they tell of (or not at
//! all), readers go forward from a cursor and never pass an event that a
//! running transaction may still add, old rows are pruned.

use std::sync::Arc;

use factory_core::bus::BusEvent;
use factory_core::commit;
use factory_core::run::{AttemptOutcome, AttemptReport, Event, RunStatus};
use factory_core::stream::settle::Move;
use factory_store::{
    FeedFilter, FeedPosition, NewStreamRecord, Receipt, StageMoves, Store, StoreError, Writes,
};
use serde_json::json;

fn names(events: &[factory_store::FeedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.name.as_str()).collect()
}

async fn of_run(store: &dyn Store, run_id: &str) -> Vec<factory_store::FeedEvent> {
    let mut events = store
        .feed(&FeedFilter {
            run_id: Some(run_id.into()),
            limit: 100,
            ..FeedFilter::default()
        })
        .await
        .unwrap();
    events.reverse();
    events
}

pub async fn contract(store: Arc<dyn Store>) {
    let s = store.as_ref();
    // A consumer made now starts at the end: nothing of the past.
    let cursor = s.feed_cursor("t/on-failed", 1).await.unwrap();
    assert!(
        s.feed_after("block.failed", cursor, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A run's creation and its commits write their events.
    let doc = super::create(s, "run-feed").await;
    assert_eq!(names(&of_run(s, "run-feed").await), ["run.created"]);
    let mut next = doc.clone();
    let records = commit(
        &mut next,
        vec![
            Event::BlockReady {
                block: "a".into(),
                reason: "no dependencies".into(),
            },
            Event::BlockStarted {
                block: "a".into(),
                attempt: 1,
                owner: "w".into(),
                lease_expires_at: 9_000,
            },
            Event::AttemptFinished {
                block: "a".into(),
                attempt: 1,
                outcome: AttemptOutcome::Failed,
                report: AttemptReport::default(),
                score: None,
            },
            Event::BlockFailed {
                block: "a".into(),
                error: "boom".into(),
            },
            Event::RunStatusChanged {
                status: RunStatus::Failed,
            },
        ],
        "w",
        2_000,
    )
    .unwrap();
    let mut payload = serde_json::Map::new();
    payload.insert("id".into(), json!("e1"));
    payload.insert("gate".into(), json!(2));
    let emitted = [BusEvent {
        name: "entity.created".into(),
        template_id: "t".into(),
        run_id: Some("run-feed".into()),
        block: Some("a".into()),
        record_key: None,
        payload,
    }];
    let writes = Writes {
        emitted: &emitted,
        ..Writes::default()
    };
    // A stale commit writes none of them.
    let error = s
        .commit_with("run-feed", 7, &records, &next, &writes)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
    assert_eq!(names(&of_run(s, "run-feed").await), ["run.created"]);
    s.commit_with("run-feed", 1, &records, &next, &writes)
        .await
        .unwrap();
    let events = of_run(s, "run-feed").await;
    assert_eq!(
        names(&events),
        [
            "run.created",
            "block.failed",
            "run.finished",
            "entity.created"
        ]
    );
    assert_eq!(events[1].event.payload["error"], "boom");
    assert_eq!(events[2].event.payload["status"], "failed");
    assert_eq!(events[3].event.payload["gate"], 2);
    assert_eq!(events[3].at, next.updated_at);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

    // The consumer sees the new `block.done`, once it moves past it never
    // again, and its cursor does not go back.
    let after = s.feed_after("block.failed", cursor, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event.run_id.as_deref(), Some("run-feed"));
    s.advance_feed_cursor("t/on-failed", after[0].position(), 3)
        .await
        .unwrap();
    s.advance_feed_cursor("t/on-failed", FeedPosition::default(), 4)
        .await
        .unwrap();
    let cursor = s.feed_cursor("t/on-failed", 5).await.unwrap();
    assert_eq!(cursor, after[0].position());
    assert!(
        s.feed_after("block.failed", cursor, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Record changes and webhook receipts.
    let data = json!({"video_id": "v1"});
    let record = |webhook_id| NewStreamRecord {
        template_id: "feed-stream",
        block: "intake",
        key: "v1",
        state: "raw",
        data: &data,
        webhook_id,
        tick: None,
        by: None,
        event: None,
        at: 10_000,
    };
    assert_eq!(
        s.receive_record(&record(Some("m1"))).await.unwrap(),
        Receipt::Created
    );
    assert_eq!(
        s.receive_record(&record(Some("m1"))).await.unwrap(),
        Receipt::Replayed
    );
    assert_eq!(
        s.receive_record(&record(Some("m2"))).await.unwrap(),
        Receipt::KnownRecord
    );
    let claimed = s
        .claim_records("feed-stream", "raw", 1, "w", 10_001, 20_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let moves = [Move::Advance {
        key: "v1".into(),
        attempt: 1,
        data: json!({"video_id": "v1", "score": 0.7}),
    }];
    s.settle_records(&StageMoves {
        template_id: "feed-stream",
        block: "score",
        from_state: "raw",
        to_state: "scored",
        to_last: true,
        owner: "w",
        moves: &moves,
        now: 10_002,
    })
    .await
    .unwrap();
    let mut stream_events = s
        .feed(&FeedFilter {
            template_id: Some("feed-stream".into()),
            limit: 10,
            ..FeedFilter::default()
        })
        .await
        .unwrap();
    stream_events.reverse();
    assert_eq!(
        names(&stream_events),
        ["record.received", "webhook.received", "record.moved"],
        "a replay stores nothing; a known key's receipt is told of"
    );
    assert_eq!(stream_events[0].event.payload["webhook_id"], "m1");
    assert_eq!(stream_events[1].event.payload["webhook_id"], "m2");
    let moved = &stream_events[2].event;
    assert_eq!(moved.payload["status"], "done");
    assert!(
        moved.payload.get("data").is_none(),
        "the record holds its data"
    );
    assert_eq!(moved.record_key.as_deref(), Some("v1"));
    // Listing by a name prefix.
    let records_only = s
        .feed(&FeedFilter {
            name: Some("record.".into()),
            template_id: Some("feed-stream".into()),
            limit: 10,
            ..FeedFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&records_only), ["record.moved", "record.received"]);

    // Pruning removes what is older than the bound, nothing newer.
    let pruned = s.prune_feed(1_500).await.unwrap();
    assert!(pruned.events >= 1, "{pruned:?}");
    assert_eq!(names(&of_run(s, "run-feed").await).len(), 3);
    let pruned = s.prune_feed(10_001).await.unwrap();
    assert_eq!(pruned.webhook_receipts, 2);
    assert_eq!(
        s.feed(&FeedFilter {
            template_id: Some("feed-stream".into()),
            limit: 10,
            ..FeedFilter::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

/// PostgreSQL numbers events from a sequence: a transaction that took a
/// lower number can commit after one that took a higher. A reader must not
/// move past the first while it runs.
pub async fn a_reader_waits_for_transactions_still_running(store: &dyn Store, url: &str) {
    use sqlx::Connection;
    let cursor = store.feed_cursor("race/reader", 1).await.unwrap();
    let mut slow = sqlx::PgConnection::connect(url).await.unwrap();
    let mut tx = slow.begin().await.unwrap();
    sqlx::query("INSERT INTO bus_events (name, template_id, payload, at) VALUES ('race.seen', 'race', '{\"n\":1}', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut fast = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("INSERT INTO bus_events (name, template_id, payload, at) VALUES ('race.seen', 'race', '{\"n\":2}', 2)")
        .execute(&mut fast)
        .await
        .unwrap();
    let seen = store.feed_after("race.seen", cursor, 10).await.unwrap();
    assert!(
        seen.is_empty(),
        "the later event waits while the earlier transaction runs: {seen:?}"
    );
    tx.commit().await.unwrap();
    // The horizon is the whole server's: a transaction of another database
    // (a test running beside this one) may hold it back a moment longer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = store.feed_after("race.seen", cursor, 10).await.unwrap();
        let order: Vec<i64> = seen
            .iter()
            .map(|e| e.event.payload["n"].as_i64().unwrap())
            .collect();
        assert_ne!(order.first(), Some(&2), "never the later one first");
        if order.len() == 2 || std::time::Instant::now() > deadline {
            assert_eq!(order, [1, 2], "both, in the order their transactions began");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
