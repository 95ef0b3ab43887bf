//! Administration of the in-memory backend: the [`AdminBackend`] over its topic logs and
//! groups.
//!
//! Owns: [`MemoryAdmin`]. Failures carry the error codes Kafka answers for the same requests
//! (TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION, INVALID_PARTITIONS,
//! INVALID_TOPIC_EXCEPTION, GROUP_ID_NOT_FOUND), so callers handle both backends alike.
//!
//! Semantics beyond Kafka's: a topic's configuration is kept and reported as given, not
//! enforced (`retention.ms` deletes nothing: the backend truncates only what every group
//! committed, when it needs room); a deleted topic's committed offsets are dropped and the
//! groups reading it rebalance, as they do when a topic gains partitions. The cluster has no
//! brokers. Every request answers at once (under the state lock, never held across an await).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::log::TopicLog;
use super::reader::MemoryReader;
use super::{MAX_PARTITIONS, NAME, Shared, group, validate_topic_name};

use crate::admin::descriptions::{
    ClusterDescription, ConfigEntry, GroupDescription, GroupListing, MemberDescription, NewTopic,
    PartitionDescription, PartitionLag, TopicDescription, TopicListing,
};
use crate::admin::error::AdminError;
use crate::admin::error::{
    GROUP_ID_NOT_FOUND, INVALID_PARTITIONS, INVALID_TOPIC, TOPIC_ALREADY_EXISTS,
    UNKNOWN_TOPIC_OR_PARTITION,
};
use crate::backend::{AdminBackend, PartitionReader};
use crate::future::BoxFuture;
use crate::record::TopicPartition;
use crate::start::StartAt;

/// The in-memory backend's administration (see the module documentation).
#[derive(Debug)]
pub(super) struct MemoryAdmin {
    pub(super) shared: Arc<Shared>,
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

fn unknown_topic(topic: &str) -> AdminError {
    AdminError::topic_code(topic, UNKNOWN_TOPIC_OR_PARTITION, "no such topic")
}

impl MemoryAdmin {
    fn create(&self, topic: &NewTopic) -> Result<(), AdminError> {
        validate_topic_name(&topic.name)
            .map_err(|reason| AdminError::topic_code(&topic.name, INVALID_TOPIC, reason))?;
        if !(1..=MAX_PARTITIONS).contains(&topic.partitions) {
            return Err(AdminError::topic_code(
                &topic.name,
                INVALID_PARTITIONS,
                format!("{} partitions: must be between 1 and {MAX_PARTITIONS}", topic.partitions),
            ));
        }
        let mut state = self.shared.state.lock();
        if state.topics.contains_key(&topic.name) {
            return Err(AdminError::topic_code(&topic.name, TOPIC_ALREADY_EXISTS, ""));
        }
        let mut log = TopicLog::new(&topic.name, topic.partitions);
        log.config = topic.config.clone();
        state.topics.insert(topic.name.clone(), log);
        group::topic_created(&mut state, &topic.name);
        Ok(())
    }

    fn list(&self, topics: Option<&[String]>) -> Vec<TopicListing> {
        let state = self.shared.state.lock();
        let wanted: Option<BTreeSet<&str>> = topics.map(|t| t.iter().map(String::as_str).collect());
        state
            .topics
            .iter()
            .filter(|(name, _)| wanted.as_ref().is_none_or(|w| w.contains(name.as_str())))
            .map(|(name, log)| TopicListing {
                name: name.clone(),
                partitions: log.partition_count(),
                internal: false,
            })
            .collect()
    }

    fn describe(&self, topic: &str) -> Result<TopicDescription, AdminError> {
        let state = self.shared.state.lock();
        let log = state.topics.get(topic).ok_or_else(|| unknown_topic(topic))?;
        let partitions = (0..log.partition_count())
            .filter_map(|p| {
                log.partition(p).map(|l| PartitionDescription {
                    partition: p,
                    leader: None,
                    replicas: Vec::new(),
                    in_sync: Vec::new(),
                    start_offset: l.start(),
                    end_offset: l.end(),
                })
            })
            .collect();
        let config = log
            .config
            .iter()
            .map(|(k, v)| {
                let entry =
                    ConfigEntry { value: Some(v.clone()), is_default: false, sensitive: false };
                (k.clone(), entry)
            })
            .collect();
        Ok(TopicDescription { name: topic.to_owned(), internal: false, partitions, config })
    }

    fn delete(&self, topic: &str) -> Result<(), AdminError> {
        let mut state = self.shared.state.lock();
        let Some(log) = state.topics.remove(topic) else {
            return Err(unknown_topic(topic));
        };
        // Publishes waiting for its room look again (and find no topic).
        log.room().notify_waiters();
        group::topic_changed(&mut state, topic, true);
        Ok(())
    }

    fn grow(&self, topic: &str, total: i32) -> Result<(), AdminError> {
        let mut state = self.shared.state.lock();
        let log = state.topics.get_mut(topic).ok_or_else(|| unknown_topic(topic))?;
        let count = log.partition_count();
        if total <= count || total > MAX_PARTITIONS {
            return Err(AdminError::topic_code(
                topic,
                INVALID_PARTITIONS,
                format!(
                    "it has {count} partitions: the new count must be more, and at most \
                     {MAX_PARTITIONS} (asked: {total})"
                ),
            ));
        }
        log.grow(total);
        group::topic_changed(&mut state, topic, false);
        Ok(())
    }

    fn groups(&self) -> Vec<GroupListing> {
        let state = self.shared.state.lock();
        state
            .groups
            .iter()
            .map(|(name, g)| GroupListing {
                group: name.clone(),
                state: g.state_name().to_owned(),
                protocol_type: "consumer".to_owned(),
            })
            .collect()
    }

    fn describe_group_now(&self, group: &str) -> Result<GroupDescription, AdminError> {
        let state = self.shared.state.lock();
        let g = state
            .groups
            .get(group)
            .ok_or_else(|| AdminError::group_code(group, GROUP_ID_NOT_FOUND, "no such group"))?;
        let assignments = g.assignments();
        let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
        let members = assignments
            .into_iter()
            .map(|(id, partitions)| {
                let mut assignment: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for tp in partitions {
                    assignment.entry(tp.topic.to_string()).or_default().push(tp.partition);
                    owner.insert(tp, id.clone());
                }
                MemberDescription {
                    member_id: id,
                    group_instance_id: None,
                    client_id: String::new(),
                    host: String::new(),
                    assignment,
                }
            })
            .collect();
        let mut partitions: BTreeSet<TopicPartition> = g.offsets.keys().cloned().collect();
        partitions.extend(owner.keys().cloned());
        let offsets = partitions
            .into_iter()
            .filter_map(|tp| {
                let end = state.topics.get(&*tp.topic)?.partition(tp.partition)?.end();
                let committed = g.offsets.get(&tp).copied();
                Some(PartitionLag::new(&tp, owner.get(&tp).cloned(), committed, end))
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_owned(),
            state: g.state_name().to_owned(),
            protocol_type: "consumer".to_owned(),
            protocol: if g.member_count() == 0 { String::new() } else { "roundrobin".to_owned() },
            members,
            offsets,
        })
    }

    fn open(&self, partition: &TopicPartition, start: StartAt) -> Result<MemoryReader, AdminError> {
        let state = self.shared.state.lock();
        let topic =
            state.topics.get(&*partition.topic).ok_or_else(|| unknown_topic(&partition.topic))?;
        let log = topic.partition(partition.partition).ok_or_else(|| {
            AdminError::topic_code(
                &*partition.topic,
                UNKNOWN_TOPIC_OR_PARTITION,
                format!(
                    "no partition {} (it has {})",
                    partition.partition,
                    topic.partition_count()
                ),
            )
        })?;
        let position = match start {
            StartAt::Earliest => log.start(),
            StartAt::Latest => log.end(),
            StartAt::Offset(offset) => offset.clamp(log.start(), log.end()),
            StartAt::Timestamp(time) => log.offset_at(time.timestamp_millis()),
        };
        Ok(MemoryReader::new(
            Arc::clone(&self.shared),
            "(admin)".to_owned(),
            partition.clone(),
            position,
            log.appended(),
        ))
    }
}

impl AdminBackend for MemoryAdmin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create_topic<'a>(&'a self, topic: &'a NewTopic) -> BoxFuture<'a, Result<(), AdminError>> {
        ready(self.create(topic))
    }

    fn list_topics<'a>(
        &'a self,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<Vec<TopicListing>, AdminError>> {
        ready(Ok(self.list(topics)))
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicDescription, AdminError>> {
        ready(self.describe(topic))
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), AdminError>> {
        ready(self.delete(topic))
    }

    fn add_partitions<'a>(
        &'a self,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        ready(self.grow(topic, total))
    }

    fn list_groups(&self) -> BoxFuture<'_, Result<Vec<GroupListing>, AdminError>> {
        ready(Ok(self.groups()))
    }

    fn describe_group<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<GroupDescription, AdminError>> {
        ready(self.describe_group_now(group))
    }

    fn describe_cluster(&self) -> BoxFuture<'_, Result<ClusterDescription, AdminError>> {
        ready(Ok(ClusterDescription {
            backend: NAME.to_owned(),
            controller: None,
            brokers: Vec::new(),
        }))
    }

    fn read<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, AdminError>> {
        let opened = self.open(partition, start);
        ready(opened.map(|r| Box::new(r) as Box<dyn PartitionReader>))
    }
}
