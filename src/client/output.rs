//! Turning fetched secrets into text for programs: dotenv and JSON.
//!
//! Output is built in zeroizing buffers sized up front, so no copy of a value
//! is left in freed memory by a reallocation.

use std::collections::BTreeMap;

use crate::secret::{SecretBytes, SecretValue};

/// Maps a secret name to an environment variable name: every character
/// outside `A-Za-z0-9_` becomes `_`, and a leading digit gets a `_` before
/// it. `db/password` -> `db_password`, `2FA-SEED` -> `_2FA_SEED`.
pub fn env_var_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// Two secrets that one environment format cannot tell apart.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "secrets {first:?} and {second:?} both map to variable {var}; ask for one of them, or use --format json"
)]
pub struct CollisionError {
    pub first: String,
    pub second: String,
    pub var: String,
}

/// Maps every name with [`env_var_name`], refusing two names that map to one
/// variable.
pub fn env_names(secrets: &[(String, SecretValue)]) -> Result<Vec<String>, CollisionError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(secrets.len());
    for (name, _) in secrets {
        let var = env_var_name(name);
        if let Some(other) = seen.insert(var.clone(), name) {
            return Err(CollisionError {
                first: other.to_owned(),
                second: name.clone(),
                var,
            });
        }
        out.push(var);
    }
    Ok(out)
}

/// `NAME=<quote>value<quote>` lines, one per secret, with the value's bytes
/// passed through `escape`. The buffer is sized for the worst case once.
fn env_lines(
    secrets: &[(String, SecretValue)],
    export: &str,
    quote: u8,
    escape: impl Fn(u8, &mut SecretBytes),
) -> Result<SecretBytes, CollisionError> {
    let vars = env_names(secrets)?;
    let size: usize = secrets
        .iter()
        .zip(&vars)
        .map(|((_, v), n)| export.len() + n.len() + 4 + 4 * v.len())
        .sum();
    let mut out = SecretBytes::new(Vec::with_capacity(size));
    for ((_, value), var) in secrets.iter().zip(&vars) {
        out.extend_from_slice(export.as_bytes());
        out.extend_from_slice(var.as_bytes());
        out.push(b'=');
        out.push(quote);
        for c in value.expose().bytes() {
            escape(c, &mut out);
        }
        out.push(quote);
        out.push(b'\n');
    }
    Ok(out)
}

/// `NAME="value"` lines that a dotenv parser (dotenvy, docker compose,
/// systemd-style loaders) reads back exactly: double quotes, with `\`, `"`,
/// `$` and newline escaped as `\\`, `\"`, `\$`, `\n`.
pub fn dotenv(secrets: &[(String, SecretValue)]) -> Result<SecretBytes, CollisionError> {
    env_lines(secrets, "", b'"', |c, out| match c {
        b'\\' | b'"' | b'$' => out.extend_from_slice(&[b'\\', c]),
        b'\n' => out.extend_from_slice(b"\\n"),
        _ => out.push(c),
    })
}

/// `NAME="value"` lines for systemd's `EnvironmentFile=`: double quotes,
/// with `\`, `"`, `$` and `` ` `` escaped by a backslash; newlines are kept
/// as they are (systemd allows them inside quotes).
pub fn systemd_env(secrets: &[(String, SecretValue)]) -> Result<SecretBytes, CollisionError> {
    env_lines(secrets, "", b'"', |c, out| {
        if matches!(c, b'\\' | b'"' | b'$' | b'`') {
            out.push(b'\\');
        }
        out.push(c);
    })
}

/// Shell `export NAME='value'` lines, safe to `eval` or `source`: single
/// quotes, with each `'` written as `'\''`.
pub fn shell(secrets: &[(String, SecretValue)]) -> Result<SecretBytes, CollisionError> {
    env_lines(secrets, "export ", b'\'', |c, out| {
        if c == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(c);
        }
    })
}

/// One JSON object, name -> value, keys as the server names them.
pub fn json(secrets: &[(String, SecretValue)]) -> SecretBytes {
    let size: usize = 4 + secrets
        .iter()
        .map(|(n, v)| 8 + 6 * (n.len() + v.len()))
        .sum::<usize>();
    let mut out = SecretBytes::new(Vec::with_capacity(size));
    out.push(b'{');
    for (i, (name, value)) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
        out.push(b':');
        serde_json::to_writer(&mut *out, value.expose()).expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_variables() {
        assert_eq!(env_var_name("db/password"), "db_password");
        assert_eq!(env_var_name("2FA-SEED"), "_2FA_SEED");
        assert_eq!(env_var_name("OK_1"), "OK_1");
        let clash = vec![
            ("a-b".to_string(), SecretValue::from("1")),
            ("a_b".to_string(), SecretValue::from("2")),
        ];
        assert!(
            env_names(&clash)
                .unwrap_err()
                .to_string()
                .contains("both map")
        );
    }

    #[test]
    fn dotenv_reads_back_exactly() {
        let values = [
            "plain",
            "",
            "with space  ",
            "quote\"s and 'single'",
            "back\\slash\\n not newline",
            "dollar $HOME ${PATH} $",
            "multi\nline\n\nvalue",
            "hash # not a comment",
            "\\|!@#$%^&*()_+[]{};:,<.>/?`~===",
            "unicodé ✓ \t tab",
        ];
        let secrets: Vec<(String, SecretValue)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("V{i}"), SecretValue::from(*v)))
            .collect();
        let text = dotenv(&secrets).unwrap();
        let parsed: Vec<(String, String)> = dotenvy::from_read_iter(text.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), values.len());
        for ((name, value), (pn, pv)) in secrets.iter().zip(parsed) {
            assert_eq!(*name, pn);
            assert_eq!(value.expose(), pv, "value of {name}");
        }
    }

    #[test]
    fn shell_and_systemd_quoting() {
        let secrets = vec![(
            "A".to_string(),
            SecretValue::from("it's $HOME \\ `x` \"q\""),
        )];
        let sh = shell(&secrets).unwrap();
        assert_eq!(sh.as_slice(), b"export A='it'\\''s $HOME \\ `x` \"q\"'\n");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{}printf %s \"$A\"", String::from_utf8_lossy(&sh)))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's $HOME \\ `x` \"q\""
        );
        let sd = systemd_env(&secrets).unwrap();
        assert_eq!(
            sd.as_slice(),
            b"A=\"it's \\$HOME \\\\ \\`x\\` \\\"q\\\"\"\n"
        );
    }

    #[test]
    fn json_round_trips() {
        let secrets = vec![("a\"b".to_string(), SecretValue::from("x\ny\"z\\"))];
        let text = json(&secrets);
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["a\"b"], "x\ny\"z\\");
    }
}
