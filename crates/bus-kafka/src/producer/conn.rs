//! The producer's connection to a partition's leader: leader lookup (Metadata), ApiVersions
//! negotiation, and Produce requests, on the `kafka-protocol` crate's message types.
//!
//! Owns: [`Conn`] (one TCP stream to one broker, one request at a time, owned by one partition
//! loop), [`leader`] (find and connect to a partition's leader from the bootstrap brokers) and
//! [`Failure`] (what went wrong, and whether retrying can help).
//!
//! Invariants:
//! - One request in flight per connection; its response is matched by correlation id.
//! - A request that fails in any way, or whose future is dropped (a timeout, a fail-back), leaves
//!   the connection unusable ([`Conn::is_usable`] is false): the loop opens a new one rather
//!   than read a stream whose framing may be out of step.
//! - Versions are the highest that both sides support (Produce v3-v9, Metadata v1-v9).
//! - No task is spawned here: the partition loop drives every read and write itself.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Produce versions we send.
const PRODUCE: (i16, i16) = (3, 9);
/// The Metadata versions we send.
const METADATA: (i16, i16) = (1, 9);
/// The ApiVersions version tried first (a broker that does not support it answers in v0).
const API_VERSIONS: i16 = 3;
/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;
/// The largest response accepted (a guard against a corrupt size prefix).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Worth retrying (with a fresh connection): I/O, a broker error Kafka marks retriable, no
    /// leader, an undecodable answer.
    Retriable(String),
    /// The request or batch is too large for the broker: split it.
    TooLarge(String),
    /// Retrying cannot help.
    Fatal(String),
}

impl Failure {
    /// The failure of a broker error code.
    fn of_code(code: i16, context: &str) -> Failure {
        match ResponseError::try_from_code(code) {
            Some(e @ (ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge)) => {
                Failure::TooLarge(format!("{context}: {e} (error {code})"))
            }
            Some(e) if e.is_retriable() => {
                Failure::Retriable(format!("{context}: {e} (error {code})"))
            }
            Some(e) => Failure::Fatal(format!("{context}: {e} (error {code})")),
            None => Failure::Fatal(format!("{context}: unknown error code {code}")),
        }
    }
}

/// A connection to one broker.
#[derive(Debug)]
pub(super) struct Conn {
    broker: String,
    client_id: StrBytes,
    stream: Option<TcpStream>,
    in_flight: bool,
    correlation: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Conn {
    /// Opens a connection to `broker` (`host:port`) and learns its API versions.
    pub(super) async fn open(broker: &str, client_id: &str) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(broker)
            .await
            .map_err(|e| Failure::Retriable(format!("cannot connect to broker {broker}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            broker: broker.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            stream: Some(stream),
            in_flight: false,
            correlation: 0,
            versions: HashMap::new(),
        };
        conn.negotiate().await?;
        Ok(conn)
    }

    /// Whether the connection can take another request.
    pub(super) fn is_usable(&self) -> bool {
        self.stream.is_some() && !self.in_flight
    }

    /// The highest version of `key` both sides support within `ours`.
    fn version(&self, key: ApiKey, name: &str, ours: (i16, i16)) -> Result<i16, Failure> {
        let (min, max) = self.versions.get(&(key as i16)).copied().ok_or_else(|| {
            Failure::Fatal(format!("broker {} does not support {name}", self.broker))
        })?;
        let version = ours.1.min(max);
        if version < ours.0.max(min) {
            return Err(Failure::Fatal(format!(
                "broker {} supports {name} v{min}-v{max}; we speak v{}-v{}",
                self.broker, ours.0, ours.1
            )));
        }
        Ok(version)
    }

    /// Sends `request` as `key` in `version` and reads its response.
    async fn request<Req, Resp>(
        &mut self,
        key: ApiKey,
        name: &str,
        version: i16,
        request: &Req,
    ) -> Result<Resp, Failure>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let broker = self.broker.clone();
        let protocol =
            |reason: String| Failure::Retriable(format!("broker {broker}: {name}: {reason}"));
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(self.client_id.clone());
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header
            .encode(&mut frame, Req::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| Failure::Fatal(format!("broker {broker}: cannot encode {name}: {e}")))?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| Failure::TooLarge(format!("{name} request too large")))?;
        frame[0..4].copy_from_slice(&size.to_be_bytes());
        let mut body = self.exchange(name, &frame).await?;
        let response_header = ResponseHeader::decode(&mut body, Resp::header_version(version))
            .map_err(|e| protocol(format!("cannot decode the response header: {e}")))?;
        if response_header.correlation_id != correlation {
            self.stream = None;
            return Err(protocol(format!(
                "correlation id {} does not match the request's {correlation}",
                response_header.correlation_id
            )));
        }
        Resp::decode(&mut body, version)
            .map_err(|e| protocol(format!("cannot decode the response: {e}")))
    }

    /// Writes one frame and reads one response frame; the connection is in flight (unusable if
    /// dropped) until the response is read.
    async fn exchange(&mut self, name: &str, frame: &[u8]) -> Result<Bytes, Failure> {
        let broker = &self.broker;
        let io = |what: &str, e: std::io::Error| {
            Failure::Retriable(format!("broker {broker}: {name}: {what}: {e}"))
        };
        let Some(stream) = self.stream.as_mut().filter(|_| !self.in_flight) else {
            return Err(Failure::Retriable(format!(
                "broker {broker}: the connection was abandoned"
            )));
        };
        self.in_flight = true;
        stream.write_all(frame).await.map_err(|e| io("write", e))?;
        let size = stream.read_i32().await.map_err(|e| io("read", e))?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (4..=MAX_RESPONSE_BYTES).contains(s))
            .ok_or_else(|| {
                Failure::Retriable(format!("broker {broker}: {name}: invalid response size {size}"))
            })?;
        let mut body = vec![0u8; size];
        stream.read_exact(&mut body).await.map_err(|e| io("read", e))?;
        self.in_flight = false;
        Ok(Bytes::from(body))
    }

    /// ApiVersions: v3, or the version the broker offers when it does not support v3.
    async fn negotiate(&mut self) -> Result<(), Failure> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("bus-kafka");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut version = API_VERSIONS;
        for _ in 0..2 {
            let response: Result<ApiVersionsResponse, Failure> =
                self.request(ApiKey::ApiVersions, "ApiVersions", version, &request).await;
            let response = match response {
                Ok(response) => response,
                // A broker answering an unsupported version in v0 cannot be decoded as v3;
                // retry in v0 on a fresh stream.
                Err(Failure::Retriable(_))
                    if version > 0 && self.stream.is_some() && !self.in_flight =>
                {
                    version = 0;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if response.error_code == UNSUPPORTED_VERSION {
                version = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version)
                    .min(API_VERSIONS);
                continue;
            }
            if response.error_code != 0 {
                return Err(Failure::of_code(
                    response.error_code,
                    &format!("broker {}: ApiVersions", self.broker),
                ));
            }
            self.versions = response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            return Ok(());
        }
        Err(Failure::Fatal(format!("broker {}: no ApiVersions version accepted", self.broker)))
    }

    /// The leader of `topic`/`partition` as this broker sees it: `host:port`.
    async fn leader_of(&mut self, topic: &str, partition: i32) -> Result<String, Failure> {
        let version = self.version(ApiKey::Metadata, "Metadata", METADATA)?;
        let mut wanted = MetadataRequestTopic::default();
        wanted.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![wanted]);
        request.allow_auto_topic_creation = false;
        let response: MetadataResponse =
            self.request(ApiKey::Metadata, "Metadata", version, &request).await?;
        let context = format!("topic `{topic}` partition {partition}");
        let found =
            response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
        let Some(found) = found else {
            return Err(Failure::Retriable(format!("{context}: not in the broker's metadata")));
        };
        if found.error_code != 0 {
            return Err(Failure::of_code(found.error_code, &context));
        }
        let Some(p) = found.partitions.iter().find(|p| p.partition_index == partition) else {
            return Err(Failure::Retriable(format!(
                "{context}: no such partition in the metadata"
            )));
        };
        if p.error_code != 0 && p.leader_id.0 < 0 {
            return Err(Failure::of_code(p.error_code, &context));
        }
        let Some(broker) = response.brokers.iter().find(|b| b.node_id == p.leader_id) else {
            return Err(Failure::Retriable(format!(
                "{context}: no leader (leader id {})",
                p.leader_id.0
            )));
        };
        Ok(format!("{}:{}", broker.host.as_str(), broker.port))
    }

    /// Produces one record batch of `count` records to `topic`/`partition` with acks=all, and
    /// returns the offset of its first record.
    pub(super) async fn produce(
        &mut self,
        topic: &StrBytes,
        partition: i32,
        batch: Bytes,
        count: usize,
        timeout_ms: i32,
    ) -> Result<i64, Failure> {
        let version = self.version(ApiKey::Produce, "Produce", PRODUCE)?;
        let mut data = PartitionProduceData::default();
        data.index = partition;
        data.records = Some(batch);
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(topic.clone());
        topic_data.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.timeout_ms = timeout_ms;
        request.topic_data = vec![topic_data];
        let response: ProduceResponse =
            self.request(ApiKey::Produce, "Produce", version, &request).await?;
        let context = format!("topic `{}` partition {partition}", topic.as_str());
        let answer = response
            .responses
            .iter()
            .filter(|t| t.name.0 == *topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition);
        let Some(answer) = answer else {
            return Err(Failure::Retriable(format!(
                "{context}: the produce response names no such partition"
            )));
        };
        if answer.error_code != 0 {
            let mut failure = Failure::of_code(answer.error_code, &context);
            if let Some(message) = answer.error_message.as_ref() {
                match &mut failure {
                    Failure::Retriable(text) | Failure::TooLarge(text) | Failure::Fatal(text) => {
                        text.push_str(&format!(": {}", message.as_str()));
                    }
                }
            }
            return Err(failure);
        }
        if answer.base_offset < 0 {
            return Err(Failure::Fatal(format!(
                "{context}: the broker acknowledged {count} record(s) without an offset"
            )));
        }
        Ok(answer.base_offset)
    }
}

/// Connects to the leader of `topic`/`partition`: asks the bootstrap brokers in turn, and keeps
/// the connection of the one asked when it is the leader itself.
pub(super) async fn leader(
    bootstrap: &[String],
    client_id: &str,
    topic: &str,
    partition: i32,
) -> Result<Conn, Failure> {
    let mut last = Failure::Retriable("no bootstrap broker configured".into());
    for address in bootstrap {
        let mut conn = match Conn::open(address, client_id).await {
            Ok(conn) => conn,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match conn.leader_of(topic, partition).await {
            Ok(leader) if leader == conn.broker => return Ok(conn),
            Ok(leader) => return Conn::open(&leader, client_id).await,
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_moves_replica_shortage_and_timeouts_are_retried_size_errors_split_others_final() {
        let kind = |code: i16| match Failure::of_code(code, "t-0") {
            Failure::Retriable(_) => "retry",
            Failure::TooLarge(_) => "split",
            Failure::Fatal(_) => "final",
        };
        // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS,
        // NOT_ENOUGH_REPLICAS_AFTER_APPEND, NETWORK_EXCEPTION, UNKNOWN_TOPIC_OR_PARTITION.
        for code in [6, 5, 7, 19, 20, 13, 3] {
            assert_eq!(kind(code), "retry", "error {code}");
        }
        // MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE.
        for code in [10, 18] {
            assert_eq!(kind(code), "split", "error {code}");
        }
        // INVALID_RECORD, TOPIC_AUTHORIZATION_FAILED, UNSUPPORTED_VERSION, an unknown code.
        for code in [87, 29, 35, 30_000] {
            assert_eq!(kind(code), "final", "error {code}");
        }
    }
}
