//! Which reply key a client sends: a fresh X25519 key (HPKE) for every
//! request, bound to the server process, as the server's signed key
//! response announces; a response stripped on the way is refused. A proxy in front of a real server shows
//! the client a new or an old `GET /v1/key` and keeps every request body,
//! which the test opens with the server's key to see the reply key inside.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

use crate::support::{Registered, TestServer, server_key};
use locket::client::Client;
use locket::keys::{ClientKey, ReplyPublicKey};
use locket::protocol::Request;

type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// How the proxy bends `GET /v1/key`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bend {
    None,
    /// Strip `reply_keys` and `instance`, as a downgrading attacker would
    /// (servers before them did not announce them).
    Strip,
    /// The same, and the signature too.
    StripAll,
}

/// A proxy to `upstream` on a port of its own, bending `GET /v1/key`.
async fn proxy(upstream: SocketAddr, bend: Bend) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let http = crate::support::http_builder().build().unwrap();
    let key = {
        let http = http.clone();
        warp::path!("v1" / "key").and(warp::get()).then(move || {
            let http = http.clone();
            async move {
                let mut key: serde_json::Value = http
                    .get(format!("http://{upstream}/v1/key"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if bend != Bend::None {
                    let key = key.as_object_mut().unwrap();
                    key.remove("reply_keys");
                    key.remove("instance");
                    if bend == Bend::StripAll {
                        key.remove("signature");
                    }
                }
                warp::reply::json(&key)
            }
        })
    };
    let secrets = {
        let seen = Arc::clone(&seen);
        warp::path!("v1" / "secrets")
            .and(warp::post())
            .and(warp::body::bytes())
            .then(move |body: bytes::Bytes| {
                let (http, seen) = (http.clone(), Arc::clone(&seen));
                async move {
                    seen.lock().unwrap().push(body.to_vec());
                    let answer = http
                        .post(format!("http://{upstream}/v1/secrets"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = answer.status().as_u16();
                    warp::reply::with_status(
                        answer.bytes().await.unwrap().to_vec(),
                        warp::http::StatusCode::from_u16(status).unwrap(),
                    )
                }
            })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(key.or(secrets)).incoming(listener).run());
    (url, seen)
}

/// The reply keys inside the requests the proxy saw, and whether each was
/// bound to an instance.
fn reply_keys(seen: &Seen) -> Vec<(ReplyPublicKey, Vec<u8>, bool)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|body| {
            let request = Request::decode(body).unwrap();
            let opened = request.open(server_key()).unwrap();
            (
                locket::keys::parse_reply_key(&opened.reply_key).unwrap(),
                opened.reply_key,
                request.header.instance.is_some(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn x25519_reply_keys_bound_requests_and_no_downgrade() {
    let clients = [Registered::new("app", 91, &["127.0.0.0/8"], &["A"])];
    let server = TestServer::start("A=a-value\n", &clients).await;
    let (url, seen) = proxy(server.addr, Bend::None).await;
    let mut config = locket::config::client::ClientConfig::single(url, "app", "unused");
    config.server_fingerprint = Some(server.fingerprint());
    let client = Client::new(&config, ClientKey::from_seed(&[91; 32])).unwrap();
    for _ in 0..2 {
        let got = client.fetch(&["A".into()]).await.unwrap();
        assert_eq!(got[0].1.expose(), "a-value");
    }
    let keys = reply_keys(&seen);
    assert_eq!(keys.len(), 2);
    for (key, _, bound) in &keys {
        assert!(
            matches!(key, ReplyPublicKey::X25519(_)),
            "X25519 when announced"
        );
        assert!(*bound, "bound to the announced instance");
    }
    assert_ne!(keys[0].1, keys[1].1, "a fresh X25519 key per request");

    // Someone in between strips `instance` and `reply_keys` (the second
    // review's downgrade to unbound requests with one RSA reply key), with
    // or without the signature: the client sends nothing.
    for bend in [Bend::Strip, Bend::StripAll] {
        let (url, seen) = proxy(server.addr, bend).await;
        let mut config = locket::config::client::ClientConfig::single(url, "app", "unused");
        config.server_fingerprint = Some(server.fingerprint());
        config.timeout = std::time::Duration::from_secs(2);
        let client = Client::new(&config, ClientKey::from_seed(&[91; 32])).unwrap();
        let e = client.fetch(&["A".into()]).await.unwrap_err().to_string();
        assert!(e.contains("not signed by its key"), "{bend:?}: {e}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "{bend:?}: a request was sent"
        );
    }
    server.stop().await;
}

/// An X25519 reply key that no answer can be sealed to (a low-order point)
/// is the requester's error: 400, like a bad RSA key, not a 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_low_order_x25519_reply_key_gets_400() {
    let clients = [Registered::new("app", 92, &["127.0.0.0/8"], &["A"])];
    let server = TestServer::start("A=a-value\n", &clients).await;
    let mut reply_key = locket::keys::X25519_SPKI_PREFIX.to_vec();
    reply_key.extend_from_slice(&[0u8; 32]);
    let header = locket::protocol::Header {
        client: "app".into(),
        server_fingerprint: server.fingerprint(),
        timestamp: locket::clock::unix_now(),
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = locket::protocol::RequestBody {
        names: vec!["A".into()],
        reply_key,
    };
    let request = Request::seal(
        header,
        &body,
        &server.public_key(),
        &ClientKey::from_seed(&[92; 32]),
    )
    .unwrap()
    .encode();
    let (status, answer) = crate::support::post_raw(server.addr, request, None).await;
    assert_eq!(status, 400, "{answer}");
    server.stop().await;
}
