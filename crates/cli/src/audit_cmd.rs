//! `factory audit`: the D1–D5 audit on files, without a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use factory_audit::{Artifact, AuditInput, AuditReport, Format, Upstream};

use crate::args::AuditArgs;
use crate::user_error;

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| user_error(format!("cannot read {what} {}: {error}", path.display())))
}

fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| name_of(path), |n| n.to_string_lossy().into_owned())
}

pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let contents: Vec<(String, String, Vec<u8>)> = args
        .files
        .iter()
        .map(|path| Ok((stem_of(path), name_of(path), read(path, "artifact")?)))
        .collect::<Result<_>>()?;
    let upstream: Vec<(String, Vec<u8>, Format)> = args
        .upstream
        .iter()
        .map(|path| {
            Ok((
                stem_of(path),
                read(path, "upstream file")?,
                Format::from_path(&name_of(path)),
            ))
        })
        .collect::<Result<_>>()?;
    // A golden example pairs with the artifact of the same file name; a single
    // golden with a single artifact pairs regardless of names.
    let mut golden: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for path in &args.golden {
        let bytes = read(path, "golden example")?;
        let key = contents
            .iter()
            .find(|(_, name, _)| *name == name_of(path))
            .map(|(key, _, _)| key.clone())
            .or_else(|| {
                (contents.len() == 1 && args.golden.len() == 1).then(|| contents[0].0.clone())
            });
        match key {
            Some(key) => {
                golden.insert(key, bytes);
            }
            None => {
                return Err(user_error(format!(
                    "golden example {} matches no artifact by file name; name it like the artifact it describes",
                    path.display()
                )));
            }
        }
    }

    let Some(report) = factory_audit::audit(&AuditInput {
        block: "audit",
        artifacts: contents
            .iter()
            .map(|(key, name, bytes)| Artifact {
                key,
                path: name,
                format: Format::from_path(name),
                content: Some(bytes),
            })
            .collect(),
        upstream: upstream
            .iter()
            .map(|(key, bytes, format)| Upstream {
                block: "upstream",
                key,
                format: *format,
                content: bytes,
            })
            .collect(),
        golden: golden
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect(),
        consumed_downstream: BTreeSet::new(),
        subject: args.subject.as_deref(),
        self_score: args.self_score,
        previous: None,
    }) else {
        return Err(user_error("no artifact to audit: name at least one file"));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let names: Vec<String> = contents.iter().map(|(_, name, _)| name.clone()).collect();
        print!("{}", render(&report, &names.join(", ")));
        if args.explain {
            print!("\n{}", factory_audit::explain(&report));
        }
    }
    Ok(match args.min {
        Some(min) if report.composite < min => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// The report for a terminal: badge, bars per dimension, checks, suggestions.
pub fn render(report: &AuditReport, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {title}", report.badge);
    for ((_, dimension), (title, (_, weight))) in report.dimensions().into_iter().zip(
        factory_audit::DIMENSION_NAMES
            .iter()
            .zip(factory_audit::WEIGHTS),
    ) {
        let filled = dimension
            .score
            .map_or(0, |score| score.round().clamp(0.0, 10.0) as usize);
        let bar = match dimension.score {
            Some(_) => format!("{}{}", "█".repeat(filled), "░".repeat(10 - filled)),
            None => "not judged".to_string(),
        };
        let _ = writeln!(
            out,
            "  {title:<25} {:>4} {bar}  ({:.0}%)",
            dimension.display(),
            weight * 100.0
        );
    }
    if let Some(ceiling) = report.ceiling.as_ref().filter(|c| c.binding) {
        let _ = writeln!(
            out,
            "  capped at {:.1} (from {:.1}): {}",
            ceiling.score, ceiling.uncapped, ceiling.reason
        );
    }
    if report.low_evidence {
        let _ = writeln!(
            out,
            "  low evidence: only {:.0}% of the weights could be judged",
            report.judged_weight * 100.0
        );
    }
    let _ = writeln!(out, "  weakest: {}", report.weakest);
    if let Some(warning) = &report.calibration_warning {
        let _ = writeln!(out, "  calibration warning: {warning}");
    }
    if report.score_inflation {
        let _ = writeln!(
            out,
            "  score inflation: the self-score rose while the audit fell"
        );
    }
    if report.suggestions.is_empty() {
        let _ = writeln!(out, "no fix suggestions");
    } else {
        let _ = writeln!(out, "fix suggestions (most important first):");
        for suggestion in &report.suggestions {
            let priority = suggestion.priority.as_str();
            // The message starts with the artifact and the location already.
            let _ = writeln!(
                out,
                "  [{priority}] {}: {}",
                suggestion.dimension, suggestion.message
            );
        }
    }
    out
}
