//! Absolute calibration against the labelled corpus in `tests/corpus`
//! (see its README): every junk artifact scores ≤ 3.0, every good one ≥ 8.0,
//! weak ones in between. The ordering tests check that better beats worse;
//! this one checks that the numbers mean what a reader takes them to mean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use factory_audit::{Artifact, AuditInput, AuditReport, Format, Upstream, audit};
use serde::Deserialize;

use crate::assert_well_formed;

/// Junk scores at most this.
const JUNK_MAX: f64 = 3.0;
/// Good work scores at least this.
const GOOD_MIN: f64 = 8.0;

#[derive(Debug, Deserialize)]
struct Entry {
    file: String,
    label: Label,
    kind: String,
    golden: Option<String>,
    #[serde(default)]
    upstream: Vec<String>,
    subject: Option<String>,
    block: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Label {
    Junk,
    Weak,
    Good,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn read(relative: &str) -> Vec<u8> {
    let path = corpus_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn file_name(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

fn stem(relative: &str) -> &str {
    let name = file_name(relative);
    name.split_once('.').map_or(name, |(stem, _)| stem)
}

/// Audits one corpus entry as the engine would audit the block that wrote it.
fn audit_entry(entry: &Entry) -> AuditReport {
    let content = read(&entry.file);
    let golden = entry.golden.as_deref().map(read);
    let upstream: Vec<(String, Vec<u8>)> = entry
        .upstream
        .iter()
        .map(|path| (path.clone(), read(path)))
        .collect();
    let path = file_name(&entry.file);
    let input = AuditInput {
        block: entry.block.as_deref().unwrap_or("corpus"),
        artifacts: vec![Artifact {
            key: "out",
            path,
            format: Format::from_path(path),
            content: Some(&content),
        }],
        upstream: upstream
            .iter()
            .map(|(path, bytes)| Upstream {
                block: "upstream",
                key: stem(path),
                format: Format::from_path(path),
                content: bytes,
            })
            .collect(),
        golden: golden
            .iter()
            .map(|bytes| ("out", bytes.as_slice()))
            .collect(),
        consumed_downstream: BTreeSet::from(["out"]),
        subject: entry.subject.as_deref(),
        self_score: None,
        previous: None,
    };
    audit(&input).expect("one artifact declared")
}

fn band(composite: f64) -> &'static str {
    if composite <= JUNK_MAX {
        "≤ 3"
    } else if composite < GOOD_MIN {
        "3–8"
    } else {
        "≥ 8"
    }
}

#[test]
fn corpus_scores_land_in_their_bands() {
    let manifest: Vec<Entry> =
        serde_json::from_slice(&read("manifest.json")).expect("manifest.json parses");
    let count = |label| manifest.iter().filter(|e| e.label == label).count();
    assert!(
        manifest.len() >= 30,
        "the corpus has {} artifacts",
        manifest.len()
    );
    assert!(count(Label::Junk) >= 10 && count(Label::Weak) >= 5 && count(Label::Good) >= 10);

    let mut misses = Vec::new();
    let mut table: BTreeMap<(Label, &str), usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for entry in &manifest {
        let report = audit_entry(entry);
        assert_well_formed(&report);
        let composite = report.composite;
        let in_band = match entry.label {
            Label::Junk => composite <= JUNK_MAX,
            Label::Weak => composite > JUNK_MAX && composite < GOOD_MIN,
            Label::Good => composite >= GOOD_MIN,
        };
        *table.entry((entry.label, band(composite))).or_default() += 1;
        let line = format!(
            "{:>5} {:<4} {:<44} {}",
            report.badge,
            format!("{:?}", entry.label).to_lowercase(),
            entry.file,
            report.summary_line()
        );
        if !in_band {
            misses.push(format!("{line}\n      ({})", entry.kind));
        }
        lines.push(line);
    }
    // `cargo test -p factory-audit corpus -- --nocapture` prints the scores
    // and the confusion table that docs/audit.md publishes.
    println!("{}", lines.join("\n"));
    println!("\n| label | ≤ 3 | 3–8 | ≥ 8 |\n|---|---|---|---|");
    for label in [Label::Junk, Label::Weak, Label::Good] {
        let cell = |band| table.get(&(label, band)).copied().unwrap_or(0);
        println!(
            "| {} | {} | {} | {} |",
            format!("{label:?}").to_lowercase(),
            cell("≤ 3"),
            cell("3–8"),
            cell("≥ 8")
        );
    }
    assert!(
        misses.is_empty(),
        "{} of {} corpus artifacts outside their band:\n{}",
        misses.len(),
        manifest.len(),
        misses.join("\n")
    );
}
