//! The client's configuration: `client.toml`, `LOCKET_*` variables and
//! flags, in increasing precedence.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Keys that `LOCKET_<KEY>` environment variables may set.
pub const ENV_KEYS: &[&str] = &[
    "server",
    "name",
    "key_file",
    "server_fingerprint",
    "bind",
    "timeout",
];

/// Every setting optional, so that each layer may supply a part.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde",
        default
    )]
    pub timeout: Option<Duration>,
}

impl ClientLayer {
    /// `self`, with each unset key taken from `lower`.
    pub fn over(self, lower: ClientLayer) -> ClientLayer {
        ClientLayer {
            server: self.server.or(lower.server),
            name: self.name.or(lower.name),
            key_file: self.key_file.or(lower.key_file),
            server_fingerprint: self.server_fingerprint.or(lower.server_fingerprint),
            bind: self.bind.or(lower.bind),
            timeout: self.timeout.or(lower.timeout),
        }
    }
}

/// A complete, validated client configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:7410`.
    pub server: String,
    pub name: String,
    pub key_file: PathBuf,
    /// `sha256:<hex>`; `None` means unpinned (a warning is printed).
    pub server_fingerprint: Option<String>,
    /// Local source address for connections.
    pub bind: Option<IpAddr>,
    /// Overall timeout of one command's network work.
    pub timeout: Duration,
}

impl ClientConfig {
    /// Layers file (if any) < environment < `flags`, resolves `key_file`
    /// against the file's folder and checks that nothing is missing.
    pub fn load(file: Option<&Path>, flags: &ClientLayer) -> Result<Self, ConfigError> {
        let mut from_file = ClientLayer::default();
        if let Some(path) = file {
            super::check_readable(path)?;
            from_file = Figment::from(Toml::file_exact(path))
                .extract()
                .map_err(Box::new)?;
            // A key file named in the config file is relative to its folder;
            // one from the environment or a flag is relative to the working
            // directory, as a shell user expects.
            if let Some(k) = from_file.key_file.as_mut() {
                super::resolve(&super::base_dir(Some(path)), k);
            }
        }
        let from_env: ClientLayer = Figment::from(Env::prefixed("LOCKET_").only(ENV_KEYS))
            .extract()
            .map_err(Box::new)?;
        let mut layer = flags.clone().over(from_env).over(from_file);
        let missing = |key: &str, flag: &str| {
            ConfigError::Invalid(format!(
                "no `{key}` given: set it in the config file, as LOCKET_{} or with {flag}",
                key.to_uppercase()
            ))
        };
        let server = layer
            .server
            .take()
            .ok_or_else(|| missing("server", "--server"))?;
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "server {server:?} must start with http:// or https://"
            )));
        }
        let name = layer.name.take().ok_or_else(|| missing("name", "--name"))?;
        if !crate::protocol::valid_client_name(&name) {
            return Err(ConfigError::Invalid(format!(
                "name {name:?} is invalid: use 1-64 characters of A-Za-z0-9._-"
            )));
        }
        let key_file = layer
            .key_file
            .take()
            .ok_or_else(|| missing("key_file", "--key"))?;
        if let Some(fp) = &layer.server_fingerprint {
            let hex = fp.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "server_fingerprint {fp:?} must be sha256:<64 hex digits>, as printed by `locket fingerprint`"
                )));
            }
        }
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            name,
            key_file,
            server_fingerprint: layer.server_fingerprint.map(|f| f.to_ascii_lowercase()),
            bind: layer.bind,
            timeout: layer.timeout.unwrap_or(Duration::from_secs(10)),
        })
    }
}
