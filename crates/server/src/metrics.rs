//! Prometheus metrics: request counts and latencies per route, plus run and
//! block gauges read from the store at scrape time.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::SharedState;

/// The process-wide recorder (the `metrics` facade has one per process).
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

impl Metrics {
    pub fn new() -> Metrics {
        let handle = HANDLE.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ])
                .ok()?
                // Attempts run from milliseconds (builtins) to many minutes (LLM calls).
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "factory_worker_attempt_duration_seconds".to_string(),
                    ),
                    &[
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        });
        Metrics {
            handle: handle.clone(),
        }
    }

    /// This process's metrics in the text exposition format (what
    /// `factory worker --metrics-addr` serves).
    pub fn render_process(&self) -> String {
        self.handle.as_ref().map(|h| h.render()).unwrap_or_default()
    }

    /// The text exposition, with the run gauges appended.
    pub async fn render(&self, state: &SharedState) -> String {
        let mut out = self.handle.as_ref().map(|h| h.render()).unwrap_or_default();
        if let Ok(runs) = state.store.list_runs(10_000).await {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for run in &runs {
                *counts.entry(run.status.clone()).or_default() += 1;
            }
            out.push_str("# HELP factory_runs Runs in the store by status.\n");
            out.push_str("# TYPE factory_runs gauge\n");
            for status in ["running", "waiting", "done", "failed"] {
                let n = counts.get(status).copied().unwrap_or(0);
                out.push_str(&format!("factory_runs{{status=\"{status}\"}} {n}\n"));
            }
        }
        out
    }
}

/// The standard methods by name; anything else is `OTHER`, so made-up
/// methods cannot grow the label set without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts every request and its latency under its route pattern (not the raw
/// path, so run ids do not explode the label set).
pub async fn track(
    State(_): State<SharedState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method()).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("factory_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("factory_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
