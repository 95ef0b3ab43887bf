//! The partition assignors the group leader runs: Kafka's `range` and `roundrobin`, computing
//! exactly what the Java client's `RangeAssignor` and `RoundRobinAssignor` compute (without
//! rack awareness), so that members of other clients can share a group with ours whichever
//! member is the leader; and the sticky assignors, `sticky` (eager) and `cooperative-sticky`
//! (KIP-429), which keep partitions where they are while balancing, as the Java client's
//! `AbstractStickyAssignor` sets out to (their exact choices may differ from Java's and
//! librdkafka's: any member may lead, and each leader's result is valid for all).
//!
//! Owns: [`Member`], [`assign`], [`range`], [`round_robin`], [`sticky`].
//!
//! Invariants:
//! - Members are ordered as Java's `MemberInfo`: static members (with a group instance id)
//!   first, by instance id, then dynamic members by member id (string order).
//! - Every partition of every topic someone subscribes to (and whose partition count is known)
//!   is given to at most one member subscribed to its topic; topics without metadata are
//!   skipped. `range`, `roundrobin` and `sticky` give every such partition to exactly one.
//! - `cooperative-sticky` gives a partition that moves away from a member that still owns it
//!   to nobody (it is withheld): the owner revokes it, and the follow-up rebalance gives it to
//!   its new member. So no partition is ever assigned to two members at once, though members
//!   keep reading what they own through the rebalance.
//! - Sticky: a partition stays with its current owner (the member that claims it with the
//!   highest generation; a tie at that generation leaves it without owner) unless balance needs
//!   it elsewhere; the result is balanced in that no partition could move to a member
//!   subscribed to its topic holding at least two fewer partitions than its own member.
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
    /// The partitions it owns (for the sticky assignors: its subscription's owned partitions,
    /// or the previous assignment in its user data).
    pub(crate) owned: BTreeMap<String, Vec<i32>>,
    /// The generation in which it owned them (-1: unknown).
    pub(crate) generation: i32,
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

/// Runs the assignor named `name` (`range`, `roundrobin`, `sticky`, `cooperative-sticky`).
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
        "sticky" => Ok(sticky(members, partitions, false)),
        "cooperative-sticky" => Ok(sticky(members, partitions, true)),
        other => Err(format!(
            "unknown assignor `{other}`: expected range, roundrobin, sticky or cooperative-sticky"
        )),
    }
}

/// A partition: (topic, number).
type Partition = (String, i32);

/// The sticky assignors (see the module documentation): keep owned partitions, give the
/// others to the least loaded eligible member, balance with as few moves as the greedy order
/// finds, and, when `cooperative`, withhold every partition that moves from a member that still
/// owns it.
pub(crate) fn sticky(
    members: &[Member],
    partitions: &BTreeMap<String, i32>,
    cooperative: bool,
) -> Assignment {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| member_order(a, b));
    let eligible = |m: &Member, topic: &str| {
        m.topics.contains(topic) && partitions.get(topic).is_some_and(|&n| n > 0)
    };
    let exists = |(topic, p): &(&String, i32)| {
        partitions.get(topic.as_str()).is_some_and(|&n| (0..n).contains(p))
    };

    // The current owner of each partition: the claim with the highest generation, unless two
    // members claim it in that generation.
    let mut claims: BTreeMap<Partition, Vec<(i32, usize)>> = BTreeMap::new();
    for (index, m) in sorted.iter().enumerate() {
        for (topic, owned) in &m.owned {
            if !eligible(m, topic) {
                continue;
            }
            for &p in owned {
                if exists(&(topic, p)) {
                    claims.entry((topic.clone(), p)).or_default().push((m.generation, index));
                }
            }
        }
    }
    let mut owner: BTreeMap<Partition, usize> = BTreeMap::new();
    for (partition, mut claimants) in claims {
        claimants.sort_unstable();
        let Some(&(top, index)) = claimants.last() else { continue };
        let tied = claimants.iter().filter(|(g, _)| *g == top).count() > 1;
        if tied {
            tracing::warn!(
                topic = %partition.0, partition = partition.1, generation = top,
                "several members claim a partition in the same generation; none keeps it"
            );
        } else {
            owner.insert(partition, index);
        }
    }

    let mut assigned: Vec<BTreeSet<Partition>> = vec![BTreeSet::new(); sorted.len()];
    for (partition, &index) in &owner {
        if let Some(set) = assigned.get_mut(index) {
            set.insert(partition.clone());
        }
    }

    // Every other partition, those with the fewest eligible members first, to the eligible
    // member with the fewest partitions (the first in member order on a tie).
    let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
    let mut free: Vec<(usize, Partition)> = Vec::new();
    for topic in topics {
        let Some(&count) = partitions.get(topic.as_str()) else { continue };
        let candidates = sorted.iter().filter(|m| eligible(m, topic)).count();
        if candidates == 0 {
            continue;
        }
        for p in 0..count.max(0) {
            let partition = (topic.clone(), p);
            if !owner.contains_key(&partition) {
                free.push((candidates, partition));
            }
        }
    }
    free.sort();
    for (_, partition) in free {
        let target = (0..sorted.len())
            .filter(|&i| sorted.get(i).is_some_and(|m| eligible(m, &partition.0)))
            .min_by_key(|&i| (assigned.get(i).map_or(usize::MAX, BTreeSet::len), i));
        if let Some(set) = target.and_then(|i| assigned.get_mut(i)) {
            set.insert(partition);
        }
    }

    // Balance: move a partition from a member to an eligible one with at least two fewer,
    // while there is such a move (each lowers the sum of squared counts: this ends).
    let total: usize = assigned.iter().map(BTreeSet::len).sum();
    let bound = total.saturating_mul(sorted.len()).saturating_add(1);
    for _ in 0..bound {
        let Some((from, to, partition)) = best_move(&sorted, &assigned, &eligible) else {
            break;
        };
        if let Some(set) = assigned.get_mut(from) {
            set.remove(&partition);
        }
        if let Some(set) = assigned.get_mut(to) {
            set.insert(partition);
        }
    }

    if cooperative {
        // A partition moving away from a member that owns it waits for the follow-up rebalance.
        for (partition, &previous) in &owner {
            for (index, set) in assigned.iter_mut().enumerate() {
                if index != previous && set.remove(partition) {
                    tracing::debug!(
                        topic = %partition.0, partition = partition.1,
                        "partition withheld until its owner has revoked it"
                    );
                }
            }
        }
    }

    let mut result = empty(members);
    for (m, set) in sorted.iter().zip(assigned) {
        if let Some(entry) = result.get_mut(&m.id) {
            for (topic, p) in set {
                entry.entry(topic).or_default().push(p);
            }
        }
    }
    result
}

/// The move that balances most: from the most loaded member to the least loaded eligible one
/// holding at least two fewer partitions, of the highest partition (in topic then number order)
/// the receiver may take.
fn best_move(
    sorted: &[&Member],
    assigned: &[BTreeSet<Partition>],
    eligible: &impl Fn(&Member, &str) -> bool,
) -> Option<(usize, usize, Partition)> {
    let mut by_load: Vec<usize> = (0..assigned.len()).collect();
    by_load.sort_by_key(|&i| (std::cmp::Reverse(assigned.get(i).map_or(0, BTreeSet::len)), i));
    for &from in &by_load {
        let from_set = assigned.get(from)?;
        for &to in by_load.iter().rev() {
            let to_len = assigned.get(to)?.len();
            if to_len.saturating_add(1) >= from_set.len() {
                break;
            }
            let receiver = sorted.get(to)?;
            if let Some(partition) = from_set.iter().rev().find(|(t, _)| eligible(receiver, t)) {
                return Some((from, to, partition.clone()));
            }
        }
    }
    None
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
            owned: BTreeMap::new(),
            generation: -1,
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
        assert!(assign("sticky-ish", &two, &six).is_err());
    }

    /// A member owning `owned` ("topic-partition" names) in `generation`.
    fn owning(id: &str, topics: &[&str], generation: i32, owned: &[&str]) -> Member {
        let mut m = member(id, topics);
        m.generation = generation;
        for tp in owned {
            let (t, p) = tp.rsplit_once('-').unwrap();
            m.owned.entry(t.to_owned()).or_default().push(p.parse().unwrap());
        }
        m
    }

    fn loads(assignment: &Assignment) -> Vec<usize> {
        let mut loads: Vec<usize> =
            assignment.values().map(|t| t.values().map(Vec::len).sum()).collect();
        loads.sort_unstable();
        loads
    }

    /// Every partition of `counts` given exactly once (to members subscribed to its topic).
    fn assert_complete(
        members: &[Member],
        assignment: &Assignment,
        counts: &BTreeMap<String, i32>,
    ) {
        let mut seen = BTreeSet::new();
        for (id, topics) in assignment {
            let m = members.iter().find(|m| &m.id == id).unwrap();
            for (t, ps) in topics {
                assert!(m.topics.contains(t), "{id} got {t} without subscribing");
                for p in ps {
                    assert!(seen.insert((t.clone(), *p)), "{t}-{p} given twice");
                }
            }
        }
        let expected: usize = counts.values().map(|n| *n as usize).sum();
        assert_eq!(seen.len(), expected, "every partition given: {assignment:?}");
    }

    #[test]
    fn sticky_fresh_assignment_is_balanced() {
        let members =
            [member("a", &["t", "u"]), member("b", &["t", "u"]), member("c", &["t", "u"])];
        let counts = counts(&[("t", 4), ("u", 3)]);
        let result = sticky(&members, &counts, false);
        assert_complete(&members, &result, &counts);
        assert_eq!(loads(&result), vec![2, 2, 3]);
    }

    #[test]
    fn sticky_keeps_owned_partitions_and_moves_only_the_excess() {
        // Two members own three partitions each; a third joins: each gives up exactly one.
        let members = [
            owning("a", &["t"], 5, &["t-0", "t-1", "t-2"]),
            owning("b", &["t"], 5, &["t-3", "t-4", "t-5"]),
            member("c", &["t"]),
        ];
        let counts = counts(&[("t", 6)]);
        let result = sticky(&members, &counts, false);
        assert_complete(&members, &result, &counts);
        let kept = |id: &str, of: &[i32]| {
            let got = &result[id]["t"];
            of.iter().filter(|p| got.contains(p)).count()
        };
        assert_eq!(kept("a", &[0, 1, 2]), 2);
        assert_eq!(kept("b", &[3, 4, 5]), 2);
        assert_eq!(result["c"]["t"].len(), 2);
    }

    #[test]
    fn cooperative_sticky_withholds_what_moves_until_it_is_revoked() {
        let members = [
            owning("a", &["t"], 5, &["t-0", "t-1", "t-2"]),
            owning("b", &["t"], 5, &["t-3", "t-4", "t-5"]),
            member("c", &["t"]),
        ];
        let counts = counts(&[("t", 6)]);
        let first = sticky(&members, &counts, true);
        // a and b keep two each; the two that move are given to nobody yet.
        assert_eq!(first["a"]["t"].len(), 2);
        assert_eq!(first["b"]["t"].len(), 2);
        assert!(first["c"].is_empty(), "c waits for the revocations: {first:?}");
        // The follow-up: a and b own only what they kept; c gets the rest.
        let owned =
            |id: &str| -> Vec<String> { first[id]["t"].iter().map(|p| format!("t-{p}")).collect() };
        let a = owned("a");
        let b = owned("b");
        let follow_up = [
            owning("a", &["t"], 6, &a.iter().map(String::as_str).collect::<Vec<_>>()),
            owning("b", &["t"], 6, &b.iter().map(String::as_str).collect::<Vec<_>>()),
            member("c", &["t"]),
        ];
        let second = sticky(&follow_up, &counts, true);
        assert_complete(&follow_up, &second, &counts);
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["b"], first["b"]);
        assert_eq!(second["c"]["t"].len(), 2);
    }

    #[test]
    fn sticky_gives_a_leaving_members_partitions_to_the_others() {
        let members =
            [owning("a", &["t"], 3, &["t-0", "t-1"]), owning("b", &["t"], 3, &["t-2", "t-3"])];
        let counts = counts(&[("t", 6)]);
        for cooperative in [false, true] {
            let result = sticky(&members, &counts, cooperative);
            assert_complete(&members, &result, &counts);
            assert!(result["a"]["t"].starts_with(&[0, 1]) && result["b"]["t"].starts_with(&[2, 3]));
            assert_eq!(loads(&result), vec![3, 3]);
        }
    }

    #[test]
    fn sticky_resolves_claims_by_generation() {
        // b's claim on t-0 is from an older generation (a zombie): a keeps it. c and d claim
        // t-1 in the same generation: neither keeps it for sure; it is given once.
        let members = [
            owning("a", &["t"], 7, &["t-0"]),
            owning("b", &["t"], 6, &["t-0"]),
            owning("c", &["t"], 7, &["t-1"]),
            owning("d", &["t"], 7, &["t-1"]),
        ];
        let counts = counts(&[("t", 4)]);
        let result = sticky(&members, &counts, true);
        assert_eq!(result["a"]["t"], vec![0]);
        assert_complete(&members, &result, &counts);
    }

    #[test]
    fn sticky_respects_unequal_subscriptions() {
        let members = [
            owning("a", &["t", "u"], 2, &["t-0", "t-1", "t-2", "u-0", "u-1", "u-2"]),
            member("b", &["u"]),
            member("c", &["t"]),
        ];
        let counts = counts(&[("t", 3), ("u", 3)]);
        let result = sticky(&members, &counts, false);
        assert_complete(&members, &result, &counts);
        assert_eq!(loads(&result), vec![2, 2, 2]);
        assert!(result["b"].keys().all(|t| t == "u"));
        assert!(result["c"].keys().all(|t| t == "t"));
    }

    #[test]
    fn sticky_ignores_claims_on_partitions_that_do_not_exist() {
        let members = [owning("a", &["t"], 1, &["t-9", "gone-0"]), member("b", &["t"])];
        let counts = counts(&[("t", 2)]);
        let result = sticky(&members, &counts, true);
        assert_complete(&members, &result, &counts);
        assert_eq!(loads(&result), vec![1, 1]);
    }
}
