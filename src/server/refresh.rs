//! Keeping the secret set fresh, and reloading the config.
//!
//! The refresh loop reloads every source on an interval (with jitter, so a
//! fleet of servers does not hit a source at once). A new set replaces the
//! old one whole. A failed load keeps serving the last good set, marks it
//! stale, logs why and retries with backoff.
//!
//! A reload (SIGHUP) reads the config file again. A valid config replaces
//! the registry, limits and sources at once; when its sources differ, they
//! are loaded first and the reload fails if they do. An invalid config is
//! rejected with a log line and the old one stays.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{Runtime, State};
use crate::config::ConfigError;
use crate::config::server::{Checked, ServerConfig};
use crate::source::{self, SourceError};

/// Loads every source once and swaps in the result. Returns the number of
/// secrets loaded.
pub(crate) async fn refresh_once(state: &State) -> Result<usize, SourceError> {
    let rt = state.runtime.load_full();
    match source::load_all(&rt.config.sources).await {
        Ok(set) => {
            let count = set.len();
            if state.set_loaded(set) {
                tracing::info!(secrets = count, "first load succeeded; ready");
                super::startup::notify_systemd(sd_notify::NotifyState::Ready);
            } else {
                tracing::debug!(secrets = count, "secrets refreshed");
            }
            Ok(count)
        }
        Err(e) => {
            let failures = state.health.failure(e.to_string());
            state.metrics.source_load(false);
            let age = SystemTime::now()
                .duration_since(state.store.snapshot().loaded_at())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if state.health.loaded() {
                tracing::warn!(error = %e, failures, age_seconds = age, "refresh failed; still serving the last good set (stale)");
            } else {
                tracing::error!(error = %e, failures, "load failed; nothing is served until a load succeeds");
            }
            Err(e)
        }
    }
}

fn jittered(interval: Duration) -> Duration {
    let r = crate::crypto::random_bytes::<2>()
        .map(u16::from_le_bytes)
        .unwrap_or(0) as f64
        / u16::MAX as f64;
    interval.mul_f64(0.9 + 0.2 * r)
}

/// Runs until `stop` is notified. `now` wakes it for an immediate load.
pub(crate) async fn refresh_loop(state: Arc<State>, now: Arc<Notify>, stop: Arc<Notify>) {
    let mut failures: u32 = if state.health.loaded() { 0 } else { 1 };
    loop {
        let interval = state.runtime.load().config.refresh_interval;
        let wait = if failures > 0 {
            // 1s, 2s, 4s ... capped at the interval (or 60s).
            let cap = if interval.is_zero() {
                Duration::from_secs(60)
            } else {
                interval.min(Duration::from_secs(60))
            };
            Duration::from_secs(1u64 << (failures - 1).min(6)).min(cap)
        } else if interval.is_zero() {
            Duration::MAX
        } else {
            jittered(interval)
        };
        tokio::select! {
            () = tokio::time::sleep(wait.min(Duration::from_secs(365 * 86400))) => {}
            () = now.notified() => {}
            () = stop.notified() => return,
        }
        failures = match refresh_once(&state).await {
            Ok(_) => 0,
            Err(_) => failures.saturating_add(1),
        };
    }
}

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the new sources do not load: {0}")]
    Sources(SourceError),
}

/// Re-reads `path` and swaps in the new config, or explains why not.
pub(crate) async fn reload(state: &State, path: &Path) -> Result<(), ReloadError> {
    let result = reload_inner(state, path).await;
    state.metrics.reload(result.is_ok());
    match &result {
        Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running config")
        }
    }
    result
}

async fn reload_inner(state: &State, path: &Path) -> Result<(), ReloadError> {
    let Checked { config, registry } = ServerConfig::load(path)?;
    let old = state.runtime.load_full();
    for (what, changed) in [
        ("listen", config.listen != old.config.listen),
        ("key_file", config.key_file != old.config.key_file),
        ("tls", config.tls != old.config.tls),
        (
            "max_request_bytes",
            config.max_request_bytes != old.config.max_request_bytes,
        ),
        (
            "replay_cache_size",
            config.replay_cache_size != old.config.replay_cache_size,
        ),
    ] {
        if changed {
            tracing::warn!("{what} changed; it takes effect after a restart");
        }
    }
    let new_set = if config.sources != old.config.sources {
        Some(
            source::load_all(&config.sources)
                .await
                .map_err(ReloadError::Sources)?,
        )
    } else {
        None
    };
    let clients = registry.len();
    state
        .runtime
        .store(Arc::new(Runtime::new(config, registry)));
    if let Some(set) = new_set {
        state.set_loaded(set);
    }
    tracing::debug!(clients, "registry swapped");
    Ok(())
}
