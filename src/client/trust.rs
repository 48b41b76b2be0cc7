//! Which server keys the client trusts. A client never sends a request to a
//! server whose key it has not pinned: the key's fingerprint must equal
//! `server_fingerprint`, or the one recorded for that server URL in the
//! known-servers file (like ssh's `known_hosts`, written only on explicit
//! first use with `--trust-on-first-use`). Running unpinned takes an
//! explicit `insecure_unpinned`, and the CLI warns on every run.
//!
//! Only the public `GET /v1/key` reaches an untrusted server: nothing
//! signed, and no name of a secret.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::client::ClientConfig;

/// A known-servers file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KnownServersError {
    #[error("cannot read the known-servers file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path}:{line}: expected `<server URL> sha256:<64 hex digits>`; fix or delete that line"
    )]
    Malformed { path: PathBuf, line: usize },
    #[error("cannot record the server key in {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Why a server's key is not trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `server_fingerprint` names another key.
    Pin { expected: String },
    /// The known-servers file holds another key for this server.
    Known { stored: String, file: PathBuf },
    /// Nothing pins this server.
    Unpinned { file: PathBuf },
}

/// What decides whether a server key is trusted.
#[derive(Debug)]
pub struct Trust {
    /// `server_fingerprint` and `server_fingerprints`: any of them.
    pins: Vec<String>,
    file: PathBuf,
    known: Mutex<BTreeMap<String, String>>,
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
            Some(stored) if stored == fingerprint => Ok(Ok(())),
            Some(stored) => Ok(Err(Refusal::Known {
                stored: stored.clone(),
                file: self.file.clone(),
            })),
            None if self.record_new => {
                append(&self.file, url, fingerprint)?;
                known.insert(url.to_owned(), fingerprint.to_owned());
                eprintln!(
                    "locket-client: trusting the server at {url} on first use: recorded {fingerprint} in {}",
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
fn read(path: &Path) -> Result<BTreeMap<String, String>, KnownServersError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(KnownServersError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut known = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some(url), Some(fp), None) if valid_fingerprint(fp) => {
                known.insert(
                    url.trim_end_matches('/').to_owned(),
                    fp.to_ascii_lowercase(),
                );
            }
            _ => {
                return Err(KnownServersError::Malformed {
                    path: path.to_owned(),
                    line: index + 1,
                });
            }
        }
    }
    Ok(known)
}

/// Appends one entry (the file is created with mode 0600).
fn append(path: &Path, url: &str, fingerprint: &str) -> Result<(), KnownServersError> {
    let write = || -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(format!("{url} {fingerprint}\n").as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| KnownServersError::Write {
        path: path.to_owned(),
        source,
    })
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
