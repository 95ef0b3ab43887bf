//! The offset-control options as a service writes them: `start` and `commit_mode` in JSON, and
//! `start.offsets` checked by `validate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_core::{
    SubscribeOptions, subscription::CommitMode, subscription::PartitionOffset,
    subscription::StartPosition,
};

#[test]
fn start_positions_and_commit_mode_read_from_json() {
    let options: SubscribeOptions = serde_json::from_value(serde_json::json!({
        "group": "billing",
        "start": {"timestamp": "2026-11-29T12:00:00Z"},
        "commit_mode": "manual",
    }))
    .unwrap();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap();
    assert_eq!(options.start, StartPosition::Timestamp(at.to_utc()));
    assert_eq!(options.commit_mode, CommitMode::Manual);

    let options: SubscribeOptions = serde_json::from_value(serde_json::json!({
        "group": "report",
        "start": {"offsets": [{"topic": "orders", "partition": 2, "offset": 40}]},
    }))
    .unwrap();
    assert_eq!(options.start, StartPosition::Offsets(vec![PartitionOffset::new("orders", 2, 40)]));
    for (text, start) in [("earliest", StartPosition::Earliest), ("latest", StartPosition::Latest)]
    {
        let options: SubscribeOptions =
            serde_json::from_value(serde_json::json!({"group": "g", "start": text})).unwrap();
        assert_eq!(options.start, start);
    }
    let defaults = SubscribeOptions::new("g");
    assert_eq!(
        (defaults.start, defaults.commit_mode),
        (StartPosition::Committed, CommitMode::Auto)
    );
}

#[test]
fn explicit_offsets_are_checked() {
    let with = |offsets| SubscribeOptions::new("g").with_start(StartPosition::Offsets(offsets));
    assert!(
        with(vec![PartitionOffset::new("t", 0, 0), PartitionOffset::new("t", 1, 9)])
            .validate()
            .is_ok()
    );
    let negative = with(vec![PartitionOffset::new("t", 0, -1)]).validate().unwrap_err();
    assert_eq!(negative.field, "start.offsets");
    assert!(negative.reason.contains("`t-0`"), "{negative}");
    let twice = with(vec![PartitionOffset::new("t", 3, 1), PartitionOffset::new("t", 3, 2)])
        .validate()
        .unwrap_err();
    assert!(twice.reason.contains("listed twice"), "{twice}");
    let nameless = with(vec![PartitionOffset::new(" ", 0, 1)]).validate().unwrap_err();
    assert!(nameless.reason.contains("names no topic"), "{nameless}");
}
