//! Two writers on one run: a writer whose commit conflicts takes its own
//! events back out, applies the other's from the log, and decides again —
//! and ends up holding exactly what the store holds.

use super::*;
use factory_engine::{Claim, RunHandle};

/// Both handles must hold the stored document, and their scheduler index
/// must count what a freshly read one counts.
async fn assert_current(h: &Harness, run_id: &str, handles: &[&RunHandle]) {
    let fresh = h.engine.open(run_id).await.unwrap();
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(
            handle.doc(),
            fresh.doc(),
            "writer {i} holds the stored document"
        );
        assert_eq!(
            handle.counts(),
            fresh.counts(),
            "writer {i}'s index counts what a fresh read counts"
        );
    }
    let replayed = RunDoc::replay(&events(h, run_id).await).unwrap();
    assert_eq!(
        &replayed,
        fresh.doc(),
        "the log replays to the stored document"
    );
}

async fn writers_interleave(h: Harness) {
    let blocks: Vec<Value> = (0..12)
        .map(|i| noop(&format!("b{i:02}"), json!({})))
        .collect();
    let doc = start(&h, &template(blocks, json!({})), &[]).await;
    let run_id = doc.run_id.clone();
    let policy = Policy::default();
    let mut a = h.engine.open(&run_id).await.unwrap();
    let mut b = h.engine.open(&run_id).await.unwrap();
    let claim = |owner| Claim {
        owner,
        policy: &policy,
        limit: 1,
    };
    for round in 0..3 {
        // `a` commits first; `b` still holds the document both read, so its
        // first try conflicts and it must catch up before claiming.
        let by_a = a
            .apply_with("worker:a", |_, _, _| Ok(vec![]), Some(claim("a")), &[])
            .await
            .unwrap();
        let by_b = b
            .apply_with("worker:b", |_, _, _| Ok(vec![]), Some(claim("b")), &[])
            .await
            .unwrap();
        let started = |records: &[EventRecord]| -> Vec<String> {
            records
                .iter()
                .filter_map(|r| match &r.event {
                    Event::BlockStarted { block, .. } => Some(block.clone()),
                    _ => None,
                })
                .collect()
        };
        let (mine, theirs) = (started(&by_a), started(&by_b));
        assert_eq!(mine.len(), 1, "round {round}: a claims a block");
        assert_eq!(theirs.len(), 1, "round {round}: b claims another block");
        assert!(
            mine.iter().all(|m| !theirs.contains(m)),
            "round {round}: no block is claimed twice: {mine:?} / {theirs:?}"
        );
        // `a` gives one of its blocks back, conflicting in turn.
        let reason = format!("round {round}");
        a.apply("worker:a", |_, doc, _| {
            Ok(vec![factory_core::transitions::abandon(
                doc, &mine[0], &reason,
            )?])
        })
        .await
        .unwrap();
        b.catch_up().await.unwrap();
        assert_current(&h, &run_id, &[&a, &b]).await;
    }
    let log = events(&h, &run_id).await;
    let mut starts: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for record in &log {
        if let Event::BlockStarted { block, attempt, .. } = &record.event {
            *starts.entry((block.clone(), *attempt)).or_default() += 1;
        }
    }
    assert!(
        starts.values().all(|n| *n == 1),
        "one start per attempt: {starts:?}"
    );
    assert_eq!(starts.len(), 6, "three rounds of two claims");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writers_catch_up_from_the_log_on_sqlite() {
    writers_interleave(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writers_catch_up_from_the_log_on_postgres() {
    writers_interleave(postgres().await).await;
}

/// A supervisor with no executors (`factory serve --workers 0`) starts
/// nothing: the run is left to the workers. One with executors drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_without_executors_drives_nothing() {
    use factory_engine::supervisor::Supervisor;
    let dir = tempfile::tempdir().unwrap();
    let store = factory_store::open(dir.path().join("factory.db").to_str().unwrap())
        .await
        .unwrap();
    let engine = Arc::new(Engine::new(Arc::from(store), config(dir.path())));
    let h = Harness {
        engine: Engine::new(engine.store().clone(), config(dir.path())),
        dir,
    };
    let doc = start(&h, &template(vec![noop("only", json!({}))], json!({})), &[]).await;

    let idle = Arc::new(Supervisor::new(engine.clone(), 0));
    idle.kick(&doc.run_id);
    idle.shutdown(std::time::Duration::from_secs(10)).await;
    let log = events(&h, &doc.run_id).await;
    assert!(
        !log.iter()
            .any(|r| matches!(r.event, Event::BlockStarted { .. })),
        "nothing may start without executors: {log:?}"
    );

    // (Shutting the idle one down stopped its engine from starting blocks.)
    let engine = Arc::new(Engine::new(engine.store().clone(), config(h.dir.path())));
    let busy = Arc::new(Supervisor::new(engine.clone(), 1));
    busy.kick(&doc.run_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stored = engine.store().load_run(&doc.run_id).await.unwrap();
        if stored.doc.status == RunStatus::Done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor did not drive the run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    busy.shutdown(std::time::Duration::from_secs(10)).await;
}
