//! Secret values in zeroizing memory that never print themselves.
//!
//! Every secret value that locket holds, on the server or in the client, is a
//! [`SecretValue`]. Its memory is wiped when it is dropped and its `Debug` and
//! `Display` print a fixed redaction, so a stray `{:?}` in a log line, an
//! error or a panic message cannot leak a password.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::locked::{LockStatus, LockedRegion};

/// The text printed instead of a secret value.
pub const REDACTED: &str = "<redacted>";

/// A secret value: UTF-8 text kept in memory that is zeroed on drop.
///
/// A value starts on the heap (as a source produced it); the server then
/// moves a whole loaded set into one `LockedRegion` with
/// [`SecretValue::lock_all`], after which each value is a view into it.
#[derive(Clone)]
pub struct SecretValue(Inner);

#[derive(Clone)]
enum Inner {
    Owned(Zeroizing<String>),
    Locked {
        region: Arc<LockedRegion>,
        start: usize,
        len: usize,
    },
}

impl SecretValue {
    /// Takes ownership of `value` without copying it.
    pub fn new(value: String) -> Self {
        Self(Inner::Owned(Zeroizing::new(value)))
    }

    /// The value itself. Call this only where the value is about to be
    /// encrypted, written to its destination, or compared.
    // The one unchecked conversion: validating every value again on every
    // request would only re-prove what `lock_all` established.
    #[allow(unsafe_code)]
    pub fn expose(&self) -> &str {
        match &self.0 {
            Inner::Owned(s) => s,
            Inner::Locked { region, start, len } => {
                let bytes = &region.as_slice()[*start..*start + *len];
                // SAFETY: `lock_all` copied exactly the bytes of a `str` here.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
        }
    }

    /// Length in bytes (safe to log: it is not the value).
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves `values` into one new locked region (see `crate::locked`):
    /// afterwards each is a view into it and its heap copy has been wiped.
    /// Returns whether the region is locked, and if not why.
    pub fn lock_all<'a>(values: impl IntoIterator<Item = &'a mut SecretValue>) -> LockStatus {
        let mut values: Vec<&mut SecretValue> = values.into_iter().collect();
        let parts: Vec<&[u8]> = values.iter().map(|v| v.expose().as_bytes()).collect();
        let region = match LockedRegion::new(&parts) {
            Ok(r) => Arc::new(r),
            Err(e) => return LockStatus::Unlocked(format!("mmap of the secret region: {e}")),
        };
        drop(parts);
        let mut start = 0;
        for v in &mut values {
            let len = v.len();
            // Replacing the old value drops (and so wipes) its heap copy.
            v.0 = Inner::Locked {
                region: Arc::clone(&region),
                start,
                len,
            };
            start += len;
        }
        region.status().clone()
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretValue {}

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

    #[test]
    fn locked_values_read_back_and_stay_redacted() {
        let mut values = vec![
            SecretValue::from("first"),
            SecretValue::from(""),
            SecretValue::from("zweite Zeile ü"),
        ];
        let before = values.clone();
        let status = SecretValue::lock_all(values.iter_mut());
        assert_ne!(status, LockStatus::Empty);
        assert_eq!(values, before);
        assert!(values.iter().all(|v| matches!(v.0, Inner::Locked { .. })));
        assert_eq!(values[2].expose(), "zweite Zeile ü");
        assert_eq!(format!("{:?}", values[0]), REDACTED);
        // Views outlive the vector that made them.
        let kept = values[0].clone();
        drop(values);
        assert_eq!(kept.expose(), "first");
    }
}
