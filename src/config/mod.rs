//! Configuration: figment layering (built-in defaults < TOML file <
//! `LOCKET_*` environment variables < command-line flags), validation, and
//! paths resolved against the config file's folder.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

/// A configuration problem; the message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is invalid: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("config is invalid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// The folder relative paths resolve against: the config file's folder, or
/// the working directory when there is no file.
pub(crate) fn base_dir(config_file: Option<&Path>) -> PathBuf {
    config_file
        .and_then(|p| p.parent())
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

pub(crate) fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
}
