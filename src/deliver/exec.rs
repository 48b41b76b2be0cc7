//! `exec`: replace this process with a command whose environment holds the
//! secrets, so that nothing but the command ever sees them.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::output::env_var_name;
use crate::secret_set::SecretSet;

/// Whether `name` can be an environment variable name here.
pub fn valid_var_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why the secrets cannot become variables as asked. Names only, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum VariableError {
    #[error(
        "{var:?} (for secret {name:?}) is not a valid variable name; choose another with --as {name}=NAME"
    )]
    Invalid { var: String, name: String },
    #[error(
        "--as {name}={var}: no fetched secret is named {name:?}; check the name (ask for it, and check that it is granted)"
    )]
    UnknownRename { name: String, var: String },
    #[error("secrets {first:?} and {second:?} both map to {var}; rename one with --as NAME=VAR")]
    Collision {
        first: String,
        second: String,
        var: String,
    },
}

/// The variables to set: each secret under `prefix` + its mapped name
/// ([`env_var_name`]), or under the name given in `renames`
/// (secret name -> variable name, no prefix added).
pub fn variables(
    secrets: &SecretSet,
    prefix: &str,
    renames: &BTreeMap<String, String>,
) -> Result<SecretSet, VariableError> {
    if let Some((name, var)) = renames
        .iter()
        .find(|(name, _)| !secrets.iter().any(|(n, _)| n == *name))
    {
        return Err(VariableError::UnknownRename {
            name: name.clone(),
            var: var.clone(),
        });
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = SecretSet::with_capacity(secrets.len());
    for (name, value) in secrets {
        let var = match renames.get(name) {
            Some(v) => v.clone(),
            None => format!("{prefix}{}", env_var_name(name)),
        };
        if !valid_var_name(&var) {
            return Err(VariableError::Invalid {
                var,
                name: name.clone(),
            });
        }
        if let Some(other) = seen.insert(var.clone(), name) {
            return Err(VariableError::Collision {
                first: other.to_owned(),
                second: name.clone(),
                var,
            });
        }
        out.push(var, value.clone());
    }
    Ok(out)
}

/// Variables that change how programs run rather than what they are told:
/// the shell's and the dynamic loader's, and the module search paths and
/// startup options of common interpreters. A secret that a server sends
/// under one of these names reaches an environment only when the operator
/// asked for it by name (or passed `--allow-loader-vars`): a grant of
/// `APP_*` or "everything granted" must not let whoever controls the
/// values, or a substituted server, choose which program runs.
pub const LOADER_VARIABLES: &[&str] = &[
    // Shells.
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "GLOBIGNORE",
    // The C library and the dynamic loader (with every LD_* and DYLD_*).
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    // Interpreters and runtimes.
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "LUA_PATH",
    "LUA_CPATH",
    "LUA_INIT",
    "TCLLIBPATH",
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    // Programs other programs start, and where they look for their config.
    "PAGER",
    "MANPAGER",
    "GIT_PAGER",
    "EDITOR",
    "VISUAL",
    "BROWSER",
    "LESSOPEN",
    "LESSCLOSE",
    "LESSKEY",
    "HOME",
    "TMPDIR",
    "SHELL",
    "TERMINFO",
    // The C library's own tuning, which has been an exploit vector.
    "GLIBC_TUNABLES",
    "MALLOC_CHECK_",
    // Where TLS clients find their trust roots.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    // More runtimes.
    "JAVA_OPTS",
    "MAVEN_OPTS",
    "GRADLE_OPTS",
    "DOTNET_STARTUP_HOOKS",
    "RUBYGEMS_GEMDEPS",
    "BUNDLE_GEMFILE",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
];

/// Families of variables that change how programs run, by prefix.
const LOADER_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    // git's config from the environment (GIT_CONFIG_KEY_0 = core.fsmonitor
    // runs a command), and every other GIT_* switch.
    "GIT_",
    "LESS",
    "XDG_",
    "PYTHON",
    "PERL",
    "NODE_",
    "NPM_CONFIG_",
    "RUBY",
    "JAVA_",
    "JDK_",
    "DOTNET_",
    "COMPLUS_",
    "CORECLR_",
    "LUA_",
    "MALLOC_",
    "SYSTEMD_",
];

/// Families of variables that change how programs run, by suffix.
const LOADER_SUFFIXES: &[&str] = &["_PRELOAD", "_PROXY", "_proxy", "_OPTIONS"];

/// Whether `var` may change how programs run, and so passes only when it
/// was asked for by name. The rule allows rather than forbids: a variable
/// delivered in bulk must be a plain name (`[A-Za-z_][A-Za-z0-9_]*`)
/// outside [`LOADER_VARIABLES`] and the families above (`LD_*`, `GIT_*`,
/// `*_PROXY`, `*_PRELOAD`, ...), which cover what the security reviews ran
/// commands through. A list cannot name every program's variable: ask
/// for secrets by name where it matters (`env NAME...`, `exec --only`).
pub fn changes_how_programs_run(var: &str) -> bool {
    let plain = var
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    !plain
        || LOADER_VARIABLES.contains(&var)
        || LOADER_PREFIXES.iter().any(|p| var.starts_with(p))
        || LOADER_SUFFIXES.iter().any(|s| var.ends_with(s))
}

/// Removes from `secrets` each one whose variable (`var_of(name)`) changes
/// how programs run and whose name is not in `requested`; returns the
/// names removed, for a warning (names only).
pub fn withhold_loader_variables(
    secrets: &mut SecretSet,
    requested: &[String],
    var_of: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut withheld = Vec::new();
    secrets.retain(|name, _| {
        let keep = !changes_how_programs_run(&var_of(name)) || requested.iter().any(|r| r == name);
        if !keep {
            withheld.push(name.to_owned());
        }
        keep
    });
    withheld
}

/// Replaces this process with `command`. The environment is this process's
/// own, less every `LOCKET_*` variable (the client's settings, including
/// where its key is), plus `vars`. Returns only if the exec failed.
pub fn exec(command: &[String], vars: &SecretSet) -> std::io::Error {
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
    use crate::secret::SecretValue;

    #[test]
    fn loader_variables_need_to_be_asked_for() {
        let mut s: SecretSet = ["DB", "PATH", "LD_AUDIT", "X_PRELOAD", "BASH_ENV"]
            .iter()
            .map(|n| (n.to_string(), SecretValue::from("v")))
            .collect();
        let withheld = withhold_loader_variables(&mut s, &["PATH".to_string()], |n| n.to_string());
        assert_eq!(withheld, ["LD_AUDIT", "X_PRELOAD", "BASH_ENV"]);
        assert_eq!(
            s.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["DB", "PATH"]
        );
        // Under a prefix, the same names are harmless.
        let mut s = SecretSet::from(vec![("PATH".to_string(), SecretValue::from("v"))]);
        assert!(withhold_loader_variables(&mut s, &[], |n| format!("APP_{n}")).is_empty());
        assert!(
            !changes_how_programs_run("PATHS") && changes_how_programs_run("DYLD_INSERT_LIBRARIES")
        );
        // What the second review ran commands through, or named.
        for var in [
            "GIT_CONFIG_KEY_0",
            "GIT_CONFIG_VALUE_0",
            "GIT_CONFIG_COUNT",
            "LESSOPEN",
            "GLIBC_TUNABLES",
            "PAGER",
            "EDITOR",
            "HOME",
            "HTTPS_PROXY",
            "http_proxy",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "NODE_OPTIONS",
            "RUBYOPT",
            "JAVA_TOOL_OPTIONS",
            "no_proxy",
            "1LEADING_DIGIT",
            "WITH-DASH",
        ] {
            assert!(changes_how_programs_run(var), "{var}");
        }
        for var in [
            "DB_PASSWORD",
            "API_TOKEN",
            "STRIPE_SECRET_KEY",
            "DATABASE_URL",
            "svc_password",
            "_X",
        ] {
            assert!(!changes_how_programs_run(var), "{var}");
        }
    }

    #[test]
    fn names_prefixes_and_renames() {
        let s = SecretSet::from(vec![
            ("db/password".to_string(), SecretValue::from("x")),
            ("API".to_string(), SecretValue::from("y")),
        ]);
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
        assert_eq!(
            variables(&s, "", &renames).unwrap_err(),
            VariableError::Collision {
                first: "db/password".into(),
                second: "API".into(),
                var: "db_password".into()
            }
        );
        // A rename for a secret that was not fetched is an error, not a no-op.
        renames.clear();
        renames.insert("a=b".to_string(), "X".to_string());
        assert_eq!(
            variables(&s, "", &renames).unwrap_err(),
            VariableError::UnknownRename {
                name: "a=b".into(),
                var: "X".into()
            }
        );
    }
}
