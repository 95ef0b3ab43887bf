//! [`Payload`]: an envelope's data, one JSON value kept as its exact bytes (Go's
//! `json.RawMessage`).
//!
//! Owns: checking that bytes are one JSON value as Go reads JSON (strings may hold bytes that
//! are not UTF-8, as Go's decoder lets them through), trimming the whitespace around it, and
//! decoding it into a Rust type on request.
//!
//! Invariants: a `Payload` always holds exactly one JSON value by Go's grammar, without
//! surrounding whitespace, so it is never empty (the Go SDK's "payload is required" can only
//! fail for an envelope with no payload at all), and written into an envelope it is read back
//! by Go as these very bytes.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::EnvelopeError;
use super::go_json;

/// One JSON value, byte for byte: no re-ordering, re-spacing or number re-formatting, and
/// strings that are not valid UTF-8 kept as they are (Go produces and accepts them).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Bytes);

impl Payload {
    /// The JSON value in `json` (whitespace around it is dropped).
    ///
    /// Errors (naming `payload`) when `json` is not exactly one JSON value as Go reads JSON.
    pub fn from_json(json: impl Into<Bytes>) -> Result<Payload, EnvelopeError> {
        let json = json.into();
        let range = go_json::value_range(&json).map_err(|e| {
            EnvelopeError::invalid(
                "payload",
                format!("is not one JSON value: invalid at byte {}: {}", e.offset, e.reason),
            )
        })?;
        Ok(Payload(json.slice(range)))
    }

    /// `value` serialised as JSON (serde_json, compact).
    ///
    /// Errors (naming `payload`) when it cannot be serialised, e.g. a map with non-string keys.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Payload, EnvelopeError> {
        serde_json::to_vec(value).map(|json| Payload(Bytes::from(json))).map_err(|e| {
            EnvelopeError::invalid("payload", format!("cannot be serialised as JSON: {e}"))
        })
    }

    /// A value the JSON reader has already delimited (no whitespace around it).
    pub(super) fn from_scanned(json: &[u8]) -> Payload {
        Payload(Bytes::copy_from_slice(json))
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text, or `None` when its strings hold bytes that are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Decodes the JSON into `T` (serde_json).
    ///
    /// Errors (naming `payload`) when it does not decode as `T`, including when its strings
    /// are not UTF-8.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, EnvelopeError> {
        serde_json::from_slice(&self.0).map_err(|e| {
            EnvelopeError::invalid("payload", format!("does not decode as the requested type: {e}"))
        })
    }
}

impl From<Box<RawValue>> for Payload {
    /// serde_json's raw value (always one valid JSON value), without the whitespace around it.
    fn from(raw: Box<RawValue>) -> Self {
        let text: Box<str> = raw.into();
        let trimmed = text.trim_matches([' ', '\t', '\r', '\n']);
        Payload(Bytes::copy_from_slice(trimmed.as_bytes()))
    }
}

impl fmt::Display for Payload {
    /// The JSON text (a byte that is not UTF-8 shown as U+FFFD).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({self})")
    }
}
