//! The in-memory backend against Kafka's semantics: partitioning, offsets, consumer groups and
//! their eager rebalances, committed offsets, readers, bounded memory with backpressure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bus_core::backend::{
    Backend, FlushReport, GroupMember, JoinRequest, MemberEvent, PartitionReader, Revocation,
};
use bus_core::memory::{MemoryBackend, MemoryConfig, TopicError};
use bus_core::{
    Message, Partitioner, Record, StartAt, TopicPartition, errors::PublishError,
    errors::SubscribeError, health::Health,
};
use bus_supervisor::Supervisor;
use tokio::time::{Instant, timeout};

/// A generous deadline for what should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

fn backend(config: MemoryConfig) -> (Supervisor, Arc<MemoryBackend>) {
    let supervisor = Supervisor::new("test");
    let backend = MemoryBackend::new(supervisor.root().child("memory"), config).unwrap();
    (supervisor, backend)
}

fn request(
    supervisor: &Supervisor,
    group: &str,
    topics: &[&str],
    rebalance: Duration,
) -> JoinRequest {
    JoinRequest {
        group: group.to_owned(),
        topics: bus_core::Topics::names(topics.iter().copied()),
        group_instance_id: None,
        scope: supervisor.root().child(format!("sub-{group}")),
        rebalance_timeout: rebalance,
        auto_offset_reset: bus_core::subscription::OffsetReset::Earliest,
    }
}

async fn join(
    backend: &MemoryBackend,
    supervisor: &Supervisor,
    group: &str,
    topics: &[&str],
) -> Box<dyn GroupMember> {
    backend.join(request(supervisor, group, topics, Duration::from_secs(30))).await.unwrap()
}

async fn event(member: &dyn GroupMember) -> MemberEvent {
    timeout(PATIENCE, member.next_event()).await.expect("no event in time").unwrap()
}

async fn assigned(member: &dyn GroupMember) -> Vec<TopicPartition> {
    match event(member).await {
        MemberEvent::Assigned(partitions) => partitions,
        MemberEvent::Revoked(r) => {
            panic!("expected an assignment, got a revocation of {:?}", r.partitions)
        }
    }
}

async fn revoked(member: &dyn GroupMember) -> Revocation {
    match event(member).await {
        MemberEvent::Revoked(revocation) => revocation,
        MemberEvent::Assigned(p) => panic!("expected a revocation, got an assignment of {p:?}"),
    }
}

/// Two members `a` and `b` of `group` on `topic` (of `partitions` partitions), with their settled
/// assignments: `a` may first be given every partition alone, then give them up to the rebalance
/// `b`'s join starts.
async fn two_members(
    backend: &MemoryBackend,
    supervisor: &Supervisor,
    group: &str,
    topic: &str,
    partitions: usize,
) -> (Box<dyn GroupMember>, Vec<TopicPartition>, Box<dyn GroupMember>, Vec<TopicPartition>) {
    let a = join(backend, supervisor, group, &[topic]).await;
    let b = join(backend, supervisor, group, &[topic]).await;
    let mut a_parts = assigned(&*a).await;
    if a_parts.len() == partitions {
        revoked(&*a).await.complete();
        a_parts = assigned(&*a).await;
    }
    let b_parts = assigned(&*b).await;
    (a, a_parts, b, b_parts)
}

/// Polls `fut` once with the task's real context.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

async fn publish(backend: &MemoryBackend, record: Record) -> bus_core::Delivery {
    let delivery = backend.send(record).await.unwrap();
    delivery.await.unwrap()
}

fn all_partitions(topic: &str, n: i32) -> BTreeSet<TopicPartition> {
    (0..n).map(|p| TopicPartition::new(topic, p)).collect()
}

/// Asserts that the sets are pairwise disjoint and cover `expected`.
fn assert_partitioned(sets: &[&[TopicPartition]], expected: &BTreeSet<TopicPartition>) {
    let mut seen = BTreeSet::new();
    for set in sets {
        for tp in *set {
            assert!(seen.insert(tp.clone()), "{tp} assigned twice: {sets:?}");
        }
    }
    assert_eq!(&seen, expected, "assignment does not cover every partition");
}

/// Reads everything `reader` has until an empty batch.
async fn drain(reader: &mut Box<dyn PartitionReader>) -> Vec<Message> {
    let mut all = Vec::new();
    loop {
        let batch = timeout(PATIENCE, reader.next_batch(1 << 20)).await.unwrap().unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

// ---------------------------------------------------------------------------------------------
// Publishing and partitions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn partition_choice_matches_the_partitioners() {
    for partitioner in Partitioner::ALL {
        let (_sup, backend) = backend(MemoryConfig::default().with_partitioner(partitioner));
        backend.create_topic("orders", 7).unwrap();
        for i in 0..60 {
            let key = format!("aggregate-{i}");
            let d = publish(&backend, Record::new("orders", "v").with_key(key.clone())).await;
            let expected = partitioner.partition(key.as_bytes(), 7).unwrap();
            assert_eq!(d.partition, expected, "{partitioner} for key {key}");
            let stored = &backend.records("orders", d.partition).unwrap()
                [usize::try_from(d.offset).unwrap()];
            assert_eq!(stored.key.as_deref(), Some(key.as_bytes()));
        }
        // An empty key is a key (hashed), not an absent one.
        let d = publish(&backend, Record::new("orders", "v").with_key("")).await;
        assert_eq!(d.partition, partitioner.partition(b"", 7).unwrap());
    }
}

#[tokio::test]
async fn unkeyed_records_are_spread_over_every_partition() {
    let (_sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("events", 4).unwrap();
    let mut counts = BTreeMap::new();
    for _ in 0..40 {
        let d = publish(&backend, Record::new("events", "x")).await;
        *counts.entry(d.partition).or_insert(0) += 1;
    }
    assert_eq!(counts, (0..4).map(|p| (p, 10)).collect());
}

#[tokio::test]
async fn explicit_partition_is_used_and_checked() {
    let (_sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 3).unwrap();
    let d = publish(&backend, Record::new("orders", "v").with_key("k").with_partition(2)).await;
    assert_eq!((d.topic.as_str(), d.partition, d.offset), ("orders", 2, 0));
    for bad in [3, -1] {
        match backend.send(Record::new("orders", "v").with_partition(bad)).await {
            Err(PublishError::InvalidRecord { topic, reason }) => {
                assert_eq!(topic, "orders");
                assert!(reason.contains(&format!("partition {bad}")), "{reason}");
            }
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn offsets_are_contiguous_per_partition_and_timestamps_kept() {
    let (_sup, backend) = backend(MemoryConfig::default());
    let stamp = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let mut deliveries: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for i in 0..90u32 {
        let mut record = Record::new("auto", format!("value-{i}")).with_key(format!("k{}", i % 13));
        if i.is_multiple_of(2) {
            record = record.with_timestamp(stamp);
        }
        let d = publish(&backend, record).await;
        deliveries.entry(d.partition).or_default().push(d.offset);
    }
    assert_eq!(backend.partitions("auto"), Some(3), "auto-created with the default count");
    let mut total = 0;
    for p in 0..3 {
        let records = backend.records("auto", p).unwrap();
        let offsets: Vec<i64> = records.iter().map(|m| m.offset).collect();
        let expected: Vec<i64> = (0..i64::try_from(records.len()).unwrap()).collect();
        assert_eq!(offsets, expected, "partition {p}");
        assert_eq!(deliveries.get(&p).cloned().unwrap_or_default(), expected);
        assert_eq!(backend.end_offset("auto", p).unwrap(), i64::try_from(records.len()).unwrap());
        assert_eq!(backend.start_offset("auto", p).unwrap(), 0);
        for m in &records {
            assert_eq!(m.partition, p);
            let i: usize =
                std::str::from_utf8(m.payload()).unwrap()["value-".len()..].parse().unwrap();
            if i.is_multiple_of(2) {
                assert_eq!(m.timestamp, stamp);
            } else {
                assert!(m.timestamp > stamp, "publish time used when absent");
            }
        }
        total += records.len();
    }
    assert_eq!(total, 90);
}

#[tokio::test]
async fn create_topic_is_idempotent_and_checks_the_count() {
    let (_sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("t", 5).unwrap();
    backend.create_topic("t", 5).unwrap();
    assert_eq!(
        backend.create_topic("t", 6),
        Err(TopicError::AlreadyExists { topic: "t".into(), existing: 5, requested: 6 })
    );
    assert!(matches!(backend.create_topic("u", 0), Err(TopicError::InvalidPartitionCount { .. })));
    assert!(matches!(backend.create_topic("bad name", 1), Err(TopicError::InvalidName { .. })));
    assert_eq!(backend.partitions("t"), Some(5));
    assert_eq!(backend.partitions("nope"), None);
    assert!(matches!(
        backend.records("t", 5),
        Err(TopicError::UnknownPartition { partition: 5, .. })
    ));
    assert!(matches!(backend.records("nope", 0), Err(TopicError::UnknownTopic { .. })));
}

#[tokio::test]
async fn unknown_topics_are_errors_when_auto_create_is_off() {
    let (sup, backend) = backend(MemoryConfig::default().with_auto_create_topics(false));
    match backend.send(Record::new("missing", "v")).await {
        Err(PublishError::UnknownTopic { topic }) => assert_eq!(topic, "missing"),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    match backend.join(request(&sup, "g", &["missing"], Duration::from_secs(30))).await {
        Err(SubscribeError::UnknownTopic { topic }) => assert_eq!(topic, "missing"),
        Err(other) => panic!("expected UnknownTopic, got {other:?}"),
        Ok(_) => panic!("joined a missing topic"),
    }
    assert_eq!(backend.partitions("missing"), None);
    backend.create_topic("missing", 2).unwrap();
    publish(&backend, Record::new("missing", "v")).await;
    let member = join(&backend, &sup, "g", &["missing"]).await;
    assert_eq!(assigned(&*member).await.len(), 2);
}

#[tokio::test]
async fn config_validation_names_the_field() {
    let cases = [
        (MemoryConfig::default().with_default_partitions(0), "memory.default_partitions"),
        (MemoryConfig::default().with_default_partitions(1_000_000), "memory.default_partitions"),
        (MemoryConfig::default().with_topic_capacity_bytes(0), "memory.topic_capacity_bytes"),
        (MemoryConfig::default().with_poll_interval(Duration::ZERO), "memory.poll_interval"),
    ];
    for (config, field) in cases {
        assert_eq!(config.validate().unwrap_err().field, field);
        let supervisor = Supervisor::new("test");
        assert_eq!(MemoryBackend::new(supervisor.root().clone(), config).unwrap_err().field, field);
    }
    assert_eq!(MemoryConfig::default().validate(), Ok(()));

    let parsed: MemoryConfig = serde_json::from_str(
        r#"{"default_partitions": 6, "partitioner": "fnv1a", "publish_timeout": "5s",
            "poll_interval": "20ms", "auto_create_topics": false}"#,
    )
    .unwrap();
    assert_eq!(parsed.default_partitions, 6);
    assert_eq!(parsed.partitioner, Partitioner::Fnv1a);
    assert_eq!(parsed.publish_timeout, Duration::from_secs(5));
    assert_eq!(parsed.poll_interval, Duration::from_millis(20));
    assert!(!parsed.auto_create_topics);
    assert_eq!(parsed.topic_capacity_bytes, 64 * 1024 * 1024, "defaults fill the rest");
    assert!(serde_json::from_str::<MemoryConfig>(r#"{"partitions": 6}"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Consumer groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_groups_each_see_every_record() {
    let (sup, backend) =
        backend(MemoryConfig::default().with_poll_interval(Duration::from_millis(10)));
    let mut published = BTreeSet::new();
    for i in 0..30 {
        publish(&backend, Record::new("orders", format!("{i}")).with_key(format!("k{i}"))).await;
        published.insert(format!("{i}"));
    }
    for group in ["billing", "shipping"] {
        let member = join(&backend, &sup, group, &["orders"]).await;
        let partitions = assigned(&*member).await;
        assert_eq!(partitions.len(), 3);
        let mut seen = BTreeSet::new();
        for tp in &partitions {
            let mut reader = member.open(tp, StartAt::Earliest).await.unwrap();
            for m in drain(&mut reader).await {
                assert!(seen.insert(String::from_utf8(m.payload().to_vec()).unwrap()));
            }
        }
        assert_eq!(seen, published, "group {group}");
    }
}

#[tokio::test]
async fn two_members_split_the_partitions() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 6).unwrap();
    let (_a, a_parts, _b, b_parts) = two_members(&backend, &sup, "g", "orders", 6).await;
    assert_eq!((a_parts.len(), b_parts.len()), (3, 3));
    assert_partitioned(&[&a_parts, &b_parts], &all_partitions("orders", 6));
    assert_eq!(backend.members("g").len(), 2);
}

#[tokio::test]
async fn partitions_go_only_to_members_subscribed_to_their_topic() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("a", 2).unwrap();
    backend.create_topic("b", 4).unwrap();
    let only_a = join(&backend, &sup, "g", &["a"]).await;
    let both = join(&backend, &sup, "g", &["a", "b"]).await;
    let mut first = assigned(&*only_a).await;
    if first.len() == 2 {
        // `only_a` got a first generation alone; the second member's join revokes it.
        revoked(&*only_a).await.complete();
        first = assigned(&*only_a).await;
    }
    let second = assigned(&*both).await;
    assert!(first.iter().all(|tp| &*tp.topic == "a"), "{first:?}");
    let mut expected = all_partitions("a", 2);
    expected.extend(all_partitions("b", 4));
    assert_partitioned(&[&first, &second], &expected);
    assert_eq!(first.len(), 1, "round robin gives `a` one partition of topic a: {first:?}");
}

#[tokio::test(start_paused = true)]
async fn a_join_revokes_everyone_first_then_reassigns() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 6).unwrap();
    let a = join(&backend, &sup, "g", &["orders"]).await;
    assert_eq!(assigned(&*a).await.len(), 6, "first event after join is the assignment");
    let b = join(&backend, &sup, "g", &["orders"]).await;
    let rev = revoked(&*a).await;
    assert_eq!(rev.partitions.len(), 6);
    rev.complete();
    let a1 = assigned(&*a).await;
    let b1 = assigned(&*b).await;
    assert_partitioned(&[&a1, &b1], &all_partitions("orders", 6));
    let generation = backend.generation("g").unwrap();

    let c = join(&backend, &sup, "g", &["orders"]).await;
    let rev_a = revoked(&*a).await;
    let rev_b = revoked(&*b).await;
    assert_eq!(rev_a.partitions, a1, "eager: all of a's partitions are revoked");
    assert_eq!(rev_b.partitions, b1, "eager: all of b's partitions are revoked");
    // Nobody is assigned while a revocation is outstanding.
    assert!(timeout(Duration::from_secs(1), c.next_event()).await.is_err());
    rev_a.complete();
    assert!(timeout(Duration::from_secs(1), c.next_event()).await.is_err());
    assert!(timeout(Duration::from_secs(1), a.next_event()).await.is_err());
    // The revoking member may still commit what it is giving up.
    b.commit(&[(b1[0].clone(), 0)]).await.unwrap();
    rev_b.complete();

    let a2 = assigned(&*a).await;
    let b2 = assigned(&*b).await;
    let c2 = assigned(&*c).await;
    assert_eq!((a2.len(), b2.len(), c2.len()), (2, 2, 2));
    assert_partitioned(&[&a2, &b2, &c2], &all_partitions("orders", 6));
    assert_eq!(backend.generation("g"), Some(generation + 1));
}

#[tokio::test(start_paused = true)]
async fn a_leaving_member_hands_its_partitions_over() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 4).unwrap();
    let (a, a1, b, b1) = two_members(&backend, &sup, "g", "orders", 4).await;
    assert_eq!((a1.len(), b1.len()), (2, 2));

    b.leave().await.unwrap();
    assert_eq!(backend.members("g").len(), 1);
    assert!(b.next_event().await.unwrap_err().reason.contains("left"));
    let rev = revoked(&*a).await;
    assert_eq!(rev.partitions, a1);
    drop(rev); // dropping completes it too
    let a2 = assigned(&*a).await;
    assert_eq!(a2.into_iter().collect::<BTreeSet<_>>(), all_partitions("orders", 4));

    // A dropped member leaves as well: its partitions move.
    let c = join(&backend, &sup, "g", &["orders"]).await;
    revoked(&*a).await.complete();
    let a3 = assigned(&*a).await;
    let c3 = assigned(&*c).await;
    assert_partitioned(&[&a3, &c3], &all_partitions("orders", 4));
    drop(c);
    revoked(&*a).await.complete();
    assert_eq!(assigned(&*a).await.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_never_completes_its_revocation_is_expelled() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 4).unwrap();
    let stuck =
        backend.join(request(&sup, "g", &["orders"], Duration::from_secs(5))).await.unwrap();
    assert_eq!(assigned(&*stuck).await.len(), 4);
    let b = backend.join(request(&sup, "g", &["orders"], Duration::from_secs(60))).await.unwrap();
    let started = Instant::now();
    let held = revoked(&*stuck).await; // taken, never completed
    assert_eq!(held.partitions.len(), 4);

    // `b` gets its first assignment only once `stuck` is expelled, 5 s (virtual) later.
    let parts = assigned(&*b).await;
    assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(parts.into_iter().collect::<BTreeSet<_>>(), all_partitions("orders", 4));
    assert_eq!(backend.members("g"), vec![b.member_id()]);

    let err = stuck.next_event().await.unwrap_err();
    assert!(err.reason.contains("removed") && !err.retriable, "{err}");
    let err = stuck.commit(&[(TopicPartition::new("orders", 0), 0)]).await.unwrap_err();
    assert!(err.reason.contains("removed"), "{err}");
    drop(held);
    b.commit(&[(TopicPartition::new("orders", 0), 0)]).await.unwrap();
}

#[tokio::test]
async fn commit_and_committed_round_trip() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 2).unwrap();
    for p in [0, 0, 0, 1] {
        publish(&backend, Record::new("orders", "v").with_partition(p)).await;
    }
    let member = join(&backend, &sup, "g", &["orders"]).await;
    let parts = assigned(&*member).await;
    assert_eq!(parts.len(), 2);
    let p0 = TopicPartition::new("orders", 0);
    let p1 = TopicPartition::new("orders", 1);
    assert_eq!(member.committed(&[p0.clone(), p1.clone()]).await.unwrap(), vec![None, None]);
    member.commit(&[(p0.clone(), 3)]).await.unwrap();
    assert_eq!(member.committed(&[p0.clone(), p1.clone()]).await.unwrap(), vec![Some(3), None]);
    member.commit(&[(p0.clone(), 2), (p1.clone(), 1)]).await.unwrap();
    assert_eq!(member.committed(&[p0.clone(), p1.clone()]).await.unwrap(), vec![Some(2), Some(1)]);
    assert_eq!(backend.committed_offsets("g"), BTreeMap::from([(p0.clone(), 2), (p1.clone(), 1)]));

    // Offsets outlive members: a new member of the group reads them.
    member.leave().await.unwrap();
    let next = join(&backend, &sup, "g", &["orders"]).await;
    assigned(&*next).await;
    assert_eq!(next.committed(std::slice::from_ref(&p0)).await.unwrap(), vec![Some(2)]);
    // Past the end offset or negative: rejected, nothing stored.
    let err = next.commit(&[(p1.clone(), 0), (p0.clone(), 4)]).await.unwrap_err();
    assert!(!err.retriable && err.reason.contains("orders-0"), "{err}");
    assert!(next.commit(&[(p0.clone(), -1)]).await.is_err());
    assert_eq!(next.committed(&[p0, p1]).await.unwrap(), vec![Some(2), Some(1)]);
}

#[tokio::test]
async fn a_commit_by_a_non_owner_is_rejected() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("orders", 4).unwrap();
    let (a, a1, _b, b1) = two_members(&backend, &sup, "g", "orders", 4).await;
    let err = a.commit(&[(b1[0].clone(), 0)]).await.unwrap_err();
    assert!(err.retriable, "{err}");
    assert_eq!(err.group, "g");
    assert!(
        err.reason.contains("not the owner") && err.reason.contains(&b1[0].to_string()),
        "{err}"
    );
    a.commit(&[(a1[0].clone(), 0)]).await.unwrap();
    // A partial failure commits nothing.
    assert!(a.commit(&[(a1[1].clone(), 0), (b1[1].clone(), 0)]).await.is_err());
    assert_eq!(backend.committed_offsets("g").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn readers_start_at_earliest_latest_or_an_offset() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("t", 1).unwrap();
    for i in 0..5 {
        publish(&backend, Record::new("t", format!("{i}"))).await;
    }
    let member = join(&backend, &sup, "g", &["t"]).await;
    let tp = assigned(&*member).await.remove(0);
    let offsets = |ms: Vec<Message>| ms.iter().map(|m| m.offset).collect::<Vec<_>>();

    let mut earliest = member.open(&tp, StartAt::Earliest).await.unwrap();
    assert_eq!(offsets(drain(&mut earliest).await), vec![0, 1, 2, 3, 4]);
    let mut at_three = member.open(&tp, StartAt::Offset(3)).await.unwrap();
    assert_eq!(offsets(drain(&mut at_three).await), vec![3, 4]);
    let mut below = member.open(&tp, StartAt::Offset(-7)).await.unwrap();
    assert_eq!(offsets(drain(&mut below).await), vec![0, 1, 2, 3, 4], "clamped to the start");
    let mut latest = member.open(&tp, StartAt::Latest).await.unwrap();
    let mut beyond = member.open(&tp, StartAt::Offset(99)).await.unwrap();
    assert!(drain(&mut latest).await.is_empty());
    assert!(drain(&mut beyond).await.is_empty());
    publish(&backend, Record::new("t", "5")).await;
    assert_eq!(offsets(drain(&mut latest).await), vec![5]);
    assert_eq!(offsets(drain(&mut beyond).await), vec![5], "clamped to the end");
    assert_eq!(offsets(drain(&mut earliest).await), vec![5]);
}

#[tokio::test(start_paused = true)]
async fn next_batch_waits_for_an_append_and_is_cancel_safe() {
    let poll = Duration::from_millis(100);
    let (sup, backend) = backend(MemoryConfig::default().with_poll_interval(poll));
    backend.create_topic("t", 1).unwrap();
    let member = join(&backend, &sup, "g", &["t"]).await;
    let tp = assigned(&*member).await.remove(0);
    let mut reader = member.open(&tp, StartAt::Earliest).await.unwrap();

    // Nothing there: an empty batch after the poll interval.
    let started = Instant::now();
    assert!(reader.next_batch(1024).await.unwrap().is_empty());
    assert!(started.elapsed() >= poll);

    // A pending call is woken by an append.
    {
        let mut pending = reader.next_batch(1024);
        assert!(poll_once(&mut pending).await.is_pending());
        publish(&backend, Record::new("t", "zero")).await;
        let batch = timeout(PATIENCE, pending).await.unwrap().unwrap();
        assert_eq!(batch.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0]);
    }

    // A pending call dropped before it returns loses nothing.
    {
        let mut pending = reader.next_batch(1024);
        assert!(poll_once(&mut pending).await.is_pending());
        publish(&backend, Record::new("t", "one")).await;
        drop(pending);
    }
    let batch = reader.next_batch(1024).await.unwrap();
    assert_eq!(batch.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![1]);

    // Batches respect max_bytes, but always carry at least one record.
    for v in ["2222", "3333", "4444"] {
        publish(&backend, Record::new("t", v)).await;
    }
    assert_eq!(reader.next_batch(1).await.unwrap().len(), 1, "one record even when too big");
    assert_eq!(
        reader.next_batch(8).await.unwrap().iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[tokio::test(start_paused = true)]
async fn next_event_is_cancel_safe() {
    let (sup, backend) = backend(MemoryConfig::default());
    backend.create_topic("t", 2).unwrap();
    let a = join(&backend, &sup, "g", &["t"]).await;
    // Dropped before it completes, repeatedly: the assignment is still there afterwards.
    for _ in 0..3 {
        let mut pending = a.next_event();
        let _ = poll_once(&mut pending).await;
        drop(pending);
    }
    assert_eq!(assigned(&*a).await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Bounded memory and backpressure
// ---------------------------------------------------------------------------------------------

fn small(capacity: usize, publish_timeout: Duration) -> MemoryConfig {
    MemoryConfig::default()
        .with_topic_capacity_bytes(capacity)
        .with_publish_timeout(publish_timeout)
}

#[tokio::test(start_paused = true)]
async fn a_full_topic_makes_send_wait_then_fail_with_buffer_full() {
    let (sup, backend) = backend(small(100, Duration::from_secs(5)));
    backend.create_topic("t", 2).unwrap();
    let member = join(&backend, &sup, "g", &["t"]).await; // joins but never commits
    assigned(&*member).await;
    for i in 0..10 {
        publish(&backend, Record::new("t", format!("{i:010}"))).await; // 10 bytes each
    }
    assert_eq!(backend.stored_bytes("t").unwrap(), 100);

    let started = Instant::now();
    let mut send = backend.send(Record::new("t", "0123456789"));
    assert!(poll_once(&mut send).await.is_pending(), "waits for room");
    match send.await {
        Err(PublishError::BufferFull { needed, capacity, waited }) => {
            assert_eq!((needed, capacity), (10, 100));
            assert!(waited >= Duration::from_secs(5), "{waited:?}");
        }
        other => panic!("expected BufferFull, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(5));
    // Nothing was dropped to make room.
    assert_eq!(backend.records("t", 0).unwrap().len() + backend.records("t", 1).unwrap().len(), 10);

    // A record larger than the whole capacity is rejected at once.
    match backend.send(Record::new("t", vec![0u8; 101])).await {
        Err(PublishError::InvalidRecord { topic, reason }) => {
            assert_eq!(topic, "t");
            assert!(reason.contains("capacity"), "{reason}");
        }
        other => panic!("expected InvalidRecord, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn without_any_group_nothing_is_truncated() {
    let (_sup, backend) = backend(small(30, Duration::ZERO));
    backend.create_topic("t", 1).unwrap();
    for _ in 0..3 {
        publish(&backend, Record::new("t", "0123456789")).await;
    }
    assert!(matches!(
        backend.send(Record::new("t", "0123456789")).await,
        Err(PublishError::BufferFull { .. })
    ));
    assert_eq!(backend.start_offset("t", 0).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_commit_frees_room_for_a_waiting_send() {
    let (sup, backend) = backend(small(100, Duration::from_secs(30)));
    backend.create_topic("t", 1).unwrap();
    let member = join(&backend, &sup, "g", &["t"]).await;
    let tp = assigned(&*member).await.remove(0);
    let mut reader = member.open(&tp, StartAt::Earliest).await.unwrap();
    for i in 0..10 {
        publish(&backend, Record::new("t", format!("{i:010}"))).await;
    }

    let mut send = backend.send(Record::new("t", "new-record"));
    assert!(poll_once(&mut send).await.is_pending());
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(poll_once(&mut send).await.is_pending(), "still waiting before the commit");

    member.commit(&[(tp.clone(), 3)]).await.unwrap();
    let delivery = timeout(PATIENCE, send).await.unwrap().unwrap().await.unwrap();
    assert_eq!(delivery.offset, 10);
    // Just enough room was made: one record (offset 0) went, the uncommitted ones stayed.
    assert_eq!(backend.start_offset("t", 0).unwrap(), 1);
    let kept: Vec<i64> = backend.records("t", 0).unwrap().iter().map(|m| m.offset).collect();
    assert_eq!(kept, (1..=10).collect::<Vec<_>>());
    // A reader positioned below the log start moves to it.
    let first = reader.next_batch(10).await.unwrap();
    assert_eq!(first[0].offset, 1);
}

#[tokio::test(start_paused = true)]
async fn truncation_never_drops_a_record_some_group_has_not_committed() {
    let (sup, backend) = backend(small(100, Duration::from_secs(1)));
    backend.create_topic("t", 1).unwrap();
    let fast = join(&backend, &sup, "fast", &["t"]).await;
    let slow = join(&backend, &sup, "slow", &["t"]).await;
    let tp = assigned(&*fast).await.remove(0);
    assert_eq!(assigned(&*slow).await, vec![tp.clone()]);
    for i in 0..10 {
        publish(&backend, Record::new("t", format!("{i:010}"))).await;
    }
    fast.commit(&[(tp.clone(), 8)]).await.unwrap();
    slow.commit(&[(tp.clone(), 2)]).await.unwrap();

    for _ in 0..2 {
        publish(&backend, Record::new("t", "0123456789")).await;
    }
    assert!(matches!(
        backend.send(Record::new("t", "0123456789")).await,
        Err(PublishError::BufferFull { .. })
    ));
    assert_eq!(backend.start_offset("t", 0).unwrap(), 2, "only what both groups committed went");
    let kept: Vec<i64> = backend.records("t", 0).unwrap().iter().map(|m| m.offset).collect();
    assert_eq!(kept, (2..12).collect::<Vec<_>>());

    // A group that left still holds its records back until it is deleted.
    slow.leave().await.unwrap();
    assert!(matches!(
        backend.send(Record::new("t", "0123456789")).await,
        Err(PublishError::BufferFull { .. })
    ));
    backend.delete_group("slow").unwrap();
    publish(&backend, Record::new("t", "0123456789")).await;
    assert_eq!(backend.start_offset("t", 0).unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn waiting_sends_are_served_in_order() {
    let (sup, backend) = backend(small(20, Duration::from_secs(30)));
    backend.create_topic("t", 1).unwrap();
    let member = join(&backend, &sup, "g", &["t"]).await;
    let tp = assigned(&*member).await.remove(0);
    publish(&backend, Record::new("t", "0123456789")).await;
    publish(&backend, Record::new("t", "0123456789")).await;
    let mut big = backend.send(Record::new("t", "01234567890123456789"));
    assert!(poll_once(&mut big).await.is_pending());
    let mut little = backend.send(Record::new("t", "x"));
    assert!(poll_once(&mut little).await.is_pending(), "does not overtake the first in line");
    member.commit(&[(tp.clone(), 1)]).await.unwrap();
    assert!(poll_once(&mut little).await.is_pending(), "10 bytes free, the first needs 20");
    member.commit(&[(tp.clone(), 2)]).await.unwrap();
    let big = timeout(PATIENCE, big).await.unwrap().unwrap().await.unwrap();
    assert_eq!(big.offset, 2);
    member.commit(&[(tp.clone(), 3)]).await.unwrap();
    let little = timeout(PATIENCE, little).await.unwrap().unwrap().await.unwrap();
    assert_eq!(little.offset, 3);
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiting_sends_and_freezes_admission() {
    let (sup, backend) = backend(small(10, Duration::from_secs(30)));
    backend.create_topic("t", 1).unwrap();
    let member = join(&backend, &sup, "g", &["t"]).await;
    let tp = assigned(&*member).await.remove(0);
    publish(&backend, Record::new("t", "0123456789")).await;
    let mut waiting = backend.send(Record::new("t", "0123456789"));
    assert!(poll_once(&mut waiting).await.is_pending());
    assert_eq!(backend.health(), Health::Ready);

    backend.close();
    assert!(matches!(timeout(PATIENCE, waiting).await.unwrap(), Err(PublishError::Closed)));
    assert_eq!(backend.health(), Health::Closed);
    assert!(matches!(backend.send(Record::new("t", "v")).await, Err(PublishError::Closed)));
    assert!(matches!(
        backend.join(request(&sup, "g2", &["t"], Duration::from_secs(1))).await,
        Err(SubscribeError::Closed)
    ));
    assert_eq!(backend.flush(Instant::now()).await, FlushReport { flushed: 0, failed: 0 });
    // Existing members can still commit and leave (a shutdown commits after freezing).
    member.commit(&[(tp, 1)]).await.unwrap();
    member.leave().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_scope_fails_waiting_sends() {
    let (_sup, backend) = backend(small(10, Duration::from_secs(30)));
    let scope_sup = Supervisor::new("other");
    let scope = scope_sup.root().child("memory");
    let backend2 = MemoryBackend::new(scope.clone(), small(10, Duration::from_secs(30))).unwrap();
    drop(backend);
    publish(&backend2, Record::new("t", "0123456789")).await;
    let mut waiting = backend2.send(Record::new("t", "0123456789"));
    assert!(poll_once(&mut waiting).await.is_pending());
    scope.token().cancel();
    assert!(matches!(timeout(PATIENCE, waiting).await.unwrap(), Err(PublishError::Closed)));
    assert_eq!(backend2.health(), Health::Closed);
}

#[tokio::test]
async fn no_task_outlives_the_groups_members() {
    let (sup, backend) = backend(MemoryConfig::default());
    let a = join(&backend, &sup, "g", &["t"]).await;
    let b = join(&backend, &sup, "h", &["t"]).await;
    assigned(&*a).await;
    assigned(&*b).await;
    assert!(sup.live() >= 2, "one coordinator per group:\n{}", sup.snapshot());
    a.leave().await.unwrap();
    drop(b);
    assert!(eventually(|| sup.live() == 0).await, "left behind:\n{}", sup.snapshot());
    let report = sup.shutdown(PATIENCE).await.unwrap();
    assert!(report.is_graceful());
}
