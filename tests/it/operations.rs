//! The server as operators run it: refresh, stale sets, SIGHUP reloads under
//! load, readiness and metrics, through the real `locket` binary.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{ServerProcess, reply_key, value};
use locket::client::{Client, ClientError};
use locket::keys::ClientKey;

const KEY_SEED: u8 = 41;

fn base_config(dir: &Path, extra: &str, secrets: &[&str]) -> std::path::PathBuf {
    let key_path = dir.join("server-key.pem");
    if !key_path.exists() {
        crate::support::server_key().write_new(&key_path).unwrap();
    }
    let quoted: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\n{extra}\n[[sources]]\ntype = \"file\"\npath = \"secrets.json\"\n\n[clients.app]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.1\"]\nsecrets = [{}]\n",
        ClientKey::from_seed(&[KEY_SEED; 32]).public_line(),
        quoted.join(", ")
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn client(server: &ServerProcess) -> Client {
    crate::support::pinned_client(server, "app", KEY_SEED)
}

async fn get(server: &ServerProcess, path: &str) -> (u16, String) {
    let r = crate::support::http_builder()
        .build()
        .unwrap()
        .get(format!("http://{}{path}", server.addr))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_serves_new_values_keeps_the_old_set_when_the_source_breaks_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"V": "one", "ZZ_UNIQUE_NAME": "u"}"#,
    )
    .unwrap();
    let config = base_config(
        dir.path(),
        "refresh_interval = \"1s\"\nmax_age = \"1h\"",
        &["V", "ZZ_UNIQUE_NAME"],
    );
    let server = ServerProcess::start(&config, &[]);
    let c = client(&server);
    assert_eq!(value(&c, "V").await.unwrap(), "one");
    assert_eq!(get(&server, "/healthz").await.0, 200);

    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"V": "two", "ZZ_UNIQUE_NAME": "u"}"#,
    )
    .unwrap();
    wait_until("the new value", || async {
        value(&c, "V").await.ok().as_deref() == Some("two")
    })
    .await;

    // The source breaks: the last good set is still served, marked stale.
    std::fs::write(dir.path().join("secrets.json"), "{ broken").unwrap();
    wait_until("stale", || async {
        get(&server, "/readyz").await.1.contains("\"stale\":true")
    })
    .await;
    assert_eq!(value(&c, "V").await.unwrap(), "two");
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "still within max_age: {ready}");
    assert!(
        ready.contains("source #1 (file) failed: not in the expected format"),
        "{ready}"
    );
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(metrics.contains("locket_secrets_stale 1"), "{metrics}");
    assert!(
        metrics.contains("locket_source_loads_total{result=\"error\"}"),
        "{metrics}"
    );

    // It recovers.
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"V": "three", "ZZ_UNIQUE_NAME": "u"}"#,
    )
    .unwrap();
    wait_until("recovery", || async {
        get(&server, "/readyz").await.1.contains("\"stale\":false")
    })
    .await;
    assert_eq!(value(&c, "V").await.unwrap(), "three");

    // Metrics: outcomes, latency, set size, registry size; never a name or value.
    let _ = value(&c, "NOPE").await;
    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "locket_requests_total{outcome=\"ok\"}",
        "locket_requests_total{outcome=\"denied\"}",
        "locket_request_duration_seconds_bucket",
        "locket_secrets 2",
        "locket_registry_clients 1",
        "locket_secrets_stale 0",
        "locket_ready 1",
        "locket_secrets_age_seconds",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    for leak in ["ZZ_UNIQUE_NAME", "three", "NOPE"] {
        assert!(!metrics.contains(leak), "metrics leak {leak}");
    }
    let log = server.stop();
    assert!(
        log.contains("refresh failed; still serving this source's last good values"),
        "{log}"
    );
    assert!(!log.contains("three") && !log.contains("\"two\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reload_under_load_valid_then_invalid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"A": "a-value", "B": "b-value"}"#,
    )
    .unwrap();
    let config = base_config(dir.path(), "refresh_interval = \"0s\"", &["A"]);
    let server = ServerProcess::start(&config, &[]);
    let c = Arc::new(client(&server));
    assert!(matches!(
        value(&c, "B").await,
        Err(ClientError::Denied { .. })
    ));

    // Clients fetch continuously through both reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, stop, ok, failed) = (
            Arc::clone(&c),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match value(&c, "A").await {
                    Ok(v) if v == "a-value" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed valid request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // The load is running once clients are being served.
    wait_until("the first answers under load", || async {
        ok.load(Ordering::Relaxed) > 0
    })
    .await;
    let hup = |pid: u32| crate::support::signal(pid, nix::sys::signal::Signal::SIGHUP);

    // A valid config that also grants B.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("secrets = [\"A\"]", "secrets = [\"A\", \"B\"]");
    std::fs::write(&config, text).unwrap();
    hup(server.child.id());
    wait_until("B granted", || async {
        value(&c, "B").await.ok().as_deref() == Some("b-value")
    })
    .await;

    // An invalid config: rejected, the running one stays.
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.app]\nnetworks = [\"not a network\"]\n",
    )
    .unwrap();
    hup(server.child.id());
    wait_until("the rejection", || async {
        server.log().contains("config reload rejected")
    })
    .await;
    // Clients go on being served after the rejection.
    let before = ok.load(Ordering::Relaxed);
    wait_until("answers after the rejection", || async {
        ok.load(Ordering::Relaxed) >= before + 8
    })
    .await;
    assert_eq!(value(&c, "B").await.unwrap(), "b-value");

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("locket_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("locket_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let log = server.stop();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "valid requests failed during reloads:\n{log}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the load ran ({} requests)",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_unready_listens_answers_503_then_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Without start_unready, a first load failure is fatal (exit 1).
    let config = base_config(dir.path(), "", &["A"]);
    let (code, _, err) = crate::support::run_server_cmd(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("secrets.json") && err.contains("start_unready"),
        "{err}"
    );

    let config = base_config(
        dir.path(),
        "start_unready = true\nrefresh_interval = \"1m\"",
        &["A"],
    );
    let server = ServerProcess::start(&config, &[]);
    let c = client(&server);
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"loaded\":false"), "{body}");
    match value(&c, "A").await {
        Err(ClientError::Server { status: 503, .. }) | Err(ClientError::AllFailed { .. }) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    std::fs::write(dir.path().join("secrets.json"), r#"{"A": "finally"}"#).unwrap();
    // The load is retried with backoff (1s, 2s, ...), well before the interval.
    wait_until("ready", || async { get(&server, "/readyz").await.0 == 200 }).await;
    assert_eq!(value(&c, "A").await.unwrap(), "finally");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_audit_lines_watchdog_and_graceful_shutdown() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"A": "audit-value-5150"}"#,
    )
    .unwrap();
    let config = base_config(dir.path(), "", &["A"]);
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let server = ServerProcess::start_with_env(
        &config,
        &["--log-format", "json"],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    // READY, then watchdog pings at half the interval.
    let mut seen = Vec::new();
    let mut buf = [0u8; 128];
    while seen.iter().filter(|m: &&String| *m == "WATCHDOG=1").count() < 3 {
        let n = sock.recv(&mut buf).expect("notifications arrive");
        // One datagram, newline-terminated assignments (sd_notify(3)).
        seen.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
    }
    assert!(seen.contains(&"READY=1".to_string()), "{seen:?}");

    let c = client(&server);
    assert_eq!(value(&c, "A").await.unwrap(), "audit-value-5150");

    // A request in flight when SIGTERM arrives still gets its answer.
    let header = locket::protocol::Header {
        client: "app".into(),
        server_fingerprint: crate::support::server_key().fingerprint().to_owned(),
        timestamp: locket::clock::unix_now(),
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = locket::protocol::RequestBody {
        names: vec!["A".into()],
        reply_key: reply_key().spki_der().to_vec(),
    };
    let public =
        locket::keys::ServerPublicKey::from_pem(crate::support::server_key().public_pem()).unwrap();
    let request = locket::protocol::Request::seal(
        header,
        &body,
        &public,
        &ClientKey::from_seed(&[KEY_SEED; 32]),
    )
    .unwrap();
    let bytes = request.encode();
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    write!(stream, "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", bytes.len()).unwrap();
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();
    // The server accepts in order: once a later connection is answered, this
    // one has been accepted (and is tracked for the graceful shutdown).
    assert!(crate::support::raw_get(server.addr, "/healthz").starts_with("HTTP/1.1 200"));
    crate::support::signal(server.child.id(), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server
        .log()
        .contains("SIGTERM: finishing requests in flight")
    {
        assert!(Instant::now() < deadline, "the server never saw SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.write_all(&bytes[bytes.len() / 2..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = server.stop();

    // Every line is JSON; the audit line names client, IP, names, outcome, request id.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let audit = lines
        .iter()
        .find(|l| l["fields"]["message"] == "answered" && l["fields"]["outcome"] == "ok")
        .expect("an audit line");
    assert_eq!(audit["fields"]["client"], "app");
    assert_eq!(audit["fields"]["ip"], "127.0.0.1");
    assert_eq!(audit["fields"]["names"], "[\"A\"]");
    assert_eq!(audit["fields"]["request_id"].as_str().unwrap().len(), 16);
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!log.contains("audit-value-5150"));
}

/// `(locked, dontdump)`: whether any mapping of `pid` is mlock'ed, and
/// whether any is marked MADV_DONTDUMP, from /proc/<pid>/smaps VmFlags.
fn memory_flags(pid: u32) -> (bool, bool) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut locked_dd = false;
    let mut dd = false;
    for line in smaps.lines().filter(|l| l.starts_with("VmFlags:")) {
        let flags: Vec<&str> = line.split_whitespace().collect();
        if flags.contains(&"dd") {
            dd = true;
            locked_dd |= flags.contains(&"lo");
        }
    }
    (locked_dd, dd)
}

/// The loaded values sit in one mlock'ed, MADV_DONTDUMP region; where the
/// system refuses the lock, the server warns, says so in /readyz and
/// /metrics, and serves anyway.
#[tokio::test(flavor = "multi_thread")]
async fn secret_memory_is_locked_or_the_server_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path(), "", &["DB_PASSWORD"]);
    let value_text = "p".repeat(5000);
    std::fs::write(
        dir.path().join("secrets.json"),
        format!("{{\"DB_PASSWORD\": \"{value_text}\"}}"),
    )
    .unwrap();
    // The server marks itself non-dumpable, which makes its smaps readable
    // by root only.
    let root = nix::unistd::geteuid().as_raw() == 0;

    let server = ServerProcess::start(&config, &[]);
    let (_, ready) = get(&server, "/readyz").await;
    assert!(ready.contains("\"secret_memory\":\"locked\""), "{ready}");
    assert!(
        get(&server, "/metrics")
            .await
            .1
            .contains("locket_secret_memory_locked 1")
    );
    assert_eq!(
        value(&client(&server), "DB_PASSWORD").await.unwrap(),
        value_text
    );
    if root {
        assert_eq!(memory_flags(server.child.id()), (true, true));
    } else {
        eprintln!("not root: checked /readyz and /metrics but not the kernel's VmFlags");
    }
    let log = server.stop();
    assert!(!log.contains("not locked in memory"), "{log}");

    // No memory-lock allowance at all (and, as root, no CAP_IPC_LOCK).
    let mut wrapper = vec!["prlimit", "--memlock=0:0", "--"];
    if root {
        wrapper.extend([
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "--",
        ]);
    }
    let server = ServerProcess::start_wrapped(&wrapper, &config, &[], &[]);
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("\"secret_memory\":\"unlocked: mlock"),
        "{ready}"
    );
    assert!(
        get(&server, "/metrics")
            .await
            .1
            .contains("locket_secret_memory_locked 0")
    );
    assert_eq!(
        value(&client(&server), "DB_PASSWORD").await.unwrap(),
        value_text
    );
    if root {
        assert_eq!(memory_flags(server.child.id()), (false, true));
    }
    let log = server.stop();
    assert!(
        log.contains("secret values are not locked in memory"),
        "{log}"
    );
    assert!(!log.contains(&value_text[..32]), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_show_no_source_text_and_answer_only_their_networks() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("server-key.pem");
    crate::support::server_key().write_new(&key_path).unwrap();
    // A failing command that prints a would-be secret on stderr.
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\nstart_unready = true\n\
         health_networks = [\"127.0.0.1\"]\n\
         [[sources]]\ntype = \"command\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo 'token=stderr-secret-4242' >&2; exit 1\"]\n",
    )
    .unwrap();
    let server = ServerProcess::start(&config, &[]);
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains("source #1 (command) failed: the command failed"),
        "{ready}"
    );
    let (_, metrics) = get(&server, "/metrics").await;
    for body in [&ready, &metrics] {
        assert!(!body.contains("stderr-secret-4242"), "{body}");
        assert!(!body.contains("/bin/sh"), "{body}");
    }
    // From an address outside health_networks: 403 for all three.
    let outside = crate::support::http_builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = outside
            .get(format!("http://{}{path}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        assert!(!r.text().await.unwrap().contains("stderr-secret"));
    }
    assert_eq!(get(&server, "/healthz").await.0, 200);
    // The log at info level never has the program's stderr.
    let log = server.stop();
    assert!(
        log.contains("the command failed") || log.contains("failed"),
        "{log}"
    );
    assert!(!log.contains("stderr-secret-4242"), "{log}");
}
