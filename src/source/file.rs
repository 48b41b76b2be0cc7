//! A JSON or TOML file with one object of name -> value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{BoxFuture, LoadError, Loaded, Source, SourceMemory};
use crate::secret::SecretValue;
use crate::secret_set::SecretSet;

/// `type = "file"`: a JSON or TOML file holding one object of name ->
/// value; nested objects become `outer/inner` names. `format` defaults
/// from the file extension.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct FileSource {
    pub path: PathBuf,
    #[serde(default)]
    pub format: Option<FileFormat>,
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn resolve_paths(&mut self, base: &Path) {
        super::resolve_path(base, &mut self.path);
    }

    fn load<'a>(&'a self, _: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        Box::pin(async move { load(&self.path, self.format) })
    }
}

/// The format of a `file` source.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub enum FileFormat {
    Json,
    Toml,
}

fn load(path: &Path, format: Option<FileFormat>) -> Result<SecretSet, LoadError> {
    let format = match format {
        Some(f) => f,
        None => match path.extension().and_then(|e| e.to_str()) {
            Some("json") => FileFormat::Json,
            Some("toml") => FileFormat::Toml,
            _ => {
                return Err(LoadError::Format(format!(
                    "cannot tell the format of {}: set `format = \"json\"` or `\"toml\"`",
                    path.display()
                )));
            }
        },
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?,
    );
    match format {
        FileFormat::Json => parse_json(&text),
        FileFormat::Toml => parse_toml(&text),
    }
}

/// Where each name came from (its keys, outermost first), so that two keys
/// making one name (`"a/b"` and `"a"` > `"b"`) are an error naming both.
type Origins = std::collections::BTreeMap<String, String>;

fn push(
    out: &mut SecretSet,
    origins: &mut Origins,
    keys: &[&str],
    value: SecretValue,
) -> Result<(), LoadError> {
    let name = keys.join("/");
    let origin = keys
        .iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(" > ");
    if let Some(other) = origins.insert(name.clone(), origin.clone()) {
        return Err(LoadError::Format(format!(
            "keys {other} and {origin} both make the secret name {name:?}; rename one of them"
        )));
    }
    out.push(name, value);
    Ok(())
}

/// Parses a JSON object; nested objects become `outer/inner` names.
pub fn parse_json(text: &str) -> Result<SecretSet, LoadError> {
    // serde_json's own messages quote no input, only line and column.
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| LoadError::Format(format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(LoadError::Format(
            "the JSON must be one object of name -> value".into(),
        ));
    };
    let mut out = SecretSet::new();
    flatten_json(&[], map, &mut out, &mut Origins::new())?;
    Ok(out)
}

fn flatten_json(
    parents: &[&str],
    map: serde_json::Map<String, serde_json::Value>,
    out: &mut SecretSet,
    origins: &mut Origins,
) -> Result<(), LoadError> {
    use serde_json::Value;
    for (key, value) in map {
        let keys: Vec<&str> = parents.iter().copied().chain([key.as_str()]).collect();
        let name = keys.join("/");
        match value {
            Value::String(s) => push(out, origins, &keys, SecretValue::new(s))?,
            Value::Number(n) => push(out, origins, &keys, SecretValue::new(n.to_string()))?,
            Value::Bool(b) => push(out, origins, &keys, SecretValue::new(b.to_string()))?,
            Value::Object(inner) => flatten_json(&keys, inner, out, origins)?,
            Value::Null | Value::Array(_) => {
                return Err(LoadError::Format(format!(
                    "{name:?} is null or an array; values must be strings, numbers, booleans or objects"
                )));
            }
        }
    }
    Ok(())
}

/// Parses a TOML table; nested tables become `outer/inner` names.
pub fn parse_toml(text: &str) -> Result<SecretSet, LoadError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        // toml's messages quote the offending line; keep only its position.
        LoadError::Format(match e.span() {
            Some(span) => format!("not valid TOML (error at byte {})", span.start),
            None => "not valid TOML".to_string(),
        })
    })?;
    let mut out = SecretSet::new();
    flatten_toml(&[], table, &mut out, &mut Origins::new())?;
    Ok(out)
}

fn flatten_toml(
    parents: &[&str],
    table: toml::Table,
    out: &mut SecretSet,
    origins: &mut Origins,
) -> Result<(), LoadError> {
    use toml::Value;
    for (key, value) in table {
        let keys: Vec<&str> = parents.iter().copied().chain([key.as_str()]).collect();
        let name = keys.join("/");
        match value {
            Value::String(s) => push(out, origins, &keys, SecretValue::new(s))?,
            Value::Integer(i) => push(out, origins, &keys, SecretValue::new(i.to_string()))?,
            Value::Float(f) => push(out, origins, &keys, SecretValue::new(f.to_string()))?,
            Value::Boolean(b) => push(out, origins, &keys, SecretValue::new(b.to_string()))?,
            Value::Table(inner) => flatten_toml(&keys, inner, out, origins)?,
            Value::Datetime(_) | Value::Array(_) => {
                return Err(LoadError::Format(format!(
                    "{name:?} is an array or datetime; values must be strings, numbers, booleans or tables"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_flatten_and_never_echo_input() {
        let v = parse_json(r#"{"A":"1","db":{"pw":"x"},"n":5}"#).unwrap();
        let names: Vec<_> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["A", "db/pw", "n"]);
        let e = parse_toml("A = \"supersecret\nB = 1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("supersecret"), "{e}");
        let e = parse_json("{\"A\": supersecret}").unwrap_err().to_string();
        assert!(!e.contains("supersecret"), "{e}");
        // Two spellings of one name: an error naming both, in either format.
        let e = parse_json(r#"{"a/b":"x1","a":{"b":"x2"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#""a/b""#) && e.contains(r#""a" > "b""#), "{e}");
        assert!(!e.contains("x1") && !e.contains("x2"), "{e}");
        let e = parse_toml("\"a/b\" = \"x1\"\n[a]\nb = \"x2\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#""a/b""#) && e.contains(r#""a" > "b""#), "{e}");
    }
}
