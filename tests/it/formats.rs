//! Every environment format against every reader it names: nothing a value
//! holds ever runs, and each reader reads the values back as the format's
//! documentation promises (`src/client/output.rs`). Readers: `sh` and
//! `bash` (`set -a; . FILE`), dotenvy, and python-dotenv (installed by
//! `.ci/test`; this test fails, never skips, without it). systemd's own
//! `EnvironmentFile=` reader needs a running systemd: the guest-machine
//! test (`nix/tests/guest/guest-test.sh`) runs it on these same values
//! (`tests/fixtures/hostile-values.json`); here the systemd format is
//! checked under sh and bash.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use locket::deliver::output::{dotenv, shell, systemd_env};
use locket::secret::SecretValue;
use locket::secret_set::SecretSet;

/// Values that try to run `touch MARKER` in every way a reader might, and
/// that play on what each reader treats specially (comments, line
/// continuations, specifiers, expansion). One list for every test that
/// needs it, the guest-machine test's systemd included.
fn hostile(marker: &Path) -> Vec<String> {
    let list: Vec<String> =
        serde_json::from_str(include_str!("../fixtures/hostile-values.json")).unwrap();
    let m = marker.display().to_string();
    list.into_iter()
        .map(|v| v.replace("@MARKER@", &m))
        .collect()
}

fn secrets(values: &[String]) -> SecretSet {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("V{i}"), SecretValue::from(v.as_str())))
        .collect()
}

/// `set -a; . FILE` in `shell`, then every `V<n>` variable.
fn source_with(shell_name: &str, file: &Path) -> BTreeMap<String, String> {
    let out = Command::new(shell_name)
        .args(["-c", "set -a; . \"$1\"; set +a; env -0", shell_name])
        .arg(file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent-home")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell_name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.starts_with('V') && k[1..].parse::<usize>().is_ok())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn dotenvy_read(file: &Path) -> BTreeMap<String, String> {
    dotenvy::from_path_iter(file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn python_dotenv_read(file: &Path) -> BTreeMap<String, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(sys.argv[1])))",
        ])
        .arg(file)
        .env("HOME", "/nonexistent-home")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python-dotenv is needed (.ci/test installs it: apt-get install python3-dotenv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn no_format_runs_anything_under_any_reader_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let values = hostile(&marker);
    let all = secrets(&values);
    let expected: BTreeMap<String, String> = all
        .iter()
        .map(|(n, v)| (n.clone(), v.expose().to_owned()))
        .collect();

    // dotenv: values it refuses are refused by name; the rest are written.
    let (carried, refused): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .partition(|s| dotenv(&SecretSet::from(vec![s.clone()])).is_ok());
    assert_eq!(
        refused.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["V14", "V15", "V20"],
        "only the backtick that needs double quotes, the trailing backslash and the carriage return are refused"
    );
    let file = dir.path().join("dotenv.env");
    let carried = SecretSet::from(carried);
    std::fs::write(&file, dotenv(&carried).unwrap().as_slice()).unwrap();
    let want: BTreeMap<String, String> = carried
        .iter()
        .map(|(n, v)| (n.clone(), v.expose().to_owned()))
        .collect();
    assert_eq!(
        dotenvy_read(&file),
        want,
        "dotenvy reads dotenv back exactly"
    );
    let python = python_dotenv_read(&file);
    assert!(
        python.keys().eq(want.keys()),
        "python-dotenv reads exactly the variables written: {:?}",
        python.keys()
    );
    for (name, value) in &want {
        // python-dotenv expands `${NAME}` in any value (it has no escape for
        // it) and keeps `\$` as written; the rest it reads back exactly.
        let needs_double = value.contains(['\'', '\\', '\n']);
        if !(value.contains("${") || needs_double && value.contains('$')) {
            assert_eq!(python.get(name), Some(value), "python-dotenv, {name}");
        }
    }
    for sh in ["sh", "bash"] {
        let read = source_with(sh, &file);
        assert!(
            read.keys().eq(want.keys()),
            "{sh} reads exactly the variables written"
        );
        for (name, value) in &want {
            if !value.contains('\n') {
                assert_eq!(read.get(name), Some(value), "{sh} reading dotenv, {name}");
            }
        }
    }

    // shell and systemd: every value, read back exactly by sh and bash.
    for (format, text) in [
        ("shell", shell(&all).unwrap()),
        ("systemd", systemd_env(&all).unwrap()),
    ] {
        let file = dir.path().join(format!("{format}.env"));
        std::fs::write(&file, text.as_slice()).unwrap();
        for sh in ["sh", "bash"] {
            assert_eq!(source_with(sh, &file), expected, "{sh} reading {format}");
        }
    }
    assert!(!marker.exists(), "a value ran a command");
}
