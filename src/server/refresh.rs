//! Keeping the secret set fresh, and reloading the config.
//!
//! The refresh loop reloads every source on an interval (with jitter, so a
//! fleet of servers does not hit a source at once). A new set replaces the
//! old one whole. A failed load keeps serving the last good set, marks it
//! stale, logs why and retries with backoff.
//!
//! A reload (SIGHUP) reads the config file again. A valid config replaces
//! the registry, limits and sources at once; when its sources differ, they
//! are loaded first and the reload fails if they do. An invalid config, or
//! one that changes a setting that applies only at start (the listener,
//! keys, TLS, ...), is rejected with a log line naming why, and the running
//! config stays whole: a reload never applies part of a file or ignores a
//! setting silently.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::state::{Runtime, State};
use crate::config::ConfigError;
use crate::config::server::{Checked, ServerConfig};
use crate::source::SourceError;
use crate::source::combine::{Duplicate, Round};
use crate::store::ServedSet;

/// Loads every source once (each failing source keeps its last good
/// values) and serves the result. Returns the number of secrets served, or
/// the first source that failed (for the retry backoff).
pub(crate) async fn refresh_once(state: &State) -> Result<usize, SourceError> {
    // The config is read under the lock: a reload that held it has already
    // swapped in its sources, which must not be loaded over with old ones.
    let mut held = state.secrets.sources.lock().await;
    let rt = state.runtime.load_full();
    let (next, round) = held.load_due(&rt.config.sources).await;
    let good = round.errors.is_empty() && round.set.is_some();
    state.keep_sources(&mut held, next);
    let served = serve_round(state, round, false);
    if good && let Some(cfg) = &rt.config.sealed_set {
        super::sealed_set::store(cfg, &held, &state.secrets.sealed).await;
    }
    served
}

/// Serves what one round of loading produced, and says so: the set when
/// every source has values (stale if some kept earlier ones), each failure
/// with what is still served, and the names two sources define (`loud`:
/// at warn, at start and reload; else at debug, every refresh).
pub(crate) fn serve_round(state: &State, round: Round, loud: bool) -> Result<usize, SourceError> {
    log_duplicates(&round.duplicates, loud);
    let count = round.set.as_ref().map(ServedSet::len);
    let partial = !round.errors.is_empty();
    // One count per source and attempt.
    for _ in 0..round.loaded {
        state.metrics.source_load(true);
    }
    if let Some(set) = round.set {
        let first = if partial {
            let oldest = state
                .secrets
                .sources_view
                .load()
                .oldest_success()
                .unwrap_or_else(SystemTime::now);
            state.set_partial(set, oldest, round.errors[0].summary())
        } else {
            state.set_loaded(set)
        };
        if first {
            tracing::info!(secrets = count, "first load succeeded; ready");
            crate::systemd::notify(crate::systemd::NotifyState::Ready);
        } else {
            tracing::debug!(secrets = count, "secrets refreshed");
        }
    }
    for e in &round.errors {
        state.metrics.source_load(false);
        if let Some(stderr) = &e.stderr {
            tracing::debug!(
                source = e.index,
                stderr = stderr.as_str(),
                "the failed command's stderr"
            );
        }
        if e.wait.as_ref().is_some_and(|w| w.repeated) {
            // A wait already logged (a rate limit, a spent budget): it
            // costs no request and says nothing new.
            tracing::debug!(error = %e, "source still waiting");
        } else if round.missing.contains(&e.index) {
            let failures = state.secrets.health.failure(e.summary());
            if state.secrets.health.loaded() {
                tracing::warn!(error = %e, failures, "source failed and has never loaded; still serving the last set without it");
            } else {
                tracing::error!(error = %e, failures, "load failed; nothing is served until every source has loaded once");
            }
        } else {
            let age = state
                .secrets
                .sources_view
                .load()
                .health()
                .get(e.index - 1)
                .and_then(|s| s.age_seconds)
                .unwrap_or(0);
            tracing::warn!(error = %e, age_seconds = age, "refresh failed; still serving this source's last good values (stale), the other sources refreshed");
        }
    }
    match round.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(count.unwrap_or(0)),
    }
}

/// Names two sources define (names only): at warn when `loud`.
pub(crate) fn log_duplicates(duplicates: &[Duplicate], loud: bool) {
    for d in duplicates {
        let sources: Vec<String> = d.sources.iter().map(|i| format!("#{i}")).collect();
        let winner = d.sources.last().copied().unwrap_or_default();
        if loud {
            tracing::warn!(secret = %d.name, "secret is defined by sources {}; the value of #{winner} is served (later sources win)", sources.join(", "));
        } else {
            tracing::debug!(secret = %d.name, "secret is defined by sources {}; the value of #{winner} is served", sources.join(", "));
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
    let mut failures: u32 = if state.secrets.health.loaded() { 0 } else { 1 };
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
    #[error(
        "changed settings that apply only at start: {0}; the running config is kept. Restart locket to apply them, or undo the change and reload again"
    )]
    FixedAtStart(String),
}

/// The settings a running server cannot change (the listener, keys, TLS,
/// the request-body limit baked into the routes, the replay cache's size,
/// what happens at start, and the v1 endpoint's existence, path and key),
/// named as in `server.toml`, for each one that differs. Every other setting
/// applies on reload: clients, sources, clock_skew, max_answer_bytes,
/// refresh_interval, max_age, request_timeout, max_connections,
/// max_failed_auth, failed_auth_window and v1.lookup.
pub(crate) fn fixed_at_start_changes(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    [
        ("listen", old.listen != new.listen),
        ("listen_backlog", old.listen_backlog != new.listen_backlog),
        ("key_file", old.key_file != new.key_file),
        ("next_key_file", old.next_key_file != new.next_key_file),
        ("key_bits", old.key_bits != new.key_bits),
        ("tls", old.tls != new.tls),
        (
            "max_request_bytes",
            old.max_request_bytes != new.max_request_bytes,
        ),
        (
            "replay_cache_size",
            old.replay_cache_size != new.replay_cache_size,
        ),
        ("start_unready", old.start_unready != new.start_unready),
        ("v1.enable", old.v1.enable != new.v1.enable),
        ("v1.path", old.v1.path != new.v1.path),
        ("v1.key_file", old.v1.key_file != new.v1.key_file),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// A SHA-256 of the files' contents, in order; `None` if one is unreadable.
pub(crate) fn files_digest(paths: &[&Path]) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for path in paths {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&*bytes);
    }
    Some(hash.finalize().into())
}

/// The key and TLS files whose contents on disk are no longer what the
/// server loaded at start, each as "setting (path): why". The running
/// server keeps its keys (they are fixed for its life): a restart applies
/// them. Nothing is created here.
fn changed_key_files(state: &State, config: &ServerConfig) -> Vec<String> {
    let keys = &state.keys;
    let mut changed = Vec::new();
    let mut key = |setting: &str, path: Option<&Path>, running: Option<&crate::keys::ServerKey>| {
        let (Some(path), Some(running)) = (path, running) else {
            return;
        };
        match crate::keys::ServerKey::load(path) {
            Ok(k) if k.fingerprint() == running.fingerprint() => {}
            Ok(k) => changed.push(format!(
                "{setting} ({}): it now holds {}, the server serves {}",
                path.display(),
                k.fingerprint(),
                running.fingerprint()
            )),
            Err(e) => changed.push(format!("{setting} ({}): {e}", path.display())),
        }
    };
    key("key_file", Some(&config.key_file), Some(&keys.current));
    key(
        "next_key_file",
        config.next_key_file.as_deref(),
        keys.next.as_ref(),
    );
    if config.v1.enable {
        key(
            "v1.key_file",
            config.v1.key_file.as_deref(),
            keys.v1.as_ref(),
        );
    }
    if let Some(tls) = &config.tls
        && files_digest(&[&tls.cert_file, &tls.key_file]) != keys.tls_files
    {
        changed.push(format!(
            "tls ({}, {}): the certificate or key changed",
            tls.cert_file.display(),
            tls.key_file.display()
        ));
    }
    changed
}

/// Re-reads `path` and swaps in the new config, or explains why not.
pub(crate) async fn reload(state: &State, path: &Path) -> Result<(), ReloadError> {
    let result = reload_inner(state, path).await;
    state.metrics.reload(result.is_ok());
    match &result {
        Ok(()) => {
            let changed = state
                .restart_needed
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            if changed.is_empty() {
                tracing::info!(path = %path.display(), "config reloaded");
            } else {
                tracing::warn!(path = %path.display(), restart_needed = ?changed, "config reloaded; key or TLS files changed on disk, and a reload does not swap keys: the server serves with the ones it started with until it is restarted (systemctl restart locket)");
            }
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running config")
        }
    }
    result
}

async fn reload_inner(state: &State, path: &Path) -> Result<(), ReloadError> {
    let Checked { config, registry } = ServerConfig::load(path)?;
    let old = state.runtime.load_full();
    let fixed = fixed_at_start_changes(&old.config, &config);
    if !fixed.is_empty() {
        return Err(ReloadError::FixedAtStart(fixed.join(", ")));
    }
    // Every source is read again (an edited .env is served at once); one
    // that fails keeps its last values, unless it is new or changed and so
    // has none: then the reload is refused and nothing changes.
    let mut held = state.secrets.sources.lock().await;
    let (next, round) = held.load(&config.sources).await;
    if let Some(e) = round
        .errors
        .iter()
        .position(|e| round.missing.contains(&e.index))
    {
        let mut errors = round.errors;
        return Err(ReloadError::Sources(errors.swap_remove(e)));
    }
    let clients = registry.len();
    // What the new registry grants and takes away, by name, in the log.
    for change in crate::plan::plan(&old.registry, &registry, None).changes {
        tracing::info!(client = %change.name(), change = %change.one_line(), "registry change");
    }
    state.apply_limits(&config);
    state.widen_clock_window(
        old.config.clock_skew.as_secs() as i64,
        config.clock_skew.as_secs() as i64,
        crate::clock::unix_now(),
    );
    state
        .runtime
        .store(Arc::new(Runtime::new(config, registry)));
    let good = round.errors.is_empty() && round.set.is_some();
    if let Ok(mut r) = state.restart_needed.lock() {
        *r = changed_key_files(state, &state.runtime.load().config);
    }
    state.keep_sources(&mut held, next);
    // Failures here are sources that keep their values: logged as stale,
    // the reload itself succeeded.
    let _ = serve_round(state, round, true);
    if good && let Some(cfg) = &state.runtime.load().config.sealed_set {
        super::sealed_set::store(cfg, &held, &state.secrets.sealed).await;
    }
    tracing::debug!(clients, "registry swapped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings a reload applies while serving (see [`fixed_at_start_changes`]
    /// for the others). A unit test checks that every setting is in one list.
    const APPLIED_ON_RELOAD: &[&str] = &[
        "clients",
        "sources",
        "clock_skew",
        "max_answer_bytes",
        "refresh_interval",
        "max_age",
        "request_timeout",
        "max_connections",
        "max_connections_per_source",
        "max_failed_auth",
        "failed_auth_window",
        "require_bound_requests",
        "v1.lookup",
        "health_networks",
        "sealed_set",
    ];

    /// Every setting of `server.toml` is either applied on reload or
    /// refused by name: a new setting must be put in exactly one list.
    #[test]
    fn every_setting_is_applied_or_refused_on_reload() {
        let mut changed = ServerConfig {
            tls: Some(crate::config::server::TlsConfig {
                cert_file: "c".into(),
                key_file: "k".into(),
            }),
            max_age: Some(std::time::Duration::from_secs(60)),
            next_key_file: Some("next.pem".into()),
            sealed_set: Some(crate::config::server::SealedSetConfig {
                path: "set.cred".into(),
                max_age: std::time::Duration::from_secs(3600),
                key: "host".into(),
                systemd_creds: "systemd-creds".into(),
                key_file: Some("seal.key".into()),
            }),
            ..ServerConfig::default()
        };
        changed.v1.key_file = Some("v1.pem".into());
        let table = toml::Table::try_from(&changed).expect("the config serialises");
        let mut settings = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("v1", toml::Value::Table(v1)) => {
                    settings.extend(v1.keys().map(|k| format!("v1.{k}")));
                }
                _ => settings.push(key.clone()),
            }
        }
        // Every setting changed at once: the refused ones are exactly those
        // `fixed_at_start_changes` names.
        changed.listen = "127.0.0.1:1".parse().unwrap();
        changed.listen_backlog += 1;
        changed.key_file = "other.pem".into();
        changed.next_key_file = Some("other-next.pem".into());
        changed.key_bits = 4096;
        changed.max_request_bytes += 1;
        changed.replay_cache_size += 1;
        changed.start_unready = !changed.start_unready;
        changed.v1.enable = !changed.v1.enable;
        changed.v1.path = "/other".into();
        let refused = fixed_at_start_changes(&ServerConfig::default(), &changed);
        for setting in &settings {
            let applied = APPLIED_ON_RELOAD.contains(&setting.as_str());
            let is_refused = refused.contains(&setting.as_str());
            assert!(
                applied != is_refused,
                "{setting}: applied on reload = {applied}, refused = {is_refused}; put it in exactly one list"
            );
        }
        assert_eq!(settings.len(), APPLIED_ON_RELOAD.len() + refused.len());
    }
}
