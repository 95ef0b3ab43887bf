//! The bounds on the consumer's byte sizes: what `consumer.fetch_max_bytes` and the partition
//! buffer may be, and the room a Fetch response has beyond what it asked for. Read by the
//! configuration's validation and by the connection's response bounds; nothing else here.

/// The largest `consumer.fetch_max_bytes`: a Fetch response is read into memory whole.
pub const MAX_FETCH_BYTES: usize = 128 * 1024 * 1024;
/// The room a Fetch response may take beyond `consumer.fetch_max_bytes` (a broker returns the
/// first batch whole even when it is larger: up to Kafka's default `message.max.bytes` of
/// 1 MiB, plus framing); a larger response is refused.
pub const FETCH_RESPONSE_SLACK: usize = 1024 * 1024 + 64 * 1024;
/// The largest `consumer.partition_buffer_bytes` (and `consumer.max_decompressed_batch_bytes`).
pub const MAX_PARTITION_BUFFER_BYTES: usize = 4 * 1024 * 1024 * 1024 - 1;
