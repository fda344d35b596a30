//! # sluice-net: the Kafka wire protocol and connections
//!
//! ## Layout
//! - [`frame`] — reading one length-prefixed request frame, the length checked against a
//!   maximum before anything is allocated.
//! - [`apis`] — the table of implemented APIs and version ranges; ApiVersions advertises
//!   exactly this table.
//! - `handlers` — one module per Kafka API, each declaring the versions it implements.
//! - `guard` — array-count checks run before the codec sees a body (the codec pre-allocates
//!   from unchecked counts).
//! - [`connection`] — one client connection: read a frame, decode the header, dispatch, write
//!   the response. A malformed frame closes that connection and touches nothing else.
//! - [`server`] — listeners: one per shard on the same port (SO_REUSEPORT).
//!
//! Codecs come from the `kafka-protocol` crate (generated from Kafka's JSON schemas).
//!
//! Built so far: the connection handshake clients perform first (ApiVersions, Metadata). Topics,
//! Produce and Fetch come next (issue "A single-node Kafka-compatible broker").

pub mod apis;
pub mod connection;
pub mod frame;
mod guard;
mod handlers;
pub mod server;

pub use server::{BrokerIdentity, ServerConfig};
