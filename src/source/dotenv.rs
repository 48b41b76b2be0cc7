//! `.env` files, parsed with `dotenvy` (quotes, escapes, `export`, comments,
//! multi-line quoted values, `${VAR}` substitution outside single quotes).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BoxFuture, LoadError, Loaded, Source, SourceMemory};
use crate::secret::SecretValue;
use crate::secret_set::SecretSet;

/// `type = "dotenv"`: a `.env` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct DotenvSource {
    pub path: PathBuf,
}

impl Source for DotenvSource {
    fn describe(&self) -> String {
        format!("dotenv {}", self.path.display())
    }

    fn resolve_paths(&mut self, base: &Path) {
        super::resolve_path(base, &mut self.path);
    }

    fn load<'a>(&'a self, _: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        Box::pin(async move { load(&self.path) })
    }
}

fn load(path: &Path) -> Result<SecretSet, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_dotenv(file)
}

/// Parses dotenv text. A parse error names the entry it follows but never
/// shows the offending line, which may hold a secret.
pub fn parse_dotenv(reader: impl Read) -> Result<SecretSet, LoadError> {
    let mut out = SecretSet::new();
    for item in dotenvy::from_read_iter(reader) {
        match item {
            Ok((name, value)) => out.push(name, SecretValue::new(value)),
            Err(dotenvy::Error::LineParse(_, column)) => {
                let after = out
                    .last()
                    .map(|(n, _)| format!("after entry {n:?}"))
                    .unwrap_or_else(|| "before the first entry".into());
                return Err(LoadError::Format(format!(
                    "a line {after} is not NAME=value (error at column {column}; the line is not shown because it may hold a secret)"
                )));
            }
            Err(dotenvy::Error::Io(e)) => {
                return Err(LoadError::Format(format!("read error: {e}")));
            }
            Err(_) => {
                return Err(LoadError::Format(
                    "the file could not be parsed as dotenv".into(),
                ));
            }
        }
    }
    Ok(out)
}
