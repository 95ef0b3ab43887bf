//! A response frame: the bound on its size prefix ([`response_size`]) and its decoding
//! ([`decode_frame`]: header, correlation id, the shape check, then `kafka-protocol`'s decoder).
//! Shared by [`Connection`](super::Connection), [`Pipeline`](super::Pipeline) and the fuzz
//! targets.

use bytes::Bytes;
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::{Decodable, HeaderVersion};

use super::api::Api;
use crate::schema;

/// What a response buffer reserves before its bytes arrive (it grows with them after).
pub(crate) const FIRST_READ_BYTES: usize = 64 * 1024;

/// The size a response's prefix announces, checked: at least a header's 4 bytes, at most
/// `limit` (the bound for `api`'s responses).
///
/// # Errors
///
/// Why the prefix is refused.
pub(crate) fn response_size(prefix: i32, limit: usize, api: &str) -> Result<usize, String> {
    let size = usize::try_from(prefix)
        .ok()
        .filter(|s| *s >= 4)
        .ok_or_else(|| format!("invalid response size {prefix}"))?;
    if size > limit {
        return Err(format!(
            "the response announces {size} bytes, over the bound of {limit} for {api} responses"
        ));
    }
    Ok(size)
}

/// Decodes a response frame (what follows its size prefix): the header (checking the
/// correlation id), then the body in `version`, once its shape is checked.
///
/// # Errors
///
/// Why it cannot be decoded.
pub(crate) fn decode_frame<R: Api>(
    mut body: Bytes,
    version: i16,
    correlation: i32,
) -> Result<R::Response, String> {
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| format!("cannot decode the response header: {e}"))?;
    if header.correlation_id != correlation {
        return Err(format!(
            "correlation id {} does not match the request's {correlation}",
            header.correlation_id
        ));
    }
    schema::check(R::SHAPE, version, &body).map_err(|e| format!("malformed response: {e}"))?;
    R::Response::decode(&mut body, version).map_err(|e| format!("cannot decode the response: {e}"))
}
