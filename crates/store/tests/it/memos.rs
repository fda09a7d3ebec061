//! Memoized attempts: the commit that makes a block done remembers its
//! accepted attempt under its memo key, in the same transaction; a lookup
//! finds it; the latest accepted attempt for a key wins.

use factory_core::memo::{MemoKey, Reused};
use factory_core::run::{AttemptOutcome, AttemptReport, Event};

use super::*;

fn report(key: &str, words: u64) -> AttemptReport {
    let mut report = AttemptReport {
        memo_key: Some(MemoKey::from_stored(key.into())),
        exit_code: Some(0),
        ..AttemptReport::default()
    };
    report.metrics.insert("words".into(), words.into());
    report
}

/// Runs block `a` of `run_id` once, finishing with `report`, then `done`.
async fn finish(store: &dyn Store, run_id: &str, report: AttemptReport, done: Vec<Event>) {
    let mut doc = create(store, run_id).await;
    let steps = vec![
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
        ],
        vec![Event::AttemptFinished {
            block: "a".into(),
            attempt: 1,
            outcome: AttemptOutcome::Succeeded,
            report,
            score: None,
        }],
        done,
    ];
    for (n, events) in steps.into_iter().enumerate() {
        if events.is_empty() {
            continue;
        }
        let version = store.run_version(run_id).await.unwrap().unwrap();
        let records = commit(&mut doc, events, "test", 2_000 + n as i64).unwrap();
        store.commit(run_id, version, &records, &doc).await.unwrap();
    }
}

pub(super) async fn contract(store: &dyn Store) {
    let key = MemoKey::from_stored("k-memo-1".into());
    assert_eq!(
        store.memo(&key).await.unwrap(),
        None,
        "nothing remembered yet"
    );

    // Finished but not done (waiting at a gate, say): not remembered.
    finish(store, "run-memo-1", report("k-memo-1", 1), Vec::new()).await;
    assert_eq!(store.memo(&key).await.unwrap(), None);

    // Done: remembered with its report.
    finish(
        store,
        "run-memo-2",
        report("k-memo-1", 2),
        vec![Event::BlockDone { block: "a".into() }],
    )
    .await;
    let hit = store.memo(&key).await.unwrap().expect("remembered");
    assert_eq!(
        (hit.run_id.as_str(), hit.block_id.as_str(), hit.attempt),
        ("run-memo-2", "a", 1)
    );
    assert_eq!(hit.report.metrics["words"], 2);
    assert_eq!(hit.report.memo_key.as_ref(), Some(&key));

    // A later accepted attempt with the same key wins.
    finish(
        store,
        "run-memo-3",
        report("k-memo-1", 3),
        vec![Event::BlockDone { block: "a".into() }],
    )
    .await;
    let hit = store.memo(&key).await.unwrap().unwrap();
    assert_eq!(
        (hit.run_id.as_str(), hit.report.metrics["words"].as_u64()),
        ("run-memo-3", Some(3))
    );

    // A reused attempt is not remembered again (its source already is).
    let mut reused = report("k-memo-2", 4);
    reused.reused = Some(Reused {
        run_id: "run-memo-3".into(),
        block: "a".into(),
        attempt: 1,
    });
    finish(
        store,
        "run-memo-4",
        reused,
        vec![Event::BlockDone { block: "a".into() }],
    )
    .await;
    let other = MemoKey::from_stored("k-memo-2".into());
    assert_eq!(store.memo(&other).await.unwrap(), None);
}
