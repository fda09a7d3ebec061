//! Triggers that act on their own, through the real binary: a block emits
//! `entity.created` events, an event trigger starts one run per matching
//! event (with the event's fields as params), a cron trigger starts runs on
//! schedule, a stream's event intake takes every finished run as a record;
//! a trigger that reads the same events again (its cursor lost in a crash)
//! starts nothing twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::factory;
use super::stream::{records, serve, wait_for};

fn write(dir: &Path, name: &str, template: &Value) {
    std::fs::write(
        dir.join(name),
        serde_json::to_string_pretty(template).unwrap(),
    )
    .unwrap();
}

fn command_block(id: &str, script: &str, artifact: (&str, &str, &str)) -> Value {
    json!({
        "id": id, "name": id, "layer": "L1", "type": "research", "runtime": "command",
        "inputs": {"config": {"command": ["sh", "-c", script]}},
        "outputs": {"artifacts": [{"key": artifact.0, "path": artifact.1, "format": artifact.2}]}
    })
}

/// The runs of `template`: `{run_id, status}` each, from the database.
fn runs_of(db: &Path, template: &str) -> Vec<Value> {
    rows(
        db,
        &format!(
            "SELECT run_id, status FROM runs WHERE template_id = '{template}' ORDER BY run_id"
        ),
    )
    .into_iter()
    .map(|row| json!({"run_id": row[0], "status": row[1]}))
    .collect()
}

fn feed(db: &Path, args: &[&str]) -> Value {
    let output = factory(db)
        .arg("feed")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn status(db: &Path, run: &str) -> Value {
    super::status_json(db, run)
}

#[test]
fn events_and_cron_ticks_start_runs_and_feed_streams_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();

    let mut find = command_block(
        "find",
        r#"printf '[{"entity": "acme", "gate": 2}, {"entity": "globex", "gate": 1}, {"entity": "initech", "gate": 2}]' > "$FACTORY_OUTPUT_DIR/entities.json""#,
        ("entities", "entities.json", "json"),
    );
    find["outputs"]["emits"] = json!([{"event": "entity.created", "artifact": "entities"}]);
    write(
        &templates,
        "finder.json",
        &json!({"id": "finder", "name": "Finder", "version": "1", "blocks": [find]}),
    );

    let mut on_entity = command_block(
        "on-entity",
        r#"printf 'A brief on %s.' "$FACTORY_PARAM_ENTITY" > "$FACTORY_OUTPUT_DIR/brief.md""#,
        ("brief", "brief.md", "md"),
    );
    on_entity["trigger"] = json!({"type": "event", "event": "entity.created(gate=2)"});
    // A lens-style template runs on demand: here the demand is an event.
    on_entity["lifecycle"] = json!({"mode": "on-demand"});
    write(
        &templates,
        "brief.json",
        &json!({"id": "brief", "name": "Brief", "version": "1",
                "params": {"entity": {"required": true}}, "blocks": [on_entity]}),
    );

    // Every minute; a tick less than a minute old fires at start.
    let mut tick = command_block(
        "tick",
        r#"printf 'ticked' > "$FACTORY_OUTPUT_DIR/t.txt""#,
        ("t", "t.txt", "text"),
    );
    tick["trigger"] = json!({"type": "cron", "cron": "* * * * *"});
    write(
        &templates,
        "nightly.json",
        &json!({"id": "nightly", "name": "Nightly", "version": "1", "blocks": [tick]}),
    );

    // A run this process cannot start (no LLM provider is configured): the
    // event is left for a process that can, and the firing says why.
    write(
        &templates,
        "llm-brief.json",
        &json!({"id": "llm-brief", "name": "LLM brief", "version": "1",
                "params": {"entity": {"required": true}}, "blocks": [
            {"id": "write", "name": "Write", "layer": "L1", "type": "build", "runtime": "llm",
             "skill": "brief", "model": "opus",
             "trigger": {"type": "event", "event": "entity.created(gate=2)"},
             "outputs": {"artifacts": [{"key": "brief", "path": "brief.md", "format": "md"}]}}
        ]}),
    );
    write(
        &templates,
        "finished-runs.json",
        &json!({"id": "finished-runs", "name": "Finished runs", "version": "1", "blocks": [
            {"id": "seen", "name": "Seen", "layer": "L0", "type": "ingest", "runtime": "builtin",
             "trigger": {"type": "event", "event": "run.finished(status=done)"},
             "lifecycle": {"mode": "daemon"},
             "record_state": {"track_per": "run_id", "states": ["seen", "noted"]},
             "inputs": {"config": {"builtin": "noop"}},
             "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}},
            {"id": "note", "name": "Note", "layer": "L1", "type": "ingest", "runtime": "builtin",
             "lifecycle": {"mode": "daemon"},
             "inputs": {"depends": [{"block": "seen", "key": "records"}], "config": {"builtin": "noop"}},
             "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}}
        ]}),
    );
    let validate = factory(&db)
        .arg("validate")
        .args(
            [
                "finder.json",
                "brief.json",
                "nightly.json",
                "llm-brief.json",
                "finished-runs.json",
            ]
            .map(|f| templates.join(f)),
        )
        .output()
        .unwrap();
    assert!(validate.status.success(), "{validate:?}");

    let server = serve(&db, &templates, "whsec_unused", None);
    // The event trigger's cursor starts at the feed's end when it first
    // runs: wait for it before emitting.
    wait_for(
        Duration::from_secs(30),
        "the cron trigger's first run",
        || {
            runs_of(&db, "nightly")
                .iter()
                .any(|r| r["status"] == "done")
        },
    );

    let run = factory(&db)
        .args(["run"])
        .arg(templates.join("finder.json"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    wait_for(Duration::from_secs(60), "two briefs", || {
        runs_of(&db, "brief")
            .iter()
            .filter(|r| r["status"] == "done")
            .count()
            == 2
    });

    // One run per matching event, its param from the event's field.
    let briefs = runs_of(&db, "brief");
    assert_eq!(
        briefs.len(),
        2,
        "globex (gate 1) starts nothing: {briefs:?}"
    );
    let mut entities = BTreeSet::new();
    for brief in &briefs {
        let run_id = brief["run_id"].as_str().unwrap();
        let doc = status(&db, run_id);
        entities.insert(doc["params"]["entity"].as_str().unwrap().to_string());
    }
    assert_eq!(entities, BTreeSet::from(["acme".into(), "initech".into()]));

    // The feed holds the block's events with their fields and the run's.
    let emitted = feed(&db, &["--name", "entity.created"]);
    let events = emitted["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{emitted}");
    assert!(
        events
            .iter()
            .all(|e| e["block"] == "find" && e["template_id"] == "finder")
    );
    let firings = feed(&db, &["--template", "brief"]);
    let started: BTreeSet<&str> = firings["firings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["run_id"].as_str())
        .collect();
    let brief_ids: BTreeSet<&str> = briefs
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(started, brief_ids, "{firings}");
    let cron = feed(&db, &["--template", "nightly"]);
    let cron_firings = cron["firings"].as_array().unwrap();
    assert!(
        cron_firings
            .iter()
            .all(|f| f["run_id"].is_string() && f["error"].is_null()),
        "{cron}"
    );

    // The stream took every finished run once and moved it on.
    wait_for(Duration::from_secs(30), "finished runs noted", || {
        let listed = records(&db, "finished-runs");
        let done: BTreeSet<String> = listed["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "done")
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect();
        brief_ids.iter().all(|id| done.contains(*id))
    });
    let listed = records(&db, "finished-runs");
    let keys: Vec<&str> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&&str> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a run noted twice: {listed}");

    // The LLM template: no run, a firing that says why, and its cursor
    // still before the first matching event (left for a process that can).
    wait_for(Duration::from_secs(30), "the LLM trigger's firing", || {
        feed(&db, &["--template", "llm-brief"])["firings"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    });
    assert!(runs_of(&db, "llm-brief").is_empty());
    let firing = &feed(&db, &["--template", "llm-brief"])["firings"][0];
    assert!(
        firing["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot run"),
        "{firing}"
    );
    let first_event = events
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(
        sql(
            &db,
            "SELECT seq FROM bus_cursors WHERE consumer = 'llm-brief/write'"
        ) < first_event,
        "the event was used up by a process that could not run it"
    );
    drop(server);

    // A crash before a trigger's cursor moved: the events are read again
    // and find the runs they started.
    sql(
        &db,
        "UPDATE bus_cursors SET seq = 0, tx = 0 WHERE consumer = 'brief/on-entity'",
    );
    let _server = serve(&db, &templates, "whsec_unused", None);
    wait_for(
        Duration::from_secs(30),
        "the trigger to read the feed again",
        || {
            sql(
                &db,
                "SELECT seq FROM bus_cursors WHERE consumer = 'brief/on-entity'",
            ) > 0
        },
    );
    assert_eq!(
        runs_of(&db, "brief").len(),
        2,
        "no event started a second run"
    );
}

/// One statement on the database file; the first column of its first
/// row as a number.
fn sql(db: &Path, statement: &str) -> i64 {
    rows(db, statement)
        .first()
        .and_then(|row| row.first())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One statement on the database file; every row's columns as text.
fn rows(db: &Path, statement: &str) -> Vec<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::{Connection, Row};
        let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let found = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .fetch_all(&mut connection)
            .await
            .unwrap();
        found
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<String, _>(i)
                            .or_else(|_| row.try_get::<i64, _>(i).map(|n| n.to_string()))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    })
}
