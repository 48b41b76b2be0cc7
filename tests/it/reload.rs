//! SIGHUP: a reload applies every setting it can while serving, and refuses
//! a change to any setting that applies only at start, naming it and
//! keeping the running config whole. One test per setting, against the real
//! `locket` binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::support::{
    Registered, ServerProcess, post_raw, reply_key, server_key, write_server_files,
};
use locket::keys::{ClientKey, ServerPublicKey};
use locket::protocol::{Header, Request, RequestBody};

fn clients() -> Vec<Registered> {
    vec![Registered::new("app", 71, &["127.0.0.0/8"], &["A"])]
}

/// A server started with `before` (TOML at the top level of its config),
/// whose config file then says `after`.
fn server_then(dir: &Path, before: &str, after: &str) -> ServerProcess {
    server_then_edit(dir, before, &|_| after.to_owned(), &|text| text)
}

/// As [`server_then`], with the new file made by `extra` (the top-level
/// TOML) and then `edit` (applied to the whole text).
fn server_then_edit(
    dir: &Path,
    before: &str,
    extra: &dyn Fn(&str) -> String,
    edit: &dyn Fn(String) -> String,
) -> ServerProcess {
    let config = write_server_files(dir, "A=a\n", &clients(), before);
    let server = ServerProcess::start(&config, &[]);
    write_server_files(dir, "A=a\n", &clients(), &extra(before));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(text)).unwrap();
    server
}

/// Changing `setting` from `before` to `after` is refused by name, and the
/// server goes on serving with its running config.
fn assert_refused(setting: &str, before: &str, after: &str) {
    assert_refused_edit(setting, before, &|_| after.to_owned(), &|text| text);
}

/// As [`assert_refused`], for a change made by editing the file's text.
fn assert_refused_edit(
    setting: &str,
    before: &str,
    extra: &dyn Fn(&str) -> String,
    edit: &dyn Fn(String) -> String,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then_edit(dir.path(), before, extra, edit);
    let line = server.reload();
    assert!(
        line.contains("config reload rejected") && line.contains(setting),
        "{setting}: {line}"
    );
    assert!(line.contains("apply only at start"), "{line}");
    // Still serving, at the same address, with the old config.
    assert!(crate::support::raw_get(server.addr, "/readyz").starts_with("HTTP/1.1 200"));
    // Undoing the change makes the next reload succeed.
    write_server_files(dir.path(), "A=a\n", &clients(), before);
    assert!(server.reload().contains("config reloaded"));
    server.stop();
}

macro_rules! refused {
    ($($test:ident: $setting:literal, $before:expr => $after:expr;)*) => {$(
        #[test]
        fn $test() {
            assert_refused($setting, $before, $after);
        }
    )*};
}

#[test]
fn listen_is_refused() {
    assert_refused_edit("listen", "", &str::to_owned, &|text| {
        text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
    });
}

#[test]
fn key_file_is_refused() {
    assert_refused_edit("key_file", "", &str::to_owned, &|text| {
        text.replace(
            "key_file = \"server-key.pem\"",
            "key_file = \"other-key.pem\"",
        )
    });
}

refused! {
    key_bits_is_refused: "key_bits", "" => "key_bits = 4096";
    tls_is_refused: "tls", "" => "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"tls-key.pem\"\n";
    max_request_bytes_is_refused: "max_request_bytes", "" => "max_request_bytes = 4096";
    replay_cache_size_is_refused: "replay_cache_size", "" => "replay_cache_size = 5000";
    start_unready_is_refused: "start_unready", "" => "start_unready = true";
    v1_enable_is_refused: "v1.enable", "" => "[v1]\nenable = true\n";
    v1_path_is_refused: "v1.path", "[v1]\nenable = true\n" => "[v1]\nenable = true\npath = \"/go\"\n";
    v1_key_file_is_refused: "v1.key_file", "[v1]\nenable = true\n" => "[v1]\nenable = true\nkey_file = \"v1-key.pem\"\n";
}

/// A request for `A` stamped `timestamp`, signed with the key of `seed`.
fn signed(seed: u8, timestamp: i64) -> Vec<u8> {
    signed_for(seed, timestamp, None)
}

/// As [`signed`], bound to the server process `instance` (version 3) when
/// given.
fn signed_for(seed: u8, timestamp: i64, instance: Option<[u8; 16]>) -> Vec<u8> {
    let header = Header {
        client: "app".into(),
        server_fingerprint: server_key().fingerprint().to_owned(),
        timestamp,
        nonce: locket::crypto::random_bytes().unwrap(),
        instance,
    };
    let body = RequestBody {
        names: vec!["A".into()],
        reply_key: reply_key().spki_der().to_vec(),
    };
    let public = ServerPublicKey::from_pem(server_key().public_pem()).unwrap();
    Request::seal(header, &body, &public, &ClientKey::from_seed(&[seed; 32]))
        .unwrap()
        .encode()
}

/// A request signed by a key no client holds: a failed authentication.
fn forged() -> Vec<u8> {
    signed(9, locket::clock::unix_now())
}

/// A request from `app` (seed 71) stamped `timestamp`.
fn signed_at(timestamp: i64) -> Vec<u8> {
    signed(71, timestamp)
}

#[tokio::test(flavor = "multi_thread")]
async fn max_failed_auth_applies_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then(dir.path(), "max_failed_auth = 0", "max_failed_auth = 2");
    let from = Some("127.0.0.6".parse().unwrap());
    for _ in 0..3 {
        assert_eq!(
            post_raw(server.addr, forged(), from).await.0,
            403,
            "limit off"
        );
    }
    assert!(server.reload().contains("config reloaded"));
    let statuses = [
        post_raw(server.addr, forged(), from).await.0,
        post_raw(server.addr, forged(), from).await.0,
        post_raw(server.addr, forged(), from).await.0,
    ];
    assert_eq!(statuses, [403, 403, 429], "the new limit of 2 holds");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_auth_window_applies_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let before = "max_failed_auth = 1\nfailed_auth_window = \"2s\"";
    let server = server_then(
        dir.path(),
        before,
        "max_failed_auth = 1\nfailed_auth_window = \"1h\"",
    );
    assert!(server.reload().contains("config reloaded"));
    let from: std::net::IpAddr = "127.0.0.7".parse().unwrap();
    assert_eq!(post_raw(server.addr, forged(), Some(from)).await.0, 403);
    let limited = crate::support::http_builder()
        .local_address(from)
        .build()
        .unwrap()
        .post(format!("http://{}/v1/secrets", server.addr))
        .body(forged())
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 60,
        "Retry-After {retry}s: the one-hour window applies"
    );
    server.stop();
}

#[test]
fn request_timeout_applies_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then(
        dir.path(),
        "request_timeout = \"5m\"",
        "request_timeout = \"1s\"",
    );
    assert!(server.reload().contains("config reloaded"));
    // A body that never finishes: 408 after the new 1 s, long before 5 min.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    server.stop();
}

#[test]
fn max_connections_applies_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then(dir.path(), "max_connections = 100", "max_connections = 1");
    assert!(server.reload().contains("config reloaded"));
    // One verified client's connection holds the only slot (it never gives
    // way to a newcomer); the next waits unserved.
    let idle =
        crate::support::verified_connection(server.addr, &signed_at(locket::clock::unix_now()));
    let mut next = TcpStream::connect(server.addr).unwrap();
    next.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    write!(
        next,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        next.read(&mut buf).is_err(),
        "served beyond the new cap of 1"
    );
    drop(idle);
    next.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = next.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_not_answered_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), "A=a\n", &clients(), "");
    let server = ServerProcess::start(&config, &[]);
    let captured = signed_at(locket::clock::unix_now());
    assert_eq!(post_raw(server.addr, captured.clone(), None).await.0, 200);
    server.stop();
    // A restart forgets every nonce; the new process must not answer a
    // request made before it started. Wait until that is true of the
    // captured one (the clock's next second), not for a fixed time.
    let made = locket::clock::unix_now();
    while locket::clock::unix_now() <= made {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = ServerProcess::start(&config, &[]);
    let (status, body) = post_raw(server.addr, captured, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"retry\""), "{body}");
    // A new request is answered.
    assert_eq!(
        post_raw(server.addr, signed_at(locket::clock::unix_now()), None)
            .await
            .0,
        200
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_widens_the_clock_window_reopens_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then(dir.path(), "clock_skew = \"2s\"", "clock_skew = \"60s\"");
    // Accepted within the 2 s window, then replayed once that window has
    // passed for it but the reloaded 60 s one has not.
    let ts = locket::clock::unix_now();
    let captured = signed_at(ts);
    assert_eq!(post_raw(server.addr, captured.clone(), None).await.0, 200);
    assert!(server.reload().contains("config reloaded"));
    let reloaded = locket::clock::unix_now();
    while locket::clock::unix_now() <= ts + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = post_raw(server.addr, captured, None).await;
    assert_eq!(status, 403, "answered twice (or not refused as a replay)");
    // A request stamped before the reload's old window (its nonce may have
    // been forgotten) is refused with "retry"; a new one is answered.
    let (status, body) = post_raw(server.addr, signed_at(reloaded - 5), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        post_raw(server.addr, signed_at(locket::clock::unix_now()), None)
            .await
            .0,
        200
    );
    server.stop();
}

/// The instance id a server announces on `GET /v1/key`.
fn instance_of(addr: std::net::SocketAddr) -> [u8; 16] {
    let answer = crate::support::raw_get(addr, "/v1/key");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let key: locket::protocol::WireKey = serde_json::from_str(body).expect("the key JSON");
    locket::protocol::decode_instance(&key.instance.expect("an instance id")).unwrap()
}

/// A bound request is answered by the one process it names: not by a
/// second server sharing the key, not after a restart (in the same second
/// or not: no clock is involved), and not twice by its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_bound_request_is_answered_by_one_server_process_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), "A=a\n", &clients(), "");
    let a = ServerProcess::start(&config, &[]);
    let b = ServerProcess::start(&config, &[]);
    let (instance_a, instance_b) = (instance_of(a.addr), instance_of(b.addr));
    assert_ne!(instance_a, instance_b, "two processes, two instances");
    assert_eq!(instance_of(a.addr), instance_a, "stable within a process");

    let captured = signed_for(71, locket::clock::unix_now(), Some(instance_a));
    assert_eq!(post_raw(a.addr, captured.clone(), None).await.0, 200);
    let (status, body) = post_raw(b.addr, captured.clone(), None).await;
    assert_eq!(status, 503, "the server sharing the key answered: {body}");
    assert!(body.contains("\"retry\""), "{body}");
    assert_eq!(post_raw(a.addr, captured.clone(), None).await.0, 403);
    // Bound to B, B answers it.
    let for_b = signed_for(71, locket::clock::unix_now(), Some(instance_b));
    assert_eq!(post_raw(b.addr, for_b, None).await.0, 200);

    // A restarts at once; the captured request is refused by the new
    // process whatever the clock says.
    a.stop();
    let a = ServerProcess::start(&config, &[]);
    assert_ne!(instance_of(a.addr), instance_a);
    let (status, body) = post_raw(a.addr, captured, None).await;
    assert_eq!(status, 503, "answered again after a restart: {body}");
    a.stop();
    b.stop();
}

/// Version 2 (unbound) requests from older clients keep working, until
/// `require_bound_requests` is set; a reload applies it.
#[tokio::test(flavor = "multi_thread")]
async fn require_bound_requests_refuses_unbound_ones_and_applies_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_then(dir.path(), "", "require_bound_requests = true");
    let now = locket::clock::unix_now;
    assert_eq!(post_raw(server.addr, signed_at(now()), None).await.0, 200);
    assert!(server.reload().contains("config reloaded"));
    assert_eq!(post_raw(server.addr, signed_at(now()), None).await.0, 403);
    assert!(
        server.logged(|log| log.contains("require_bound_requests")),
        "the log names the setting"
    );
    let bound = signed_for(71, now(), Some(instance_of(server.addr)));
    assert_eq!(post_raw(server.addr, bound, None).await.0, 200);
    server.stop();
}

/// A client that learnt one instance and meets another (its server
/// restarted while it ran) asks for the key again and is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_follows_its_server_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_server_files(dir.path(), "A=a\n", &clients(), "");
    // One address for both processes, where no other connection lands.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::reserved_port())
        .parse()
        .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:0", &addr.to_string())).unwrap();
    let first = ServerProcess::start(&config, &[]);
    let mut client_config =
        locket::config::client::ClientConfig::single(format!("http://{addr}"), "app", "unused");
    client_config.server_fingerprint = Some(server_key().fingerprint().to_owned());
    let client = locket::client::Client::with_reply_key(
        &client_config,
        ClientKey::from_seed(&[71; 32]),
        reply_key(),
    )
    .unwrap();
    let got = client.fetch(&["A".into()]).await.unwrap();
    assert_eq!(got[0].1.expose(), "a");
    first.stop();
    // The same address, a new process (and instance).
    let second = ServerProcess::start(&config, &[]);
    let got = client.fetch(&["A".into()]).await.unwrap();
    assert_eq!(got[0].1.expose(), "a");
    assert!(
        second.logged(|log| log.contains("bound to another server instance")),
        "the client's first request went to the old instance: {}",
        second.log()
    );
    second.stop();
}

/// `locket reload --config FILE --wait` against the real server: a good
/// config exits 0 once applied, a refused one exits 1 with the server's
/// reason while the server keeps serving, and the ways no reload can
/// happen (no server, another config, a process that ignores the signal)
/// each exit 3 with a message that says what to do.
#[test]
fn reload_wait_reports_the_servers_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let config = write_server_files(dir.path(), "A=a\n", &clients(), "");
    let runtime_s = runtime.to_str().unwrap();
    let server = ServerProcess::start_with_env(&config, &[], &[("RUNTIME_DIRECTORY", runtime_s)]);
    let reload = |config: &Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_locket"))
            .args(["reload", "--config", config.to_str().unwrap()])
            .args(["--runtime-dir", runtime_s])
            .args(extra)
            .env_remove("RUNTIME_DIRECTORY")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let metric = |name: &str| {
        let text = crate::support::raw_get(server.addr, "/metrics");
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .unwrap_or_default()
    };

    // A good config: applied, and the command says so only afterwards.
    write_server_files(dir.path(), "A=b\n", &clients(), "max_failed_auth = 7");
    let (code, out, err) = reload(&config, &["--wait"]);
    assert_eq!(code, 0, "{err}");
    let pid = server.child.id();
    assert_eq!(out.trim(), format!("reload 1 applied by pid {pid}"));
    assert_eq!(
        metric("locket_config_reloads_total{result=\"ok\"}"),
        "1",
        "the reload had happened when the command returned"
    );

    // A refused config: exit 1 with the server's reason; still serving.
    std::fs::write(&config, "this is not = = toml\n").unwrap();
    let (code, _, err) = reload(&config, &["--wait"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the config and keeps serving the previous one")
            && err.contains(&config.display().to_string()),
        "{err}"
    );
    assert!(crate::support::raw_get(server.addr, "/readyz").starts_with("HTTP/1.1 200"));
    assert_eq!(metric("locket_config_reloads_total{result=\"error\"}"), "1");

    // A setting that applies only at start: refused by name.
    write_server_files(dir.path(), "A=b\n", &clients(), "max_failed_auth = 7");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    )
    .unwrap();
    let (code, _, err) = reload(&config, &["--wait"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("listen") && err.contains("apply only at start"),
        "{err}"
    );

    // Another config than the server's: nothing is signalled.
    let other = dir.path().join("other.toml");
    std::fs::copy(&config, &other).unwrap();
    let (code, _, err) = reload(&other, &["--wait"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("pass the config it was started with"), "{err}");
    assert_eq!(metric("locket_config_reloads_total{result=\"error\"}"), "2");
    server.stop();

    // A process that ignores SIGHUP where the server was: no reload
    // starts, and the command says so instead of waiting forever.
    let mut deaf = std::process::Command::new("/bin/sh")
        .args(["-c", "trap '' HUP; exec sleep 300"])
        .spawn()
        .unwrap();
    let status = std::fs::read_to_string(runtime.join("reload.json")).unwrap();
    let mut status: serde_json::Value = serde_json::from_str(&status).unwrap();
    status["pid"] = deaf.id().into();
    std::fs::write(runtime.join("reload.json"), status.to_string()).unwrap();
    let (code, _, err) = reload(&config, &["--wait", "--timeout", "1s"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no reload started within"), "{err}");
    deaf.kill().unwrap();
    deaf.wait().unwrap();

    // No status at all: no server publishes here.
    std::fs::remove_file(runtime.join("reload.json")).unwrap();
    let (code, _, err) = reload(&config, &["--wait"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no reload status in") && err.contains("--runtime-dir"),
        "{err}"
    );
}
