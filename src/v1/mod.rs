//! The original locket's protocol (v1), all of it: the wire format
//! ([`wire`]), the endpoint (`endpoint`), the registry import
//! ([`import`]) and the `[v1]` settings. Spoken only when `[v1] enable =
//! true`, so that existing Go clients can move over unchanged.
//!
//! It shares the server's replay cache, clock rule, failed-authentication
//! limit, outcome type and log line with v2 ([`crate::server`]); only the
//! wire format and the answers' shape are its own.

mod endpoint;
pub mod import;
mod shape;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::reply::Response;

use crate::config::ConfigError;
use crate::keys::{KeyError, ServerKey};
use crate::server::State;

/// The size of a `[v1] key_file` created on first start: the original's.
pub const KEY_BITS: usize = 2048;

/// `[v1]`: serve the original wire protocol on `path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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

/// Loads (or creates) the separate `[v1] key_file`, when v1 is on and one is
/// set; `None` means v1 uses the server's main key.
pub(crate) fn load_key(config: &Config) -> Result<Option<ServerKey>, KeyError> {
    match (&config.key_file, config.enable) {
        (Some(path), true) => Ok(Some(crate::server::load_key(
            path,
            KEY_BITS,
            "v1 compat key",
        )?)),
        _ => Ok(None),
    }
}

/// The v1 routes, on `[v1] path` when `[v1] enable = true` (as configured at
/// start); otherwise they match nothing.
pub(crate) fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let (enabled, path) = {
        let cfg = &state.runtime.load().config.v1;
        (cfg.enable, cfg.path.clone())
    };
    warp::any()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(endpoint::routes(state, path))
}
