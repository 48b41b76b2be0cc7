//! Measures how long the server takes to refuse each kind of bad request,
//! so that the difference between "unknown client", "wrong key", "wrong
//! address" and "bad signature" can be reported (they should not differ in
//! any way that tells an attacker which names are registered):
//! `cargo run --release --example rejection_timing`.
use std::time::{Duration, Instant};

use locket::keys::{ClientKey, ReplyKey, ServerKey, ServerPublicKey};
use locket::protocol::{Header, Request, RequestBody};
use locket::server::Server;

const ROUNDS: usize = 400;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let key = ServerKey::generate(2048).unwrap();
    let public = ServerPublicKey::from_pem(key.public_pem()).unwrap();
    let fingerprint = key.fingerprint().to_owned();
    let app = ClientKey::from_seed(&[1; 32]);
    std::fs::write(dir.path().join("s.env"), "A=1\n").unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            "max_failed_auth = 0\n[[sources]]\ntype = \"dotenv\"\npath = \"s.env\"\n[clients.app]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.2\"]\nsecrets = [\"A\"]\n",
            app.public_line()
        ),
    )
    .unwrap();
    key.write_new(&dir.path().join("server-key.pem")).unwrap();
    let server = Server::load(&dir.path().join("server.toml")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let reply = ReplyKey::generate().unwrap();

    let stranger = ClientKey::from_seed(&[9; 32]);
    let kinds: [(&str, &str, &ClientKey, &str, bool); 4] = [
        ("unknown client", "ghost", &stranger, "127.0.0.2", false),
        ("wrong key", "app", &stranger, "127.0.0.2", false),
        ("wrong address", "app", &app, "127.0.0.3", false),
        ("bad signature", "app", &app, "127.0.0.2", true),
    ];
    println!(
        "{:<16} | {:>9} | {:>9} | {:>9}   ({ROUNDS} requests each, interleaved, over loopback)",
        "rejection", "p10 µs", "p50 µs", "p90 µs"
    );
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let clients: Vec<reqwest::Client> = kinds
        .iter()
        .map(|(_, _, _, bind, _)| {
            locket::http_client(locket::Roots::None)
                .local_address(bind.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap()
        })
        .collect();
    for _ in 0..ROUNDS {
        for (i, (_, name, signer, _, corrupt)) in kinds.iter().enumerate() {
            let header = Header {
                client: (*name).into(),
                server_fingerprint: fingerprint.clone(),
                timestamp: locket::clock::unix_now(),
                nonce: locket::crypto::random_bytes().unwrap(),
                instance: None,
            };
            let body = RequestBody {
                names: vec!["A".into()],
                reply_key: reply.spki_der().to_vec(),
            };
            let mut request = Request::seal(header, &body, &public, signer).unwrap();
            if *corrupt {
                // The signature no longer matches the bytes it covers (a
                // full-cost verification). A signature whose R is not even a
                // valid point is refused sooner, for any client name alike.
                request.ciphertext[3] ^= 1;
            }
            let bytes = request.encode();
            let started = Instant::now();
            let r = clients[i]
                .post(format!("http://{addr}/v1/secrets"))
                .body(bytes)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let _ = r.bytes().await.unwrap();
            samples[i].push(started.elapsed());
            assert_eq!(status, 403);
        }
    }
    for ((label, ..), s) in kinds.iter().zip(samples.iter_mut()) {
        s.sort();
        let p = |q: f64| s[((s.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "{label:<16} | {:>9.1} | {:>9.1} | {:>9.1}",
            p(0.1),
            p(0.5),
            p(0.9)
        );
    }
}
