//! `[v1]`: the settings of the original locket's protocol. They live with
//! the rest of the configuration (not in `crate::v1`) so that reading a
//! config never depends on the protocol code that serves it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The size of a `[v1] key_file` created on first start: the original's.
pub const KEY_BITS: usize = 2048;

/// `[v1]`: serve the original wire protocol on `path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct Config {
    pub enable: bool,
    /// URL path of the v1 endpoint (the original served `/`).
    pub path: String,
    /// How a v1 name maps to a locket secret name.
    pub lookup: Lookup,
    /// A separate RSA key for v1 (created if missing, `key_bits` 2048); by
    /// default v1 uses the server's main key.
    pub key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enable: false,
            path: "/".into(),
            lookup: Lookup::Plain,
            key_file: None,
        }
    }
}

/// v1 name lookup rules.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Lookup {
    /// The name as asked.
    Plain,
    /// `<client name, lower-cased>/<name>`: the original's per-service
    /// secrets (e.g. one 1Password item per service).
    PerClient,
}

impl Config {
    /// Checks the settings that need no I/O; the message names the setting.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.enable {
            let p = &self.path;
            if !p.starts_with('/')
                || p.starts_with("/v1/")
                || ["/healthz", "/readyz", "/metrics"].contains(&p.as_str())
            {
                return Err(ConfigError::Invalid(format!(
                    "v1.path {p:?} must start with / and not clash with /v1/*, /healthz, /readyz or /metrics"
                )));
            }
        }
        Ok(())
    }
}
