//! The envelope with the Go peer (`tests/peer/go`: Go's `encoding/json` and `time` with the Go
//! SDK's rules): the committed case table (`crates/bus-core/tests/data/go_envelope_cases.jsonl`,
//! which bus-core's tests check field by field) is exactly what Go says today, and every
//! envelope we encode, decoded and validated by Go, has the fields we wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_core::Envelope;
use bus_core::{Payload, Timestamp};
use bus_tests::{go_field_differences, hex, run_go_peer, workspace};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

#[test]
fn the_committed_case_table_is_what_go_says_now() {
    let fresh = run_go_peer(&["cases"], b"");
    let path = workspace().join("crates/bus-core/tests/data/go_envelope_cases.jsonl");
    let committed = std::fs::read(&path).unwrap();
    if fresh != committed {
        let fresh = String::from_utf8_lossy(&fresh);
        let committed = String::from_utf8_lossy(&committed);
        let first = fresh.lines().zip(committed.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs from `bus-go-peer cases` ({} lines now, {} committed; first difference \
             at line {:?}): regenerate it with `target/go-peer/bus-go-peer cases > {}` and \
             check what changed",
            path.display(),
            fresh.lines().count(),
            committed.lines().count(),
            first.map(|l| l + 1),
            path.display()
        );
    }
}

/// Envelopes built here: odd strings in every field, every kind of payload, timestamps at
/// offsets, with nanoseconds, at the ends of Go's range and Go's zero time.
fn built_here() -> Vec<Envelope> {
    let at = |text: &str| Timestamp::parse(text).unwrap();
    let mut envelopes = vec![
        Envelope::new("order-1", "OrderPlaced", 1, json!({"total": 42})).unwrap(),
        Envelope::new(" padded:id/1 ", "T", i64::MAX, json!(null)).unwrap(),
        Envelope::new("a", "with \"quotes\" and \\ and \n\t and \u{1} and \u{2028}", 1, "")
            .unwrap()
            .with_event_id("id with spaces, <html> & ünïcödé 😀")
            .with_trace_id("\u{0}nul")
            .with_correlation_id("  ")
            .with_tenant_id("tenant/7"),
        Envelope::new("a", "T", 1, json!({"h": "<a href='x'>&amp;</a>", "u": "\u{2028}\u{2029}"}))
            .unwrap(),
        Envelope::new("a", "T", 1, json!([1.5e300, -0.0, 12345678901234567890u64, "", [], {}]))
            .unwrap(),
        Envelope::with_raw_payload("a", "T", 1, Payload::from_json(" { \"z\" : 1.0 } ").unwrap())
            .unwrap(),
        Envelope::with_raw_payload("a", "T", 1, Payload::from_json(&b"\"\xff\xfe\""[..]).unwrap())
            .unwrap(),
    ];
    for timestamp in [
        at("2024-03-01T14:34:56.123456789+02:00"),
        at("2024-03-01T07:04:56.1-05:30"),
        at("2024-03-01T12:34:56+23:59"),
        at("2024-03-01T12:34:56-23:59"),
        at("0000-01-01T00:00:00+01:00"),
        at("9999-12-31T23:59:59.999999999Z"),
        Timestamp::zero(),
        Timestamp::from(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()),
        Timestamp::from(
            DateTime::parse_from_rfc3339("2024-03-01T12:00:00.000000001-08:00").unwrap(),
        ),
    ] {
        envelopes.push(valid().with_timestamp(timestamp));
    }
    envelopes
}

fn valid() -> Envelope {
    Envelope::new("order-1", "OrderPlaced", 3, json!({"n": 1})).unwrap()
}

/// Every accepted case of the committed table, decoded here.
fn accepted_in_the_table() -> Vec<Envelope> {
    let path = workspace().join("crates/bus-core/tests/data/go_envelope_cases.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|case| case["kind"] == "envelope" && case["accepted"] == true)
        .map(|case| Envelope::from_json(&bus_tests::go_bytes(&case["input"])).unwrap())
        .collect()
}

#[test]
fn go_reads_our_encodings_as_we_wrote_them() {
    let mut envelopes = built_here();
    envelopes.extend(accepted_in_the_table());
    // The ones we refuse to write (a timestamp Go cannot read back) are left out: they are
    // checked in bus-core's tests.
    let encoded: Vec<(Envelope, Vec<u8>)> =
        envelopes.into_iter().filter_map(|e| e.to_json().ok().map(|json| (e, json))).collect();
    assert!(encoded.len() > 150, "too few envelopes: {}", encoded.len());
    let input: String = encoded.iter().map(|(_, json)| hex(json) + "\n").collect();
    let output = run_go_peer(&["decode"], input.as_bytes());
    let verdicts: Vec<Value> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(verdicts.len(), encoded.len(), "one verdict per envelope");
    let mut failures = Vec::new();
    for ((ours, json), verdict) in encoded.iter().zip(&verdicts) {
        let json = String::from_utf8_lossy(json);
        if verdict["accepted"] != true {
            failures.push(format!("{json}\n    Go refused it: {verdict}"));
            continue;
        }
        let diffs = go_field_differences(ours, &verdict["envelope"]);
        if !diffs.is_empty() {
            failures.push(format!("{json}\n    {}", diffs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} envelopes read differently by Go:\n{}",
        failures.len(),
        encoded.len(),
        failures.join("\n")
    );
}
