//! The v2 handshake end to end: a real server on 127.0.0.1, the library
//! client, real HTTP. Happy paths and every rejection.

use std::net::IpAddr;

use crate::support::{Registered, TestServer, post_raw, reply_key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use locket::client::ClientError;
use locket::keys::ClientKey;
use locket::protocol::{Header, Request, RequestBody};

const SYMBOLS: &str = r"\|!@#$%^&*()_+[]{};:,<.>/?`~===";

fn pem_64k() -> String {
    // A 64 KiB PEM-shaped value: header, base64 lines of 64, footer.
    let body: String = (0..64 * 1024 / 65)
        .map(|i| format!("{}\n", B64.encode([i as u8; 48])))
        .collect();
    format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
}

fn secrets_env() -> String {
    format!(
        "APP_DB_PASSWORD=\"correct horse battery staple\"\nAPP_API_KEY=ak_live_51HxYz\nAPP_MULTI=\"line one\nline two\n  line three\"\nSERVICE2_SYMBOLS='{SYMBOLS}'\nSHARED_VAR=shared-value-9\nOTHER_TOKEN=other-secret-77\nAPP_BIG=\"{}\"\n",
        pem_64k()
    )
}

/// Every value in the test secrets, to check nothing leaks.
fn all_values() -> Vec<String> {
    [
        "correct horse battery staple",
        "ak_live_51HxYz",
        "line one",
        "shared-value-9",
        "other-secret-77",
        "IiIiIiIi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn clients() -> Vec<Registered> {
    vec![
        Registered::new(
            "app",
            1,
            &["127.0.0.0/8", "::1/128"],
            &["APP_*", "SERVICE2_SYMBOLS", "SHARED_VAR"],
        ),
        Registered::new("other", 2, &["127.0.0.0/8"], &["OTHER_TOKEN", "SHARED_VAR"]),
        Registered::new("narrow", 3, &["127.0.0.2/32"], &["SHARED_VAR"]),
    ]
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn happy_paths_one_batch_all_big_multiline_symbols() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let app = server.client("app", 1, None);

    let one = app.fetch(&names(&["APP_DB_PASSWORD"])).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, "APP_DB_PASSWORD");
    assert_eq!(one[0].1.expose(), "correct horse battery staple");

    let batch = app
        .fetch(&names(&["APP_API_KEY", "SERVICE2_SYMBOLS", "APP_MULTI"]))
        .await
        .unwrap();
    let got: std::collections::BTreeMap<_, _> = batch
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(got["APP_API_KEY"], "ak_live_51HxYz");
    assert_eq!(got["SERVICE2_SYMBOLS"], SYMBOLS);
    assert_eq!(got["APP_MULTI"], "line one\nline two\n  line three");

    // Empty list: every secret this client may read, and nothing else.
    let all = app.fetch(&[]).await.unwrap();
    let all_names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        all_names,
        [
            "APP_API_KEY",
            "APP_BIG",
            "APP_DB_PASSWORD",
            "APP_MULTI",
            "SERVICE2_SYMBOLS",
            "SHARED_VAR"
        ]
    );

    let big = app.fetch(&names(&["APP_BIG"])).await.unwrap();
    assert_eq!(big[0].1.expose(), pem_64k());
    assert!(
        big[0].1.len() >= 64 * 1024 - 200,
        "value is {} bytes",
        big[0].1.len()
    );

    // The other client sees its own grants only.
    let other = server.client("other", 2, None);
    let o = other.fetch(&[]).await.unwrap();
    let o_names: Vec<&str> = o.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(o_names, ["OTHER_TOKEN", "SHARED_VAR"]);
    server.stop().await;
}

#[tokio::test]
async fn not_found_only_for_granted_names_and_denied_for_others() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let app = server.client("app", 1, None);
    match app.fetch(&names(&["APP_DB_PASSWORD", "APP_NOPE"])).await {
        Err(ClientError::NotFound(missing)) => assert_eq!(missing, ["APP_NOPE"]),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A name not granted is denied even if it exists, and even when it does not.
    for name in ["OTHER_TOKEN", "NOT_GRANTED_NOR_EXISTING"] {
        match app.fetch(&names(&[name])).await {
            Err(e @ ClientError::Denied { .. }) => assert_eq!(e.exit_code(), 3),
            other => panic!("expected Denied for {name}, got {other:?}"),
        }
    }
    server.stop().await;
}

/// Seals a request by hand so that each field can be bent.
fn sealed(
    server: &TestServer,
    client: &str,
    signer: &ClientKey,
    timestamp: i64,
    fingerprint: Option<&str>,
) -> Request {
    let header = Header {
        client: client.to_owned(),
        server_fingerprint: fingerprint
            .map(str::to_owned)
            .unwrap_or_else(|| server.fingerprint()),
        timestamp,
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = RequestBody {
        names: names(&["SHARED_VAR"]),
        reply_key: reply_key().spki_der().to_vec(),
    };
    Request::seal(header, &body, &server.public_key(), signer).unwrap()
}

fn now() -> i64 {
    locket::clock::unix_now()
}

#[tokio::test]
async fn every_authentication_failure_gets_the_same_403() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let app_key = ClientKey::from_seed(&[1; 32]);
    let other_key = ClientKey::from_seed(&[2; 32]);
    let stranger = ClientKey::from_seed(&[99; 32]);
    let fake_fp = format!("sha256:{}", "ab".repeat(32));

    // Sanity: the hand-made request works as is.
    let ok = sealed(&server, "app", &app_key, now(), None);
    let (status, body) = post_raw(server.addr, ok.encode(), None).await;
    assert_eq!(status, 200, "{body}");

    let mut cases: Vec<(&str, Vec<u8>, Option<IpAddr>)> = vec![
        (
            "unknown client",
            sealed(&server, "ghost", &stranger, now(), None).encode(),
            None,
        ),
        (
            "another client's key",
            sealed(&server, "app", &other_key, now(), None).encode(),
            None,
        ),
        (
            "stale timestamp",
            sealed(&server, "app", &app_key, now() - 120, None).encode(),
            None,
        ),
        (
            "future timestamp",
            sealed(&server, "app", &app_key, now() + 120, None).encode(),
            None,
        ),
        (
            // now - ts overflows i64: it must not wrap into the window.
            "timestamp that wraps around",
            sealed(&server, "app", &app_key, i64::MIN + now(), None).encode(),
            None,
        ),
        (
            "signed for another server",
            sealed(&server, "app", &app_key, now(), Some(&fake_fp)).encode(),
            None,
        ),
        (
            "address outside networks",
            sealed(
                &server,
                "narrow",
                &ClientKey::from_seed(&[3; 32]),
                now(),
                None,
            )
            .encode(),
            Some("127.0.0.3".parse().unwrap()),
        ),
    ];
    // Tampered ciphertext: flip one bit after signing.
    let mut t = sealed(&server, "app", &app_key, now(), None);
    t.ciphertext[5] ^= 1;
    cases.push(("tampered ciphertext", t.encode(), None));
    // Tampered wrapped key.
    let mut w = sealed(&server, "app", &app_key, now(), None);
    w.wrapped_key[10] ^= 0x80;
    cases.push(("tampered wrapped key", w.encode(), None));
    // Exact replay of the request that succeeded above.
    cases.push(("exact replay", ok.encode(), None));

    let mut bodies = Vec::new();
    for (what, body, bind) in cases {
        let (status, text) = post_raw(server.addr, body, bind).await;
        assert_eq!(status, 403, "{what}: {text}");
        for v in all_values() {
            assert!(!text.contains(&v), "{what} leaked a value");
        }
        bodies.push((what, text));
    }
    let first = &bodies[0].1;
    for (what, text) in &bodies {
        assert_eq!(
            text, first,
            "{what}: 403 body differs from the unknown-client body"
        );
    }
    let parsed: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(parsed["error"], "forbidden");

    // The same client from an allowed address passes: the IP rule is real.
    let narrow = server.client("narrow", 3, Some("127.0.0.2".parse().unwrap()));
    assert_eq!(
        narrow.fetch(&names(&["SHARED_VAR"])).await.unwrap()[0]
            .1
            .expose(),
        "shared-value-9"
    );
    let narrow_wrong = server.client("narrow", 3, Some("127.0.0.3".parse().unwrap()));
    assert!(matches!(
        narrow_wrong.fetch(&names(&["SHARED_VAR"])).await,
        Err(ClientError::Denied { .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn malformed_and_oversize_bodies() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let (status, body) = post_raw(server.addr, b"{not json".to_vec(), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "bad_request"
    );

    // Valid JSON, wrong shape / bad base64 / wrong version.
    let key = ClientKey::from_seed(&[1; 32]);
    let good: serde_json::Value =
        serde_json::from_slice(&sealed(&server, "app", &key, now(), None).encode()).unwrap();
    for (field, value) in [
        ("nonce", serde_json::json!("***")),
        ("version", serde_json::json!(1)),
        ("signature", serde_json::json!("AAAA")),
        ("client", serde_json::json!("bad name!")),
    ] {
        let mut v = good.clone();
        v[field] = value;
        let (status, body) = post_raw(server.addr, serde_json::to_vec(&v).unwrap(), None).await;
        assert_eq!(status, 400, "{field}: {body}");
    }
    let mut v = good.clone();
    v["extra"] = serde_json::json!(1);
    assert_eq!(
        post_raw(server.addr, serde_json::to_vec(&v).unwrap(), None)
            .await
            .0,
        400
    );

    // Over max_request_bytes (64 KiB by default).
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        crate::support::post_head_only(addr, "/v1/secrets", 200 * 1024)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Other paths and methods.
    let http = crate::support::http_builder().build().unwrap();
    let r = http
        .get(format!("{}/v1/secrets", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = http
        .get(format!("{}/nope", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    server.stop().await;
}

#[tokio::test]
async fn key_endpoint_gives_pem_and_matching_fingerprint() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let text = crate::support::http_builder()
        .build()
        .unwrap()
        .get(format!("{}/v1/key", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pem = v["public_key"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let parsed = locket::keys::ServerPublicKey::from_pem(pem).unwrap();
    assert_eq!(v["fingerprint"], parsed.fingerprint);
    assert_eq!(parsed.fingerprint, server.fingerprint());
    assert_eq!(v["version"], 2);
    server.stop().await;
}

#[tokio::test]
async fn wrong_pin_is_refused_before_any_request_is_sent() {
    // A stand-in server that records every request line it receives.
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let real = server.url();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let n = sock.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen2
                .lock()
                .unwrap()
                .push(text.lines().next().unwrap_or("").to_owned());
            // Forward GET /v1/key to the real server.
            let key = crate::support::http_builder()
                .build()
                .unwrap()
                .get(format!("{real}/v1/key"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{key}",
                key.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    let mut cfg = server.client_config("app", None);
    cfg.servers = vec![format!("http://{proxy_addr}")];
    cfg.server_fingerprint = Some(format!("sha256:{}", "00".repeat(32)));
    let client =
        locket::client::Client::with_reply_key(&cfg, ClientKey::from_seed(&[1; 32]), reply_key())
            .unwrap();
    let err = client.fetch(&names(&["SHARED_VAR"])).await.unwrap_err();
    assert!(matches!(err, ClientError::PinMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&server.fingerprint()), "{err}");
    let lines = seen.lock().unwrap().clone();
    assert_eq!(
        lines,
        ["GET /v1/key HTTP/1.1"],
        "only the key was fetched, nothing was posted"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_fetches_server_key_once_per_process() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let app = server.client("app", 1, None);
    let k1 = app.server_key().await.unwrap().fingerprint.clone();
    for _ in 0..3 {
        app.fetch(&names(&["SHARED_VAR"])).await.unwrap();
    }
    let k2 = app.server_key().await.unwrap().fingerprint.clone();
    assert_eq!(k1, k2);
    server.stop().await;
}

#[tokio::test]
async fn answer_over_limit_is_refused_clearly() {
    let server =
        TestServer::start_with(&secrets_env(), &clients(), "max_answer_bytes = 4096").await;
    let app = server.client("app", 1, None);
    match app.fetch(&names(&["APP_BIG"])).await {
        Err(ClientError::Server {
            status: 413,
            message,
        }) => assert!(message.contains("max_answer_bytes"), "{message}"),
        other => panic!("expected 413, got {other:?}"),
    }
    // Small answers still work.
    assert_eq!(app.fetch(&names(&["SHARED_VAR"])).await.unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn answer_bound_to_its_request_is_rejected_for_another() {
    let server = TestServer::start(&secrets_env(), &clients()).await;
    let key = ClientKey::from_seed(&[1; 32]);
    let req = sealed(&server, "app", &key, now(), None);
    let (status, body) = post_raw(server.addr, req.encode(), None).await;
    assert_eq!(status, 200);
    // The right request opens it.
    let answer = locket::protocol::open_answer(body.as_bytes(), &reply_key(), &req.header).unwrap();
    assert_eq!(answer.secrets[0].1.expose(), "shared-value-9");
    // Any other request (other nonce) does not.
    let mut other = req.header.clone();
    other.nonce[0] ^= 1;
    assert!(locket::protocol::open_answer(body.as_bytes(), &reply_key(), &other).is_err());
    server.stop().await;
}
