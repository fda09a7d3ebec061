//! Media artifacts through the real binary: a block writes a PNG, a PDF, a
//! folder with PNGs in it and a WAV (examples/media); each is stored byte
//! for byte with its checked facts, and a file that is not what it claims
//! fails its attempt with the reason.

use serde_json::Value;

use super::{factory, repo_root, status_json};

#[test]
fn images_audio_and_pdfs_are_stored_checked_and_given_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = repo_root().join("examples/media/pipeline.json");
    let output = factory(&db)
        .args([
            "run",
            template.to_str().unwrap(),
            "--param",
            "title=Launch week",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let doc = status_json(&db, &run);
    assert_eq!(doc["status"], "done", "{doc}");
    let artifacts = |block: &str| -> Value {
        doc["blocks"][block]["history"]
            .as_array()
            .and_then(|h| h.last())
            .map(|a| a["report"]["artifacts"].clone())
            .unwrap_or(Value::Null)
    };
    let cards = artifacts("cards");
    assert_eq!(cards["card"]["format"], "png");
    assert_eq!(cards["card"]["media"]["media_type"], "image/png");
    assert_eq!(cards["card"]["media"]["width"], 240);
    assert_eq!(cards["card"]["media"]["height"], 126);
    assert_eq!(cards["brief"]["media"]["pages"], 1);
    let episode = artifacts("episode");
    assert_eq!(
        episode["episode"]["media"]["duration_ms"], 2000,
        "{episode}"
    );
    // No D1–D5 score from media alone: the audit reads text.
    let report = &doc["blocks"]["episode"]["history"][0]["report"];
    assert!(report["audit"].is_null(), "{report}");
    // A folder's binary files are not read as text (base64 would be noise).
    let audit = &doc["blocks"]["cards"]["history"][0]["report"]["audit"];
    assert!(audit.is_object(), "the folder's text is audited: {audit}");
    assert!(
        audit["ceiling"].is_null() && audit["composite"].as_f64().unwrap() >= 5.0,
        "no noise cap from the PNGs in it: {audit}"
    );

    // Given back byte for byte.
    let png = factory(&db)
        .args(["artifacts", &run, "cards", "--key", "card"])
        .output()
        .unwrap()
        .stdout;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(png.len() as u64, cards["card"]["size"].as_u64().unwrap());
    let listing = factory(&db)
        .args(["artifacts", &run, "episode"])
        .output()
        .unwrap()
        .stdout;
    let listing = String::from_utf8(listing).unwrap();
    assert!(listing.contains("(audio/wav, 2.0 s)"), "{listing}");
    // The folder keeps its binary files whole.
    let bundle: Value = serde_json::from_slice(
        &factory(&db)
            .args(["artifacts", &run, "cards", "--key", "cards"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        bundle["files"]["index.md"]
            .as_str()
            .unwrap()
            .contains("Launch week")
    );
    assert!(bundle["binary"]["card-1.png"].is_string(), "{bundle}");

    // Text under a .png name fails the attempt, and says why.
    let junk = dir.path().join("junk.json");
    let text = std::fs::read_to_string(&template)
        .unwrap()
        .replace("\"cards\"] }", "\"junk\"] }")
        .replace(
            "${FACTORY_TEMPLATE_DIR}",
            repo_root().join("examples/media").to_str().unwrap(),
        );
    std::fs::write(&junk, text).unwrap();
    let output = factory(&db)
        .args(["run", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("artifact `card` of block `cards` (card.png, declared `png`) is not a PNG"),
        "{stderr}"
    );
}
