//! Groups and subscriptions: groups each get everything and members split partitions,
//! unsubscribing and dropping a handle, several topics and patterns in one subscription.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::error::HandlerError;
use crate::options::RetryPolicy;
use crate::record::Message;
use crate::topics::Topics;

use super::harness::*;

/// Each group receives every message; two members of one group split the partitions.
///
/// The first wave of records may be consumed while the group is still rebalancing (a member can
/// hold every partition for a moment); once it is all handled the group is stable, and the
/// second wave shows the split: both members busy, no partition read by both.
pub async fn groups_each_get_everything_and_members_split(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "groups", 4).await;
    type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;
    let subscribe = |group: &'static str, seen: Seen| {
        let bus = bus.clone();
        let topic = topic.clone();
        async move {
            bus.subscribe(&topic, options(group), move |m: Message| {
                let seen = seen.clone();
                async move {
                    seen.lock().push((m.partition, m.offset, value_text(&m.value)));
                    Ok(())
                }
            })
            .await
            .expect("subscribed")
        }
    };
    let (a1, a2, b): (Seen, Seen, Seen) = Default::default();
    let _m1 = subscribe("group-a", a1.clone()).await;
    let _m2 = subscribe("group-a", a2.clone()).await;
    let _b = subscribe("group-b", b.clone()).await;
    let wave = |name: &str| {
        (0..200).map(|i| keyed(&topic, &format!("k{}", i % 37), format!("{name}-{i}"))).collect()
    };
    let distinct = |s: &Seen, prefix: &str| {
        s.lock()
            .iter()
            .filter(|(_, _, v)| v.starts_with(prefix))
            .map(|(p, o, _)| (*p, *o))
            .collect::<BTreeSet<_>>()
    };
    publish_all(&bus, wave("first")).await;
    eventually("first wave handled by both groups", || {
        distinct(&b, "first").len() >= 200
            && distinct(&a1, "first").union(&distinct(&a2, "first")).count() >= 200
    })
    .await;
    publish_all(&bus, wave("second")).await;
    eventually("second wave handled by both groups", || {
        distinct(&b, "second").len() >= 200
            && distinct(&a1, "second").union(&distinct(&a2, "second")).count() >= 200
    })
    .await;
    let all_b: BTreeSet<_> = b.lock().iter().map(|(p, o, _)| (*p, *o)).collect();
    let union: BTreeSet<_> =
        a1.lock().iter().chain(a2.lock().iter()).map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(union, all_b, "the two groups saw different records");
    assert_eq!(all_b.len(), 400);
    let parts = |s: &Seen| {
        s.lock()
            .iter()
            .filter(|(_, _, v)| v.starts_with("second"))
            .map(|(p, _, _)| *p)
            .collect::<BTreeSet<_>>()
    };
    let (p1, p2) = (parts(&a1), parts(&a2));
    assert!(!p1.is_empty() && !p2.is_empty(), "both members got partitions: {p1:?} {p2:?}");
    assert!(p1.is_disjoint(&p2), "members of one group overlap: {p1:?} {p2:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// After unsubscribe the handler gets nothing more, and the subscription's tasks are gone.
pub async fn unsubscribe_stops_delivery(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "unsub", 2).await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let sub = bus
        .subscribe(&topic, options("unsub"), move |_m: Message| {
            let count = c.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    bus.publish(keyed(&topic, "a", "1".into())).await.unwrap();
    eventually("first handled", || count.load(Ordering::SeqCst) == 1).await;
    let scope = sub.scope().clone();
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert!(report.subscription.left_group);
    assert_eq!(scope.live(), 0, "the subscription's tasks are gone");
    assert_eq!(bus.metrics().subscriptions, 0);
    bus.publish(keyed(&topic, "a", "2".into())).await.unwrap();
    // Another group proves the record is there to read; the unsubscribed handler saw none.
    let read = read_topic(&bus, &topic, 2).await;
    assert_eq!(read.len(), 2);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Dropping a [`Subscription`](crate::Subscription) handle detaches it: it keeps consuming,
/// and the bus's shutdown stops it (committing and leaving its group) and reports it.
pub async fn dropped_subscription_keeps_consuming(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "detached", 2).await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let sub = bus
        .subscribe(&topic, options("detached"), move |_m: Message| {
            let count = c.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let scope = sub.scope().clone();
    drop(sub);
    publish_all(&bus, vec![keyed(&topic, "a", "1".into()), keyed(&topic, "b", "2".into())]).await;
    eventually("both handled after the handle was dropped", || count.load(Ordering::SeqCst) == 2)
        .await;
    assert!(scope.live() > 0, "the detached subscription's tasks still run");
    assert_eq!(bus.metrics().subscriptions, 1);
    let report = bus.shutdown(PATIENCE).await.expect("clean shutdown");
    assert_eq!(report.subscriptions.len(), 1, "{report}");
    assert_eq!(report.subscriptions[0].topic, topic);
    assert!(report.subscriptions[0].left_group, "{report}");
    assert_eq!(scope.live(), 0);
}

/// One subscription reads several topics as one group member: every record of each is handled
/// in per-key order, the subscription is labelled by its topics, and a failed message goes to
/// the dead-letter topic of the topic it came from.
pub async fn one_subscription_reads_several_topics(h: &impl Harness) {
    let bus = h.bus().await;
    let first = h.topic(&bus, "multi-a", 2).await;
    let second = h.topic(&bus, "multi-b", 3).await;
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let sub = bus
        .subscribe(
            [first.as_str(), second.as_str()],
            options("multi").with_retry(RetryPolicy::none()),
            move |m: Message| {
                let seen = s.clone();
                async move {
                    let key = m.key.as_ref().map(text).unwrap_or_default();
                    let value = value_text(&m.value);
                    seen.lock().push((m.topic.to_string(), key, value.clone()));
                    if value == "fail" {
                        return Err(HandlerError::new("asked to fail"));
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    let mut sorted = [first.clone(), second.clone()];
    sorted.sort();
    assert_eq!(sub.topic(), sorted.join(","), "labelled by its topics, sorted");
    assert_eq!(sub.topics(), &Topics::names([first.clone(), second.clone()]));
    assert_eq!(bus.metrics().subscriptions, 1, "one subscription, one member");
    let mut records = Vec::new();
    for i in 0..60 {
        let topic = if i % 2 == 0 { &first } else { &second };
        records.push(keyed(topic, &format!("k{}", i % 7), format!("{i}")));
    }
    records.push(keyed(&second, "bad", "fail".into()));
    publish_all(&bus, records).await;
    eventually("every record of both topics handled", || seen.lock().len() >= 61).await;
    let seen = seen.lock().clone();
    for topic in [&first, &second] {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (t, key, value) in seen.iter().filter(|(t, _, v)| t == topic && v != "fail") {
            let n: i64 = value.parse().unwrap();
            let previous = last.insert(key, n).unwrap_or(-1);
            assert!(n > previous, "{t} key {key}: {n} after {previous}");
        }
        assert_eq!(
            seen.iter().filter(|(t, _, _)| t == topic).count(),
            if topic == &first { 30 } else { 31 }
        );
    }
    let dead = read_topic(&bus, &format!("{second}.dlq"), 1).await;
    assert_eq!(
        value_text(&dead[0].value),
        "fail",
        "dead-lettered to its own topic's dead-letter topic"
    );
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert_eq!(report.subscription.topic, sorted.join(","));
    let topics: BTreeSet<&str> =
        report.subscription.committed.iter().map(|(tp, _)| &*tp.topic).collect();
    assert_eq!(topics, BTreeSet::from([first.as_str(), second.as_str()]), "{report:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A pattern subscription reads every matching topic, including one created after it
/// subscribed, and never a topic that does not match nor its own dead-letter topics.
pub async fn pattern_subscription_follows_new_topics(h: &impl Harness) {
    let bus = h.bus().await;
    let token = token();
    let before = h.topic(&bus, &format!("{token}-before"), 2).await;
    let other = h.topic(&bus, "unmatched", 1).await;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let s = seen.clone();
    let pattern = format!(".*{token}.*");
    let sub = bus
        .subscribe(
            Topics::pattern(pattern.clone()),
            options("pattern").with_retry(RetryPolicy::none()),
            move |m: Message| {
                let seen = s.clone();
                async move {
                    let value = value_text(&m.value);
                    seen.lock().push((m.topic.to_string(), value.clone()));
                    if value == "fail" {
                        return Err(HandlerError::new("asked to fail"));
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    assert_eq!(sub.topic(), format!("pattern({pattern})"));
    let handled =
        |topic: &str, value: &str| seen.lock().iter().any(|(t, v)| t == topic && v == value);
    publish_all(&bus, vec![keyed(&before, "a", "1".into()), keyed(&before, "b", "fail".into())])
        .await;
    eventually("a matching topic's records handled", || {
        handled(&before, "1") && handled(&before, "fail")
    })
    .await;
    // Its dead letter exists now (`<before>.dlq`, matching the pattern's text): never read.
    let dead = read_topic(&bus, &format!("{before}.dlq"), 1).await;
    assert_eq!(value_text(&dead[0].value), "fail");
    bus.publish(keyed(&other, "c", "unmatched".into())).await.unwrap();
    let after = h.topic(&bus, &format!("{token}-after"), 2).await;
    bus.publish(keyed(&after, "d", "2".into())).await.unwrap();
    eventually("a topic created after subscribing is read", || handled(&after, "2")).await;
    let topics: BTreeSet<String> = seen.lock().iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(topics, BTreeSet::from([before.clone(), after.clone()]), "only matching topics");
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert!(report.subscription.left_group);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}
