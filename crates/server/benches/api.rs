//! `cargo bench -p factory-server --bench api`: the server under load on
//! loopback, on a SQLite file, with a clone-factory-shaped run (31 blocks,
//! every block audited).
//!
//! Measures (1) server-side render time of the pipeline page and a block
//! workbench page (sequential requests; loopback HTTP included, so an upper
//! bound), and (2) `GET /api/v1/runs/{id}` throughput and latency under
//! concurrency with `wrk` when it is installed (Debian package `wrk`), or
//! with a small Rust load generator otherwise. Targets: page < 50 ms,
//! ≥ 5,000 requests/s with p99 < 20 ms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factory_core::template::Autonomy;
use factory_core::transitions::RunRequest;
use factory_engine::{Engine, EngineConfig};
use factory_server::ServerConfig;
use factory_server::auth::Role;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn time_page(client: &reqwest::Client, url: &str, token: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let body = response.bytes().await.unwrap();
        assert!(body.len() > 1000);
        times.push(started.elapsed());
    }
    times.sort();
    times
}

fn report(name: &str, times: &[Duration]) {
    println!(
        "{name:<34} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        times.len(),
        percentile(times, 0.5).as_secs_f64() * 1000.0,
        percentile(times, 0.99).as_secs_f64() * 1000.0,
        times.last().unwrap().as_secs_f64() * 1000.0
    );
}

/// A Rust load generator: `connections` tasks issuing GETs for `duration`.
async fn rust_load(url: &str, token: &str, connections: usize, duration: Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let url = url.to_string();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = client.get(&url).bearer_auth(&token).send().await.unwrap();
                let _ = response.bytes().await.unwrap();
                times.push(started.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    println!(
        "GET run document (rust load, {connections} conns): {:.0} requests/s",
        all.len() as f64 / duration.as_secs_f64()
    );
    report("  latency", &all);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bench.db");
        let store: Arc<dyn factory_store::Store> =
            Arc::from(factory_store::open(db.to_str().unwrap()).await.unwrap());
        let config = EngineConfig {
            max_concurrency: 0,
            work_root: dir.path().join("work"),
            ..EngineConfig::default()
        };
        let source = factory_engine::fixtures::clone_factory_noop();
        let pipeline = factory_engine::load_pipeline(&source).unwrap();
        let engine = Engine::new(store.clone(), config.clone());
        let request = RunRequest {
            params: pipeline
                .template()
                .params
                .iter()
                .filter(|(_, spec)| spec.required)
                .map(|(name, _)| (name.clone(), json!("Bench")))
                .collect(),
            overrides: pipeline
                .blocks()
                .iter()
                .map(|b| (b.id.clone(), Autonomy::Auto))
                .collect::<BTreeMap<_, _>>(),
            ..RunRequest::default()
        };
        let doc = engine.create_run(&source, None, request).await.unwrap();
        let (outcome, doc) = engine.drive(&doc.run_id).await.unwrap();
        assert_eq!(outcome, factory_engine::Outcome::Done);
        let (token, _) = factory_server::auth::create_token(
            store.as_ref(),
            "bench",
            Role::Viewer,
            "bench",
            None,
        )
        .await
        .unwrap();
        let server = factory_server::start(
            store.clone(),
            config,
            ServerConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                ..ServerConfig::default()
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::new();
        let run = &doc.run_id;
        println!(
            "run {run}: {} blocks, document {} bytes",
            doc.blocks.len(),
            serde_json::to_vec(&doc).unwrap().len()
        );

        // Warm up, then time the pages.
        time_page(&client, &format!("{base}/runs/{run}"), &token, 20).await;
        let pipeline_page = time_page(&client, &format!("{base}/runs/{run}"), &token, 300).await;
        report("pipeline page (31 blocks)", &pipeline_page);
        let block_page = time_page(
            &client,
            &format!("{base}/runs/{run}/blocks/clone-compiler"),
            &token,
            300,
        )
        .await;
        report("block workbench page", &block_page);
        // A 200-block run (20 rows of 10, wired like a real pipeline): the
        // graph's layout, the timeline and their SVG at size.
        let source = factory_engine::fixtures::layered(20, 10);
        let big = engine
            .create_run(&source, None, RunRequest::default())
            .await
            .unwrap();
        // Run to the end, so the page draws 200 blocks and 200 timeline rows.
        let (outcome, big) = engine.drive(&big.run_id).await.unwrap();
        assert_eq!(outcome, factory_engine::Outcome::Done);
        let big_url = format!("{base}/runs/{}", big.run_id);
        let size = |encoding: &'static str| {
            let request = client
                .get(&big_url)
                .bearer_auth(&token)
                .header("accept-encoding", encoding);
            async move { request.send().await.unwrap().bytes().await.unwrap().len() }
        };
        let bytes = size("identity").await;
        // What crosses the wire for a browser (which asks for gzip).
        let gzipped = size("gzip").await;
        time_page(&client, &big_url, &token, 10).await;
        let big_page = time_page(&client, &big_url, &token, 100).await;
        report(
            &format!(
                "pipeline page (200 blocks, {} KB, {} KB gzip)",
                bytes / 1024,
                gzipped / 1024
            ),
            &big_page,
        );
        let home = time_page(&client, &format!("{base}/"), &token, 300).await;
        report("runs home", &home);
        let api = time_page(&client, &format!("{base}/api/v1/runs/{run}"), &token, 300).await;
        report("GET run document (sequential)", &api);

        let url = format!("{base}/api/v1/runs/{run}");
        let wrk = std::process::Command::new("wrk").arg("--version").output();
        if wrk.is_ok() {
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new("wrk")
                    .args(["-t2", "-c32", "-d10s", "--latency", "-H"])
                    .arg(format!("Authorization: Bearer {token}"))
                    .arg(&url)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            println!("GET run document under load (wrk -t2 -c32 -d10s):");
            println!("{}", String::from_utf8_lossy(&output.stdout));
        } else {
            println!("(wrk not installed: apt-get install wrk; using the Rust load generator)");
            rust_load(&url, &token, 32, Duration::from_secs(10)).await;
        }
        server.shutdown().await.unwrap();
    });
}
