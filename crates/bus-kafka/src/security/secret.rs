//! A value that must never be shown: passwords and tokens.
//!
//! Owns: [`Secret`]. Its `Debug` and `Display` print a placeholder, and it serializes as the
//! same placeholder, so a configuration can be logged, printed or written back without the
//! value; only [`Secret::expose`] gives it, to the code that sends it to a broker.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What `Debug`, `Display` and serialization show instead of the value.
const REDACTED: &str = "[redacted]";

/// A password or token: readable only through [`Secret::expose`].
///
/// `Debug`, `Display` and `Serialize` show `[redacted]`, never the value (a configuration
/// serialized and read back therefore has `[redacted]` as its password: give secrets through
/// an environment variable, `security.sasl.password_env`, where a configuration is written out).
/// It deserializes from a plain string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the code that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_display_and_serde_never_show_the_value() {
        let secret = Secret::new("hunter2-value");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(secret.expose(), "hunter2-value");
        let read: Secret = serde_json::from_str("\"from-json\"").unwrap();
        assert_eq!(read.expose(), "from-json");
    }
}
