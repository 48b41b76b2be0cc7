//! Abuse limits: failed-authentication floods, slow senders, connection
//! caps and oversized headers, against a real server on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Registered, TestServer, post_raw, reply_key};
use locket::keys::ClientKey;
use locket::protocol::{Header, Request, RequestBody};

fn clients() -> Vec<Registered> {
    vec![Registered::new("app", 51, &["127.0.0.0/8"], &["A"])]
}

fn sealed(server: &TestServer, signer: &ClientKey) -> Vec<u8> {
    let header = Header {
        client: "app".into(),
        server_fingerprint: server.fingerprint(),
        timestamp: locket::clock::unix_now(),
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = RequestBody {
        names: vec!["A".into()],
        reply_key: reply_key().spki_der().to_vec(),
    };
    Request::seal(header, &body, &server.public_key(), signer)
        .unwrap()
        .encode()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_auth_flood_gets_429_and_spares_other_sources() {
    let server = TestServer::start_with(
        "A=a\n",
        &clients(),
        "max_failed_auth = 5\nfailed_auth_window = \"1m\"",
    )
    .await;
    let attacker: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let wrong = ClientKey::from_seed(&[99; 32]);
    for i in 0..5 {
        let (status, _) = post_raw(server.addr, sealed(&server, &wrong), Some(attacker)).await;
        assert_eq!(status, 403, "failure {i}");
    }
    // Over the limit: a failure gets 429 with Retry-After before any work.
    let http = crate::support::http_builder()
        .local_address(attacker)
        .build()
        .unwrap();
    let url = format!("{}/v1/secrets", server.url());
    let post = |body: Vec<u8>| http.post(&url).body(body).send();
    crate::support::assert_rate_limited(&post(sealed(&server, &wrong)).await.unwrap());
    // The genuine client at that same address is still served: the limit
    // slows failures, it never refuses a request its client signed.
    let genuine = post(sealed(&server, &ClientKey::from_seed(&[51; 32])))
        .await
        .unwrap();
    assert_eq!(genuine.status(), 200, "a genuine client was locked out");
    // And failures from there are still refused.
    crate::support::assert_rate_limited(&post(sealed(&server, &wrong)).await.unwrap());
    // Another source is served as usual.
    let (status, body) = post_raw(
        server.addr,
        sealed(&server, &ClientKey::from_seed(&[51; 32])),
        Some("127.0.0.6".parse().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_per_second_sender_cannot_hold_a_connection() {
    let server = TestServer::start_with("A=a\n", &clients(), "request_timeout = \"2s\"").await;
    let addr = server.addr;
    let (status, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let started = Instant::now();
        write!(s, "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        // One byte every 400 ms, until the server answers or 10 s pass.
        while started.elapsed() < Duration::from_secs(10) {
            if s.write_all(b" ").is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds_new_connections_back() {
    let server = TestServer::start_with("A=a\n", &clients(), "max_connections = 2").await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let idle1 = TcpStream::connect(addr).unwrap();
        let _idle2 = TcpStream::connect(addr).unwrap();
        // No wait needed: the server accepts in order, so the third is
        // accepted only after the first two hold both slots.
        let mut third = TcpStream::connect(addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        write!(
            third,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 256];
        assert!(
            third.read(&mut buf).is_err(),
            "served while two connections hold both slots"
        );
        drop(idle1);
        third
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = third.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_are_refused() {
    let server = TestServer::start("A=a\n", &clients()).await;
    let addr = server.addr;
    // As the README says: a head within the 64 KiB buffer is read; one far
    // beyond it (what one read can add is not pinned here) gets 431.
    let status_for = |kib: usize| {
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(
                s,
                "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
                "a".repeat(kib * 1024)
            );
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let answer = status_for(32).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let answer = status_for(200).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    server.stop().await;
}

/// A TCP connection to `addr` from the local address `from`.
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Asks for /healthz on `s` (keep-alive): whether the server answered, or
/// closed the connection instead. Waits for one or the other, not a time.
async fn served(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf).await, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_cannot_take_every_connection_slot() {
    // Ten slots in all: without a per-source limit, one host's connections
    // would hold every one of them and nobody else would be served.
    let server = TestServer::start_with(
        "A=a\n",
        &clients(),
        "max_connections = 10\nmax_connections_per_source = 8",
    )
    .await;
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.5", server.addr).await;
        if served(&mut s).await {
            held.push(s);
        } else {
            closed += 1;
        }
    }
    assert!(
        held.len() <= 8,
        "{} connections from one source",
        held.len()
    );
    assert!(closed >= 42, "{closed} closed of 50");
    // Another host is served while the flood's connections are open.
    let client = server.client("app", 51, Some("127.0.0.6".parse().unwrap()));
    let got = client.fetch(&["A".to_string()]).await.unwrap();
    assert_eq!(got[0].1.expose(), "a");
    // And the source never has more than 8 open at once.
    let mut still_open = 0;
    for s in &mut held {
        if served(s).await {
            still_open += 1;
        }
    }
    assert!(still_open <= 8);
    drop(held);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn senders_that_time_out_count_as_failed_authentications() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(
        "A=a\n",
        &clients(),
        "request_timeout = \"1s\"\nmax_failed_auth = 2\nfailed_auth_window = \"1h\"",
    )
    .await;
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.8", server.addr).await;
        s.write_all(b"POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    // Two timeouts reached the limit: that address now gets 429.
    let (status, _) = post_raw(
        server.addr,
        b"{}".to_vec(),
        Some("127.0.0.8".parse().unwrap()),
    )
    .await;
    assert_eq!(status, 429);
    server.stop().await;
}

/// The listen queue's length as the kernel reports it (`ss`: Send-Q of a
/// listening socket is its backlog).
fn listen_queue(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2; .ci/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("ss: no listener on {port}: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A fleet restarting at once opens thousands of connections together: the
/// listen queue is 4,096 by default (std's and tokio's 128 made the rest
/// wait for SYN retries), configurable, and capped by the kernel's
/// `somaxconn` with a warning naming both.
#[test]
fn the_listen_queue_is_long_and_configurable() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (extra, want) in [
        ("", 4096.min(somaxconn)),
        ("listen_backlog = 300", 300.min(somaxconn)),
    ] {
        let config = crate::support::write_server_files(dir.path(), "A=a\n", &clients(), extra);
        let server = crate::support::ServerProcess::start(&config, &[]);
        assert_eq!(listen_queue(server.addr.port()), want, "{extra:?}");
        assert!(!server.log().contains("somaxconn"), "{}", server.log());
        server.stop();
    }
    let config = crate::support::write_server_files(
        dir.path(),
        "A=a\n",
        &clients(),
        "listen_backlog = 2147483647",
    );
    let server = crate::support::ServerProcess::start(&config, &[]);
    assert_eq!(listen_queue(server.addr.port()), somaxconn);
    let log = server.stop();
    assert!(
        log.contains(&format!("net.core.somaxconn = {somaxconn}")) && log.contains("2147483647"),
        "the cap is named: {log}"
    );
}
