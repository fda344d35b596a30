//! # sluice-admin: the admin HTTP listener
//!
//! Served on a thread of its own with a small tokio runtime (axum over hyper), off the data
//! path: it reads only the snapshots the shards publish to the [`MetricsHub`] once a second,
//! never a shard's live state.
//!
//! - `GET /metrics` — Prometheus text format through `prometheus-client` ([`exposition`]).
//! - `GET /v1/status/ready` — 200 once every shard serves, 503 while starting or draining.
//! - `GET /v1/health` — JSON: node id, shards, partitions by state, disk.
//! - `GET /v1/topics`, `GET /v1/groups`, `GET /v1/latency` — JSON for consoles and scripts
//!   ([`views`]).
//! - `GET /` — the console: one HTML page (`console.html`, in the binary) over that API.
//!
//! Invariant: nothing here blocks a shard: the hub's mutex is held only to copy `Arc`s.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use sluice_core::metrics::MetricsHub;

pub mod exposition;
pub mod views;

/// How the admin listener is set up.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Traffic and size series per partition as well as per topic.
    pub metrics_per_partition: bool,
}

struct AdminState {
    hub: Arc<MetricsHub>,
    registry: Registry,
}

/// Binds the admin address (an error names it when taken) and serves on a thread of its own
/// until the process ends. Returns the bound address (port 0 picks a free one).
pub fn start(settings: AdminSettings, hub: Arc<MetricsHub>) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(settings.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let registry = exposition::registry(exposition::NodeCollector {
        hub: hub.clone(),
        per_partition: settings.metrics_per_partition,
    });
    let state = Arc::new(AdminState { hub, registry });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the admin runtime: {e}"))?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router(state)).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            })
        })
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    tracing::info!(addr = %bound, "admin listening");
    Ok(bound)
}

fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/metrics", get(metrics))
        .route("/v1/status/ready", get(ready))
        .route("/v1/health", get(health))
        .route("/v1/topics", get(topics))
        .route("/v1/groups", get(groups))
        .route("/v1/latency", get(latency))
        .with_state(state)
}

/// OpenMetrics to scrapers that accept it (Prometheus does), the classic text format to
/// everyone else.
async fn metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let Ok(text) = exposition::render(&state.registry) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            exposition::to_classic_text(&text),
        )
            .into_response()
    }
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let hub = &state.hub;
    let (status, body) = if hub.ready() {
        (StatusCode::OK, "ready")
    } else if hub.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (status, Json(serde_json::json!({ "status": body }))).into_response()
}

async fn health(State(state): State<Arc<AdminState>>) -> Json<views::Health> {
    Json(views::health(&state.hub))
}

async fn topics(State(state): State<Arc<AdminState>>) -> Json<Vec<views::TopicView>> {
    Json(views::topics(&state.hub))
}

async fn groups(State(state): State<Arc<AdminState>>) -> Json<Vec<views::GroupView>> {
    Json(views::groups(&state.hub))
}

async fn latency(
    State(state): State<Arc<AdminState>>,
) -> Json<std::collections::BTreeMap<String, views::LatencyView>> {
    Json(views::latency(&state.hub))
}

/// The console: one page, shipped in the binary, reading the JSON API.
async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("console.html"))
}
