//! The envelope's wire format (hand-written JSON in the Go SDK's format), its validation rules
//! (the accepted edge and the rejected case of each, with the field named), its record mapping,
//! and aggregate-id extraction from raw messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bus_core::envelope::{
    HEADER_AGGREGATE_ID, HEADER_CORRELATION_ID, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
    HEADER_EVENT_VERSION, HEADER_TENANT_ID, HEADER_TRACE_ID, MAX_AGGREGATE_ID_LEN,
};
use bus_core::{Envelope, EnvelopeError, aggregate_id_of};
use bus_core::{Headers, Message};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::value::RawValue;

/// An envelope as the Go SDK writes it: every key, snake_case, the optionals present.
const GO_FULL: &str = r#"{"event_id":"6f1c2a7e-3b4d-4c5e-9f60-718293a4b5c6","aggregate_id":"order-123","event_type":"OrderPlaced","event_version":2,"timestamp":"2024-03-01T12:34:56.789Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","correlation_id":"req-77","tenant_id":"tenant-9","payload":{"order":{"id":123,"lines":[{"sku":"A-1","qty":2},{"sku":"B-2","qty":1}]},"total":19.90,"currency":"EUR"}}"#;

/// The same without the optionals (Go's `omitempty` leaves them out).
const GO_MINIMAL: &str = r#"{"event_id":"e-1","aggregate_id":"tenant:42/user.7","event_type":"UserRenamed","event_version":1,"timestamp":"2024-03-01T12:34:56Z","payload":{"name":"Ada"}}"#;

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn valid() -> Envelope {
    Envelope::from_json(GO_MINIMAL.as_bytes()).unwrap()
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

/// GO_MINIMAL with `field` replaced by `value` (raw JSON), or removed when `value` is None.
fn go_minimal_with(field: &str, value: Option<&str>) -> String {
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(GO_MINIMAL).unwrap();
    match value {
        Some(v) => map.insert(field.to_owned(), serde_json::from_str(v).unwrap()),
        None => map.remove(field),
    };
    serde_json::to_string(&map).unwrap()
}

fn assert_field(err: EnvelopeError, field: &str) {
    assert_eq!(err.field(), Some(field), "wrong field in {err}");
    let text = err.to_string();
    assert!(text.contains(field), "error text does not name {field}: {text}");
}

// ----- decoding the Go SDK's JSON ---------------------------------------------------------------

#[test]
fn decodes_full_go_envelope() {
    let e = Envelope::from_json(GO_FULL.as_bytes()).unwrap();
    assert_eq!(e.event_id, "6f1c2a7e-3b4d-4c5e-9f60-718293a4b5c6");
    assert_eq!(e.aggregate_id, "order-123");
    assert_eq!(e.event_type, "OrderPlaced");
    assert_eq!(e.event_version, 2);
    assert_eq!(
        e.timestamp,
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 34, 56).unwrap() + chrono::Duration::milliseconds(789)
    );
    assert_eq!(e.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(e.correlation_id.as_deref(), Some("req-77"));
    assert_eq!(e.tenant_id.as_deref(), Some("tenant-9"));
    assert_eq!(
        e.payload_json(),
        r#"{"order":{"id":123,"lines":[{"sku":"A-1","qty":2},{"sku":"B-2","qty":1}]},"total":19.90,"currency":"EUR"}"#
    );
}

#[test]
fn full_go_envelope_round_trips_byte_for_byte() {
    // Same key order as the Go struct, and chrono writes the same RFC 3339 text for this time,
    // so the whole document comes back unchanged (`19.90` included: the payload is never parsed
    // into numbers).
    let e = Envelope::from_json(GO_FULL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(e.to_json().unwrap()).unwrap(), GO_FULL);
}

#[test]
fn minimal_go_envelope_round_trips_and_omits_optionals() {
    let e = Envelope::from_json(GO_MINIMAL.as_bytes()).unwrap();
    assert_eq!(e.trace_id, None);
    assert_eq!(e.correlation_id, None);
    assert_eq!(e.tenant_id, None);
    let json = String::from_utf8(e.to_json().unwrap()).unwrap();
    assert_eq!(json, GO_MINIMAL);
    for key in ["trace_id", "correlation_id", "tenant_id"] {
        assert!(!json.contains(key), "{key} should be omitted: {json}");
    }
}

#[test]
fn payload_of_any_json_kind_round_trips() {
    for payload in [
        r#"[1,2,3]"#,
        r#"[{"a":1},{"b":[true,false,null]}]"#,
        "42",
        "-1.5e300",
        "12345678901234567890123456789",
        "true",
        "null",
        r#""text""#,
        "{}",
        "[]",
        r#"{"deep":{"er":{"est":{"x":[[[]]]}}}}"#,
        r#"{"unicode":"caf\u00e9 – 日本"}"#,
    ] {
        let doc = format!(
            r#"{{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z","payload":{payload}}}"#
        );
        let e =
            Envelope::from_json(doc.as_bytes()).unwrap_or_else(|err| panic!("{payload}: {err}"));
        assert_eq!(e.payload_json(), payload);
        assert_eq!(String::from_utf8(e.to_json().unwrap()).unwrap(), doc);
    }
}

#[test]
fn payload_bytes_are_kept_exactly() {
    // Odd spacing, key order, escapes and number spellings survive decode + encode.
    let payload = "{ \"z\" : 1.0 ,\n  \"a\":[ 1e2, 0.10 ],\t\"s\":\"\\u00e9\\n\" }";
    let doc = format!(
        r#"{{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z","payload":{payload}}}"#
    );
    let e = Envelope::from_json(doc.as_bytes()).unwrap();
    assert_eq!(e.payload_json(), payload);
    let out = e.to_json().unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.ends_with(&format!(r#""payload":{payload}}}"#)), "{out}");
    // And again through a record.
    let record = e.to_record("t").unwrap();
    let back = Envelope::from_json(&record.value).unwrap();
    assert_eq!(back.payload_json(), payload);
}

#[test]
fn new_serialises_payload_and_round_trips() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Placed {
        id: u64,
        lines: Vec<String>,
    }
    let e = Envelope::new("order-1", "OrderPlaced", 1, Placed { id: 1, lines: vec!["a".into()] })
        .unwrap()
        .with_trace_id("t-1")
        .with_correlation_id("c-1")
        .with_tenant_id("tenant-1");
    assert_eq!(e.payload_json(), r#"{"id":1,"lines":["a"]}"#);
    let back = Envelope::from_json(&e.to_json().unwrap()).unwrap();
    assert_eq!(back.event_id, e.event_id);
    assert_eq!(back.timestamp, e.timestamp);
    assert_eq!(back.trace_id.as_deref(), Some("t-1"));
    assert_eq!(back.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(back.tenant_id.as_deref(), Some("tenant-1"));
    assert_eq!(back.payload_as::<Placed>().unwrap(), Placed { id: 1, lines: vec!["a".into()] });
}

#[test]
fn new_generates_uuid_v4_event_ids_and_current_time() {
    let before = Utc::now();
    let a = Envelope::new("a", "T", 1, 1).unwrap();
    let b = Envelope::new("a", "T", 1, 1).unwrap();
    assert_ne!(a.event_id, b.event_id);
    let id = uuid::Uuid::parse_str(&a.event_id).unwrap();
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(a.event_id, id.hyphenated().to_string(), "lower-case hyphenated form");
    assert!(a.timestamp >= before && a.timestamp <= Utc::now());
}

#[test]
fn new_rejects_unserialisable_payload() {
    let mut bad = std::collections::HashMap::new();
    bad.insert(vec![1u8], 1); // a map with non-string keys has no JSON form
    assert_field(Envelope::new("a", "T", 1, bad).unwrap_err(), "payload");
}

#[test]
fn timestamps_with_offsets_and_nanoseconds_decode_to_utc() {
    // Go's RFC3339Nano output, and a local offset.
    let doc = go_minimal_with("timestamp", Some(r#""2024-03-01T14:34:56.123456789+02:00""#));
    let e = Envelope::from_json(doc.as_bytes()).unwrap();
    assert_eq!(e.timestamp, ts("2024-03-01T12:34:56.123456789Z"));
    let out = String::from_utf8(e.to_json().unwrap()).unwrap();
    assert!(out.contains(r#""timestamp":"2024-03-01T12:34:56.123456789Z""#), "{out}");
}

#[test]
fn unknown_keys_are_ignored_and_empty_or_null_optionals_are_absent() {
    let doc = r#"{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z","trace_id":"","correlation_id":null,"schema":"v9","payload":{}}"#;
    let e = Envelope::from_json(doc.as_bytes()).unwrap();
    assert_eq!(e.trace_id, None);
    assert_eq!(e.correlation_id, None);
    let e = e.with_tenant_id("");
    assert_eq!(e.tenant_id, None);
    assert!(!String::from_utf8(e.to_json().unwrap()).unwrap().contains("trace_id"));
}

#[test]
fn undecodable_bytes_are_json_errors_not_panics() {
    for bytes in [
        &b""[..],
        b"   ",
        b"not json",
        b"[]",
        b"null",
        b"{",
        b"\xff\xfe",
        br#"{"aggregate_id":"a","event_type":"T","event_version":1,"payload":{}}"#, // no timestamp
        br#"{"aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z"}"#, // no payload
        br#"{"aggregate_id":"a","event_type":"T","event_version":"1","timestamp":"2024-01-01T00:00:00Z","payload":{}}"#,
        br#"{"aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"yesterday","payload":{}}"#,
        br#"{"aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z","payload":}"#,
        br#"{"aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2024-01-01T00:00:00Z","payload":{"a":1}"#,
    ] {
        match Envelope::from_json(bytes) {
            Err(EnvelopeError::Json(_)) => {}
            other => panic!("{:?}: expected a Json error, got {other:?}", String::from_utf8_lossy(bytes)),
        }
    }
}

// ----- validation: each rule, accepted edge and rejected case -----------------------------------

#[test]
fn aggregate_id_is_required() {
    let err = Envelope::new("", "T", 1, 1).unwrap_err();
    assert_field(err, "aggregate_id");
    // Missing from the JSON is the same as empty (Go's zero value).
    let err = Envelope::from_json(go_minimal_with("aggregate_id", None).as_bytes()).unwrap_err();
    assert_field(err, "aggregate_id");
    let err =
        Envelope::from_json(go_minimal_with("aggregate_id", Some(r#""""#)).as_bytes()).unwrap_err();
    assert_field(err, "aggregate_id");
    // One character is enough.
    Envelope::new("x", "T", 1, 1).unwrap();
}

#[test]
fn aggregate_id_at_most_256_characters() {
    assert_eq!(MAX_AGGREGATE_ID_LEN, 256);
    let exactly = "a".repeat(256);
    let e = Envelope::new(exactly.clone(), "T", 1, 1).unwrap();
    Envelope::from_json(&e.to_json().unwrap()).unwrap();

    let over = "a".repeat(257);
    let err = Envelope::new(over.clone(), "T", 1, 1).unwrap_err();
    assert!(err.to_string().contains("257"), "{err}");
    assert_field(err, "aggregate_id");
    let doc = go_minimal_with("aggregate_id", Some(&format!("\"{over}\"")));
    assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "aggregate_id");
}

#[test]
fn aggregate_id_allowed_characters() {
    // Every allowed character.
    let all: String =
        ('A'..='Z').chain('a'..='z').chain('0'..='9').chain(":_-./".chars()).collect();
    Envelope::new(all, "T", 1, 1).unwrap();
    for id in ["order-123", "tenant:42/user.7", "a_b", "...", "/", "-leading", "UPPER:lower"] {
        Envelope::new(id, "T", 1, 1).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    // Anything else, including non-ASCII look-alikes, whitespace and control characters.
    for id in [
        "order 123",
        "order\t1",
        "a\nb",
        "a\0b",
        "a+b",
        "a@b",
        "a#b",
        "a?b",
        "a*b",
        "a\\b",
        "a,b",
        "a;b",
        "a|b",
        "a%20b",
        "\"a\"",
        "café",
        "日本",
        "a\u{2010}b", // unicode hyphen
        "a\u{200b}b", // zero-width space
    ] {
        let err = Envelope::new(id, "T", 1, 1).unwrap_err();
        assert_field(err, "aggregate_id");
    }
    let err = Envelope::new("ok-so-far!", "T", 1, 1).unwrap_err();
    assert!(err.to_string().contains("'!'"), "names the character: {err}");
    // Non-ASCII counts in characters, not bytes, when checking the length (and is then
    // rejected for its characters, not its length).
    let err = Envelope::new("é".repeat(200), "T", 1, 1).unwrap_err();
    assert!(err.to_string().contains("'é'"), "{err}");
}

#[test]
fn event_type_is_required() {
    assert_field(Envelope::new("a", "", 1, 1).unwrap_err(), "event_type");
    let doc = go_minimal_with("event_type", None);
    assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "event_type");
    let doc = go_minimal_with("event_type", Some(r#""""#));
    assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "event_type");
    // One character is enough.
    Envelope::new("a", "T", 1, 1).unwrap();
}

#[test]
fn event_version_must_be_positive() {
    Envelope::new("a", "T", 1, 1).unwrap();
    Envelope::new("a", "T", i64::MAX, 1).unwrap();
    for v in [0, -1, i64::MIN] {
        let err = Envelope::new("a", "T", v, 1).unwrap_err();
        assert!(err.to_string().contains(&v.to_string()), "{err}");
        assert_field(err, "event_version");
    }
    let doc = go_minimal_with("event_version", None);
    assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "event_version");
    let doc = go_minimal_with("event_version", Some("0"));
    assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "event_version");
    let doc = go_minimal_with("event_version", Some("1"));
    Envelope::from_json(doc.as_bytes()).unwrap();
}

#[test]
fn payload_must_not_be_empty() {
    // Empty or whitespace-only JSON strings are empty payloads.
    for payload in [r#""""#, r#""   ""#, r#""\n\t""#] {
        let doc = go_minimal_with("payload", Some(payload));
        assert_field(Envelope::from_json(doc.as_bytes()).unwrap_err(), "payload");
        assert_field(Envelope::with_raw_payload("a", "T", 1, raw(payload)).unwrap_err(), "payload");
    }
    assert_field(Envelope::new("a", "T", 1, "").unwrap_err(), "payload");
    assert_field(Envelope::new("a", "T", 1, " ").unwrap_err(), "payload");
    // The smallest accepted payloads: a one-character string, and the empty containers / null.
    for payload in [r#"" x""#, "{}", "[]", "null", "0", "false"] {
        let doc = go_minimal_with("payload", Some(payload));
        Envelope::from_json(doc.as_bytes()).unwrap_or_else(|e| panic!("{payload}: {e}"));
    }
    Envelope::new("a", "T", 1, "x").unwrap();
}

#[test]
fn payload_must_be_valid_json() {
    // serde_json refuses to make a RawValue of blank or invalid text, so these can only arrive
    // as undecodable envelopes: Json errors (the missing-value case is in
    // `undecodable_bytes_are_json_errors_not_panics`).
    assert!(RawValue::from_string(String::new()).is_err());
    assert!(RawValue::from_string("  ".to_owned()).is_err());
    assert!(RawValue::from_string("{".to_owned()).is_err());
    // Valid JSON with surrounding whitespace is fine.
    let e = Envelope::with_raw_payload("a", "T", 1, raw(" {\"a\":1} ")).unwrap();
    Envelope::from_json(&e.to_json().unwrap()).unwrap();
}

#[test]
fn hand_built_invalid_envelopes_are_refused_on_the_way_out() {
    let mut e = valid();
    e.aggregate_id = "bad id".into();
    assert_field(e.validate().unwrap_err(), "aggregate_id");
    assert_field(e.to_json().unwrap_err(), "aggregate_id");
    assert_field(e.to_record("t").unwrap_err(), "aggregate_id");
    let mut e = valid();
    e.event_version = 0;
    assert_field(e.to_record("t").unwrap_err(), "event_version");
    let mut e = valid();
    e.payload = raw(r#""""#);
    assert_field(e.to_json().unwrap_err(), "payload");
}

#[test]
fn validation_reports_the_first_broken_rule_in_field_order() {
    let mut e = valid();
    e.aggregate_id.clear();
    e.event_type.clear();
    e.event_version = 0;
    assert_field(e.validate().unwrap_err(), "aggregate_id");
    e.aggregate_id = "a".into();
    assert_field(e.validate().unwrap_err(), "event_type");
    e.event_type = "T".into();
    assert_field(e.validate().unwrap_err(), "event_version");
}

// ----- records and headers ----------------------------------------------------------------------

#[test]
fn to_record_sets_key_value_and_all_headers() {
    let e = Envelope::from_json(GO_FULL.as_bytes()).unwrap();
    let r = e.to_record("orders").unwrap();
    assert_eq!(r.topic, "orders");
    assert_eq!(r.key.as_deref(), Some(&b"order-123"[..]));
    assert_eq!(r.value, Bytes::from(GO_FULL));
    assert_eq!(r.partition, None);
    assert_eq!(r.timestamp, None);
    let names: Vec<&str> = r.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "X-Aggregate-ID",
            "X-Event-Type",
            "X-Event-Version",
            "X-Event-ID",
            "X-Trace-ID",
            "X-Correlation-ID",
            "X-Tenant-ID"
        ]
    );
    assert_eq!(r.headers.get_str(HEADER_AGGREGATE_ID), Some("order-123"));
    assert_eq!(r.headers.get_str(HEADER_EVENT_TYPE), Some("OrderPlaced"));
    assert_eq!(r.headers.get_str(HEADER_EVENT_VERSION), Some("2"));
    assert_eq!(r.headers.get_str(HEADER_EVENT_ID), Some("6f1c2a7e-3b4d-4c5e-9f60-718293a4b5c6"));
    assert_eq!(r.headers.get_str(HEADER_TRACE_ID), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(r.headers.get_str(HEADER_CORRELATION_ID), Some("req-77"));
    assert_eq!(r.headers.get_str(HEADER_TENANT_ID), Some("tenant-9"));
}

#[test]
fn to_record_omits_absent_optional_headers() {
    let r = valid().to_record("t").unwrap();
    assert_eq!(r.headers.len(), 4);
    for h in [HEADER_TRACE_ID, HEADER_CORRELATION_ID, HEADER_TENANT_ID] {
        assert_eq!(r.headers.get(h), None);
    }
    let r = valid().with_tenant_id("t-1").to_record("t").unwrap();
    assert_eq!(r.headers.len(), 5);
    assert_eq!(r.headers.get_str("x-tenant-id"), Some("t-1"));
}

// ----- aggregate id of raw messages --------------------------------------------------------------

fn message(value: &[u8], headers: &[(&str, &[u8])], key: Option<&[u8]>) -> Message {
    let mut h = Headers::new();
    for (name, v) in headers {
        h.push(*name, Bytes::copy_from_slice(v));
    }
    Message {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: key.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(value),
        headers: h,
        timestamp: Utc::now(),
    }
}

#[test]
fn aggregate_id_prefers_the_envelope() {
    let m = message(GO_FULL.as_bytes(), &[("X-Aggregate-ID", b"from-header")], Some(b"from-key"));
    assert_eq!(aggregate_id_of(&m).as_deref(), Some("order-123"));
}

#[test]
fn aggregate_id_falls_back_to_the_header_in_any_case() {
    for name in ["X-Aggregate-ID", "x-aggregate-id", "X-AGGREGATE-ID", "x-Aggregate-Id"] {
        let m = message(b"not an envelope", &[(name, b"from-header")], Some(b"from-key"));
        assert_eq!(aggregate_id_of(&m).as_deref(), Some("from-header"), "{name}");
    }
    // An envelope that fails validation does not count as an envelope.
    let invalid = go_minimal_with("event_version", Some("0"));
    let m = message(invalid.as_bytes(), &[("x-aggregate-id", b"from-header")], None);
    assert_eq!(aggregate_id_of(&m).as_deref(), Some("from-header"));
}

#[test]
fn aggregate_id_falls_back_to_the_key() {
    let m = message(b"{}", &[("X-Other", b"x")], Some(b"from-key"));
    assert_eq!(aggregate_id_of(&m).as_deref(), Some("from-key"));
    // Empty or non-UTF-8 headers are skipped.
    let m = message(b"", &[("X-Aggregate-ID", b"")], Some(b"from-key"));
    assert_eq!(aggregate_id_of(&m).as_deref(), Some("from-key"));
    let m = message(b"", &[("X-Aggregate-ID", b"\xff\xfe")], Some(b"from-key"));
    assert_eq!(aggregate_id_of(&m).as_deref(), Some("from-key"));
}

#[test]
fn aggregate_id_none_when_nothing_gives_one() {
    assert_eq!(aggregate_id_of(&message(b"x", &[], None)), None);
    assert_eq!(aggregate_id_of(&message(b"x", &[], Some(b""))), None);
    assert_eq!(aggregate_id_of(&message(b"x", &[], Some(b"\xff"))), None);
}

#[test]
fn envelope_from_message_reads_the_value() {
    let m = message(GO_MINIMAL.as_bytes(), &[], None);
    assert_eq!(Envelope::from_message(&m).unwrap().aggregate_id, "tenant:42/user.7");
    assert!(matches!(
        Envelope::from_message(&message(b"{}", &[], None)),
        Err(EnvelopeError::Json(_))
    ));
}
