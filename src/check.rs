//! `locket check`: what a server config would serve, found before it
//! serves: the config parsed and validated, the server key, every source
//! loaded once, and what each client could read. The binary prints the
//! [`Report`]; tests and tools can read its fields.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::config::server::{Checked, ServerConfig};
use crate::keys::{KeyError, ServerKey};
use crate::source::{self, SourceError, combine::Duplicate};

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config itself (syntax, keys, values, registry).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server key file exists but cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A source failed to load.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// `fingerprint --next` for a config without a next key.
    #[error("{} sets no next_key_file: add one to stage the next key of a rotation", .0.display())]
    NoNextKey(PathBuf),
}

impl CheckError {
    /// 2 for a config the operator must fix, 1 for a source that failed
    /// now (it may load later), as `locket check` has always exited.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckError::Config(_) | CheckError::Key(_) | CheckError::NoNextKey(_) => 2,
            CheckError::Source(_) => 1,
        }
    }

    /// The command's own stderr, for a failed `command` source: shown at a
    /// terminal, never logged by the server.
    pub fn command_stderr(&self) -> Option<&str> {
        match self {
            CheckError::Source(e) => e.stderr.as_ref().map(|s| s.as_str()),
            _ => None,
        }
    }
}

/// The server key, as the check found it.
#[derive(Debug)]
pub enum KeyState {
    /// Its fingerprint and size.
    Present {
        /// `sha256:<hex>` of the public key, as clients pin it.
        fingerprint: String,
        /// The RSA modulus size.
        bits: usize,
    },
    /// Not created yet; `serve` or `fingerprint` will create it.
    Missing(PathBuf),
}

/// One client, summarised.
#[derive(Debug)]
pub struct ClientSummary {
    /// The registered name.
    pub name: String,
    /// How many ed25519 keys it may sign with.
    pub keys: usize,
    /// How many networks it may call from.
    pub networks: usize,
    /// How many of the loaded secrets it may read.
    pub readable: usize,
}

/// What `locket check` found.
#[derive(Debug)]
pub struct Report {
    /// The config file checked.
    pub path: PathBuf,
    /// The server key.
    pub key: KeyState,
    /// How many `[[sources]]` loaded.
    pub sources: usize,
    /// How many secrets they hold together.
    pub secrets: usize,
    /// Names defined by more than one source.
    pub duplicates: Vec<Duplicate>,
    /// In config order.
    pub clients: Vec<ClientSummary>,
}

/// `locket fingerprint`: the fingerprint of the server key of the config at
/// `path` (with `next`, of its next key), creating the key file if absent.
pub fn fingerprint(path: &Path, next: bool) -> Result<String, CheckError> {
    let config = ServerConfig::load(path)?.config;
    let (file, what) = if next {
        let file = config
            .next_key_file
            .as_ref()
            .ok_or_else(|| CheckError::NoNextKey(path.to_owned()))?;
        (file, "next server key")
    } else {
        (&config.key_file, "server key")
    };
    let key = ServerKey::load_or_create_logged(file, config.key_bits, what)?;
    Ok(key.fingerprint().to_owned())
}

/// Checks the config at `path`, loading every source once.
pub async fn check(path: &Path) -> Result<Report, CheckError> {
    let Checked { config, registry } = ServerConfig::load(path)?;
    let key = if config.key_file.exists() {
        let key = ServerKey::load(&config.key_file)?;
        KeyState::Present {
            fingerprint: key.fingerprint().to_owned(),
            bits: key.bits(),
        }
    } else {
        KeyState::Missing(config.key_file.clone())
    };
    let (secrets, duplicates) = source::load_all(&config.sources).await?;
    let clients = config
        .clients
        .keys()
        .filter_map(|name| registry.get(name))
        .map(|client| ClientSummary {
            name: client.name.clone(),
            keys: client.keys.len(),
            networks: client.networks.len(),
            readable: client.readable(&secrets).len(),
        })
        .collect();
    Ok(Report {
        path: path.to_owned(),
        key,
        sources: config.sources.len(),
        secrets: secrets.len(),
        duplicates,
        clients,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config: {}", self.path.display())?;
        match &self.key {
            KeyState::Present { fingerprint, bits } => {
                writeln!(f, "server key: {fingerprint} ({bits} bits)")?
            }
            KeyState::Missing(file) => writeln!(
                f,
                "server key: {} does not exist yet; `serve` or `fingerprint` will create it",
                file.display()
            )?,
        }
        writeln!(f, "sources: {}", self.sources)?;
        writeln!(f, "secrets: {}", self.secrets)?;
        for d in &self.duplicates {
            let sources: Vec<String> = d.sources.iter().map(|i| format!("#{i}")).collect();
            writeln!(
                f,
                "  {} is defined by sources {}; the value of {} is served (later sources win)",
                d.name,
                sources.join(", "),
                sources.last().map(String::as_str).unwrap_or("-")
            )?;
        }
        writeln!(f, "clients: {}", self.clients.len())?;
        for c in &self.clients {
            writeln!(
                f,
                "  {}: {} key(s), {} network(s), can read {} of {} secrets",
                c.name, c.keys, c.networks, c.readable, self.secrets
            )?;
        }
        writeln!(f, "OK")
    }
}

/// What `locket check --offline` found: the config and its registry,
/// checked without reading anything that exists only at run time (the
/// server key, credentials, token files, the sources). It catches what a
/// build can: syntax, unknown keys, bad durations, networks, keys written
/// in the config, grant globs, and settings that contradict each other.
/// The NixOS module runs it on the generated server.toml at build time.
#[derive(Debug)]
pub struct OfflineReport {
    /// The config file checked.
    pub path: PathBuf,
    /// How many clients it registers.
    pub clients: usize,
    /// How many `[[sources]]` it lists (not loaded).
    pub sources: usize,
}

/// `locket check --offline`: see [`OfflineReport`].
pub fn check_offline(path: &Path) -> Result<OfflineReport, CheckError> {
    let Checked { config, registry } = ServerConfig::load(path)?;
    Ok(OfflineReport {
        path: path.to_owned(),
        clients: registry.len(),
        sources: config.sources.len(),
    })
}

impl fmt::Display for OfflineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config: {}", self.path.display())?;
        writeln!(f, "clients: {}", self.clients)?;
        writeln!(
            f,
            "sources: {} (not loaded: --offline reads no key, credential or source)",
            self.sources
        )?;
        writeln!(f, "OK")
    }
}
