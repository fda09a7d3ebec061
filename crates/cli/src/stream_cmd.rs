//! `factory records`, `factory feed` and `factory hook`: watching a
//! stream template's records, retrying a failed one, reading the event
//! feed, and signing deliveries for testing.

use std::io::Read as _;

use anyhow::{Context, bail};
use factory_core::run::format_utc;
use factory_engine::Engine;
use factory_server::signature::HookSecret;
use factory_store::RecordFilter;

use crate::args::HookCommand;

pub struct RecordsQuery {
    pub template: String,
    pub state: Option<String>,
    pub status: Option<String>,
    pub key: Option<String>,
    pub retry: Option<String>,
    /// The record's file, the template's file, the manual intake block.
    pub add: Option<(std::path::PathBuf, std::path::PathBuf, Option<String>)>,
    pub limit: u32,
    pub json: bool,
}

pub async fn records(engine: &Engine, actor: &str, q: RecordsQuery) -> anyhow::Result<()> {
    if let Some((file, template_file, block)) = &q.add {
        let source = std::fs::read_to_string(template_file)
            .with_context(|| format!("cannot read {}", template_file.display()))?;
        let pipeline = factory_engine::load_pipeline(&source)
            .with_context(|| format!("{} is not a valid template", template_file.display()))?;
        if pipeline.template().id != q.template {
            bail!(
                "{} is template `{}`, not `{}`",
                template_file.display(),
                pipeline.template().id,
                q.template
            );
        }
        let text = read_input(file)?;
        let payload: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let added = engine
            .add_record(actor, &pipeline, block.as_deref(), &payload)
            .await?;
        match added.receipt {
            factory_store::Receipt::Created => println!(
                "record `{}` added to `{}` in state `{}`; a running `factory serve` takes it on",
                added.key, q.template, added.state
            ),
            _ => println!(
                "record `{}` of `{}` exists: nothing changed",
                added.key, q.template
            ),
        }
        return Ok(());
    }
    if let Some(key) = &q.retry {
        engine.retry_record(actor, &q.template, key).await?;
        println!(
            "record `{key}` of `{}` waits for its stage again",
            q.template
        );
        return Ok(());
    }
    if let Some(key) = &q.key {
        let (record, history) = engine.record(&q.template, key).await?;
        if q.json {
            let body = serde_json::json!({ "record": record, "history": history });
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(());
        }
        println!(
            "record {} of {}: {} ({})",
            record.key, record.template_id, record.state, record.status
        );
        if let Some(error) = &record.error {
            println!("  error after {} attempt(s): {error}", record.attempts);
        }
        for entry in &history {
            println!(
                "  {:>3}  {}  {}",
                entry.seq,
                format_utc(entry.at),
                serde_json::to_string(&entry.event)?
            );
        }
        if let Some(data) = &record.data {
            println!("data:\n{}", serde_json::to_string_pretty(data)?);
        }
        return Ok(());
    }
    if let Some(status) = &q.status
        && factory_core::stream::settle::RecordStatus::parse(status).is_none()
    {
        bail!("--status `{status}` is not one of ready, failed, done");
    }
    let filter = RecordFilter {
        template_id: q.template.clone(),
        state: q.state.clone(),
        status: q.status.clone(),
        limit: q.limit.clamp(1, 10_000),
    };
    let (rows, counts) = engine.records(&filter).await?;
    let firings = engine.firings(&q.template, 5).await?;
    if q.json {
        let body = serde_json::json!({ "template": q.template, "counts": counts, "records": rows, "firings": firings });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    if counts.is_empty() {
        println!(
            "no records of `{}` yet (deliveries go to POST /api/v1/hooks/{}/<intake block> of `factory serve`)",
            q.template, q.template
        );
        return Ok(());
    }
    for f in &firings {
        let what = match (&f.error, f.finished_at) {
            (Some(error), _) => format!("error: {error}"),
            (None, Some(_)) => format!(
                "{} new, {} known{}",
                f.created.unwrap_or(0),
                f.known.unwrap_or(0),
                if f.skipped > 0 {
                    format!(", {} missed ticks skipped", f.skipped)
                } else {
                    String::new()
                }
            ),
            (None, None) => "running (or interrupted)".to_string(),
        };
        println!(
            "fired {} at its {} tick: {what}",
            f.block,
            format_utc(f.tick)
        );
    }
    if !firings.is_empty() {
        println!();
    }
    println!(
        "{:<20} {:<8} {:>8} {:>8}",
        "STATE", "STATUS", "RECORDS", "WORKING"
    );
    for c in &counts {
        println!(
            "{:<20} {:<8} {:>8} {:>8}",
            c.state, c.status, c.count, c.working
        );
    }
    println!();
    println!(
        "{:<32} {:<16} {:<8} {:>8}  {:<19}  ERROR",
        "KEY", "STATE", "STATUS", "ATTEMPTS", "UPDATED"
    );
    for r in &rows {
        let status = if r.working {
            "working"
        } else {
            r.status.as_str()
        };
        println!(
            "{:<32} {:<16} {:<8} {:>8}  {:<19}  {}",
            r.key,
            r.state,
            status,
            r.attempts,
            format_utc(r.updated_at),
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub struct FeedQuery {
    pub name: Option<String>,
    pub template: Option<String>,
    pub run: Option<String>,
    pub limit: u32,
    pub json: bool,
    pub prune_days: Option<u32>,
}

pub async fn feed(engine: &Engine, q: FeedQuery) -> anyhow::Result<()> {
    if let Some(days) = q.prune_days {
        let keep = std::time::Duration::from_secs(u64::from(days) * 86_400);
        let pruned = engine.prune_feed(keep).await?;
        if q.json {
            println!("{}", serde_json::to_string_pretty(&pruned)?);
        } else {
            println!(
                "removed {} events, {} webhook receipts and {} trigger firings older than {days} days",
                pruned.events, pruned.webhook_receipts, pruned.firings
            );
        }
        return Ok(());
    }
    let run = match &q.run {
        Some(run) => Some(engine.store().resolve_run_id(run).await?),
        None => None,
    };
    let filter = factory_store::FeedFilter {
        name: q.name.clone(),
        template_id: q.template.clone(),
        run_id: run,
        before_seq: None,
        limit: q.limit.clamp(1, 10_000),
    };
    let events = engine.feed(&filter).await?;
    let firings = match &q.template {
        Some(template) => engine.firings(template, 10).await?,
        None => Vec::new(),
    };
    if q.json {
        let body = serde_json::json!({ "events": events, "firings": firings });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    for f in &firings {
        let what = match (&f.error, &f.run_id, f.finished_at) {
            (Some(error), _, _) => format!("error: {error}"),
            (None, Some(run), _) => format!("started run {run}"),
            (None, None, Some(_)) => format!(
                "{} new records, {} known",
                f.created.unwrap_or(0),
                f.known.unwrap_or(0)
            ),
            (None, None, None) => "running (or interrupted)".to_string(),
        };
        println!("trigger {} fired ({}): {what}", f.block, f.tick);
    }
    if !firings.is_empty() {
        println!();
    }
    if events.is_empty() {
        println!("no events match");
        return Ok(());
    }
    println!(
        "{:>8}  {:<19}  {:<20} {:<24} FIELDS",
        "SEQ", "AT", "NAME", "TEMPLATE"
    );
    for e in &events {
        let mut fields = e.event.payload.clone();
        fields.remove("template");
        let mut fields = serde_json::to_string(&fields)?;
        if fields.len() > 100 {
            let mut end = 100;
            while !fields.is_char_boundary(end) {
                end -= 1;
            }
            fields.truncate(end);
            fields.push('…');
        }
        println!(
            "{:>8}  {:<19}  {:<20} {:<24} {fields}",
            e.seq,
            format_utc(e.at),
            e.event.name,
            e.event.template_id
        );
    }
    Ok(())
}

pub fn hook(command: HookCommand) -> anyhow::Result<()> {
    match command {
        HookCommand::Secret => {
            println!("{}", HookSecret::generate());
            Ok(())
        }
        HookCommand::Sign {
            body,
            secret_env,
            id,
            timestamp,
            curl,
        } => {
            let text = std::env::var(&secret_env).with_context(|| {
                format!("`{secret_env}` is not set; `factory hook secret` makes a secret")
            })?;
            let secret = HookSecret::parse(&text)
                .map_err(|problem| anyhow::anyhow!("`{secret_env}`: {problem}"))?;
            let bytes = read_input(&body)?;
            let id = id.unwrap_or_else(|| {
                format!("msg_{}_{}", factory_engine::now_ms(), std::process::id())
            });
            let timestamp = timestamp.unwrap_or_else(|| factory_engine::now_ms() / 1000);
            let signature = secret.sign(&id, timestamp, &bytes);
            let headers = [
                ("webhook-id", id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ];
            for (name, value) in headers {
                if curl {
                    // Unquoted, so `$(factory hook sign --curl …)` splits
                    // into curl's arguments (no value has a space).
                    print!("-H {name}:{value} ");
                } else {
                    println!("{name}: {value}");
                }
            }
            if curl {
                println!();
            }
            Ok(())
        }
    }
}

/// A file's bytes, or stdin's for `-`.
fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}
