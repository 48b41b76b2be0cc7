//! `[sealed_set]`: the server's last good set, sealed to this host.
//!
//! At start, [`restore`] gives back the sources as they were sealed, if the
//! copy is at most `max_age` old: the server then serves at once, and the
//! first round reads only what changed (a 1Password source lists its vault
//! and gets the changed items). A source that cannot be read at start keeps
//! the sealed values, stale, and `/readyz` says where they came from. A
//! copy that is missing, expired, dated in the future or undecryptable is
//! refused by name and the server loads as if it had none.
//!
//! After each round in which every source loaded, [`store`] seals the set
//! again when its content changed, or when the copy is older than a
//! quarter of `max_age` (so a restart after a long quiet spell finds a
//! recent copy).

use std::sync::Mutex;
use std::time::SystemTime;

use crate::clock::{FUTURE_SKEW, human, timestamp};
use crate::config::server::SealedSetConfig;
use crate::sealed::{SealError, Sealer};
use crate::source::SourceConfig;
use crate::source::combine::Sources;
use crate::source::sealed_set::Restored;

/// The credential name bound into the encryption.
const NAME: &str = "locket-server-set";

/// What was sealed last, so an unchanged set is not sealed every round.
#[derive(Debug, Default)]
pub(crate) struct SealMark {
    digest: Option<[u8; 32]>,
    at: Option<SystemTime>,
    /// The last failure logged, so a failing store warns once.
    error: Option<String>,
}

fn sealer(cfg: &SealedSetConfig) -> Option<(Sealer, String)> {
    let file = cfg.path.file_name()?.to_str()?.to_owned();
    let dir = cfg
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    Some((
        Sealer {
            dir,
            systemd_creds: cfg.systemd_creds.clone(),
            key: cfg.key.clone(),
            key_file: cfg.key_file.clone(),
        },
        file,
    ))
}

/// The sealed sources for `configs`, if a usable copy exists; every refusal
/// is logged naming the file and why.
pub(crate) async fn restore(cfg: &SealedSetConfig, configs: &[SourceConfig]) -> Option<Restored> {
    let path = cfg.path.display();
    let (sealer, file) = sealer(cfg)?;
    let plain = match sealer.load(NAME, &file).await {
        Ok(plain) => plain,
        Err(SealError::Missing { .. }) => {
            tracing::info!(path = %path, "no sealed set yet; loading every source");
            return None;
        }
        Err(e) => {
            tracing::warn!(path = %path, "sealed set refused: {e}");
            return None;
        }
    };
    let restored = match Sources::restore(&plain, configs) {
        Ok(r) => r,
        Err(kind) => {
            tracing::warn!(path = %path, "sealed set refused: not a locket sealed set ({kind}); it is kept as it is");
            return None;
        }
    };
    let now = SystemTime::now();
    if let Ok(ahead) = restored.sealed_at.duration_since(now)
        && ahead > FUTURE_SKEW
    {
        tracing::warn!(path = %path, sealed_at = %timestamp(restored.sealed_at), "sealed set refused: it is dated {} in the future (a clock that was wrong when it was sealed); it is kept, the next good load replaces it", human(ahead));
        return None;
    }
    let age = now.duration_since(restored.sealed_at).unwrap_or_default();
    if age > cfg.max_age {
        let _ = sealer.remove(&file);
        tracing::warn!(path = %path, sealed_at = %timestamp(restored.sealed_at), "sealed set refused: it is {} old, more than sealed_set.max_age ({}); it was deleted", human(age), human(cfg.max_age));
        return None;
    }
    if restored.matched == 0 {
        tracing::warn!(path = %path, "sealed set refused: none of its sources has the settings of a configured one (changed since it was sealed)");
        return None;
    }
    tracing::info!(path = %path, sealed_at = %timestamp(restored.sealed_at), age = %human(age), sources = restored.matched, of = configs.len(), "starting from the sealed set; each source reads only what changed since");
    Some(restored)
}

/// Seals `sources` if they changed since the last seal, or the copy is
/// older than a quarter of `max_age`. Failures are logged (once per
/// distinct failure), never fatal: the server serves on without a copy.
pub(crate) async fn store(cfg: &SealedSetConfig, sources: &Sources, mark: &Mutex<SealMark>) {
    let now = SystemTime::now();
    let digest = sources.content_digest().await;
    {
        let m = mark.lock().unwrap_or_else(|p| p.into_inner());
        let recent =
            m.at.is_some_and(|at| now.duration_since(at).unwrap_or_default() < cfg.max_age / 4);
        if m.digest == Some(digest) && recent {
            return;
        }
    }
    let Some(plain) = sources.seal_plain(now).await else {
        return;
    };
    let Some((sealer, file)) = sealer(cfg) else {
        return;
    };
    let result = sealer.store(NAME, &file, &plain).await;
    let mut m = mark.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            if m.error.take().is_some() || m.at.is_none() {
                tracing::info!(path = %cfg.path.display(), "the last good set is sealed");
            }
            m.digest = Some(digest);
            m.at = Some(now);
        }
        Err(e) => {
            let text = e.to_string();
            if m.error.as_deref() != Some(text.as_str()) {
                tracing::warn!(
                    "cannot seal the last good set: {text}; a restart will read every source again"
                );
                m.error = Some(text);
            }
        }
    }
}
