//! One client connection: read a frame, decode its header, dispatch to the API's handler, write
//! the response; in order, one request at a time (Kafka clients rely on responses arriving in
//! request order per connection).
//!
//! A frame that cannot be answered (bad length, truncated, unknown API key, unsupported version
//! of an API other than ApiVersions, undecodable body) closes this connection with a log line and
//! touches nothing else.

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tracing::{debug, warn};

use crate::apis;
use crate::frame::{read_frame, FrameError};
use crate::handlers::{api_versions, metadata};
use crate::server::BrokerIdentity;

/// Why a request ended its connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("request of {0} bytes is too short for a header")]
    ShortHeader(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} v{version} is not implemented")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("cannot decode {api:?} v{version}: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode the response: {0}")]
    Encode(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Requests being answered on this shard (read, not yet fully written back): shutdown waits
/// for them.
pub type InFlight = Rc<std::cell::Cell<usize>>;

/// Serves one connection until the peer closes it or sends something unanswerable.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    broker: Rc<BrokerIdentity>,
    frame_bytes_max: usize,
    in_flight: InFlight,
) {
    loop {
        let outcome = async {
            let Some(frame) = read_frame(&mut stream, frame_bytes_max).await? else {
                return Ok(false);
            };
            in_flight.set(in_flight.get() + 1);
            let answered = async {
                let response = respond(frame, &broker)?;
                stream.write_all(&response).await?;
                Ok::<_, RequestError>(())
            }
            .await;
            in_flight.set(in_flight.get() - 1);
            answered.map(|()| true)
        }
        .await;
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                debug!(%peer, "connection closed by peer");
                return;
            }
            Err(e) => {
                warn!(%peer, error = %e, "closing connection");
                let _ = stream.close().await;
                return;
            }
        }
    }
}

/// Builds the complete response frame (length prefix included) for one request frame.
pub fn respond(mut frame: Bytes, broker: &BrokerIdentity) -> Result<Bytes, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::ShortHeader(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApi(raw_key))?;
    let supported =
        apis::implemented(api).is_some_and(|r| (r.min_version..=r.max_version).contains(&version));
    if !supported {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in the v0 format, which every client can read.
            return encode(
                api,
                0,
                correlation_id,
                &api_versions::response(api_versions::UNSUPPORTED_VERSION),
            );
        }
        return Err(RequestError::UnsupportedVersion { api, version });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api,
        version,
        reason,
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| malformed(e.to_string()))?;
    debug!(?api, version, correlation_id, client_id = ?header.client_id, "request");
    match api {
        ApiKey::ApiVersions => {
            ApiVersionsRequest::decode(&mut frame, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &api_versions::response(0))
        }
        ApiKey::Metadata => {
            metadata::check_counts(&frame, version).map_err(malformed)?;
            let request = MetadataRequest::decode(&mut frame, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(
                api,
                version,
                correlation_id,
                &metadata::handle(&request, broker),
            )
        }
        _ => Err(RequestError::UnsupportedVersion { api, version }),
    }
}

/// Encodes `[length][response header][body]`.
fn encode<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, RequestError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let mut out = BytesMut::new();
    out.put_i32(0); // length, patched below
    header
        .encode(&mut out, header_version)
        .map_err(|e| RequestError::Encode(e.to_string()))?;
    body.encode(&mut out, version)
        .map_err(|e| RequestError::Encode(e.to_string()))?;
    let length = i32::try_from(out.len() - 4)
        .map_err(|_| RequestError::Encode("response too large".into()))?;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}
