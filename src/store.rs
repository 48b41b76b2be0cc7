//! The current set of secrets, swapped atomically as a whole.
//!
//! Readers take a snapshot (`Arc<ServedSet>`) and use it for the whole
//! request, so a request sees the old set or the new set, never a mix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::locked::LockStatus;
use crate::secret::SecretValue;

/// An immutable set of secrets with the time it was loaded.
#[derive(Debug)]
pub struct ServedSet {
    secrets: BTreeMap<String, SecretValue>,
    loaded_at: SystemTime,
    memory: LockStatus,
}

impl ServedSet {
    /// Takes the loaded values and moves them into one locked region (see
    /// [`crate::locked`]); [`ServedSet::memory`] says whether locking worked.
    pub fn new(mut secrets: BTreeMap<String, SecretValue>) -> Self {
        let memory = SecretValue::lock_all(secrets.values_mut());
        Self {
            secrets,
            loaded_at: SystemTime::now(),
            memory,
        }
    }

    /// Whether the values are locked against swap and kept out of dumps.
    pub fn memory(&self) -> &LockStatus {
        &self.memory
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

/// Holder of the current [`ServedSet`].
#[derive(Debug)]
pub(crate) struct Store {
    current: ArcSwap<ServedSet>,
}

impl Store {
    pub(crate) fn new(initial: ServedSet) -> Self {
        warn_if_unlocked(None, initial.memory());
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current set; hold it for the duration of one request.
    pub(crate) fn snapshot(&self) -> Arc<ServedSet> {
        self.current.load_full()
    }

    /// Replaces the whole set at once.
    pub(crate) fn replace(&self, next: ServedSet) {
        let next = Arc::new(next);
        let previous = self.current.swap(Arc::clone(&next));
        warn_if_unlocked(Some(previous.memory()), next.memory());
    }
}

/// Says so (once per change, not on every refresh) when the system refuses
/// to lock secret memory; the set is served either way.
fn warn_if_unlocked(previous: Option<&LockStatus>, next: &LockStatus) {
    if let LockStatus::Unlocked(why) = next
        && previous != Some(next)
    {
        tracing::warn!(
            reason = %why,
            "secret values are not locked in memory: they may be written to swap; \
             raise the memory-lock limit (systemd LimitMEMLOCK=) to fix this"
        );
    }
}
