//! One host holding thousands of sockets against the real `locket` binary:
//! does a client at another address still get its secrets, and how much
//! memory does the server use? `cargo run --release --example
//! connection_flood` (as root or with a high enough open-files limit; it
//! raises its own soft limit). Prints the figures; the target from the
//! security review is: the other client is served, and the server's peak
//! RSS stays under 64 MiB, with 5,000 sockets each holding 60 KB of an
//! unfinished request head.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locket::client::Client;
use locket::config::client::ClientConfig;
use locket::keys::{ClientKey, ServerKey};

const SOCKETS: usize = 5_000;
const HEAD_BYTES: usize = 60 * 1024;

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
    let want = (SOCKETS + 512) as u64;
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
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..SOCKETS {
        match rt.block_on(connect_from("127.0.0.5", addr)) {
            Ok(mut s) => {
                // Unfinished head: no blank line ever comes.
                let _ = s.write(head.as_bytes());
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();

    let mut config = ClientConfig::single(format!("http://{addr}"), "app", "unused");
    config.bind = Some("127.0.0.6".parse().unwrap());
    config.insecure_unpinned = true;
    config.timeout = Duration::from_secs(10);
    let client = Client::new(&config, client_key).unwrap();
    let mut ok = 0;
    let mut latencies = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        if rt
            .block_on(client.fetch(&["A".to_string()]))
            .is_ok_and(|v| v[0].1.expose() == "a-value")
        {
            ok += 1;
        }
        latencies.push(t.elapsed());
    }
    let rss_peak = status_kib(pid, "VmHWM:");
    let rss_now = status_kib(pid, "VmRSS:");
    println!(
        "one host, {} sockets opened ({} refused by the kernel) with {} KB unfinished heads each, in {flood_secs:.1} s",
        held.len(),
        refused,
        HEAD_BYTES / 1024
    );
    println!(
        "another host: {ok} of 12 fetches served; slowest {:?}",
        latencies.iter().max().unwrap()
    );
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with the flood, peak {:.1} MiB (target: under 64 MiB)",
        rss_before as f64 / 1024.0,
        rss_now as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    drop(held);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
