//! The `consumer` protocol type's embedded formats: the subscription a member sends in
//! JoinGroup and the assignment the leader sends in SyncGroup (Kafka's
//! `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`, each prefixed by its
//! version as an `int16`).
//!
//! Owns: [`encode_subscription`], [`encode_member_subscription`], [`decode_subscription`],
//! [`encode_assignment`], [`decode_assignment`], and the sticky assignors' user data
//! ([`encode_sticky_user_data`], [`decode_sticky_user_data`]).
//!
//! Invariants:
//! - We write subscriptions in version [`SUBSCRIPTION_VERSION`] (what the Java client writes).
//! - We read any version: the schema only ever appends fields, so a version newer than the
//!   `kafka-protocol` crate knows is read as the newest it knows (its prefix), as the Java client
//!   does.
//! - An empty assignment (zero bytes: what a coordinator sends a member the leader did not
//!   assign) is an empty assignment, not an error.
//! - What other members (subscriptions) and the leader (assignments) wrote is untrusted: its
//!   shape is checked (the crate's `schema`: no array count larger than the bytes left) before
//!   `kafka-protocol` decodes it, so no member can make the leader reserve memory it did not
//!   send.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::schema;

/// The subscription version we write.
pub(crate) const SUBSCRIPTION_VERSION: i16 = 3;

/// Partitions by topic (ascending, without duplicates).
pub(crate) type Owned = BTreeMap<String, Vec<i32>>;

/// A member's subscription as read from its JoinGroup metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// The version it was written in.
    pub(crate) version: i16,
    /// The topics it subscribes to.
    pub(crate) topics: Vec<String>,
    /// The partitions it owns as it joins (version 1 and later; empty before, and for eager
    /// members, which give everything up before joining).
    pub(crate) owned: BTreeMap<String, Vec<i32>>,
    /// The generation in which it owned them (version 2 and later; -1 when unknown).
    pub(crate) generation: i32,
    /// The assignor's user data (the sticky assignors' previous assignment and generation).
    pub(crate) user_data: Option<Bytes>,
}

/// Encodes a subscription to `topics` with nothing owned and no user data (version prefix
/// included).
#[cfg(test)]
pub(crate) fn encode_subscription(topics: &[String]) -> Result<Bytes, String> {
    encode_member_subscription(topics, &BTreeMap::new(), -1, None)
}

/// Encodes a subscription to `topics`, owning `owned` since `generation` (-1: none), with the
/// assignor's `user_data` (version prefix included).
pub(crate) fn encode_member_subscription(
    topics: &[String],
    owned: &BTreeMap<String, Vec<i32>>,
    generation: i32,
    user_data: Option<Bytes>,
) -> Result<Bytes, String> {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| StrBytes::from_string(t.clone())).collect();
    subscription.owned_partitions = owned
        .iter()
        .map(|(topic, partitions)| {
            let mut entry = OwnedTopic::default();
            entry.topic = StrBytes::from_string(topic.clone()).into();
            entry.partitions = partitions.clone();
            entry
        })
        .collect();
    subscription.generation_id = generation;
    subscription.user_data = user_data;
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    subscription
        .encode(&mut buf, SUBSCRIPTION_VERSION)
        .map_err(|e| format!("cannot encode the subscription: {e}"))?;
    Ok(buf.freeze())
}

/// Decodes a subscription (version prefix included).
pub(crate) fn decode_subscription(metadata: &[u8]) -> Result<Subscription, String> {
    let (version, mut body) = split_version(metadata, "subscription")?;
    let read = version.min(ConsumerProtocolSubscription::VERSIONS.max);
    schema::check(schema::SUBSCRIPTION, read, &body)
        .map_err(|e| format!("a malformed version {version} subscription: {e}"))?;
    let subscription = ConsumerProtocolSubscription::decode(&mut body, read)
        .map_err(|e| format!("cannot decode a version {version} subscription: {e}"))?;
    let mut owned: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for entry in subscription.owned_partitions {
        owned.entry(entry.topic.0.as_str().to_owned()).or_default().extend(entry.partitions);
    }
    for partitions in owned.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(Subscription {
        version,
        topics: subscription.topics.iter().map(|t| t.as_str().to_owned()).collect(),
        owned,
        generation: if read >= 2 { subscription.generation_id } else { -1 },
        user_data: subscription.user_data,
    })
}

/// The sticky assignors' user data, version 1 (the Java `StickyAssignor`'s and librdkafka's
/// `cooperative-sticky`'s, written without a version prefix): the member's previous assignment
/// as `[topic (int16-length string), [partition (int32)]]`, then its generation (`int32`).
pub(crate) fn encode_sticky_user_data(
    previous: &BTreeMap<String, Vec<i32>>,
    generation: i32,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    put_count(&mut buf, previous.len(), "topics")?;
    for (topic, partitions) in previous {
        let name = topic.as_bytes();
        let length = i16::try_from(name.len())
            .map_err(|_| format!("the topic name `{topic}` is too long to encode"))?;
        buf.put_i16(length);
        buf.put_slice(name);
        put_count(&mut buf, partitions.len(), "partitions")?;
        for partition in partitions {
            buf.put_i32(*partition);
        }
    }
    buf.put_i32(generation);
    Ok(buf.freeze())
}

fn put_count(buf: &mut BytesMut, count: usize, what: &str) -> Result<(), String> {
    let count = i32::try_from(count).map_err(|_| format!("too many {what} to encode"))?;
    buf.put_i32(count);
    Ok(())
}

/// Reads sticky-assignor user data: version 1 (previous assignment and generation), version 0
/// (previous assignment alone), or the Java `CooperativeStickyAssignor`'s (a generation
/// alone, 4 bytes). `None` when it is none of these (every count is checked against the bytes
/// left, so nothing is allocated beyond the input's size).
pub(crate) fn decode_sticky_user_data(bytes: &[u8]) -> Option<(Owned, Option<i32>)> {
    if let [a, b, c, d] = bytes {
        return Some((BTreeMap::new(), Some(i32::from_be_bytes([*a, *b, *c, *d]))));
    }
    let mut body = bytes;
    let previous = read_previous_assignment(&mut body)?;
    match body.len() {
        0 => Some((previous, None)),
        4 => Some((previous, Some(body.get_i32()))),
        _ => None,
    }
}

fn read_previous_assignment(body: &mut &[u8]) -> Option<BTreeMap<String, Vec<i32>>> {
    let topics = read_count(body, 6)?;
    let mut previous: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for _ in 0..topics {
        if body.len() < 2 {
            return None;
        }
        let length = usize::try_from(body.get_i16()).ok()?;
        if body.len() < length {
            return None;
        }
        let topic = std::str::from_utf8(body.get(..length)?).ok()?.to_owned();
        body.advance(length);
        let count = read_count(body, 4)?;
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            partitions.push(body.get_i32());
        }
        partitions.sort_unstable();
        partitions.dedup();
        previous.entry(topic).or_default().extend(partitions);
    }
    Some(previous)
}

/// An `int32` count of items at least `item_bytes` long each, checked against what is left.
fn read_count(body: &mut &[u8], item_bytes: usize) -> Option<usize> {
    if body.len() < 4 {
        return None;
    }
    let count = usize::try_from(body.get_i32()).ok()?;
    (count.checked_mul(item_bytes)? <= body.len()).then_some(count)
}

/// Encodes an assignment (topic -> partitions) in `version` (version prefix included).
pub(crate) fn encode_assignment(
    assignment: &BTreeMap<String, Vec<i32>>,
    version: i16,
) -> Result<Bytes, String> {
    let version = version.clamp(0, ConsumerProtocolAssignment::VERSIONS.max);
    let mut message = ConsumerProtocolAssignment::default();
    message.assigned_partitions = assignment
        .iter()
        .map(|(topic, partitions)| {
            let mut entry = AssignedTopic::default();
            entry.topic = StrBytes::from_string(topic.clone()).into();
            entry.partitions = partitions.clone();
            entry
        })
        .collect();
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message.encode(&mut buf, version).map_err(|e| format!("cannot encode the assignment: {e}"))?;
    Ok(buf.freeze())
}

/// Decodes an assignment (version prefix included) into topic -> partitions.
pub(crate) fn decode_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>, String> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (version, mut body) = split_version(bytes, "assignment")?;
    let read = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    schema::check(schema::ASSIGNMENT, read, &body)
        .map_err(|e| format!("a malformed version {version} assignment: {e}"))?;
    let assignment = ConsumerProtocolAssignment::decode(&mut body, read)
        .map_err(|e| format!("cannot decode a version {version} assignment: {e}"))?;
    let mut result: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for entry in assignment.assigned_partitions {
        result.entry(entry.topic.0.as_str().to_owned()).or_default().extend(entry.partitions);
    }
    for partitions in result.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(result)
}

/// Splits the `int16` version prefix from the body.
fn split_version(bytes: &[u8], what: &str) -> Result<(i16, Bytes), String> {
    if bytes.len() < 2 {
        return Err(format!("the {what} is {} bytes long: too short for a version", bytes.len()));
    }
    let mut body = Bytes::copy_from_slice(bytes);
    let version = body.get_i16();
    if version < 0 {
        return Err(format!("the {what} has an invalid version {version}"));
    }
    Ok((version, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn subscription_round_trip() {
        let topics = vec!["orders".to_owned(), "payments".to_owned()];
        let bytes = encode_subscription(&topics).unwrap();
        assert_eq!(&bytes[..2], &[0, 3], "written in version 3");
        let decoded = decode_subscription(&bytes).unwrap();
        assert_eq!((decoded.version, decoded.topics), (3, topics));
        assert!(decoded.owned.is_empty());
        assert_eq!(decoded.generation, -1);
    }

    #[test]
    fn owned_partitions_generation_and_user_data_round_trip() {
        let mut owned = BTreeMap::new();
        owned.insert("a".to_owned(), vec![0, 2]);
        owned.insert("b".to_owned(), vec![1]);
        let user_data = encode_sticky_user_data(&owned, 7).unwrap();
        let bytes =
            encode_member_subscription(&["a".into(), "b".into()], &owned, 7, Some(user_data))
                .unwrap();
        let decoded = decode_subscription(&bytes).unwrap();
        assert_eq!(decoded.owned, owned);
        assert_eq!(decoded.generation, 7);
        let (previous, generation) =
            decode_sticky_user_data(decoded.user_data.as_deref().unwrap()).unwrap();
        assert_eq!((previous, generation), (owned, Some(7)));
    }

    #[test]
    fn owned_partitions_follow_the_java_layout() {
        // Version 3: topics, user data, owned partitions [topic, [partition]], generation,
        // rack id (null), as KIP-429 defines them and librdkafka reads them.
        let mut owned = BTreeMap::new();
        owned.insert("t".to_owned(), vec![4]);
        let ours = encode_member_subscription(&["t".into()], &owned, 3, None).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i16(3);
        expected.put_i32(1);
        expected.put_i16(1);
        expected.put_slice(b"t");
        expected.put_i32(-1); // null user data
        expected.put_i32(1); // one owned topic
        expected.put_i16(1);
        expected.put_slice(b"t");
        expected.put_i32(1);
        expected.put_i32(4);
        expected.put_i32(3); // generation
        expected.put_i16(-1); // null rack
        assert_eq!(&ours[..], &expected[..]);
        // Version 1 carries owned partitions but no generation.
        let mut v1 = BytesMut::new();
        v1.put_i16(1);
        v1.put_slice(&expected[2..expected.len() - 6]);
        let decoded = decode_subscription(&v1).unwrap();
        assert_eq!(decoded.owned, owned);
        assert_eq!(decoded.generation, -1);
    }

    #[test]
    fn sticky_user_data_versions() {
        let mut previous = BTreeMap::new();
        previous.insert("t".to_owned(), vec![1, 0]);
        let v1 = encode_sticky_user_data(&previous, 5).unwrap();
        previous.insert("t".to_owned(), vec![0, 1]);
        assert_eq!(decode_sticky_user_data(&v1), Some((previous.clone(), Some(5))));
        // Version 0: no generation.
        assert_eq!(decode_sticky_user_data(&v1[..v1.len() - 4]), Some((previous, None)));
        // The Java cooperative-sticky assignor's: a generation alone.
        assert_eq!(decode_sticky_user_data(&9i32.to_be_bytes()), Some((BTreeMap::new(), Some(9))));
        // Garbage, and counts larger than the bytes left, are refused without allocating.
        assert_eq!(decode_sticky_user_data(&[0, 0, 0, 1, 0]), None);
        assert_eq!(decode_sticky_user_data(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]), None);
        let mut huge = BytesMut::new();
        huge.put_i32(1);
        huge.put_i16(1);
        huge.put_slice(b"t");
        huge.put_i32(i32::MAX);
        assert_eq!(decode_sticky_user_data(&huge), None);
    }

    #[test]
    fn subscription_matches_the_java_layout() {
        // Version 0 as the Java client (and librdkafka) write it: version, topics array
        // (int32 count, int16-length strings), user data (int32 length, -1 = null).
        let mut v0 = BytesMut::new();
        v0.put_i16(0);
        v0.put_i32(1);
        v0.put_i16(1);
        v0.put_slice(b"t");
        v0.put_i32(-1);
        let decoded = decode_subscription(&v0).unwrap();
        assert_eq!((decoded.version, decoded.topics), (0, vec!["t".to_owned()]));

        // Our version 3: v0's fields, then owned partitions (empty array), generation (-1),
        // rack id (null string).
        let ours = encode_subscription(&["t".to_owned()]).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i16(3);
        expected.put_i32(1);
        expected.put_i16(1);
        expected.put_slice(b"t");
        expected.put_i32(-1);
        expected.put_i32(0);
        expected.put_i32(-1);
        expected.put_i16(-1);
        assert_eq!(&ours[..], &expected[..]);
    }

    #[test]
    fn a_newer_subscription_version_is_read_as_its_known_prefix() {
        let mut v9 = BytesMut::new();
        v9.put_i16(9);
        v9.put_slice(&encode_subscription(&["a".to_owned()]).unwrap()[2..]);
        v9.put_slice(b"fields from the future");
        let decoded = decode_subscription(&v9).unwrap();
        assert_eq!(decoded.topics, vec!["a".to_owned()]);
        assert_eq!(decoded.version, 9);
    }

    #[test]
    fn assignment_round_trip() {
        let mut assignment = BTreeMap::new();
        assignment.insert("a".to_owned(), vec![0, 2, 4]);
        assignment.insert("b".to_owned(), vec![1]);
        for version in 0..=3 {
            let bytes = encode_assignment(&assignment, version).unwrap();
            assert_eq!(i16::from_be_bytes([bytes[0], bytes[1]]), version);
            assert_eq!(decode_assignment(&bytes).unwrap(), assignment);
        }
    }

    #[test]
    fn assignment_matches_the_java_layout() {
        let mut assignment = BTreeMap::new();
        assignment.insert("t".to_owned(), vec![0, 1]);
        let bytes = encode_assignment(&assignment, 0).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i16(0);
        expected.put_i32(1); // one topic
        expected.put_i16(1);
        expected.put_slice(b"t");
        expected.put_i32(2); // two partitions
        expected.put_i32(0);
        expected.put_i32(1);
        expected.put_i32(-1); // null user data
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn array_count_bombs_from_other_members_are_refused_before_decoding() {
        // A member's subscription claiming i32::MAX topics (then owned partitions) in a few
        // bytes: kafka-protocol reserves the array before reading an element, and the leader
        // (then every next leader) would abort on the allocation.
        let mut topics = BytesMut::new();
        topics.put_i16(3);
        topics.put_i32(i32::MAX);
        topics.put_slice(b"tiny");
        let error = decode_subscription(&topics).unwrap_err();
        assert!(error.contains("topics") && error.contains("cannot fit"), "{error}");
        let mut owned = BytesMut::new();
        owned.put_i16(1);
        owned.put_i32(0); // no topics
        owned.put_i32(-1); // null user data
        owned.put_i32(i32::MAX); // owned partitions
        let error = decode_subscription(&owned).unwrap_err();
        assert!(error.contains("owned_partitions"), "{error}");
        let mut assignment = BytesMut::new();
        assignment.put_i16(0);
        assignment.put_i32(1);
        assignment.put_i16(1);
        assignment.put_slice(b"t");
        assignment.put_i32(i32::MAX); // partitions
        let error = decode_assignment(&assignment).unwrap_err();
        assert!(error.contains("assigned_partitions[0].partitions"), "{error}");
    }

    #[test]
    fn empty_assignment_bytes_are_an_empty_assignment() {
        assert!(decode_assignment(&[]).unwrap().is_empty());
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_subscription(&[]).is_err());
    }
}
