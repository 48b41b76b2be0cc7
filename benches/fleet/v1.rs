//! `[v1]` rows of the fleet bench: the original locket's wire protocol as
//! its Go clients speak it, against the real `locket` binary, beside v1's
//! own crypto floor.
//!
//! The shape of the side-by-side measurement in issue #33: 16 services with
//! 10 secrets each, RSA-2048 server and client keys, one secret per request
//! (v1 has no batches), keep-alive connections (Go's `http.Client` keeps
//! them). Each client signs and seals its requests before the clock starts,
//! so the server's CPU (from /proc) is all that is measured.
//!
//! v1's floor per request: one RSA-2048 OAEP decryption with the server key
//! (the name), one ed25519 verification, and one RSA-2048 OAEP encryption
//! to the client's key (the value). Nothing else is unavoidable.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use locket::crypto::{Encrypter, oaep_decrypt, oaep_encrypt};
use locket::keys::{ClientKey, ServerKey};

use crate::{cpu_seconds, percentile, thread_cpu};

pub(crate) const SERVICES: usize = 16;
const SECRETS_PER_SERVICE: usize = 10;

/// One v1 row.
pub(crate) struct V1Row {
    pub c: usize,
    pub requests: usize,
    pub failed: usize,
    pub req_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub cpu_per_req: f64,
    pub floor: Duration,
    /// The lowest and highest CPU/floor of the repeats the row is the
    /// median of.
    pub spread: (f64, f64),
}

/// How many times each `[v1]` row is run (LOCKET_BENCH_V1_REPEATS, default
/// 3): the row shown is the median by CPU/floor, as the issue's own
/// measurements took medians of three interleaved runs; the spread is
/// printed beside it, so no outlier is hidden.
pub(crate) fn repeats() -> usize {
    std::env::var("LOCKET_BENCH_V1_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(3)
}

/// A Go client of one service: its ed25519 key and its RSA key, in the
/// original's PEM form.
struct GoClient {
    signing: ClientKey,
    pubkey_pem: String,
}

/// A new RSA-2048 public key in the original's PEM form (the private half
/// is not needed: nothing here opens the answers).
fn client_rsa_pem() -> String {
    use rsa::pkcs8::EncodePublicKey as _;
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let der = key.to_public_key().to_public_key_der().unwrap();
    locket::v1::wire::public_key_pem(der.as_bytes())
}

/// Each service's ed25519 seed: the fleet rows' seeds, past their
/// clients' range.
fn seed(i: usize) -> [u8; 32] {
    crate::seed(7_000 + i)
}

/// Writes the server's files; returns the server key.
fn setup(dir: &Path) -> ServerKey {
    let key = ServerKey::generate(2048).unwrap();
    key.write_new(&dir.join("server-key.pem")).unwrap();
    let mut env = String::new();
    let mut clients = String::new();
    for s in 0..SERVICES {
        for i in 0..SECRETS_PER_SERVICE {
            env.push_str(&format!(
                "SVC{s:02}_S{i}=value-{s:02}-{i}-{}\n",
                "x".repeat(40)
            ));
        }
        clients.push_str(&format!(
            "[clients.svc{s:02}]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.0/8\"]\nsecrets = [\"SVC{s:02}_*\"]\n",
            ClientKey::from_seed(&seed(s)).public_line()
        ));
    }
    std::fs::write(dir.join("secrets.env"), env).unwrap();
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\nmax_failed_auth = 0\n[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n{clients}[v1]\nenable = true\n"
        ),
    )
    .unwrap();
    key
}

/// A v1 request body from `client` for `name`, stamped `timestamp`.
fn request(server: &Encrypter, client: &GoClient, name: &str, timestamp: i64) -> Vec<u8> {
    let payload = oaep_encrypt(server, b"", name.as_bytes()).unwrap();
    let nonce = B64.encode(locket::crypto::random_bytes::<16>().unwrap());
    let message = format!("{name}\n{}\n{timestamp}\n{nonce}", client.pubkey_pem);
    let signature = client.signing.sign(message.as_bytes());
    serde_json::json!({
        "payload": B64.encode(payload),
        "signature": B64.encode(signature.to_bytes()),
        "client_pubkey": client.pubkey_pem,
        "timestamp": timestamp,
        "nonce": nonce,
    })
    .to_string()
    .into_bytes()
}

/// v1's floor per request, in this thread's CPU time.
fn floor(server: &ServerKey, client: &GoClient) -> Duration {
    let public = Encrypter::from_spki_der(server.spki_der()).unwrap();
    let body = request(&public, client, "SVC00_S0", 1);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ct = B64.decode(v["payload"].as_str().unwrap()).unwrap();
    let message = format!(
        "SVC00_S0\n{}\n1\n{}",
        client.pubkey_pem,
        v["nonce"].as_str().unwrap()
    );
    let signature = ed25519_dalek::Signature::from_slice(
        &B64.decode(v["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let verifying = client.signing.verifying_key();
    let client_public = locket::v1::wire::parse_public_key_pem(&client.pubkey_pem).unwrap();
    let rounds = 40;
    let start = thread_cpu();
    for _ in 0..rounds {
        std::hint::black_box(oaep_decrypt(server.decrypter(), b"", &ct).unwrap());
        assert!(
            verifying
                .verify_strict(message.as_bytes(), &signature)
                .is_ok()
        );
        std::hint::black_box(
            oaep_encrypt(
                &client_public,
                b"",
                b"value-00-0-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            )
            .unwrap(),
        );
    }
    (thread_cpu() - start) / rounds
}

/// What one run of `c` clients, `per_client` requests each, cost.
struct Run {
    requests: usize,
    failed: usize,
    wall: Duration,
    cpu: f64,
    latencies: Vec<Duration>,
}

fn run(
    rt: &tokio::runtime::Runtime,
    url: &str,
    pid: u32,
    public: &Encrypter,
    clients: &[GoClient],
    c: usize,
    per_client: usize,
) -> Run {
    let now = locket::clock::unix_now();
    // Every request signed and sealed before the clock starts.
    let bodies: Vec<Vec<Vec<u8>>> = (0..c)
        .map(|i| {
            let s = i % SERVICES;
            (0..per_client)
                .map(|r| {
                    let name = format!("SVC{s:02}_S{}", r % SECRETS_PER_SERVICE);
                    request(public, &clients[s], &name, now)
                })
                .collect()
        })
        .collect();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = rt.block_on(async {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|bodies| {
                let url = url.to_owned();
                tokio::spawn(async move {
                    let http = locket::http_client(locket::Roots::None).build().unwrap();
                    let mut lat = Vec::new();
                    let mut failed = 0;
                    for body in bodies {
                        let t = Instant::now();
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let ok = match sent {
                            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        lat.push(t.elapsed());
                        failed += usize::from(!ok);
                    }
                    (lat, failed)
                })
            })
            .collect();
        crate::join_all(tasks).await
    });
    let wall = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    latencies.sort();
    Run {
        requests: latencies.len(),
        failed: results.iter().map(|r| r.1).sum(),
        wall,
        cpu,
        latencies,
    }
}

/// Runs the `[v1]` rows (C = 1, 4, 16), `total` requests each, against a
/// fresh server.
pub(crate) fn rows(rt: &tokio::runtime::Runtime, total: usize) -> Vec<V1Row> {
    let dir = tempfile::tempdir().unwrap();
    let key = setup(dir.path());
    // The fleet rows' server start: at log level warn, ready on /readyz.
    let server = crate::Server::start(dir.path());
    let pid = server.child.id();
    let public = Encrypter::from_spki_der(key.spki_der()).unwrap();
    // One RSA key per service, as each Go client process has its own.
    let clients: Vec<GoClient> = (0..SERVICES)
        .map(|s| GoClient {
            signing: ClientKey::from_seed(&seed(s)),
            pubkey_pem: client_rsa_pem(),
        })
        .collect();
    let url = format!("http://{}/", server.addr);
    // Warm-up (not reported): pages, threads, connections.
    run(rt, &url, pid, &public, &clients, 4, 20);
    let mut out = Vec::new();
    for c in [1, 4, 16] {
        let mut runs: Vec<V1Row> = (0..repeats())
            .map(|_| {
                // The floor measured next to the row, five times before and
                // five after, and the median taken (as for the v2 rows).
                let mut floors: Vec<Duration> = (0..5).map(|_| floor(&key, &clients[0])).collect();
                let r = run(rt, &url, pid, &public, &clients, c, (total / c).max(3));
                floors.extend((0..5).map(|_| floor(&key, &clients[0])));
                floors.sort();
                V1Row {
                    c,
                    requests: r.requests,
                    failed: r.failed,
                    req_per_s: r.requests as f64 / r.wall.as_secs_f64(),
                    p50: percentile(&r.latencies, 0.5),
                    p99: percentile(&r.latencies, 0.99),
                    cpu_per_req: r.cpu / r.requests as f64,
                    floor: (floors[4] + floors[5]) / 2,
                    spread: (0.0, 0.0),
                }
            })
            .collect();
        let ratio = |r: &V1Row| r.cpu_per_req / r.floor.as_secs_f64();
        runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let spread = (ratio(&runs[0]), ratio(&runs[runs.len() - 1]));
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        let requests: usize = runs.iter().map(|r| r.requests).sum();
        let mut median = runs.swap_remove(runs.len() / 2);
        median.spread = spread;
        median.failed = failed;
        median.requests = requests;
        out.push(median);
    }
    drop(server);
    out
}

/// Proves the v1 harness works (under `cargo test --all-targets`).
pub(crate) fn harness_ok() -> bool {
    let key = ServerKey::generate(2048).unwrap();
    let client = GoClient {
        signing: ClientKey::from_seed(&seed(0)),
        pubkey_pem: client_rsa_pem(),
    };
    floor(&key, &client) > Duration::ZERO
}
