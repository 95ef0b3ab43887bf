//! The `consumer` protocol type's embedded formats: the subscription a member sends in
//! JoinGroup and the assignment the leader sends in SyncGroup (Kafka's
//! `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`, each prefixed by its
//! version as an `int16`).
//!
//! Owns: [`encode_subscription`], [`decode_subscription`], [`encode_assignment`],
//! [`decode_assignment`].
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
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::schema;

/// The subscription version we write.
pub(crate) const SUBSCRIPTION_VERSION: i16 = 3;

/// A member's subscription as read from its JoinGroup metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// The version it was written in.
    pub(crate) version: i16,
    /// The topics it subscribes to.
    pub(crate) topics: Vec<String>,
}

/// Encodes a subscription to `topics` (version prefix included).
pub(crate) fn encode_subscription(topics: &[String]) -> Result<Bytes, String> {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| StrBytes::from_string(t.clone())).collect();
    subscription.generation_id = -1;
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
    Ok(Subscription {
        version,
        topics: subscription.topics.iter().map(|t| t.as_str().to_owned()).collect(),
    })
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
        assert_eq!(decoded, Subscription { version: 3, topics });
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
        assert_eq!(decoded, Subscription { version: 0, topics: vec!["t".into()] });

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
