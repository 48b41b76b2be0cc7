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
