//! Turning fetched secrets into text for programs: dotenv and JSON.
//!
//! Output is built in zeroizing buffers sized up front, so no copy of a value
//! is left in freed memory by a reallocation.

use std::collections::BTreeMap;

use crate::secret::SecretBytes;
use crate::secret_set::SecretSet;

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

/// Secrets that an environment format cannot carry. Names only, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum FormatError {
    /// Two secrets that the format cannot tell apart.
    #[error(
        "secrets {first:?} and {second:?} both map to variable {var}; ask for one of them, or use --format json"
    )]
    Collision {
        first: String,
        second: String,
        var: String,
    },
    /// A value the format cannot carry safely to every reader it names.
    #[error("the value of secret {name:?} cannot be written as {format}: {why}; use {instead}")]
    Unrepresentable {
        name: String,
        format: &'static str,
        why: &'static str,
        instead: &'static str,
    },
}

/// Maps every name with [`env_var_name`], refusing two names that map to one
/// variable.
pub fn env_names(secrets: &SecretSet) -> Result<Vec<String>, FormatError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(secrets.len());
    for (name, _) in secrets {
        let var = env_var_name(name);
        if let Some(other) = seen.insert(var.clone(), name) {
            return Err(FormatError::Collision {
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
    secrets: &SecretSet,
    export: &str,
    quote: u8,
    escape: impl Fn(u8, &mut SecretBytes),
) -> Result<SecretBytes, FormatError> {
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

/// Refuses the first value holding a byte of `bad`.
fn refuse(
    secrets: &SecretSet,
    bad: &[(u8, &'static str)],
    format: &'static str,
    instead: &'static str,
) -> Result<(), FormatError> {
    for (name, value) in secrets {
        if let Some((_, why)) = bad
            .iter()
            .find(|(b, _)| value.expose().as_bytes().contains(b))
        {
            return Err(FormatError::Unrepresentable {
                name: name.clone(),
                format,
                why,
                instead,
            });
        }
    }
    Ok(())
}

const NUL: (u8, &str) = (0, "it holds a NUL byte, which no environment variable can");

/// `NAME='value'` or `NAME="value"` lines for dotenv parsers (dotenvy,
/// python-dotenv, docker compose) and for `set -a; . FILE` in sh or bash,
/// none of which runs anything in them:
///
/// * single quotes when the value has no `'`, `\` or newline: every reader
///   takes it literally (no escapes, no `$`
///   interpolation);
/// * else double quotes, with `\`, `"`, `$` and newline escaped as `\\`,
///   `\"`, `\$`, `\n`: dotenvy reads it back exactly; sh reads a newline as
///   the two characters `\n`; python-dotenv keeps `\$` as written.
///
/// python-dotenv also expands `${NAME}` in any value, quoted or not (it has
/// no escape for it): values with `${`, or with `$` and one of `'`, `\` or a
/// newline, need `--format json` (or `interpolate=False`) there.
///
/// A value that would need double quotes and holds a backtick is refused
/// (sh runs it inside double quotes, and dotenvy has no escape for it), as
/// is one that ends with a backslash (python-dotenv takes the escaped
/// backslash and the closing quote for an escaped quote), a carriage return
/// (python-dotenv reads it as a newline) and a NUL byte.
pub fn dotenv(secrets: &SecretSet) -> Result<SecretBytes, FormatError> {
    let needs_double = |v: &str| v.contains(['\'', '\\', '\n']);
    refuse(secrets, &[NUL], "dotenv", "--format json")?;
    for (name, value) in secrets {
        let value = value.expose();
        let why = if value.contains('\r') {
            "it holds a carriage return, which python-dotenv reads as a newline"
        } else if !needs_double(value) {
            continue;
        } else if value.contains('`') {
            "it holds a backtick and a quote, backslash or newline: sh would run it in double quotes and dotenv parsers cannot escape it"
        } else if value.ends_with('\\') {
            "it ends with a backslash, which python-dotenv reads as escaping the closing quote (and then misreads the lines after it)"
        } else {
            continue;
        };
        return Err(FormatError::Unrepresentable {
            name: name.clone(),
            format: "dotenv",
            why,
            instead: "--format shell or json",
        });
    }
    let vars = env_names(secrets)?;
    let size: usize = secrets
        .iter()
        .zip(&vars)
        .map(|((_, v), n)| n.len() + 4 + 2 * v.len())
        .sum();
    let mut out = SecretBytes::new(Vec::with_capacity(size));
    for ((_, value), var) in secrets.iter().zip(&vars) {
        let value = value.expose();
        out.extend_from_slice(var.as_bytes());
        out.push(b'=');
        if needs_double(value) {
            out.push(b'"');
            for c in value.bytes() {
                match c {
                    b'\\' | b'"' | b'$' => out.extend_from_slice(&[b'\\', c]),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    _ => out.push(c),
                }
            }
            out.push(b'"');
        } else {
            out.push(b'\'');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\'');
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// `NAME="value"` lines for systemd's `EnvironmentFile=`: double quotes,
/// with `\`, `"`, `$` and `` ` `` escaped by a backslash; newlines are kept
/// as they are (systemd allows them inside quotes).
pub fn systemd_env(secrets: &SecretSet) -> Result<SecretBytes, FormatError> {
    refuse(secrets, &[NUL], "systemd", "--format json")?;
    env_lines(secrets, "", b'"', |c, out| {
        if matches!(c, b'\\' | b'"' | b'$' | b'`') {
            out.push(b'\\');
        }
        out.push(c);
    })
}

/// Shell `export NAME='value'` lines, safe to `eval` or `source`: single
/// quotes, with each `'` written as `'\''`.
pub fn shell(secrets: &SecretSet) -> Result<SecretBytes, FormatError> {
    refuse(secrets, &[NUL], "shell", "--format json")?;
    env_lines(secrets, "export ", b'\'', |c, out| {
        if c == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(c);
        }
    })
}

/// One JSON object, name -> value, keys as the server names them
/// ([`SecretSet::to_json`], the set's one JSON form).
pub fn json(secrets: &SecretSet) -> SecretBytes {
    secrets.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    #[test]
    fn names_map_to_variables() {
        assert_eq!(env_var_name("db/password"), "db_password");
        assert_eq!(env_var_name("2FA-SEED"), "_2FA_SEED");
        assert_eq!(env_var_name("OK_1"), "OK_1");
        let clash = SecretSet::from(vec![
            ("a-b".to_string(), SecretValue::from("1")),
            ("a_b".to_string(), SecretValue::from("2")),
        ]);
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
            "|!@#$%^&*()_+[]{};:,<.>/?`~===",
            "\\|!@#$%^&*()_+[]{};:,<.>/?~===",
            "unicodé ✓ \t tab",
        ];
        let secrets: SecretSet = values
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
        // A backtick that would need double quotes is refused by name.
        let tick = SecretSet::from(vec![("T".to_string(), SecretValue::from("a'b`id`"))]);
        assert!(matches!(
            dotenv(&tick),
            Err(FormatError::Unrepresentable { name, .. }) if name == "T"
        ));
        let nul = SecretSet::from(vec![("N".to_string(), SecretValue::from("a\0b"))]);
        for format in [dotenv, shell, systemd_env] {
            assert!(matches!(
                format(&nul),
                Err(FormatError::Unrepresentable { name, .. }) if name == "N"
            ));
        }
    }

    #[test]
    fn shell_and_systemd_quoting() {
        let secrets = SecretSet::from(vec![(
            "A".to_string(),
            SecretValue::from("it's $HOME \\ `x` \"q\""),
        )]);
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
        let secrets = SecretSet::from(vec![("a\"b".to_string(), SecretValue::from("x\ny\"z\\"))]);
        let text = json(&secrets);
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["a\"b"], "x\ny\"z\\");
    }
}
