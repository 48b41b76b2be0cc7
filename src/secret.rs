//! Secret values in zeroizing memory that never print themselves.
//!
//! Every secret value that locket holds, on the server or in the client, is a
//! [`SecretValue`]. Its memory is wiped when it is dropped and its `Debug` and
//! `Display` print a fixed redaction, so a stray `{:?}` in a log line, an
//! error or a panic message cannot leak a password.

use std::fmt;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// The text printed instead of a secret value.
pub const REDACTED: &str = "<redacted>";

/// A secret value: UTF-8 text kept in memory that is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Takes ownership of `value` without copying it.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself. Call this only where the value is about to be
    /// encrypted, written to its destination, or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to log: it is not the value).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Bytes that must be wiped after use (decrypted plaintexts, key material).
pub type SecretBytes = Zeroizing<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let v = SecretValue::from("hunter2");
        assert_eq!(format!("{v:?}"), REDACTED);
        assert_eq!(format!("{v}"), REDACTED);
        assert_eq!(format!("{:?}", vec![v.clone()]), format!("[{REDACTED}]"));
        assert_eq!(v.expose(), "hunter2");
    }
}
