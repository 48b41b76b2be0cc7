//! The boot cache: the last set of secrets fetched for a consumer, sealed
//! to this host (`crate::sealed`: `systemd-creds`, a TPM2 where present,
//! else the host key), so that a host that reboots while no server answers
//! can still start its consumers, for at most the maximum age the operator
//! chose. Each consumer's copy is sealed under a name of its own, so one
//! consumer's copy cannot be passed off as another's. It holds the time of
//! the fetch, inside the encryption, so the age cannot be reset by touching
//! the file; a copy dated in the future (a clock that was behind when it
//! was written, or a forged date) is refused rather than taken as new.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::clock::{FUTURE_SKEW, human, timestamp};
use crate::sealed::{SealError, Sealer, json_error_kind};
use crate::secret_set::SecretSet;

/// A boot-cache problem, naming the file and what to do. Never a value.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum CacheError {
    #[error("there is no cached copy ({path})")]
    Missing { path: PathBuf },
    #[error(
        "the cached copy {path} was fetched at {fetched_at}, {age} ago, which is more than cache_max_age ({max_age}); it was deleted"
    )]
    Expired {
        path: PathBuf,
        fetched_at: String,
        age: String,
        max_age: String,
    },
    #[error(
        "the cached copy {path} says it was fetched at {fetched_at}, {ahead} in the future; it is not used (a clock that was wrong when it was written: delete it, the next fetch writes a new one)"
    )]
    Future {
        path: PathBuf,
        fetched_at: String,
        ahead: String,
    },
    #[error(
        "cannot decrypt the cached copy {path}: {detail}; it is kept as it is. Either the TPM2 or the host key changed (the host key /var/lib/systemd/credential.secret must survive reboots: a host that wipes /var/lib at boot must persist it), or the file is damaged: delete it if it stays so"
    )]
    Decrypt { path: PathBuf, detail: String },
    #[error("cannot encrypt the cached copy into {path}: {detail}")]
    Encrypt { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<SealError> for CacheError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Missing { path } => CacheError::Missing { path },
            SealError::Decrypt { path, detail } => CacheError::Decrypt { path, detail },
            SealError::Encrypt { path, detail } => CacheError::Encrypt { path, detail },
            SealError::Io { path, source } => CacheError::Io { path, source },
        }
    }
}

/// Where the copies live and how they are encrypted.
#[derive(Debug, Clone)]
pub struct BootCache {
    /// The folder of the sealed copies, one per consumer.
    pub dir: PathBuf,
    /// The `systemd-creds` program.
    pub systemd_creds: PathBuf,
    /// `--with-key=`: auto, host, tpm2 or host+tpm2.
    pub key: String,
}

/// A copy read back from the cache.
pub struct Cached {
    /// The set as it was fetched.
    pub secrets: SecretSet,
    /// When it was fetched (sealed with it, so touching the file cannot renew it).
    pub fetched_at: SystemTime,
}

#[derive(Deserialize)]
struct Plain {
    fetched_at: u64,
    secrets: SecretSet,
}

impl BootCache {
    fn sealer(&self) -> Sealer {
        Sealer {
            dir: self.dir.clone(),
            systemd_creds: self.systemd_creds.clone(),
            key: self.key.clone(),
            key_file: None,
        }
    }

    fn file(consumer: &str) -> String {
        format!("{consumer}.cred")
    }

    /// The file holding `consumer`'s copy.
    pub fn path(&self, consumer: &str) -> PathBuf {
        self.dir.join(Self::file(consumer))
    }

    /// The credential name, bound into the encryption: a copy renamed to
    /// another consumer's file does not decrypt.
    fn name(consumer: &str) -> String {
        format!("locket-cache-{consumer}")
    }

    /// Replaces `consumer`'s copy with `secrets`, fetched at `fetched_at`
    /// (atomically: a crash leaves the old copy or the new one).
    pub async fn store(
        &self,
        consumer: &str,
        secrets: &SecretSet,
        fetched_at: SystemTime,
    ) -> Result<(), CacheError> {
        let set = secrets.to_json();
        let mut plain = Zeroizing::new(Vec::with_capacity(set.len() + 48));
        let secs = fetched_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let _ = write!(plain, "{{\"fetched_at\":{secs},\"secrets\":");
        plain.extend_from_slice(&set);
        plain.push(b'}');
        Ok(self
            .sealer()
            .store(&Self::name(consumer), &Self::file(consumer), &plain)
            .await?)
    }

    /// `consumer`'s copy, if it is at most `max_age` old. An older copy is
    /// deleted; one that does not decrypt, or is dated in the future, is
    /// kept and reported.
    pub async fn load(&self, consumer: &str, max_age: Duration) -> Result<Cached, CacheError> {
        let path = self.path(consumer);
        let plain = self
            .sealer()
            .load(&Self::name(consumer), &Self::file(consumer))
            .await?;
        let parsed: Plain = serde_json::from_slice(&plain).map_err(|e| CacheError::Decrypt {
            path: path.clone(),
            detail: format!("not a locket cache ({})", json_error_kind(&e)),
        })?;
        let fetched_at = UNIX_EPOCH + Duration::from_secs(parsed.fetched_at);
        let now = SystemTime::now();
        if let Ok(ahead) = fetched_at.duration_since(now)
            && ahead > FUTURE_SKEW
        {
            return Err(CacheError::Future {
                path,
                fetched_at: timestamp(fetched_at),
                ahead: human(ahead),
            });
        }
        let age = now.duration_since(fetched_at).unwrap_or_default();
        if age > max_age {
            std::fs::remove_file(&path).map_err(|source| CacheError::Io {
                path: path.clone(),
                source,
            })?;
            return Err(CacheError::Expired {
                path,
                fetched_at: timestamp(fetched_at),
                age: human(age),
                max_age: human(max_age),
            });
        }
        Ok(Cached {
            secrets: parsed.secrets,
            fetched_at,
        })
    }

    /// Deletes `consumer`'s copy (if any).
    pub fn remove(&self, consumer: &str) -> Result<(), CacheError> {
        Ok(self.sealer().remove(&Self::file(consumer))?)
    }
}
