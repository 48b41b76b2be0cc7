//! `locket plan`: what a config change grants and takes away, per client,
//! with exit codes a deploy script can use (0 none, 2 changes, 1 error);
//! against a named file or the config of the server running on the host;
//! and the same changes in the server's log when a reload applies them.

use std::path::Path;
use std::process::Command;

use crate::support::{Registered, ServerProcess, run_server_cmd, write_server_files};

fn old_clients() -> Vec<Registered> {
    vec![
        Registered::new("web", 21, &["10.0.0.2"], &["DB_*", "OLD"]),
        Registered::new("gone", 22, &["10.0.0.3"], &["A"]),
        Registered::new("same", 23, &["127.0.0.0/8"], &["A"]),
    ]
}

fn new_clients() -> Vec<Registered> {
    vec![
        Registered::new("web", 21, &["10.0.0.2", "10.0.1.0/24"], &["DB_*", "NEW"]),
        Registered::new("fresh", 24, &["10.0.0.5"], &["B"]),
        Registered::new("same", 23, &["127.0.0.0/8"], &["A"]),
    ]
}

const SECRETS: &str = "A=a-value\nB=b-value\nDB_PASSWORD=db-value\nNEW=new-value\nOLD=old-value\n";

/// `old.toml` and `new.toml` in `dir` (one server key, one secrets file).
fn configs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let new = write_server_files(dir, SECRETS, &new_clients(), "");
    std::fs::rename(&new, dir.join("new.toml")).unwrap();
    let old = write_server_files(dir, SECRETS, &old_clients(), "");
    std::fs::rename(&old, dir.join("old.toml")).unwrap();
    (dir.join("old.toml"), dir.join("new.toml"))
}

#[test]
fn plan_names_every_change_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = configs(dir.path());
    let (code, out, err) = run_server_cmd(
        &[
            "plan",
            "--config",
            "new.toml",
            "--against",
            "old.toml",
            "--resolve",
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{out}{err}");
    for line in [
        "plan: old.toml -> new.toml",
        "+ client fresh",
        "    may read: B",
        "- client gone",
        "    could read: A",
        "~ client web",
        "    grants added: NEW",
        "    grants removed: OLD",
        "    may newly read: NEW",
        "    may no longer read: OLD",
        "    networks added: 10.0.1.0/24",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    assert!(
        !out.contains("same"),
        "an unchanged client is not listed:\n{out}"
    );
    for value in ["a-value", "b-value", "db-value", "new-value", "old-value"] {
        assert!(
            !out.contains(value) && !err.contains(value),
            "a value leaked"
        );
    }
    // No change: exit 0.
    let (code, out, _) = run_server_cmd(
        &["plan", "--config", "new.toml", "--against", "new.toml"],
        dir.path(),
    );
    assert_eq!((code, out.lines().last()), (0, Some("no changes")));
}

#[test]
fn plan_errors_exit_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = configs(dir.path());
    let (code, _, err) = run_server_cmd(
        &["plan", "--config", "new.toml", "--against", "missing.toml"],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
    // A usage error is 1 too: 2 means "changes" here.
    let (code, _, _) = run_server_cmd(&["plan", "--config", "new.toml", "--bogus"], dir.path());
    assert_eq!(code, 1);
    std::fs::write(dir.path().join("bad.toml"), "listen = [").unwrap();
    let (code, _, err) = run_server_cmd(
        &["plan", "--config", "bad.toml", "--against", "old.toml"],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

/// `locket serve --config old.toml` in the background until it listens,
/// then `locket plan --config new.toml`; exits with plan's code.
const SERVE_THEN_PLAN: &str = r#"
    "$0" serve --config old.toml 2>server.log &
    until grep -q "listening on" server.log; do
        kill -0 $! 2>/dev/null || { cat server.log; exit 99; }
        sleep 0.1
    done
    "$0" plan --config new.toml; rc=$?
    kill $!
    exit $rc
"#;

/// Without `--against`, the running server's own config file: a server
/// and `plan` in a PID namespace of their own (as root, as CI runs), so
/// that other tests' servers are not seen.
#[test]
fn plan_compares_with_the_running_servers_config_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = configs(dir.path());
    let script = SERVE_THEN_PLAN;
    let out = in_pid_namespace(dir.path(), script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = dir.path().join("old.toml");
    assert!(
        stdout.starts_with(&format!("plan: {} -> new.toml", old.display())),
        "{stdout}"
    );
    assert!(stdout.contains("- client gone"), "{stdout}");
    // And with no server running: exit 1, saying what to do.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_locket"))
        .args(["plan", "--config", "new.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--against"));
}

/// A reload that applies a registry change logs it, client by client.
#[test]
fn a_reload_logs_what_the_registry_change_grants() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &old_clients(), "");
    let server = ServerProcess::start(&config, &[]);
    write_server_files(dir.path(), SECRETS, &new_clients(), "");
    assert!(server.reload().contains("config reloaded"));
    let log = server.stop();
    for (client, change) in [
        ("fresh", "added"),
        ("gone", "removed"),
        (
            "web",
            "grants added NEW; grants removed OLD; networks added 10.0.1.0/24",
        ),
    ] {
        assert!(
            log.lines().any(|l| l.contains("registry change")
                && l.contains(&format!("client={client}"))
                && l.contains(change)),
            "{client}: {change} in\n{log}"
        );
    }
    assert!(!log.contains("client=same"), "{log}");
}

/// Runs `script` with bash in a PID namespace of its own (as root, as CI
/// runs), with this locket as `$0`, in `dir`: other tests' servers are not
/// seen, and everything it starts ends with it.
fn in_pid_namespace(dir: &Path, script: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "bash", "-c", script])
        .arg(env!("CARGO_BIN_EXE_locket"))
        .current_dir(dir)
        .output()
        .expect("unshare (util-linux; .ci/test installs it; needs root)")
}

/// The first review's HIGH finding: a local user's process that merely
/// calls itself `locket ... serve --config evil.toml` was taken for the
/// running server, and `plan --resolve` then ran evil.toml's command
/// source as root. It must not count: its executable is not this locket
/// and its owner is not root.
#[test]
fn plan_never_trusts_a_process_that_only_calls_itself_locket() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = configs(dir.path());
    // Readable by the impostor's user, as its own files would be.
    let evil_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        evil_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        evil_dir.path().join("evil.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nkey_file = \"k.pem\"\n[[sources]]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"id > {}; echo '{{}}'\"]\n",
            dir.path().join("PWNED").display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"
        cd {evil}
        setpriv --reuid=65534 --regid=65534 --clear-groups \
          bash -c 'exec -a locket python3 -c "import time; time.sleep(60)" serve --config evil.toml' &
        # Until python runs under its false name (before that, the process
        # is setpriv, then bash, whose command lines only contain the words).
        until [ "$(head -c 6 /proc/$!/cmdline 2>/dev/null)" = locket ] && grep -q "^Uid:.*65534" /proc/$!/status; do
            kill -0 $! 2>/dev/null || exit 99
            sleep 0.05
        done
        cd {dir}
        "$0" plan --config new.toml --resolve; rc=$?
        kill $!
        exit $rc
    "#,
        evil = evil_dir.path().display(),
        dir = dir.path().display()
    );
    let out = in_pid_namespace(dir.path(), &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !dir.path().join("PWNED").exists(),
        "plan ran the impostor's command: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--against"), "{stderr}");
    assert!(
        stderr.contains("uid 65534"),
        "the skipped process is named: {stderr}"
    );
}

/// A real server whose config others may write: its config is not read
/// (another user could have put a command source in it), and plan says so.
#[test]
fn plan_refuses_a_running_servers_config_that_others_can_write() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = configs(dir.path());
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = SERVE_THEN_PLAN;
    let out = in_pid_namespace(dir.path(), script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("old.toml") && stderr.contains("chmod go-w"),
        "{stderr}"
    );
}
