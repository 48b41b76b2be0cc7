//! `exec`: replace this process with a command whose environment holds the
//! secrets, so that nothing but the command ever sees them.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::output::env_var_name;
use crate::secret::SecretValue;

/// Whether `name` can be an environment variable name here.
pub fn valid_var_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The variables to set: each secret under `prefix` + its mapped name
/// ([`env_var_name`]), or under the name given in `renames`
/// (secret name -> variable name, no prefix added).
pub fn variables(
    secrets: &[(String, SecretValue)],
    prefix: &str,
    renames: &BTreeMap<String, String>,
) -> Result<Vec<(String, SecretValue)>, String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(secrets.len());
    for (name, value) in secrets {
        let var = match renames.get(name) {
            Some(v) => v.clone(),
            None => format!("{prefix}{}", env_var_name(name)),
        };
        if !valid_var_name(&var) {
            return Err(format!(
                "{var:?} (for secret {name:?}) is not a valid variable name; choose another with --as {name}=NAME"
            ));
        }
        if let Some(other) = seen.insert(var.clone(), name) {
            return Err(format!(
                "secrets {other:?} and {name:?} both map to {var}; rename one with --as NAME=VAR"
            ));
        }
        out.push((var, value.clone()));
    }
    Ok(out)
}

/// Replaces this process with `command`. The environment is this process's
/// own, less every `LOCKET_*` variable (the client's settings, including
/// where its key is), plus `vars`. Returns only if the exec failed.
pub fn exec(command: &[String], vars: &[(String, SecretValue)]) -> std::io::Error {
    let Some((program, args)) = command.split_first() else {
        return std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given");
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("LOCKET_")) {
            cmd.env_remove(&key);
        }
    }
    for (var, value) in vars {
        cmd.env(var, value.expose());
    }
    cmd.exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_renames() {
        let s = vec![
            ("db/password".to_string(), SecretValue::from("x")),
            ("API".to_string(), SecretValue::from("y")),
        ];
        let mut renames = BTreeMap::new();
        let v = variables(&s, "APP_", &renames).unwrap();
        assert_eq!(
            v.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["APP_db_password", "APP_API"]
        );
        renames.insert("API".to_string(), "TOKEN".to_string());
        let v = variables(&s, "", &renames).unwrap();
        assert_eq!(v[1].0, "TOKEN");
        renames.insert("API".to_string(), "1BAD".to_string());
        assert!(variables(&s, "", &renames).is_err());
        renames.insert("API".to_string(), "db_password".to_string());
        assert!(
            variables(&s, "", &renames)
                .unwrap_err()
                .contains("both map")
        );
    }
}
