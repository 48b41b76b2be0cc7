//! The server's own environment.

use super::LoadError;
use crate::secret::SecretValue;

pub(super) fn load(
    prefix: Option<&str>,
    names: &[String],
    strip_prefix: bool,
) -> Result<Vec<(String, SecretValue)>, LoadError> {
    let mut out = Vec::new();
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
                out.push((name.to_owned(), SecretValue::new(value)));
            }
        }
    }
    for name in names {
        match std::env::var(name) {
            Ok(value) => out.push((name.clone(), SecretValue::new(value))),
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
