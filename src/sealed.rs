//! Copies sealed to this host with `systemd-creds`: a TPM2 where present,
//! else the host key in /var/lib/systemd/credential.secret. The client's
//! boot cache and the server's last-good set both keep their copies here.
//!
//! Why `systemd-creds` and not a key of our own: the point is that a copy
//! is useless off this machine (a disk image, a backup), which needs a key
//! the machine keeps outside the file system image (TPM2) or at least
//! outside locket's own state; systemd already manages exactly that key,
//! and its format binds the credential's name, so one copy cannot be passed
//! off as another.
//!
//! The plain text never touches the disk: it goes to `systemd-creds` on a
//! pipe and comes back on a pipe, into zeroizing memory. A copy is replaced
//! atomically, mode 0600 in a 0700 folder, under a temporary name of this
//! process's own (two processes storing one copy never remove each other's
//! half-written file).

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// Why a sealed copy could not be written or read. Never a value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("there is no sealed copy ({path})")]
    Missing { path: PathBuf },
    #[error(
        "cannot decrypt the sealed copy {path}: {detail}; it is kept as it is (a TPM2 or host key that changed, or a damaged file: delete it if it stays so)"
    )]
    Decrypt { path: PathBuf, detail: String },
    #[error("cannot encrypt the sealed copy into {path}: {detail}")]
    Encrypt { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where sealed copies live and how they are encrypted.
#[derive(Debug, Clone)]
pub struct Sealer {
    pub dir: PathBuf,
    /// The `systemd-creds` program.
    pub systemd_creds: PathBuf,
    /// `--with-key=`: auto, host, tpm2 or host+tpm2.
    pub key: String,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Sealer {
    /// The file of the copy called `file` (e.g. `web.cred`).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Replaces the copy `file`, sealed under the credential `name` (bound
    /// into the encryption), with `plain`.
    pub async fn store(&self, name: &str, file: &str, plain: &[u8]) -> Result<(), SealError> {
        let path = self.path(file);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            return Err(io(&self.dir)(e));
        }
        let tmp = self.dir.join(format!(".{file}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = self.run_encrypt(name, &path, plain, &tmp).await;
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
        name: &str,
        path: &Path,
        plain: &[u8],
        out: &Path,
    ) -> Result<(), SealError> {
        let fail = |detail: String| SealError::Encrypt {
            path: path.to_owned(),
            detail,
        };
        let mut child = self
            .command("encrypt", name)
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

    /// The plain text of the copy `file`, sealed under `name`.
    pub async fn load(&self, name: &str, file: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let path = self.path(file);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len() as usize,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealError::Missing { path });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let fail = |detail: String| SealError::Decrypt {
            path: path.clone(),
            detail,
        };
        let mut child = self
            .command("decrypt", name)
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
        Ok(plain)
    }

    /// Deletes the copy `file` (if any).
    pub fn remove(&self, file: &str) -> Result<(), SealError> {
        let path = self.path(file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// `systemd-creds VERB --name=NAME`, its errors piped.
    fn command(&self, verb: &str, name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.systemd_creds);
        command
            .arg(verb)
            .arg(format!("--name={name}"))
            .stderr(Stdio::piped());
        command
    }

    fn cannot_run(&self, e: &std::io::Error) -> String {
        format!("cannot run {}: {e}", self.systemd_creds.display())
    }
}

/// Waits for `systemd-creds`; its last error line when it failed.
async fn finish(child: tokio::process::Child) -> Result<(), String> {
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr)
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| format!("systemd-creds exited with {}", output.status)))
    }
}

/// The kind of a JSON error, without the position or text (which could
/// point into a value).
pub(crate) fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated",
    }
}
