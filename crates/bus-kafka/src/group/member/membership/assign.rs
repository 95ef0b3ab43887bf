//! The leader's assignment: the members' subscriptions decoded, the topics' partition counts
//! looked up, the assignor run, each member's assignment encoded for SyncGroup.

use super::*;

impl Membership {
    /// The leader's assignment: the members' subscriptions, fresh partition counts, the
    /// assignor the group chose.
    pub(super) async fn assign(
        &mut self,
        joined: &Joined,
    ) -> Result<Vec<(String, Bytes)>, Failure> {
        let group = self.inner.group.clone();
        let protocol = joined.protocol.as_str();
        let mut members = Vec::new();
        let mut versions = BTreeMap::new();
        for (id, instance_id, metadata) in &joined.members {
            let mut member = Member {
                id: id.clone(),
                instance_id: instance_id.clone(),
                topics: BTreeSet::new(),
                owned: BTreeMap::new(),
                generation: -1,
            };
            match codec::decode_subscription(metadata) {
                Ok(subscription) => {
                    versions.insert(id.clone(), subscription.version);
                    let user_data =
                        subscription.user_data.as_deref().and_then(codec::decode_sticky_user_data);
                    match protocol {
                        // The eager sticky assignor's members own nothing as they join: what
                        // they held is in their user data (as the Java StickyAssignor reads it).
                        STICKY => {
                            if let Some((previous, generation)) = user_data {
                                member.owned = previous;
                                member.generation = generation.unwrap_or(-1);
                            }
                        }
                        COOPERATIVE_STICKY => {
                            let (previous, generation) = user_data.unwrap_or_default();
                            member.owned = if subscription.version >= 1 {
                                subscription.owned
                            } else {
                                previous
                            };
                            member.generation = if subscription.generation >= 0 {
                                subscription.generation
                            } else {
                                generation.unwrap_or(-1)
                            };
                        }
                        _ => {}
                    }
                    member.topics = subscription.topics.into_iter().collect();
                }
                Err(e) => {
                    tracing::error!(group = %group, member = %id, error = %e, "cannot read a member's subscription; it gets nothing");
                }
            }
            members.push(member);
        }
        let topics: Vec<String> = members
            .iter()
            .flat_map(|m| m.topics.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found = self.inner.client.topics(Some(&topics)).await.map_err(|e| {
            Failure::Retry(format!(
                "group `{group}`: cannot read the partition counts of {topics:?} to assign: {e}"
            ))
        })?;
        let mut counts = BTreeMap::new();
        for topic in &topics {
            match found.get(topic) {
                Some(info) => {
                    counts.insert(topic.clone(), info.partitions);
                }
                None => {
                    tracing::warn!(group = %group, %topic, "a subscribed topic does not exist; skipping it");
                }
            }
        }
        let assignment = assignor::assign(protocol, &members, &counts).map_err(|e| {
            Failure::Fatal(format!("group `{group}`: the group chose protocol `{protocol}`: {e}"))
        })?;
        tracing::debug!(group = %group, generation = joined.generation, ?assignment, "assignment computed");
        self.leader_counts =
            Some(topics.iter().map(|t| (t.clone(), counts.get(t).copied().unwrap_or(0))).collect());
        let mut result = Vec::with_capacity(assignment.len());
        for (member, topics) in &assignment {
            let version = versions.get(member).copied().unwrap_or(0);
            let bytes = codec::encode_assignment(topics, version).map_err(Failure::Fatal)?;
            result.push((member.clone(), bytes));
        }
        Ok(result)
    }
}
