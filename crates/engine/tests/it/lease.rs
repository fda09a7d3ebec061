//! A worker whose lease is taken over stops its attempt instead of finishing
//! it into a stale commit.

use super::*;

/// The first attempt records its process id and sleeps; the test hands its
/// lease to another owner, as a worker that found it expired would. The
/// heartbeat notices at its next renewal, kills the process group, and the
/// block is run again; the first attempt never reaches its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_lease_is_taken_over_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let store = factory_store::open(db.to_str().unwrap()).await.unwrap();
    let mut config = config(dir.path());
    config.policy.lease_ms = 600;
    let engine = Engine::new(Arc::from(store), config);
    let h = Harness { engine, dir };
    let marks = h.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let script = format!(
        "if [ \"$FACTORY_ATTEMPT\" = 1 ]; then echo $$ > {m}/pid; sleep 30; touch {m}/first-finished; fi; \
         echo done > \"$FACTORY_OUTPUT_DIR/out.txt\""
    );
    let source = template(vec![sh("slow", &script, json!({}))], json!({}));
    let doc = start(&h, &source, &[]).await;
    let run_id = doc.run_id.clone();
    let started = std::time::Instant::now();
    let drive = h.engine.drive(&run_id);
    let take_over = async {
        let pid_file = marks.join("pid");
        while !pid_file.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let taken =
            sqlx::query("UPDATE leases SET owner = 'elsewhere:1:1' WHERE block_id = 'slow'")
                .execute(&pool)
                .await
                .unwrap();
        assert_eq!(taken.rows_affected(), 1);
        pool.close().await;
        pid
    };
    let (driven, pid) = tokio::join!(drive, take_over);
    let (outcome, doc) = driven.unwrap();
    assert_eq!(outcome, Outcome::Done);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the first attempt ran to its end: {:?}",
        started.elapsed()
    );
    let state = &doc.blocks["slow"];
    assert_eq!(state.attempts, 2);
    assert_eq!(state.history[0].outcome, Some(AttemptOutcome::Abandoned));
    assert_eq!(state.history[1].outcome, Some(AttemptOutcome::Succeeded));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the first attempt's process is still running"
    );
    assert!(!marks.join("first-finished").exists());
    // Exactly one successful attempt, and the log says so.
    let log = events(&h, &run_id).await;
    let successes = log
        .iter()
        .filter(|r| {
            matches!(
                &r.event,
                Event::AttemptFinished {
                    outcome: AttemptOutcome::Succeeded,
                    ..
                }
            )
        })
        .count();
    assert_eq!(successes, 1);
    assert_eq!(RunDoc::replay(&log).unwrap(), doc);
}
