//! The wire shapes of every message this crate decodes with `kafka-protocol`, and the check that
//! runs before that crate decodes one: every array's element count is checked against the bytes
//! left, so that no count read from the wire reaches `kafka-protocol`'s array decoders, which
//! reserve `Vec::with_capacity(count)` before reading a single element (a response or a group
//! member's metadata saying `i32::MAX` would otherwise abort the process on allocation).
//!
//! Owns: [`Message`], [`Shape`], [`Field`], [`Tagged`], [`Kind`] (the shape of a message, as
//! data), [`check`] and [`ShapeError`]; the shapes themselves are in `messages` (one module per
//! message) and reached through the constants below and `connection`'s `Api::SHAPE`.
//!
//! Why a check rather than a patched `kafka-protocol` or decoders of our own: no release of
//! `kafka-protocol` bounds these allocations (0.18.0 is the newest; the upstream fixes are open
//! pull requests), and carrying a patched copy means vendoring about 3.7 MB of generated code;
//! decoders of our own would duplicate that crate for thirteen responses. The shapes are data
//! (about 600 lines), checked against `kafka-protocol` itself by the tests and a fuzz target.
//!
//! Invariants:
//! - The walk follows `kafka-protocol`'s decoders exactly (same fields, versions, compact forms
//!   from the message's first flexible version, known tagged fields decoded in place, unknown
//!   ones skipped by their size). So every array `kafka-protocol` decodes was counted here
//!   first; where the two could differ, `kafka-protocol` fails to decode anyway.
//! - An array is accepted only when `count * (the least bytes one element takes)` fits in the
//!   bytes left: an element of a shape takes at least one byte in every version where an array
//!   holds it (tested), so what `kafka-protocol` then reserves is at most the size of the
//!   elements the message can hold (a few times its own size).
//! - Nothing here allocates in proportion to a count, recurses deeper than the shapes nest, or
//!   panics on any input.

mod messages;

/// A version that never comes: the `flexible` of a message without flexible versions, and the
/// `max` of a field still present in the newest version.
pub(crate) const NEVER: i16 = i16::MAX;
/// A field still present in the newest version (its `max`).
const LAST: i16 = NEVER;

/// The ApiVersions response.
pub(crate) const API_VERSIONS: &Message = &messages::api_versions_response::MESSAGE;
/// The FindCoordinator response.
pub(crate) const FIND_COORDINATOR: &Message = &messages::find_coordinator_response::MESSAGE;
/// The JoinGroup response.
pub(crate) const JOIN_GROUP: &Message = &messages::join_group_response::MESSAGE;
/// The SyncGroup response.
pub(crate) const SYNC_GROUP: &Message = &messages::sync_group_response::MESSAGE;
/// The Heartbeat response.
pub(crate) const HEARTBEAT: &Message = &messages::heartbeat_response::MESSAGE;
/// The LeaveGroup response.
pub(crate) const LEAVE_GROUP: &Message = &messages::leave_group_response::MESSAGE;
/// The OffsetCommit response.
pub(crate) const OFFSET_COMMIT: &Message = &messages::offset_commit_response::MESSAGE;
/// The OffsetFetch response.
pub(crate) const OFFSET_FETCH: &Message = &messages::offset_fetch_response::MESSAGE;
/// The Metadata response.
pub(crate) const METADATA: &Message = &messages::metadata_response::MESSAGE;
/// The ListOffsets response.
pub(crate) const LIST_OFFSETS: &Message = &messages::list_offsets_response::MESSAGE;
/// The Fetch response.
pub(crate) const FETCH: &Message = &messages::fetch_response::MESSAGE;
/// The CreateTopics response.
pub(crate) const CREATE_TOPICS: &Message = &messages::create_topics_response::MESSAGE;
/// The Produce response.
pub(crate) const PRODUCE: &Message = &messages::produce_response::MESSAGE;
/// The SaslHandshake response.
pub(crate) const SASL_HANDSHAKE: &Message = &messages::sasl_handshake_response::MESSAGE;
/// The SaslAuthenticate response.
pub(crate) const SASL_AUTHENTICATE: &Message = &messages::sasl_authenticate_response::MESSAGE;
/// The InitProducerId response.
pub(crate) const INIT_PRODUCER_ID: &Message = &messages::init_producer_id_response::MESSAGE;
/// The `consumer` protocol's subscription (a JoinGroup member's metadata).
pub(crate) const SUBSCRIPTION: &Message = &messages::consumer_protocol_subscription::MESSAGE;
/// The `consumer` protocol's assignment (a SyncGroup answer's assignment).
pub(crate) const ASSIGNMENT: &Message = &messages::consumer_protocol_assignment::MESSAGE;

/// Every message shape, for tests.
#[cfg(test)]
pub(crate) const ALL: [&Message; 18] = [
    API_VERSIONS,
    FIND_COORDINATOR,
    JOIN_GROUP,
    SYNC_GROUP,
    HEARTBEAT,
    LEAVE_GROUP,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    METADATA,
    LIST_OFFSETS,
    FETCH,
    CREATE_TOPICS,
    PRODUCE,
    SASL_HANDSHAKE,
    SASL_AUTHENTICATE,
    INIT_PRODUCER_ID,
    SUBSCRIPTION,
    ASSIGNMENT,
];

/// One message: its versions and its top-level shape.
#[derive(Debug)]
pub(crate) struct Message {
    /// `kafka-protocol`'s name of the message.
    pub(crate) name: &'static str,
    /// The lowest version `kafka-protocol` decodes.
    pub(crate) min: i16,
    /// The highest version `kafka-protocol` decodes.
    pub(crate) max: i16,
    /// The first flexible version (compact strings, bytes and arrays, tagged fields), or
    /// [`NEVER`].
    pub(crate) flexible: i16,
    /// The top-level struct.
    root: &'static Shape,
}

/// A struct of a message.
#[derive(Debug)]
pub(crate) struct Shape {
    name: &'static str,
    fields: &'static [Field],
    tagged: &'static [Tagged],
}

/// A field of a struct, present in versions `min..=max`.
#[derive(Debug)]
pub(crate) struct Field {
    name: &'static str,
    min: i16,
    max: i16,
    kind: Kind,
}

/// A known tagged field of a struct (flexible versions), decoded in versions `min..=max`.
#[derive(Debug)]
pub(crate) struct Tagged {
    tag: u32,
    name: &'static str,
    min: i16,
    max: i16,
    kind: Kind,
}

/// What a field holds.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A fixed number of bytes (integers, booleans, UUIDs).
    Fixed(u8),
    /// A string (nullable or not).
    Str,
    /// Bytes (nullable or not).
    Bytes,
    /// An array (nullable or not) of the kind.
    Array(&'static Kind),
    /// A struct.
    Struct(&'static Shape),
}

const I8: Kind = Kind::Fixed(1);
const BOOL: Kind = Kind::Fixed(1);
const I16: Kind = Kind::Fixed(2);
const I32: Kind = Kind::Fixed(4);
const I64: Kind = Kind::Fixed(8);
const UUID: Kind = Kind::Fixed(16);
const STRING: Kind = Kind::Str;
const BYTES: Kind = Kind::Bytes;

/// A field present in versions `min..=max`.
const fn f(name: &'static str, min: i16, max: i16, kind: Kind) -> Field {
    Field { name, min, max, kind }
}

/// A known tagged field decoded in versions `min..=max`.
const fn t(tag: u32, name: &'static str, min: i16, max: i16, kind: Kind) -> Tagged {
    Tagged { tag, name, min, max, kind }
}

/// Why a message does not have its shape: where (a path of fields and array indexes) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} v{version}: {path}: {reason}")]
pub(crate) struct ShapeError {
    /// The message.
    pub(crate) message: &'static str,
    /// The version.
    pub(crate) version: i16,
    /// Where, as `field[index].field`.
    pub(crate) path: String,
    /// What is wrong.
    pub(crate) reason: String,
}

/// Checks that `bytes` (a message body, after any header and version prefix) can be decoded as
/// `message` in `version` without an array count larger than what the bytes can hold.
///
/// # Errors
///
/// A [`ShapeError`] naming the field: a version `kafka-protocol` does not decode, a count that
/// cannot fit, a field running past the end.
pub(crate) fn check(message: &Message, version: i16, bytes: &[u8]) -> Result<(), ShapeError> {
    let fail =
        |path: String, reason: String| ShapeError { message: message.name, version, path, reason };
    if version < message.min || version > message.max {
        return Err(fail(
            String::new(),
            format!("version {version} is not in {}-{}", message.min, message.max),
        ));
    }
    let mut walk = Walk { bytes, at: 0, version, flexible: version >= message.flexible };
    walk.shape(message.root).map_err(|e| fail(e.path(), e.reason))
}

/// A failure while walking, with the fields it happened in (innermost first).
struct Failure {
    reason: String,
    within: Vec<Step>,
}

enum Step {
    Field(&'static str),
    Index(usize),
}

impl Failure {
    fn new(reason: String) -> Self {
        Failure { reason, within: Vec::new() }
    }

    fn field(mut self, name: &'static str) -> Self {
        self.within.push(Step::Field(name));
        self
    }

    fn index(mut self, index: usize) -> Self {
        self.within.push(Step::Index(index));
        self
    }

    fn path(&self) -> String {
        let mut path = String::new();
        for step in self.within.iter().rev() {
            match step {
                Step::Field(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                }
                Step::Index(index) => path.push_str(&format!("[{index}]")),
            }
        }
        if path.is_empty() { "(top)".to_owned() } else { path }
    }
}

/// A cursor over the message being checked.
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    version: i16,
    flexible: bool,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn skip(&mut self, n: usize) -> Result<(), Failure> {
        if n > self.left() {
            return Err(Failure::new(format!("{n} bytes announced, {} left", self.left())));
        }
        self.at += n;
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Failure> {
        let bytes = self
            .bytes
            .get(self.at..)
            .and_then(|b| b.get(..N))
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or_else(|| Failure::new(format!("truncated ({} bytes left)", self.left())))?;
        self.at += N;
        Ok(bytes)
    }

    /// An unsigned varint, exactly as `kafka-protocol` reads it: at most 5 bytes (a fifth
    /// byte's continuation bit is ignored), bits beyond 32 dropped.
    fn varint(&mut self) -> Result<u32, Failure> {
        let mut value: u32 = 0;
        for shift in [0, 7, 14, 21, 28] {
            let [byte] = self.fixed::<1>()?;
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        Ok(value)
    }

    fn present(&self, min: i16, max: i16) -> bool {
        min <= self.version && self.version <= max
    }

    fn shape(&mut self, shape: &Shape) -> Result<(), Failure> {
        for field in shape.fields {
            if self.present(field.min, field.max) {
                self.kind(&field.kind).map_err(|e| e.field(field.name))?;
            }
        }
        if self.flexible { self.tags(shape) } else { Ok(()) }
    }

    fn tags(&mut self, shape: &Shape) -> Result<(), Failure> {
        let count = self.varint().map_err(|e| e.field("(tagged fields)"))?;
        for _ in 0..count {
            let tag = self.varint().map_err(|e| e.field("(tag)"))?;
            let size = self.varint().map_err(|e| e.field("(tag size)"))?;
            let known = shape.tagged.iter().find(|t| t.tag == tag && self.present(t.min, t.max));
            match known {
                // Decoded in place, as `kafka-protocol` does (not bounded by its size).
                Some(tagged) => self.kind(&tagged.kind).map_err(|e| e.field(tagged.name))?,
                None => self
                    .skip(usize::try_from(size).unwrap_or(usize::MAX))
                    .map_err(|e| e.field("(unknown tagged field)"))?,
            }
        }
        Ok(())
    }

    fn kind(&mut self, kind: &Kind) -> Result<(), Failure> {
        match kind {
            Kind::Fixed(n) => self.skip(usize::from(*n)),
            Kind::Str => {
                let length = if self.flexible {
                    // 0 is null; n is n - 1 bytes.
                    i64::from(self.varint()?) - 1
                } else {
                    i64::from(i16::from_be_bytes(self.fixed()?))
                };
                self.length(length)
            }
            Kind::Bytes => {
                let length = if self.flexible {
                    i64::from(self.varint()?) - 1
                } else {
                    i64::from(i32::from_be_bytes(self.fixed()?))
                };
                self.length(length)
            }
            Kind::Array(element) => {
                let count = if self.flexible {
                    i64::from(self.varint()?) - 1
                } else {
                    i64::from(i32::from_be_bytes(self.fixed()?))
                };
                if count == -1 {
                    return Ok(()); // null
                }
                let count = usize::try_from(count)
                    .map_err(|_| Failure::new(format!("negative array length {count}")))?;
                let least = self.least(element).max(1);
                if count.checked_mul(least).is_none_or(|need| need > self.left()) {
                    let what = match element {
                        Kind::Struct(shape) => shape.name,
                        _ => "elements",
                    };
                    return Err(Failure::new(format!(
                        "{count} {what} of at least {least} bytes each cannot fit in the {} \
                         bytes left",
                        self.left()
                    )));
                }
                for index in 0..count {
                    self.kind(element).map_err(|e| e.index(index))?;
                }
                Ok(())
            }
            Kind::Struct(shape) => self.shape(shape),
        }
    }

    /// Skips a string's or bytes' content of `length` (-1: null).
    fn length(&mut self, length: i64) -> Result<(), Failure> {
        match usize::try_from(length) {
            Ok(n) => self.skip(n),
            Err(_) if length == -1 => Ok(()),
            Err(_) => Err(Failure::new(format!("negative length {length}"))),
        }
    }

    /// The fewest bytes `kind` takes in this version.
    fn least(&self, kind: &Kind) -> usize {
        match kind {
            Kind::Fixed(n) => usize::from(*n),
            Kind::Str => {
                if self.flexible {
                    1
                } else {
                    2
                }
            }
            Kind::Bytes | Kind::Array(_) => {
                if self.flexible {
                    1
                } else {
                    4
                }
            }
            Kind::Struct(shape) => {
                let fields: usize = shape
                    .fields
                    .iter()
                    .filter(|f| self.present(f.min, f.max))
                    .map(|f| self.least(&f.kind))
                    .sum();
                fields + usize::from(self.flexible)
            }
        }
    }
}

#[cfg(test)]
mod tests;
