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
//! pipe and comes back on a pipe, into zeroizing memory.
//!
//! A process without root (the server under `DynamicUser=`) cannot use
//! the host key itself; systemd hands it a key instead, decrypted by PID 1
//! from a credential that `systemd-creds` sealed (`LoadCredentialEncrypted=`,
//! made once by `locket seal-key`). With `key_file` set, a copy is sealed
//! with that key: AES-256-GCM under a key derived (HKDF-SHA256) from it
//! and a random salt per copy, the credential name bound as associated
//! data. The host's systemd-creds key still guards everything. A copy is
//! replaced atomically by the one writer (`crate::fsutil::replace`), mode
//! 0600 in a 0700 folder: two processes storing one copy never remove each
//! other's half-written file.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// Why a sealed copy could not be written or read. Never a value.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
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
pub(crate) struct Sealer {
    pub dir: PathBuf,
    /// The `systemd-creds` program.
    pub systemd_creds: PathBuf,
    /// `--with-key=`: auto, host, tpm2 or host+tpm2.
    pub key: String,
    /// Seal with the key in this file instead of running systemd-creds
    /// (a key systemd decrypted for a service: `LoadCredentialEncrypted=`).
    pub key_file: Option<PathBuf>,
}

/// The first bytes of a copy sealed with a key file.
const KEY_FILE_MAGIC: &[u8] = b"locket-sealed-v1\n";
const SALT_LEN: usize = 32;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Sealer {
    /// The file of the copy called `file` (e.g. `web.cred`).
    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Replaces the copy `file`, sealed under the credential `name` (bound
    /// into the encryption), with `plain`.
    pub(crate) async fn store(
        &self,
        name: &str,
        file: &str,
        plain: &[u8],
    ) -> Result<(), SealError> {
        let path = self.path(file);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            return Err(io(&self.dir)(e));
        }
        let sealed = match &self.key_file {
            Some(key_file) => Self::encrypt_with_file(key_file, name, &path, plain)?,
            None => self.run_encrypt(name, &path, plain).await?,
        };
        crate::fsutil::replace(&path, &sealed, crate::fsutil::Access::mode(0o600)).map_err(|e| {
            SealError::Io {
                path: e.path,
                source: e.source,
            }
        })
    }

    /// The key in `key_file`: 32 bytes, raw or as 64 hex digits.
    fn file_key(key_file: &Path, path: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
        let _ = path;
        let raw = Zeroizing::new(
            std::fs::read(key_file)
                .map_err(|e| format!("cannot read key_file {}: {e}", key_file.display()))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        if text.len() == 64 && hex::decode_to_slice(text, key.as_mut_slice()).is_ok() {
            return Ok(key);
        }
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
            return Ok(key);
        }
        Err(format!(
            "key_file {} holds neither 32 bytes nor 64 hex digits (make one with `locket seal-key`)",
            key_file.display()
        ))
    }

    /// The AES-256 key of one copy: HKDF-SHA256 of the file's key, the
    /// copy's salt and the credential name.
    fn derive(key: &[u8; 32], salt: &[u8], name: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
        struct Len;
        impl KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let mut out = Zeroizing::new([0u8; 32]);
        let info = [name.as_bytes()];
        Salt::new(HKDF_SHA256, salt)
            .extract(key)
            .expand(&info, Len)
            .and_then(|okm| okm.fill(out.as_mut_slice()))
            .map_err(|_| "key derivation failed".to_string())?;
        Ok(out)
    }

    /// The copy of `plain` sealed with the key in `key_file`: magic, salt,
    /// AES-256-GCM (not secret: it is what goes to disk).
    fn encrypt_with_file(
        key_file: &Path,
        name: &str,
        path: &Path,
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let fail = |detail: String| SealError::Encrypt {
            path: path.to_owned(),
            detail,
        };
        let key = Self::file_key(key_file, path).map_err(fail)?;
        let salt: [u8; SALT_LEN] =
            crate::crypto::random_bytes().map_err(|e| fail(e.to_string()))?;
        let derived = Self::derive(&key, &salt, name).map_err(fail)?;
        let mut sealed: crate::secret::SecretBytes = Zeroizing::new(Vec::with_capacity(
            plain.len() + crate::crypto::AEAD_TAG_LEN,
        ));
        sealed.extend_from_slice(plain);
        crate::crypto::seal(&derived, name.as_bytes(), &mut sealed)
            .map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::with_capacity(KEY_FILE_MAGIC.len() + SALT_LEN + sealed.len());
        out.extend_from_slice(KEY_FILE_MAGIC);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decrypt_with_file(
        key_file: &Path,
        name: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let fail = |detail: String| SealError::Decrypt {
            path: path.to_owned(),
            detail,
        };
        let body = bytes
            .strip_prefix(KEY_FILE_MAGIC)
            .filter(|b| b.len() >= SALT_LEN + crate::crypto::AEAD_TAG_LEN)
            .ok_or_else(|| fail("not a copy sealed with a key file".into()))?;
        let (salt, sealed) = body.split_at(SALT_LEN);
        let key = Self::file_key(key_file, path).map_err(fail)?;
        let derived = Self::derive(&key, salt, name).map_err(fail)?;
        crate::crypto::open(&derived, name.as_bytes(), sealed).map_err(|_| {
            fail("it does not open with key_file (another key, or a damaged file)".into())
        })
    }

    /// `plain` sealed by `systemd-creds`, which reads it from a pipe and
    /// writes the credential to another.
    async fn run_encrypt(
        &self,
        name: &str,
        path: &Path,
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let fail = |detail: String| SealError::Encrypt {
            path: path.to_owned(),
            detail,
        };
        let mut child = self
            .command("encrypt", name)
            .arg(format!("--with-key={}", self.key))
            .arg("-")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| fail(self.cannot_run(&e)))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut sealed = Vec::with_capacity(plain.len() * 2 + 4096);
        let (written, read) = tokio::join!(
            async {
                let written = stdin.write_all(plain).await;
                drop(stdin);
                written
            },
            stdout.read_to_end(&mut sealed)
        );
        finish(child).await.map_err(fail)?;
        written.map_err(|e| fail(e.to_string()))?;
        read.map_err(|e| fail(e.to_string()))?;
        Ok(sealed)
    }

    /// The plain text of the copy `file`, sealed under `name`.
    pub(crate) async fn load(
        &self,
        name: &str,
        file: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let path = self.path(file);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len() as usize,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealError::Missing { path });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if let Some(key_file) = &self.key_file {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            return Self::decrypt_with_file(key_file, name, &path, &bytes);
        }
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
    pub(crate) fn remove(&self, file: &str) -> Result<(), SealError> {
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

/// Makes a new random key (64 hex digits) and seals it with systemd-creds
/// into `out` under the credential name `name`, for a unit's
/// `LoadCredentialEncrypted=<name>:<out>`: PID 1 decrypts it at each start
/// and hands the key to the service, which seals with it (`key_file`). An
/// existing `out` is left alone: copies sealed with it would no longer open.
pub async fn new_key_credential(
    out: &Path,
    name: &str,
    with_key: &str,
    systemd_creds: &Path,
) -> Result<(), SealError> {
    if out.exists() {
        return Err(SealError::Encrypt {
            path: out.to_owned(),
            detail: "it already exists; it is kept (copies sealed with its key would no longer open). Delete it first to make a new key".into(),
        });
    }
    let key = crate::crypto::random_bytes::<32>().map_err(|e| SealError::Encrypt {
        path: out.to_owned(),
        detail: e.to_string(),
    })?;
    let key = Zeroizing::new(key);
    let text = Zeroizing::new(hex::encode(key.as_slice()));
    let sealer = Sealer {
        dir: out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned(),
        systemd_creds: systemd_creds.to_owned(),
        key: with_key.to_owned(),
        key_file: None,
    };
    let file = out
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| SealError::Encrypt {
            path: out.to_owned(),
            detail: "not a file name".into(),
        })?;
    sealer.store(name, file, text.as_bytes()).await
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
