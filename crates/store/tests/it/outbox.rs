//! The notification outbox: rows made from the feed are stored once
//! whatever the number of reads, with the reader's cursor in the same
//! transaction; a claim is held by one sender at a time and runs out; a
//! try's outcome is recorded only by the claim's holder.

use std::sync::Arc;

use factory_core::notify::{NotificationStatus, Occasion};
use factory_store::{DeliveryOutcome, FeedPosition, NewNotification, NotificationFilter, Store};

fn row(seq: i64, channel: &str, run: &str) -> NewNotification {
    NewNotification {
        id: factory_core::notify::delivery_id(seq, channel),
        event_seq: seq,
        channel: channel.into(),
        occasion: Occasion::GateWaiting,
        template_id: "t".into(),
        run_id: Some(run.into()),
        block: Some("a".into()),
        subject: format!("Waiting for approval: a ({seq})"),
        message: "{}".into(),
        created_at: 1_000 + seq,
    }
}

pub(super) async fn contract(store: Arc<dyn Store>) {
    let both = vec!["hook".to_string(), "mail".to_string()];
    let consumer = "notify/test";
    let start = store.feed_cursor(consumer, 1).await.unwrap();
    // Positions past the new cursor's start (the feed's end).
    let at = |n: i64| FeedPosition {
        tx: start.tx + n,
        seq: n,
    };
    let first = [
        row(1, "mail", "r1"),
        row(1, "hook", "r1"),
        row(2, "mail", "r2"),
    ];
    assert_eq!(
        store
            .enqueue_notifications(&first, consumer, at(2), 10)
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.feed_cursor(consumer, 11).await.unwrap(), at(2));
    // A second read of the same events (a crash before the cursor moved
    // elsewhere, another worker) adds nothing and moves nothing back.
    assert_eq!(
        store
            .enqueue_notifications(&first[..1], consumer, at(1), 12)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.feed_cursor(consumer, 13).await.unwrap(), at(2));

    // A sender claims only the channels it has.
    let mail_only = store
        .claim_notifications("m", &["mail".to_string()], 1_500, 1_501, 10)
        .await
        .unwrap();
    assert!(mail_only.iter().all(|n| n.channel == "mail") && mail_only.len() == 2);
    // (Its claims end at 1_501: the rows are free again below.)
    // Two senders claim at once: each row goes to one of them.
    let (a, b) = tokio::join!(
        store.claim_notifications("a", &both, 2_000, 60_000, 2),
        store.claim_notifications("b", &both, 2_000, 60_000, 2)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<&str> = a.iter().chain(&b).map(|n| n.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["ntf-1-hook", "ntf-1-mail", "ntf-2-mail"]);
    assert!(
        store
            .claim_notifications("c", &both, 2_001, 60_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed rows are not claimed again while the claims hold"
    );
    let (holder, claimed) = if a.iter().any(|n| n.id == "ntf-1-mail") {
        ("a", &a)
    } else {
        ("b", &b)
    };
    let mail = claimed.iter().find(|n| n.id == "ntf-1-mail").unwrap();
    assert_eq!(mail.status, NotificationStatus::Pending);
    assert_eq!(mail.attempts, 0);
    assert_eq!(mail.occasion, Occasion::GateWaiting);

    // Only the holder records a try.
    assert!(
        !store
            .finish_notification("ntf-1-mail", "c", &DeliveryOutcome::Delivered { at: 2_100 })
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_notification(
                "ntf-1-mail",
                holder,
                &DeliveryOutcome::Retry {
                    next_at: 5_000,
                    error: "connection refused".into()
                }
            )
            .await
            .unwrap()
    );
    // Not due before next_at; due after, even while other claims hold.
    assert!(
        store
            .claim_notifications("c", &both, 4_999, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_notifications("c", &both, 5_000, 65_000, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("connection refused"));
    assert!(
        store
            .finish_notification("ntf-1-mail", "c", &DeliveryOutcome::Delivered { at: 5_100 })
            .await
            .unwrap()
    );
    // A crashed sender's claim runs out: the row is claimable again.
    let expired = store
        .claim_notifications("d", &both, 60_001, 120_000, 10)
        .await
        .unwrap();
    let mut ids: Vec<&str> = expired.iter().map(|n| n.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["ntf-1-hook", "ntf-2-mail"]);
    assert!(
        store
            .finish_notification(
                "ntf-2-mail",
                "d",
                &DeliveryOutcome::Failed {
                    error: "550 no such user".into()
                }
            )
            .await
            .unwrap()
    );

    let all = store
        .notifications(&NotificationFilter {
            limit: 10,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["ntf-2-mail", "ntf-1-mail", "ntf-1-hook"],
        "newest first"
    );
    let delivered = all.iter().find(|n| n.id == "ntf-1-mail").unwrap();
    assert_eq!(delivered.status, NotificationStatus::Delivered);
    assert_eq!(delivered.attempts, 2);
    assert_eq!(delivered.delivered_at, Some(5_100));
    assert_eq!(delivered.last_error, None);
    let failed = store
        .notifications(&NotificationFilter {
            status: Some(NotificationStatus::Failed),
            limit: 10,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("550 no such user"));
    let of_run = store
        .notifications(&NotificationFilter {
            run_id: Some("r1".into()),
            channel: Some("hook".into()),
            limit: 10,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(of_run.len(), 1);

    // An operator sends a failed one again; a delivered one is left alone.
    assert!(
        store
            .retry_notification("ntf-2-mail", 70_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .retry_notification("ntf-1-mail", 70_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .retry_notification("ntf-9-none", 70_000)
            .await
            .unwrap()
    );
    let due = store
        .claim_notifications("e", &both, 70_000, 130_000, 10)
        .await
        .unwrap();
    assert!(
        due.iter()
            .any(|n| n.id == "ntf-2-mail" && n.status == NotificationStatus::Pending)
    );
}
