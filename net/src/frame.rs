//! Kafka framing: every request is `[length: i32][body: length bytes]`.
//!
//! Invariants: no buffer is sized from a length before the length has been checked to lie in
//! `1..=frame_bytes_max`; even then the buffer grows only with the bytes that actually arrive.

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};

/// How much more buffer a frame read allocates at a time.
const READ_STEP_BYTES: usize = 64 * 1024;

/// Why a frame could not be read. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame length {length} is not positive")]
    NonPositiveLength { length: i32 },
    #[error("frame length {length} exceeds the maximum of {max} bytes")]
    TooLarge { length: i32, max: usize },
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, expected: 4 })
            };
        }
        got += n;
    }
    let length = i32::from_be_bytes(prefix);
    if length <= 0 {
        return Err(FrameError::NonPositiveLength { length });
    }
    if length as usize > frame_bytes_max {
        return Err(FrameError::TooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    let expected = length as usize;
    // The buffer grows with the bytes that arrive, a step at a time: a peer that announces a
    // large frame and then stalls holds at most one step of memory, not the announced size.
    let mut body = BytesMut::with_capacity(expected.min(READ_STEP_BYTES));
    while body.len() < expected {
        let filled = body.len();
        body.resize(filled + (expected - filled).min(READ_STEP_BYTES), 0);
        let n = reader.read(&mut body[filled..]).await?;
        body.truncate(filled + n);
        if n == 0 {
            return Err(FrameError::Truncated {
                got: filled,
                expected,
            });
        }
    }
    Ok(Some(body.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], max: usize) -> Result<Option<Bytes>, FrameError> {
        futures_lite::future::block_on(read_frame(
            &mut futures_lite::io::Cursor::new(bytes.to_vec()),
            max,
        ))
    }

    #[test]
    fn whole_frames_are_read() {
        let mut two = vec![0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1, b'z'];
        let mut cursor = futures_lite::io::Cursor::new(std::mem::take(&mut two));
        let first = futures_lite::future::block_on(read_frame(&mut cursor, 100)).unwrap();
        assert_eq!(first.as_deref(), Some(&b"abc"[..]));
        let second = futures_lite::future::block_on(read_frame(&mut cursor, 100)).unwrap();
        assert_eq!(second.as_deref(), Some(&b"z"[..]));
        let end = futures_lite::future::block_on(read_frame(&mut cursor, 100)).unwrap();
        assert!(end.is_none(), "clean close between frames");
    }

    #[test]
    fn bad_lengths_are_refused_before_allocating() {
        assert!(matches!(
            read(&[0, 0, 0, 0], 100),
            Err(FrameError::NonPositiveLength { length: 0 })
        ));
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xfe], 100),
            Err(FrameError::NonPositiveLength { length: -2 })
        ));
        // 2 GiB claimed: refused without trying to allocate it.
        assert!(matches!(
            read(&[0x7f, 0xff, 0xff, 0xff], 100),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 101], 100),
            Err(FrameError::TooLarge {
                length: 101,
                max: 100
            })
        ));
    }

    #[test]
    fn frames_larger_than_one_read_step_arrive_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut framed = (body.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        assert_eq!(read(&framed, 1 << 20).unwrap().as_deref(), Some(&body[..]));
        // Announced big, delivered short: reported with the count that did arrive.
        framed.truncate(4 + 150_000);
        assert!(matches!(
            read(&framed, 1 << 20),
            Err(FrameError::Truncated {
                got: 150_000,
                expected: 200_000
            })
        ));
    }

    #[test]
    fn truncated_frames_are_reported() {
        assert!(matches!(
            read(&[0, 0], 100),
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 5, 1, 2], 100),
            Err(FrameError::Truncated {
                got: 2,
                expected: 5
            })
        ));
    }
}
