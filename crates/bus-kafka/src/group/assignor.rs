//! The partition assignors the group leader runs: Kafka's `range` and `roundrobin`, computing
//! exactly what the Java client's `RangeAssignor` and `RoundRobinAssignor` compute (without
//! rack awareness), so that members of other clients can share a group with ours whichever
//! member is the leader.
//!
//! Owns: [`Member`], [`assign`], [`range`], [`round_robin`].
//!
//! Invariants:
//! - Members are ordered as Java's `MemberInfo`: static members (with a group instance id)
//!   first, by instance id, then dynamic members by member id (string order).
//! - Every partition of every topic someone subscribes to (and whose partition count is known)
//!   is given to exactly one member subscribed to its topic; topics without metadata are skipped.
//! - Every member appears in the result, possibly with nothing.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// An assignment: member id -> topic -> partitions (ascending).
pub(crate) type Assignment = BTreeMap<String, BTreeMap<String, Vec<i32>>>;

/// A member as the assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member id.
    pub(crate) id: String,
    /// The static-membership instance id, if any.
    pub(crate) instance_id: Option<String>,
    /// The topics it subscribes to.
    pub(crate) topics: BTreeSet<String>,
}

/// Java's `MemberInfo.compareTo`.
fn member_order(a: &Member, b: &Member) -> Ordering {
    match (&a.instance_id, &b.instance_id) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    }
}

/// Runs the assignor named `name` (`range` or `roundrobin`).
///
/// # Errors
///
/// The name of an assignor we do not implement.
pub(crate) fn assign(
    name: &str,
    members: &[Member],
    partitions: &BTreeMap<String, i32>,
) -> Result<Assignment, String> {
    match name {
        "range" => Ok(range(members, partitions)),
        "roundrobin" => Ok(round_robin(members, partitions)),
        other => Err(format!("unknown assignor `{other}`: expected range or roundrobin")),
    }
}

fn empty(members: &[Member]) -> Assignment {
    members.iter().map(|m| (m.id.clone(), BTreeMap::new())).collect()
}

/// Java's `RangeAssignor`: per topic, the subscribed members in order each take a contiguous
/// range; the first `partitions % members` take one extra.
pub(crate) fn range(members: &[Member], partitions: &BTreeMap<String, i32>) -> Assignment {
    let mut result = empty(members);
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| member_order(a, b));
    let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
    for topic in topics {
        let Some(&count) = partitions.get(topic) else {
            continue;
        };
        let consumers: Vec<&&Member> = sorted.iter().filter(|m| m.topics.contains(topic)).collect();
        let n = i32::try_from(consumers.len()).unwrap_or(i32::MAX);
        if n == 0 || count <= 0 {
            continue;
        }
        let per_member = count / n;
        let extra = count % n;
        for (i, member) in (0i32..).zip(consumers) {
            let start = per_member * i + i.min(extra);
            let length = per_member + i32::from(i < extra);
            if length == 0 {
                continue;
            }
            if let Some(assigned) = result.get_mut(&member.id) {
                assigned.entry(topic.clone()).or_default().extend(start..start + length);
            }
        }
    }
    result
}

/// Java's `RoundRobinAssignor`: all partitions sorted by topic then number, dealt in turn to
/// the members in order (a circular iterator), skipping members not subscribed to the
/// partition's topic.
pub(crate) fn round_robin(members: &[Member], partitions: &BTreeMap<String, i32>) -> Assignment {
    let mut result = empty(members);
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| member_order(a, b));
    if sorted.is_empty() {
        return result;
    }
    let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
    let mut cursor = 0usize;
    for topic in topics {
        let Some(&count) = partitions.get(topic) else {
            continue;
        };
        for partition in 0..count.max(0) {
            // Some member subscribes to `topic` (it is in the union), so this ends.
            let mut skipped = 0;
            while sorted.get(cursor).is_some_and(|m| !m.topics.contains(topic))
                && skipped < sorted.len()
            {
                cursor = (cursor + 1) % sorted.len();
                skipped += 1;
            }
            if let Some(member) = sorted.get(cursor)
                && let Some(assigned) = result.get_mut(&member.id)
            {
                assigned.entry(topic.clone()).or_default().push(partition);
            }
            cursor = (cursor + 1) % sorted.len();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn static_member(id: &str, instance: &str, topics: &[&str]) -> Member {
        Member { instance_id: Some(instance.into()), ..member(id, topics) }
    }

    fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    /// Flattens to `member -> ["topic-partition", …]` for readable expectations.
    fn flat(assignment: &Assignment) -> BTreeMap<String, Vec<String>> {
        assignment
            .iter()
            .map(|(m, topics)| {
                let list = topics
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}-{p}")))
                    .collect();
                (m.clone(), list)
            })
            .collect()
    }

    fn expect(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(m, tps)| ((*m).to_owned(), tps.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    // Cases named after the Java client's unit tests (RangeAssignorTest and
    // RoundRobinAssignorTest in apache/kafka: testOneConsumerNoTopic,
    // testOneConsumerNonexistentTopic, testTwoConsumersOneTopicOnePartition,
    // testTwoConsumersOneTopicTwoPartitions, testMultipleConsumersMixedTopics,
    // testTwoConsumersTwoTopicsSixPartitions) carry those tests' expected results; the others
    // (member order, static members) follow the same algorithms.

    #[test]
    fn range_one_consumer_no_topic() {
        let members = [member("consumer", &[])];
        assert_eq!(flat(&range(&members, &counts(&[]))), expect(&[("consumer", &[])]));
    }

    #[test]
    fn range_one_consumer_nonexistent_topic() {
        let members = [member("consumer", &["topic"])];
        assert_eq!(flat(&range(&members, &counts(&[]))), expect(&[("consumer", &[])]));
    }

    #[test]
    fn range_two_consumers_one_topic_one_partition() {
        let members = [member("consumer1", &["topic"]), member("consumer2", &["topic"])];
        assert_eq!(
            flat(&range(&members, &counts(&[("topic", 1)]))),
            expect(&[("consumer1", &["topic-0"]), ("consumer2", &[])])
        );
    }

    #[test]
    fn range_two_consumers_one_topic_two_partitions() {
        let members = [member("consumer1", &["topic"]), member("consumer2", &["topic"])];
        assert_eq!(
            flat(&range(&members, &counts(&[("topic", 2)]))),
            expect(&[("consumer1", &["topic-0"]), ("consumer2", &["topic-1"])])
        );
    }

    #[test]
    fn range_multiple_consumers_mixed_topics() {
        let members = [
            member("consumer1", &["topic1"]),
            member("consumer2", &["topic1", "topic2"]),
            member("consumer3", &["topic1"]),
        ];
        assert_eq!(
            flat(&range(&members, &counts(&[("topic1", 3), ("topic2", 2)]))),
            expect(&[
                ("consumer1", &["topic1-0"]),
                ("consumer2", &["topic1-1", "topic2-0", "topic2-1"]),
                ("consumer3", &["topic1-2"]),
            ])
        );
    }

    #[test]
    fn range_two_consumers_two_topics_six_partitions() {
        let members = [
            member("consumer1", &["topic1", "topic2"]),
            member("consumer2", &["topic1", "topic2"]),
        ];
        assert_eq!(
            flat(&range(&members, &counts(&[("topic1", 3), ("topic2", 3)]))),
            expect(&[
                ("consumer1", &["topic1-0", "topic1-1", "topic2-0", "topic2-1"]),
                ("consumer2", &["topic1-2", "topic2-2"]),
            ])
        );
    }

    #[test]
    fn range_orders_members_by_string_and_static_members_first() {
        // "consumer-10" < "consumer-2" as strings; a static member goes before both.
        let members = [
            member("consumer-2", &["t"]),
            member("consumer-10", &["t"]),
            static_member("zzz", "instance-a", &["t"]),
        ];
        assert_eq!(
            flat(&range(&members, &counts(&[("t", 7)]))),
            expect(&[
                ("zzz", &["t-0", "t-1", "t-2"]),
                ("consumer-10", &["t-3", "t-4"]),
                ("consumer-2", &["t-5", "t-6"]),
            ])
        );
    }

    #[test]
    fn range_static_members_keep_their_ranges_across_member_ids() {
        // Instance ids, not member ids, decide the order of static members.
        let members = [
            static_member("consumer1", "instance1", &["topic1", "topic2"]),
            static_member("consumer2", "instance2", &["topic1", "topic2"]),
            static_member("consumer3", "instance3", &["topic1", "topic2"]),
            member("consumer4", &["topic1", "topic2"]),
        ];
        let first = range(&members, &counts(&[("topic1", 5), ("topic2", 5)]));
        let renamed = [
            static_member("consumer5", "instance1", &["topic1", "topic2"]),
            static_member("consumer2", "instance2", &["topic1", "topic2"]),
            static_member("consumer3", "instance3", &["topic1", "topic2"]),
            member("consumer4", &["topic1", "topic2"]),
        ];
        let second = range(&renamed, &counts(&[("topic1", 5), ("topic2", 5)]));
        assert_eq!(first.get("consumer1"), second.get("consumer5"));
        assert_eq!(
            flat(&first),
            expect(&[
                ("consumer1", &["topic1-0", "topic1-1", "topic2-0", "topic2-1"]),
                ("consumer2", &["topic1-2", "topic2-2"]),
                ("consumer3", &["topic1-3", "topic2-3"]),
                ("consumer4", &["topic1-4", "topic2-4"]),
            ])
        );
    }

    #[test]
    fn round_robin_two_consumers_one_topic_three_partitions() {
        let members = [member("consumer1", &["topic"]), member("consumer2", &["topic"])];
        assert_eq!(
            flat(&round_robin(&members, &counts(&[("topic", 3)]))),
            expect(&[("consumer1", &["topic-0", "topic-2"]), ("consumer2", &["topic-1"])])
        );
    }

    #[test]
    fn round_robin_multiple_consumers_mixed_topics() {
        let members = [
            member("consumer1", &["topic1"]),
            member("consumer2", &["topic1", "topic2"]),
            member("consumer3", &["topic1"]),
        ];
        assert_eq!(
            flat(&round_robin(&members, &counts(&[("topic1", 3), ("topic2", 2)]))),
            expect(&[
                ("consumer1", &["topic1-0"]),
                ("consumer2", &["topic1-1", "topic2-0", "topic2-1"]),
                ("consumer3", &["topic1-2"]),
            ])
        );
    }

    #[test]
    fn round_robin_two_consumers_two_topics_six_partitions() {
        let members = [
            member("consumer1", &["topic1", "topic2"]),
            member("consumer2", &["topic1", "topic2"]),
        ];
        assert_eq!(
            flat(&round_robin(&members, &counts(&[("topic1", 3), ("topic2", 3)]))),
            expect(&[
                ("consumer1", &["topic1-0", "topic1-2", "topic2-1"]),
                ("consumer2", &["topic1-1", "topic2-0", "topic2-2"]),
            ])
        );
    }

    #[test]
    fn round_robin_static_members_first() {
        let members = [
            member("a", &["t"]),
            static_member("b", "instance2", &["t"]),
            static_member("c", "instance1", &["t"]),
        ];
        assert_eq!(
            flat(&round_robin(&members, &counts(&[("t", 4)]))),
            expect(&[("c", &["t-0", "t-3"]), ("b", &["t-1"]), ("a", &["t-2"])])
        );
    }

    #[test]
    fn six_partitions_over_two_and_three_members() {
        // The integration tests' shape: 6 partitions, 2 then 3 members.
        let two = [member("m1", &["t"]), member("m2", &["t"])];
        let three = [member("m1", &["t"]), member("m2", &["t"]), member("m3", &["t"])];
        let six = counts(&[("t", 6)]);
        assert_eq!(
            flat(&range(&two, &six)),
            expect(&[("m1", &["t-0", "t-1", "t-2"]), ("m2", &["t-3", "t-4", "t-5"])])
        );
        assert_eq!(
            flat(&round_robin(&three, &six)),
            expect(&[("m1", &["t-0", "t-3"]), ("m2", &["t-1", "t-4"]), ("m3", &["t-2", "t-5"])])
        );
        assert!(assign("sticky", &two, &six).is_err());
    }
}
