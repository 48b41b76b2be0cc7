//! Configuration: figment layering (built-in defaults < TOML file <
//! `LOCKET_*` environment variables < command-line flags), validation, and
//! paths resolved against the config file's folder.

pub mod client;
pub mod server;
pub mod v1;

use std::path::{Path, PathBuf};

/// A configuration problem; the message names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path given to --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A setting of the wrong type or shape, or a TOML syntax error. The
    /// message names the file, line, column and key path, never a value:
    /// figment's and toml's own messages quote values and whole lines.
    #[error("config is invalid: {0}")]
    Setting(String),
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

/// Reads a TOML config file for figment, checking its syntax first so that
/// a syntax error is reported by position only.
pub(crate) fn read_toml(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    check_syntax(&text, Some(path))?;
    Ok(text)
}

/// A TOML syntax error as "FILE:LINE:COLUMN: what", without the line.
pub(crate) fn check_syntax(text: &str, file: Option<&Path>) -> Result<(), ConfigError> {
    match toml::de::DeTable::parse(text) {
        Ok(_) => Ok(()),
        Err(e) => {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((0, 0));
            Err(ConfigError::Setting(format!(
                "{}:{line}:{column}: TOML syntax error: {} (the line is not shown: it may hold a secret)",
                file.map(|f| f.display().to_string())
                    .unwrap_or_else(|| "config".into()),
                e.message().lines().next().unwrap_or("invalid TOML")
            )))
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where the value at `path` (figment's key path) starts in `text`.
fn locate(text: &str, path: &[String]) -> Option<(usize, usize)> {
    use toml::de::DeValue;
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = root.span();
    let mut table = Some(root.into_inner());
    let mut array: Option<toml::de::DeArray<'_>> = None;
    for key in path {
        let next = if let Some(t) = table.take() {
            t.into_iter()
                .find(|(k, _)| k.get_ref().as_ref() == key.as_str())
                .map(|(k, v)| (k.span(), v))
        } else if let Some(a) = array.take() {
            let i: usize = key.parse().ok()?;
            a.into_iter().nth(i).map(|v| (v.span(), v))
        } else {
            None
        };
        let (key_span, value) = next?;
        span = key_span;
        match value.into_inner() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    Some(line_column(text, span.start))
}

/// A key path as written in TOML: `sources[0].command`.
fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// What kind of value serde found, without the value.
fn found(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an optional value",
        Actual::NewtypeStruct | Actual::Other(_) => "a value",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant => "a variant",
    }
}

/// figment's error, told without values: for each problem the file, line,
/// column and key path, and what was expected. `text` is the file's text
/// (for positions); `file` its name.
pub(crate) fn describe(
    error: figment::Error,
    text: Option<&str>,
    file: Option<&Path>,
) -> ConfigError {
    use figment::error::Kind;
    let mut problems = Vec::new();
    for e in error {
        let key = key_path(&e.path);
        let from_env = e
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.to_lowercase().contains("environment"));
        let place = if from_env {
            format!("environment variable LOCKET_{}", key.to_uppercase())
        } else {
            let position = text
                .and_then(|t| locate(t, &e.path))
                .map(|(l, c)| format!(":{l}:{c}"))
                .unwrap_or_default();
            format!(
                "{}{position}",
                file.map(|f| f.display().to_string())
                    .unwrap_or_else(|| "config".into())
            )
        };
        let what = match &e.kind {
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!("expected {expected}, found {}", found(actual))
            }
            Kind::InvalidLength(len, expected) => format!("expected {expected}, found {len} items"),
            Kind::UnknownVariant(_, expected) => {
                format!("unknown value; expected one of: {}", expected.join(", "))
            }
            Kind::UnknownField(field, expected) => format!(
                "unknown key `{field}`; expected one of: {}",
                expected.join(", ")
            ),
            Kind::MissingField(field) => format!("missing key `{field}`"),
            Kind::DuplicateField(field) => format!("key `{field}` given twice"),
            Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
            Kind::Unsupported(actual) | Kind::UnsupportedKey(actual, _) => {
                format!("{} is not supported here", found(actual))
            }
            // Custom messages come from locket's own types (durations,
            // addresses) and from serde; they may quote the value, so
            // only their first words up to a colon or quote are kept.
            Kind::Message(m) => {
                let cut = m.find([':', '"', '`', '\'']).unwrap_or(m.len());
                let head = m[..cut].trim();
                if head.is_empty() {
                    "invalid value".into()
                } else {
                    head.to_owned()
                }
            }
        };
        let key = if key.is_empty() {
            String::new()
        } else {
            format!(" `{key}`")
        };
        problems.push(format!("{place}:{key} {what}"));
    }
    ConfigError::Setting(problems.join("; "))
}
