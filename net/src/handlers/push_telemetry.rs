//! PushTelemetry (key 72, KIP-714): a client's own metrics (OTLP, maybe compressed), kept per
//! client instance for `/metrics` (`sluice_core::client_telemetry`). A refused push gets the
//! error KIP-714 names: UNKNOWN_SUBSCRIPTION_ID (the client then asks for its subscription
//! again), THROTTLING_QUOTA_EXCEEDED (too soon), TELEMETRY_TOO_LARGE, UNSUPPORTED_COMPRESSION_TYPE,
//! INVALID_RECORD (undecodable), INVALID_REQUEST (no instance id).

use std::time::Instant;

use kafka_protocol::messages::{ApiKey, PushTelemetryRequest, PushTelemetryResponse};
use sluice_core::client_telemetry::Push;
use tracing::debug;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::PushTelemetry,
    min_version: 0,
    max_version: 0,
};

pub fn handle(
    request: PushTelemetryRequest,
    client_id: &str,
    ctx: &Context,
) -> PushTelemetryResponse {
    let push = Push {
        client_instance_id: request.client_instance_id,
        subscription_id: request.subscription_id,
        client_id,
        terminating: request.terminating,
        compression: request.compression_type,
        metrics: request.metrics,
    };
    let error = match ctx.client_telemetry.push(push, Instant::now()) {
        Ok(_) => 0,
        Err(e) => {
            debug!(client_id, instance = %request.client_instance_id, error = %e, "client metrics refused");
            e.code()
        }
    };
    PushTelemetryResponse::default().with_error_code(error)
}
