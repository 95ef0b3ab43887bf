//! The membership's requests to its coordinator: JoinGroup (with the member-id-required round
//! trip and the subscription it carries), SyncGroup, and LeaveGroup; each failure classified
//! for the state machine.

use super::*;

impl Membership {
    /// JoinGroup (with the member-id-required round trip), the leader's assignment, SyncGroup;
    /// the partitions assigned to this member (of its own topics).
    pub(super) async fn join_and_sync(
        &mut self,
    ) -> Result<(Joined, BTreeSet<TopicPartition>), Failure> {
        let joined = self.join_group().await?;
        // From here the generation and member id are ours (commits still wait for Stable).
        self.update(|s| {
            s.member_id = joined.member_id.clone();
            s.generation = joined.generation;
        });
        let leads = joined.leader == joined.member_id;
        let assignments = if leads && !joined.skip_assignment {
            self.assign(&joined).await?
        } else {
            self.leader_counts = None;
            if leads {
                // A restarted static leader keeps the group's assignment: it watches the
                // partition counts of its own topics from now on (the others' it learns at the
                // next assignment it computes).
                let topics: Vec<String> = self.topics.iter().cloned().collect();
                if let Ok(found) = self.inner.client.topics(Some(&topics)).await {
                    let counts = topics
                        .iter()
                        .map(|t| (t.clone(), found.get(t).map_or(0, |i| i.partitions)))
                        .collect();
                    self.leader_counts = Some(counts);
                }
            }
            Vec::new()
        };
        let assignment = self.sync_group(&joined, assignments).await?;
        let decoded = codec::decode_assignment(&assignment).map_err(|e| {
            Failure::Retry(format!(
                "group `{}`: generation {}: cannot read our assignment: {e}",
                self.inner.group, joined.generation
            ))
        })?;
        let mut partitions = BTreeSet::new();
        for (topic, numbers) in decoded {
            if !self.topics.contains(&topic) {
                tracing::warn!(
                    group = %self.inner.group, %topic, partitions = ?numbers,
                    "assigned partitions of a topic this member does not subscribe to; ignoring them"
                );
                continue;
            }
            let topic: Arc<str> = Arc::from(topic.as_str());
            partitions
                .extend(numbers.into_iter().map(|p| TopicPartition::new(Arc::clone(&topic), p)));
        }
        Ok((joined, partitions))
    }

    /// The partitions held, by topic.
    pub(super) fn owned_by_topic(
        partitions: &BTreeSet<TopicPartition>,
    ) -> BTreeMap<String, Vec<i32>> {
        let mut map: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            map.entry(tp.topic.to_string()).or_default().push(tp.partition);
        }
        map
    }

    /// The member's subscription for the assignor `assignor`: its topics; what it owns (a
    /// cooperative member's partitions; nothing for an eager one, which revoked them) and
    /// since which generation; and the sticky assignors' user data (what it held, and when).
    pub(super) fn subscription_for(&self, assignor: &str) -> Result<Bytes, Failure> {
        let topics: Vec<String> = self.topics.iter().cloned().collect();
        let owned = Self::owned_by_topic(&self.owned);
        let user_data = match assignor {
            COOPERATIVE_STICKY => {
                Some(codec::encode_sticky_user_data(&owned, self.owned_generation))
            }
            STICKY => {
                let held = if self.owned.is_empty() { &self.previous } else { &self.owned };
                Some(codec::encode_sticky_user_data(
                    &Self::owned_by_topic(held),
                    self.owned_generation,
                ))
            }
            _ => None,
        }
        .transpose()
        .map_err(Failure::Fatal)?;
        codec::encode_member_subscription(&topics, &owned, self.owned_generation, user_data)
            .map_err(Failure::Fatal)
    }

    pub(super) async fn join_group(&mut self) -> Result<Joined, Failure> {
        let consumer = &self.inner.config.consumer;
        let mut protocols = Vec::with_capacity(consumer.assignors.len());
        for name in &consumer.assignors {
            let mut protocol = JoinGroupRequestProtocol::default();
            protocol.name = StrBytes::from_string(name.clone());
            protocol.metadata = self.subscription_for(name)?;
            protocols.push(protocol);
        }
        let session_ms = millis(consumer.session_timeout);
        let rebalance_ms = millis(self.inner.rebalance_timeout);
        let timeout = self
            .inner
            .config
            .request_timeout
            .max(self.inner.rebalance_timeout + JOIN_TIMEOUT_LAPSE);
        if self.inner.instance_id.is_some() {
            let version = self.link.version::<JoinGroupRequest>().await?;
            if version < STATIC_MEMBERSHIP_VERSION {
                return Err(Failure::Fatal(format!(
                    "group `{}`: static membership (group_instance_id) needs JoinGroup v{} or \
                     later (Kafka 2.3); the coordinator speaks v{version}",
                    self.inner.group, STATIC_MEMBERSHIP_VERSION
                )));
            }
        }
        // At most one member-id-required round trip (KIP-394), plus one spare.
        for _ in 0..3 {
            let member_id = self.member_id();
            let build = |version: i16| {
                let mut request = JoinGroupRequest::default();
                request.group_id = StrBytes::from_string(self.inner.group.clone()).into();
                request.session_timeout_ms = session_ms;
                request.rebalance_timeout_ms = rebalance_ms;
                request.member_id = StrBytes::from_string(member_id.clone());
                request.group_instance_id =
                    self.inner.instance_id_for(version, STATIC_MEMBERSHIP_VERSION);
                request.protocol_type = StrBytes::from_static_str(PROTOCOL_TYPE);
                request.protocols = protocols.clone();
                request.reason = Some(StrBytes::from_static_str("joining"));
                request
            };
            let (response, version) = self.link.request(build, timeout).await?;
            if response.error_code == MEMBER_ID_REQUIRED {
                let assigned = response.member_id.as_str().to_owned();
                tracing::debug!(group = %self.inner.group, member = %assigned, "member id assigned; joining with it");
                self.update(|s| s.member_id = assigned);
                continue;
            }
            if response.error_code != 0 {
                let context = format!(
                    "group `{}`: JoinGroup v{version} as member `{member_id}`{}",
                    self.inner.group,
                    self.inner
                        .instance_id
                        .as_ref()
                        .map(|i| format!(" (instance `{i}`)"))
                        .unwrap_or_default()
                );
                if response.error_code == UNKNOWN_MEMBER_ID && member_id.is_empty() {
                    return Err(Failure::Retry(format!("{context}: UnknownMemberId (25)")));
                }
                return Err(Failure::from_code(response.error_code, &context));
            }
            return Ok(joined(response));
        }
        Err(Failure::Retry(format!(
            "group `{}`: JoinGroup kept asking for a member id",
            self.inner.group
        )))
    }

    pub(super) async fn sync_group(
        &mut self,
        joined: &Joined,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, Failure> {
        let timeout = self
            .inner
            .config
            .request_timeout
            .max(self.inner.rebalance_timeout + JOIN_TIMEOUT_LAPSE);
        let inner = Arc::clone(&self.inner);
        let build = |version: i16| {
            let mut request = SyncGroupRequest::default();
            request.group_id = StrBytes::from_string(inner.group.clone()).into();
            request.generation_id = joined.generation;
            request.member_id = StrBytes::from_string(joined.member_id.clone());
            request.group_instance_id = inner.instance_id_for(version, SYNC_INSTANCE_ID_VERSION);
            request.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
            request.protocol_name = Some(StrBytes::from_string(joined.protocol.clone()));
            request.assignments = assignments
                .into_iter()
                .map(|(member, bytes)| {
                    let mut a = SyncGroupRequestAssignment::default();
                    a.member_id = StrBytes::from_string(member);
                    a.assignment = bytes;
                    a
                })
                .collect();
            request
        };
        let (response, version) = self.link.request(build, timeout).await?;
        if response.error_code != 0 {
            let context = format!(
                "group `{}`: SyncGroup v{version} in generation {} as member `{}`",
                self.inner.group, joined.generation, joined.member_id
            );
            return Err(Failure::from_code(response.error_code, &context));
        }
        Ok(response.assignment)
    }

    /// LeaveGroup for the current member id, if any (bounded by [`LEAVE_TIMEOUT`]); nothing
    /// for a static member, which keeps its place for its next instance.
    pub(super) async fn leave_group(&mut self) -> Result<(), GroupError> {
        let member_id = self.member_id();
        if member_id.is_empty() {
            return Ok(());
        }
        let group = self.inner.group.clone();
        if let Some(instance) = &self.inner.instance_id {
            tracing::info!(
                group = %group, member = %member_id, %instance,
                "static member stopping without leaving: its partitions wait for its next \
                 instance for the session timeout"
            );
            return Ok(());
        }
        let timeout = self.inner.config.request_timeout.min(LEAVE_TIMEOUT);
        let attempt = async {
            let mut last = Failure::Retry("no attempt made".into());
            for attempt in 0..2 {
                if attempt > 0 {
                    self.link.coordinator_moved();
                }
                let build = |version: i16| {
                    let mut request = LeaveGroupRequest::default();
                    request.group_id = StrBytes::from_string(group.clone()).into();
                    if version >= 3 {
                        let mut member = MemberIdentity::default();
                        member.member_id = StrBytes::from_string(member_id.clone());
                        member.reason = Some(StrBytes::from_static_str("the consumer is leaving"));
                        request.members = vec![member];
                    } else {
                        request.member_id = StrBytes::from_string(member_id.clone());
                    }
                    request
                };
                let (response, version) = match self.link.request(build, timeout).await {
                    Ok(answer) => answer,
                    Err(f) => {
                        last = f;
                        continue;
                    }
                };
                let context =
                    format!("group `{group}`: LeaveGroup v{version} as member `{member_id}`");
                let code = if response.error_code != 0 {
                    response.error_code
                } else {
                    response.members.iter().map(|m| m.error_code).find(|c| *c != 0).unwrap_or(0)
                };
                match code {
                    // Gone already (expelled, or the group moved on): that is what we wanted.
                    0 | UNKNOWN_MEMBER_ID => return Ok(()),
                    _ => last = Failure::from_code(code, &context),
                }
                if !matches!(last, Failure::Coordinator(_)) {
                    break;
                }
            }
            Err(last)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Retry(format!(
                "group `{group}`: LeaveGroup as member `{member_id}` got no answer within {timeout:?}"
            ))),
        };
        match result {
            Ok(()) => {
                tracing::info!(group = %group, member = %member_id, "left the group");
                self.reset();
                Ok(())
            }
            Err(f) => {
                tracing::warn!(group = %group, member = %member_id, reason = %f.reason(), "leaving the group failed");
                Err(self.inner.error(&f))
            }
        }
    }
}
