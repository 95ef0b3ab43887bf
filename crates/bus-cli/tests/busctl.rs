//! End-to-end tests of the built `busctl` binary against the test broker: produce and tail,
//! dead letters made by a failing handler then replayed (once) and handled, groups with lag,
//! topics, check, a bad configuration and an unreachable broker, Ctrl-C on a following tail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bus_kafka::{Envelope, HandlerError, SubscribeOptions};

/// How long a command may take before the test fails (a deadline, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

fn busctl(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_busctl"));
    command.arg("--bootstrap").arg(bus_tests::bootstrap()).args(args);
    command.env_remove("BUSCTL_CONFIG").env_remove("BUSCTL_BOOTSTRAP");
    command
}

/// Runs `command` to its end (within [`PATIENCE`]) with `stdin`.
fn run(mut command: Command, stdin: &str) -> Output {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("busctl starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
    wait(child, PATIENCE)
}

fn wait(mut child: Child, patience: Duration) -> Output {
    let deadline = Instant::now() + patience;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            panic!("busctl did not exit within {patience:?}: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout {} stderr {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect(l))
        .collect()
}

fn envelope_line(aggregate: &str, event_type: &str, version: i64) -> String {
    let envelope =
        Envelope::new(aggregate, event_type, version, serde_json::json!({"n": version})).unwrap();
    String::from_utf8(envelope.to_json().unwrap()).unwrap()
}

fn create_topic(topic: &str, partitions: i32) {
    ok(run(busctl(&["topics", "create", topic, "--partitions", &partitions.to_string()]), ""));
}

#[test]
fn produce_envelopes_then_tail_them_with_filters() {
    let topic = bus_tests::unique("busctl-tail");
    create_topic(&topic, 2);
    let lines = [
        envelope_line("order-1", "OrderPlaced", 1),
        envelope_line("order-2", "OrderPlaced", 1),
        envelope_line("order-1", "OrderShipped", 2),
        "not an envelope".to_owned(),
    ]
    .join("\n");
    let produced = run(busctl(&["--json", "produce", &topic]), &lines);
    assert_eq!(produced.status.code(), Some(5), "one bad line: partly done: {}", stderr(&produced));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&produced)).unwrap();
    assert_eq!(summary["acknowledged"], 3);
    assert_eq!(summary["failed"], 1);
    let reasons = summary["reasons"].as_object().unwrap();
    assert!(reasons.keys().any(|r| r.contains("not an envelope")), "{summary}");

    let all =
        json_lines(&ok(run(busctl(&["--json", "tail", &topic, "--beginning", "--no-follow"]), "")));
    assert_eq!(all.len(), 3, "{all:?}");
    let mut types: Vec<String> =
        all.iter().map(|r| r["envelope"]["event_type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    assert_eq!(types, ["OrderPlaced", "OrderPlaced", "OrderShipped"]);

    let one = ok(run(
        busctl(&["--json", "tail", &topic, "--beginning", "--no-follow", "--aggregate", "order-1"]),
        "",
    ));
    let one = json_lines(&one);
    assert_eq!(one.len(), 2);
    assert!(one.iter().all(|r| r["envelope"]["aggregate_id"] == "order-1"));
    let shipped = json_lines(&ok(run(
        busctl(&["--json", "tail", &topic, "--beginning", "--no-follow", "--type", "OrderShipped"]),
        "",
    )));
    assert_eq!(shipped.len(), 1);
    assert_eq!(shipped[0]["envelope"]["event_version"], 2);

    // From an offset: order-1's two records share a partition; start after the first.
    let partition = one[0]["partition"].as_i64().unwrap().to_string();
    let first = one.iter().map(|r| r["offset"].as_i64().unwrap()).min().unwrap();
    let later = json_lines(&ok(run(
        busctl(&[
            "--json",
            "tail",
            &topic,
            "--no-follow",
            "--partition",
            &partition,
            "--offset",
            &(first + 1).to_string(),
        ]),
        "",
    )));
    assert!(later.iter().all(|r| r["offset"].as_i64().unwrap() > first), "{later:?}");
    // From a time after every record: nothing.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none =
        ok(run(busctl(&["--json", "tail", &topic, "--no-follow", "--timestamp", &future]), ""));
    assert!(json_lines(&none).is_empty(), "{none}");
    // Human output names the envelope's fields.
    let human = ok(run(busctl(&["tail", &topic, "--beginning", "--no-follow"]), ""));
    assert!(human.contains("order-2 OrderPlaced v1"), "{human}");

    // Raw records, with their headers.
    let raw = r#"{"key":"k","value":{"a":1},"headers":{"trace":"t-1"},"partition":1}"#;
    ok(run(busctl(&["produce", "--raw", &topic]), raw));
    let raws = json_lines(&ok(run(
        busctl(&[
            "--json",
            "tail",
            &topic,
            "--beginning",
            "--no-follow",
            "--raw",
            "--partition",
            "1",
        ]),
        "",
    )));
    let raw_record = raws.iter().find(|r| r["key"] == "k").expect("the raw record");
    assert_eq!(raw_record["value"], r#"{"a":1}"#);
    assert_eq!(raw_record["headers"][0], serde_json::json!(["trace", "t-1"]));
}

#[test]
fn a_following_tail_stops_cleanly_on_ctrl_c() {
    let topic = bus_tests::unique("busctl-follow");
    create_topic(&topic, 1);
    ok(run(busctl(&["produce", &topic]), &envelope_line("a-1", "Seen", 1)));
    let mut child = busctl(&["tail", &topic, "--beginning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it printed the record (it is following now), then interrupt it.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(&topic), "{line}");
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(signalled.success());
    let output = wait(child, PATIENCE);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("interrupted: 1 record(s) shown"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_once_and_handled() {
    let topic = bus_tests::unique("busctl-dlq");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 2);
    create_topic(&dlq, 1);
    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));
    let (f, h) = (fixed.clone(), handled.clone());
    let options = SubscribeOptions::new(bus_tests::unique("busctl-dlq-group"))
        .with_commit_interval(Duration::from_millis(100))
        .with_retry(bus_kafka::subscription::RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(10),
            multiplier: 2.0,
        });
    let _subscription = bus
        .subscribe_envelopes(&topic, options, move |e: Envelope| {
            let (fixed, handled) = (f.clone(), h.clone());
            async move {
                if e.aggregate_id.starts_with("bad") && !fixed.load(Ordering::SeqCst) {
                    return Err(HandlerError::new("the downstream refused it"));
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    for (aggregate, n) in [("good-1", 1), ("bad-1", 1), ("bad-2", 1), ("good-2", 1)] {
        bus.publish_envelope(
            &topic,
            &Envelope::new(aggregate, "Tried", n, serde_json::json!({})).unwrap(),
        )
        .await
        .unwrap();
    }
    bus_tests::wait_for("two handled, two dead-lettered", PATIENCE, || {
        handled.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut listed = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while listed.len() < 2 {
        assert!(Instant::now() < deadline, "the dead letters never showed: {listed:?}");
        let out = ok(run(busctl(&["--json", "dlq", "list", &dlq]), ""));
        listed = serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap();
    }
    for entry in &listed {
        assert_eq!(entry["source_topic"], topic.as_str());
        assert_eq!(entry["reason"], "handler-error");
        assert_eq!(entry["attempts"], "2");
        assert!(entry["error"].as_str().unwrap().contains("the downstream refused it"));
        assert_eq!(entry["replayed"], false);
    }
    let shown = ok(run(busctl(&["--json", "dlq", "show", &dlq, "0", "0"]), ""));
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert!(shown["record"]["envelope"]["aggregate_id"].as_str().unwrap().starts_with("bad"));

    // Without a terminal and without --yes, replay refuses.
    let refused = run(busctl(&["dlq", "replay", &dlq]), "");
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));

    fixed.store(true, Ordering::SeqCst);
    let replayed = ok(run(busctl(&["--json", "dlq", "replay", &dlq, "--yes"]), ""));
    let replayed: serde_json::Value = serde_json::from_str(&replayed).unwrap();
    assert_eq!(replayed["replayed"], 2, "{replayed}");
    bus_tests::wait_for("the replayed records handled", PATIENCE, || {
        handled.load(Ordering::SeqCst) == 4
    })
    .await;

    // A second replay finds them marked and replays nothing.
    let again = ok(run(busctl(&["dlq", "replay", &dlq, "--yes"]), ""));
    assert!(again.contains("nothing to replay (2 selected record(s) replayed before)"), "{again}");
    let listed = ok(run(busctl(&["--json", "dlq", "list", &dlq]), ""));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(listed.iter().all(|e| e["replayed"] == true), "{listed:?}");
    // The replayed copies carry where they came from.
    let copies = json_lines(&ok(run(
        busctl(&["--json", "tail", &topic, "--beginning", "--no-follow", "--aggregate", "bad-1"]),
        "",
    )));
    assert_eq!(copies.len(), 2, "the original and its replayed copy: {copies:?}");
    assert!(copies.iter().any(|r| {
        r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "X-DLQ-Replayed-From" && h[1].as_str().unwrap().starts_with(&dlq))
    }));
    // Nothing was handled twice: 2 good, 2 replayed.
    assert_eq!(handled.load(Ordering::SeqCst), 4);
    bus.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_listed_and_described_with_lag() {
    let topic = bus_tests::unique("busctl-lag");
    let group = bus_tests::unique("busctl-lag-group");
    create_topic(&topic, 2);
    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let options = SubscribeOptions::new(&group).with_commit_interval(Duration::from_millis(100));
    let subscription = bus
        .subscribe(&topic, options, move |_m: bus_kafka::Message| {
            let handled = h.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .await
        .unwrap();
    let lines: Vec<String> =
        (0..6).map(|n| envelope_line(&format!("a-{n}"), "Counted", 1)).collect();
    ok(run(busctl(&["produce", &topic]), &lines.join("\n")));
    bus_tests::wait_for("six handled", PATIENCE, || handled.load(Ordering::SeqCst) == 6).await;
    // While the member runs, the group's description shows it with both partitions assigned.
    let out = ok(run(busctl(&["--json", "groups", "describe", &group]), ""));
    let described: serde_json::Value = serde_json::from_str(&out).unwrap();
    let members = described["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{described}");
    assert_eq!(members[0]["assignment"][topic.as_str()], serde_json::json!([0, 1]), "{described}");
    let table = ok(run(busctl(&["groups", "describe", &group]), ""));
    assert!(table.contains(&format!("{topic}[0,1]")), "{table}");
    subscription.unsubscribe(PATIENCE).await.unwrap();
    ok(run(busctl(&["produce", &topic]), &lines[..4].join("\n")));

    let listed = ok(run(busctl(&["--json", "groups", "list"]), ""));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(listed.iter().any(|g| g["group"] == group.as_str()), "{listed:?}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = ok(run(busctl(&["--json", "groups", "describe", &group]), ""));
        let described: serde_json::Value = serde_json::from_str(&out).unwrap();
        let offsets = described["offsets"].as_array().unwrap();
        let lag: i64 = offsets.iter().map(|o| o["lag"].as_i64().unwrap_or(0)).sum();
        let committed: i64 = offsets.iter().map(|o| o["committed"].as_i64().unwrap_or(0)).sum();
        if lag == 4 && committed == 6 {
            assert!(offsets.iter().all(|o| o["topic"] == topic.as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "lag never 4 with 6 committed: {described}");
    }
    let table = ok(run(busctl(&["groups", "describe", &group]), ""));
    assert!(table.contains("total lag 4"), "{table}");
    let unknown = run(busctl(&["groups", "describe", &bus_tests::unique("no-such-group")]), "");
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
    bus.shutdown(PATIENCE).await.unwrap();
}

#[test]
fn topics_are_created_described_listed_and_deleted() {
    let topic = bus_tests::unique("busctl-topic");
    ok(run(busctl(&["topics", "create", &topic, "-p", "3", "-c", "cleanup.policy=compact"]), ""));
    let again = run(busctl(&["topics", "create", &topic, "-p", "3"]), "");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("TOPIC_ALREADY_EXISTS"), "{}", stderr(&again));
    let described = ok(run(busctl(&["--json", "topics", "describe", &topic]), ""));
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(described["config"]["cleanup.policy"]["value"], "compact");
    let listed = ok(run(busctl(&["topics", "list"]), ""));
    assert!(listed.contains(&topic), "{listed}");
    ok(run(busctl(&["topics", "add-partitions", &topic, "4"]), ""));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let described = ok(run(busctl(&["--json", "topics", "describe", &topic]), ""));
        let described: serde_json::Value = serde_json::from_str(&described).unwrap();
        if described["partitions"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "still not 4 partitions: {described}");
    }
    ok(run(busctl(&["topics", "delete", &topic, "--yes"]), ""));
    let gone = run(busctl(&["topics", "describe", &topic]), "");
    assert_eq!(gone.status.code(), Some(4), "{}", stderr(&gone));
}

#[test]
fn check_reports_the_broker_and_its_versions() {
    let out = ok(run(busctl(&["--json", "check"]), ""));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    let broker = &report["brokers"][0];
    let apis = broker["apis"].as_array().unwrap();
    let fetch = apis.iter().find(|a| a["name"] == "Fetch").expect("Fetch listed");
    assert!(fetch["negotiated"].as_i64().is_some());
    assert_eq!(fetch["required"], true);
    let human = ok(run(busctl(&["check"]), ""));
    assert!(human.contains("OK: nothing would stop a service from starting"), "{human}");
}

#[test]
fn a_bad_configuration_is_named_and_exits_2() {
    let nonsense = run(busctl(&["--bootstrap", "no-port-here", "topics", "list"]), "");
    assert_eq!(nonsense.status.code(), Some(2));
    assert!(stderr(&nonsense).contains("bootstrap"), "{}", stderr(&nonsense));

    let dir = std::env::temp_dir().join(bus_tests::unique("busctl-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kafka.json");
    std::fs::write(&file, r#"{"bootstrap": ["127.0.0.1:9092"], "no_such_field": 1}"#).unwrap();
    let unknown = run(busctl(&["--config", file.to_str().unwrap(), "topics", "list"]), "");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no_such_field"), "{}", stderr(&unknown));

    // SASL whose password variable is unset: named, before any connection.
    std::fs::write(
        &file,
        format!(
            r#"{{"bootstrap": ["{}"], "security": {{"protocol": "sasl_plaintext",
                "sasl": {{"mechanism": "SCRAM-SHA-512", "username": "u",
                "password_env": "BUSCTL_TEST_UNSET_PASSWORD"}}}}}}"#,
            bus_tests::bootstrap()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_busctl"));
    command.args(["--config", file.to_str().unwrap(), "check"]);
    command.env_remove("BUSCTL_TEST_UNSET_PASSWORD").env_remove("BUSCTL_BOOTSTRAP");
    let unset = run(command, "");
    assert_eq!(unset.status.code(), Some(2), "{}", stderr(&unset));
    assert!(stderr(&unset).contains("BUSCTL_TEST_UNSET_PASSWORD"), "{}", stderr(&unset));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unreachable_broker_exits_3_within_the_request_timeout() {
    let port = bus_tests::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_busctl"));
    command.args(["--bootstrap", &format!("127.0.0.1:{port}"), "--request-timeout", "2s"]);
    command.args(["topics", "list"]).env_remove("BUSCTL_CONFIG");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Bounded by the request timeout plus start-up: a hang fails here.
    let output = wait(command.spawn().unwrap(), Duration::from_secs(20));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("cannot connect") && message.contains(&port.to_string()), "{message}");
}

#[test]
fn check_over_sasl_ssl_authenticates_and_names_a_refusal() {
    let secured = bus_tests::secured();
    let secure = |password: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_busctl"));
        command
            .args(["--bootstrap", &secured.bootstrap, "--security-protocol", "sasl_ssl"])
            .arg("--ssl-ca-location")
            .arg(&secured.ca)
            .args(["--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", &secured.user])
            .args(["--sasl-password-env", "BUSCTL_TEST_PASSWORD", "--request-timeout", "5s"])
            .env("BUSCTL_TEST_PASSWORD", password)
            .env_remove("BUSCTL_CONFIG");
        command
    };
    let mut json = secure(&secured.password);
    json.args(["--json", "check"]);
    let report: serde_json::Value = serde_json::from_str(&ok(run(json, ""))).unwrap();
    assert_eq!(report["authenticated"], true);
    assert!(report["sasl"].as_str().unwrap().contains(&secured.user), "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");

    let wrong = "not-the-password-4711";
    let mut refused = secure(wrong);
    refused.arg("check");
    let output = run(refused, "");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("SASL authentication"), "{message}");
    assert!(!message.contains(wrong) && !stdout(&output).contains(wrong), "the password leaked");
}
