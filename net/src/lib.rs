//! # sluice-net: the Kafka wire protocol and connections
//!
//! Will hold framing (length prefix checked against a maximum before allocating), one handler
//! per Kafka API with its version range, ApiVersions, and TLS/SASL later. Codecs come from the
//! `kafka-protocol` crate. Nothing is built here yet (issue "A single-node Kafka-compatible
//! broker").
