//! `factory bench --shape stream`: records through a four-state stream of
//! no-op steps, end to end through a real `factory serve` process on a
//! fresh SQLite file (or `--store`): signed webhook deliveries over
//! loopback (`--connections` keep-alive connections), and the time until
//! every record reached the last state. Reports the intake rate and the
//! end-to-end records per second, and checks none was lost or moved twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use factory_server::signature::HookSecret;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::args::BenchArgs;

const SECRET_ENV: &str = "FACTORY_BENCH_HOOK_SECRET";

/// A stream template: a webhook intake and three no-op stages taking
/// `batch` records at a time.
fn template(batch: usize) -> serde_json::Value {
    let stage = |id: &str, after: &str| {
        json!({
            "id": id, "name": id, "layer": "L1", "type": "build", "runtime": "builtin",
            "lifecycle": {"mode": "daemon"},
            "inputs": {"depends": [{"block": after, "key": "records"}],
                       "config": {"builtin": "noop", "batch": batch}},
            "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}
        })
    };
    json!({
        "id": "bench-stream", "name": "Bench stream", "version": "1",
        "blocks": [
            {"id": "intake", "name": "intake", "layer": "L0", "type": "ingest", "runtime": "builtin",
             "trigger": {"type": "webhook", "secret_env": SECRET_ENV},
             "lifecycle": {"mode": "daemon"},
             "record_state": {"track_per": "id", "states": ["raw", "one", "two", "done"]},
             "inputs": {"config": {"builtin": "noop"}},
             "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]}},
            stage("one", "intake"),
            stage("two", "one"),
            stage("three", "two"),
        ]
    })
}

pub async fn run(args: &BenchArgs) -> Result<std::process::ExitCode> {
    use std::io::BufRead;
    let records = args.records;
    if records == 0 {
        bail!("--records must be at least 1");
    }
    let scratch = std::env::temp_dir().join(format!("factory-bench-stream-{}", std::process::id()));
    let templates = scratch.join("templates");
    std::fs::create_dir_all(&templates)
        .with_context(|| format!("cannot create {}", templates.display()))?;
    std::fs::write(
        templates.join("bench-stream.json"),
        serde_json::to_vec_pretty(&template(args.batch))?,
    )?;
    let url = match &args.store {
        Some(url) => url.clone(),
        None => scratch.join("bench.db").to_string_lossy().into_owned(),
    };
    let store = factory_store::open(&url)
        .await
        .with_context(|| format!("cannot open the store `{url}`"))?;
    if !store
        .list_records(
            &factory_store::RecordFilter {
                template_id: "bench-stream".into(),
                limit: 1,
                ..Default::default()
            },
            0,
        )
        .await?
        .is_empty()
    {
        bail!("--store `{url}` already holds records of bench-stream: give an empty database");
    }
    let secret_text = HookSecret::generate();
    let secret = HookSecret::parse(&secret_text).map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("cannot find this program to start the server")?;
    let mut server = std::process::Command::new(&exe)
        .args([
            "--db",
            &url,
            "serve",
            "--no-auth",
            "--addr",
            "127.0.0.1:0",
            "--templates",
        ])
        .arg(&templates)
        .arg("--work-dir")
        .arg(scratch.join("work"))
        .env(SECRET_ENV, &secret_text)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start the server")?;
    let stdout = server.stdout.take().context("server stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let banner = lines.next().transpose()?.unwrap_or_default();
    let Some(addr) = banner
        .strip_prefix("listening on http://")
        .map(str::to_string)
    else {
        let _ = server.kill();
        bail!("the server did not start: {banner}");
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (addr, secret, next) = (addr.clone(), secret.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            deliver_all(&addr, &secret, &next, records).await
        }));
    }
    let mut refused = 0usize;
    for client in clients {
        refused += client.await??;
    }
    let intake = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let counts = store
            .count_records("bench-stream", factory_engine::now_ms())
            .await?;
        let done: u64 = counts
            .iter()
            .filter(|c| c.state == "done")
            .map(|c| c.count)
            .sum();
        if done as usize >= records || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let total: u64 = done.iter().map(|c| c.count).sum();
    let finished: u64 = done
        .iter()
        .filter(|c| c.state == "done")
        .map(|c| c.count)
        .sum();
    // Moved twice would show as more history rows than states walked.
    let sample = store
        .record("bench-stream", "r0", factory_engine::now_ms())
        .await?;
    let moves = sample.map_or(0, |(_, h)| {
        h.iter().filter(|e| e.event.kind() == "moved").count()
    });
    let _ = std::fs::remove_dir_all(&scratch);
    if refused > 0 || total != records as u64 || finished != records as u64 || moves != 3 {
        bail!(
            "{refused} deliveries refused, {total} records stored, {finished} in the last state (of {records}), {moves} moves for r0 (want 3)"
        );
    }
    let intake_rate = records as f64 / intake.as_secs_f64();
    let end_to_end = records as f64 / wall.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "shape": "stream",
                "records": records,
                "batch": args.batch,
                "connections": args.connections,
                "intake_ms": (intake.as_secs_f64() * 1000.0).round(),
                "intake_per_s": intake_rate.round(),
                "wall_ms": (wall.as_secs_f64() * 1000.0).round(),
                "records_per_s": end_to_end.round(),
                "lost": 0,
                "moved_twice": 0,
            })
        );
    } else {
        println!(
            "stream {records} records through 4 states (batch {}): signed webhooks {:.0}/s over {} connections ({:.2} s), end to end {:.0} records/s ({:.2} s); 0 lost, 0 moved twice",
            args.batch,
            intake_rate,
            args.connections,
            intake.as_secs_f64(),
            end_to_end,
            wall.as_secs_f64(),
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Takes record numbers from `next` until all are sent; each delivery is
/// signed with its own webhook-id. Returns how many were not accepted.
async fn deliver_all(
    addr: &str,
    secret: &HookSecret,
    next: &AtomicUsize,
    records: usize,
) -> Result<usize> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut refused = 0;
    let mut line = String::new();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= records {
            return Ok(refused);
        }
        let body = format!("{{\"id\": \"r{n}\", \"n\": {n}}}");
        let id = format!("msg_{n}");
        let timestamp = factory_engine::now_ms() / 1000;
        let signature = secret.sign(&id, timestamp, body.as_bytes());
        let request = format!(
            "POST /api/v1/hooks/bench-stream/intake HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(request.as_bytes()).await?;
        // Status line, headers (for the length), body.
        line.clear();
        read.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 202") {
            refused += 1;
        }
        let mut length = 0usize;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;
    }
}
