//! The server's clock jumps by an hour, either way, while clients fetch
//! (#27): the real `locket` binary runs under libfaketime with an offset
//! read from a file at every clock read, while the test (the clients) keeps
//! the real clock. Requests are sealed by hand so that a captured one can
//! be replayed across the jump.
//!
//! Expected: a client whose clock disagrees is refused (403) and the
//! server's log names the skew under the request's id; a client whose
//! clock agrees is served at once; no captured request is answered twice,
//! whichever way the clock went in between.

use std::path::{Path, PathBuf};

use crate::support::{
    Registered, ServerProcess, post_raw, reply_key, server_key, write_server_files,
};
use locket::keys::ClientKey;
use locket::protocol::{Header, Request, RequestBody};

/// Debian's libfaketime (package `faketime`, installed by `.ci/test`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn now() -> i64 {
    locket::clock::unix_now()
}

/// A request for APP_TOKEN from `app`, stamped `timestamp`, with a fresh nonce.
fn sealed(timestamp: i64) -> Vec<u8> {
    let header = Header {
        client: "app".to_owned(),
        server_fingerprint: server_key().fingerprint().to_owned(),
        timestamp,
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = RequestBody {
        names: vec!["APP_TOKEN".to_owned()],
        reply_key: reply_key().spki_der().to_vec(),
    };
    let public = locket::keys::ServerPublicKey::from_pem(server_key().public_pem()).unwrap();
    Request::seal(header, &body, &public, &ClientKey::from_seed(&[61; 32]))
        .unwrap()
        .encode()
}

/// The server's clock offset, in seconds from the real one.
fn set_offset(file: &Path, seconds: i64) {
    std::fs::write(file, format!("{seconds:+}\n")).unwrap();
}

/// Whether the server logged a request `seconds` (±1) from its clock
/// (waited for).
fn skew_logged(server: &ServerProcess, seconds: i64) -> bool {
    server.logged(|log| {
        (seconds - 1..=seconds + 1).any(|s| log.contains(&format!(" is {s}s from server time")))
    })
}

/// A client whose clock is `offset` seconds from the real one (the
/// server's) is served, as the real client is: a 503 "retry" (a request
/// stamped in the very second of a nonce the server forgot) is followed
/// by a new request, as the client does, up to a bound.
async fn served_as_clocks_agree(server: &ServerProcess, offset: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, text) = status(server, &sealed(now() + offset)).await;
        match code {
            200 => return,
            503 if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            _ => panic!(
                "a client whose clock agrees with the server's: {code} {text}\n{}",
                server.log()
            ),
        }
    }
}

async fn status(server: &ServerProcess, body: &[u8]) -> (u16, String) {
    post_raw(server.addr, body.to_vec(), None).await
}

#[tokio::test]
async fn a_clock_jump_either_way_names_the_skew_recovers_and_never_answers_a_replay() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's `faketime` package (.ci/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let clients = [Registered::new("app", 61, &["127.0.0.1"], &["APP_*"])];
    let config = write_server_files(dir.path(), "APP_TOKEN=t0k3n\n", &clients, "");
    let offset: PathBuf = dir.path().join("faketime");
    // It starts an hour behind.
    set_offset(&offset, -3600);
    let server = ServerProcess::start_with_env(
        &config,
        &[],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // 1. The server's clock is an hour behind, is set right (a jump
    // forward), then jumps back an hour: what it answered an hour before
    // (by its clock), and forgot since, is not answered again.
    let old = sealed(now() - 3600);
    assert_eq!(status(&server, &old).await.0, 200, "answered once");
    set_offset(&offset, 0);
    served_as_clocks_agree(&server, 0).await;
    set_offset(&offset, -3600);
    let (code, text) = status(&server, &old).await;
    assert_eq!(
        code, 503,
        "a replay across the backward jump is refused (retry with a new request): {text}"
    );
    let (code, _) = status(&server, &sealed(now())).await;
    assert_eq!(code, 403, "a client an hour ahead of the server");
    assert!(
        skew_logged(&server, 3600),
        "the server's log names the skew: {}",
        server.log()
    );

    // 2. Set right again: clients are served at once.
    set_offset(&offset, 0);
    served_as_clocks_agree(&server, 0).await;

    // 3. The server's clock jumps forward an hour: clients an hour behind
    // are refused, naming the skew; one whose clock agrees is served (and
    // the server, an hour ahead, forgets the nonces it held).
    let captured = sealed(now());
    assert_eq!(status(&server, &captured).await.0, 200, "answered once");
    set_offset(&offset, 3600);
    let (code, text) = status(&server, &sealed(now())).await;
    assert_eq!(code, 403, "a client an hour behind the server: {text}");
    assert!(
        skew_logged(&server, -3600),
        "the server's log names the skew: {}",
        server.log()
    );
    served_as_clocks_agree(&server, 3600).await;

    // 4. And back: clients are served again; the captured request, whose
    // nonce the server forgot an hour "later", is not answered again.
    set_offset(&offset, 0);
    served_as_clocks_agree(&server, 0).await;
    let (code, text) = status(&server, &captured).await;
    assert_eq!(code, 503, "a replay across the jump is refused: {text}");
    assert!(
        server.logged(|log| log.contains("a clock that jumped back")),
        "the replays are refused saying why: {}",
        server.log()
    );
    let log = server.stop();
    assert!(!log.contains("t0k3n"), "no value in the log");
}
