//! The server's own environment.

use serde::{Deserialize, Serialize};

use super::{BoxFuture, LoadError, Loaded, SettingError, Source, SourceMemory};
use crate::secret::SecretValue;
use crate::secret_set::SecretSet;

/// `type = "env"`: the server's own environment: variables starting with
/// `prefix` (served without it unless `strip_prefix = false`) and/or the
/// exact `names` listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct EnvSource {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default = "yes")]
    pub strip_prefix: bool,
}

fn yes() -> bool {
    true
}

impl Source for EnvSource {
    fn describe(&self) -> String {
        match &self.prefix {
            Some(p) => format!("env prefix {p:?} (+{} names)", self.names.len()),
            None => format!("env ({} names)", self.names.len()),
        }
    }

    fn validate(&self) -> Result<(), SettingError> {
        if self.prefix.as_deref().unwrap_or("").is_empty() && self.names.is_empty() {
            return Err(SettingError(
                "an env source needs `prefix` or `names` (serving the whole environment is never what you want)".into(),
            ));
        }
        Ok(())
    }

    fn load<'a>(&'a self, _: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        Box::pin(async move { load(self.prefix.as_deref(), &self.names, self.strip_prefix) })
    }
}

fn load(
    prefix: Option<&str>,
    names: &[String],
    strip_prefix: bool,
) -> Result<SecretSet, LoadError> {
    let mut out = SecretSet::new();
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        for (key, value) in std::env::vars_os() {
            let (Some(key), Ok(value)) = (key.to_str(), value.into_string()) else {
                continue;
            };
            if let Some(rest) = key.strip_prefix(prefix) {
                if rest.is_empty() {
                    continue;
                }
                let name = if strip_prefix { rest } else { key };
                out.push(name, SecretValue::new(value));
            }
        }
    }
    for name in names {
        match std::env::var(name) {
            Ok(value) => out.push(name.clone(), SecretValue::new(value)),
            Err(std::env::VarError::NotPresent) => {
                return Err(LoadError::Environment(format!(
                    "environment variable {name} is not set; set it or remove it from `names`"
                )));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(LoadError::Environment(format!(
                    "environment variable {name} is not UTF-8"
                )));
            }
        }
    }
    Ok(out)
}
