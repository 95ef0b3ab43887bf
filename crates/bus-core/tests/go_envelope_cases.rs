//! The envelope against real Go: `tests/data/go_envelope_cases.jsonl` holds, per case, what the
//! Go SDK's rules (Go's `encoding/json` and `time`, then the SDK's `Validate`; restated in
//! `tests/peer/go/envelope.go`) make of an input: undecodable, refused naming a field, or
//! accepted with these fields; and, for raw records, what `ExtractAggregateID` returns.
//!
//! The file is generated, never edited: `bus-go-peer cases > crates/bus-core/tests/data/
//! go_envelope_cases.jsonl` (the binary is built by `cargo xtask test` into
//! `target/go-peer/`); the workspace test `tests/tests/go_envelope.rs` regenerates it and fails
//! when it differs. Every case is checked here, and every mismatch is listed at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_core::aggregate_id_of;
use bus_core::{Envelope, Timestamp, errors::EnvelopeError};
use bus_core::{Headers, Message};
use bytes::Bytes;
use serde_json::Value;

const CASES: &str = include_str!("data/go_envelope_cases.jsonl");

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A `{"text": …}` or `{"hex": …}` value's bytes.
fn bytes_of(v: &Value) -> Vec<u8> {
    match (v.get("text"), v.get("hex")) {
        (Some(Value::String(text)), _) => text.as_bytes().to_vec(),
        (_, Some(Value::String(hex))) => unhex(hex),
        _ => panic!("neither text nor hex: {v}"),
    }
}

fn text_of(v: &Value) -> String {
    String::from_utf8(bytes_of(v)).expect("Go's decoded strings are UTF-8")
}

/// Go's `""` is our `None` for the optional fields.
fn optional(v: &Value) -> Option<String> {
    Some(text_of(v)).filter(|s| !s.is_empty())
}

fn cases(kind: &str) -> Vec<Value> {
    let all: Vec<Value> = CASES.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(all.len() > 400, "the case table looks truncated: {} cases", all.len());
    all.into_iter().filter(|c| c["kind"] == kind).collect()
}

/// The differences between our envelope and Go's decoded fields (payload compared only when
/// `with_payload`).
fn differences(ours: &Envelope, go: &Value, with_payload: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |what: &str, ours: String, go: String| {
        if ours != go {
            diffs.push(format!("{what}: ours {ours:?}, Go's {go:?}"));
        }
    };
    check("event_id", ours.event_id.clone(), text_of(&go["event_id"]));
    check("aggregate_id", ours.aggregate_id.clone(), text_of(&go["aggregate_id"]));
    check("event_type", ours.event_type.clone(), text_of(&go["event_type"]));
    check("event_version", ours.event_version.to_string(), go["event_version"].to_string());
    let go_timestamp = go["timestamp"].as_str().unwrap();
    // "error: ..." when Go cannot print it (its instant and offset are still compared below).
    if !go_timestamp.starts_with("error: ") {
        check("timestamp", ours.timestamp.to_string(), go_timestamp.to_owned());
    }
    check(
        "timestamp instant",
        format!(
            "{}.{:09}",
            ours.timestamp.utc().timestamp(),
            ours.timestamp.utc().timestamp_subsec_nanos()
        ),
        format!("{}.{:09}", go["unix_seconds"], go["nanos"].as_u64().unwrap()),
    );
    check(
        "timestamp offset",
        ours.timestamp.offset_seconds().to_string(),
        go["offset_seconds"].to_string(),
    );
    check("trace_id", format!("{:?}", ours.trace_id), format!("{:?}", optional(&go["trace_id"])));
    check(
        "correlation_id",
        format!("{:?}", ours.correlation_id),
        format!("{:?}", optional(&go["correlation_id"])),
    );
    check(
        "tenant_id",
        format!("{:?}", ours.tenant_id),
        format!("{:?}", optional(&go["tenant_id"])),
    );
    if with_payload {
        check(
            "payload",
            String::from_utf8_lossy(ours.payload.as_bytes()).into_owned(),
            String::from_utf8_lossy(&bytes_of(&go["payload"])).into_owned(),
        );
        if ours.payload.as_bytes() != bytes_of(&go["payload"]) {
            diffs.push("payload bytes differ".to_owned());
        }
    }
    diffs
}

/// Our verdict on `input` against Go's, as a list of differences.
fn judge(case: &Value) -> Vec<String> {
    let input = bytes_of(&case["input"]);
    let ours = Envelope::from_json(&input);
    let mut diffs = Vec::new();
    match (&ours, case["decoded"].as_bool().unwrap(), case["invalid_field"].as_str()) {
        (Err(EnvelopeError::Json(_)), false, _) => {}
        (Err(EnvelopeError::InvalidField { field, .. }), true, Some(go)) if *field == go => {}
        (Ok(envelope), true, None) => {
            diffs.extend(differences(envelope, &case["envelope"], true));
            diffs.extend(encoding_differences(envelope, case));
        }
        (ours, _, _) => diffs.push(format!(
            "verdict: ours {ours:?}; Go's: decoded {}, invalid field {:?}, error {:?}",
            case["decoded"], case["invalid_field"], case["decode_error"]
        )),
    }
    diffs
}

/// For an accepted envelope: our encoding decodes (here) to the same envelope, unless we
/// refuse its timestamp, which we must do exactly when Go's own encoding is not readable by
/// Go; and Go's encoding decodes here to the same fields (Go compacts the payload).
fn encoding_differences(envelope: &Envelope, case: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    if case["encoded"].is_null() {
        // Go's MarshalJSON refused it (a timestamp it cannot print): so must we.
        match envelope.to_json() {
            Err(e) if e.field() == Some("timestamp") => {}
            other => diffs.push(format!("Go could not encode it; ours: {other:?}")),
        }
        return diffs;
    }
    let go_encoded = bytes_of(&case["encoded"]);
    let go_reread = Envelope::from_json(&go_encoded);
    match (envelope.to_json(), &go_reread) {
        (Ok(ours), Ok(_)) => match Envelope::from_json(&ours) {
            Ok(back) if back == *envelope => {}
            other => diffs.push(format!("our encoding does not read back: {other:?}")),
        },
        (Err(e), Err(_)) if e.field() == Some("timestamp") => {}
        (ours, go) => diffs.push(format!(
            "encoding: ours {:?}; Go's encoding read back: {go:?}",
            ours.map(String::from_utf8)
        )),
    }
    if let Ok(go_reread) = go_reread {
        diffs.extend(
            differences(&go_reread, &case["envelope"], false)
                .into_iter()
                .map(|d| format!("Go's encoding read here: {d}")),
        );
    }
    diffs
}

#[test]
fn every_envelope_case_gets_go_s_verdict_and_fields() {
    let cases = cases("envelope");
    let mut failures = Vec::new();
    for case in &cases {
        let diffs = judge(case);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n    {}", case["name"], diffs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Go:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The table covers each outcome.
    let count = |f: &dyn Fn(&Value) -> bool| cases.iter().filter(|c| f(c)).count();
    assert!(count(&|c| c["accepted"] == true) > 100);
    assert!(count(&|c| c["decoded"] == false) > 100);
    assert!(count(&|c| c["invalid_field"].is_string()) > 80);
}

fn message(case: &Value) -> Message {
    let mut headers = Headers::new();
    for h in case["headers"].as_array().unwrap() {
        headers.push(text_of(&h["name"]), Bytes::from(bytes_of(&h["value"])));
    }
    Message {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: case.get("key").map(|k| Bytes::from(bytes_of(k))),
        value: Some(Bytes::from(bytes_of(&case["value"]))),
        headers,
        timestamp: chrono::Utc::now(),
    }
}

#[test]
fn every_aggregate_id_case_matches_extract_aggregate_id() {
    let cases = cases("aggregate_id");
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in &cases {
        let ours = aggregate_id_of(&message(case));
        let go = case.get("aggregate_id").map(text_of);
        if ours != go {
            failures.push(format!("{}: ours {ours:?}, Go's {go:?}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "differences from Go:\n{}", failures.join("\n"));
}

#[test]
fn the_zero_time_is_go_s() {
    // What a case without a timestamp shows; kept here too as a plain statement.
    assert_eq!(Timestamp::zero().to_string(), "0001-01-01T00:00:00Z");
    assert!(Timestamp::zero().is_zero());
}
