//! A soak under attack: the real `locket` binary on loopback serves many
//! legitimate clients for a fixed time while, beside them, attackers send
//! replays, forged signatures, oversize bodies, garbage, slow trickles and a
//! failed-auth flood, the source file changes under a 1 s refresh, and the
//! config is reloaded (valid and invalid) with SIGHUP.
//!
//! It asserts that every legitimate request got exactly its own current
//! values, that no attack was ever answered with secrets, that the server's
//! RSS stayed bounded, and that the server is ready at the end. It prints
//! its figures. The duration is `LOCKET_SOAK_SECS` (default 15).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{ServerProcess, reply_key, server_key};
use locket::client::Client;
use locket::config::client::ClientConfig;
use locket::keys::{ClientKey, ServerPublicKey};
use locket::protocol::{Header, Request, RequestBody};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 5;
const LEGIT_TASKS: usize = 16;
const MAX_REQUEST_BYTES: usize = 16 * 1024;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn client_key(i: usize) -> ClientKey {
    ClientKey::from_seed(&[100 + i as u8; 32])
}

/// The config; `variant` changes something harmless on every reload.
fn write_config(dir: &Path, variant: u64, broken: bool) {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\nrefresh_interval = \"1s\"\n\
         request_timeout = \"2s\"\nmax_request_bytes = {MAX_REQUEST_BYTES}\n\
         max_failed_auth = 20\nfailed_auth_window = \"10s\"\nclock_skew = \"{}s\"\n",
        30 + variant % 2
    );
    if broken {
        text.push_str("key_bits = 1\n");
    }
    text.push_str("\n[[sources]]\ntype = \"file\"\npath = \"secrets.json\"\n");
    for i in 0..CLIENTS {
        text.push_str(&format!(
            "\n[clients.c{i}]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.0/8\"]\nsecrets = [\"c{i}/*\"]\n",
            client_key(i).public_line()
        ));
    }
    if variant % 2 == 1 {
        text.push_str(&format!(
            "\n[clients.spare]\nkeys = [\"{}\"]\nnetworks = [\"10.0.0.0/8\"]\nsecrets = [\"c0/K0\"]\n",
            client_key(50).public_line()
        ));
    }
    let tmp = dir.join("server.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("server.toml")).unwrap();
}

fn value_of(name: &str, generation: u64) -> String {
    format!("{name}:gen:{generation}:{}", "v".repeat(40))
}

fn write_secrets(dir: &Path, generation: u64) {
    let mut map = BTreeMap::new();
    for i in 0..CLIENTS {
        for k in 0..PER_CLIENT {
            let name = format!("c{i}/K{k}");
            map.insert(name.clone(), value_of(&name, generation));
        }
    }
    let tmp = dir.join("secrets.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&map).unwrap()).unwrap();
    std::fs::rename(tmp, dir.join("secrets.json")).unwrap();
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sealed(signer: &ClientKey, client: &str) -> Vec<u8> {
    let public = ServerPublicKey::from_pem(server_key().public_pem()).unwrap();
    let header = Header {
        client: client.into(),
        server_fingerprint: public.fingerprint.clone(),
        timestamp: locket::clock::unix_now(),
        nonce: locket::crypto::random_bytes().unwrap(),
        instance: None,
    };
    let body = RequestBody {
        names: vec![format!("{client}/K0")],
        reply_key: reply_key().spki_der().to_vec(),
    };
    Request::seal(header, &body, &public, signer)
        .unwrap()
        .encode()
}

/// Tallies of status codes per kind of traffic.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<&'static str, BTreeMap<u16, u64>>>);

impl Tally {
    fn add(&self, kind: &'static str, status: u16) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }
    fn get(&self, kind: &str) -> BTreeMap<u16, u64> {
        self.0
            .lock()
            .unwrap()
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }
}

async fn post(http: &reqwest::Client, addr: SocketAddr, body: Vec<u8>) -> u16 {
    match http
        .post(format!("http://{addr}/v1/secrets"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0, // connection closed by the server
    }
}

/// One connection that trickles a request a byte at a time; returns the
/// status the server answered with (0 if it just closed) and how long the
/// connection was held.
fn slow_sender(addr: SocketAddr, stop: &AtomicBool) -> (u16, Duration) {
    let started = Instant::now();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, started.elapsed());
    };
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let _ = s.write_all(b"POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n");
    let mut buf = [0u8; 256];
    while started.elapsed() < Duration::from_secs(10) && !stop.load(Ordering::Relaxed) {
        if s.write_all(b"{").is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let head = String::from_utf8_lossy(&buf[..n]);
                let status = head
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (status, started.elapsed());
            }
            Err(_) => {}
        }
    }
    (0, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_under_attack() {
    let secs: u64 = std::env::var("LOCKET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    server_key()
        .write_new(&dir.path().join("server-key.pem"))
        .unwrap();
    let generation = Arc::new(AtomicU64::new(0));
    write_secrets(dir.path(), 0);
    write_config(dir.path(), 0, false);
    let server = ServerProcess::start(&dir.path().join("server.toml"), &["--log-format", "json"]);
    let addr = server.addr;
    let pid = server.child.id();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let wrong_values = Arc::new(AtomicU64::new(0));
    let max_seen_generation = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Legitimate clients: each asks for all its secrets and checks that it
    // got exactly its own names, each with a value of a generation that
    // has been written.
    for t in 0..LEGIT_TASKS {
        let (tally, wrong, generation, seen) = (
            Arc::clone(&tally),
            Arc::clone(&wrong_values),
            Arc::clone(&generation),
            Arc::clone(&max_seen_generation),
        );
        tasks.push(tokio::spawn(async move {
            let i = t % CLIENTS;
            let mut cfg = ClientConfig::single(format!("http://{addr}"), format!("c{i}"), "unused");
            cfg.bind = Some(ip(if t % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" }));
            cfg.timeout = Duration::from_secs(10);
            cfg.server_fingerprint = Some(server_key().fingerprint().to_owned());
            let client = Client::with_reply_key(&cfg, client_key(i), reply_key()).unwrap();
            while Instant::now() < deadline {
                match client.fetch(&[]).await {
                    Ok(got) => {
                        let newest = generation.load(Ordering::SeqCst);
                        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
                        let expected: Vec<String> =
                            (0..PER_CLIENT).map(|k| format!("c{i}/K{k}")).collect();
                        let mut ok = names == expected;
                        let mut generations = std::collections::BTreeSet::new();
                        for (name, value) in &got {
                            let g: Option<u64> = value
                                .expose()
                                .strip_prefix(&format!("{name}:gen:"))
                                .and_then(|r| r.split(':').next())
                                .and_then(|g| g.parse().ok());
                            match g {
                                Some(g) if g <= newest && value.expose() == value_of(name, g) => {
                                    seen.fetch_max(g, Ordering::SeqCst);
                                    generations.insert(g);
                                }
                                _ => ok = false,
                            }
                        }
                        // One answer comes from one set: it never tears.
                        if generations.len() > 1 {
                            ok = false;
                        }
                        if !ok {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        tally.add("legitimate", 200);
                    }
                    Err(e) => {
                        eprintln!("legitimate request failed: {e}");
                        tally.add("legitimate", 1);
                    }
                }
            }
        }));
    }

    // Attackers, each kind from its own address.
    let attack = |kind: &'static str, from: &'static str, make: fn(usize) -> Vec<u8>| {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let http = crate::support::http_builder()
                .local_address(ip(from))
                .build()
                .unwrap();
            let mut n = 0;
            while Instant::now() < deadline {
                let status = post(&http, addr, make(n)).await;
                tally.add(kind, status);
                n += 1;
            }
        })
    };
    tasks.push(attack("forged signature", "127.0.0.9", |n| {
        sealed(
            &ClientKey::from_seed(&[200; 32]),
            &format!("c{}", n % CLIENTS),
        )
    }));
    tasks.push(attack("unknown client", "127.0.0.9", |_| {
        sealed(&ClientKey::from_seed(&[201; 32]), "nobody")
    }));
    tasks.push(attack("oversize body", "127.0.0.11", |_| {
        vec![b'{'; MAX_REQUEST_BYTES * 4]
    }));
    tasks.push(attack("garbage", "127.0.0.12", |n| {
        let mut g = locket::crypto::random_bytes::<64>().unwrap().to_vec();
        g.truncate(n % 64);
        g
    }));
    // Replays: a fresh valid request sent once from a good address, then
    // again (twice) from another one.
    {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let good = crate::support::http_builder()
                .local_address(ip("127.0.0.4"))
                .build()
                .unwrap();
            let replayer = crate::support::http_builder()
                .local_address(ip("127.0.0.10"))
                .build()
                .unwrap();
            while Instant::now() < deadline {
                let body = sealed(&client_key(1), "c1");
                tally.add("replay (original)", post(&good, addr, body.clone()).await);
                for _ in 0..2 {
                    tally.add("replay", post(&replayer, addr, body.clone()).await);
                }
            }
        }));
    }
    // Slow senders: four connections at a time, each trickling bytes.
    let slow: Arc<Mutex<Vec<(u16, Duration)>>> = Arc::default();
    for _ in 0..4 {
        let (slow, stop) = (Arc::clone(&slow), Arc::clone(&stop));
        tasks.push(tokio::task::spawn_blocking(move || {
            while Instant::now() < deadline {
                let r = slow_sender(addr, &stop);
                slow.lock().unwrap().push(r);
            }
        }));
    }
    // The source changes, and the config is reloaded: valid, then every
    // third time invalid (and then restored).
    let reloads = {
        let (generation, dir) = (Arc::clone(&generation), dir.path().to_owned());
        tokio::spawn(async move {
            let (mut valid, mut invalid) = (0u64, 0u64);
            let mut tick = 0u64;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(400)).await;
                tick += 1;
                // The counter goes up before the file is written: it is an
                // upper bound of every generation a client can be served
                // (the other order let a refresh between the two writes
                // serve a generation the test did not yet count: a false
                // "wrong value" on a loaded machine).
                let g = generation.load(Ordering::SeqCst) + 1;
                generation.store(g, Ordering::SeqCst);
                write_secrets(&dir, g);
                if tick.is_multiple_of(3) {
                    let broken = tick.is_multiple_of(9);
                    write_config(&dir, tick, broken);
                    crate::support::signal(pid, nix::sys::signal::Signal::SIGHUP);
                    if broken {
                        invalid += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        write_config(&dir, tick, false);
                    } else {
                        valid += 1;
                    }
                }
            }
            (valid, invalid)
        })
    };
    // Server RSS, sampled every 100 ms.
    let rss = {
        let stop = Arc::clone(&stop);
        tokio::task::spawn_blocking(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push(kib);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };

    let reload_counts = reloads.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let samples = rss.await.unwrap();
    let ready = crate::support::http_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    let ready_status = ready.status().as_u16();
    let ready_body = ready.text().await.unwrap();
    let log = server.stop();

    // Figures.
    let peak = samples.iter().copied().max().unwrap_or(0);
    let first = samples.first().copied().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    println!("soak under attack: {secs} s, {LEGIT_TASKS} legitimate tasks, {CLIENTS} clients");
    println!(
        "{:<20} | outcomes (HTTP status: count; 0 = connection closed)",
        "traffic"
    );
    for kind in [
        "legitimate",
        "replay (original)",
        "replay",
        "forged signature",
        "unknown client",
        "oversize body",
        "garbage",
    ] {
        println!("{kind:<20} | {:?}", tally.get(kind));
    }
    let slow = slow.lock().unwrap().clone();
    let longest = slow.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let mut slow_statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for (s, _) in &slow {
        *slow_statuses.entry(*s).or_default() += 1;
    }
    println!(
        "{:<20} | {slow_statuses:?}, longest held {longest:?}",
        "slow senders"
    );
    println!(
        "source generations written {}, newest seen by a client {}; config reloads: {} valid, {} invalid",
        generation.load(Ordering::SeqCst),
        max_seen_generation.load(Ordering::SeqCst),
        reload_counts.0,
        reload_counts.1
    );
    println!(
        "server RSS: first {first} KiB, last {last} KiB, peak {peak} KiB ({} samples)",
        samples.len()
    );

    // Assertions.
    let legit = tally.get("legitimate");
    assert_eq!(legit.get(&1), None, "legitimate requests failed: {legit:?}");
    assert!(
        legit.get(&200).copied().unwrap_or(0) >= 20,
        "too few: {legit:?}"
    );
    assert_eq!(
        wrong_values.load(Ordering::SeqCst),
        0,
        "wrong values served"
    );
    for kind in [
        "replay",
        "forged signature",
        "unknown client",
        "oversize body",
        "garbage",
    ] {
        let outcomes = tally.get(kind);
        assert!(!outcomes.is_empty(), "{kind}: nothing sent");
        assert!(
            !outcomes.contains_key(&200),
            "{kind} was served: {outcomes:?}"
        );
        assert!(
            !outcomes.contains_key(&500),
            "{kind}: server error {outcomes:?}"
        );
    }
    assert!(
        tally.get("forged signature").contains_key(&429),
        "the flood was never limited"
    );
    assert!(
        tally.get("replay").contains_key(&403),
        "replays never reached the nonce check"
    );
    assert!(tally.get("oversize body").contains_key(&413));
    assert!(tally.get("garbage").contains_key(&400));
    assert!(tally.get("replay (original)").contains_key(&200));
    assert!(!slow.is_empty());
    assert!(
        longest < Duration::from_secs(6),
        "a slow sender held a connection {longest:?}"
    );
    assert!(slow_statuses.contains_key(&408), "{slow_statuses:?}");
    assert!(
        max_seen_generation.load(Ordering::SeqCst) >= 2,
        "refresh never observed"
    );
    assert!(
        reload_counts.0 >= 1 && reload_counts.1 >= 1,
        "{reload_counts:?}"
    );
    assert!(
        log.contains("config reloaded"),
        "no valid reload in the log"
    );
    assert!(
        log.contains("config reload rejected"),
        "no rejected reload in the log"
    );
    assert!(samples.len() >= 10, "RSS not sampled");
    assert!(peak < RSS_LIMIT_KIB, "server RSS peaked at {peak} KiB");
    assert_eq!(ready_status, 200, "{ready_body}");
    assert!(ready_body.contains("\"stale\":false"), "{ready_body}");
    assert!(!log.contains(&"v".repeat(40)), "a value reached the log");
}
