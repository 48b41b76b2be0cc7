//! Rotating the server key without an outage, the documented workflow
//! (docs/operations.md, "Rotating the server key"): stage the next key, roll the new
//! pin out to clients, promote it, retire the old one. Clients fetch
//! throughout, each as a new process would (a new client, its own key
//! fetch), with the pins of the step they are at; none may fail.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::{Registered, ServerProcess, reply_key, run_server_cmd, write_server_files};
use locket::client::{Client, ClientError};
use locket::config::client::ClientConfig;
use locket::keys::ClientKey;

fn clients() -> Vec<Registered> {
    vec![Registered::new("app", 81, &["127.0.0.0/8"], &["A"])]
}

/// The server config at `listen` with `key_file` and `next_key_file`.
fn config(dir: &Path, listen: &str, key: &str, next: Option<&str>) -> std::path::PathBuf {
    let extra = next
        .map(|n| format!("next_key_file = {n:?}"))
        .unwrap_or_default();
    let path = write_server_files(dir, "A=a-value\n", &clients(), &extra);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "key_file = \"server-key.pem\"",
            &format!("key_file = {key:?}"),
        )
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = {listen:?}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// One fetch by a fresh client pinned to `pins`.
async fn fetch(url: &str, pins: &[String]) -> Result<String, ClientError> {
    let mut c = ClientConfig::single(url, "app", "unused");
    c.server_fingerprint = pins.first().cloned();
    c.server_fingerprints = pins.iter().skip(1).cloned().collect();
    let client = Client::with_reply_key(&c, ClientKey::from_seed(&[81; 32]), reply_key()).unwrap();
    let got = client.fetch(&["A".into()]).await?;
    Ok(got[0].1.expose().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_key_rotates_with_no_failed_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A is the key in service; B is made by the server when staged.
    let a = crate::support::server_key().fingerprint().to_owned();
    crate::support::server_key()
        .write_new(&d.join("a.pem"))
        .unwrap();
    // One address for every restart, where no other connection lands.
    let listen = format!("127.0.0.1:{}", crate::support::reserved_port());
    let url = format!("http://{listen}");

    // Clients run throughout, with the pins of the current step.
    let pins = Arc::new(Mutex::new(vec![a.clone()]));
    let (ok, failed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let mut server = ServerProcess::start(&config(d, &listen, "a.pem", None), &[]);
    let fleet = {
        let (pins, ok, failed, stop, url) = (
            Arc::clone(&pins),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&stop),
            url.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let now = pins.lock().unwrap().clone();
                match fetch(&url, &now).await {
                    Ok(v) if v == "a-value" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failed.lock().unwrap().push(format!("{now:?}: {other:?}")),
                }
            }
        })
    };
    // Each step lasts until the clients have fetched a few more times.
    let settle = || {
        let ok = Arc::clone(&ok);
        async move {
            let target = ok.load(Ordering::SeqCst) + 5;
            while ok.load(Ordering::SeqCst) < target {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    settle().await;
    // A client that trusts the server through its known-servers file
    // (recorded on first use) rather than a pin.
    let known = |record: bool| {
        let mut c = ClientConfig::single(url.clone(), "app", "unused");
        c.known_servers_file = d.join("known_servers");
        c.trust_on_first_use = record;
        Client::with_reply_key(&c, ClientKey::from_seed(&[81; 32]), reply_key()).unwrap()
    };
    assert_eq!(
        known(true).fetch(&["A".into()]).await.unwrap()[0]
            .1
            .expose(),
        "a-value"
    );

    // 1. Stage: the server makes and announces the next key, B.
    let staged = config(d, &listen, "a.pem", Some("b.pem"));
    let (code, b, err) = run_server_cmd(
        &[
            "fingerprint",
            "--next",
            "--config",
            staged.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0, "{err}");
    let b = b.trim().to_owned();
    assert_ne!(a, b);
    server.stop();
    server = ServerProcess::start(&staged, &[]);
    let key = crate::support::raw_get(server.addr, "/v1/key");
    assert!(
        key.contains("\"next\":{\"public_key\"") && key.contains(&b),
        "GET /v1/key announces the next key: {key}"
    );
    settle().await;

    // 2. Roll the new pin out: clients trust [A, B].
    *pins.lock().unwrap() = vec![a.clone(), b.clone()];
    settle().await;

    // A long-running client (a watcher) that learnt the key before the
    // promotion: its next request after the restart is refused as bound to
    // the old process, and it moves to the promoted key it also pins.
    let watcher = {
        let mut c = ClientConfig::single(url.clone(), "app", "unused");
        c.server_fingerprint = Some(a.clone());
        c.server_fingerprints = vec![b.clone()];
        Client::with_reply_key(&c, ClientKey::from_seed(&[81; 32]), reply_key()).unwrap()
    };
    assert_eq!(watcher.server_key().await.unwrap().fingerprint, a);
    assert_eq!(
        watcher.fetch(&["A".into()]).await.unwrap()[0].1.expose(),
        "a-value"
    );

    // 3. Promote: B is current, A is next (still opened).
    server.stop();
    server = ServerProcess::start(&config(d, &listen, "b.pem", Some("a.pem")), &[]);
    settle().await;
    assert_eq!(
        watcher.fetch(&["A".into()]).await.unwrap()[0].1.expose(),
        "a-value"
    );
    assert_eq!(watcher.server_key().await.unwrap().fingerprint, b);
    // The known-servers client still finds its recorded key, now the next.
    assert_eq!(
        known(false).fetch(&["A".into()]).await.unwrap()[0]
            .1
            .expose(),
        "a-value"
    );
    // A client that still pins only A, and one that pins only B, are served.
    assert_eq!(
        fetch(&url, std::slice::from_ref(&a)).await.unwrap(),
        "a-value"
    );
    assert_eq!(
        fetch(&url, std::slice::from_ref(&b)).await.unwrap(),
        "a-value"
    );

    // 4. Retire A: clients pin B alone, the server holds B alone.
    *pins.lock().unwrap() = vec![b.clone()];
    settle().await;
    server.stop();
    server = ServerProcess::start(&config(d, &listen, "b.pem", None), &[]);
    settle().await;

    stop.store(true, Ordering::SeqCst);
    fleet.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed fetches: {failed:#?}");
    assert!(ok.load(Ordering::SeqCst) >= 30);
    // After retirement a client pinned only to A is refused, naming both.
    match fetch(&url, std::slice::from_ref(&a)).await {
        Err(ClientError::PinMismatch {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (a.clone(), b.clone())),
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    server.stop();
}

/// A next key that does not parse stops the start, naming the file; the
/// same file refused by `fingerprint --next`.
#[test]
fn a_next_key_that_does_not_parse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::support::server_key()
        .write_new(&d.join("a.pem"))
        .unwrap();
    crate::support::write_private(&d.join("b.pem"), b"not a key\n");
    let path = config(d, "127.0.0.1:0", "a.pem", Some("b.pem"));
    for args in [
        vec!["serve", "--config", path.to_str().unwrap()],
        vec!["fingerprint", "--next", "--config", path.to_str().unwrap()],
    ] {
        let (code, _, err) = run_server_cmd(&args, d);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("b.pem") && err.contains("does not hold"),
            "{err}"
        );
    }
}

/// A key file replaced on disk while the server runs: a reload does not
/// swap keys, and says so, naming the setting, in its log line and in
/// `/readyz` (`restart_needed`), instead of a plain "config reloaded";
/// the server keeps announcing the key it loaded.
#[test]
fn a_reload_says_when_a_key_file_changed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::support::server_key()
        .write_new(&d.join("a.pem"))
        .unwrap();
    let next = locket::keys::ServerKey::generate(2048).unwrap();
    next.write_new(&d.join("b.pem")).unwrap();
    let path = config(d, "127.0.0.1:0", "a.pem", Some("b.pem"));
    let server = ServerProcess::start(&path, &[]);
    assert!(server.reload().contains("config reloaded"));
    let readyz = |s: &ServerProcess| -> serde_json::Value {
        let answer = crate::support::raw_get(s.addr, "/readyz");
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    assert!(readyz(&server).get("restart_needed").is_none());

    std::fs::remove_file(d.join("b.pem")).unwrap();
    let other = locket::keys::ServerKey::generate(2048).unwrap();
    other.write_new(&d.join("b.pem")).unwrap();
    let line = server.reload();
    assert!(
        line.contains("restart_needed")
            && line.contains("next_key_file")
            && line.contains(other.fingerprint()),
        "{line}"
    );
    let ready = readyz(&server);
    let needed = ready["restart_needed"].as_array().unwrap();
    assert_eq!(needed.len(), 1, "{ready}");
    assert!(needed[0].as_str().unwrap().starts_with("next_key_file ("));
    let key = crate::support::raw_get(server.addr, "/v1/key");
    assert!(
        key.contains(next.fingerprint()) && !key.contains(other.fingerprint()),
        "{key}"
    );
    drop(server);
    // A restart loads it, and nothing is pending.
    let server = ServerProcess::start(&path, &[]);
    let key = crate::support::raw_get(server.addr, "/v1/key");
    assert!(key.contains(other.fingerprint()), "{key}");
    assert!(readyz(&server).get("restart_needed").is_none());
}
