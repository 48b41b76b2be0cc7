//! Sixteen hosts holding thousands of sockets with unfinished request heads
//! against the real `locket` binary, and opening new ones as fast as they
//! can while genuine clients fetch: is a client at one of the flooding
//! addresses (a local user on its host, a neighbour behind its NAT) still
//! served, and one at another address, and how much memory does the server
//! use? `cargo run --release --example connection_flood` (as root or with a
//! high enough open-files limit; it raises its own soft limit). Prints the
//! figures; the targets from the security review: both clients get every
//! fetch, and the server's memory is bounded as a whole: its peak RSS stays
//! under what it uses idle plus 32 KiB per connection slot (an 8 KiB head
//! buffer, the 32 MiB heads budget shared by the default 4,096 slots; the
//! connection's own state; and the allocator's slack while connections
//! churn), 128 MiB above idle. Before the bound, the review measured
//! 390 MiB.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locket::client::Client;
use locket::config::client::ClientConfig;
use locket::keys::{ClientKey, ServerKey};

/// The flooding addresses: 127.0.0.10 to 127.0.0.25.
const SOURCES: usize = 16;
/// Sockets each source keeps open (its share is 256: the rest push out its
/// own oldest).
const PER_SOURCE: usize = 300;
/// Just under one connection's head buffer at the default 4,096
/// connections (8 KiB): the most a head can hold without a 431.
const HEAD_BYTES: usize = 7 * 1024;
const FETCHES: usize = 12;

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("address"))?;
    socket.connect(to).await?.into_std()
}

fn main() {
    let want = (2 * SOURCES * PER_SOURCE + 1024) as u64;
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            want.min(hard),
            hard,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    ServerKey::generate(2048)
        .unwrap()
        .write_new(&dir.path().join("server-key.pem"))
        .unwrap();
    let client_key = ClientKey::from_seed(&[3; 32]);
    std::fs::write(dir.path().join("s.env"), "A=a-value\n").unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\n[[sources]]\ntype = \"dotenv\"\npath = \"s.env\"\n[clients.app]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.0/8\"]\nsecrets = [\"A\"]\n",
            client_key.public_line()
        ),
    )
    .unwrap();
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("locket"))
        .unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.path().join("server.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it first (cargo build --release)",
                bin.display()
            )
        });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    let rss_before = status_kib(pid, "VmRSS:");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /v1/secrets HTTP/1.1\r\nhost: x\r\nx-pad: {}",
        "a".repeat(HEAD_BYTES)
    );
    // Unfinished heads: no blank line ever comes.
    let open_one = |from: &str| -> Option<TcpStream> {
        let mut s = rt.block_on(connect_from(from, addr)).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        Some(s)
    };
    let source = |i: usize| format!("127.0.0.{}", 10 + i % SOURCES);
    let mut held = std::collections::VecDeque::new();
    let mut refused = 0;
    for i in 0..SOURCES * PER_SOURCE {
        match open_one(&source(i)) {
            Some(s) => held.push_back(s),
            None => refused += 1,
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let rss_flooded = status_kib(pid, "VmRSS:");

    // While the genuine clients fetch, the flood goes on: every source
    // opens new sockets as fast as one thread can, dropping its oldest.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = std::sync::Arc::clone(&stop);
        let head = head.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut opened = 0u64;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let from = format!("127.0.0.{}", 10 + i % SOURCES);
                i += 1;
                if let Ok(mut s) = rt.block_on(connect_from(&from, addr)) {
                    let _ = s.write_all(head.as_bytes());
                    held.push_back(s);
                    opened += 1;
                }
                if held.len() > SOURCES * PER_SOURCE {
                    held.pop_front();
                }
            }
            (opened, held)
        })
    };
    let fetch_from = |bind: &str| {
        let mut config = ClientConfig::single(format!("http://{addr}"), "app", "unused");
        config.bind = Some(bind.parse().unwrap());
        config.insecure_unpinned = true;
        config.timeout = Duration::from_secs(10);
        let client = Client::new(&config, ClientKey::from_seed(&[3; 32])).unwrap();
        let mut ok = 0;
        let mut slowest = Duration::ZERO;
        for _ in 0..FETCHES {
            let t = Instant::now();
            if rt
                .block_on(client.fetch(&["A".to_string()]))
                .is_ok_and(|v| v[0].1.expose() == "a-value")
            {
                ok += 1;
            }
            slowest = slowest.max(t.elapsed());
        }
        (ok, slowest)
    };
    let flooding_started = Instant::now();
    let (same_ok, same_slowest) = fetch_from("127.0.0.10");
    let (other_ok, other_slowest) = fetch_from("127.0.0.6");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reopened, held) = flooder.join().unwrap();
    let flooding_secs = flooding_started.elapsed().as_secs_f64();
    let rss_peak = status_kib(pid, "VmHWM:");
    println!(
        "{SOURCES} hosts opened {} sockets ({} refused by the kernel) with {} KB unfinished heads each, in {flood_secs:.1} s",
        SOURCES * PER_SOURCE - refused,
        refused,
        HEAD_BYTES / 1024
    );
    println!(
        "then, while they opened {reopened} more ({:.0}/s) and genuine clients fetched:",
        reopened as f64 / flooding_secs
    );
    println!(
        "  a client at a flooding address: {same_ok} of {FETCHES} fetches served; slowest {same_slowest:?}"
    );
    println!(
        "  a client at another address:    {other_ok} of {FETCHES} fetches served; slowest {other_slowest:?}"
    );
    println!(
        "server RSS: {:.1} MiB idle, {:.1} MiB with the flood held, peak {:.1} MiB (target: under idle + 4,096 slots x 32 KiB = {:.1} MiB)",
        rss_before as f64 / 1024.0,
        rss_flooded as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        (rss_before as f64 + 4096.0 * 32.0) / 1024.0
    );
    drop(held);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
