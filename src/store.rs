//! The current set of secrets, swapped atomically as a whole.
//!
//! Readers take a snapshot (`Arc<SecretSet>`) and use it for the whole
//! request, so a request sees the old set or the new set, never a mix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::secret::SecretValue;

/// An immutable set of secrets with the time it was loaded.
#[derive(Debug)]
pub struct SecretSet {
    secrets: BTreeMap<String, SecretValue>,
    loaded_at: SystemTime,
}

impl SecretSet {
    pub fn new(secrets: BTreeMap<String, SecretValue>) -> Self {
        Self {
            secrets,
            loaded_at: SystemTime::now(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.secrets.get(name)
    }

    /// The stored name and value for `name`.
    pub fn get_key_value(&self, name: &str) -> Option<(&str, &SecretValue)> {
        self.secrets
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Every secret, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretValue)> {
        self.secrets.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Secrets whose names start with `prefix`, in name order (a range
    /// scan, not a walk over the whole set).
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a SecretValue)> + 'a {
        use std::ops::Bound;
        self.secrets
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

/// Holder of the current [`SecretSet`].
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<SecretSet>,
}

impl Store {
    pub fn new(initial: SecretSet) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current set; hold it for the duration of one request.
    pub fn snapshot(&self) -> Arc<SecretSet> {
        self.current.load_full()
    }

    /// Replaces the whole set at once.
    pub fn replace(&self, next: SecretSet) {
        self.current.store(Arc::new(next));
    }
}
