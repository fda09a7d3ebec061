//! The same contract suite against both stores: SQLite in a temp file and a
//! fresh PostgreSQL database on the real server.

mod event_feed;
mod memos;
mod outbox;
mod stream_records;

use std::sync::Arc;

use factory_core::run::{Event, EventRecord, RunDoc, RunStatus};
use factory_core::transitions::{RunRequest, create_run};
use factory_core::{commit, validate_str};
use factory_store::{
    FeedbackRecord, History, ImprovementItem, NewRun, PostgresStore, RunFilter, RunRecord,
    SqliteStore, Store, StoreError, TemplateRecord, TokenRecord, kinds,
};

const TEMPLATE: &str = r#"{
  "id": "t", "name": "T", "version": "1",
  "blocks": [
    {"id": "a", "name": "A", "layer": "L0", "type": "build", "runtime": "builtin",
     "inputs": {"config": {"builtin": "noop"}},
     "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}}
  ]
}"#;

fn new_doc(run_id: &str) -> (RunDoc, Vec<EventRecord>) {
    doc_of(TEMPLATE, run_id)
}

/// A new run of `template`: its first document and its `run_created` record.
fn doc_of(template: &str, run_id: &str) -> (RunDoc, Vec<EventRecord>) {
    let pipeline = validate_str(template).pipeline.expect("valid template");
    let request = RunRequest {
        run_id: run_id.to_string(),
        ..RunRequest::default()
    };
    let event = create_run(&pipeline, &request, &|_| true).expect("run created");
    let record = EventRecord {
        seq: 1,
        at: 1_000,
        actor: "test".into(),
        event,
    };
    let doc = RunDoc::from_created(&record).expect("doc");
    (doc, vec![record])
}

async fn create(store: &dyn Store, run_id: &str) -> RunDoc {
    create_of(store, TEMPLATE, run_id).await
}

/// Stores a new run of `template` (at `/tmp/t.json`).
async fn create_of(store: &dyn Store, template: &str, run_id: &str) -> RunDoc {
    let (doc, records) = doc_of(template, run_id);
    store
        .create_run(NewRun {
            doc: &doc,
            records: &records,
            template_json: template,
            template_path: Some("/tmp/t.json"),
            blobs: &[],
            side: &[],
        })
        .await
        .expect("create_run");
    doc
}

/// A run's uploaded files land in its first commit, or not at all.
async fn a_run_and_its_files_are_one_commit(store: &dyn Store) {
    let (doc, records) = new_doc("run-with-files");
    let blob = factory_store::NewBlob::new(b"uploaded notes".to_vec());
    let upload = |key: &str| RunRecord {
        run_id: doc.run_id.clone(),
        template_id: doc.template_id.clone(),
        kind: factory_store::kinds::UPLOAD.to_string(),
        key: key.to_string(),
        actor: "user:op".to_string(),
        at: 1,
        body: serde_json::json!({"name": key, "hash": blob.hash, "size": 14}),
    };
    let (first, late) = ([upload("notes.txt")], [upload("late.txt")]);
    // Several files in one statement, one of them twice (the same bytes
    // uploaded under two names): stored once.
    let other = factory_store::NewBlob::new(b"other notes".to_vec());
    let blobs = [
        blob.clone(),
        other.clone(),
        factory_store::NewBlob::new(b"uploaded notes".to_vec()),
    ];
    let new_run = |side| NewRun {
        doc: &doc,
        records: &records,
        template_json: TEMPLATE,
        template_path: None,
        blobs: &blobs,
        side,
    };
    store.create_run(new_run(&first)).await.unwrap();
    let stored = store
        .records("run-with-files", factory_store::kinds::UPLOAD)
        .await
        .unwrap();
    assert_eq!(stored, vec![upload("notes.txt")]);
    assert_eq!(store.get_blob(&blob.hash).await.unwrap(), b"uploaded notes");
    assert_eq!(store.get_blob(&other.hash).await.unwrap(), b"other notes");
    // The same run again fails as a whole: its new record is not kept.
    assert!(store.create_run(new_run(&late)).await.is_err());
    assert_eq!(
        store
            .records("run-with-files", factory_store::kinds::UPLOAD)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn round_trip(store: &dyn Store) {
    let doc = create(store, "run-round-trip").await;
    let stored = store.load_run("run-round-trip").await.unwrap();
    assert_eq!(stored.doc, doc);
    let raw = store
        .load_run_json("run-round-trip", History::All)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<RunDoc>(&raw).unwrap(),
        doc,
        "raw text is the same document"
    );
    assert!(matches!(
        store.load_run_json("nope", History::All).await,
        Err(StoreError::RunNotFound(_))
    ));
    assert_eq!(stored.version, 1);
    assert_eq!(stored.template_json, TEMPLATE);
    assert_eq!(stored.template_path.as_deref(), Some("/tmp/t.json"));

    // Append a transition and check the log replays to the stored document.
    let mut next = stored.doc.clone();
    let records = commit(
        &mut next,
        vec![Event::BlockReady {
            block: "a".into(),
            reason: "test".into(),
        }],
        "test",
        2_000,
    )
    .unwrap();
    let version = store
        .commit("run-round-trip", 1, &records, &next)
        .await
        .unwrap();
    assert_eq!(version, 2);
    let events = store.events("run-round-trip", 0).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        RunDoc::replay(&events).unwrap(),
        store.load_run("run-round-trip").await.unwrap().doc
    );
    assert_eq!(store.events("run-round-trip", 1).await.unwrap().len(), 1);
    // A seq past i64::MAX must not wrap around and replay the whole log.
    assert!(
        store
            .events("run-round-trip", u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn stale_writes_are_refused(store: &dyn Store) {
    let doc = create(store, "run-stale").await;
    let mut first = doc.clone();
    let records = commit(
        &mut first,
        vec![Event::BlockReady {
            block: "a".into(),
            reason: "w1".into(),
        }],
        "w1",
        2,
    )
    .unwrap();
    store
        .commit("run-stale", 1, &records, &first)
        .await
        .unwrap();

    // A second writer that also read version 1 must not overwrite.
    let mut second = doc.clone();
    let records = commit(
        &mut second,
        vec![Event::RunStatusChanged {
            status: RunStatus::Failed,
        }],
        "w2",
        3,
    )
    .unwrap();
    let error = store
        .commit("run-stale", 1, &records, &second)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Conflict { expected: 1, .. }),
        "{error}"
    );
    let stored = store.load_run("run-stale").await.unwrap();
    assert_eq!(stored.doc, first, "the stale write changed nothing");
    assert_eq!(store.events("run-stale", 0).await.unwrap().len(), 2);

    let error = store
        .commit("no-such-run", 1, &records, &second)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::RunNotFound(_)), "{error}");

    // The loser catches up from the log: the version and the events after
    // what it holds, which applied to its copy give the stored document.
    let mut caught_up = doc.clone();
    let changes = store.changes_since("run-stale", doc.seq).await.unwrap();
    assert_eq!(changes.version, 2);
    assert_eq!(changes.records.len(), 1);
    for record in &changes.records {
        caught_up.apply(record).unwrap();
    }
    assert_eq!(caught_up, first);
    let none = store.changes_since("run-stale", first.seq).await.unwrap();
    assert_eq!((none.version, none.records.len()), (2, 0));
    assert!(matches!(
        store.changes_since("no-such-run", 0).await,
        Err(StoreError::RunNotFound(_))
    ));
}

/// Two writers hammer one run with optimistic retries: no update is lost and
/// the log stays gap-free.
async fn concurrent_writers_lose_nothing(store: Arc<dyn Store>) {
    create(store.as_ref(), "run-race").await;
    let mut tasks = Vec::new();
    for writer in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                loop {
                    let stored = store.load_run("run-race").await.unwrap();
                    let mut doc = stored.doc.clone();
                    let status = if (writer + i) % 2 == 0 {
                        RunStatus::Waiting
                    } else {
                        RunStatus::Running
                    };
                    let records = commit(
                        &mut doc,
                        vec![Event::RunStatusChanged { status }],
                        &format!("w{writer}"),
                        5,
                    )
                    .unwrap();
                    match store
                        .commit("run-race", stored.version, &records, &doc)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let events = store.events("run-race", 0).await.unwrap();
    assert_eq!(events.len(), 31);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1);
    }
    let stored = store.load_run("run-race").await.unwrap();
    assert_eq!(stored.version, 31);
    assert_eq!(RunDoc::replay(&events).unwrap(), stored.doc);
}

async fn blobs_are_content_addressed(store: &dyn Store) {
    let first = store.put_blob(b"hello artifact").await.unwrap();
    let again = store.put_blob(b"hello artifact").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first.size, 14);
    assert_eq!(first.hash, factory_store::blob_hash(b"hello artifact"));
    assert_eq!(
        store.get_blob(&first.hash).await.unwrap(),
        b"hello artifact"
    );
    let other = store.put_blob(b"").await.unwrap();
    assert_ne!(other.hash, first.hash);
    assert_eq!(store.get_blob(&other.hash).await.unwrap(), b"");
    assert!(matches!(
        store.get_blob("0000").await.unwrap_err(),
        StoreError::BlobNotFound(_)
    ));
}

async fn leases_follow_events(store: &dyn Store) {
    let doc = create(store, "run-lease").await;
    let mut next = doc.clone();
    let records = commit(
        &mut next,
        vec![
            Event::BlockReady {
                block: "a".into(),
                reason: "t".into(),
            },
            Event::BlockStarted {
                block: "a".into(),
                attempt: 1,
                owner: "host:1:1".into(),
                lease_expires_at: 10_000,
            },
        ],
        "w",
        5_000,
    )
    .unwrap();
    let version = store.commit("run-lease", 1, &records, &next).await.unwrap();
    let leases = store.leases("run-lease").await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (
            leases[0].owner.as_str(),
            leases[0].attempt,
            leases[0].expires_at,
            leases[0].pid
        ),
        ("host:1:1", 1, 10_000, None)
    );

    let held = store.renew_leases("host:1:1", 20_000).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].block_id.as_str(), held[0].attempt), ("a", 1));
    assert!(
        store
            .renew_leases("someone-else", 99_000)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .set_lease_pid("run-lease", "a", 1, 4242)
        .await
        .unwrap();
    let lease = &store.leases("run-lease").await.unwrap()[0];
    assert_eq!((lease.expires_at, lease.pid), (20_000, Some(4242)));
    // A running attempt's output, published on its lease.
    assert_eq!(store.live_log("run-lease", "a", 1).await.unwrap(), None);
    assert!(
        store
            .set_live_log("run-lease", "a", 1, r#"{"stdout":"tick 1"}"#)
            .await
            .unwrap()
    );
    assert!(
        !store.set_live_log("run-lease", "a", 2, "{}").await.unwrap(),
        "not its lease"
    );
    assert_eq!(
        store
            .live_log("run-lease", "a", 1)
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"stdout":"tick 1"}"#)
    );
    assert_eq!(store.live_log("run-lease", "a", 2).await.unwrap(), None);

    let records = commit(
        &mut next,
        vec![Event::AttemptAbandoned {
            block: "a".into(),
            attempt: 1,
            reason: "test".into(),
        }],
        "w",
        6_000,
    )
    .unwrap();
    store
        .commit("run-lease", version, &records, &next)
        .await
        .unwrap();
    assert!(store.leases("run-lease").await.unwrap().is_empty());
    assert_eq!(
        store.live_log("run-lease", "a", 1).await.unwrap(),
        None,
        "it goes with the attempt"
    );
}

async fn run_ids_resolve_by_prefix(store: &dyn Store) {
    create(store, "abc-111").await;
    create(store, "abc-222").await;
    create(store, "xyz_1").await;
    assert_eq!(store.resolve_run_id("abc-1").await.unwrap(), "abc-111");
    assert_eq!(store.resolve_run_id("xyz_1").await.unwrap(), "xyz_1");
    assert!(matches!(
        store.resolve_run_id("abc").await.unwrap_err(),
        StoreError::AmbiguousRunId { .. }
    ));
    assert!(matches!(
        store.resolve_run_id("nope").await.unwrap_err(),
        StoreError::RunNotFound(_)
    ));
    // `_` and `%` are literal, not LIKE wildcards.
    assert!(matches!(
        store.resolve_run_id("xyz%").await.unwrap_err(),
        StoreError::RunNotFound(_)
    ));
    let runs = store.list_runs(50).await.unwrap();
    assert!(
        runs.iter()
            .any(|r| r.run_id == "abc-111" && r.template_id == "t")
    );
}

/// The runs home's listing: by template, status, run id prefix or text in
/// the params (any case, `%` literal), newest first, a page at a time.
async fn runs_are_found_by_filter_and_paged(store: &dyn Store) {
    for i in 1..=5 {
        let run_id = format!("inbox-{i}");
        let (mut doc, records) = doc_of(TEMPLATE, &run_id);
        doc.template_id = if i % 2 == 1 { "inbox-a" } else { "inbox-b" }.to_string();
        doc.created_at = 10_000_000 + i;
        doc.params.insert(
            "title".into(),
            serde_json::json!(if i == 3 { "Marisol Vega" } else { "Other" }),
        );
        if i == 2 {
            doc.status = RunStatus::Waiting;
        }
        store
            .create_run(NewRun {
                doc: &doc,
                records: &records,
                template_json: TEMPLATE,
                template_path: None,
                blobs: &[],
                side: &[],
            })
            .await
            .unwrap();
    }
    let ids = |listing: Vec<factory_store::RunListing>| -> Vec<String> {
        listing.into_iter().map(|l| l.run.run_id).collect()
    };
    let find = |filter: RunFilter| async move { ids(store.find_runs(&filter).await.unwrap()) };
    let all = RunFilter {
        limit: 50,
        ..RunFilter::default()
    };
    assert_eq!(
        find(RunFilter {
            template: Some("inbox-a".into()),
            ..all.clone()
        })
        .await,
        ["inbox-5", "inbox-3", "inbox-1"]
    );
    assert_eq!(
        find(RunFilter {
            text: Some("mARISOL".into()),
            ..all.clone()
        })
        .await,
        ["inbox-3"]
    );
    assert_eq!(
        find(RunFilter {
            text: Some("inbox-4".into()),
            ..all.clone()
        })
        .await,
        ["inbox-4"]
    );
    assert!(
        find(RunFilter {
            text: Some("inbox%".into()),
            ..all.clone()
        })
        .await
        .is_empty(),
        "% is literal"
    );
    assert_eq!(
        find(RunFilter {
            status: Some("waiting".into()),
            template: Some("inbox-b".into()),
            ..all.clone()
        })
        .await,
        ["inbox-2"]
    );
    // Pages of two: each starts after the last run of the one before.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .find_runs(&RunFilter {
                text: Some("inbox-".into()),
                before: before.clone(),
                limit: 2,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|l| l.started_by == "test"));
        let last = &page.last().unwrap().run;
        before = Some((last.created_at, last.run_id.clone()));
        pages.push(ids(page));
    }
    assert_eq!(
        pages,
        [
            vec!["inbox-5", "inbox-4"],
            vec!["inbox-3", "inbox-2"],
            vec!["inbox-1"]
        ]
    );
}

async fn tokens_templates_and_records(store: &dyn Store) {
    let token = TokenRecord {
        id: "pf_abc123".into(),
        name: "ci".into(),
        role: "reviewer".into(),
        hash: "h1".into(),
        created_by: "admin".into(),
        created_at: 5,
        revoked_at: None,
        scope: None,
        tester_role: Some("team".into()),
    };
    store.create_token(&token).await.unwrap();
    // A review link's token keeps its run and tester.
    let link = TokenRecord {
        id: "pf_link01".into(),
        hash: "h-link".into(),
        scope: Some(factory_store::ReviewScope {
            run_id: "run-1".into(),
            tester: "samuel-ngu".into(),
            tester_role: "expert".into(),
        }),
        ..token.clone()
    };
    store.create_token(&link).await.unwrap();
    assert_eq!(store.token_by_hash("h-link").await.unwrap(), Some(link));
    // The same hash twice is refused (the hash is the lookup key).
    let mut twin = token.clone();
    twin.id = "pf_other".into();
    assert!(store.create_token(&twin).await.is_err());
    assert_eq!(
        store.token_by_hash("h1").await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(store.token_by_hash("nope").await.unwrap(), None);
    assert!(store.revoke_token("pf_abc123", 9).await.unwrap());
    assert!(
        !store.revoke_token("pf_abc123", 10).await.unwrap(),
        "revoked twice"
    );
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].revoked_at, Some(9));

    let mut template = TemplateRecord {
        template_id: "t".into(),
        version: "1".into(),
        name: "T".into(),
        source: TEMPLATE.into(),
        path: None,
        registered_by: "admin".into(),
        registered_at: 1,
    };
    store.put_template(&template).await.unwrap();
    template.name = "T renamed".into();
    store.put_template(&template).await.unwrap();
    let templates = store.list_templates().await.unwrap();
    assert_eq!(templates, vec![template]);

    create(store, "run-records").await;
    let mut draft = RunRecord {
        run_id: "run-records".into(),
        template_id: "t".into(),
        kind: kinds::DRAFT.into(),
        key: "reflection".into(),
        actor: "ana".into(),
        at: 20,
        body: serde_json::json!({"worked": "half"}),
    };
    store.put_record(&draft).await.unwrap();
    draft.body = serde_json::json!({"worked": "all of it"});
    draft.at = 21;
    store.put_record(&draft).await.unwrap();
    let drafts = store.records("run-records", kinds::DRAFT).await.unwrap();
    assert_eq!(drafts, vec![draft.clone()], "upserted, not duplicated");
    assert!(
        store
            .records("run-records", kinds::CHAT)
            .await
            .unwrap()
            .is_empty()
    );
    let by_template = store
        .records_for_template("t", kinds::DRAFT, 10)
        .await
        .unwrap();
    assert_eq!(by_template, vec![draft]);
    // A record for a run that does not exist is refused (foreign key).
    let orphan = RunRecord {
        run_id: "no-such-run".into(),
        template_id: "t".into(),
        kind: kinds::DRAFT.into(),
        key: "k".into(),
        actor: "ana".into(),
        at: 1,
        body: serde_json::json!({}),
    };
    assert!(store.put_record(&orphan).await.is_err());

    let since = store.runs_updated_since(0).await.unwrap();
    assert!(since.iter().any(|r| r.run_id == "run-records"));
    assert!(store.runs_updated_since(i64::MAX).await.unwrap().is_empty());
    let running = store.runs_with_status("running").await.unwrap();
    assert!(running.iter().all(|r| r.status == "running"));
}

async fn feedback_and_improvement_items(store: &dyn Store) {
    create(store, "run-feedback").await;
    let feedback = FeedbackRecord {
        id: "fb-1".into(),
        run_id: "run-feedback".into(),
        version: "v1".into(),
        source: "extraction-review".into(),
        tester: "samuel".into(),
        tester_role: "expert".into(),
        free_text: "Mostly right".into(),
        items: serde_json::json!([{"key": "frameworks.json $.frameworks[0]", "verdict": "wrong"}]),
        created_at: 10,
    };
    store.add_feedback(&feedback).await.unwrap();
    assert!(
        store.add_feedback(&feedback).await.is_err(),
        "ids are unique"
    );
    assert_eq!(
        store.feedback("run-feedback").await.unwrap(),
        vec![feedback]
    );
    assert!(store.feedback("run-round-trip").await.unwrap().is_empty());

    let mut item = ImprovementItem {
        id: "item-1".into(),
        run_id: "run-feedback".into(),
        source_key: "frameworks.json $.frameworks[0]".into(),
        skill_target: "framework-extractor".into(),
        finding_type: "framework_gap".into(),
        priority: "high".into(),
        source_text: "The 3-step close".into(),
        expert_correction: "It has five steps".into(),
        status: "open".into(),
        consensus_score: 0.5,
        flagged_by: serde_json::json!([{"tester": "beta", "role": "external", "weight": 0.5}]),
        prompt_version: None,
        extraction_version: Some("v1".into()),
        resolved_in_version: None,
        resolution_notes: None,
        source: "extraction-review".into(),
        created_at: 11,
        updated_at: 11,
    };
    store.put_item(&item).await.unwrap();
    item.status = "accepted".into();
    item.consensus_score = 3.5;
    item.updated_at = 12;
    store.put_item(&item).await.unwrap();
    assert_eq!(store.item("item-1").await.unwrap(), Some(item.clone()));
    assert_eq!(
        store
            .item_by_key("run-feedback", "frameworks.json $.frameworks[0]")
            .await
            .unwrap(),
        Some(item.clone())
    );
    assert_eq!(
        store.item_by_key("run-feedback", "other").await.unwrap(),
        None
    );
    // The same source key twice in one run is refused: consensus is per key.
    let mut twin = item.clone();
    twin.id = "item-2".into();
    assert!(store.put_item(&twin).await.is_err());
    let mut other = item.clone();
    other.id = "item-3".into();
    other.source_key = "voice.md line 3".into();
    other.skill_target = "voice-extractor".into();
    other.status = "open".into();
    store.put_item(&other).await.unwrap();
    let all = store.items("run-feedback", None, None).await.unwrap();
    assert_eq!(all.len(), 2);
    // A batch is all or none: its second item repeats a source key, so the
    // first (a status change) is not stored either.
    let mut changed = other.clone();
    changed.status = "accepted".into();
    let mut clash = item.clone();
    clash.id = "item-4".into();
    assert!(store.put_items(&[changed.clone(), clash]).await.is_err());
    assert_eq!(store.item("item-3").await.unwrap().unwrap().status, "open");
    store.put_items(&[changed]).await.unwrap();
    assert_eq!(
        store.item("item-3").await.unwrap().unwrap().status,
        "accepted"
    );
    other.status = "open".into();
    store.put_items(&[other.clone()]).await.unwrap();
    let accepted = store
        .items("run-feedback", Some("accepted"), None)
        .await
        .unwrap();
    assert_eq!(accepted, vec![item.clone()]);
    let voice = store
        .items("run-feedback", None, Some("voice-extractor"))
        .await
        .unwrap();
    assert_eq!(voice, vec![other]);
    assert!(
        store
            .items("run-feedback", Some("accepted"), Some("voice-extractor"))
            .await
            .unwrap()
            .is_empty()
    );
}

const CHAIN: &str = r#"{
  "id": "chain", "name": "Chain", "version": "1",
  "blocks": [
    {"id": "a", "name": "A", "layer": "L0", "type": "build", "runtime": "builtin",
     "inputs": {"config": {"builtin": "noop"}},
     "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}},
    {"id": "b", "name": "B", "layer": "L1", "type": "build", "runtime": "builtin",
     "inputs": {"depends": [{"block": "a", "key": "out"}], "config": {"builtin": "noop"}},
     "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}},
    {"id": "c", "name": "C", "layer": "L2", "type": "build", "runtime": "builtin",
     "inputs": {"depends": [{"block": "b", "key": "out"}], "config": {"builtin": "noop"}},
     "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}}
  ]
}"#;

/// A commit writes the run's header and only the blocks its events changed;
/// what is read back is always the whole document the writer held, as a
/// value and as text.
async fn blocks_are_stored_one_row_each(store: &dyn Store) {
    let mut doc = create_of(store, CHAIN, "run-rows").await;
    let steps: Vec<Vec<Event>> = vec![
        vec![Event::BlockReady {
            block: "a".into(),
            reason: "no dependencies".into(),
        }],
        vec![
            Event::BlockStarted {
                block: "a".into(),
                attempt: 1,
                owner: "w".into(),
                lease_expires_at: 9_000,
            },
            Event::RunStatusChanged {
                status: RunStatus::Running,
            },
        ],
        vec![
            Event::AttemptFinished {
                block: "a".into(),
                attempt: 1,
                outcome: factory_core::run::AttemptOutcome::Succeeded,
                report: Default::default(),
                score: Some(8.5),
            },
            Event::BlockDone { block: "a".into() },
            Event::BlockReady {
                block: "b".into(),
                reason: "all dependencies done".into(),
            },
        ],
    ];
    for (n, events) in steps.into_iter().enumerate() {
        let records = commit(&mut doc, events, "test", 2_000 + n as i64).unwrap();
        store
            .commit("run-rows", 1 + n as i64, &records, &doc)
            .await
            .unwrap();
        let stored = store.load_run("run-rows").await.unwrap();
        assert_eq!(stored.doc, doc, "after step {n}");
        assert_eq!(stored.version, 2 + n as i64);
        assert_eq!(
            store.run_version("run-rows").await.unwrap(),
            Some(stored.version)
        );
        let text = store.load_run_json("run-rows", History::All).await.unwrap();
        assert_eq!(serde_json::from_str::<RunDoc>(&text).unwrap(), doc);
        // Without history: the same blocks, no attempts.
        let heads = store
            .load_run_json("run-rows", History::None)
            .await
            .unwrap();
        let heads: RunDoc = serde_json::from_str(&heads).unwrap();
        for (id, state) in &doc.blocks {
            assert!(heads.blocks[id].history.is_empty());
            assert_eq!(heads.blocks[id].status, state.status);
        }
        // One block on demand, with its attempts.
        let a = store
            .load_block_json("run-rows", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<factory_core::run::BlockState>(&a).unwrap(),
            doc.blocks["a"]
        );
    }
    assert_eq!(store.load_block_json("run-rows", "zz").await.unwrap(), None);
    assert_eq!(store.load_block_json("no-run", "a").await.unwrap(), None);
    assert_eq!(store.run_version("no-run").await.unwrap(), None);
    assert_eq!(doc.blocks["c"].status, factory_core::BlockStatus::Pending);
    // A document that differs from the stored one only in a block no event
    // names, or in an attempt no event names, is not written there: the
    // store trusts the events, not a diff. A flag on `a` rewrites its head,
    // not its finished attempt.
    let mut drifted = doc.clone();
    drifted.blocks.get_mut("c").unwrap().retries_used = 7;
    drifted.blocks.get_mut("a").unwrap().history[0].owner = "drifted".into();
    let records = commit(
        &mut drifted,
        vec![
            Event::ReviewFlagged { block: "b".into() },
            Event::ReviewFlagged { block: "a".into() },
        ],
        "test",
        3_000,
    )
    .unwrap();
    store
        .commit("run-rows", 4, &records, &drifted)
        .await
        .unwrap();
    let stored = store.load_run("run-rows").await.unwrap().doc;
    assert!(stored.blocks["b"].review_flag);
    assert!(stored.blocks["a"].review_flag);
    assert_eq!(stored.blocks["c"].retries_used, 0);
    assert_eq!(stored.blocks["a"].history[0].owner, "w");
    assert_eq!(stored.blocks["a"].history.len(), 1);
}

/// A database made before block rows (migrations 1–5, whole documents in
/// `runs.doc`) opens with its runs intact and writable.
async fn a_database_with_whole_documents_migrates(url: &str, dialect: &str) {
    let old = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    let (mut doc, _) = doc_of(CHAIN, "run-old");
    // Block `a` has two attempts, the first retried: migration 0009 moves
    // them out of its row into attempt rows.
    let started = |attempt| Event::BlockStarted {
        block: "a".into(),
        attempt,
        owner: "w".into(),
        lease_expires_at: 9_000,
    };
    let finished = |attempt, outcome| Event::AttemptFinished {
        block: "a".into(),
        attempt,
        outcome,
        report: factory_core::run::AttemptReport {
            metrics: [("quality".to_string(), serde_json::json!(attempt * 40))].into(),
            ..Default::default()
        },
        score: Some(attempt as f64 * 4.0),
    };
    commit(
        &mut doc,
        vec![
            Event::BlockReady {
                block: "a".into(),
                reason: "no dependencies".into(),
            },
            started(1),
            finished(1, factory_core::run::AttemptOutcome::ThresholdMissed),
            Event::RetryScheduled {
                block: "a".into(),
                not_before: 1_400,
                reason: "quality 40 is below 80".into(),
                corrections: None,
                reply_note: None,
                counted: true,
            },
            started(2),
            finished(2, factory_core::run::AttemptOutcome::Succeeded),
            Event::BlockDone { block: "a".into() },
        ],
        "test",
        1_500,
    )
    .unwrap();
    assert_eq!(doc.blocks["a"].history.len(), 2);
    let whole = serde_json::to_string(&doc).unwrap();
    assert!(whole.contains("\"blocks\""));
    assert!(whole.contains("\"history\""));
    let insert_run = "INSERT INTO runs (run_id, template_id, template_json, template_path, status, version, doc, created_at, updated_at) VALUES ('run-old', 'chain', $1, NULL, 'running', 2, $2, 1, 2)";
    if dialect == "sqlite" {
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::query(insert_run)
            .bind(CHAIN)
            .bind(&whole)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(insert_run.replace("$2", "$2::jsonb")))
            .bind(CHAIN)
            .bind(&whole)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = factory_store::open(url).await.expect("migrates");
    let stored = store.load_run("run-old").await.unwrap();
    assert_eq!(stored.doc, doc);
    assert_eq!(stored.version, 2);
    assert_eq!(stored.template_json, CHAIN);
    let text = store.load_run_json("run-old", History::All).await.unwrap();
    assert_eq!(serde_json::from_str::<RunDoc>(&text).unwrap(), doc);
    let more = commit(
        &mut doc,
        vec![
            Event::ReviewFlagged { block: "c".into() },
            Event::ReviewFlagged { block: "a".into() },
        ],
        "test",
        1_600,
    )
    .unwrap();
    // The log before the migration was not part of this fixture; only the
    // document matters here.
    store.commit("run-old", 2, &more, &doc).await.unwrap();
    assert_eq!(store.load_run("run-old").await.unwrap().doc, doc);
}

#[tokio::test]
async fn sqlite_database_with_whole_documents_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    a_database_with_whole_documents_migrates(&url, "sqlite").await;
}

#[tokio::test]
async fn postgres_database_with_whole_documents_migrates() {
    let url = factory_store::testing::fresh_postgres_database().await;
    a_database_with_whole_documents_migrates(&url, "postgres").await;
}

/// Shared limits: at most `limit` slots taken at once, however many ask
/// together; a slot given back or run out is free again; only its holder
/// renews or gives it back.
async fn permits_share_a_limit(store: Arc<dyn Store>) {
    let key = "llm:test";
    let now = 1_000;
    // Eight takers at once for three slots: exactly three win, each a
    // different slot.
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .take_permit(key, 3, &format!("h{i}"), now, now + 60_000)
                    .await
                    .unwrap()
                    .map(|slot| (slot, format!("h{i}")))
            })
        })
        .collect();
    let mut taken = Vec::new();
    for taker in takers {
        taken.extend(taker.await.unwrap());
    }
    // A taker that lost a race for a slot takes nothing (it asks again):
    // never two on one slot, never more than three; asking again, one at a
    // time, fills exactly the slots left.
    let mut slots: Vec<u32> = taken.iter().map(|(slot, _)| *slot).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(
        slots.len(),
        taken.len(),
        "two takers on one slot: {taken:?}"
    );
    assert!(!taken.is_empty() && taken.len() <= 3, "{taken:?}");
    let mut again = 0;
    while let Some(slot) = store
        .take_permit(key, 3, &format!("again{again}"), now, now + 60_000)
        .await
        .unwrap()
    {
        taken.push((slot, format!("again{again}")));
        again += 1;
    }
    taken.sort();
    assert_eq!(
        taken.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(),
        [0, 1, 2],
        "{taken:?}"
    );
    assert_eq!(
        store
            .take_permit(key, 3, "late", now, now + 60_000)
            .await
            .unwrap(),
        None
    );
    // Another key has its own slots; a limit of 0 gives none.
    assert_eq!(
        store
            .take_permit("llm:other", 1, "x", now, now + 1)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        store
            .take_permit("llm:none", 0, "x", now, now + 1)
            .await
            .unwrap(),
        None
    );

    // Only the holder renews or gives back its slot.
    let (slot, holder) = taken[1].clone();
    assert!(
        !store
            .keep_permit(key, slot, "someone-else", None)
            .await
            .unwrap()
    );
    assert!(
        store
            .keep_permit(key, slot, &holder, Some(now + 90_000))
            .await
            .unwrap()
    );
    assert!(store.keep_permit(key, slot, &holder, None).await.unwrap());
    assert!(!store.keep_permit(key, slot, &holder, None).await.unwrap());
    assert_eq!(
        store
            .take_permit(key, 3, "next", now, now + 60_000)
            .await
            .unwrap(),
        Some(slot)
    );

    // Past their holders' time, slots are free for others; the renewed one
    // (now `next`'s, until now + 60 s) is not.
    let later = now + 60_001;
    assert_eq!(
        store
            .take_permit(key, 3, "after", later, later + 10)
            .await
            .unwrap(),
        Some(0)
    );
    let (slot0, holder0) = taken[0].clone();
    assert_eq!(slot0, 0);
    assert!(
        !store
            .keep_permit(key, 0, &holder0, Some(later + 10))
            .await
            .unwrap(),
        "taken over"
    );
    // A raised limit adds slots.
    assert_eq!(
        store
            .take_permit(key, 4, "more", now, now + 10)
            .await
            .unwrap(),
        Some(3)
    );
}

async fn suite(store: Arc<dyn Store>) {
    blocks_are_stored_one_row_each(store.as_ref()).await;
    feedback_and_improvement_items(store.as_ref()).await;
    tokens_templates_and_records(store.as_ref()).await;
    round_trip(store.as_ref()).await;
    a_run_and_its_files_are_one_commit(store.as_ref()).await;
    stale_writes_are_refused(store.as_ref()).await;
    concurrent_writers_lose_nothing(store.clone()).await;
    blobs_are_content_addressed(store.as_ref()).await;
    leases_follow_events(store.as_ref()).await;
    run_ids_resolve_by_prefix(store.as_ref()).await;
    runs_are_found_by_filter_and_paged(store.as_ref()).await;
    permits_share_a_limit(store.clone()).await;
    budgets_are_spent_together(store.clone()).await;
    stream_records::contract(store.clone()).await;
    event_feed::contract(store.clone()).await;
    memos::contract(store.as_ref()).await;
    outbox::contract(store.clone()).await;
}

/// A shared budget (tokens per minute): spenders racing for it are admitted
/// only while the live spends leave room, never two on the same room; a
/// spend is corrected by settling it; spends age out of the window; a
/// spend larger than the whole budget goes alone into an empty window.
async fn budgets_are_spent_together(store: Arc<dyn Store>) {
    let key = "llm:test tokens";
    let now = 1_000;
    let spenders: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let holder = format!("s{i}");
                let spent = store
                    .spend_budget(key, &holder, 300, 1_000, now, now + 60_000)
                    .await
                    .unwrap();
                spent.then_some(holder)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for spender in spenders {
        admitted.extend(spender.await.unwrap());
    }
    assert_eq!(
        admitted.len(),
        3,
        "3 × 300 fit 1,000, a fourth not: {admitted:?}"
    );
    assert!(
        !store
            .spend_budget(key, "late", 200, 1_000, now + 1, now + 60_001)
            .await
            .unwrap(),
        "900 + 200 is over"
    );
    // One request used less than it was counted for: room again.
    store.settle_budget(key, &admitted[0], 50).await.unwrap();
    assert!(
        store
            .spend_budget(key, "after-settle", 200, 1_000, now + 2, now + 60_002)
            .await
            .unwrap(),
        "650 + 200 fits"
    );
    // Another key has its own budget; an over-budget spend goes alone.
    assert!(
        store
            .spend_budget("llm:other tokens", "big", 5_000, 1_000, now, now + 60_000)
            .await
            .unwrap(),
        "an empty window admits a spend larger than the budget"
    );
    assert!(
        !store
            .spend_budget("llm:other tokens", "next", 1, 1_000, now + 1, now + 60_001)
            .await
            .unwrap()
    );
    // A window later everything has aged out.
    assert!(
        store
            .spend_budget(
                key,
                "next-minute",
                1_000,
                1_000,
                now + 60_003,
                now + 120_003
            )
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("factory.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    suite(Arc::new(store)).await;
    // Reopening migrates nothing twice and sees the same data.
    let reopened = factory_store::open(path.to_str().unwrap()).await.unwrap();
    assert!(reopened.load_run("run-round-trip").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_contract() {
    let url = factory_store::testing::fresh_postgres_database().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    event_feed::a_reader_waits_for_transactions_still_running(&store, &url).await;
    suite(Arc::new(store)).await;
    let reopened = factory_store::open(&url).await.unwrap();
    assert!(reopened.load_run("run-round-trip").await.is_ok());
}

/// Writers' turns on PostgreSQL: one writer at a time per run, across
/// processes (two stores here), and none for different runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_take_turns_per_run_on_postgres() {
    use std::time::Duration;
    let url = factory_store::testing::fresh_postgres_database().await;
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let first = a.writer_turn("run-1").await.unwrap().expect("a turn");
    let other_run = tokio::time::timeout(Duration::from_secs(5), b.writer_turn("run-2"))
        .await
        .expect("another run's turn is not held up")
        .unwrap()
        .expect("a turn");
    other_run.end().await;
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.writer_turn("run-1").await.unwrap().expect("a turn") }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "two writers had run-1's turn at once"
    );
    first.end().await;
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("ending a turn hands it on")
        .unwrap();
    second.end().await;
    // SQLite has no turns: its writers are serialised by the database.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("f.db").to_str().unwrap())
        .await
        .unwrap();
    assert!(sqlite.writer_turn("run-1").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_urls_are_explained() {
    let error = factory_store::open("mysql://localhost/x")
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("postgres://"), "{error}");
    let error = factory_store::open("postgres://nobody:secret@127.0.0.1:1/none")
        .await
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(!text.contains("secret"), "password leaked: {text}");
    let error = factory_store::open("/nonexistent-dir/sub/factory.db")
        .await
        .err()
        .expect("refused");
    assert!(
        error
            .to_string()
            .contains("/nonexistent-dir/sub/factory.db"),
        "{error}"
    );
}
