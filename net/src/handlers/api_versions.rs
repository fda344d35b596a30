//! ApiVersions (key 18): what this broker implements.
//!
//! KIP-511: a client may send ApiVersions at a version newer than the broker knows. The broker
//! then answers in the v0 format with UNSUPPORTED_VERSION and its supported ranges, so the
//! client can retry at a version both know (kafka-python and franz-go rely on this).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::apis::{ApiRange, IMPLEMENTED};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ApiVersions,
    min_version: 0,
    max_version: 4,
};

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The response listing every implemented API; `error_code` is 0, or UNSUPPORTED_VERSION for
/// the KIP-511 fallback.
pub fn response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = IMPLEMENTED
        .iter()
        .map(|r| {
            ApiVersion::default()
                .with_api_key(r.key as i16)
                .with_min_version(r.min_version)
                .with_max_version(r.max_version)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}
