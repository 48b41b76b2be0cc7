//! Where secrets come from: one file per kind of source, each a settings
//! struct implementing [`Source`] and registered by one line of the
//! `sources!` list (which builds [`SourceConfig`], the `[[sources]]` entry);
//! [`memory`], what every source remembers between rounds (requests,
//! budget, rate-limit waits, what it read); [`combine`], which keeps each
//! source's last good values and combines them into the `ServedSet` that
//! is served; and [`sealed_set`], that state as a sealed copy holds it.
//!
//! Sources are listed in `[[sources]]` and read in order; when two sources
//! hold the same name, the **later** source wins (like layered config), and
//! the name is reported. A source that fails keeps serving the values it
//! last loaded while the others refresh; a set is never served without a
//! source that has never loaded, because a missing secret is worse than a
//! stale one.

pub mod combine;
pub(crate) mod command;
pub mod dotenv;
mod env;
pub mod file;
pub mod memory;
pub(crate) mod onepassword;
pub mod sealed_set;

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::secret_set::SecretSet;
use crate::store::ServedSet;

pub use command::{CommandEnv, CommandFormat, CommandSource};
pub use dotenv::{DotenvSource, parse_dotenv};
pub use env::EnvSource;
pub use file::{FileFormat, FileSource, parse_json, parse_toml};
pub use memory::{Budget, SourceMemory};
pub use onepassword::{OnepasswordCliSource, OnepasswordConnectSource};

/// One kind of source. A new kind is a file with a settings struct that
/// implements this, and one line in the `sources!` list below; refresh,
/// request counting, budgets, rate-limit waits and the last good values
/// are the same for every kind ([`SourceMemory`], [`combine`]).
pub trait Source: std::fmt::Debug + Send + Sync {
    /// A short description for logs and errors (never a value).
    fn describe(&self) -> String;
    /// Checks the settings that need no I/O.
    fn validate(&self) -> Result<(), SettingError> {
        Ok(())
    }
    /// Makes relative paths absolute against `base` (the config's folder).
    fn resolve_paths(&mut self, _base: &Path) {}
    /// The requests this source may make to its service.
    fn budget(&self) -> Budget {
        Budget::default()
    }
    /// What one load costs its service, in its own requests, when every
    /// load costs the same (a command run: 1). 0 for local sources and for
    /// sources that count their own requests as they make them (1Password
    /// reads only what changed).
    fn cost(&self) -> u32 {
        0
    }
    /// Reads the source, with what it remembers from earlier rounds (and
    /// updating it): a source that can read only what changed does so.
    fn load<'a>(&'a self, memory: &'a mut SourceMemory) -> BoxFuture<'a, Loaded>;
}

/// What one load gives: the names and values, or why not.
pub type Loaded = Result<SecretSet, LoadError>;

/// A boxed future, as [`Source::load`] returns (the trait is used as
/// `dyn Source`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Makes `path` absolute against `base` when it is relative.
pub(crate) fn resolve_path(base: &Path, path: &mut std::path::PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// The default `timeout` of sources that run or call something.
pub(crate) fn ten_seconds() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// The kinds of source, by their `type = "..."`: one line each.
macro_rules! sources {
    ($($(#[$doc:meta])* $name:literal => $variant:ident($settings:ty),)*) => {
        /// One `[[sources]]` entry; `type` picks the kind.
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
        #[serde(tag = "type")]
        pub enum SourceConfig {
            $($(#[$doc])* #[serde(rename = $name)] $variant($settings),)*
        }

        impl SourceConfig {
            /// The `type = "..."` of this source.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }

            fn kind(&self) -> &dyn Source {
                match self {
                    $(Self::$variant(s) => s,)*
                }
            }

            fn kind_mut(&mut self) -> &mut dyn Source {
                match self {
                    $(Self::$variant(s) => s,)*
                }
            }
        }
    };
}

sources! {
    /// A `.env` file, parsed with `dotenvy`.
    "dotenv" => Dotenv(DotenvSource),
    /// The server's own environment.
    "env" => Env(EnvSource),
    /// A JSON or TOML file of name -> value.
    "file" => File(FileSource),
    /// A program that prints a JSON object or dotenv text.
    "command" => Command(CommandSource),
    /// 1Password through the `op` CLI and a service-account token.
    "onepassword-cli" => OnepasswordCli(OnepasswordCliSource),
    /// A 1Password Connect server.
    "onepassword-connect" => OnepasswordConnect(OnepasswordConnectSource),
}

impl SourceConfig {
    /// A short description for logs and errors (never a value).
    pub fn describe(&self) -> String {
        self.kind().describe()
    }

    /// Makes relative paths absolute against `base` (the config's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.kind_mut().resolve_paths(base);
    }

    /// Checks settings that need no I/O.
    pub fn validate(&self) -> Result<(), SettingError> {
        self.kind().validate()
    }

    /// The request budget in force.
    pub fn budget(&self) -> Budget {
        self.kind().budget()
    }

    /// Reads the source once, from nothing remembered.
    pub async fn load(&self) -> Loaded {
        self.load_with(&mut SourceMemory::default()).await
    }

    /// Reads the source, using and updating what it remembers from earlier
    /// rounds: its requests and budget, a rate limit, and what it read
    /// (a 1Password source reads only the items that changed).
    pub async fn load_with(&self, memory: &mut SourceMemory) -> Loaded {
        let kind = self.kind();
        let cost = kind.cost();
        if cost > 0 {
            memory
                .spend(kind.budget(), cost, SystemTime::now())
                .map_err(memory::Hold::into_error)?;
        }
        kind.load(memory).await
    }
}

/// Why one source could not be read. Every message names the file,
/// program, variable or item and what to do about it; none quotes a value.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}; check `path`")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The content is not in the source's format (positions only).
    #[error("{0}")]
    Format(String),
    /// A variable the source names is missing or unusable.
    #[error("{0}")]
    Environment(String),
    /// The program failed, timed out or printed too much. Its stderr is kept
    /// apart from the message: it is the program's text, not locket's, and
    /// may hold anything, so it is logged at debug level only and never
    /// reaches `/readyz`.
    #[error("{message}")]
    Command {
        message: String,
        stderr: Option<ProgramText>,
    },
    /// 1Password (the CLI or Connect) refused or failed.
    #[error("{0}")]
    OnePassword(String),
    /// The service rate-limited the source: it asks nothing until `until`.
    #[error("{detail} (until {})", humantime::format_rfc3339_seconds(*.until))]
    RateLimited { until: SystemTime, detail: String },
    /// The source's request budget is spent until `until`.
    #[error("{detail} (until {})", humantime::format_rfc3339_seconds(*.until))]
    OverBudget { until: SystemTime, detail: String },
}

impl LoadError {
    /// A command failure without stderr to keep.
    pub(crate) fn command(message: String) -> Self {
        LoadError::Command {
            message,
            stderr: None,
        }
    }

    /// What kind of failure this is, in words that carry no source text
    /// (for `/readyz`).
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "unreadable",
            LoadError::Format(_) => "not in the expected format",
            LoadError::Environment(_) => "a variable is missing or unusable",
            LoadError::Command { .. } => "the command failed",
            LoadError::OnePassword(_) => "1Password failed",
            LoadError::RateLimited { .. } => "rate-limited by the service",
            LoadError::OverBudget { .. } => "request budget spent",
        }
    }

    /// Until when the source waits, for a rate limit or a spent budget.
    pub fn waits_until(&self) -> Option<SystemTime> {
        match self {
            LoadError::RateLimited { until, .. } | LoadError::OverBudget { until, .. } => {
                Some(*until)
            }
            _ => None,
        }
    }
}

/// Text a source program printed (the start of its stderr). It may hold
/// anything, a secret included, so its `Debug` form shows only its length:
/// read it with [`ProgramText::as_str`] where an operator asked for it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProgramText(String);

impl ProgramText {
    pub(crate) fn new(text: String) -> Self {
        Self(text)
    }

    /// The text itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProgramText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProgramText(<{} bytes>)", self.0.len())
    }
}

/// A `[[sources]]` setting that cannot work (found without I/O).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub(crate) String);

/// A source failed to load. The detail never contains a value, nor text
/// the source itself produced (a command's stderr is in `stderr`, apart).
#[derive(Debug, thiserror::Error)]
#[error("source #{index} ({description}) failed to load: {detail}")]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub struct SourceError {
    pub index: usize,
    pub description: String,
    pub detail: String,
    /// What kind of failure (see [`LoadError::kind`]).
    pub kind: &'static str,
    /// The start of a failed command's stderr, for the debug log and for
    /// `locket check` (an operator at a terminal), never for endpoints.
    pub stderr: Option<ProgramText>,
    /// The source's type, as in `type = "..."`.
    pub source_type: &'static str,
    /// Until when the source asks nothing (a rate limit, a spent budget).
    pub wait: Option<Box<Wait>>,
}

/// A source that waits out a rate limit or a spent budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// When the source may be read again.
    pub until: SystemTime,
    /// The same wait was already reported: log it quietly.
    pub repeated: bool,
}

impl SourceError {
    /// The failure as `/readyz` shows it: which source by number and type,
    /// and what kind of failure; no path, URL, command or text from the
    /// source.
    pub fn summary(&self) -> String {
        format!(
            "source #{} ({}) failed: {}",
            self.index, self.source_type, self.kind
        )
    }
}

/// Loads every source once and combines them (later sources win); any
/// failure is an error. For `locket check` and `locket plan`, which see the
/// sources fresh; the server keeps each source's last values instead
/// ([`combine::Sources`]). Also returns the names two sources define.
pub async fn load_all(
    sources: &[SourceConfig],
) -> Result<(ServedSet, Vec<combine::Duplicate>), SourceError> {
    let (_, round) = combine::Sources::default().load(sources).await;
    match (round.errors.into_iter().next(), round.set) {
        (Some(e), _) => Err(e),
        (None, Some(set)) => Ok((set, round.duplicates)),
        (None, None) => unreachable!("a source without values has failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_command_source_hides_its_environment_values() {
        let s = SourceConfig::Command(CommandSource {
            command: vec!["sops".into()],
            format: CommandFormat::Json,
            timeout: std::time::Duration::from_secs(1),
            env: CommandEnv(std::collections::BTreeMap::from([(
                "VAULT_TOKEN".to_string(),
                "hvs.secret-token".to_string(),
            )])),
        });
        let shown = format!("{s:?}");
        assert!(
            shown.contains("VAULT_TOKEN") && !shown.contains("hvs.secret-token"),
            "{shown}"
        );
    }
}
