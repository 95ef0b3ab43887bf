//! What a subscription reads: a list of named topics, or every topic whose name matches a
//! pattern (including topics created after it subscribed).
//!
//! Owns: [`Topics`], its matching rule ([`Topics::matches`]) and its label (`Display`: what
//! [`Subscription::topic`](crate::Subscription::topic), reports and task paths show).
//!
//! Invariants:
//! - A pattern matches a whole topic name (`^(?:pattern)$`, as Java's `Pattern.matches`), never
//!   a Kafka-internal topic (a name starting with `__`), and never one of the subscription's own
//!   dead-letter topics: the configured `dead_letter_topic`, or with the default naming any
//!   `<topic>.dlq` whose `<topic>` matches the pattern itself (so failures of a pattern
//!   subscription are not read back by it).
//! - A list of names is kept sorted and without duplicates.
//! - A pattern that does not compile matches nothing; [`Topics::validate`] reports it (every
//!   subscribe validates first), naming the option `topics`.

use std::fmt;

use regex::Regex;

use crate::error::ConfigError;

/// The longest pattern accepted, in bytes (the compiled form is bounded too: see
/// [`PATTERN_SIZE_LIMIT`]).
const MAX_PATTERN_LEN: usize = 4096;
/// The largest compiled pattern, in bytes (the `regex` crate's size limit).
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The topics one subscription reads: one or several named topics, or every topic whose name
/// matches a pattern. One subscription is one group member whatever the number of topics: its
/// partitions are spread over the group's members together.
///
/// The bus's `subscribe` takes anything that converts into it: a topic name (`"orders"`, a
/// `String`), a list of names (`["orders", "payments"]`, a `Vec<String>`, a slice), or
/// [`Topics::pattern`].
///
/// ```
/// use bus_core::Topics;
///
/// let one: Topics = "orders".into();
/// let two: Topics = ["orders", "payments"].into();
/// let matching = Topics::pattern(r"orders\..*");
/// assert!(matching.matches("orders.eu"));
/// assert!(!matching.matches("orders")); // the whole name must match
/// assert!(!matching.matches("orders.eu.dlq")); // its own dead letters are never read
/// assert_eq!(two.to_string(), "orders,payments");
/// assert_eq!(one.as_names(), Some(&["orders".to_owned()][..]));
/// ```
#[derive(Clone)]
pub struct Topics {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Names(Vec<String>),
    Pattern(Pattern),
}

#[derive(Clone)]
struct Pattern {
    /// As the user wrote it.
    source: String,
    /// Anchored at both ends; the error when it did not compile.
    regex: Result<Regex, String>,
    /// The subscription's own dead-letter topics, excluded from the matches.
    dead_letters: DeadLetters,
}

/// Which dead-letter topics a pattern subscription must not read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DeadLetters {
    /// The default naming: `<topic>.dlq` for a matching `<topic>`.
    Suffixed,
    /// The one configured dead-letter topic.
    Named(String),
}

impl Topics {
    /// The topics named by `names` (sorted, duplicates removed).
    pub fn names<I, S>(names: I) -> Topics
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        Topics { kind: Kind::Names(names) }
    }

    /// Every topic whose whole name matches the regular expression `pattern` (the `regex`
    /// crate's syntax), now and as topics are created: a Kafka member looks for new matches
    /// every `metadata.max_age`; the in-memory backend sees them at once. Internal topics
    /// (`__…`) and the subscription's own dead-letter topics never match (see the module
    /// documentation). A pattern that does not compile is refused when subscribing.
    pub fn pattern(pattern: impl Into<String>) -> Topics {
        let source = pattern.into();
        let regex = if source.len() > MAX_PATTERN_LEN {
            Err(format!("the pattern is {} bytes long, more than {MAX_PATTERN_LEN}", source.len()))
        } else {
            regex::RegexBuilder::new(&format!("^(?:{source})$"))
                .size_limit(PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|e| e.to_string())
        };
        Topics {
            kind: Kind::Pattern(Pattern { source, regex, dead_letters: DeadLetters::Suffixed }),
        }
    }

    /// The named topics, or `None` for a pattern.
    pub fn as_names(&self) -> Option<&[String]> {
        match &self.kind {
            Kind::Names(names) => Some(names),
            Kind::Pattern(_) => None,
        }
    }

    /// The pattern as written, or `None` for named topics.
    pub fn as_pattern(&self) -> Option<&str> {
        match &self.kind {
            Kind::Names(_) => None,
            Kind::Pattern(p) => Some(&p.source),
        }
    }

    /// Whether this is a pattern subscription.
    pub fn is_pattern(&self) -> bool {
        matches!(self.kind, Kind::Pattern(_))
    }

    /// Whether the subscription reads `topic`: one of the names, or a match of the pattern (see
    /// the module documentation for what a pattern never matches).
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::Names(names) => names.binary_search_by(|n| n.as_str().cmp(topic)).is_ok(),
            Kind::Pattern(p) => p.matches(topic),
        }
    }

    /// The topics of `all` this subscription reads, sorted.
    pub fn select<'a>(&self, all: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut selected: Vec<String> =
            all.into_iter().filter(|t| self.matches(t)).map(str::to_owned).collect();
        selected.sort();
        selected.dedup();
        selected
    }

    /// Checks the names (at least one, none empty) or the pattern (it compiles).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for the option `topics` saying what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.kind {
            Kind::Names(names) if names.is_empty() => {
                Err(ConfigError::new("topics", "at least one topic is required"))
            }
            Kind::Names(names) if names.iter().any(|n| n.trim().is_empty()) => {
                Err(ConfigError::new("topics", "a topic name must not be empty"))
            }
            Kind::Names(_) => Ok(()),
            Kind::Pattern(p) => match &p.regex {
                Ok(_) if p.source.is_empty() => {
                    Err(ConfigError::new("topics", "the pattern must not be empty"))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(ConfigError::new(
                    "topics",
                    format!("the pattern `{}` is not a valid regular expression: {e}", p.source),
                )),
            },
        }
    }

    /// The same topics, a pattern excluding `dead_letter_topic` (when one is configured) instead
    /// of the default `<topic>.dlq` names.
    pub(crate) fn with_dead_letter_topic(mut self, dead_letter_topic: Option<&str>) -> Topics {
        if let Kind::Pattern(p) = &mut self.kind {
            p.dead_letters = match dead_letter_topic {
                Some(name) => DeadLetters::Named(name.to_owned()),
                None => DeadLetters::Suffixed,
            };
        }
        self
    }
}

impl Pattern {
    fn is_match(&self, topic: &str) -> bool {
        self.regex.as_ref().is_ok_and(|r| r.is_match(topic))
    }

    fn matches(&self, topic: &str) -> bool {
        if topic.starts_with("__") || !self.is_match(topic) {
            return false;
        }
        match &self.dead_letters {
            DeadLetters::Named(name) => topic != name,
            DeadLetters::Suffixed => {
                topic.strip_suffix(".dlq").is_none_or(|source| !self.is_match(source))
            }
        }
    }
}

impl fmt::Display for Topics {
    /// Names joined with `,`; a pattern as `pattern(<regex>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Names(names) => f.write_str(&names.join(",")),
            Kind::Pattern(p) => write!(f, "pattern({})", p.source),
        }
    }
}

impl fmt::Debug for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Names(names) => f.debug_tuple("Topics::names").field(names).finish(),
            Kind::Pattern(p) => f
                .debug_struct("Topics::pattern")
                .field("pattern", &p.source)
                .field("dead_letters", &p.dead_letters)
                .finish(),
        }
    }
}

impl PartialEq for Topics {
    fn eq(&self, other: &Self) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Names(a), Kind::Names(b)) => a == b,
            (Kind::Pattern(a), Kind::Pattern(b)) => {
                a.source == b.source && a.dead_letters == b.dead_letters
            }
            _ => false,
        }
    }
}

impl Eq for Topics {}

impl From<&str> for Topics {
    fn from(topic: &str) -> Self {
        Topics::names([topic])
    }
}

impl From<String> for Topics {
    fn from(topic: String) -> Self {
        Topics::names([topic])
    }
}

impl From<&String> for Topics {
    fn from(topic: &String) -> Self {
        Topics::names([topic.as_str()])
    }
}

impl From<&[&str]> for Topics {
    fn from(topics: &[&str]) -> Self {
        Topics::names(topics.iter().copied())
    }
}

impl From<&[String]> for Topics {
    fn from(topics: &[String]) -> Self {
        Topics::names(topics.iter().cloned())
    }
}

impl<const N: usize> From<[&str; N]> for Topics {
    fn from(topics: [&str; N]) -> Self {
        Topics::names(topics)
    }
}

impl<const N: usize> From<[String; N]> for Topics {
    fn from(topics: [String; N]) -> Self {
        Topics::names(topics)
    }
}

impl From<Vec<String>> for Topics {
    fn from(topics: Vec<String>) -> Self {
        Topics::names(topics)
    }
}

impl From<Vec<&str>> for Topics {
    fn from(topics: Vec<&str>) -> Self {
        Topics::names(topics)
    }
}

impl From<&Topics> for Topics {
    fn from(topics: &Topics) -> Self {
        topics.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn names_are_sorted_deduplicated_and_matched_exactly() {
        let topics = Topics::names(["b", "a", "b"]);
        assert_eq!(topics.as_names(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert!(topics.matches("a") && topics.matches("b"));
        assert!(!topics.matches("ab") && !topics.matches("a.dlq"));
        assert_eq!(topics.to_string(), "a,b");
        assert!(topics.validate().is_ok());
        assert!(Topics::names(Vec::<String>::new()).validate().is_err());
        assert!(Topics::names([" "]).validate().is_err());
    }

    #[test]
    fn a_pattern_matches_whole_names_only() {
        let p = Topics::pattern("orders-[0-9]+");
        assert!(p.matches("orders-1") && p.matches("orders-42"));
        assert!(!p.matches("orders-") && !p.matches("xorders-1") && !p.matches("orders-1x"));
        // Alternation is anchored as a whole.
        let alt = Topics::pattern("a|b");
        assert!(alt.matches("a") && alt.matches("b") && !alt.matches("ab"));
        assert_eq!(p.to_string(), "pattern(orders-[0-9]+)");
    }

    #[test]
    fn a_pattern_never_matches_internal_topics() {
        let all = Topics::pattern(".*");
        assert!(!all.matches("__consumer_offsets"));
        assert!(all.matches("_private"));
    }

    #[test]
    fn a_pattern_never_reads_its_own_dead_letters() {
        let p = Topics::pattern("orders.*");
        assert!(p.matches("orders.eu"));
        assert!(!p.matches("orders.eu.dlq"), "the default dead-letter topic of a match");
        // A pattern written for dead-letter topics reads them: their sources do not match it.
        let dlq = Topics::pattern(r".*\.dlq");
        assert!(dlq.matches("orders.dlq"));
        assert!(!dlq.matches("orders.dlq.dlq"), "its own dead letters");
        let named = Topics::pattern("orders.*").with_dead_letter_topic(Some("orders-failed"));
        assert!(named.matches("orders.eu.dlq"), "only the configured one is excluded");
        assert!(!named.matches("orders-failed"));
    }

    #[test]
    fn an_invalid_pattern_is_refused_and_matches_nothing() {
        let bad = Topics::pattern("orders(");
        let error = bad.validate().unwrap_err();
        assert_eq!(error.field, "topics");
        assert!(!bad.matches("orders("));
        assert!(Topics::pattern("").validate().is_err());
        assert!(Topics::pattern("a".repeat(MAX_PATTERN_LEN + 1)).validate().is_err());
    }

    #[test]
    fn select_keeps_the_matches_sorted() {
        let p = Topics::pattern("t[0-9]");
        assert_eq!(p.select(["t2", "x", "t1", "t1", "t2.dlq"]), vec!["t1", "t2"]);
    }
}
