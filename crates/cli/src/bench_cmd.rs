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
    if args.shape == "stream" {
        return crate::bench_stream::run(&args).await;
    }
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
                "--shape `{other}`: use `chain`, `fan` or `stream`"
            )));
        }
    };
    let source = if args.sleep_ms > 0 {
        fixtures::sleeping(&source, args.sleep_ms)?
    } else {
        source
    };
    if args.workers > 0 {
        let Some(url) = &args.store else {
            return Err(user_error(
                "--workers needs --store: an empty database the workers share (postgres://…)",
            ));
        };
        return fleet(&args, &source, url).await;
    }
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
    let document_bytes = engine
        .store()
        .load_run_json(&doc.run_id, factory_store::History::All)
        .await?
        .len();
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

/// The run executed by `args.workers` separate `factory worker` processes:
/// wall time from the run's creation to done, the blocks each worker ran,
/// and the checks that make the figure honest — no block started twice (from
/// the event log), every worker exits 0 on SIGTERM.
async fn fleet(args: &BenchArgs, source: &str, url: &str) -> Result<std::process::ExitCode> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let scratch = std::env::temp_dir().join(format!("factory-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let store = factory_store::open(url)
        .await
        .with_context(|| format!("cannot open the store `{url}`"))?;
    if !store.list_runs(1).await?.is_empty() {
        return Err(user_error(format!(
            "--store `{url}` already holds runs; the workers would run them too: give an empty database"
        )));
    }
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let mut child = Command::new(&exe)
            .args(["--db", url, "worker", "--max-concurrency", "0", "--quiet"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--slots")
            .arg(args.slots.to_string())
            .arg("--work-dir")
            .arg(scratch.join(format!("worker-{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start a worker")?;
        // Ready once it says it serves.
        let stderr = child.stderr.take().context("worker stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let banner = lines.next().transpose()?.unwrap_or_default();
        if !banner.starts_with("worker ") {
            // Leave no worker behind, serving the database after we exit.
            for (mut started, ..) in
                workers
                    .drain(..)
                    .chain([(child, String::new(), None, String::new())])
            {
                let _ = started.kill();
                let _ = started.wait();
            }
            bail!("worker {i} did not start: {banner}");
        }
        let owner = banner
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let metrics = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_default()
            .to_string();
        // Keep draining its stderr so it never blocks on a full pipe.
        let tail = std::thread::spawn(move || lines.map_while(|l| l.ok()).collect::<Vec<_>>());
        workers.push((child, owner, Some(tail), metrics));
    }

    let engine = Engine::new(
        Arc::from(store),
        EngineConfig {
            actor: "bench".to_string(),
            max_concurrency: 0,
            ..EngineConfig::default()
        },
    );
    let started = Instant::now();
    let doc = engine
        .create_run(source, None, RunRequest::default())
        .await?;
    let status = loop {
        let runs = engine.store().list_runs(1).await?;
        let status = runs.first().map(|r| r.status.clone()).unwrap_or_default();
        if status != "running" {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            break "still running after 600 s".to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let wall = started.elapsed();

    let conflicts = workers
        .iter()
        .map(|(_, _, _, addr)| scrape(addr, "factory_worker_commit_conflicts_total"))
        .sum::<f64>() as u64;
    let mut exits = Vec::new();
    let mut stderr_tails = Vec::new();
    for (mut child, owner, tail, _) in workers {
        // SIGTERM, as a service manager stops it.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let code = child.wait()?.code();
        let lines = tail.and_then(|t| t.join().ok()).unwrap_or_default();
        exits.push((owner, code));
        stderr_tails.push(lines);
    }
    let events = engine.store().events(&doc.run_id, 0).await?;
    let mut starts: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut by_owner: std::collections::BTreeMap<&str, usize> = Default::default();
    for record in &events {
        if let factory_core::run::Event::BlockStarted { block, owner, .. } = &record.event {
            *starts.entry(block).or_default() += 1;
            *by_owner.entry(owner).or_default() += 1;
        }
    }
    let started_twice = starts.values().filter(|n| **n > 1).count();
    let _ = std::fs::remove_dir_all(&scratch);
    let per_worker: Vec<usize> = exits
        .iter()
        .map(|(owner, _)| by_owner.get(owner.as_str()).copied().unwrap_or(0))
        .collect();
    let blocks_per_s = args.blocks as f64 / wall.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "shape": args.shape,
                "blocks": args.blocks,
                "sleep_ms": args.sleep_ms,
                "workers": args.workers,
                "slots": args.slots,
                "status": status,
                "wall_ms": (wall.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                "blocks_per_s": blocks_per_s.round(),
                "blocks_per_worker": per_worker,
                "started_twice": started_twice,
                "commit_conflicts": conflicts,
                "worker_exit_codes": exits.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "{} {} blocks ({} ms each) by {} workers of {} slots: {} in {:.2} s ({:.0} blocks/s); blocks per worker {:?}; started twice: {started_twice}; commit conflicts: {conflicts}; worker exit codes {:?}",
            args.shape,
            args.blocks,
            args.sleep_ms,
            args.workers,
            args.slots,
            status,
            wall.as_secs_f64(),
            blocks_per_s,
            per_worker,
            exits.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        );
    }
    if status != "done" || started_twice > 0 || exits.iter().any(|(_, c)| *c != Some(0)) {
        for (i, lines) in stderr_tails.iter().enumerate() {
            for line in lines.iter().rev().take(5).rev() {
                eprintln!("worker {i}: {line}");
            }
        }
        bail!("the fleet bench failed its checks (see above)");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One metric's value from a worker's `/metrics` (0 when absent or unreachable).
fn scrape(addr: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process's peak resident memory (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
