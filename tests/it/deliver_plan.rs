//! Delivery to consumers (#15) through the real binaries: templates,
//! `deliver --plan` (the module's fetch units and its one watcher), restart
//! actions once per change, and the boot cache with the real
//! `systemd-creds`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    Registered, ServerProcess, client_command, run_client_pinned, write_server_files,
};

const SECRETS: &str = "APP_USER=alice\nAPP_PASS=\"p@ss word\"\nOTHER=nope\n";

fn clients() -> Vec<Registered> {
    vec![Registered::new("app", 41, &["127.0.0.1"], &["APP_*"])]
}

pub(crate) fn key_file(dir: &Path) -> String {
    let path = dir.join("app.key");
    if !path.exists() {
        locket::keys::ClientKey::from_seed(&[41; 32])
            .write_new(&path)
            .unwrap();
    }
    path.to_string_lossy().into_owned()
}

/// `locket-client` as `app` against `server`, with a short timeout.
pub(crate) fn app_args(server: &str, key: &str) -> Vec<String> {
    [
        "--server",
        server,
        "--name",
        "app",
        "--key",
        key,
        "--timeout",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String], more: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(more);
    run_client_pinned(&all, cwd)
}

/// `locket-client deliver --plan PLAN [MORE...]` as `app`.
fn deliver(args: &[String], plan: &Path, more: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut all = vec!["deliver", "--plan", plan.to_str().unwrap()];
    all.extend_from_slice(more);
    run(args, &all, cwd)
}

pub(crate) fn wait_for(what: &str, check: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn render_template_fills_placeholders_and_a_bad_one_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let args = app_args(&server.url(), &key_file(dir.path()));
    let out = dir.path().join("out");
    let template = dir.path().join("app.ini.tmpl");
    std::fs::write(
        &template,
        "[db]\nuser = {{ APP_USER }}\npass = {{APP_PASS}}\nliteral = {{ \"{{\" }}\n",
    )
    .unwrap();
    let out_s = out.to_str().unwrap();
    let t = template.to_str().unwrap();
    let (code, _, err) = run(
        &args,
        &["render", "--dir", out_s, "--template", t],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read(&out.join("app.ini")).as_deref(),
        Some("[db]\nuser = alice\npass = p@ss word\nliteral = {{\n")
    );
    assert_eq!(read(&out.join("APP_USER")).as_deref(), Some("alice"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("app.ini"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o400);

    // An unknown name: exit 2, the error names it, and nothing delivered
    // is touched (not the template's file, not the secrets).
    std::fs::write(&template, "pass = {{ APP_PASSWORD }}\n").unwrap();
    std::fs::write(dir.path().join("secrets.env"), "APP_USER=bob\nAPP_PASS=x\n").unwrap();
    server.reload();
    let (code, _, err) = run(
        &args,
        &["render", "--dir", out_s, "--template", t],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown secret \"APP_PASSWORD\"") && err.contains("line 1"),
        "{err}"
    );
    assert!(
        !err.contains("p@ss") && !err.contains("bob"),
        "no value in the error: {err}"
    );
    assert_eq!(
        read(&out.join("APP_USER")).as_deref(),
        Some("alice"),
        "nothing rewritten"
    );
    assert!(
        read(&out.join("app.ini")).unwrap().contains("p@ss word"),
        "template output kept"
    );

    // A value with a newline: `| ini` refuses it by name (no line is
    // injected, nothing is rewritten); `| json` writes it escaped.
    std::fs::write(
        dir.path().join("secrets.env"),
        "APP_USER=alice\nAPP_PASS=\"x\nadmin = true\"\n",
    )
    .unwrap();
    server.reload();
    std::fs::write(&template, "[db]\npass = {{ APP_PASS | ini }}\n").unwrap();
    let (code, _, err) = run(
        &args,
        &["render", "--dir", out_s, "--template", t],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("\"APP_PASS\"") && err.contains("control character"),
        "{err}"
    );
    assert!(!err.contains("admin"), "{err}");
    assert!(!read(&out.join("app.ini")).unwrap().contains("admin"));
    let json = dir.path().join("app.json.tmpl");
    std::fs::write(&json, "{\"pass\": {{ APP_PASS | json }}}\n").unwrap();
    let (code, _, err) = run(
        &args,
        &[
            "render",
            "--dir",
            out_s,
            "--template",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let parsed: serde_json::Value =
        serde_json::from_str(&read(&out.join("app.json")).unwrap()).unwrap();
    assert_eq!(parsed["pass"], "x\nadmin = true");
    std::fs::write(&template, "pass = {{ APP_PASSWORD }}\n").unwrap();

    // An unreadable template: exit 2 naming the file, before any fetch.
    let missing = dir.path().join("nope.tmpl");
    let (code, _, err) = run(
        &args,
        &[
            "render",
            "--dir",
            out_s,
            "--template",
            missing.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read template") && err.contains("nope.tmpl"),
        "{err}"
    );
    assert_eq!(read(&out.join("APP_USER")).as_deref(), Some("alice"));
    server.stop();
}

/// A stand-in for `systemctl` that logs its arguments and knows every unit
/// but `missing.service` (the module's watcher runs the real one; the
/// guest-machine test runs it under a real systemd).
pub(crate) fn fake_systemctl(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("systemctl.log");
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\n[ \"$1\" = --user ] && shift\ncase \"$1\" in show) case \"$*\" in *missing.service*) echo not-found;; *) echo loaded;; esac;; esac\n",
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, log)
}

fn plan(dir: &Path, systemctl: &Path, restart_a: &str, extra: &str) -> PathBuf {
    let path = dir.join("delivery.toml");
    std::fs::write(
        &path,
        format!(
            r#"status_file = "{d}/status.json"
systemctl = "{s}"
{extra}
[consumers.a]
dir = "{d}/run/a"
secrets = ["APP_USER"]
env_file = "{d}/run/a/env"
restart_units = ["{restart_a}", "shared.service"]
on_change = ["/bin/sh", "-c", "echo a >> {d}/hooks.log"]
[consumers.a.templates."a.conf"]
content = "user={{{{ APP_USER }}}}\n"
mode = "0440"

[consumers.b]
dir = "{d}/run/b"
secrets = ["APP_PASS"]
restart_units = ["shared.service"]
reload_units = ["b.service"]
on_change = ["/bin/sh", "-c", "echo b >> {d}/hooks.log"]
"#,
            d = dir.display(),
            s = systemctl.display(),
        ),
    )
    .unwrap();
    path
}

/// `deliver --plan PLAN --consumer CONSUMER` with `args`, pinned to
/// `fingerprint` (another server's key: a pin mismatch, which is an
/// answer, never an outage); its exit code and stderr.
fn deliver_pinned_to(
    args: &[String],
    plan: &Path,
    consumer: &str,
    fingerprint: &str,
    d: &Path,
) -> (Option<i32>, String) {
    let out = client_command()
        .env("LOCKET_SERVER_FINGERPRINT", fingerprint)
        .args(args)
        .args([
            "deliver",
            "--plan",
            plan.to_str().unwrap(),
            "--consumer",
            consumer,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The fetch units: each consumer delivered once, before it starts.
fn deliver_each(args: &[String], plan: &Path, d: &Path) {
    for c in ["a", "b"] {
        let (code, _, err) = deliver(args, plan, &["--consumer", c], d);
        assert_eq!(code, 0, "{err}");
    }
}

/// Ends the watcher with SIGTERM (a clean exit) and the server.
pub(crate) fn stop(mut watcher: std::process::Child, server: ServerProcess) {
    crate::support::signal(watcher.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(watcher.wait().unwrap().success());
    server.stop();
}

pub(crate) fn status(dir: &Path) -> serde_json::Value {
    read(&dir.join("status.json"))
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub(crate) fn rounds(dir: &Path) -> u64 {
    status(dir)["rounds"].as_u64().unwrap_or(0)
}

/// A running server with the test's secrets, `app`'s client arguments for
/// it, and the stand-in `systemctl`, all in one temporary folder.
pub(crate) struct Setup {
    pub dir: tempfile::TempDir,
    pub server: ServerProcess,
    pub args: Vec<String>,
    pub systemctl: PathBuf,
    pub systemctl_log: PathBuf,
}

pub(crate) fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = write_server_files(d, SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let args = app_args(&server.url(), &key_file(d));
    let (systemctl, systemctl_log) = fake_systemctl(d);
    Setup {
        dir,
        server,
        args,
        systemctl,
        systemctl_log,
    }
}

#[test]
fn one_watcher_one_request_per_round_and_one_restart_per_change() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        systemctl_log,
    } = setup();
    let d = dir.path();
    let plan = plan(d, &systemctl, "a.service", "");
    let plan_s = plan.to_str().unwrap();

    // The fetch units: one consumer each, before it starts; no actions.
    for c in ["a", "b"] {
        let (code, _, err) = deliver(&args, &plan, &["--consumer", c], d);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(read(&d.join("run/a/APP_USER")).as_deref(), Some("alice"));
    assert_eq!(
        read(&d.join("run/a/a.conf")).as_deref(),
        Some("user=alice\n")
    );
    assert_eq!(
        read(&d.join("run/b/APP_PASS")).as_deref(),
        Some("p@ss word")
    );
    assert!(
        !d.join("run/a/APP_PASS").exists(),
        "a gets only its own secret"
    );
    assert!(!d.join("hooks.log").exists());

    // The folder may belong to the consumer: a link it plants as the
    // marker is replaced, never written through.
    let victim = d.join("victim");
    std::fs::write(&victim, "victim").unwrap();
    let marker = d.join("run/a/.locket-origin");
    std::fs::remove_file(&marker).unwrap();
    std::os::unix::fs::symlink(&victim, &marker).unwrap();
    let (code, _, err) = deliver(&args, &plan, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&victim).as_deref(), Some("victim"));
    assert!(
        std::fs::symlink_metadata(&marker)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(read(&marker).as_deref(), Some("server"));

    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(&["deliver", "--plan", plan_s, "--watch", "100ms"]);
    let watcher = client_command()
        .args(&all)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("watcher.log")).unwrap())
        .spawn()
        .unwrap();
    let more_rounds = |n: u64| {
        let start = rounds(d);
        wait_for("more watch rounds", &|| rounds(d) >= start + n);
    };
    more_rounds(4);
    // Nothing changed: no restart, no reload, no hook (only the start-up
    // check of the units ran).
    let calls = || read(&systemctl_log).unwrap_or_default();
    assert!(
        calls().lines().all(|l| l.starts_with("show ")),
        "{}",
        calls()
    );
    assert!(!d.join("hooks.log").exists(), "no change, no hook");
    let s = status(d);
    assert!(s["last_success"].is_string(), "{s}");
    assert_eq!(s["consumers"]["a"]["origin"], "server", "{s}");

    // One request per round for both consumers: the server answers at
    // most one request per round (two would be one per consumer).
    let answered = |server: &ServerProcess| server.log().matches(" answered").count() as u64;
    let (a0, r0) = (answered(&server), rounds(d));
    more_rounds(4);
    let (r1, a1) = (rounds(d), answered(&server));
    assert!(
        a1 - a0 <= r1 - r0 + 1,
        "{} requests in {} rounds",
        a1 - a0,
        r1 - r0
    );

    // Both values change at once: each consumer's hook runs once, the unit
    // both name is restarted once, and b's reload comes in the same round.
    std::fs::write(d.join("secrets.env"), "APP_USER=bob\nAPP_PASS=new\n").unwrap();
    server.reload();
    wait_for("rewrite", &|| {
        read(&d.join("run/a/a.conf")).as_deref() == Some("user=bob\n")
    });
    wait_for("hooks", &|| {
        read(&d.join("hooks.log")).is_some_and(|h| h.lines().count() == 2)
    });
    more_rounds(3);
    let mut hooks: Vec<String> = read(&d.join("hooks.log"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    hooks.sort();
    assert_eq!(
        hooks,
        ["a", "b"],
        "one hook run per consumer for one change"
    );
    let actions: Vec<String> = calls()
        .lines()
        .filter(|l| !l.starts_with("show "))
        .map(String::from)
        .collect();
    assert_eq!(
        actions,
        [
            "try-restart -- a.service shared.service",
            "try-reload-or-restart -- b.service"
        ],
        "one restart for changes that arrived together"
    );
    assert_eq!(read(&d.join("run/b/APP_PASS")).as_deref(), Some("new"));
    let log = read(&d.join("watcher.log")).unwrap();
    assert!(log.contains("consumer a: changed: APP_USER"), "{log}");
    assert!(
        !log.contains("bob") && !log.contains("new\n"),
        "names only: {log}"
    );
    assert_eq!(status(d)["consumers"]["a"]["changes"], 1);

    // A stopped consumer (its folder removed by its fetch unit) is not
    // delivered again by the watcher.
    std::fs::remove_dir_all(d.join("run/b")).unwrap();
    more_rounds(3);
    assert!(
        !d.join("run/b").exists(),
        "the watcher put secrets back for a stopped consumer"
    );
    assert_eq!(status(d)["consumers"]["b"]["origin"], "not delivered");

    stop(watcher, server);
}

#[test]
fn a_restart_target_that_does_not_exist_stops_the_watcher_before_it_delivers() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    let good = plan(d, &systemctl, "a.service", "");
    let (code, _, err) = deliver(&args, &good, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    std::fs::write(d.join("secrets.env"), "APP_USER=bob\n").unwrap();
    server.reload();
    let bad = plan(d, &systemctl, "missing.service", "");
    let (code, _, err) = deliver(&args, &bad, &["--watch", "1s"], d);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("consumer a: restart/reload target missing.service does not exist"),
        "{err}"
    );
    assert_eq!(
        read(&d.join("run/a/APP_USER")).as_deref(),
        Some("alice"),
        "nothing delivered"
    );

    // A plan that does not parse names the file; an unknown consumer is named.
    std::fs::write(d.join("broken.toml"), "[consumers.a]\ndir = 3\n").unwrap();
    let (code, _, err) = deliver(&args, &d.join("broken.toml"), &[], d);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.toml"), "{err}");
    let (code, _, err) = deliver(&args, &good, &["--consumer", "zz"], d);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no consumer \"zz\"") && err.contains("a, b"),
        "{err}"
    );
    server.stop();
}

/// The boot cache, with the real `systemd-creds` (host key; needs root).
#[test]
fn the_boot_cache_stands_in_only_when_no_server_answers_and_only_within_its_max_age() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    let plan_path = cache_plan(d, &systemctl, &which("systemd-creds"));

    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    let cred = d.join("cache/a.cred");
    let bytes = std::fs::read(&cred).expect("a cached copy is written");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("alice"),
        "encrypted"
    );
    assert!(!d.join("cache/b.cred").exists(), "b did not opt in");

    // Never used while a server answers: a stale copy is replaced.
    let plan = locket::deliver::DeliveryPlan::load(&plan_path).unwrap();
    let cache = plan.cache().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cache.store(
        "a",
        &locket::secret_set::SecretSet::from(vec![("APP_USER".into(), "stale".into())]),
        std::time::SystemTime::now(),
    ))
    .unwrap();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&d.join("run/a/APP_USER")).as_deref(), Some("alice"));

    // A pin mismatch is an answer, not an outage: the copy never stands
    // in for it, with one server or with two (the other one down).
    let other = locket::keys::ServerKey::generate(2048).unwrap();
    std::fs::remove_dir_all(d.join("run/a")).unwrap();
    for servers in [
        vec![server.url()],
        vec![server.url(), "http://127.0.0.1:9".into()],
    ] {
        let mut all: Vec<String> = Vec::new();
        for s in &servers {
            all.extend(["--server".to_string(), s.clone()]);
        }
        all.extend(args.iter().skip(2).cloned());
        let (code, err) = deliver_pinned_to(&all, &plan_path, "a", other.fingerprint(), d);
        assert_ne!(code, Some(0), "{err}");
        assert!(
            !err.contains("delivered the cached copy"),
            "{servers:?}: {err}"
        );
        assert!(!d.join("run/a/APP_USER").exists(), "{servers:?}: {err}");
    }

    // A copy dated in the future (a clock that was a year behind when it
    // was written, say) is refused and kept, never taken as new.
    let next_year = std::time::SystemTime::now() + Duration::from_secs(365 * 86_400);
    rt.block_on(cache.store(
        "a",
        &locket::secret_set::SecretSet::from(vec![("APP_USER".into(), "future".into())]),
        next_year,
    ))
    .unwrap();
    server.stop();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in the future"), "{err}");
    assert!(cred.exists());
    assert!(!d.join("run/a").exists());
    // Put back a good copy for what follows.
    rt.block_on(cache.store(
        "a",
        &locket::secret_set::SecretSet::from(vec![("APP_USER".into(), "alice".into())]),
        std::time::SystemTime::now(),
    ))
    .unwrap();

    // No server: the copy stands in, and says so.
    assert!(!d.join("run/a").exists());
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no server answered") && err.contains("delivered the cached copy"),
        "{err}"
    );
    assert_eq!(read(&d.join("run/a/APP_USER")).as_deref(), Some("alice"));
    assert_eq!(
        read(&d.join("run/a/a.conf")).as_deref(),
        Some("user=alice\n")
    );
    assert!(
        read(&d.join("run/a/.locket-origin"))
            .unwrap()
            .starts_with("cache ")
    );
    // b has no cache: it fails with the fetch's error.
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "b"], d);
    assert_eq!(code, 1, "{err}");
    assert!(!d.join("run/b/APP_PASS").exists());

    // Older than its max age: deleted, and the consumer gets nothing.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    rt.block_on(cache.store(
        "a",
        &locket::secret_set::SecretSet::from(vec![("APP_USER".into(), "old".into())]),
        two_hours_ago,
    ))
    .unwrap();
    std::fs::remove_dir_all(d.join("run/a")).unwrap();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than cache_max_age (1h)") && err.contains("was deleted"),
        "{err}"
    );
    assert!(!cred.exists(), "the expired copy is deleted");
    assert!(!d.join("run/a").exists(), "nothing delivered");

    // A copy that does not decrypt: named, kept, nothing delivered.
    std::fs::write(&cred, b"garbage").unwrap();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot decrypt the cached copy") && err.contains("a.cred"),
        "{err}"
    );
    assert!(cred.exists());
    assert!(!d.join("run/a").exists());
}

/// The watcher and a fetch unit may store one consumer's copy at the same
/// time: each writes its own temporary file, so neither loses its write
/// or finds its file gone. A wrapper around the real `systemd-creds` holds
/// every encryption until both have written theirs.
#[test]
fn two_deliveries_storing_one_copy_at_once_both_succeed() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    let wrapper = d.join("systemd-creds");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh
{real} \"$@\" || exit $?
[ \"$1\" = encrypt ] || exit 0
touch {d}/arrived.$$
n=0
until [ -e {d}/go ]; do n=$((n + 1)); [ $n -lt 1200 ] || exit 9; sleep 0.05; done
",
            real = which("systemd-creds").display(),
            d = d.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan_path = cache_plan(d, &systemctl, &wrapper);

    let spawn = || {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(&[
            "deliver",
            "--plan",
            plan_path.to_str().unwrap(),
            "--consumer",
            "a",
        ]);
        client_command()
            .args(&all)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    let second = spawn();
    let arrived = || {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("arrived."))
            })
            .count()
    };
    wait_for("both encryptions written", &|| arrived() == 2);
    std::fs::write(d.join("go"), "").unwrap();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("warning"), "no store failed: {err}");
    }
    let names: Vec<String> = std::fs::read_dir(d.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.cred"], "one copy, no temporary file left");
    // And it is a copy that stands in.
    server.stop();
    std::fs::remove_dir_all(d.join("run/a")).unwrap();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&d.join("run/a/APP_USER")).as_deref(), Some("alice"));
}

/// The test plan with a host-key boot cache for consumer `a` (max age 1h),
/// encrypted by `systemd_creds`.
fn cache_plan(d: &Path, systemctl: &Path, systemd_creds: &Path) -> PathBuf {
    let extra = format!(
        "cache_dir = \"{}/cache\"\nsystemd_creds = \"{}\"\ncache_key = \"host\"",
        d.display(),
        systemd_creds.display()
    );
    let plan_path = plan(d, systemctl, "a.service", &extra);
    let text = read(&plan_path).unwrap().replace(
        "[consumers.a.templates",
        "cache_max_age = \"1h\"\n[consumers.a.templates",
    );
    std::fs::write(&plan_path, text).unwrap();
    plan_path
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not installed (Debian: apt-get install systemd)"))
}

/// A restart that fails is owed until it succeeds: the watcher tries it
/// again every round, status.json shows it pending and the round as
/// failed, and once systemctl works again the restart happens and the
/// status clears.
#[test]
fn a_failed_restart_stays_pending_until_it_succeeds() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        systemctl_log,
    } = setup();
    let d = dir.path();
    // systemctl fails try-restart while the flag file exists.
    let text = std::fs::read_to_string(&systemctl).unwrap().replace(
        "case \"$1\" in show)",
        &format!(
            "[ \"$1\" = try-restart ] && [ -e {flag} ] && exit 1\ncase \"$1\" in show)",
            flag = d.join("fail-restart").display()
        ),
    );
    std::fs::write(&systemctl, text).unwrap();
    let plan = plan(d, &systemctl, "a.service", "");
    deliver_each(&args, &plan, d);
    std::fs::write(d.join("fail-restart"), "").unwrap();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    let plan_s = plan.to_str().unwrap().to_owned();
    all.extend_from_slice(&["deliver", "--plan", &plan_s, "--watch", "100ms"]);
    let watcher = client_command()
        .args(&all)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("watcher.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for("first round", &|| rounds(d) >= 1);
    std::fs::write(
        d.join("secrets.env"),
        "APP_USER=bob\nAPP_PASS=\"p@ss word\"\n",
    )
    .unwrap();
    let line = server.reload();
    assert!(line.contains("config reloaded"), "{line}\n{}", server.log());
    let tries = || {
        read(&systemctl_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("try-restart"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while tries() < 3 {
        assert!(
            Instant::now() < deadline,
            "no three failed tries; watcher log:\n{}\nsystemctl log:\n{}\nstatus: {}\nfiles: {:?}",
            read(&d.join("watcher.log")).unwrap_or_default(),
            read(&systemctl_log).unwrap_or_default(),
            status(d),
            read(&d.join("run/a/APP_USER"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = status(d);
    assert!(
        s["pending"]["restart"]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == "a.service")),
        "{s}"
    );
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("try-restart") && e.contains("tried again")),
        "{s}"
    );
    std::fs::remove_file(d.join("fail-restart")).unwrap();
    wait_for("the restart done and the status clear", &|| {
        let s = status(d);
        s["pending"]["restart"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && s["last_error"].is_null()
    });
    let done = tries();
    let more = rounds(d) + 3;
    wait_for("three more rounds", &|| rounds(d) >= more);
    assert_eq!(tries(), done, "no restart once it succeeded");
    stop(watcher, server);
}

/// A consumer's own user owns its folder and may put anything there: a
/// FIFO as the manifest, a 1 GiB sparse file in place of a secret. The
/// delivery neither hangs on the one nor reads the other into memory
/// (run here with its data segment capped at 256 MiB, and a 60 s
/// deadline), replaces both, and the other consumer is served as usual.
#[test]
fn a_consumers_fifo_or_huge_file_neither_hangs_nor_swells_the_delivery() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    let plan = plan(d, &systemctl, "a.service", "");
    deliver_each(&args, &plan, d);
    let manifest = d.join("run/a/.locket-manifest");
    std::fs::remove_file(&manifest).unwrap();
    nix::unistd::mkfifo(&manifest, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = d.join("run/b/APP_PASS");
    std::fs::remove_file(&huge).unwrap();
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::write(
        d.join("secrets.env"),
        "APP_USER=bob\nAPP_PASS=\"p@ss word\"\n",
    )
    .unwrap();
    server.reload();
    let mut all: Vec<&str> = vec!["60", "prlimit", "--data=268435456", "--"];
    let client = env!("CARGO_BIN_EXE_locket-client");
    all.push(client);
    all.extend(args.iter().map(String::as_str));
    let plan_s = plan.to_str().unwrap();
    all.extend_from_slice(&["deliver", "--plan", plan_s]);
    let out = std::process::Command::new("timeout")
        .args(&all)
        .env(
            "LOCKET_SERVER_FINGERPRINT",
            crate::support::server_key().fingerprint(),
        )
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(read(&d.join("run/a/APP_USER")).as_deref(), Some("bob"));
    assert_eq!(read(&huge).as_deref(), Some("p@ss word"));
    assert!(
        std::fs::symlink_metadata(&manifest)
            .unwrap()
            .file_type()
            .is_file()
    );
    server.stop();
}

/// A consumer restarted while no server answers starts on the files it
/// was running with (they stay when it stops); a folder whose consumer
/// left the plan is removed, and nothing else under `prune_under` is.
#[test]
fn files_stay_through_an_outage_and_go_only_when_the_consumer_leaves_the_plan() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    let plan_path = plan(
        d,
        &systemctl,
        "a.service",
        &format!("prune_under = \"{}/run\"", d.display()),
    );
    deliver_each(&args, &plan_path, d);
    // A consumer that left the plan, a folder locket never wrote, and a
    // link to a delivered folder.
    let run = d.join("run");
    std::fs::create_dir_all(run.join("gone")).unwrap();
    std::fs::write(run.join("gone/.locket-manifest"), "X\n").unwrap();
    std::fs::write(run.join("gone/X"), "old").unwrap();
    std::fs::create_dir_all(run.join("stranger")).unwrap();
    std::fs::write(run.join("stranger/keep"), "mine").unwrap();
    std::os::unix::fs::symlink(run.join("b"), run.join("alias")).unwrap();

    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "a"], d);
    assert_eq!(code, 0, "{err}");
    assert!(
        !run.join("gone").exists(),
        "the departed consumer's folder is removed: {err}"
    );
    assert!(err.contains("no consumer of the plan uses it"), "{err}");
    assert_eq!(read(&run.join("stranger/keep")).as_deref(), Some("mine"));
    assert!(
        std::fs::symlink_metadata(run.join("alias"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read(&run.join("b/APP_PASS")).as_deref(), Some("p@ss word"));

    // A denial is an answer: the files stay, but the delivery fails.
    let other = locket::keys::ServerKey::generate(2048).unwrap();
    let (code, err) = deliver_pinned_to(&args, &plan_path, "a", other.fingerprint(), d);
    assert_ne!(code, Some(0), "{err}");
    assert!(!err.contains("kept the files"), "{err}");

    // No server: a and b keep what they have, and say so.
    server.stop();
    for c in ["a", "b"] {
        let (code, _, err) = deliver(&args, &plan_path, &["--consumer", c], d);
        assert_eq!(code, 0, "{c}: {err}");
        assert!(
            err.contains("no server answered") && err.contains("kept the files already in"),
            "{err}"
        );
    }
    assert_eq!(read(&run.join("a/APP_USER")).as_deref(), Some("alice"));
    assert_eq!(read(&run.join("a/a.conf")).as_deref(), Some("user=alice\n"));

    // A plan that now asks for a file the folder lacks cannot be kept:
    // the delivery fails, and what is there stays as it was.
    let text = std::fs::read_to_string(&plan_path).unwrap();
    std::fs::write(
        &plan_path,
        text.replace(
            "secrets = [\"APP_PASS\"]",
            "secrets = [\"APP_PASS\", \"APP_USER\"]",
        ),
    )
    .unwrap();
    let (code, _, err) = deliver(&args, &plan_path, &["--consumer", "b"], d);
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("kept the files"), "{err}");
    assert_eq!(read(&run.join("b/APP_PASS")).as_deref(), Some("p@ss word"));
}

/// A user manager's plan (home-manager, #29): its paths start with `%t`
/// (the manager's runtime folder, `$XDG_RUNTIME_DIR`, unknown when the
/// plan is written), and its restarts go through `systemctl --user`.
#[test]
fn a_user_plan_delivers_under_xdg_runtime_dir_and_restarts_through_the_user_manager() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        systemctl_log,
    } = setup();
    let d = dir.path();
    let plan = d.join("user-delivery.toml");
    std::fs::write(
        &plan,
        format!(
            r#"manager = "user"
status_file = "%t/status.json"
prune_under = "%t/locket"
systemctl = "{s}"
[consumers.u]
dir = "%t/locket/u"
env_file = "%t/locket/u/env"
secrets = ["APP_USER"]
restart_units = ["u.service"]
"#,
            s = systemctl.display()
        ),
    )
    .unwrap();
    let plan_s = plan.to_str().unwrap();
    let mut deliver_args: Vec<&str> = args.iter().map(String::as_str).collect();
    deliver_args.extend_from_slice(&["deliver", "--plan", plan_s, "--consumer", "u"]);

    // Without XDG_RUNTIME_DIR the plan's paths mean nothing: refused, and
    // nothing is written anywhere (not under a literal "%t").
    let out = client_command()
        .env_remove("XDG_RUNTIME_DIR")
        .args(&deliver_args)
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("XDG_RUNTIME_DIR is not set") && err.contains("systemd --user"),
        "{err}"
    );
    assert!(!d.join("%t").exists() && !d.join("locket").exists());

    // With it, the files land below it, 0400, in a folder of its own.
    let out = client_command()
        .env("XDG_RUNTIME_DIR", d)
        .args(&deliver_args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let file = d.join("locket/u/APP_USER");
    assert_eq!(read(&file).as_deref(), Some("alice"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert_eq!(
        read(&d.join("locket/u/env")).as_deref(),
        Some("APP_USER=\"alice\"\n")
    );

    // The watcher asks the user manager, and restarts there on a change.
    let mut watch_args: Vec<&str> = args.iter().map(String::as_str).collect();
    watch_args.extend_from_slice(&["deliver", "--plan", plan_s, "--watch", "100ms"]);
    let watcher = client_command()
        .env("XDG_RUNTIME_DIR", d)
        .args(&watch_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("watcher.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for("a watch round", &|| rounds(d) >= 2);
    std::fs::write(d.join("secrets.env"), "APP_USER=bob\n").unwrap();
    server.reload();
    let calls = || read(&systemctl_log).unwrap_or_default();
    wait_for("the restart", &|| calls().contains("try-restart"));
    let calls = calls();
    assert!(
        calls.lines().all(|l| l.starts_with("--user ")),
        "every systemctl call goes to the user manager: {calls}"
    );
    assert!(calls.contains("--user try-restart -- u.service"), "{calls}");
    assert_eq!(read(&file).as_deref(), Some("bob"));
    stop(watcher, server);
}
