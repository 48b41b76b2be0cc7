//! The client's configuration: `client.toml`, `LOCKET_*` variables and
//! flags, in increasing precedence.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Keys that `LOCKET_<KEY>` environment variables may set. `LOCKET_SERVER`
/// may hold several URLs separated by commas.
pub const ENV_KEYS: &[&str] = &[
    "server",
    "name",
    "key_file",
    "server_fingerprint",
    "server_fingerprints",
    "bind",
    "timeout",
    "ca_file",
    "server_order",
    "known_servers_file",
    "insecure_unpinned",
];

/// How to pick among several servers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ServerOrder {
    /// Always try the first server first (a primary and its standbys).
    #[default]
    InOrder,
    /// Spread clients across servers (a pool of equals).
    Random,
}

/// Every setting optional, so that each layer may supply a part.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct ClientLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_order: Option<ServerOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fingerprints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde",
        default
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_servers_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_unpinned: Option<bool>,
}

impl ClientLayer {
    /// The servers this layer names (`servers`, or `server` split at commas).
    fn server_list(&self) -> Result<Option<Vec<String>>, ConfigError> {
        one_or_many(&self.server, &self.servers, "server", "servers")
    }

    /// The pins this layer names (`server_fingerprints`, or
    /// `server_fingerprint` split at commas).
    fn pin_list(&self) -> Result<Option<Vec<String>>, ConfigError> {
        one_or_many(
            &self.server_fingerprint,
            &self.server_fingerprints,
            "server_fingerprint",
            "server_fingerprints",
        )
    }

    /// `self`, with each unset key taken from `lower`.
    pub fn over(self, lower: ClientLayer) -> Result<ClientLayer, ConfigError> {
        let servers = match self.server_list()? {
            Some(list) => Some(list),
            None => lower.server_list()?,
        };
        let pins = match self.pin_list()? {
            Some(list) => Some(list),
            None => lower.pin_list()?,
        };
        Ok(ClientLayer {
            server: None,
            servers,
            server_order: self.server_order.or(lower.server_order),
            name: self.name.or(lower.name),
            key_file: self.key_file.or(lower.key_file),
            server_fingerprint: None,
            server_fingerprints: pins,
            bind: self.bind.or(lower.bind),
            timeout: self.timeout.or(lower.timeout),
            ca_file: self.ca_file.or(lower.ca_file),
            known_servers_file: self.known_servers_file.or(lower.known_servers_file),
            insecure_unpinned: self.insecure_unpinned.or(lower.insecure_unpinned),
        })
    }
}

/// A list given either as one string, comma-separated (`one`: how a flag or
/// a `LOCKET_*` variable carries it), or as a list (`many`), never both.
fn one_or_many(
    one: &Option<String>,
    many: &Option<Vec<String>>,
    one_key: &str,
    many_key: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    match (one, many) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "set `{one_key}` or `{many_key}`, not both"
        ))),
        (Some(one), None) => Ok(Some(
            one.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )),
        (None, Some(list)) => Ok(Some(list.clone())),
        (None, None) => Ok(None),
    }
}

/// A complete, validated client configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URLs, e.g. `http://127.0.0.1:7410`, tried per `server_order`.
    pub servers: Vec<String>,
    /// The order in which `servers` are tried.
    pub server_order: ServerOrder,
    /// This client's registered name.
    pub name: String,
    /// The ed25519 private key that signs requests.
    pub key_file: PathBuf,
    /// `sha256:<hex>`: every server must present this key (replicas share
    /// the key file). Without it, each server's key must be in
    /// `known_servers_file`, or `insecure_unpinned` must be set.
    pub server_fingerprint: Option<String>,
    /// More pinned keys, trusted like `server_fingerprint`: during a server
    /// key rotation, the current and the next (`server_fingerprints =
    /// [current, next]` in the file; the first becomes
    /// `server_fingerprint`).
    pub server_fingerprints: Vec<String>,
    /// Fingerprints recorded per server URL, like ssh's `known_hosts`:
    /// written only on explicit first use (`trust_on_first_use`). Default:
    /// `known_servers` beside the key file.
    pub known_servers_file: PathBuf,
    /// Record the key of a server not yet in `known_servers_file` (the
    /// `--trust-on-first-use` flag; never a config key, so it is a choice
    /// made once, by hand).
    pub trust_on_first_use: bool,
    /// Accept any server key. For throwaway setups only: warned on every run.
    pub insecure_unpinned: bool,
    /// Local source address for connections.
    pub bind: Option<IpAddr>,
    /// Overall timeout of one fetch, across every server and retry.
    pub timeout: Duration,
    /// CA certificates (PEM) to trust for `https://` servers instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ClientConfig {
    /// A configuration for one server, with defaults for the rest.
    pub fn single(
        server: impl Into<String>,
        name: impl Into<String>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            servers: vec![server.into()],
            server_order: ServerOrder::InOrder,
            name: name.into(),
            key_file: key_file.into(),
            server_fingerprint: None,
            server_fingerprints: Vec::new(),
            known_servers_file: PathBuf::from("known_servers"),
            trust_on_first_use: false,
            insecure_unpinned: false,
            bind: None,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }

    /// Layers file (if any) < environment < `flags`, resolves paths from the
    /// file against the file's folder and checks that nothing is missing.
    pub fn load(file: Option<&Path>, flags: &ClientLayer) -> Result<Self, ConfigError> {
        let mut from_file = ClientLayer::default();
        if let Some(path) = file {
            super::check_readable(path)?;
            let text = super::read_toml(path)?;
            from_file = Figment::from(Toml::string(&text))
                .extract()
                .map_err(|e| super::describe(e, Some(&text), Some(path)))?;
            // Paths named in the config file are relative to its folder;
            // from the environment or a flag, to the working directory.
            let base = super::base_dir(Some(path));
            for p in [
                from_file.key_file.as_mut(),
                from_file.ca_file.as_mut(),
                from_file.known_servers_file.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                super::resolve(&base, p);
            }
        }
        let from_env: ClientLayer = Figment::from(Env::prefixed("LOCKET_").only(ENV_KEYS))
            .extract()
            .map_err(|e| super::describe(e, None, None))?;
        let layer = flags.clone().over(from_env.over(from_file)?)?;
        let missing = |key: &str, flag: &str| {
            ConfigError::Invalid(format!(
                "no `{key}` given: set it in the config file, as LOCKET_{} or with {flag}",
                key.to_uppercase()
            ))
        };
        let servers: Vec<String> = layer
            .servers
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("server", "--server"))?
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect();
        for server in &servers {
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "server {server:?} must start with http:// or https://"
                )));
            }
        }
        let name = layer.name.ok_or_else(|| missing("name", "--name"))?;
        if !crate::protocol::valid_client_name(&name) {
            return Err(ConfigError::Invalid(format!(
                "name {name:?} is invalid: use 1-64 characters of A-Za-z0-9._-"
            )));
        }
        let key_file = layer.key_file.ok_or_else(|| missing("key_file", "--key"))?;
        let mut pins: Vec<String> = layer.server_fingerprints.unwrap_or_default();
        for fp in &mut pins {
            let hex = fp.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "server_fingerprint {fp:?} must be sha256:<64 hex digits>, as printed by `locket fingerprint`"
                )));
            }
            *fp = fp.to_ascii_lowercase();
        }
        let server_fingerprint = (!pins.is_empty()).then(|| pins.remove(0));
        if let Some(ca) = &layer.ca_file {
            super::check_readable(ca)?;
        }
        let known_servers_file = layer.known_servers_file.unwrap_or_else(|| {
            key_file
                .parent()
                .unwrap_or(Path::new(""))
                .join("known_servers")
        });
        Ok(Self {
            servers,
            server_order: layer.server_order.unwrap_or_default(),
            name,
            key_file,
            server_fingerprint,
            server_fingerprints: pins,
            known_servers_file,
            trust_on_first_use: false,
            insecure_unpinned: layer.insecure_unpinned.unwrap_or(false),
            bind: layer.bind,
            timeout: layer.timeout.unwrap_or(Duration::from_secs(10)),
            ca_file: layer.ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    fn load(file: &str, flags: ClientLayer) -> Result<ClientConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            format!("server = \"http://127.0.0.1:7410\"\nname = \"app\"\nkey_file = \"k\"\n{file}"),
        )
        .unwrap();
        ClientConfig::load(Some(&path), &flags)
    }

    /// A rotation's two pins: a list in the file, or comma-separated in
    /// `server_fingerprint` (as the flag and LOCKET_SERVER_FINGERPRINT give
    /// it); a flag replaces the file's pins whole.
    #[test]
    fn pins_come_as_a_list_or_comma_separated() {
        let b = B.to_ascii_lowercase();
        let c = load(
            &format!("server_fingerprints = [{A:?}, {B:?}]"),
            ClientLayer::default(),
        )
        .unwrap();
        assert_eq!(
            (
                c.server_fingerprint.as_deref(),
                c.server_fingerprints.clone()
            ),
            (Some(A), vec![b.clone()])
        );
        let c = load(
            &format!("server_fingerprint = \"{A},{B}\""),
            ClientLayer::default(),
        )
        .unwrap();
        assert_eq!(
            (
                c.server_fingerprint.as_deref(),
                c.server_fingerprints.clone()
            ),
            (Some(A), vec![b.clone()])
        );
        let flags = ClientLayer {
            server_fingerprint: Some(B.into()),
            ..ClientLayer::default()
        };
        let c = load(&format!("server_fingerprints = [{A:?}]"), flags).unwrap();
        assert_eq!(
            (c.server_fingerprint, c.server_fingerprints),
            (Some(b), vec![])
        );
        let both = load(
            &format!("server_fingerprint = {A:?}\nserver_fingerprints = [{B:?}]"),
            ClientLayer::default(),
        );
        assert!(both.unwrap_err().to_string().contains("not both"));
        let bad = load(
            "server_fingerprints = [\"sha256:12\"]",
            ClientLayer::default(),
        );
        assert!(bad.unwrap_err().to_string().contains("sha256:12"));
    }
}
