//! The boot cache: the last set of secrets fetched for a consumer, kept on
//! disk encrypted to this host with `systemd-creds` (a TPM2 where present,
//! else the host key in /var/lib/systemd/credential.secret), so that a
//! host that reboots while no server answers can still start its
//! consumers, for at most the maximum age the operator chose.
//!
//! Why `systemd-creds` and not a key of our own: the point is that the copy
//! is useless off this machine (a disk image, a backup), which needs a key
//! the machine keeps outside the file system image (TPM2) or at least
//! outside locket's own state; systemd already manages exactly that key,
//! and its format binds the credential's name, so one consumer's copy
//! cannot be passed off as another's.
//!
//! The plain text never touches the disk: it goes to `systemd-creds` on a
//! pipe and comes back on a pipe, into zeroizing memory. It holds the time
//! of the fetch, inside the encryption, so the age cannot be reset by
//! touching the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// A boot-cache problem, naming the file and what to do. Never a value.
#[derive(Debug, thiserror::Error)]
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
        "cannot decrypt the cached copy {path}: {detail}; it is kept as it is (a TPM2 or host key that changed, or a damaged file: delete it if it stays so)"
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

/// Where the copies live and how they are encrypted.
#[derive(Debug, Clone)]
pub struct BootCache {
    pub dir: PathBuf,
    /// The `systemd-creds` program.
    pub systemd_creds: PathBuf,
    /// `--with-key=`: auto, host, tpm2 or host+tpm2.
    pub key: String,
}

/// A copy read back from the cache.
pub struct Cached {
    pub secrets: Vec<(String, SecretValue)>,
    pub fetched_at: SystemTime,
}

#[derive(Deserialize)]
struct Plain {
    fetched_at: u64,
    secrets: Vec<(String, SecretValue)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A time as RFC 3339, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as a human reads it, to the second.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl BootCache {
    /// The file holding `consumer`'s copy.
    pub fn path(&self, consumer: &str) -> PathBuf {
        self.dir.join(format!("{consumer}.cred"))
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
        secrets: &[(String, SecretValue)],
        fetched_at: SystemTime,
    ) -> Result<(), CacheError> {
        let path = self.path(consumer);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            return Err(io(&self.dir)(e));
        }
        // Sized up front (JSON escapes a byte into at most 6), so the
        // buffer never grows and leaves a copy behind.
        let size = 64
            + secrets
                .iter()
                .map(|(n, v)| 8 + 6 * (n.len() + v.len()))
                .sum::<usize>();
        let mut plain = Zeroizing::new(Vec::with_capacity(size));
        let secs = fetched_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let _ = write!(plain, "{{\"fetched_at\":{secs},\"secrets\":[");
        for (i, (name, value)) in secrets.iter().enumerate() {
            if i > 0 {
                plain.push(b',');
            }
            plain.push(b'[');
            let _ = serde_json::to_writer(&mut *plain, name);
            plain.push(b',');
            let _ = serde_json::to_writer(&mut *plain, value.expose());
            plain.push(b']');
        }
        plain.extend_from_slice(b"]}");
        // One temporary name per process: the watcher and a fetch unit may
        // store the same consumer's copy at once, and neither may remove
        // or rename the other's half-written file.
        let tmp = self
            .dir
            .join(format!(".{consumer}.cred.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = self.run_encrypt(consumer, &plain, &tmp).await;
        let result = result.and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    async fn run_encrypt(
        &self,
        consumer: &str,
        plain: &[u8],
        out: &Path,
    ) -> Result<(), CacheError> {
        let fail = |detail: String| CacheError::Encrypt {
            path: self.path(consumer),
            detail,
        };
        let mut child = self
            .command("encrypt", consumer)
            .arg(format!("--with-key={}", self.key))
            .arg("-")
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| fail(self.cannot_run(&e)))?;
        let mut stdin = child.stdin.take().expect("piped");
        let written = stdin.write_all(plain).await;
        drop(stdin);
        finish(child).await.map_err(fail)?;
        written.map_err(|e| fail(e.to_string()))
    }

    /// `consumer`'s copy, if it is at most `max_age` old. An older copy is
    /// deleted; one that does not decrypt is kept and reported.
    pub async fn load(&self, consumer: &str, max_age: Duration) -> Result<Cached, CacheError> {
        let path = self.path(consumer);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len() as usize,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::Missing { path });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let fail = |detail: String| CacheError::Decrypt {
            path: path.clone(),
            detail,
        };
        let mut child = self
            .command("decrypt", consumer)
            .arg(&path)
            .arg("-")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| fail(self.cannot_run(&e)))?;
        // The plain text is shorter than the credential: one allocation.
        let mut plain = Zeroizing::new(Vec::with_capacity(size + 4096));
        let mut stdout = child.stdout.take().expect("piped");
        let read = stdout.read_to_end(&mut plain).await;
        finish(child).await.map_err(fail)?;
        read.map_err(|e| fail(e.to_string()))?;
        let parsed: Plain = serde_json::from_slice(&plain)
            .map_err(|e| fail(format!("not a locket cache ({})", e.classify_name())))?;
        let fetched_at = UNIX_EPOCH + Duration::from_secs(parsed.fetched_at);
        let age = SystemTime::now()
            .duration_since(fetched_at)
            .unwrap_or_default();
        if age > max_age {
            std::fs::remove_file(&path).map_err(io(&path))?;
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

    /// `systemd-creds VERB --name=<consumer's credential name>`, its
    /// errors piped.
    fn command(&self, verb: &str, consumer: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.systemd_creds);
        command
            .arg(verb)
            .arg(format!("--name={}", Self::name(consumer)))
            .stderr(Stdio::piped());
        command
    }

    fn cannot_run(&self, e: &std::io::Error) -> String {
        format!("cannot run {}: {e}", self.systemd_creds.display())
    }

    /// Deletes `consumer`'s copy (if any).
    pub fn remove(&self, consumer: &str) -> Result<(), CacheError> {
        let path = self.path(consumer);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

use std::os::unix::fs::DirBuilderExt as _;

/// Waits for `systemd-creds`; its last error line when it failed.
async fn finish(child: tokio::process::Child) -> Result<(), String> {
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(stderr_line(&output.stderr, output.status))
    }
}

/// The last line `systemd-creds` printed, or its exit status.
fn stderr_line(stderr: &[u8], status: std::process::ExitStatus) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| format!("systemd-creds exited with {status}"))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The kind of JSON error, without the position or text (which could
    /// point into a value).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}
