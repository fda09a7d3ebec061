//! `factory bench`: the engine's cost on one run of no-op blocks of a given
//! shape and size, end to end on a real store. The scale issue's figures
//! (cost per block as a run grows, run document size, peak memory) come from
//! here, so a change can be measured against the same command before it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use factory_core::transitions::RunRequest;
use factory_engine::{Engine, EngineConfig, Outcome, fixtures};
use serde_json::json;

use crate::args::BenchArgs;
use crate::user_error;

pub async fn run(args: BenchArgs) -> Result<std::process::ExitCode> {
    let source = match args.shape.as_str() {
        "chain" if args.blocks >= 1 => fixtures::chain(args.blocks),
        "fan" if args.blocks >= 3 => fixtures::fan_out(args.blocks - 2),
        "chain" | "fan" => {
            return Err(user_error(format!(
                "--blocks {} is too few for a {} (a chain needs 1, a fan 3)",
                args.blocks, args.shape
            )));
        }
        other => {
            return Err(user_error(format!(
                "--shape `{other}`: use `chain` or `fan`"
            )));
        }
    };
    let scratch = std::env::temp_dir().join(format!("factory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let url = match &args.store {
        Some(url) => url.clone(),
        None => scratch.join("bench.db").to_string_lossy().into_owned(),
    };
    let store = factory_store::open(&url)
        .await
        .with_context(|| format!("cannot open the store `{url}`"))?;
    let engine = Engine::new(
        Arc::from(store),
        EngineConfig {
            work_root: scratch.join("work"),
            actor: "bench".to_string(),
            worker_slots: args.slots,
            ..EngineConfig::default()
        },
    );

    let started = Instant::now();
    let doc = engine
        .create_run(&source, None, RunRequest::default())
        .await?;
    let (outcome, doc) = engine.drive(&doc.run_id).await?;
    let wall = started.elapsed();
    if outcome != Outcome::Done {
        bail!("the bench run ended {outcome:?}, not done");
    }
    // The run's peak, before this command reads the document and the log
    // back to report their size.
    let peak_rss_kib = peak_rss_kib();
    let document_bytes = engine.store().load_run_json(&doc.run_id).await?.len();
    let events = doc.seq;
    let _ = std::fs::remove_dir_all(&scratch);

    let per_block_ms = wall.as_secs_f64() * 1000.0 / args.blocks as f64;
    if args.json {
        println!(
            "{}",
            json!({
                "shape": args.shape,
                "blocks": args.blocks,
                "store": if args.store.is_some() { "given" } else { "sqlite" },
                "slots": args.slots,
                "wall_ms": (wall.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                "per_block_ms": (per_block_ms * 1000.0).round() / 1000.0,
                "blocks_per_s": (args.blocks as f64 / wall.as_secs_f64()).round(),
                "events": events,
                "document_bytes": document_bytes,
                "peak_rss_kib": peak_rss_kib,
            })
        );
    } else {
        println!(
            "{} {} blocks: {:.2} s, {:.3} ms per block ({:.0} blocks/s), {events} events, run document {:.1} KB, peak memory {}",
            args.shape,
            args.blocks,
            wall.as_secs_f64(),
            per_block_ms,
            args.blocks as f64 / wall.as_secs_f64(),
            document_bytes as f64 / 1024.0,
            peak_rss_kib.map_or("unknown".to_string(), |kib| format!(
                "{:.1} MB",
                kib as f64 / 1024.0
            )),
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The process's peak resident memory (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
