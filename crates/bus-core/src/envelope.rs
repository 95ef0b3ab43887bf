//! The event envelope: the JSON wire format shared with the Go SDK this project replaces.
//!
//! Owns: [`Envelope`] (its JSON encoding, its validation, its mapping to a [`Record`]),
//! [`EnvelopeError`], the `X-…` header names, and [`aggregate_id_of`] (which aggregate a raw
//! [`Message`] belongs to).
//!
//! Invariants:
//! - The JSON is the Go SDK's: snake_case keys `event_id`, `aggregate_id`, `event_type`,
//!   `event_version`, `timestamp` (RFC 3339), `trace_id`, `correlation_id`, `tenant_id` (the three
//!   optionals omitted when absent) and `payload`. Unknown keys are ignored, as Go's decoder does.
//! - The payload is kept as raw JSON: decoding then encoding an envelope reproduces the payload's
//!   bytes exactly (no re-ordering, re-spacing or number re-formatting).
//! - An absent optional and an empty one are the same thing (Go's `omitempty` cannot tell them
//!   apart): an empty `trace_id`, `correlation_id` or `tenant_id` decodes, and is set, as `None`.
//! - Every envelope this module produces or accepts passes [`Envelope::validate`]:
//!   [`Envelope::new`], [`Envelope::from_json`], [`Envelope::to_json`] and
//!   [`Envelope::to_record`] all validate. Invalid input is an [`EnvelopeError`], never a panic.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::record::{Message, Record};

/// Header carrying the aggregate id.
pub const HEADER_AGGREGATE_ID: &str = "X-Aggregate-ID";
/// Header carrying the event type.
pub const HEADER_EVENT_TYPE: &str = "X-Event-Type";
/// Header carrying the event version, in decimal.
pub const HEADER_EVENT_VERSION: &str = "X-Event-Version";
/// Header carrying the event id.
pub const HEADER_EVENT_ID: &str = "X-Event-ID";
/// Header carrying the trace id, when there is one.
pub const HEADER_TRACE_ID: &str = "X-Trace-ID";
/// Header carrying the correlation id, when there is one.
pub const HEADER_CORRELATION_ID: &str = "X-Correlation-ID";
/// Header carrying the tenant id, when there is one.
pub const HEADER_TENANT_ID: &str = "X-Tenant-ID";

/// The longest aggregate id accepted, in characters (all of them ASCII).
pub const MAX_AGGREGATE_ID_LEN: usize = 256;

/// Why an envelope was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A field breaks a rule; `field` is its JSON name.
    #[error("invalid envelope field `{field}`: {reason}")]
    InvalidField {
        /// The field's JSON name, e.g. `"aggregate_id"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes are not a JSON envelope (not JSON, not an object, a field of the wrong type, or
    /// a missing `timestamp` or `payload`).
    #[error("envelope is not decodable JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl EnvelopeError {
    /// The JSON name of the offending field, for [`EnvelopeError::InvalidField`].
    pub fn field(&self) -> Option<&'static str> {
        match self {
            EnvelopeError::InvalidField { field, .. } => Some(field),
            EnvelopeError::Json(_) => None,
        }
    }

    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        EnvelopeError::InvalidField { field, reason: reason.into() }
    }
}

/// A domain event as it travels on a topic: identity, type, version, time, optional tracing
/// context, and a raw JSON payload.
///
/// Build one with [`Envelope::new`] and the `with_*` setters; decode one with
/// [`Envelope::from_json`]. The fields are public for reading and for tests; whatever is
/// assembled by hand is validated again on the way out ([`Envelope::to_json`],
/// [`Envelope::to_record`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this event (a UUID v4 string when generated here, as the Go SDK did).
    #[serde(default)]
    pub event_id: String,
    /// The aggregate the event belongs to; it is the record key, so it orders the events.
    #[serde(default)]
    pub aggregate_id: String,
    /// The event's type name, e.g. `"OrderPlaced"`.
    #[serde(default)]
    pub event_type: String,
    /// The version of the event's schema, `> 0`.
    #[serde(default)]
    pub event_version: i64,
    /// When the event was created (RFC 3339 on the wire; other offsets are converted to UTC).
    pub timestamp: DateTime<Utc>,
    /// Distributed-tracing id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "non_empty")]
    pub trace_id: Option<String>,
    /// Id correlating this event with the request or saga that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "non_empty")]
    pub correlation_id: Option<String>,
    /// The tenant the event belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "non_empty")]
    pub tenant_id: Option<String>,
    /// The event's data, as raw JSON text, kept byte for byte.
    pub payload: Box<RawValue>,
}

/// Decodes an optional string, treating `""` (and `null`) as absent.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// `Some(s)` unless `s` is empty.
fn some_non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

impl Envelope {
    /// A new, validated envelope: a fresh UUID v4 event id, the current time, no optionals, and
    /// `payload` serialised to JSON.
    ///
    /// Errors when a field breaks a rule of [`Envelope::validate`] or the payload cannot be
    /// serialised (e.g. a map with non-string keys).
    pub fn new(
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        event_version: i64,
        payload: impl Serialize,
    ) -> Result<Envelope, EnvelopeError> {
        let payload = serde_json::value::to_raw_value(&payload).map_err(|e| {
            EnvelopeError::invalid("payload", format!("cannot be serialised as JSON: {e}"))
        })?;
        Envelope::with_raw_payload(aggregate_id, event_type, event_version, payload)
    }

    /// Like [`Envelope::new`], with a payload that is already JSON (kept byte for byte).
    pub fn with_raw_payload(
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        event_version: i64,
        payload: Box<RawValue>,
    ) -> Result<Envelope, EnvelopeError> {
        let envelope = Envelope {
            event_id: uuid::Uuid::new_v4().to_string(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            event_version,
            timestamp: Utc::now(),
            trace_id: None,
            correlation_id: None,
            tenant_id: None,
            payload,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// Sets the trace id (an empty one means none).
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = some_non_empty(trace_id.into());
        self
    }

    /// Sets the correlation id (an empty one means none).
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = some_non_empty(correlation_id.into());
        self
    }

    /// Sets the tenant id (an empty one means none).
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = some_non_empty(tenant_id.into());
        self
    }

    /// Replaces the generated event id (e.g. to republish an event under its original id).
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = event_id.into();
        self
    }

    /// Replaces the creation time.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Checks the envelope's rules, naming the first field that breaks one:
    /// - `aggregate_id`: required, at most [`MAX_AGGREGATE_ID_LEN`] characters, each of
    ///   `A-Z a-z 0-9 : _ - . /`;
    /// - `event_type`: required (non-empty);
    /// - `event_version`: greater than 0;
    /// - `payload`: valid JSON and not empty: neither blank text nor a JSON string that is empty
    ///   or only whitespace (`""`, `"  "`). `null`, `{}`, `[]`, numbers and booleans are accepted.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        validate_aggregate_id(&self.aggregate_id)?;
        if self.event_type.is_empty() {
            return Err(EnvelopeError::invalid("event_type", "is required"));
        }
        if self.event_version <= 0 {
            return Err(EnvelopeError::invalid(
                "event_version",
                format!("must be greater than 0, got {}", self.event_version),
            ));
        }
        validate_payload(self.payload.get())
    }

    /// Decodes and validates an envelope from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Validates the envelope and encodes it as compact JSON (the payload's bytes verbatim).
    pub fn to_json(&self) -> Result<Vec<u8>, EnvelopeError> {
        self.validate()?;
        Ok(serde_json::to_vec(self)?)
    }

    /// Decodes and validates the envelope in a consumed message's value.
    pub fn from_message(message: &Message) -> Result<Envelope, EnvelopeError> {
        Envelope::from_json(&message.value)
    }

    /// The record that publishes this envelope to `topic`: key = aggregate id, value = the JSON,
    /// headers `X-Aggregate-ID`, `X-Event-Type`, `X-Event-Version`, `X-Event-ID`, and
    /// `X-Trace-ID`, `X-Correlation-ID`, `X-Tenant-ID` when present. The record's timestamp is
    /// left unset (the backend uses the publish time, as sarama did); the event time is in the
    /// JSON. Validates first.
    pub fn to_record(&self, topic: impl Into<String>) -> Result<Record, EnvelopeError> {
        let value = self.to_json()?;
        let mut record = Record::new(topic, value)
            .with_key(Bytes::copy_from_slice(self.aggregate_id.as_bytes()))
            .with_header(HEADER_AGGREGATE_ID, Bytes::copy_from_slice(self.aggregate_id.as_bytes()))
            .with_header(HEADER_EVENT_TYPE, Bytes::copy_from_slice(self.event_type.as_bytes()))
            .with_header(HEADER_EVENT_VERSION, Bytes::from(self.event_version.to_string()))
            .with_header(HEADER_EVENT_ID, Bytes::copy_from_slice(self.event_id.as_bytes()));
        for (name, value) in [
            (HEADER_TRACE_ID, &self.trace_id),
            (HEADER_CORRELATION_ID, &self.correlation_id),
            (HEADER_TENANT_ID, &self.tenant_id),
        ] {
            if let Some(value) = value {
                record = record.with_header(name, Bytes::copy_from_slice(value.as_bytes()));
            }
        }
        Ok(record)
    }

    /// The payload's raw JSON text.
    pub fn payload_json(&self) -> &str {
        self.payload.get()
    }

    /// Decodes the payload into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, EnvelopeError> {
        serde_json::from_str(self.payload.get()).map_err(|e| {
            EnvelopeError::invalid("payload", format!("does not decode as the requested type: {e}"))
        })
    }
}

/// The aggregate id of a raw message, for keyed ordering and routing. Tried in order:
/// 1. the value decoded as a valid envelope: its `aggregate_id`;
/// 2. the `X-Aggregate-ID` header (any ASCII case), when it is non-empty UTF-8;
/// 3. the key, when it is non-empty UTF-8.
///
/// `None` when none of these gives one.
pub fn aggregate_id_of(message: &Message) -> Option<String> {
    if let Ok(envelope) = Envelope::from_message(message) {
        return Some(envelope.aggregate_id);
    }
    if let Some(id) = message.headers.get_str(HEADER_AGGREGATE_ID).filter(|s| !s.is_empty()) {
        return Some(id.to_owned());
    }
    message
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Whether `c` may appear in an aggregate id: `[A-Za-z0-9:_\-./]`.
fn is_aggregate_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '/')
}

fn validate_aggregate_id(id: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "aggregate_id";
    if id.is_empty() {
        return Err(EnvelopeError::invalid(FIELD, "is required"));
    }
    let len = id.chars().count();
    if len > MAX_AGGREGATE_ID_LEN {
        return Err(EnvelopeError::invalid(
            FIELD,
            format!("is {len} characters long, at most {MAX_AGGREGATE_ID_LEN} are allowed"),
        ));
    }
    if let Some((at, c)) = id.chars().enumerate().find(|&(_, c)| !is_aggregate_id_char(c)) {
        return Err(EnvelopeError::invalid(
            FIELD,
            format!(
                "contains {c:?} at character {at}; only A-Z, a-z, 0-9 and `:` `_` `-` `.` `/` \
                 are allowed"
            ),
        ));
    }
    Ok(())
}

fn validate_payload(raw: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "payload";
    if raw.trim().is_empty() {
        return Err(EnvelopeError::invalid(FIELD, "is empty"));
    }
    // A `RawValue` from serde_json is valid JSON already; this also guards hand-built ones.
    if let Err(e) = serde_json::from_str::<IgnoredAny>(raw) {
        return Err(EnvelopeError::invalid(FIELD, format!("is not valid JSON: {e}")));
    }
    if raw.trim_start().starts_with('"')
        && let Ok(text) = serde_json::from_str::<String>(raw)
        && text.trim().is_empty()
    {
        return Err(EnvelopeError::invalid(FIELD, "is an empty JSON string"));
    }
    Ok(())
}
