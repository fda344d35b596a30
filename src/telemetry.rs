//! `sluice serve`'s logging and tracing: log lines to stderr (filtered by `RUST_LOG`, `info` by
//! default) and, with `--otlp-endpoint`, request spans (`sluice_net::request_trace`) exported
//! over OTLP/HTTP (protobuf) to a collector.
//!
//! The exporter is the OpenTelemetry SDK's batch span processor: finished spans are queued
//! (bounded; dropped, never waited for, when the collector falls behind) and sent from the
//! SDK's own thread through a blocking HTTP client, so shards never wait on the collector.
//! Sampling is parent-based: a request whose producer's trace is sampled (its records'
//! `traceparent`) is always exported, others at `otlp_sample_ratio`. The exporter's layer sees
//! only request spans, and runs without context activation so a Produce span can still take
//! its producer's trace as parent once the request is decoded (see `request_trace`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::BrokerConfig;

/// Flushes and stops the span exporter (if any) when dropped, at the end of `serve`.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Bounded: a collector that is down must not hold the process after its shards
            // stopped.
            if let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(2)) {
                eprintln!("sluice serve: flushing spans to the OTLP endpoint: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: log lines, plus the OTLP span exporter when configured.
/// Fails (naming `otlp_endpoint`) when the exporter cannot be built.
pub fn init(config: &BrokerConfig) -> Result<Telemetry, String> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: log files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let Some(endpoint) = &config.otlp_endpoint else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()
        .map_err(|e| format!("otlp_endpoint {endpoint}: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("sluice")
        .with_attribute(KeyValue::new(
            "service.instance.id",
            config.node_id.to_string(),
        ))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.otlp_sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(
            Targets::new().with_target(sluice_net::request_trace::TARGET, tracing::Level::DEBUG),
        );
    tracing_subscriber::registry().with(logs).with(spans).init();
    sluice_net::request_trace::enable_propagation();
    tracing::info!(%endpoint, sample_ratio = config.otlp_sample_ratio, "exporting request spans over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}
