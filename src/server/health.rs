//! What `/readyz`, the metrics and the logs say about the secret set: has a
//! load ever succeeded, how old is the set, did the last refresh fail.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Debug, Default)]
struct Inner {
    loaded_at: Option<SystemTime>,
    last_error: Option<String>,
    failures: u32,
}

/// Shared load status.
#[derive(Debug, Default)]
pub(crate) struct Health {
    inner: Mutex<Inner>,
}

/// The `/readyz` body.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Readiness {
    pub ready: bool,
    pub loaded: bool,
    pub stale: bool,
    pub age_seconds: Option<u64>,
    /// When the served set was loaded (RFC 3339, UTC): for a partly failed
    /// load, its oldest source's last success.
    pub last_success: Option<String>,
    pub max_age_seconds: u64,
    pub consecutive_failures: u32,
    /// The last load error: the source's number and type and the kind of
    /// failure only (never a path, command, value or text from the source).
    pub last_error: Option<String>,
    /// `locked`, `empty`, or `unlocked: <why>` for the current set's memory.
    pub secret_memory: String,
    /// Where the values served came from: "sources", or "sealed copy
    /// <time>" while some source still serves the sealed last-good set.
    pub origin: String,
    /// Key or TLS files that changed on disk since the server started:
    /// it serves with what it loaded until it is restarted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    /// Each source: stale or not, age, load time, how many names (never
    /// which), failures.
    pub sources: Vec<crate::source::combine::SourceHealth>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A load succeeded; returns whether it was the first.
    pub(crate) fn success(&self, at: SystemTime) -> bool {
        let mut h = self.lock();
        let first = h.loaded_at.is_none();
        h.loaded_at = Some(at);
        h.last_error = None;
        h.failures = 0;
        first
    }

    /// A load in which some sources failed, but every one has values
    /// (theirs kept from earlier): the set is served, stale, as old as its
    /// oldest source's values. Returns whether it was the first set.
    pub(crate) fn partial(&self, oldest: SystemTime, error: String) -> bool {
        let mut h = self.lock();
        let first = h.loaded_at.is_none();
        h.loaded_at = Some(oldest);
        h.last_error = Some(error);
        h.failures += 1;
        first
    }

    /// A load failed; returns the number of failures in a row.
    pub(crate) fn failure(&self, error: String) -> u32 {
        let mut h = self.lock();
        h.last_error = Some(error);
        h.failures += 1;
        h.failures
    }

    pub(crate) fn loaded(&self) -> bool {
        self.lock().loaded_at.is_some()
    }

    pub(crate) fn readiness(&self, max_age: Duration) -> Readiness {
        let h = self.lock();
        let age = h
            .loaded_at
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        let fresh = age.is_some_and(|a| a <= max_age);
        Readiness {
            ready: fresh,
            loaded: h.loaded_at.is_some(),
            stale: h.loaded_at.is_some() && h.failures > 0,
            age_seconds: age.map(|a| a.as_secs()),
            last_success: h
                .loaded_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            max_age_seconds: max_age.as_secs(),
            consecutive_failures: h.failures,
            last_error: h.last_error.clone(),
            secret_memory: String::new(),
            origin: String::new(),
            restart_needed: Vec::new(),
            sources: Vec::new(),
        }
    }
}
