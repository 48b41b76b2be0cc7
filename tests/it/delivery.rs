//! Delivering secrets to programs (exec, render --watch) and reaching the
//! server (failover, TLS), through the real binaries.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Registered, ServerProcess, run_client_pinned, write_private, write_server_files,
};

/// `locket-client` as the registered client `app` with its key, pinned.
fn run_app(dir: &Path, key: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--name", "app", "--key", key];
    all.extend_from_slice(args);
    run_client_pinned(&all, dir)
}

const SECRETS: &str = "APP_USER=alice\nAPP_PASS=\"p@ss word\"\nOTHER=nope\n";

fn clients() -> Vec<Registered> {
    vec![Registered::new("app", 31, &["127.0.0.1"], &["APP_*"])]
}

fn key_file(dir: &Path) -> String {
    let path = dir.join("app.key");
    if !path.exists() {
        locket::keys::ClientKey::from_seed(&[31; 32])
            .write_new(&path)
            .unwrap();
    }
    path.to_string_lossy().into_owned()
}

fn free_port() -> u16 {
    crate::support::reserved_port()
}

fn with_listen(config: &Path, port: u16) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(config, text).unwrap();
}

#[test]
fn exec_passes_secrets_not_the_key_and_keeps_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let url = format!("http://{}", server.addr);
    let env_dump = dir.path().join("env.txt");
    let script = format!("env > {}; exit 7", env_dump.display());
    let out = crate::support::client_command()
        .args(["--server", &url, "--name", "app"])
        .args([
            "exec",
            "--prefix",
            "X_",
            "--as",
            "APP_PASS=DB_PASSWORD",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .env("LOCKET_KEY_FILE", &key)
        .env("UNRELATED", "kept")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(env.lines().any(|l| l == "X_APP_USER=alice"), "{env}");
    assert!(env.lines().any(|l| l == "DB_PASSWORD=p@ss word"), "{env}");
    assert!(env.lines().any(|l| l == "UNRELATED=kept"), "{env}");
    assert!(
        !env.contains("LOCKET_"),
        "the child must not see the client's settings: {env}"
    );
    assert!(!env.contains("PRIVATE KEY") && !env.contains(&key), "{env}");
    assert!(!env.contains("OTHER="));

    // --only limits what is fetched.
    let (code, _, err) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &url,
            "exec",
            "--only",
            "APP_USER",
            "--",
            "/bin/sh",
            "-c",
            "test -z \"$APP_PASS\" && test \"$APP_USER\" = alice",
        ],
    );
    assert_eq!(code, 0, "{err}");

    // A failed fetch runs nothing.
    let marker = dir.path().join("ran");
    let (code, _, _) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &url,
            "exec",
            "--only",
            "OTHER",
            "--",
            "touch", // from PATH: the Nix build sandbox has only /bin/sh
            marker.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3);
    assert!(!marker.exists());
    let (code, _, err) = run_app(
        dir.path(),
        &key,
        &["--server", &url, "exec", "--", "/no/such/program"],
    );
    assert_eq!(code, 127, "{err}");
    server.stop();
}

#[test]
fn render_watch_rewrites_on_change_and_runs_the_hook_once_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    with_listen(&config, port);
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let out = dir.path().join("out");
    let hook_log = dir.path().join("hook.log");
    let mut watcher = crate::support::client_command()
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--name",
            "app",
            "--key",
            &key,
            "--timeout",
            "1s",
        ])
        .args([
            "render",
            "--dir",
            out.to_str().unwrap(),
            "--watch",
            "200ms",
            "--on-change",
            &format!("echo changed >> {}", hook_log.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let read = |name: &str| std::fs::read_to_string(out.join(name)).ok();
    // Each watch round is one request, answered in the server's log: wait
    // for rounds, not for time (a loaded machine may run few in a second).
    let rounds = |server: &ServerProcess| server.log().matches(" answered").count();
    let more_rounds = |server: &ServerProcess, n: usize| {
        let start = rounds(server);
        wait_for("more watch rounds", &|| rounds(server) >= start + n);
    };
    wait_for("first render", &|| {
        read("APP_USER").as_deref() == Some("alice")
    });
    more_rounds(&server, 3); // unchanged rounds
    assert!(!hook_log.exists(), "no change, no hook");

    // The server restarts with a changed value and a revoked name; the
    // watcher rides out the gap and then rewrites.
    server.stop();
    std::fs::write(dir.path().join("secrets.env"), "APP_USER=bob\nOTHER=nope\n").unwrap();
    let server = ServerProcess::start(&config, &[]);
    wait_for("rewrite", &|| read("APP_USER").as_deref() == Some("bob"));
    wait_for("revoked file removed", &|| !out.join("APP_PASS").exists());
    more_rounds(&server, 3);
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        "changed\n",
        "one hook run for one change"
    );

    server.stop();
    std::fs::write(dir.path().join("secrets.env"), "APP_USER=carol\n").unwrap();
    let server = ServerProcess::start(&config, &[]);
    wait_for("second rewrite", &|| {
        read("APP_USER").as_deref() == Some("carol")
    });
    more_rounds(&server, 3);
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        "changed\nchanged\n"
    );

    crate::support::signal(watcher.id(), nix::sys::signal::Signal::SIGTERM);
    let status = watcher.wait().unwrap();
    assert!(
        status.success(),
        "watch mode exits cleanly on SIGTERM: {status}"
    );
    server.stop();
}

/// A stand-in server that answers every request with `status`, counting them.
fn fake_server(status: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "{\"error\":\"x\",\"message\":\"fake\"}";
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, hits)
}

#[test]
fn failover_between_servers() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let good = format!("http://{}", server.addr);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (broken, broken_hits) = fake_server(503);

    // First down, second answers; then a 5xx first.
    for first in [&dead, &broken] {
        let (code, out, err) = run_app(
            dir.path(),
            &key,
            &["--server", first, "--server", &good, "get", "APP_USER"],
        );
        assert_eq!((code, out.as_str()), (0, "alice\n"), "{err}");
    }
    assert!(broken_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // The same through a config file with `servers = [...]`, in random order.
    let toml = dir.path().join("client.toml");
    std::fs::write(&toml, format!("servers = [\"{dead}\", \"{good}\"]\nserver_order = \"random\"\nname = \"app\"\nkey_file = \"app.key\"\n")).unwrap();
    for _ in 0..4 {
        let (code, out, err) = run_client_pinned(
            &["--config", toml.to_str().unwrap(), "get", "APP_USER"],
            dir.path(),
        );
        assert_eq!((code, out.as_str()), (0, "alice\n"), "{err}");
    }

    // A 403 is an answer: the next server is never asked.
    let (second, second_hits) = fake_server(200);
    let (code, _, err) = run_app(
        dir.path(),
        &key,
        &["--server", &good, "--server", &second, "get", "OTHER"],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(second_hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // All down: a clear error naming each server, within the timeout.
    let (broken2, _) = fake_server(500);
    let started = Instant::now();
    let (code, _, err) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &dead,
            "--server",
            &broken2,
            "--timeout",
            "2s",
            "get",
            "APP_USER",
        ],
    );
    let took = started.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no server answered within 2s"), "{err}");
    assert!(err.contains(&dead) && err.contains(&broken2), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    server.stop();
}

/// A server that accepts connections and never answers (frozen: SIGSTOP,
/// a hung host behind a live kernel) must not take the whole timeout: the
/// client moves on to the next server within it.
#[test]
fn a_frozen_server_does_not_take_the_whole_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let good = format!("http://{}", server.addr);
    // Accepts, reads, never answers; holds every connection open.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frozen_url = format!("http://{}", frozen.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in frozen.incoming() {
            held.push(conn);
        }
    });
    let (code, out, err) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &frozen_url,
            "--server",
            &good,
            "--timeout",
            "10s",
            "get",
            "APP_USER",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "alice\n"), "{err}");
    server.stop();
}

#[test]
fn tls_with_a_custom_ca() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate for 127.0.0.1 and localhost, made here.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("tls-cert.pem"), cert.pem()).unwrap();
    write_private(
        &dir.path().join("tls-key.pem"),
        server_key.serialize_pem().as_bytes(),
    );
    let config = write_server_files(
        dir.path(),
        SECRETS,
        &clients(),
        "[tls]\ncert_file = \"tls-cert.pem\"\nkey_file = \"tls-key.pem\"\n",
    );
    // [tls] must come after the top-level keys: move it to the end.
    let text = std::fs::read_to_string(&config).unwrap();
    let (head, rest) = text.split_once("[tls]").unwrap();
    let (tls, tail) = rest.split_once("\n\n[[sources]]").unwrap();
    std::fs::write(&config, format!("{head}\n[[sources]]{tail}\n[tls]{tls}\n")).unwrap();

    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let ca_path = dir.path().join("ca.pem");
    let (code, out, err) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &url,
            "--ca-file",
            ca_path.to_str().unwrap(),
            "get",
            "APP_USER",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "alice\n"), "{err}");
    // Without the CA the certificate is not trusted.
    let (code, out, err) = run_app(
        dir.path(),
        &key,
        &["--server", &url, "--timeout", "3s", "get", "APP_USER"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    // One sentence: what failed and what to set, not the TLS library's chain.
    // (Where the system has no CA certificates at all, as in the Nix build
    // sandbox, the client cannot start an https client, and says so.)
    assert!(
        err.contains("TLS: the server's certificate is not signed by a CA this client trusts (set ca_file, or --ca-file)")
            || err.contains("No CA certificates were loaded from the system; for https:// servers the system's CA certificates must be installed, or set ca_file"),
        "{err}"
    );
    // A URL whose host name the certificate does not name.
    let other_name = url.replace("127.0.0.1", "localhost.localdomain");
    let (code, _, err) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &other_name,
            "--ca-file",
            ca_path.to_str().unwrap(),
            "--timeout",
            "2s",
            "get",
            "APP_USER",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not valid for the host name") || err.contains("does not resolve"),
        "{err}"
    );
    // Plain HTTP to the TLS port fails too.
    let (code, _, _) = run_app(
        dir.path(),
        &key,
        &[
            "--server",
            &format!("http://127.0.0.1:{}", server.addr.port()),
            "--timeout",
            "2s",
            "get",
            "APP_USER",
        ],
    );
    assert_eq!(code, 1);
    let log = server.stop();
    assert!(log.contains("tls=true"), "{log}");
    assert!(!log.contains("alice"));
}

/// The NixOS module's fetch units run with `UMask=0077`. A consumer that
/// reads its secrets through the group (`mode = "0440"`) must still be able
/// to enter the folder: `render` sets the folder's mode itself (0750 for
/// group-readable files) instead of trusting the umask. As root (CI), a
/// process with only the group's gid reads the file for real.
#[test]
fn render_under_umask_0077_lets_the_group_read_0440_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // Others must be able to reach the render folder's parent.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let out = dir.path().join("svc");
    let root = nix::unistd::geteuid().as_raw() == 0;
    // As root: owner nobody, a group of its own; otherwise what we are.
    let (owner, group) = if root {
        (65534, 4242)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    let status = Command::new("sh")
        .env(
            "LOCKET_SERVER_FINGERPRINT",
            crate::support::server_key().fingerprint(),
        )
        .args(["-c", "umask 077; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_locket-client"))
        .args(["--server", &format!("http://{}", server.addr)])
        .args(["--name", "app", "--key", &key, "render", "--dir"])
        .arg(&out)
        .args(["--mode", "0440", "--owner", &owner.to_string()])
        .args(["--group", &group.to_string(), "APP_USER"])
        .status()
        .unwrap();
    assert!(status.success());
    let d = std::fs::metadata(&out).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid(), d.gid()), (0o750, owner, group));
    let f = std::fs::metadata(out.join("APP_USER")).unwrap();
    assert_eq!((f.mode() & 0o777, f.uid(), f.gid()), (0o440, owner, group));
    if root {
        // A member of the group only (not the owner) reads the value.
        let read = Command::new("cat")
            .arg(out.join("APP_USER"))
            .gid(group) // std drops supplementary groups when root sets a uid
            .uid(4343)
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "{}",
            String::from_utf8_lossy(&read.stderr)
        );
        assert_eq!(read.stdout, b"alice");
    }
    server.stop();
}

/// A grant of everything (or a substituted server) must not choose which
/// program runs: variables such as PATH, LD_PRELOAD and BASH_ENV reach
/// `exec`'s and `env`'s output only when asked for by name, or with
/// `--allow-loader-vars`; the warning names them and never shows a value.
#[test]
fn loader_variables_are_passed_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = "APP_USER=alice\nPATH=/evil-bin\nLD_PRELOAD=/evil.so\nBASH_ENV=/evil.sh\n";
    let clients = vec![Registered::new("app", 31, &["127.0.0.1"], &["*"])];
    let config = write_server_files(dir.path(), secrets, &clients, "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let url = format!("http://{}", server.addr);
    let base = [
        "--server",
        url.as_str(),
        "--name",
        "app",
        "--key",
        key.as_str(),
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        run_client_pinned(&args, dir.path())
    };

    let (code, out, err) = run(&["env"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "APP_USER='alice'\n");
    assert!(
        err.contains("not passing BASH_ENV, LD_PRELOAD, PATH"),
        "{err}"
    );
    assert!(!err.contains("evil"), "a value reached the warning: {err}");

    let (code, out, err) = run(&["env", "PATH", "APP_USER"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "APP_USER='alice'\nPATH='/evil-bin'\n"),
        "{err}"
    );

    let show = "printf '%s|%s|%s' \"$PATH\" \"$LD_PRELOAD\" \"$APP_USER\"";
    let (code, out, err) = run(&["exec", "--", "sh", "-c", show]);
    assert_eq!(code, 0, "{err}");
    let fields: Vec<&str> = out.split('|').collect();
    assert_ne!(fields[0], "/evil-bin");
    assert_eq!(&fields[1..], ["", "alice"], "{out}");

    let (code, out, err) = run(&["--allow-loader-vars", "exec", "--", "/bin/sh", "-c", show]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/evil-bin|/evil.so|alice");
    server.stop();
}

/// The second review's bypasses of the old block list: git's config from
/// the environment ran a command through `core.fsmonitor`, and `LESSOPEN`
/// ran one through `less`. Delivered in bulk, none of them is passed.
#[test]
fn git_config_and_lessopen_cannot_run_a_command_through_exec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ran = d.join("PWNED");
    let secrets = format!(
        "APP_USER=alice\nGIT_CONFIG_COUNT=1\nGIT_CONFIG_KEY_0=core.fsmonitor\nGIT_CONFIG_VALUE_0=\"touch {ran}; false\"\nLESSOPEN=\"|touch {ran}; echo %s\"\nGLIBC_TUNABLES=glibc.malloc.check=3\nHTTPS_PROXY=http://127.0.0.1:9\n",
        ran = ran.display()
    );
    let clients = vec![Registered::new("app", 31, &["127.0.0.1"], &["*"])];
    let config = write_server_files(d, &secrets, &clients, "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(d);
    let url = format!("http://{}", server.addr);
    let repo = d.join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status()
        .expect("git");
    assert!(git.success());
    let script = "git status >/dev/null 2>&1; echo x > f; less f >/dev/null 2>&1 </dev/null; printf '%s|%s' \"$APP_USER\" \"$GIT_CONFIG_COUNT$LESSOPEN$GLIBC_TUNABLES$HTTPS_PROXY\"";
    let (code, out, err) = run_client_pinned(
        &[
            "--server", &url, "--name", "app", "--key", &key, "exec", "--", "sh", "-c", script,
        ],
        &repo,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "alice|", "{err}");
    assert!(!ran.exists(), "a command ran through a delivered variable");
    for var in [
        "GIT_CONFIG_KEY_0",
        "LESSOPEN",
        "GLIBC_TUNABLES",
        "HTTPS_PROXY",
    ] {
        assert!(err.contains(var), "{var} is named in the warning: {err}");
    }
    server.stop();
}

/// A plain-HTTP client needs no CA certificates: on a minimal machine (or
/// in a build sandbox) without any, it still fetches. Before, the platform
/// verifier's failure to find roots stopped every client.
#[test]
fn http_needs_no_system_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let key = key_file(dir.path());
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let out = crate::support::client_command()
        .env("SSL_CERT_FILE", empty.join("none.pem"))
        .env("SSL_CERT_DIR", &empty)
        .args(["--server", &format!("http://{}", server.addr)])
        .args(["--name", "app", "--key", &key, "get", "APP_USER"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}
