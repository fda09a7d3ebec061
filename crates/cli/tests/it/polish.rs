//! The CLI as a person uses it (issue 21): quiet on closed pipes, each error
//! clause once, hints with the real run id, did-you-mean, exit codes.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use predicates::prelude::*;

use crate::{factory, repo_root};

/// No line of `text` says the same clause twice (`a: b: b`), and no clause
/// of one line repeats another's whole text.
fn assert_no_repeated_clause(text: &str) {
    for line in text.lines() {
        let clauses: Vec<&str> = line
            .split(": ")
            .map(str::trim)
            .filter(|c| c.len() > 8)
            .collect();
        for (i, clause) in clauses.iter().enumerate() {
            assert!(
                !clauses[i + 1..].iter().any(|later| later.contains(clause)),
                "`{clause}` repeats in: {line}"
            );
        }
    }
}

/// The offline example stopped at its gate: (db dir, db, run id, stderr).
fn offline_run_at_its_gate() -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = repo_root().join("examples/offline/pipeline.json");
    let output = factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "--param",
            "title=T",
            "--retry-backoff-ms",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    (
        dir,
        db,
        run,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A run whose event log is far bigger than a pipe's buffer (64 KB), so
    // the writer is still writing when the reader hangs up.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = dir.path().join("wide.json");
    let blocks: Vec<String> = (0..150)
        .map(|i| format!(
            r#"{{"id": "b{i}", "name": "Block {i}", "layer": "L0", "type": "build", "runtime": "builtin",
                "inputs": {{"config": {{"builtin": "noop"}}}},
                "outputs": {{"artifacts": [{{"key": "out", "path": "out.txt", "format": "text"}}]}}}}"#
        ))
        .collect();
    std::fs::write(
        &template,
        format!(
            r#"{{"id": "wide", "name": "Wide", "version": "1.0.0", "blocks": [{}]}}"#,
            blocks.join(",")
        ),
    )
    .unwrap();
    let output = factory(&db)
        .args(["run", template.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    for args in [
        vec!["events", run.as_str(), "--json"],
        vec!["events", run.as_str()],
    ] {
        let mut child = std::process::Command::new(crate::BIN)
            .env("FACTORY_DB", &db)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then hang up, as `head -c1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: ended by the closed pipe, not a panic ({:?})",
            output.status
        );
    }
}

#[test]
fn hints_name_the_real_run_and_errors_say_each_clause_once() {
    let (_dir, db, run, stderr) = offline_run_at_its_gate();
    assert!(
        stderr.contains(&format!("factory approve {run} summarize")),
        "{stderr}"
    );
    assert!(!stderr.contains("<run>"), "{stderr}");
    let events = factory(&db).args(["events", &run]).output().unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains(&format!("factory approve {run} summarize")),
        "{events}"
    );

    // A file that is not a database: the cause once, exit 3.
    let junk = db.with_file_name("junk.db");
    std::fs::write(&junk, "not a database at all").unwrap();
    let output = factory(&junk).args(["runs"]).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("file is not a database"), "{text}");
    assert_eq!(text.matches("file is not a database").count(), 1, "{text}");
    assert_no_repeated_clause(&text);

    // A run that cannot be created: each problem once, a near miss named.
    let template = repo_root().join("examples/offline/pipeline.json");
    let output = factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "--param",
            "titel=x",
            "--set-autonomy",
            "summarise=auto",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("did you mean `title`?"), "{text}");
    assert!(text.contains("did you mean `summarize`?"), "{text}");
    assert_eq!(
        text.matches("missing required run param `title`").count(),
        1,
        "{text}"
    );
    assert_no_repeated_clause(&text);
}

#[test]
fn a_diff_is_not_a_failure_and_a_failed_run_says_how_to_go_on() {
    let (_dir, db, run, _) = offline_run_at_its_gate();
    factory(&db)
        .args(["approve", &run, "summarize", "--retry-backoff-ms", "20"])
        .assert()
        .success();
    // Two attempts that differ: the diff is printed, the exit is 0.
    factory(&db)
        .args(["artifacts", &run, "quality-check", "--diff", "1", "2"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("@@"));

    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("fails.json");
    std::fs::write(
        &template,
        r#"{"id": "fails", "name": "Fails", "version": "1.0.0", "blocks": [
          {"id": "boom", "name": "Boom", "layer": "L0", "type": "build", "runtime": "command",
           "inputs": {"config": {"command": ["sh", "-c", "echo cannot reach the source >&2; exit 3"]}},
           "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]},
           "execution": {"max_retries": 0}}]}"#,
    )
    .unwrap();
    let db = dir.path().join("factory.db");
    let output = factory(&db)
        .args(["run", template.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    for stderr in [
        String::from_utf8_lossy(&output.stderr).into_owned(),
        String::from_utf8_lossy(&factory(&db).args(["resume", &run]).output().unwrap().stderr)
            .into_owned(),
    ] {
        assert!(
            stderr.contains(&format!("`factory retry {run} boom` runs it again")),
            "{stderr}"
        );
    }
}

#[test]
fn json_too_deep_is_not_called_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.json");
    std::fs::write(
        &path,
        format!(
            "{{\"id\": \"t\", \"x\": {}{}}}",
            "[".repeat(300),
            "]".repeat(300)
        ),
    )
    .unwrap();
    let output = factory(Path::new(&dir.path().join("f.db")))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("nested too deep") && text.contains("128"),
        "{text}"
    );
    assert!(!text.contains("malformed"), "{text}");
}
