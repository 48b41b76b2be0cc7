//! Which server keys the client trusts. A client never sends a request to a
//! server whose key it has not pinned: the key's fingerprint must equal
//! `server_fingerprint`, or the one recorded for that server URL in the
//! known-servers file (like ssh's `known_hosts`, written only on explicit
//! first use with `--trust-on-first-use`). Running unpinned takes an
//! explicit `insecure_unpinned`, and the CLI warns on every run.
//!
//! Only the public `GET /v1/key` reaches an untrusted server: nothing
//! signed, and no name of a secret.
//!
//! The known-servers file decides which key is trusted, so it is held to
//! the rules of a key file: owned by root or the user running the client,
//! writable by neither group nor others, or refused by name. A server named
//! with two keys is refused too, unless one line names both (a rotation:
//! `<url> sha256:<current> sha256:<next>`). Recording on first use opens
//! the file without following a link, takes a lock, and reads it again
//! under the lock, so two first uses at once record one key, never two.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::client::ClientConfig;

/// A known-servers file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum KnownServersError {
    #[error("cannot read the known-servers file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path}:{line}: expected `<server URL> sha256:<64 hex digits>`; fix or delete that line"
    )]
    Malformed { path: PathBuf, line: usize },
    #[error("cannot record the server key in {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the known-servers file {path} is not trusted: {why}; it decides which server keys are trusted, so it must be owned by root or you and writable by no one else"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error(
        "{path}: lines {first} and {second} name different keys for {url}; keep the right one (check it with `locket fingerprint` on the server), or, during a key rotation, name both on one line: `{url} sha256:<current> sha256:<next>`"
    )]
    TwoKeys {
        path: PathBuf,
        url: String,
        first: usize,
        second: usize,
    },
}

/// The keys recorded for each server URL.
type Known = BTreeMap<String, Vec<String>>;

/// Why a server's key is not trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `server_fingerprint` names another key.
    Pin {
        /// The pinned fingerprint(s).
        expected: String,
    },
    /// The known-servers file holds another key for this server.
    Known {
        /// The fingerprint recorded for this server.
        stored: String,
        /// The known-servers file that records it.
        file: PathBuf,
    },
    /// Nothing pins this server.
    Unpinned {
        /// Where `--trust-on-first-use` would record the key.
        file: PathBuf,
    },
}

/// What decides whether a server key is trusted.
#[derive(Debug)]
pub struct Trust {
    /// `server_fingerprint` and `server_fingerprints`: any of them.
    pins: Vec<String>,
    file: PathBuf,
    known: Mutex<Known>,
    record_new: bool,
    insecure: bool,
}

impl Trust {
    /// The trust of `config`, reading its known-servers file (a missing
    /// file holds no entry).
    pub fn from_config(config: &ClientConfig) -> Result<Self, KnownServersError> {
        let pins: Vec<String> = config
            .server_fingerprint
            .iter()
            .chain(&config.server_fingerprints)
            .cloned()
            .collect();
        let known = if pins.is_empty() {
            read(&config.known_servers_file)?
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            pins,
            file: config.known_servers_file.clone(),
            known: Mutex::new(known),
            record_new: config.trust_on_first_use,
            insecure: config.insecure_unpinned,
        })
    }

    /// Whether `fingerprint` is one of the explicit pins
    /// (`server_fingerprint`, `server_fingerprints`).
    pub fn pinned(&self, fingerprint: &str) -> bool {
        self.pins.iter().any(|p| p == fingerprint)
    }

    /// Whether `fingerprint`, offered by the server at `url`, may be used.
    /// On first use with `record_new`, records it.
    pub fn check(
        &self,
        url: &str,
        fingerprint: &str,
    ) -> Result<Result<(), Refusal>, KnownServersError> {
        if !self.pins.is_empty() {
            return Ok(if self.pins.iter().any(|p| p == fingerprint) {
                Ok(())
            } else {
                Err(Refusal::Pin {
                    expected: self.pins.join(" or "),
                })
            });
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.get(url) {
            Some(stored) if stored.iter().any(|s| s == fingerprint) => Ok(Ok(())),
            Some(stored) => Ok(Err(Refusal::Known {
                stored: stored.join(" or "),
                file: self.file.clone(),
            })),
            None if self.record_new => {
                // Another first use may have recorded a key meanwhile: what
                // the file says under the lock decides.
                if let Some(stored) = record(&self.file, url, fingerprint)? {
                    let refusal =
                        (!stored.iter().any(|s| s == fingerprint)).then(|| Refusal::Known {
                            stored: stored.join(" or "),
                            file: self.file.clone(),
                        });
                    known.insert(url.to_owned(), stored);
                    return Ok(refusal.map_or(Ok(()), Err));
                }
                known.insert(url.to_owned(), vec![fingerprint.to_owned()]);
                tracing::info!(
                    "trusting the server at {url} on first use: recorded {fingerprint} in {}",
                    self.file.display()
                );
                Ok(Ok(()))
            }
            None if self.insecure => Ok(Ok(())),
            None => Ok(Err(Refusal::Unpinned {
                file: self.file.clone(),
            })),
        }
    }
}

fn valid_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads `URL FINGERPRINT` lines; `#` starts a comment line.
/// Refuses a known-servers file that someone else could have written.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), KnownServersError> {
    let me = nix::unistd::getuid().as_raw();
    let why = if !meta.is_file() {
        Some("it is not a regular file".to_owned())
    } else if meta.uid() != 0 && meta.uid() != me {
        Some(format!(
            "it is owned by uid {}, neither root nor you",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "group or others may write it (mode {:o}; chmod go-w)",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(KnownServersError::Untrusted {
            path: path.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// The known-servers file at `path` (none: empty), checked.
fn read(path: &Path) -> Result<Known, KnownServersError> {
    let read_err = |source| KnownServersError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Known::new()),
        Err(source) => return Err(read_err(source)),
    };
    check_owner(path, &file.metadata().map_err(read_err)?)?;
    let mut text = String::new();
    file.take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Known, KnownServersError> {
    let mut known = Known::new();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let url = fields.next().map(|u| u.trim_end_matches('/').to_owned());
        let fingerprints: Vec<String> = fields.map(str::to_ascii_lowercase).collect();
        let Some(url) = url.filter(|_| {
            (1..=2).contains(&fingerprints.len())
                && fingerprints.iter().all(|f| valid_fingerprint(f))
        }) else {
            return Err(KnownServersError::Malformed {
                path: path.to_owned(),
                line: index + 1,
            });
        };
        match known.get(&url) {
            Some(stored) if *stored == fingerprints => {}
            Some(_) => {
                let first = first_line.get(&url).copied().unwrap_or_default();
                return Err(KnownServersError::TwoKeys {
                    path: path.to_owned(),
                    url,
                    first,
                    second: index + 1,
                });
            }
            None => {
                first_line.insert(url.clone(), index + 1);
                known.insert(url, fingerprints);
            }
        }
    }
    Ok(known)
}

/// Records `fingerprint` for `url`, unless the file (read again under an
/// exclusive lock) already names keys for it: then those are returned and
/// nothing is written. The file is never reached through a link.
fn record(
    path: &Path,
    url: &str,
    fingerprint: &str,
) -> Result<Option<Vec<String>>, KnownServersError> {
    let write_err = |source| KnownServersError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(write_err)?;
    check_owner(path, &file.metadata().map_err(write_err)?)?;
    let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| write_err(e.into()))?;
    file.rewind().map_err(write_err)?;
    let mut text = String::new();
    (&mut *file)
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(write_err)?;
    if let Some(stored) = parse(path, &text)?.remove(url) {
        return Ok(Some(stored));
    }
    file.write_all(format!("{url} {fingerprint}\n").as_bytes())
        .map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn config(dir: &Path) -> ClientConfig {
        let mut c = ClientConfig::single("http://s:1", "c", dir.join("key"));
        c.known_servers_file = dir.join("known_servers");
        c
    }

    #[test]
    fn unpinned_is_refused_unless_recorded_on_first_use_or_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        let file = c.known_servers_file.clone();
        let refused = Trust::from_config(&c)
            .unwrap()
            .check("http://s:1", A)
            .unwrap();
        assert_eq!(refused, Err(Refusal::Unpinned { file: file.clone() }));
        assert!(
            !file.exists(),
            "nothing is written without --trust-on-first-use"
        );

        c.insecure_unpinned = true;
        assert_eq!(
            Trust::from_config(&c)
                .unwrap()
                .check("http://s:1", A)
                .unwrap(),
            Ok(())
        );
        assert!(!file.exists());

        c.insecure_unpinned = false;
        c.trust_on_first_use = true;
        assert_eq!(
            Trust::from_config(&c)
                .unwrap()
                .check("http://s:1", A)
                .unwrap(),
            Ok(())
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Later runs: the recorded key is trusted, another is refused, with
        // or without --trust-on-first-use.
        for tofu in [false, true] {
            c.trust_on_first_use = tofu;
            let trust = Trust::from_config(&c).unwrap();
            assert_eq!(trust.check("http://s:1", A).unwrap(), Ok(()));
            assert_eq!(
                trust.check("http://s:1", B).unwrap(),
                Err(Refusal::Known {
                    stored: A.into(),
                    file: file.clone()
                })
            );
        }
    }

    #[test]
    fn a_pin_decides_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        std::fs::write(&c.known_servers_file, format!("http://s:1 {B}\n")).unwrap();
        c.server_fingerprint = Some(A.into());
        let trust = Trust::from_config(&c).unwrap();
        assert_eq!(trust.check("http://s:1", A).unwrap(), Ok(()));
        assert_eq!(
            trust.check("http://s:1", B).unwrap(),
            Err(Refusal::Pin { expected: A.into() })
        );
    }

    /// The file decides which keys are trusted: one someone else owns or
    /// may write is refused by name; recording never follows a link; a
    /// server with two keys is refused unless one line names both.
    #[test]
    fn the_file_is_held_to_the_rules_of_a_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        let file = c.known_servers_file.clone();
        std::fs::write(&file, format!("http://s:1 {A}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Trust::from_config(&c).unwrap_err().to_string();
        assert!(
            e.contains("chmod go-w") && e.contains("known_servers"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown (as root, as CI runs)");
        let e = Trust::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::fs::remove_file(&file).unwrap();

        // Two keys for one server: refused, naming both lines.
        std::fs::write(&file, format!("http://s:1 {A}\n# x\nhttp://s:1/ {B}\n")).unwrap();
        let e = Trust::from_config(&c).unwrap_err().to_string();
        assert!(
            e.contains("lines 1 and 3") && e.contains("http://s:1"),
            "{e}"
        );
        // One line with both: a rotation, both trusted.
        std::fs::write(&file, format!("http://s:1 {A} {B}\n")).unwrap();
        let trust = Trust::from_config(&c).unwrap();
        assert_eq!(trust.check("http://s:1", A).unwrap(), Ok(()));
        assert_eq!(trust.check("http://s:1", B).unwrap(), Ok(()));
        std::fs::remove_file(&file).unwrap();

        // Recording on first use never writes through a link.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "# untouched\n").unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        c.trust_on_first_use = true;
        // Read through the link (a file placed in /etc may be one) ...
        let trust = Trust::from_config(&c).unwrap();
        // ... but never written through it.
        let e = trust.check("http://s:1", A).unwrap_err();
        assert!(matches!(e, KnownServersError::Write { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "# untouched\n");
    }

    /// Two first uses at once, offered different keys: both started
    /// before either recorded (each read the file empty), the first records
    /// its key, and the second, under the lock, finds it and is refused;
    /// the file names one key.
    #[test]
    fn two_first_uses_at_once_record_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.trust_on_first_use = true;
        let first = Trust::from_config(&c).unwrap();
        let second = Trust::from_config(&c).unwrap();
        assert_eq!(first.check("http://s:1", A).unwrap(), Ok(()));
        assert_eq!(
            second.check("http://s:1", B).unwrap(),
            Err(Refusal::Known {
                stored: A.into(),
                file: c.known_servers_file.clone()
            })
        );
        let text = std::fs::read_to_string(&c.known_servers_file).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(
            &c.known_servers_file,
            format!("# comment\nhttp://s:1 {A}\nhttp://t:1 sha256:xyz\n"),
        )
        .unwrap();
        let e = Trust::from_config(&c).unwrap_err().to_string();
        assert!(
            e.ends_with(
                ":3: expected `<server URL> sha256:<64 hex digits>`; fix or delete that line"
            ),
            "{e}"
        );
    }
}
