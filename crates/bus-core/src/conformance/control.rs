//! Where reading starts and a running subscription's control: start positions, seek, pause
//! and resume, manual commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::record::{Message, Record};

use super::harness::*;

/// A subscription starts where its `start` position says, whatever the group committed:
/// earliest (a replay), latest (the backlog skipped), a timestamp (the first record at or after
/// it), explicit offsets; and by default at the committed offset.
pub async fn start_positions(h: &impl Harness) {
    use crate::start::{PartitionOffset, StartPosition};
    let bus = h.bus().await;
    let topic = h.topic(&bus, "start", 1).await;
    let group = format!("start-{}", token());
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    publish_timed(&bus, &topic, 10, base).await;
    // The group handles (and commits) everything.
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("the backlog handled", || seen.lock().len() == 10).await;
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert_eq!(report.subscription.committed.first().map(|c| c.1), Some(10));

    let starts = [
        (StartPosition::Earliest, 0_i64),
        (StartPosition::Timestamp(base + chrono::Duration::milliseconds(4_500)), 5),
        (StartPosition::Offsets(vec![PartitionOffset::new(&topic, 0, 7)]), 7),
    ];
    for (start, first) in starts {
        let (sub, seen) = recording(&bus, &topic, options(&group).with_start(start.clone())).await;
        eventually("read from the start position", || seen.lock().len() as i64 == 10 - first).await;
        assert_eq!(offsets(&seen), (first..10).collect::<Vec<_>>(), "{start:?}");
        sub.unsubscribe(PATIENCE).await.expect("stopped");
    }

    // Latest: nothing of the backlog, only what is published after the start.
    let fresh = format!("latest-{}", token());
    let (sub, seen) =
        recording(&bus, &topic, options(&fresh).with_start(StartPosition::Latest)).await;
    let mut next = 10;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.lock().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "a record published after the start");
        publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(offsets(&seen).iter().all(|&o| o >= 10), "the backlog was skipped: {seen:?}");
    sub.unsubscribe(PATIENCE).await.expect("stopped");

    // The default start: the group's committed offset.
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    eventually("the records after the commit", || offsets(&seen).contains(&next)).await;
    // Everything after the group's commit (10), including what the other group read.
    assert_eq!(offsets(&seen), (10..=next).collect::<Vec<_>>(), "from the committed offset");
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A partition sought while running is read again from the new position (an offset, a
/// timestamp, the earliest or latest offset), its commits follow the new position, and a seek
/// of a partition the member does not hold is refused. Shown to fail (by hand) with a seek
/// that only restarts the fetch loop, without releasing the partition: the commit tracker
/// refuses the offsets it has seen, and the replay never comes.
pub async fn seek_while_running(h: &impl Harness) {
    use crate::consumer::ControlError;
    use crate::start::StartAt;
    let bus = h.bus().await;
    let topic = h.topic(&bus, "seek", 1).await;
    let group = format!("seek-{}", token());
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    publish_timed(&bus, &topic, 10, base).await;
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("everything handled", || seen.lock().len() == 10).await;
    let control = sub.control();
    let partition = crate::TopicPartition::new(topic.as_str(), 0);

    control.seek(&partition, StartAt::Offset(6)).await.expect("sought");
    eventually("offsets 6.. again", || seen.lock().len() == 14).await;
    assert_eq!(offsets(&seen)[10..], [6, 7, 8, 9]);

    control
        .seek(&partition, StartAt::Timestamp(base + chrono::Duration::seconds(8)))
        .await
        .expect("sought by time");
    eventually("offsets 8.. again", || seen.lock().len() == 16).await;
    assert_eq!(offsets(&seen)[14..], [8, 9]);

    control.seek(&partition, StartAt::Earliest).await.expect("sought to the start");
    eventually("everything again", || seen.lock().len() == 26).await;
    assert_eq!(offsets(&seen)[16..], (0..10).collect::<Vec<_>>());
    committed_eventually(&control, &partition, 10).await;

    control.seek(&partition, StartAt::Latest).await.expect("sought to the end");
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    eventually("the new record", || seen.lock().len() == 27).await;
    assert_eq!(offsets(&seen)[26..], [10]);

    let elsewhere = crate::TopicPartition::new(topic.as_str(), 5);
    let refused = control.seek(&elsewhere, StartAt::Offset(0)).await;
    assert!(matches!(refused, Err(ControlError::NotAssigned { .. })), "{refused:?}");
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    let refused = control.seek(&partition, StartAt::Offset(0)).await;
    assert!(matches!(refused, Err(ControlError::Stopped { .. })), "{refused:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A paused partition is not fetched while the others are, the group keeps the member (it
/// still holds its partitions), and resuming delivers what was published meanwhile; pausing
/// the whole subscription stops every partition. Shown to fail (by hand) with fetch loops
/// that do not watch the pause state.
pub async fn pause_and_resume(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "pause", 2).await;
    let group = format!("pause-{}", token());
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    let p0 = crate::TopicPartition::new(topic.as_str(), 0);
    let on = |p: i32, value: &str| Record::new(&topic, value.to_owned()).with_partition(p);
    publish_all(&bus, vec![on(0, "a"), on(1, "b")]).await;
    eventually("both partitions read", || seen.lock().len() == 2).await;

    let control = sub.control();
    control.pause(&p0);
    assert_eq!(control.paused(), (false, vec![p0.clone()]));
    // Published to the paused partition first: had it been fetched, it would be seen before
    // the record of the other partition, published after it.
    publish_all(&bus, vec![on(0, "paused"), on(1, "c")]).await;
    eventually("the running partition read", || seen.lock().iter().any(|s| s.2 == "c")).await;
    assert!(!seen.lock().iter().any(|s| s.2 == "paused"), "the paused partition was fetched");
    control.resume(&p0);
    eventually("the paused record after resume", || seen.lock().iter().any(|s| s.2 == "paused"))
        .await;

    control.pause_all();
    publish_all(&bus, vec![on(0, "x0"), on(1, "x1")]).await;
    // A record published after the others, read by another group, shows they are there.
    let read = read_topic(&bus, &topic, 6).await;
    assert_eq!(read.len(), 6);
    assert!(!seen.lock().iter().any(|s| s.2.starts_with('x')), "a paused subscription fetched");
    assert_eq!(bus.metrics().subscriptions, 1);
    control.resume_all();
    eventually("both after resume", || {
        seen.lock().iter().filter(|s| s.2.starts_with('x')).count() == 2
    })
    .await;
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// In manual commit mode nothing is committed until the service asks; a commit never passes a
/// message that is not finished (what it cannot reach yet waits for the handler and is
/// committed when it finishes); the next member of the group starts at what was committed.
/// Shown to fail (by hand) with a commit not capped by the finished prefix: it commits 10
/// while offset 7 is still running.
pub async fn manual_commit(h: &impl Harness) {
    use crate::options::CommitMode;
    let bus = h.bus().await;
    let topic = h.topic(&bus, "manual", 1).await;
    let group = format!("manual-{}", token());
    let partition = crate::TopicPartition::new(topic.as_str(), 0);
    // One key: handled one at a time, so nothing after offset 7 starts while it runs.
    let records = (0..10).map(|i| keyed(&topic, "k", i.to_string()).with_partition(0)).collect();
    publish_all(&bus, records).await;
    let gate = Arc::new(Notify::new());
    let seen: Seen = Arc::default();
    let (s, g) = (seen.clone(), gate.clone());
    let sub = bus
        .subscribe(
            &topic,
            options(&group).with_commit_mode(CommitMode::Manual),
            move |m: Message| {
                let (seen, gate) = (s.clone(), g.clone());
                async move {
                    seen.lock().push((m.partition, m.offset, value_text(&m.value)));
                    if m.offset == 7 {
                        gate.notified().await;
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    let control = sub.control();
    eventually("0..=7 started", || seen.lock().len() == 8).await;
    assert!(control.committed().await.unwrap().is_empty(), "the bus committed by itself");
    let report = control.commit(&partition, 5).await.expect("committed");
    assert_eq!(report.committed, [(partition.clone(), 5)]);
    assert!(report.waiting.is_empty());
    assert_eq!(control.committed().await.unwrap(), [(partition.clone(), 5)]);
    // Offset 7 is still running: a commit up to 10 stops before it and waits.
    let report = control.commit(&partition, 10).await.expect("committed");
    assert_eq!(report.committed, [(partition.clone(), 7)]);
    assert_eq!(report.waiting, [(partition.clone(), 10)]);
    gate.notify_one();
    committed_eventually(&control, &partition, 10).await;
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    // The next member starts at the committed offset: only the new record.
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("the record after the commit", || !seen.lock().is_empty()).await;
    assert_eq!(offsets(&seen), [10]);
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}
