//! Checks on untrusted array counts, run before a request body is handed to the codec.
//!
//! The `kafka-protocol` decoder (0.18) calls `Vec::with_capacity(count)` with an array count
//! read off the wire, before decoding any element: a 20-byte request declaring 2^31 elements
//! makes it ask for tens of GiB, and a failed allocation aborts the process
//! (kafka-protocol-rs PRs #152, #161 and #200 fix this upstream; none is released yet). Every
//! array element takes at least one byte on the wire, so a count larger than the bytes left is
//! impossible: each handler calls [`array_count_fits`] on the arrays of its request before
//! decoding. Remove this module once a fixed kafka-protocol is released.

use bytes::Buf;

/// Reads the array count at the start of `body` (`int32` for classic versions; unsigned varint
/// `count + 1` for flexible ones) and checks it against the bytes that follow. A null array
/// (-1, or 0 when flexible) passes.
pub fn array_count_fits(mut body: &[u8], flexible: bool) -> Result<(), String> {
    let count: i64 = if flexible {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            if !body.has_remaining() {
                return Err("array count truncated".into());
            }
            let byte = body.get_u8();
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err("array count varint overflows 32 bits".into());
            }
        }
        value as i64 - 1
    } else {
        if body.remaining() < 4 {
            return Err("array count truncated".into());
        }
        i64::from(body.get_i32())
    };
    if count > body.remaining() as i64 {
        return Err(format!(
            "array declares {count} elements but only {} bytes follow",
            body.remaining()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_checked_against_the_bytes_left() {
        assert!(array_count_fits(&[0, 0, 0, 2, 1, 1], false).is_ok());
        assert!(
            array_count_fits(&[0xff, 0xff, 0xff, 0xff], false).is_ok(),
            "null array"
        );
        assert!(array_count_fits(&[0x7f, 0xff, 0xff, 0xff, 0, 0], false).is_err());
        assert!(
            array_count_fits(&[3, 1, 1], true).is_ok(),
            "compact: 2 elements"
        );
        assert!(array_count_fits(&[0], true).is_ok(), "compact null");
        assert!(array_count_fits(&[0xff, 0xff, 0xff, 0xff, 0x07], true).is_err());
        assert!(
            array_count_fits(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], true).is_err(),
            "overlong varint"
        );
        assert!(array_count_fits(&[0, 0], false).is_err(), "truncated");
    }
}
