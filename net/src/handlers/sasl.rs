//! SaslHandshake (key 17) and SaslAuthenticate (key 36) where no authentication is under way:
//! on a listener without SASL, or on a connection that has authenticated (a SASL listener's
//! connection handles both itself while it authenticates: `connection` and `crate::sasl`).
//! Kafka answers ILLEGAL_SASL_STATE there, and so does Sluice.

use kafka_protocol::messages::{ApiKey, SaslAuthenticateResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::apis::ApiRange;

/// After a v0 handshake the client's tokens come as bare length-prefixed frames (no request
/// header) and are answered the same way; after v1, in SaslAuthenticate requests. librdkafka
/// looks for v0 in ApiVersions before it uses SASL at all (and then sends v1).
pub const HANDSHAKE_RANGE: ApiRange = ApiRange {
    key: ApiKey::SaslHandshake,
    min_version: 0,
    max_version: 1,
};

pub const AUTHENTICATE_RANGE: ApiRange = ApiRange {
    key: ApiKey::SaslAuthenticate,
    min_version: 0,
    max_version: 2,
};

/// SaslHandshake outside an authentication: ILLEGAL_SASL_STATE, and the mechanisms `offered`
/// (none on a listener without SASL).
pub fn handshake_refused(offered: &[&'static str]) -> SaslHandshakeResponse {
    SaslHandshakeResponse::default()
        .with_error_code(ResponseError::IllegalSaslState.code())
        .with_mechanisms(
            offered
                .iter()
                .map(|m| StrBytes::from_static_str(m))
                .collect(),
        )
}

/// SaslAuthenticate outside an authentication: ILLEGAL_SASL_STATE with the reason.
pub fn authenticate_refused(reason: &'static str) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::IllegalSaslState.code())
        .with_error_message(Some(StrBytes::from_static_str(reason)))
}
