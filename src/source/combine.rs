//! Combining sources into the set that is served, one source at a time:
//! each source keeps the values it last loaded, so a failing source (a
//! rate-limited 1Password, a command that times out) serves its own last
//! good values while every other source refreshes. Later sources win a
//! name that two define; such names are reported (names only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::memory::{SourceMemory, Usage};
use super::{LoadError, SourceConfig, SourceError};
use crate::secret::SecretValue;
use crate::store::ServedSet;

/// One source's last load and last good values.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The source as configured: a reload keeps the values of a source
    /// whose settings did not change.
    pub config: SourceConfig,
    /// The values of its last successful load (a locked set of their own).
    pub(crate) values: Option<Arc<ServedSet>>,
    /// When that load finished.
    pub last_success: Option<SystemTime>,
    /// How long the last attempt took.
    pub last_duration: Duration,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last failure, as `/readyz` may show it (number, type, kind).
    pub last_error: Option<String>,
    /// What the source remembers between rounds (requests, budget, rate
    /// limit, what it read); kept while its settings stay the same.
    memory: Arc<tokio::sync::Mutex<SourceMemory>>,
    /// Its requests and waits as of its last round.
    pub usage: Usage,
    /// A rate limit or spent budget it waits out, until then.
    pub waiting_until: Option<SystemTime>,
    /// Its values came from the sealed last-good set of this time, and no
    /// load has succeeded since.
    pub sealed_at: Option<SystemTime>,
}

impl SourceState {
    /// A source never loaded.
    pub(crate) fn empty(config: SourceConfig) -> Self {
        Self {
            config,
            values: None,
            last_success: None,
            last_duration: Duration::ZERO,
            failures: 0,
            last_error: None,
            memory: Arc::default(),
            usage: Usage::default(),
            waiting_until: None,
            sealed_at: None,
        }
    }

    pub(crate) fn memory(&self) -> &tokio::sync::Mutex<SourceMemory> {
        &self.memory
    }

    pub(crate) fn set_memory(&mut self, memory: SourceMemory) {
        self.memory = Arc::new(tokio::sync::Mutex::new(memory));
    }
}

/// What `/readyz` says about one source: no name of a secret, no path,
/// command, URL or text the source printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct SourceHealth {
    /// 1-based, as in the config's `[[sources]]` order.
    pub index: usize,
    #[serde(rename = "type")]
    pub source_type: &'static str,
    /// The last attempt failed (its last good values are served).
    pub stale: bool,
    /// Never loaded: it contributes nothing.
    pub loaded: bool,
    pub age_seconds: Option<u64>,
    /// When its values were last loaded (RFC 3339, UTC).
    pub last_success: Option<String>,
    pub load_ms: u64,
    /// How many names it holds (not which).
    pub secrets: usize,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Requests to the service (as it counts them) in the last hour and
    /// day, and since the source's settings last changed.
    pub requests_last_hour: u32,
    pub requests_last_day: u32,
    pub requests_total: u64,
    /// The request budget, when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_hour: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_day: Option<u32>,
    /// Until when it asks nothing (a rate limit or a spent budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<String>,
    /// Where its values came from: "source", "sealed copy <time>" (the
    /// server's sealed last-good set, until a load succeeds), or "none".
    pub origin: String,
    /// How often it is read at most, when its day's budget stretches the
    /// refresh interval (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paced_every_seconds: Option<u64>,
}

/// A name defined by more than one source: which sources, and the one
/// whose value is served (the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The secret name.
    pub name: String,
    /// 1-based source numbers, in order; the last wins.
    pub sources: Vec<usize>,
}

/// Every source's state, in config order.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    states: Vec<SourceState>,
}

/// The outcome of one round of loading.
#[derive(Debug)]
pub struct Round {
    /// The combined set, when every source has values (fresh or kept).
    pub set: Option<ServedSet>,
    /// The sources that failed this round.
    pub errors: Vec<SourceError>,
    /// Sources that failed and have no earlier values to keep (only they
    /// can keep a set from being combined).
    pub missing: Vec<usize>,
    /// Names that more than one source defines (the later wins).
    pub duplicates: Vec<Duplicate>,
    /// How many sources loaded this round.
    pub loaded: usize,
}

impl Sources {
    pub(crate) fn from_states(states: Vec<SourceState>) -> Self {
        Self { states }
    }

    pub(crate) fn states(&self) -> &[SourceState] {
        &self.states
    }

    /// Loads every source of `configs` once. A source that fails keeps the
    /// values it last loaded under the same settings in `self`; a new or
    /// changed source that fails has none.
    pub async fn load(&self, configs: &[SourceConfig]) -> (Sources, Round) {
        self.load_sources(configs, false).await
    }

    /// [`Sources::load`] for the refresh loop: a source whose budget paces
    /// it more slowly than the refresh interval is left as it is until it
    /// is due (its values stay, fresh as of its last load).
    pub async fn load_due(&self, configs: &[SourceConfig]) -> (Sources, Round) {
        self.load_sources(configs, true).await
    }

    async fn load_sources(&self, configs: &[SourceConfig], due_only: bool) -> (Sources, Round) {
        let mut states = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        let mut missing = Vec::new();
        let mut skipped = 0;
        for (i, config) in configs.iter().enumerate() {
            let previous = self
                .states
                .get(i)
                .filter(|s| s.config == *config)
                .or_else(|| self.states.iter().find(|s| s.config == *config));
            let memory = previous.map_or_else(Arc::default, |p| Arc::clone(&p.memory));
            let mut held = memory.lock().await;
            if due_only
                && let Some(p) = previous
                && p.values.is_some()
                && held.next_due.is_some_and(|due| Instant::now() < due)
            {
                drop(held);
                states.push(p.clone());
                skipped += 1;
                continue;
            }
            let started = Instant::now();
            let result = load_one(i, config, &mut held).await;
            let last_duration = started.elapsed();
            let usage = held.usage(SystemTime::now());
            drop(held);
            match result {
                Ok(set) => states.push(SourceState {
                    config: config.clone(),
                    values: Some(Arc::new(set)),
                    last_success: Some(SystemTime::now()),
                    last_duration,
                    failures: 0,
                    last_error: None,
                    memory,
                    usage,
                    waiting_until: None,
                    sealed_at: None,
                }),
                Err(e) => {
                    let kept = previous.and_then(|p| p.values.clone());
                    if kept.is_none() {
                        missing.push(i + 1);
                    }
                    states.push(SourceState {
                        config: config.clone(),
                        values: kept,
                        last_success: previous.and_then(|p| p.last_success),
                        last_duration,
                        failures: previous.map_or(0, |p| p.failures) + 1,
                        last_error: Some(e.summary()),
                        memory,
                        usage,
                        waiting_until: e.wait.as_ref().map(|w| w.until),
                        sealed_at: previous.and_then(|p| p.sealed_at),
                    });
                    errors.push(e);
                }
            }
        }
        let loaded = configs.len() - errors.len() - skipped;
        let next = Sources { states };
        let (set, duplicates) = if missing.is_empty() {
            let (set, duplicates) = next.combine();
            (Some(set), duplicates)
        } else {
            (None, Vec::new())
        };
        (
            next,
            Round {
                set,
                errors,
                missing,
                duplicates,
                loaded,
            },
        )
    }

    /// The served set: every source's values in order, later ones winning.
    fn combine(&self) -> (ServedSet, Vec<Duplicate>) {
        let mut all: BTreeMap<String, SecretValue> = BTreeMap::new();
        let mut defined: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, state) in self.states.iter().enumerate() {
            let Some(values) = &state.values else {
                continue;
            };
            for (name, value) in values.iter() {
                defined.entry(name).or_default().push(i + 1);
                all.insert(name.to_owned(), SecretValue::new(value.expose().to_owned()));
            }
        }
        let duplicates = defined
            .into_iter()
            .filter(|(_, sources)| sources.len() > 1)
            .map(|(name, sources)| Duplicate {
                name: name.to_owned(),
                sources,
            })
            .collect();
        (ServedSet::new(all), duplicates)
    }

    /// Whether any source failed on its last attempt.
    pub fn stale(&self) -> bool {
        self.states.iter().any(|s| s.failures > 0)
    }

    /// When the oldest values served were loaded.
    pub fn oldest_success(&self) -> Option<SystemTime> {
        self.states.iter().filter_map(|s| s.last_success).min()
    }

    /// Each source as `/readyz` shows it.
    pub fn health(&self) -> Vec<SourceHealth> {
        let now = SystemTime::now();
        self.states
            .iter()
            .enumerate()
            .map(|(i, s)| SourceHealth {
                index: i + 1,
                source_type: s.config.type_name(),
                stale: s.failures > 0,
                loaded: s.values.is_some(),
                age_seconds: s
                    .last_success
                    .map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
                last_success: s
                    .last_success
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                load_ms: s.last_duration.as_millis() as u64,
                secrets: s.values.as_ref().map_or(0, |v| v.len()),
                consecutive_failures: s.failures,
                last_error: s.last_error.clone(),
                requests_last_hour: s.usage.last_hour,
                requests_last_day: s.usage.last_day,
                requests_total: s.usage.requests_total,
                reads_per_hour: s.config.budget().per_hour,
                reads_per_day: s.config.budget().per_day,
                waiting_until: s
                    .waiting_until
                    .filter(|t| *t > now)
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                paced_every_seconds: s.usage.paced_every.map(|d| d.as_secs()),
                origin: match (&s.values, s.sealed_at) {
                    (None, _) => "none".into(),
                    (Some(_), Some(t)) => {
                        format!("sealed copy {}", humantime::format_rfc3339_seconds(t))
                    }
                    (Some(_), None) => "source".into(),
                },
            })
            .collect()
    }
}

/// Loads source number `i` (0-based), checking its names.
async fn load_one(
    i: usize,
    source: &SourceConfig,
    memory: &mut SourceMemory,
) -> Result<ServedSet, SourceError> {
    let error = |detail: String, kind: &'static str, stderr| SourceError {
        index: i + 1,
        description: source.describe(),
        detail,
        kind,
        stderr,
        source_type: source.type_name(),
        wait: None,
    };
    let entries = source.load_with(memory).await.map_err(|e| {
        let kind = e.kind();
        let detail = e.to_string();
        if let Some(until) = e.waits_until() {
            let repeated = !memory.announce(until);
            return SourceError {
                wait: Some(Box::new(super::Wait { until, repeated })),
                ..error(detail, kind, None)
            };
        }
        let stderr = match e {
            LoadError::Command { stderr, .. } => stderr,
            _ => None,
        };
        error(detail, kind, stderr)
    })?;
    let mut map = BTreeMap::new();
    for (name, value) in entries {
        if !crate::protocol::valid_secret_name(&name) {
            return Err(error(
                format!(
                    "secret name {name:?} is empty, longer than 256 bytes or has control characters"
                ),
                "a secret name is not acceptable",
                None,
            ));
        }
        map.insert(name, value);
    }
    Ok(ServedSet::new(map))
}
