//! GetTelemetrySubscriptions (key 71, KIP-714): tells a client which of its metrics to push and
//! how often. A client without an instance id gets a new one. The subscription is the node's
//! (`client_metrics`, `client_metrics_interval_ms`); with no prefixes the client pushes nothing
//! and asks again after the interval.

use kafka_protocol::messages::{
    ApiKey, GetTelemetrySubscriptionsRequest, GetTelemetrySubscriptionsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::client_telemetry::{ACCEPTED_COMPRESSION, TELEMETRY_MAX_BYTES};

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::GetTelemetrySubscriptions,
    min_version: 0,
    max_version: 0,
};

pub fn handle(
    request: GetTelemetrySubscriptionsRequest,
    ctx: &Context,
) -> GetTelemetrySubscriptionsResponse {
    let telemetry = &ctx.client_telemetry;
    let instance = if request.client_instance_id.is_nil() {
        uuid::Uuid::new_v4()
    } else {
        request.client_instance_id
    };
    GetTelemetrySubscriptionsResponse::default()
        .with_client_instance_id(instance)
        .with_subscription_id(telemetry.subscription_id())
        .with_accepted_compression_types(ACCEPTED_COMPRESSION.to_vec())
        .with_push_interval_ms(
            i32::try_from(telemetry.push_interval().as_millis()).unwrap_or(i32::MAX),
        )
        .with_telemetry_max_bytes(i32::try_from(TELEMETRY_MAX_BYTES).unwrap_or(i32::MAX))
        // Cumulative sums: Prometheus counters are cumulative.
        .with_delta_temporality(false)
        .with_requested_metrics(
            telemetry
                .requested_metrics()
                .iter()
                .map(|p| StrBytes::from_string(p.clone()))
                .collect(),
        )
}
