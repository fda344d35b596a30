//! # sluice-net: the Kafka wire protocol and connections
//!
//! ## Layout
//! - [`frame`] — reading one length-prefixed request frame, the length checked against a
//!   maximum before anything is allocated.
//! - [`apis`] — the table of implemented APIs and version ranges; ApiVersions advertises
//!   exactly this table.
//! - `handlers` — one module per Kafka API, each declaring the versions it implements and
//!   translating between the codec's messages and `sluice-core`'s calls.
//! - [`connection`] — one client connection: read a frame, decode the header, dispatch, write
//!   the response. A malformed frame closes that connection and touches nothing else.
//! - [`server`] — listeners: each named listener (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL) bound by every shard on
//!   the same port (SO_REUSEPORT).
//! - [`tls`] — the SSL listeners' rustls configuration, its reload, and the principal a
//!   client certificate maps to.
//! - [`quota_meter`] — client quotas measured per shard: produce and fetch byte rates, and the
//!   throttle a client over its quota gets.
//! - [`sasl`] — the SASL listeners' mechanisms (PLAIN, SCRAM-SHA-256/512 through rsasl), one
//!   authentication exchange, and the SCRAM credential arithmetic.
//!
//! Codecs come from the `kafka-protocol` crate (generated from Kafka's JSON schemas).
//!
//! Request path: `connection` (this crate) decodes → a handler → `sluice_core` splits the work
//! by owning shard and runs it there → `sluice_storage::Log` → back in request order.

pub mod apis;
pub mod authorized;
pub mod connection;
pub mod frame;
mod handlers;
pub mod quota_meter;
pub mod request_trace;
pub mod sasl;
pub mod server;
pub mod tls;

pub use server::{BrokerIdentity, Endpoint, Listener, SecurityProtocol, ServerConfig};
