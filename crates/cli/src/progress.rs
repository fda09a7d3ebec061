//! Live progress: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use factory_core::run::{Event, EventRecord};
use factory_engine::{Observed, Observer};
use indicatif::{ProgressBar, ProgressStyle};

/// The bar on the terminal, if one is drawn: one per process, so the
/// command can take it down (see [`clear`]) before it prints its summary.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Takes the bar off the terminal, whatever state the run ended in, so no
/// stale `0/N` line stays above what the command prints next.
pub fn clear() {
    if let Ok(mut guard) = BAR.lock()
        && let Some(bar) = guard.take()
    {
        bar.finish_and_clear();
    }
}

pub fn observer(quiet: bool) -> Option<Observer> {
    if quiet {
        return None;
    }
    let interactive = std::io::stderr().is_terminal();
    Some(Arc::new(move |record: &EventRecord, run: &Observed<'_>| {
        let doc = run.doc;
        let line = describe(record, &doc.run_id);
        if !interactive {
            if let Some(line) = line {
                eprintln!("{line}");
            }
            return;
        }
        let Ok(mut guard) = BAR.lock() else { return };
        let bar = guard.get_or_insert_with(|| {
            let bar = ProgressBar::new(doc.blocks.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} blocks done  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        if let Some(line) = line {
            bar.println(line);
        }
        // A fan-out adds blocks as the run goes.
        bar.set_length(run.counts.total() as u64);
        bar.set_position(run.counts.get(factory_core::BlockStatus::Done) as u64);
        let running = run.counts.get(factory_core::BlockStatus::Running);
        bar.set_message(match running {
            0 => String::new(),
            // Names only while they fit on the line (and finding them is cheap).
            1..=4 if doc.blocks.len() <= 500 => {
                let names: Vec<&str> = doc
                    .blocks
                    .iter()
                    .filter(|(_, s)| s.status == factory_core::BlockStatus::Running)
                    .map(|(id, _)| id.as_str())
                    .collect();
                format!("running: {}", names.join(", "))
            }
            n => format!("{n} running"),
        });
        if doc.status.is_terminal() || doc.status == factory_core::RunStatus::Waiting {
            // Taken down and dropped: a later event draws a new one.
            if let Some(bar) = guard.take() {
                bar.finish_and_clear();
            }
        }
    }))
}

/// One line per event worth a person's attention; hints name `run_id`.
pub fn describe(record: &EventRecord, run_id: &str) -> Option<String> {
    let text = match &record.event {
        Event::RunCreated {
            run_id,
            template_id,
            ..
        } => format!("created run {run_id} of {template_id}"),
        Event::BlockStarted { block, attempt, .. } => {
            format!("▶ {block} started (attempt {attempt})")
        }
        Event::AttemptFinished {
            block,
            attempt,
            outcome,
            score,
            report,
        } => {
            let score = score.map(|s| format!(", score {s}")).unwrap_or_default();
            let audit = report
                .audit
                .as_ref()
                .map(|a| format!(", audit {}", a.summary_line()))
                .unwrap_or_default();
            format!(
                "  {block} attempt {attempt}: {}{score}{audit}",
                serde_json::to_string(outcome)
                    .unwrap_or_default()
                    .trim_matches('"')
            )
        }
        Event::BlockDone { block } => format!("✔ {block} done"),
        Event::BlockFailed { block, error } => format!("✘ {block} failed: {error}"),
        Event::RetryScheduled { block, reason, .. } => format!("↻ {block}: {reason}"),
        Event::BlockWaiting { block, phase } => format!(
            "⏸ {block} waits for approval ({} gate): factory approve {run_id} {block}",
            serde_json::to_string(phase)
                .unwrap_or_default()
                .trim_matches('"')
        ),
        Event::BlockBlocked { block, because } => format!("⊘ {block} blocked by {because}"),
        Event::GateApproved { block, .. } => format!("✔ {block} approved by {}", record.actor),
        Event::GateRejected {
            block, feedback, ..
        } => format!("✘ {block} rejected by {}: {feedback}", record.actor),
        Event::AttemptAbandoned {
            block,
            attempt,
            reason,
        } => format!("↺ {block} attempt {attempt} abandoned: {reason}"),
        Event::AuditFlagged {
            block,
            composite,
            threshold,
        } => format!(
            "⚑ {block} audit {composite:.1} is below its threshold {threshold:.1}: see `factory status {run_id}` for the fix suggestions"
        ),
        Event::ReviewFlagged { block } => format!("⚑ {block} flagged for optional review (guided)"),
        Event::BlockReset { block, reason, .. } => format!("↺ {block} reset: {reason}"),
        Event::BlockExpanded {
            block,
            instances,
            left_out,
        } => {
            let shown: Vec<&str> = instances.iter().take(6).map(|i| i.key.as_str()).collect();
            let more = instances.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let left_out = if left_out.is_empty() {
                String::new()
            } else {
                let left: Vec<String> = left_out
                    .iter()
                    .map(|l| format!("{} (rated {:.1} over {})", l.key, l.mean, l.count))
                    .collect();
                format!("; past ratings left out {}", left.join(", "))
            };
            format!(
                "⑃ {block} fans out into {} instances: {}{more}{left_out}",
                instances.len(),
                shown.join(", ")
            )
        }
        Event::GroupDone { block, reason } => format!("✔ {block} done ({reason})"),
        Event::AutonomyChanged { block, autonomy } => {
            format!("{block} autonomy is now {} for this run", autonomy.as_str())
        }
        Event::RunStatusChanged { status } => format!("run is {}", status.as_str()),
        Event::CorrectionsRouted {
            from, to, reason, ..
        } => format!("⟲ corrections routed, v{from} → v{to}: {reason}"),
        Event::FeedbackSubmitted {
            source,
            tester,
            tester_role,
            verdicts,
            ..
        } => format!("✎ {source} review from {tester} ({tester_role}): {verdicts} verdicts"),
        Event::ItemChanged {
            source_key,
            from,
            to,
            reason,
            ..
        } => format!("  item {source_key}: {from} → {to} ({reason})"),
        Event::CorrectionsIngested {
            source, by_skill, ..
        } => format!(
            "✎ {source} announced items for {}",
            by_skill.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Event::GapsFound { block, gaps, .. } => format!(
            "◌ {block} found {} gap{} (`factory gaps {run_id}`)",
            gaps.len(),
            if gaps.len() == 1 { "" } else { "s" }
        ),
        Event::GapChanged {
            id,
            status,
            by,
            reason,
        } => format!("◌ gap {id} {} by {by}: {reason}", status.as_str()),
        Event::BlockReady { .. } => return None,
    };
    Some(text)
}
