//! Optional export of the tracing spans to an OpenTelemetry collector: off
//! unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, as
//! OpenTelemetry's own SDKs do. Spans go over OTLP/HTTP with JSON bodies
//! (the collector's port 4318 takes them), in batches from a thread of
//! their own, so a slow or absent collector never holds a block up.
//!
//! What is exported: a `run` span per drive of a run (`run`), an `attempt`
//! span per block attempt inside it (`run`, `block`, `attempt`), at info
//! level and above whatever `FACTORY_LOG` says for the terminal.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Set up the terminal log and, when a collector is configured, the span
/// export; the returned exporter must be [`Otel::shutdown`] before exit so
/// the last batch is sent.
pub fn init() -> Option<Otel> {
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("FACTORY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let (otel, problem) = match configured() {
        false => (None, None),
        true => match exporter() {
            Ok(provider) => (Some(Otel { provider }), None),
            Err(error) => (None, Some(error)),
        },
    };
    let spans = otel.as_ref().map(|otel| {
        tracing_opentelemetry::layer()
            .with_tracer(otel.provider.tracer("process-factory"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(terminal)
        .with(spans)
        .init();
    if let Some(error) = problem {
        tracing::warn!(%error, "OpenTelemetry export is off: cannot set up the OTLP exporter");
    }
    otel
}

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

fn exporter() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("process-factory")
                .build(),
        )
        .build())
}

/// The span exporter, flushed on shutdown.
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Sends what is still batched and stops the export thread.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: OpenTelemetry export did not finish: {error}");
        }
    }
}
