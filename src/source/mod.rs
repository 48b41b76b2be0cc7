//! Where secrets come from: one file per kind of source behind one enum,
//! plus [`combine`], which keeps each source's last good values and
//! combines them into the `SecretSet` that is served.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::secret::SecretValue;
use crate::store::SecretSet;

pub use dotenv::parse_dotenv;
pub use file::{FileFormat, parse_json, parse_toml};
pub use memory::{Budget, SourceMemory};

/// One `[[sources]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A `.env` file, parsed with `dotenvy`.
    Dotenv { path: PathBuf },
    /// The server's own environment: variables starting with `prefix`
    /// (served without it unless `strip_prefix = false`) and/or the exact
    /// `names` listed.
    Env {
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default = "yes")]
        strip_prefix: bool,
    },
    /// A JSON or TOML file holding one object of name -> value; nested
    /// objects become `outer/inner` names. `format` defaults from the file
    /// extension.
    File {
        path: PathBuf,
        #[serde(default)]
        format: Option<FileFormat>,
    },
    /// A program that prints a JSON object or dotenv text.
    Command {
        command: Vec<String>,
        #[serde(default)]
        format: CommandFormat,
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        timeout: Duration,
        /// Extra environment for the program (its environment is otherwise
        /// empty but for PATH, HOME and LANG).
        #[serde(default)]
        env: CommandEnv,
    },
    /// 1Password through the `op` CLI and a service-account token.
    OnepasswordCli {
        vault: String,
        token_file: PathBuf,
        /// The `op` program (a name looked up in PATH, or a path).
        #[serde(default = "op")]
        op: String,
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        timeout: Duration,
        /// 1Password requests this source may make per hour and per day
        /// (0: no limit); default 800 and 1500, well inside a Teams account.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads_per_hour: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads_per_day: Option<u32>,
        /// Items read at once (default 8).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency: Option<usize>,
        /// Secret names mapped to 1Password references
        /// (`DB_PASSWORD = "op://prod/postgres/password"`): the source then
        /// serves only these, and reads only the items they name.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        references: BTreeMap<String, String>,
    },
    /// A 1Password Connect server.
    OnepasswordConnect {
        url: String,
        vault: String,
        token_file: PathBuf,
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        timeout: Duration,
        /// Requests per hour and per day (default: no limit; Connect
        /// answers from its own synced copy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads_per_hour: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads_per_day: Option<u32>,
        /// Items read at once (default 8).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency: Option<usize>,
        /// As for `onepassword-cli`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        references: BTreeMap<String, String>,
    },
}

/// A command source's extra environment. Its values may be credentials, so
/// `Debug` shows only the names.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct CommandEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for CommandEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, crate::secret::REDACTED)))
            .finish()
    }
}

/// What a `command` source prints.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CommandFormat {
    #[default]
    Json,
    Dotenv,
}

fn yes() -> bool {
    true
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn op() -> String {
    "op".into()
}

impl SourceConfig {
    /// A short description for logs and errors (never a value).
    /// The `type = "..."` of this source.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Dotenv { .. } => "dotenv",
            Self::Env { .. } => "env",
            Self::File { .. } => "file",
            Self::Command { .. } => "command",
            Self::OnepasswordCli { .. } => "onepassword-cli",
            Self::OnepasswordConnect { .. } => "onepassword-connect",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Dotenv { path } => format!("dotenv {}", path.display()),
            Self::Env { prefix, names, .. } => match prefix {
                Some(p) => format!("env prefix {p:?} (+{} names)", names.len()),
                None => format!("env ({} names)", names.len()),
            },
            Self::File { path, .. } => format!("file {}", path.display()),
            Self::Command { command, .. } => format!(
                "command {:?}",
                command.first().map(String::as_str).unwrap_or("")
            ),
            Self::OnepasswordCli { vault, .. } => format!("onepassword-cli vault {vault:?}"),
            Self::OnepasswordConnect { url, vault, .. } => {
                format!("onepassword-connect {url} vault {vault:?}")
            }
        }
    }

    /// Makes relative paths absolute against `base` (the config's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        match self {
            Self::Dotenv { path }
            | Self::File { path, .. }
            | Self::OnepasswordCli {
                token_file: path, ..
            }
            | Self::OnepasswordConnect {
                token_file: path, ..
            } => {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
            Self::Env { .. } | Self::Command { .. } => {}
        }
    }

    /// Checks settings that need no I/O.
    pub fn validate(&self) -> Result<(), SettingError> {
        let invalid = |m: String| Err(SettingError(m));
        match self {
            Self::Env { prefix, names, .. } if prefix.as_deref().unwrap_or("").is_empty() && names.is_empty() => {
                invalid("an env source needs `prefix` or `names` (serving the whole environment is never what you want)".into())
            }
            Self::Command { command, .. } if command.is_empty() => {
                invalid("`command` is empty: give the program and its arguments, e.g. [\"sops\", \"-d\", \"secrets.json\"]".into())
            }
            Self::Command { timeout, .. } | Self::OnepasswordCli { timeout, .. } | Self::OnepasswordConnect { timeout, .. }
                if timeout.is_zero() =>
            {
                invalid("`timeout` must be more than 0s".into())
            }
            Self::OnepasswordCli { concurrency: Some(n), .. } | Self::OnepasswordConnect { concurrency: Some(n), .. }
                if !(1..=64).contains(n) =>
            {
                invalid(format!("concurrency = {n} is out of range: use 1 to 64 (default {})", onepassword::DEFAULT_CONCURRENCY))
            }
            Self::OnepasswordCli { vault, references, .. } | Self::OnepasswordConnect { vault, references, .. }
                if onepassword::check_references(vault, references).is_err() =>
            {
                invalid(onepassword::check_references(vault, references).unwrap_err())
            }
            Self::OnepasswordConnect { url, .. } if !(url.starts_with("http://") || url.starts_with("https://")) => {
                invalid(format!("url {url:?} must start with http:// or https://"))
            }
            _ => Ok(()),
        }
    }

    /// Reads the source once, from nothing remembered.
    pub async fn load(&self) -> Result<Vec<(String, SecretValue)>, LoadError> {
        self.load_with(&mut SourceMemory::default()).await
    }

    /// Reads the source, using and updating what it remembers from earlier
    /// rounds: its requests and budget, a rate limit, and what it read
    /// (a 1Password source reads only the items that changed).
    pub async fn load_with(
        &self,
        memory: &mut SourceMemory,
    ) -> Result<Vec<(String, SecretValue)>, LoadError> {
        match self {
            Self::Dotenv { path } => dotenv::load(path),
            Self::Env {
                prefix,
                names,
                strip_prefix,
            } => env::load(prefix.as_deref(), names, *strip_prefix),
            Self::File { path, format } => file::load(path, *format),
            Self::Command {
                command,
                format,
                timeout,
                env,
            } => command::load(command, *format, *timeout, &env.0).await,
            Self::OnepasswordCli {
                vault,
                token_file,
                op,
                timeout,
                references,
                ..
            } => {
                let limits = self.limits(*timeout);
                onepassword::load_cli(op, vault, token_file, limits, references, memory).await
            }
            Self::OnepasswordConnect {
                url,
                vault,
                token_file,
                timeout,
                references,
                ..
            } => {
                let limits = self.limits(*timeout);
                onepassword::load_connect(url, vault, token_file, limits, references, memory).await
            }
        }
    }

    /// The request budget in force (0 in the config: no limit).
    pub fn budget(&self) -> Budget {
        let pick = |set: Option<u32>, default: Option<u32>| match set {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        match self {
            Self::OnepasswordCli {
                reads_per_hour,
                reads_per_day,
                ..
            } => Budget {
                per_hour: pick(*reads_per_hour, onepassword::DEFAULT_CLI_BUDGET.per_hour),
                per_day: pick(*reads_per_day, onepassword::DEFAULT_CLI_BUDGET.per_day),
            },
            Self::OnepasswordConnect {
                reads_per_hour,
                reads_per_day,
                ..
            } => Budget {
                per_hour: pick(*reads_per_hour, None),
                per_day: pick(*reads_per_day, None),
            },
            _ => Budget::default(),
        }
    }

    fn limits(&self, timeout: Duration) -> onepassword::Limits {
        let concurrency = match self {
            Self::OnepasswordCli { concurrency, .. }
            | Self::OnepasswordConnect { concurrency, .. } => *concurrency,
            _ => None,
        };
        onepassword::Limits {
            budget: self.budget(),
            concurrency: concurrency.unwrap_or(onepassword::DEFAULT_CONCURRENCY),
            timeout,
        }
    }
}

/// Why one source could not be read. Every message names the file,
/// program, variable or item and what to do about it; none quotes a value.
#[derive(Debug, thiserror::Error)]
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
pub struct SettingError(String);

/// A source failed to load. The detail never contains a value, nor text
/// the source itself produced (a command's stderr is in `stderr`, apart).
#[derive(Debug, thiserror::Error)]
#[error("source #{index} ({description}) failed to load: {detail}")]
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
) -> Result<(SecretSet, Vec<combine::Duplicate>), SourceError> {
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
        let s = SourceConfig::Command {
            command: vec!["sops".into()],
            format: CommandFormat::Json,
            timeout: Duration::from_secs(1),
            env: CommandEnv(BTreeMap::from([(
                "VAULT_TOKEN".to_string(),
                "hvs.secret-token".to_string(),
            )])),
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("VAULT_TOKEN") && !shown.contains("hvs.secret-token"),
            "{shown}"
        );
    }
}
