//! Read-only views of runs for the terminal.

use std::fmt::Write;

use anyhow::{Result, bail};
use factory_core::run::{Attempt, AttemptOutcome, BlockStatus, Millis, RunDoc, format_utc};
use factory_store::Store;

use crate::user_error;

pub async fn runs(store: &dyn Store, limit: u32) -> Result<()> {
    let runs = store.list_runs(limit).await?;
    if runs.is_empty() {
        println!("no runs yet: start one with `factory run TEMPLATE`");
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<8}  CREATED",
        "RUN", "TEMPLATE", "STATUS"
    );
    for run in runs {
        println!(
            "{:<36}  {:<20}  {:<8}  {}",
            run.run_id,
            run.template_id,
            run.status,
            format_utc(run.created_at)
        );
    }
    Ok(())
}

pub async fn status(store: &dyn Store, run: &str, json: bool) -> Result<()> {
    let run_id = store.resolve_run_id(run).await?;
    let stored = store.load_run(&run_id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stored.doc)?);
    } else {
        print!(
            "{}",
            summary(
                &stored.doc,
                &template_order(&stored.template_json, &stored.doc)
            )
        );
    }
    Ok(())
}

/// Blocks in the given order (template order), then any the order misses.
fn ordered_blocks<'a>(
    doc: &'a RunDoc,
    order: &[String],
) -> Vec<(&'a String, &'a factory_core::run::BlockState)> {
    let mut blocks: Vec<_> = order
        .iter()
        .filter_map(|id| doc.blocks.get_key_value(id))
        .collect();
    for (id, state) in &doc.blocks {
        if !order.contains(id) {
            blocks.push((id, state));
        }
    }
    blocks
}

/// Block ids in topological order, from the template stored with the run
/// and the instances its fan-out blocks made (each group after its own).
pub fn template_order(template_json: &str, doc: &RunDoc) -> Vec<String> {
    match factory_core::validate_str(template_json).pipeline {
        Some(base) => {
            let pipeline = base.for_run(doc).unwrap_or(base);
            pipeline
                .topo_order()
                .iter()
                .map(|&i| pipeline.blocks()[i].id.clone())
                .collect()
        }
        None => Vec::new(),
    }
}

/// The run document as a table, blocks in the given (template) order.
pub fn summary(doc: &RunDoc, template_order: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}  template {} v{}  status {}",
        doc.run_id,
        doc.template_id,
        doc.template_version,
        doc.status.as_str().to_uppercase()
    );
    let counts: Vec<String> = doc
        .status_counts()
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let _ = writeln!(out, "blocks: {}", counts.join(", "));
    // Wide enough for the longest id (an instance's can be long).
    let width = doc
        .blocks
        .keys()
        .map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(28, 72);
    let _ = writeln!(
        out,
        "{:<width$} {:<8} {:>3} {:>7} {:>6} {:>9}  NOTE",
        "BLOCK", "STATUS", "TRY", "SCORE", "AUDIT", "TIME"
    );
    for (id, state) in ordered_blocks(doc, template_order) {
        let duration = match (state.started_at, state.ended_at) {
            (Some(start), Some(end)) if end >= start => format_duration(end - start),
            (Some(_), None) if state.status == BlockStatus::Running => "running".to_string(),
            _ => String::new(),
        };
        let mut note = state.error.clone().unwrap_or_default();
        if state.status == BlockStatus::Waiting {
            note = format!(
                "waiting at {} gate",
                state.gate.map_or("a", |g| match g {
                    factory_core::run::GatePhase::Before => "the before",
                    factory_core::run::GatePhase::After => "the after",
                })
            );
        }
        if let Some(from) = state
            .history
            .last()
            .and_then(|a| a.report.as_ref()?.reused.as_ref())
        {
            note = format!(
                "{note} [reused: run {} attempt {}]",
                from.run_id, from.attempt
            )
            .trim()
            .to_string();
        }
        if let Some(keys) = &state.instances {
            let done = keys
                .iter()
                .filter(|k| {
                    doc.blocks
                        .get(&factory_core::run::instance_id(id, k))
                        .is_some_and(|s| s.status == BlockStatus::Done)
                })
                .count();
            note = format!("{note} [fan-out: {done} of {} instances done]", keys.len())
                .trim()
                .to_string();
        }
        if !state.left_out.is_empty() {
            let left: Vec<String> = state
                .left_out
                .iter()
                .map(|l| format!("{} ({:.1} over {})", l.key, l.mean, l.count))
                .collect();
            note = format!("{note} [left out by past ratings: {}]", left.join(", "))
                .trim()
                .to_string();
        }
        if !state.dropped && state.instance.as_ref().is_some_and(|i| i.review) {
            note = format!("{note} [past ratings ask for review]")
                .trim()
                .to_string();
        }
        if state.dropped {
            note = format!("{note} [dropped: its group's list no longer names it]")
                .trim()
                .to_string();
        }
        if state.review_flag {
            note = format!("{note} [review flagged]").trim().to_string();
        }
        if state.audit_flagged {
            note = format!("{note} [audit below threshold]").trim().to_string();
        }
        let _ = writeln!(
            out,
            "{:<width$} {:<8} {:>3} {:>7} {:>6} {:>9}  {}",
            id,
            state.status.as_str(),
            state.attempts,
            state.score.map(|s| format!("{s:.1}")).unwrap_or_default(),
            state
                .latest_audit()
                .map(|a| a.badge.clone())
                .unwrap_or_default(),
            duration,
            one_line(&note, 100)
        );
    }
    let reused = doc
        .blocks
        .values()
        .flat_map(|s| s.history.iter())
        .filter(|a| a.report.as_ref().is_some_and(|r| r.reused.is_some()))
        .count();
    if reused > 0 {
        let _ = writeln!(
            out,
            "memo: {reused} attempt{} reused the outputs of an earlier accepted attempt (nothing ran, no call made)",
            if reused == 1 { "" } else { "s" }
        );
    }
    let calls: Vec<&factory_core::run::LlmUsage> = doc
        .blocks
        .values()
        .flat_map(|s| s.history.iter())
        .filter_map(|a| a.report.as_ref()?.llm.as_deref())
        .collect();
    if !calls.is_empty() {
        let sum =
            |f: fn(&factory_core::run::LlmUsage) -> u64| calls.iter().map(|c| f(c)).sum::<u64>();
        let priced: Vec<f64> = calls.iter().filter_map(|c| c.cost_usd).collect();
        let cost = if priced.is_empty() {
            "no price configured".to_string()
        } else {
            let unpriced = calls.len() - priced.len();
            let total: f64 = priced.iter().sum();
            if unpriced == 0 {
                format!("${total:.4}")
            } else {
                format!("${total:.4} (+{unpriced} attempts without a price)")
            }
        };
        let estimated = calls.iter().filter(|c| c.estimated).count();
        let failed = calls.iter().filter(|c| c.error.is_some()).count();
        let _ = writeln!(
            out,
            "llm: {} attempts, {} input tokens ({} cache reads, {} cache writes), {} output tokens, {cost}{}{}",
            calls.len(),
            sum(|c| c.input_tokens),
            sum(|c| c.cache_read_tokens),
            sum(|c| c.cache_write_tokens),
            sum(|c| c.output_tokens),
            match estimated {
                0 => String::new(),
                n if n == calls.len() => {
                    "; tokens estimated (the server reported no usage)".to_string()
                }
                n => format!("; tokens of {n} attempts estimated (the server reported no usage)"),
            },
            match failed {
                0 => String::new(),
                n => format!(
                    "; {n} attempt{} got no reply (see each block's error)",
                    if n == 1 { "" } else { "s" }
                ),
            }
        );
        for (id, state) in ordered_blocks(doc, template_order) {
            let block_calls: Vec<&factory_core::run::LlmUsage> = state
                .history
                .iter()
                .filter_map(|a| a.report.as_ref()?.llm.as_deref())
                .collect();
            if block_calls.is_empty() {
                continue;
            }
            let tokens = |f: fn(&factory_core::run::LlmUsage) -> u64| {
                block_calls.iter().map(|c| f(c)).sum::<u64>()
            };
            let cost: Option<f64> = block_calls.iter().map(|c| c.cost_usd).sum();
            let queued: u64 = block_calls.iter().map(|c| c.queued_ms).sum();
            let _ = writeln!(
                out,
                "  {id:<26} {} attempt{}, {} in / {} out tokens{}{}{}",
                block_calls.len(),
                if block_calls.len() == 1 { "" } else { "s" },
                tokens(|c| c.input_tokens),
                tokens(|c| c.output_tokens),
                if block_calls.iter().any(|c| c.estimated) {
                    " (estimated)"
                } else {
                    ""
                },
                cost.map(|c| format!(", ${c:.4}")).unwrap_or_default(),
                if queued > 0 {
                    format!(
                        ", {} queued for the provider",
                        format_duration(queued as Millis)
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    let audited: Vec<_> = ordered_blocks(doc, template_order)
        .into_iter()
        .filter_map(|(id, state)| state.latest_audit().map(|a| (id, a)))
        .collect();
    if let Some(quality) = doc.quality() {
        let _ = writeln!(
            out,
            "audit: run composite {:.1} over {} blocks",
            quality.composite, quality.audited_blocks
        );
        for (id, audit) in &audited {
            if let Some(warning) = &audit.calibration_warning {
                let _ = writeln!(out, "  {id}: calibration warning: {warning}");
            }
            if audit.score_inflation {
                let _ = writeln!(
                    out,
                    "  {id}: score inflation: self-score rose while the audit fell"
                );
            }
            let flagged = doc.blocks.get(*id).is_some_and(|s| s.audit_flagged);
            if flagged {
                for suggestion in audit.suggestions.iter().take(5) {
                    // The message starts with the artifact and location.
                    let _ = writeln!(
                        out,
                        "  {id}: [{}] {}",
                        suggestion.priority.as_str(),
                        suggestion.message
                    );
                }
            }
        }
    }
    out
}

pub async fn events(store: &dyn Store, run: &str, json: bool) -> Result<()> {
    let run_id = store.resolve_run_id(run).await?;
    for record in store.events(&run_id, 0).await? {
        if json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            let detail = crate::progress::describe(&record, &run_id).unwrap_or_else(|| {
                record
                    .event
                    .block()
                    .map(|b| format!("{b} ready"))
                    .unwrap_or_default()
            });
            println!(
                "{:>5}  {}  {:<20}  {:<40}  {}",
                record.seq,
                format_utc(record.at),
                record.event.kind(),
                one_line(&record.actor, 40),
                detail.trim()
            );
        }
    }
    Ok(())
}

fn find_attempt<'a>(history: &'a [Attempt], n: u32, block: &str) -> Result<&'a Attempt> {
    match history.iter().find(|a| a.n == n) {
        Some(attempt) => Ok(attempt),
        None => bail!(user_error(format!(
            "block `{block}` has no attempt {n} (attempts: {})",
            history
                .iter()
                .map(|a| a.n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub async fn artifacts(
    store: &dyn Store,
    run: &str,
    block: &str,
    key: Option<&str>,
    attempt: Option<u32>,
    diff: Option<&[u32]>,
) -> Result<()> {
    let run_id = store.resolve_run_id(run).await?;
    let doc = store.load_run(&run_id).await?.doc;
    let Some(state) = doc.blocks.get(block) else {
        bail!(user_error(format!("run {run_id} has no block `{block}`")));
    };
    if let Some([a, b]) = diff {
        let (left, right) = (
            find_attempt(&state.history, *a, block)?,
            find_attempt(&state.history, *b, block)?,
        );
        let empty = Default::default();
        let left_artifacts = left.report.as_ref().map_or(&empty, |r| &r.artifacts);
        let right_artifacts = right.report.as_ref().map_or(&empty, |r| &r.artifacts);
        let mut keys: Vec<&String> = left_artifacts
            .keys()
            .chain(right_artifacts.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for artifact_key in keys {
            if key.is_some_and(|k| k != artifact_key) {
                continue;
            }
            let read = async |r: Option<&factory_core::run::ArtifactRef>| -> Result<String> {
                Ok(match r {
                    Some(r) if r.format.is_media() => format!(
                        "{} sha256:{}\n",
                        factory_runtime::text_for_reader(r.format, &store.get_blob(&r.hash).await?),
                        r.hash
                    ),
                    Some(r) => {
                        factory_runtime::text_for_reader(r.format, &store.get_blob(&r.hash).await?)
                    }
                    None => String::new(),
                })
            };
            let old = read(left_artifacts.get(artifact_key)).await?;
            let new = read(right_artifacts.get(artifact_key)).await?;
            let diff = similar::TextDiff::from_lines(&old, &new);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("{artifact_key} (attempt {a})"),
                    &format!("{artifact_key} (attempt {b})"),
                )
                .to_string();
            if text.is_empty() {
                println!("{artifact_key}: identical in attempts {a} and {b}");
            } else {
                print!("{text}");
            }
        }
        return Ok(());
    }
    if let Some(key) = key {
        let chosen = match attempt {
            Some(n) => find_attempt(&state.history, n, block)?,
            None => match state.last_success() {
                Some(a) => a,
                None => bail!(user_error(format!(
                    "block `{block}` has no successful attempt yet; pick one with --attempt"
                ))),
            },
        };
        let Some(artifact) = chosen.report.as_ref().and_then(|r| r.artifacts.get(key)) else {
            bail!(user_error(format!(
                "attempt {} of `{block}` has no artifact `{key}`",
                chosen.n
            )));
        };
        let bytes = store.get_blob(&artifact.hash).await?;
        use std::io::Write as _;
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    if state.history.is_empty() {
        println!("block `{block}` has not run yet");
    }
    for attempt in &state.history {
        let outcome = attempt
            .outcome
            .map(|o| {
                serde_json::to_string(&o)
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_else(|| "running".to_string());
        let marker = if attempt.outcome == Some(AttemptOutcome::Succeeded) {
            "✔"
        } else {
            " "
        };
        println!(
            "{marker} attempt {} — {outcome} — {}",
            attempt.n,
            format_utc(attempt.started_at)
        );
        if let Some(report) = &attempt.report {
            for (key, artifact) in &report.artifacts {
                println!(
                    "    {key:<24} {:<28} {:>9} B  sha256:{}{}",
                    artifact.path,
                    artifact.size,
                    &artifact.hash[..12],
                    artifact
                        .media
                        .as_ref()
                        .map(|m| format!("  ({})", m.summary()))
                        .unwrap_or_default()
                );
            }
            if !report.metrics.is_empty() {
                println!("    metrics: {}", serde_json::to_string(&report.metrics)?);
            }
            if let Some(error) = &report.error {
                println!("    error: {}", one_line(error, 160));
            }
        }
    }
    Ok(())
}

pub async fn logs(store: &dyn Store, run: &str, block: &str, attempt: Option<u32>) -> Result<()> {
    let run_id = store.resolve_run_id(run).await?;
    let doc = store.load_run(&run_id).await?.doc;
    let Some(state) = doc.blocks.get(block) else {
        bail!(user_error(format!("run {run_id} has no block `{block}`")));
    };
    let chosen = match attempt {
        Some(n) => find_attempt(&state.history, n, block)?,
        None => match state.history.last() {
            Some(a) => a,
            None => bail!(user_error(format!("block `{block}` has not run yet"))),
        },
    };
    let report = chosen.report.clone().unwrap_or_default();
    for (name, log) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        println!("── {name} (attempt {}) ──", chosen.n);
        if let Some(log) = log {
            if log.truncated {
                println!("[only the last {} bytes were kept]", log.size);
            }
            print!(
                "{}",
                String::from_utf8_lossy(&store.get_blob(&log.hash).await?)
            );
        }
    }
    Ok(())
}

fn one_line(text: &str, max: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line
    }
}

fn format_duration(ms: Millis) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The convergence table as text (seed `002`'s layout).
pub fn convergence(table: &factory_core::feedback::Convergence) -> String {
    use factory_core::feedback::VersionStatus;
    use std::fmt::Write as _;
    let percent = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}%"));
    let mut out = format!("convergence of run {}\n", table.run_id);
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>11} {:>10} {:>8} {:>5}  status",
        "version", "auto score", "expert rate", "extraction", "critical", "high"
    );
    for row in &table.rows {
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>11} {:>10} {:>8} {:>5}  {}",
            format!("v{}", row.version),
            percent(row.auto_score),
            percent(row.approval),
            percent(row.accuracy),
            row.critical,
            row.high,
            match row.status {
                VersionStatus::Superseded => "superseded",
                VersionStatus::Current => "current",
                VersionStatus::ReadyToShip => "ready to ship",
            }
        );
    }
    if table.ready_to_ship {
        out.push_str("ready to ship\n");
    } else {
        out.push_str("not ready to ship:\n");
        for reason in &table.unmet {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    out
}

/// Ratings as text: for a run, each rating; for a template (`summarize`),
/// one line per block, perspective and aggregate key, as a new run would
/// read them.
/// A run's gaps, open ones first, most severe first.
pub fn gaps(doc: &factory_core::run::RunDoc) -> String {
    use factory_core::gaps::GapStatus;
    use std::fmt::Write as _;
    if doc.gaps.is_empty() {
        return "no gaps: no block of this run declares `outputs.gaps`, or none has succeeded yet\n"
            .to_string();
    }
    let mut gaps: Vec<_> = doc.gaps.values().collect();
    gaps.sort_by_key(|g| {
        (
            g.status != GapStatus::Open,
            factory_core::gaps::severity_rank(&g.gap.severity),
            g.gap.id.clone(),
        )
    });
    let open = gaps.iter().filter(|g| g.status == GapStatus::Open).count();
    let mut out = format!("{} gaps, {open} open\n", gaps.len());
    for g in gaps {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:<8} {}",
            g.gap.id,
            g.status.as_str(),
            g.gap.severity,
            g.gap.description
        );
        let whose = match (g.status, &g.by) {
            (GapStatus::Open, None) => format!("found by {} (attempt {})", g.source, g.attempt),
            (GapStatus::Open, Some(by)) => format!("reopened by {by}"),
            (GapStatus::Addressed, by) => format!("addressed by {}", by.as_deref().unwrap_or("?")),
            (GapStatus::Accepted, by) => format!("accepted by {}", by.as_deref().unwrap_or("?")),
        };
        let reason = if g.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", g.reason)
        };
        let _ = writeln!(out, "           {whose}{reason}");
    }
    out
}

pub fn ratings(entries: &[factory_core::lens::RatingEntry], summarize: bool) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no ratings yet (rate a done perspective or aggregate: factory rate RUN BLOCK --score 1-5)\n");
        return out;
    }
    let output = |block: &str, perspective: Option<&str>| match perspective {
        Some(p) => format!("{block}[{p}]"),
        None => block.to_string(),
    };
    if summarize {
        let _ = writeln!(
            out,
            "{:<36} {:>7} {:>5}  {:<28} latest comment",
            "output", "ratings", "mean", "aggregate key"
        );
        for s in factory_core::lens::summaries(entries) {
            let latest = s.comments.first().map_or(String::new(), |c| {
                format!("{}/5 \"{}\"", c.score, first_line(&c.comment, 60))
            });
            let _ = writeln!(
                out,
                "{:<36} {:>7} {:>5.2}  {:<28} {latest}",
                output(&s.block, s.perspective.as_deref()),
                s.count,
                s.mean,
                if s.aggregate_key.is_empty() {
                    "-"
                } else {
                    &s.aggregate_key
                },
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<36} {:>5}  {:<20} {:<20} comment",
        "output", "score", "by", "at"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<36} {:>3}/5  {:<20} {:<20} {}",
            output(&e.rating.block, e.rating.perspective.as_deref()),
            e.rating.score,
            e.by,
            format_utc(e.at),
            first_line(&e.rating.comment, 80)
        );
    }
    out
}

/// `text` on one line, without control characters (a comment is anyone's
/// text: no escape sequence of it reaches the terminal), cut at `max`.
fn first_line(text: &str, max: usize) -> String {
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line
    }
}

/// `factory notifications`: one line each, or one JSON object per line.
pub fn notifications(rows: &[factory_store::Notification], json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if rows.is_empty() && !json {
        writeln!(out, "no notifications")?;
    }
    for n in rows {
        if json {
            writeln!(out, "{}", serde_json::to_string(n)?)?;
            continue;
        }
        let state = match (n.status, n.delivered_at) {
            (factory_core::notify::NotificationStatus::Delivered, Some(at)) => {
                format!("delivered {}", factory_core::run::format_utc(at))
            }
            (factory_core::notify::NotificationStatus::Pending, _) if n.attempts > 0 => format!(
                "pending, next try {}",
                factory_core::run::format_utc(n.next_at)
            ),
            (status, _) => status.as_str().to_string(),
        };
        writeln!(
            out,
            "{}  {}  {:<18} {:<10} {} ({}; {})",
            n.id,
            factory_core::run::format_utc(n.created_at),
            n.occasion.as_str(),
            n.channel,
            n.subject,
            state,
            if n.attempts == 1 {
                "1 try".to_string()
            } else {
                format!("{} tries", n.attempts)
            },
        )?;
        if let Some(error) = &n.last_error {
            writeln!(out, "    last error: {error}")?;
        }
    }
    Ok(())
}
