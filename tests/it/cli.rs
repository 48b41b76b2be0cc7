//! The real `locket` and `locket-client` binaries: output, exit codes,
//! files and logs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{Registered, ServerProcess, run_client, run_server_cmd, write_server_files};

const SECRETS: &str = "DB_PASSWORD=\"pa55 w0rd with spaces\"\nAPI_TOKEN=tok_3f9a8b7c6d\nMULTI=\"alpha\nbeta\"\nSYMBOLS='\\|!@#$%^&*()_+[]{};:,<.>/?`~==='\nSHARED_VAR=shared-7781\nNOT_YOURS=forbidden-4411\n";
const VALUES: &[&str] = &[
    "pa55 w0rd",
    "tok_3f9a8b7c6d",
    "alpha",
    "beta",
    "shared-7781",
    "forbidden-4411",
    "^&*()_+",
];

fn clients() -> Vec<Registered> {
    vec![
        Registered::new(
            "app",
            11,
            &["127.0.0.1/32", "::1"],
            &["DB_*", "API_TOKEN", "MULTI", "SYMBOLS", "SHARED_VAR"],
        ),
        Registered::new("narrow", 12, &["127.0.0.2"], &["SHARED_VAR"]),
    ]
}

/// Writes a client key file for the seed and returns its path.
fn client_key_file(dir: &Path, seed: u8) -> String {
    let path = dir.join(format!("client-{seed}.key"));
    if !path.exists() {
        locket::keys::ClientKey::from_seed(&[seed; 32])
            .write_new(&path)
            .unwrap();
    }
    path.to_string_lossy().into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_registry_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.key");
    let (code, stdout, stderr) =
        run_client(&["keygen", "--out", out.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(mode(&out), 0o600);
    let line = stdout.trim();
    assert!(
        line.starts_with("ed25519:") && !line.contains('\n'),
        "{stdout}"
    );
    let parsed = locket::keys::parse_public_key(line).unwrap();
    let (key, loose) = locket::keys::ClientKey::load(&out).unwrap();
    assert_eq!(key.verifying_key(), parsed);
    assert_eq!(loose, None);
    // Never overwrites an existing key.
    let (code, _, stderr) = run_client(&["keygen", "--out", out.to_str().unwrap()], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists"), "{stderr}");
}

#[test]
fn whole_scenario_through_the_binaries_with_exit_codes_and_clean_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &["--log-level", "debug"]);
    let url = format!("http://{}", server.addr);
    let app_key = client_key_file(dir.path(), 11);
    let narrow_key = client_key_file(dir.path(), 12);
    let fp = locket::keys::ServerKey::load(&dir.path().join("server-key.pem"))
        .unwrap()
        .fingerprint()
        .to_owned();
    let base = |name: &str, key: &str| -> Vec<String> {
        vec![
            "--server".into(),
            url.clone(),
            "--name".into(),
            name.into(),
            "--key".into(),
            key.into(),
            "--server-fingerprint".into(),
            fp.clone(),
        ]
    };
    let run = |mut args: Vec<String>, extra: &[&str]| {
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client(&refs, dir.path())
    };

    // get: value and a newline, exit 0, no warning when pinned.
    let (code, out, err) = run(base("app", &app_key), &["get", "DB_PASSWORD"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "pa55 w0rd with spaces\n"),
        "{err}"
    );
    assert!(!err.contains("not pinned"), "{err}");
    let (code, out, _) = run(base("app", &app_key), &["get", "MULTI"]);
    assert_eq!((code, out.as_str()), (0, "alpha\nbeta\n"));

    // env (dotenv): a value with a backslash and a backtick cannot be
    // written safely as dotenv (sh would run the backtick): refused by name.
    let (code, out, err) = run(base("app", &app_key), &["env"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        out.is_empty() && err.contains("\"SYMBOLS\"") && err.contains("--format shell or json"),
        "{err}"
    );
    assert!(!err.contains("~==="), "{err}");
    // The others read back exactly with a dotenv parser.
    let (code, out, err) = run(
        base("app", &app_key),
        &["env", "API_TOKEN", "DB_PASSWORD", "MULTI", "SHARED_VAR"],
    );
    assert_eq!(code, 0, "{err}");
    let parsed: Vec<(String, String)> = dotenvy::from_read_iter(out.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let expect = [
        ("API_TOKEN", "tok_3f9a8b7c6d"),
        ("DB_PASSWORD", "pa55 w0rd with spaces"),
        ("MULTI", "alpha\nbeta"),
        ("SHARED_VAR", "shared-7781"),
    ];
    assert_eq!(
        parsed,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );

    // env with names, JSON.
    let (code, out, _) = run(
        base("app", &app_key),
        &["env", "SYMBOLS", "API_TOKEN", "--format", "json"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"API_TOKEN": "tok_3f9a8b7c6d", "SYMBOLS": r"\|!@#$%^&*()_+[]{};:,<.>/?`~==="})
    );

    // Denied (3), not found (4), usage (2).
    let (code, out, err) = run(base("app", &app_key), &["get", "NOT_YOURS"]);
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("denied") && err.lines().count() == 1, "{err}");
    let (code, _, err) = run(base("app", &app_key), &["get", "DB_NOPE"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("DB_NOPE"), "{err}");
    let (code, _, _) = run(base("app", &app_key), &["get"]);
    assert_eq!(code, 2);
    let (code, _, err) = run(base("app", &app_key), &["frobnicate"]);
    assert_eq!(code, 2, "{err}");

    // Wrong key for the name: denied.
    let (code, _, _) = run(base("app", &narrow_key), &["get", "SHARED_VAR"]);
    assert_eq!(code, 3);

    // --bind chooses the source address: 127.0.0.2 is allowed, 127.0.0.3 is not.
    let (code, out, err) = run(
        base("narrow", &narrow_key),
        &["--bind", "127.0.0.2", "get", "SHARED_VAR"],
    );
    assert_eq!((code, out.as_str()), (0, "shared-7781\n"), "{err}");
    let (code, _, _) = run(
        base("narrow", &narrow_key),
        &["--bind", "127.0.0.3", "get", "SHARED_VAR"],
    );
    assert_eq!(code, 3);

    // Wrong pin: refused (1), with both fingerprints named.
    let mut wrong = base("app", &app_key);
    wrong[7] = format!("sha256:{}", "11".repeat(32));
    let (code, out, err) = run(wrong, &["get", "DB_PASSWORD"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains(&fp) && err.contains("nothing was sent"),
        "{err}"
    );

    // No pin: refused before anything is sent (exit 2), naming the key the
    // server offered and the ways to pin it.
    let requests_logged = || server.log().matches("request_id=").count();
    let logged = requests_logged();
    let mut unpinned = base("app", &app_key);
    unpinned.truncate(6);
    let (code, out, err) = run(unpinned.clone(), &["get", "API_TOKEN"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("is not pinned, so nothing was sent")
            && err.contains(&fp)
            && err.contains("--trust-on-first-use"),
        "{err}"
    );
    assert_eq!(
        requests_logged(),
        logged,
        "an unpinned client sent a request"
    );
    // Explicitly insecure: works, with a warning on every run.
    let (code, out, err) = run(
        unpinned.clone(),
        &["--insecure-unpinned", "get", "API_TOKEN"],
    );
    assert_eq!((code, out.as_str()), (0, "tok_3f9a8b7c6d\n"), "{err}");
    assert!(err.contains("not pinned"), "{err}");
    // Trust on first use records the key (0600, beside the key file); later
    // runs trust it without the flag and without a warning.
    let known = dir.path().join("known_servers");
    let (code, _, err) = run(
        unpinned.clone(),
        &["--trust-on-first-use", "get", "API_TOKEN"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("trusting the server"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{url} {fp}\n")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&known).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, out, err) = run(unpinned.clone(), &["get", "API_TOKEN"]);
    assert_eq!((code, out.as_str()), (0, "tok_3f9a8b7c6d\n"), "{err}");
    assert!(
        !err.contains("not pinned") && !err.contains("trusting"),
        "{err}"
    );
    // A server whose key changed is refused with both fingerprints, even
    // with --trust-on-first-use.
    let other = format!("sha256:{}", "22".repeat(32));
    std::fs::write(&known, format!("{url} {other}\n")).unwrap();
    let (code, out, err) = run(unpinned, &["--trust-on-first-use", "get", "API_TOKEN"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains(&other) && err.contains(&fp) && err.contains("nothing was sent"),
        "{err}"
    );

    // The same settings through LOCKET_* variables and a config file.
    let client_toml = dir.path().join("client.toml");
    std::fs::write(
        &client_toml,
        format!("server = \"{url}\"\nname = \"app\"\nkey_file = \"client-11.key\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locket-client"))
        .args([
            "--config",
            client_toml.to_str().unwrap(),
            "get",
            "API_TOKEN",
        ])
        .env("LOCKET_SERVER_FINGERPRINT", &fp)
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tok_3f9a8b7c6d\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not pinned"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locket-client"))
        .args(["get", "SHARED_VAR"])
        .env("LOCKET_SERVER", &url)
        .env("LOCKET_NAME", "app")
        .env("LOCKET_KEY_FILE", &app_key)
        .env("LOCKET_SERVER_FINGERPRINT", &fp)
        .env_remove("LOCKET_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "shared-7781\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = server.stop();
    // Every rejection was logged with its real reason...
    for reason in [
        "not granted: NOT_YOURS",
        "signature does not verify",
        "source address 127.0.0.3 is not in the client's networks",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}:\n{log}");
    }
    assert!(log.contains("request_id"), "{log}");
    // ...and no secret value appears anywhere in a debug-level log.
    for v in VALUES {
        assert!(!log.contains(v), "log leaks {v:?}:\n{log}");
    }
}

#[test]
fn unreachable_server_and_bad_client_config_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let key = client_key_file(dir.path(), 11);
    // Nothing listens on port 1.
    let (code, _, err) = run_client(
        &[
            "--server",
            "http://127.0.0.1:1",
            "--timeout",
            "1s",
            "--name",
            "app",
            "--key",
            &key,
            "get",
            "X",
        ],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    // It says why, in words that say what to check, for how long it was
    // tried, in one line (no progress lines in a pipe), without the HTTP
    // library's error chain.
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("127.0.0.1:1")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("connection refused, nothing listens there (is the server running")
            && lines[0].contains(" times over "),
        "{err}"
    );
    assert!(
        !err.contains("error sending request") && !err.contains("os error"),
        "{err}"
    );
    // Missing settings and a broken config file are usage/config errors.
    let (code, _, err) = run_client(&["--name", "app", "--key", &key, "get", "X"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("--server"), "{err}");
    std::fs::write(dir.path().join("bad.toml"), "server = 5\n").unwrap();
    let (code, _, _) = run_client(&["--config", "bad.toml", "get", "X"], dir.path());
    assert_eq!(code, 2);
    let (code, _, err) = run_client(
        &[
            "--server",
            "http://127.0.0.1:1",
            "--name",
            "app",
            "--key",
            "missing.key",
            "get",
            "X",
        ],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn check_validates_everything_and_prints_counts_never_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let (code, out, err) =
        run_server_cmd(&["check", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("secrets: 6"), "{out}");
    assert!(out.contains("clients: 2"), "{out}");
    assert!(
        out.contains("app: 1 key(s), 2 network(s), can read 5 of 6 secrets"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("OK"));
    for v in VALUES {
        assert!(!out.contains(v) && !err.contains(v));
    }

    let bad = |text: &str, expect: &str| {
        std::fs::write(&config, text).unwrap();
        let (code, out, err) =
            run_server_cmd(&["check", "--config", config.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{text}: {out}");
        assert!(
            err.contains(expect),
            "for {text:?} expected {expect:?} in {err}"
        );
        for v in VALUES {
            assert!(!err.contains(v));
        }
    };
    let key = locket::keys::ClientKey::from_seed(&[11; 32]).public_line();
    let src = "[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n";
    bad(
        &format!(
            "{src}[clients.a]\nkeys = [\"{key}\"]\nnetworks = [\"10.0.0.0/99\"]\nsecrets = []\n"
        ),
        "clients.a.networks",
    );
    bad(
        &format!("{src}[clients.a]\nkeys = [\"ed25519:AAAA\"]\nnetworks = [\"10.0.0.1\"]\n"),
        "clients.a.keys[0]",
    );
    bad(&format!("lisen = \"1.2.3.4:5\"\n{src}"), "lisen");
    bad(
        "key_bits = 1024\n[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n",
        "key_bits",
    );
    bad(
        "[[sources]]\ntype = \"dotenv\"\npath = \"nope.env\"\n",
        "nope.env",
    );
    bad(
        "[[sources]]\ntype = \"vault\"\n",
        "`sources[0].type` unknown value",
    );
    bad("listen = \"127.0.0.1:0\"\n", "no [[sources]]");
    // A dotenv line that does not parse: the error must not show the line.
    std::fs::write(
        dir.path().join("secrets.env"),
        "GOOD=1\nBAD LINE forbidden-4411\n",
    )
    .unwrap();
    bad(src, "after entry \"GOOD\"");
}

#[test]
fn fingerprint_creates_a_private_key_and_matches_the_served_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    std::fs::remove_file(dir.path().join("server-key.pem")).unwrap();
    // A small key keeps the test quick; the default is 3072.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("key_file =", "key_bits = 2048\nkey_file =");
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = run_server_cmd(
        &["fingerprint", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let fp = out.trim().to_owned();
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
    let key_path = dir.path().join("server-key.pem");
    assert_eq!(mode(&key_path), 0o600);
    // Stable across runs, and what the running server serves.
    let (_, out2, _) = run_server_cmd(
        &["fingerprint", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out2.trim(), fp);
    let server = ServerProcess::start(&config, &[]);
    let key = crate::support::raw_get(server.addr, "/v1/key");
    assert!(key.contains(&fp), "{key}");
    server.stop();
}

#[test]
fn server_refuses_a_key_file_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let key_path = dir.path().join("server-key.pem");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) =
        run_server_cmd(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn serve_tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let server = ServerProcess::start_with_env(
        &config,
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    // One datagram of newline-terminated assignments (sd_notify(3)).
    let n = sock.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(buf[..n].trim_ascii_end(), b"READY=1");
    // Ready means serving: the key endpoint answers now.
    assert!(crate::support::raw_get(server.addr, "/v1/key").starts_with("HTTP/1.1 200"));
    let log = server.stop();
    let n = sock.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(buf[..n].trim_ascii_end(), b"STOPPING=1", "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn the_documented_server_config_example_is_accepted() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let start = readme
        .find("```toml\nlisten = ")
        .expect("docs/configuration.md's server.toml example");
    let example = &readme[start + 8..];
    let example = &example[..example.find("```").unwrap()];
    let key = locket::keys::ClientKey::from_seed(&[5; 32]).public_line();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, example.replace("ed25519:...", &key)).unwrap();
    let config = locket::config::server::ServerConfig::load(&path)
        .expect("the documented example loads")
        .config;
    assert_eq!(config.sources.len(), 6);
    assert!(config.tls.is_some());
    assert_eq!(config.refresh_interval, std::time::Duration::from_secs(300));
    assert_eq!(config.clients["demo"].secrets, ["DEMO_*", "SHARED_VAR"]);
}

#[test]
fn the_server_turns_off_core_dumps_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let core = status
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{core}"
    );
    server.stop();
}

/// Nothing from a request reaches a log line unescaped: a JSON field name
/// with a newline in an unauthenticated request cannot write a fake
/// "answered" line into the text log.
#[test]
fn request_text_cannot_forge_log_lines() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let body = r#"{"x\n2026-11-29T00:00:00.000000Z  INFO answered client=bob outcome=\"ok\"":1}"#;
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let log = server.stop();
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client=bob") && !l.contains("request rejected"))
        .collect();
    assert!(
        forged.is_empty(),
        "a request wrote its own log line: {forged:?}"
    );
    assert!(log.contains("request rejected"), "{log}");
}

#[test]
fn config_errors_name_the_place_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), "A=1\n", &clients(), "");
    let good = std::fs::read_to_string(&config).unwrap();
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        run_server_cmd(&["check", "--config", config.to_str().unwrap()], dir.path())
    };
    let secret = "tok-7b1f-secret";
    // A syntax error on a line that holds a value.
    let broken = good.replace(
        "[[sources]]",
        &format!("[[sources]]\nenv = {{ VAULT_TOKEN = \"{secret}\" "),
    );
    let (code, out, err) = check(&broken);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(secret) && !out.contains(secret), "{err}");
    assert!(
        err.contains("server.toml:") && err.contains("TOML syntax error"),
        "{err}"
    );
    // A value of the wrong type, a secret in the wrong place.
    let wrong = good.replace(
        "listen = ",
        &format!("max_connections = \"{secret}\"\nlisten = "),
    );
    let (code, _, err) = check(&wrong);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(secret), "{err}");
    assert!(
        err.contains("server.toml:1:")
            && err.contains("`max_connections`")
            && err.contains("found a string"),
        "{err}"
    );
    // A nested key: the path and the line of the key.
    let nested = good.replace(
        "[clients.app]",
        &format!("[clients.app]\nnote = \"{secret}\""),
    );
    let (code, _, err) = check(&nested);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(secret), "{err}");
    assert!(
        err.contains("`clients.app.note`") && err.contains("unknown key `note`"),
        "{err}"
    );
    // Inside a source: the source's place (serde reads a tagged source
    // whole, so the key inside it is not known), never the value.
    let in_source = good.replace(
        "type = \"dotenv\"",
        &format!("type = \"command\"\ncommand = [\"x\"]\nenv = {{ VAULT_TOKEN = 5 }}\n# {secret}"),
    );
    let (code, _, err) = check(&in_source);
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains(secret) && err.contains("`sources[0]`"),
        "{err}"
    );

    // The reload error log says the same, without the value.
    std::fs::write(&config, &good).unwrap();
    let server = ServerProcess::start(&config, &[]);
    std::fs::write(&config, &wrong).unwrap();
    let line = server.reload();
    assert!(line.contains("config reload rejected"), "{line}");
    assert!(
        line.contains("max_connections") && !line.contains(secret),
        "{line}"
    );
    let log = server.stop();
    assert!(!log.contains(secret), "{log}");
}

/// Text from the network never reaches the client's output raw: a server
/// whose error message holds a newline, a forged `locket-client:` line and
/// terminal escape sequences is printed on one line, escaped.
#[test]
fn server_text_cannot_forge_the_clients_lines() {
    let dir = tempfile::tempdir().unwrap();
    let key = client_key_file(dir.path(), 7);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let forged = "boom\nlocket-client: consumer web: changed\u{1b}[2J\u{202e}";
    let body = serde_json::json!({"error": "x", "message": forged}).to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        // Every connection the client makes gets the same 500.
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let url = format!("http://{addr}");
    let (code, _, err) = crate::support::run_client_pinned(
        &[
            "--server",
            &url,
            "--name",
            "app",
            "--key",
            &key,
            "--timeout",
            "1s",
            "get",
            "X",
        ],
        dir.path(),
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("boom\\nlocket-client: consumer web: changed\\u{1b}[2J\\u{202e}"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{202e}'),
        "{err:?}"
    );
    assert!(
        !err.lines()
            .any(|l| l.starts_with("locket-client: consumer web")),
        "{err}"
    );
    drop(server);
}

/// `check --offline` (the NixOS module's build-time check) reads no key,
/// credential or source: a config whose files exist only at run time
/// passes, while what a build can see (an unknown key, a bad network, a
/// bad duration, a bad glob) fails with exit 2 naming it.
#[test]
fn check_offline_needs_no_runtime_file_and_catches_what_a_build_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), SECRETS, &clients(), "");
    // What exists only at run time is gone: the source's file and the
    // server key.
    std::fs::remove_file(dir.path().join("secrets.env")).unwrap();
    std::fs::remove_file(dir.path().join("server-key.pem")).unwrap();
    let check = |offline: bool| {
        let mut args = vec!["check", "--config", config.to_str().unwrap()];
        if offline {
            args.push("--offline");
        }
        run_server_cmd(&args, dir.path())
    };
    let (code, _, err) = check(false);
    assert_ne!(code, 0, "the full check loads the sources: {err}");
    let (code, out, err) = check(true);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("clients: 2") && out.contains("sources: 1 (not loaded"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("OK"), "{out}");
    assert!(
        !dir.path().join("server-key.pem").exists(),
        "no key was made"
    );

    let good = std::fs::read_to_string(&config).unwrap();
    for (edit, expect) in [
        (
            good.replace("[[sources]]", "no_such_setting = 1\n[[sources]]"),
            "no_such_setting",
        ),
        (
            good.replace(
                "[[sources]]",
                "refresh_interval = \"5 parsecs\"\n[[sources]]",
            ),
            "refresh_interval",
        ),
        (good.replace("127.0.0.1/32", "127.0.0.1/99"), "127.0.0.1/99"),
    ] {
        std::fs::write(&config, &edit).unwrap();
        let (code, out, err) = check(true);
        assert_eq!(code, 2, "{edit}: {out}");
        assert!(err.contains(expect), "expected {expect:?} in {err}");
    }
}

/// `generate`: a man page per command and subcommand, and completion
/// scripts that the shells load (bash here; zsh and fish by their header),
/// from the binaries' own flags.
#[test]
fn man_pages_and_completions_come_from_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for (bin, subs, flag) in [
        (
            env!("CARGO_BIN_EXE_locket"),
            &[
                "serve",
                "reload",
                "check",
                "import-registry",
                "plan",
                "seal-key",
                "fingerprint",
                "generate",
            ][..],
            "\\-\\-log\\-level",
        ),
        (
            env!("CARGO_BIN_EXE_locket-client"),
            &[
                "keygen", "get", "env", "exec", "render", "deliver", "generate",
            ][..],
            "\\-\\-server\\-fingerprint",
        ),
    ] {
        let name = std::path::Path::new(bin)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let run = std::process::Command::new(bin)
            .args(["generate", "man", "--out", out])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mut pages = vec![name.to_owned()];
        pages.extend(subs.iter().map(|s| format!("{name}-{s}")));
        for page in &pages {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.1")))
                .unwrap_or_else(|e| panic!("{page}.1: {e}"));
            assert!(text.contains(&format!(".TH {page} 1")), "{page}: {text}");
        }
        assert!(!dir.path().join(format!("{name}-help.1")).exists());
        let top = std::fs::read_to_string(dir.path().join(format!("{name}.1"))).unwrap();
        assert!(top.contains(flag), "{name}.1 names its flags");
        // bash loads the script and registers the completion.
        let bash = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source <('{bin}' generate bash) && complete -p {name}"
            ))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&bash.stdout);
        assert!(
            bash.status.success() && said.contains(name),
            "{said} {}",
            String::from_utf8_lossy(&bash.stderr)
        );
        for (shell, header) in [
            ("zsh", format!("#compdef {name}")),
            ("fish", format!("complete -c {name}")),
        ] {
            let text = std::process::Command::new(bin)
                .args(["generate", shell])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&text.stdout).contains(&header),
                "{shell}"
            );
        }
        // Man pages need a folder.
        let run = std::process::Command::new(bin)
            .args(["generate", "man"])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&run.stderr).contains("--out FOLDER"));
    }
}

/// Every generated page renders with man(1), and groff warns about none.
#[test]
fn man_renders_every_generated_page() {
    let dir = tempfile::tempdir().unwrap();
    for bin in [
        env!("CARGO_BIN_EXE_locket"),
        env!("CARGO_BIN_EXE_locket-client"),
    ] {
        let run = std::process::Command::new(bin)
            .args(["generate", "man", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(run.status.success());
    }
    let mut pages = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let shown = std::process::Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .expect("man is not installed (Debian: apt-get install man-db; .ci/test does)");
        let err = String::from_utf8_lossy(&shown.stderr);
        assert!(
            shown.status.success()
                && err.trim().is_empty()
                && String::from_utf8_lossy(&shown.stdout).contains("NAME"),
            "man -l {}: {err}",
            path.display()
        );
        pages += 1;
    }
    assert_eq!(pages, 17);
}

/// Retry progress shows on a terminal (script(1) gives the client one),
/// one line per failed attempt, and not under systemd (INVOCATION_ID).
#[test]
fn retry_progress_shows_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = client_key_file(dir.path(), 11);
    // On a terminal (script(1) gives it one), each failed attempt is shown
    // as it happens; under systemd (INVOCATION_ID) it is not.
    let client = env!("CARGO_BIN_EXE_locket-client");
    let command = format!(
        "'{client}' --server http://127.0.0.1:1 --timeout 2s --name app --key '{key}' get X"
    );
    for (systemd, expect) in [(false, true), (true, false)] {
        let mut script = std::process::Command::new("script");
        script
            .args(["-qec", &command, "/dev/null"])
            .current_dir(dir.path());
        script
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM");
        if systemd {
            script.env("INVOCATION_ID", "0123456789abcdef0123456789abcdef");
        }
        let out = script.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let progress = text.contains("waiting for http://127.0.0.1:1 (attempt 1, next in ")
            && text.contains("giving up in ");
        assert_eq!(progress, expect, "systemd {systemd}: {text}");
    }
}
