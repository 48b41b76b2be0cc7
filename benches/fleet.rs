//! The fleet-restart benchmark: `cargo bench --bench fleet`.
//!
//! Starts the real `locket` server as its own process on loopback with
//! 10,000 secrets and 1,000 registered clients, drives it with C concurrent
//! library clients, and reads the server's CPU time and peak RSS from
//! /proc. Beside it, it measures the crypto floor (the cryptography the
//! server cannot avoid per request) in this process, so the table shows
//! server CPU per request divided by that floor. It runs at the default key
//! size (3072) and at 2048, prints a table and writes JSON to
//! `target/bench-fleet.json` (or $LOCKET_BENCH_JSON).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks
//! that it can set up, so CI does not spend minutes here.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locket::client::Client;
use locket::config::client::ClientConfig;
use locket::keys::{ClientKey, ReplyKey, ServerKey, ServerPublicKey};
use locket::protocol::{self, Header, Request, RequestBody};
use locket::secret::SecretValue;

#[path = "fleet/v1.rs"]
mod v1;

const SECRETS: usize = 10_000;
const CLIENTS: usize = 1_000;
const PER_CLIENT: usize = 10;

fn seed(i: usize) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields[11].parse().unwrap(), fields[12].parse().unwrap());
    (utime + stime) / ticks_per_second()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn thread_cpu() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// Sends `sig` to the process `pid`.
fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Each task's result, in order (a task that panicked fails the bench).
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a bench task panicked"));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Writes the server's files: key, 10,000 secrets, 1,000 clients.
fn setup(dir: &Path, bits: usize) -> ServerKey {
    let key = ServerKey::generate(bits).unwrap();
    key.write_new(&dir.join("server-key.pem")).unwrap();
    let mut env = String::new();
    for i in 0..SECRETS {
        writeln!(env, "S{i:05}=\"value-{i:05}-{}\"", "x".repeat(40)).unwrap();
    }
    std::fs::write(dir.join("secrets.env"), env).unwrap();
    let mut toml = String::from(
        "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\nreplay_cache_size = 1000000\nrefresh_interval = \"0s\"\n\n[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n",
    );
    for c in 0..CLIENTS {
        let names: Vec<String> = (0..PER_CLIENT)
            .map(|j| format!("\"S{:05}\"", c * PER_CLIENT + j))
            .collect();
        writeln!(
            toml,
            "\n[clients.c{c}]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.0/8\"]\nsecrets = [{}]",
            ClientKey::from_seed(&seed(c)).public_line(),
            names.join(", ")
        )
        .unwrap();
    }
    // v1 on, for the garbage-body row (it takes nothing from v2).
    toml.push_str("\n[v1]\nenable = true\n");
    std::fs::write(dir.join("server.toml"), toml).unwrap();
    key
}

struct Server {
    child: Child,
    addr: String,
    startup: Duration,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_locket"))
            .args(["--log-level", "warn", "serve", "--config"])
            .arg(dir.join("server.toml"))
            .env("LOCKET_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The listening line is at info; read the port from /proc instead.
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let pid = child.id();
        let addr = loop {
            if let Some(port) = listening_port(pid) {
                break format!("127.0.0.1:{port}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        // Ready = answering /readyz with 200.
        loop {
            if http_status(&addr, "/readyz") == Some(200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Self {
            child,
            addr,
            startup: started.elapsed(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_port(pid: u32) -> Option<u16> {
    // Sockets of the process, matched against listening TCP sockets.
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(3) == Some(&"0A") && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9)))
            .then(|| u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Per-request cryptography the server cannot avoid, timed on one thread.
fn crypto_floor(server: &ServerKey, reply: &ReplyKey, names: usize) -> Duration {
    let public = ServerPublicKey::from_pem(server.public_pem()).unwrap();
    let client = ClientKey::from_seed(&seed(0));
    let header = Header {
        client: "c0".into(),
        server_fingerprint: server.fingerprint().into(),
        timestamp: 1,
        nonce: [1; 16],
        instance: None,
    };
    let body = RequestBody {
        names: (0..names).map(|i| format!("S{i:05}")).collect(),
        reply_key: reply.spki_der().to_vec(),
    };
    let request = Request::seal(header.clone(), &body, &public, &client).unwrap();
    let verifying = client.verifying_key();
    let values: locket::secret_set::SecretSet = (0..names)
        .map(|i| {
            (
                format!("S{i:05}"),
                SecretValue::from(format!("value-{i:05}-{}", "x".repeat(40))),
            )
        })
        .collect();
    let reply_public = locket::keys::parse_reply_key(reply.spki_der()).unwrap();
    let rounds = 20;
    let start = thread_cpu();
    for _ in 0..rounds {
        assert!(request.verify(&verifying));
        let opened = request.open(server).unwrap(); // RSA private op + AEAD open
        let refs: Vec<(&str, &SecretValue)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let plain = protocol::encode_answer(&refs, &[]);
        std::hint::black_box(protocol::seal_answer(plain, &reply_public, &header).unwrap()); // RSA public op + AEAD
        std::hint::black_box(opened);
    }
    (thread_cpu() - start) / rounds
}

/// Lets this process and the server (its child) hold thousands of sockets.
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    }
}

/// A fleet restarting at once: `n` clients, each from its own loopback
/// address (as hosts are), connect and fetch their 10 secrets at the same
/// instant. Connect time is the TCP handshake (a full listen queue shows
/// as SYN retries of a second or more); fetch time runs from the connect
/// to the last byte of the answer.
struct Burst {
    n: usize,
    connect_p50: Duration,
    connect_p99: Duration,
    fetch_p50: Duration,
    fetch_p99: Duration,
    failed: usize,
}

fn burst(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    n: usize,
    key: &ServerKey,
    reply: &ReplyKey,
) -> Burst {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let public = ServerPublicKey::from_pem(key.public_pem()).unwrap();
    let now = locket::clock::unix_now();
    // Every request sealed and signed before the clock starts.
    let requests: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let c = i % CLIENTS;
            let header = Header {
                client: format!("c{c}"),
                server_fingerprint: key.fingerprint().to_owned(),
                timestamp: now,
                nonce: locket::crypto::random_bytes().unwrap(),
                instance: None,
            };
            let body = RequestBody {
                names: Vec::new(),
                reply_key: reply.spki_der().to_vec(),
            };
            let body = Request::seal(header, &body, &public, &ClientKey::from_seed(&seed(c)))
                .unwrap()
                .encode();
            let mut http = format!(
                "POST /v1/secrets HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            http.extend_from_slice(&body);
            http
        })
        .collect();
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let results: Vec<Option<(Duration, Duration)>> = rt.block_on(async {
        let tasks: Vec<_> = requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| {
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    let from: std::net::SocketAddr =
                        format!("127.0.{}.{}:0", 1 + i / 250, 1 + i % 250)
                            .parse()
                            .unwrap();
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(from).ok()?;
                    start.wait().await;
                    let t = Instant::now();
                    let mut stream = socket.connect(to).await.ok()?;
                    let connected = t.elapsed();
                    stream.write_all(&request).await.ok()?;
                    let mut answer = Vec::new();
                    stream.read_to_end(&mut answer).await.ok()?;
                    answer
                        .starts_with(b"HTTP/1.1 200")
                        .then(|| (connected, t.elapsed()))
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.ok().flatten());
        }
        out
    });
    let mut connects: Vec<Duration> = results.iter().flatten().map(|r| r.0).collect();
    let mut fetches: Vec<Duration> = results.iter().flatten().map(|r| r.1).collect();
    connects.sort();
    fetches.sort();
    Burst {
        n,
        connect_p50: percentile(&connects, 0.5),
        connect_p99: percentile(&connects, 0.99),
        fetch_p50: percentile(&fetches, 0.5),
        fetch_p99: percentile(&fetches, 0.99),
        failed: n - connects.len(),
    }
}

/// Cold clients at boot: `n` `locket-client render` processes started
/// together against the warm server, each for its own client and folder.
/// Returns the wall time until the last one is done and the client CPU
/// (user + system, from the kernel's accounting of reaped children) per
/// process.
fn cold_renders(addr: &str, fp: &str, dir: &Path, n: usize) -> (Duration, Duration) {
    for i in 0..n {
        let key = dir.join(format!("cold-{i}.key"));
        if !key.exists() {
            ClientKey::from_seed(&seed(i)).write_new(&key).unwrap();
        }
        let out = dir.join(format!("cold-{i}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
    }
    let children_cpu = || {
        let u =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
        let d = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
        };
        d(u.user_time()) + d(u.system_time())
    };
    let cpu_before = children_cpu();
    let started = Instant::now();
    let children: Vec<Child> = (0..n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_locket-client"))
                .args([
                    "--server",
                    &format!("http://{addr}"),
                    "--name",
                    &format!("c{i}"),
                    "--key",
                ])
                .arg(dir.join(format!("cold-{i}.key")))
                .args(["--server-fingerprint", fp, "render", "--dir"])
                .arg(dir.join(format!("cold-{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wall = started.elapsed();
    (wall, (children_cpu() - cpu_before) / n as u32)
}

#[derive(Clone, Copy)]
enum Workload {
    Fleet,
    Single,
}

struct Row {
    bits: usize,
    workload: &'static str,
    concurrency: usize,
    requests: usize,
    secrets: usize,
    wall: Duration,
    server_cpu: f64,
    p50: Duration,
    p99: Duration,
}

#[allow(clippy::too_many_arguments)]
fn drive(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    pid: u32,
    bits: usize,
    workload: Workload,
    c: usize,
    reply: &ReplyKey,
    fp: &str,
) -> Row {
    // About 1,200 requests per row (LOCKET_BENCH_REQUESTS), so that /proc's
    // 10 ms CPU ticks are under 2% of the server's CPU time in every row.
    let total: usize = std::env::var("LOCKET_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1200);
    let per_client = (total / c).max(3);
    let clients: Vec<Arc<Client>> = (0..c)
        .map(|i| {
            let mut cfg = ClientConfig::single(format!("http://{addr}"), format!("c{i}"), "unused");
            cfg.server_fingerprint = Some(fp.to_owned());
            cfg.timeout = Duration::from_secs(60);
            Arc::new(
                Client::with_reply_key(&cfg, ClientKey::from_seed(&seed(i)), reply.clone())
                    .unwrap(),
            )
        })
        .collect();
    // Fetch each server key once before timing (as a process does once).
    rt.block_on(async {
        for cl in &clients {
            cl.server_key().await.unwrap();
        }
    });
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = rt.block_on(async {
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, cl)| {
                let cl = Arc::clone(cl);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut secrets = 0;
                    for r in 0..per_client {
                        let names = match workload {
                            Workload::Fleet => Vec::new(),
                            Workload::Single => {
                                vec![format!("S{:05}", i * PER_CLIENT + r % PER_CLIENT)]
                            }
                        };
                        let t = Instant::now();
                        let got = cl.fetch(&names).await.expect("fetch");
                        lat.push(t.elapsed());
                        secrets += got.len();
                    }
                    (lat, secrets)
                })
            })
            .collect();
        crate::join_all(tasks).await
    });
    let wall = started.elapsed();
    let server_cpu = cpu_seconds(pid) - cpu_before;
    let mut lat: Vec<Duration> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    lat.sort();
    Row {
        bits,
        workload: match workload {
            Workload::Fleet => "fleet restart (10/request)",
            Workload::Single => "single secret",
        },
        concurrency: c,
        requests: lat.len(),
        secrets: results.iter().map(|(_, s)| s).sum(),
        wall,
        server_cpu,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if !bench {
        // `cargo test --all-targets`: prove the harness works, quickly.
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::generate(2048).unwrap();
        let reply = ReplyKey::generate_x25519().unwrap();
        let floor = crypto_floor(&key, &reply, 1);
        assert!(floor > Duration::ZERO);
        assert!(v1::harness_ok());
        println!(
            "fleet bench: harness ok (run it with `cargo bench --bench fleet`); 1 passed, 0 failed"
        );
        drop(dir);
        return;
    }
    raise_fd_limit(16_384);
    // What locket-client sends a current server: an X25519 reply key
    // (answers sealed with HPKE); the floor below uses the same.
    let reply = ReplyKey::generate_x25519().unwrap();
    let mut targets: Vec<(String, String, bool)> = Vec::new();
    let mut worst_ratio: f64 = 0.0;
    let mut table = String::new();
    let mut profiles = String::new();
    let mut json_rows = Vec::new();
    let mut summary = Vec::new();
    // LOCKET_BENCH_BITS=2048 (or 3072) runs one key size only; 0, none
    // (the [v1] rows only).
    let sizes: Vec<usize> = match std::env::var("LOCKET_BENCH_BITS") {
        Ok(b) if b == "0" => Vec::new(),
        Ok(b) => vec![b.parse().expect("LOCKET_BENCH_BITS is a number of bits")],
        Err(_) => vec![locket::keys::DEFAULT_SERVER_KEY_BITS, 2048],
    };
    for bits in sizes {
        let dir = tempfile::tempdir().unwrap();
        let key = setup(dir.path(), bits);
        let server = Server::start(dir.path());
        let pid = server.child.id();
        // Warm-up (not reported): the first requests fault in pages and
        // start the server's blocking threads.
        drive(
            &rt,
            &server.addr,
            pid,
            bits,
            Workload::Fleet,
            4,
            &reply,
            key.fingerprint(),
        );
        for workload in [Workload::Fleet, Workload::Single] {
            let names = match workload {
                Workload::Fleet => PER_CLIENT,
                Workload::Single => 1,
            };
            for c in [4, 16, 64] {
                // The floor is measured next to each row, five times before
                // and five after, and the median taken, so that a drift of
                // this VM's CPU speed affects both alike and one slow
                // moment does not move it.
                let mut floors: Vec<Duration> =
                    (0..5).map(|_| crypto_floor(&key, &reply, names)).collect();
                let profile = Profile::start(pid, bits, workload, c);
                let row = drive(
                    &rt,
                    &server.addr,
                    pid,
                    bits,
                    workload,
                    c,
                    &reply,
                    key.fingerprint(),
                );
                let profile = profile.map(Profile::finish);
                floors.extend((0..5).map(|_| crypto_floor(&key, &reply, names)));
                floors.sort();
                let floor = (floors[4] + floors[5]) / 2;
                let cpu_per_req = row.server_cpu / row.requests as f64;
                let ratio = cpu_per_req / floor.as_secs_f64();
                worst_ratio = worst_ratio.max(ratio);
                if let Some(p) = &profile {
                    writeln!(
                        profiles,
                        "{bits:>5} | {:<26} | {c:>3} | {:>7} | {:>7.1}% | {:>7.1}% | {:>7.1}% | {:>7.1}% | {:>7.1}% | {:>5.2}x",
                        row.workload,
                        p.samples,
                        p.share("crypto"),
                        p.share("kernel"),
                        p.share("allocator"),
                        p.share("http/runtime"),
                        p.share("other"),
                        100.0 / p.share("crypto"),
                    )
                    .unwrap();
                }
                writeln!(
                    table,
                    "{:>5} | {:<26} | {:>3} | {:>8.0} | {:>8.0} | {:>7.2} | {:>7.2} | {:>8.3} | {:>8.3} | {:>7.3} | {:>5.2}x",
                    row.bits,
                    row.workload,
                    row.concurrency,
                    row.secrets as f64 / row.wall.as_secs_f64(),
                    row.requests as f64 / row.wall.as_secs_f64(),
                    row.p50.as_secs_f64() * 1e3,
                    row.p99.as_secs_f64() * 1e3,
                    cpu_per_req * 1e3,
                    row.server_cpu / row.secrets as f64 * 1e3,
                    floor.as_secs_f64() * 1e3,
                    ratio
                )
                .unwrap();
                json_rows.push(serde_json::json!({
                    "key_bits": row.bits, "workload": row.workload, "concurrency": row.concurrency,
                    "requests": row.requests, "secrets": row.secrets,
                    "secrets_per_s": row.secrets as f64 / row.wall.as_secs_f64(),
                    "requests_per_s": row.requests as f64 / row.wall.as_secs_f64(),
                    "p50_ms": row.p50.as_secs_f64() * 1e3, "p99_ms": row.p99.as_secs_f64() * 1e3,
                    "server_cpu_ms_per_request": cpu_per_req * 1e3,
                    "server_cpu_ms_per_secret": row.server_cpu / row.secrets as f64 * 1e3,
                    "crypto_floor_ms_per_request": floor.as_secs_f64() * 1e3,
                    "cpu_over_floor": ratio,
                }));
                if matches!(workload, Workload::Fleet) && c == 16 {
                    summary.push((
                        bits,
                        row.server_cpu / row.secrets as f64,
                        floor / PER_CLIENT as u32,
                    ));
                }
            }
        }
        let peak_rss_kib = status_kib(pid, "VmHWM:");
        writeln!(table, "{bits:>5} | server start-up to ready with {SECRETS} secrets: {:.1} ms (key pre-made); peak RSS {:.1} MiB", server.startup.as_secs_f64() * 1e3, peak_rss_kib as f64 / 1024.0).unwrap();
        let rss_mib = peak_rss_kib as f64 / 1024.0;
        targets.push((
            format!("{bits}: server peak RSS < 32 MiB ({SECRETS} secrets, {CLIENTS} clients)"),
            format!("{rss_mib:.1} MiB"),
            rss_mib < 32.0,
        ));
        let startup_ms = server.startup.as_secs_f64() * 1e3;
        targets.push((
            format!("{bits}: start-up to ready < 200 ms"),
            format!("{startup_ms:.0} ms"),
            startup_ms < 200.0,
        ));

        // [v1] with garbage: 100 connections each sending a 1 MiB body
        // that cannot be the original's JSON, all at once.
        let hwm_before = status_kib(pid, "VmHWM:");
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let head = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", 1 << 20);
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let head = head.clone();
                    let addr = server.addr.clone();
                    tokio::spawn(async move {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.bind(format!("127.0.2.{}:0", 1 + i).parse().unwrap()).unwrap();
                        let Ok(mut s) = socket.connect(addr.parse().unwrap()).await else { return };
                        let mut body = head.into_bytes();
                        body.extend(std::iter::repeat_n(b'x', 1 << 20));
                        let _ = s.write_all(&body).await;
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        let hwm_after = status_kib(pid, "VmHWM:");
        writeln!(table, "{bits:>5} | [v1] 100 concurrent 1 MiB garbage bodies: server peak RSS {:.1} -> {:.1} MiB", hwm_before as f64 / 1024.0, hwm_after as f64 / 1024.0).unwrap();
        json_rows.push(serde_json::json!({"key_bits": bits, "v1_garbage_peak_rss_before_mib": hwm_before as f64 / 1024.0, "v1_garbage_peak_rss_after_mib": hwm_after as f64 / 1024.0}));
        let grew = (hwm_after as f64 - hwm_before as f64) / 1024.0;
        targets.push((
            format!("{bits}: [v1] 100 concurrent 1 MiB garbage bodies grow peak RSS by < 4 MiB"),
            format!("+{grew:.1} MiB"),
            grew < 4.0,
        ));

        // Bursts: a fleet connecting at the same instant.
        for n in [1_000, 5_000] {
            let b = burst(&rt, &server.addr, n, &key, &reply);
            writeln!(
                table,
                "{bits:>5} | burst of {:>5} clients at once: connect p50 {:.1} ms, p99 {:.1} ms; fetch p50 {:.0} ms, p99 {:.0} ms; {} failed",
                b.n,
                b.connect_p50.as_secs_f64() * 1e3,
                b.connect_p99.as_secs_f64() * 1e3,
                b.fetch_p50.as_secs_f64() * 1e3,
                b.fetch_p99.as_secs_f64() * 1e3,
                b.failed
            )
            .unwrap();
            json_rows.push(serde_json::json!({"key_bits": bits, "burst_clients": b.n,
                "connect_p50_ms": b.connect_p50.as_secs_f64() * 1e3, "connect_p99_ms": b.connect_p99.as_secs_f64() * 1e3,
                "fetch_p50_ms": b.fetch_p50.as_secs_f64() * 1e3, "fetch_p99_ms": b.fetch_p99.as_secs_f64() * 1e3, "failed": b.failed}));
            if n == 1_000 {
                let p99 = b.connect_p99.as_secs_f64() * 1e3;
                targets.push((
                    format!("{bits}: burst of 1,000: connect p99 < 50 ms, none failed"),
                    format!("{p99:.1} ms, {} failed", b.failed),
                    p99 < 50.0 && b.failed == 0,
                ));
            }
        }
        json_rows.push(serde_json::json!({"key_bits": bits, "startup_ms": server.startup.as_secs_f64() * 1e3, "peak_rss_mib": peak_rss_kib as f64 / 1024.0}));

        // Cold `locket-client get`: a whole process, reply-key generation included.
        let client_dir = dir.path();
        ClientKey::from_seed(&seed(0))
            .write_new(&client_dir.join("c0.key"))
            .unwrap();
        // Beside it, what the RSA-2048 reply key it no longer makes (for
        // servers that predate X25519 reply keys) costs: a random prime
        // search, so both are sampled 25 times, interleaved, and compared
        // by their medians.
        let mut cold = Vec::new();
        let mut keygen = Vec::new();
        for _ in 0..25 {
            let t = Instant::now();
            std::hint::black_box(ReplyKey::generate().unwrap());
            keygen.push(t.elapsed());
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_locket-client"))
                .args([
                    "--server",
                    &format!("http://{}", server.addr),
                    "--name",
                    "c0",
                    "--key",
                ])
                .arg(client_dir.join("c0.key"))
                .args(["--server-fingerprint", key.fingerprint(), "get", "S00000"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            cold.push(t.elapsed());
        }
        cold.sort();
        keygen.sort();
        let one = drive(
            &rt,
            &server.addr,
            pid,
            bits,
            Workload::Single,
            1,
            &reply,
            key.fingerprint(),
        );
        writeln!(
            table,
            "{bits:>5} | cold `locket-client get` (X25519 reply key): median {:.1} ms, of which one request {:.1} ms; an RSA-2048 reply key alone (old servers) would add {:.1} ms",
            percentile(&cold, 0.5).as_secs_f64() * 1e3,
            one.p50.as_secs_f64() * 1e3,
            percentile(&keygen, 0.5).as_secs_f64() * 1e3,
        )
        .unwrap();
        json_rows.push(serde_json::json!({"key_bits": bits, "cold_get_ms": percentile(&cold, 0.5).as_secs_f64() * 1e3,
            "rsa_reply_keygen_ms": percentile(&keygen, 0.5).as_secs_f64() * 1e3, "one_request_ms": one.p50.as_secs_f64() * 1e3}));

        // 50 consumers at boot.
        let (wall, cpu) = cold_renders(&server.addr, key.fingerprint(), dir.path(), 50);
        writeln!(
            table,
            "{bits:>5} | 50 cold `locket-client render` started together: all done in {:.0} ms; client CPU {:.1} ms per process",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3
        )
        .unwrap();
        json_rows.push(serde_json::json!({"key_bits": bits, "cold_renders": 50, "wall_ms": wall.as_secs_f64() * 1e3, "client_cpu_ms_per_process": cpu.as_secs_f64() * 1e3}));
        targets.push((
            format!("{bits}: 50 cold renders at once: all done <= 1 s, <= 10 ms client CPU each"),
            format!(
                "{:.0} ms, {:.1} ms each",
                wall.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e3
            ),
            wall <= Duration::from_secs(1) && cpu <= Duration::from_millis(10),
        ));
    }
    // [v1]: the original's protocol as its Go clients speak it, against its
    // own floor (RSA-2048, as the original used; LOCKET_BENCH_V1=0 skips).
    if std::env::var("LOCKET_BENCH_V1").as_deref() != Ok("0") {
        let total = std::env::var("LOCKET_BENCH_REQUESTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1200);
        for r in v1::rows(&rt, total) {
            let ratio = r.cpu_per_req / r.floor.as_secs_f64();
            worst_ratio = worst_ratio.max(ratio);
            writeln!(
                table,
                "{:>5} | {:<26} | {:>3} | {:>8.0} | {:>8.0} | {:>7.2} | {:>7.2} | {:>8.3} | {:>8.3} | {:>7.3} | {:>5.2}x",
                2048,
                format!("[v1] Go client, {} svc", v1::SERVICES),
                r.c,
                r.req_per_s,
                r.req_per_s,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.cpu_per_req * 1e3,
                r.cpu_per_req * 1e3,
                r.floor.as_secs_f64() * 1e3,
                ratio
            )
            .unwrap();
            writeln!(
                table,
                "{:>5} |   (median of {} runs by CPU/floor: {:.2}-{:.2}x)",
                "",
                v1::repeats(),
                r.spread.0,
                r.spread.1
            )
            .unwrap();
            if r.failed > 0 {
                targets.push((
                    format!("[v1] C={}: every request answered 200", r.c),
                    format!("{} of {} failed", r.failed, r.requests),
                    false,
                ));
            }
            json_rows.push(serde_json::json!({
                "key_bits": 2048, "workload": "v1", "concurrency": r.c,
                "requests": r.requests, "failed": r.failed,
                "requests_per_s": r.req_per_s,
                "p50_ms": r.p50.as_secs_f64() * 1e3, "p99_ms": r.p99.as_secs_f64() * 1e3,
                "server_cpu_ms_per_request": r.cpu_per_req * 1e3,
                "crypto_floor_ms_per_request": r.floor.as_secs_f64() * 1e3,
                "cpu_over_floor": ratio,
                "cpu_over_floor_runs": [r.spread.0, r.spread.1],
            }));
        }
    }
    println!(
        "bits  | workload                   |   C | secrets/s| req/s    | p50 ms  | p99 ms  | CPU ms/req | CPU ms/secret | floor ms | CPU/floor"
    );
    print!("{table}");
    if !profiles.is_empty() {
        println!(
            "\nserver CPU by where it went (perf, per row; CPU/floor = all samples / cryptography samples)"
        );
        println!(
            "bits  | workload                   |   C | samples |  crypto  |  kernel  | allocator| http/rt  |  other   | CPU/floor"
        );
        print!("{profiles}");
    }
    // Against the crypto floor measured in this run.
    for (bits, per_secret, floor_per_secret) in &summary {
        println!(
            "{bits:>5} | fleet restart, C=16: {:.3} ms server CPU per secret = {:.2}x this run's crypto floor ({:.3} ms per secret in batches of {PER_CLIENT})",
            per_secret * 1e3,
            per_secret / floor_per_secret.as_secs_f64(),
            floor_per_secret.as_secs_f64() * 1e3
        );
    }
    // The original is not built here (no Go toolchain); its figures are
    // quoted with the conditions they were measured under, never carried
    // from a run that is no longer reproduced.
    println!(
        "original locket (Go), not measured here. Last side-by-side measurement (issue #33, 2026-12): the original built with Go 1.27, RSA-2048, 16 services x 10 secrets, one 2-core machine. Server CPU against it: locket v2 in batches of 10, warm client: 22-29x less; v2 with a cold locket-client process per request: 17-20x less; [v1] with the original's own Go client, one secret per request, keep-alive: 0.54-0.81x (C=16 to 1), measured before the v1 path was brought to its floor (see the [v1] rows above for this run)"
    );
    targets.insert(
        0,
        (
            "server CPU per request <= 1.25x the crypto floor (every row; /proc, +-15% noise)"
                .into(),
            format!("worst {worst_ratio:.2}x"),
            worst_ratio <= 1.25,
        ),
    );
    println!("\ntargets");
    println!("{:<86} | {:<26} | met", "target", "this run");
    for (target, result, met) in &targets {
        println!(
            "{target:<86} | {result:<26} | {}",
            if *met { "yes" } else { "NO" }
        );
    }
    let path = std::env::var("LOCKET_BENCH_JSON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-fleet.json").into());
    std::fs::write(&path, serde_json::to_string_pretty(&json_rows).unwrap()).unwrap();
    println!("JSON: {path}");
}

/// A `perf record` of the server process during one row
/// (`LOCKET_BENCH_PERF=1`), summarised by where the CPU went. Shares within
/// one recording do not move with this VM's CPU speed, unlike two timings
/// taken apart.
struct Profile {
    child: Child,
    out: String,
}

struct ProfileSummary {
    samples: u64,
    shares: Vec<(&'static str, f64)>,
}

impl Profile {
    fn start(pid: u32, bits: usize, workload: Workload, c: usize) -> Option<Self> {
        std::env::var_os("LOCKET_BENCH_PERF")?;
        let kind = match workload {
            Workload::Fleet => "fleet",
            Workload::Single => "single",
        };
        let out = format!(
            "{}/target/perf-server-{bits}-{kind}-c{c}.data",
            env!("CARGO_MANIFEST_DIR")
        );
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "1999", "-g", "-o", &out, "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("LOCKET_BENCH_PERF is set but `perf` cannot run");
        std::thread::sleep(Duration::from_millis(200)); // attached
        Some(Self { child, out })
    }

    fn finish(mut self) -> ProfileSummary {
        signal(self.child.id(), nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "-i",
                &self.out,
                "--no-children",
                "--sort",
                "dso,symbol",
            ])
            .args(["--stdio", "-g", "none", "-F", "sample,dso,symbol"])
            .output()
            .expect("perf report");
        let text = String::from_utf8_lossy(&report.stdout);
        let mut by: Vec<(&'static str, u64)> = Vec::new();
        let mut total = 0;
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let mut parts = line.split_whitespace();
            let Some(samples) = parts.next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let rest: String = parts.collect::<Vec<_>>().join(" ");
            let kind = classify(&rest);
            total += samples;
            match by.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += samples,
                None => by.push((kind, samples)),
            }
        }
        println!("  profile: perf report -i {}", self.out);
        ProfileSummary {
            samples: total,
            shares: by
                .into_iter()
                .map(|(k, n)| (k, 100.0 * n as f64 / total.max(1) as f64))
                .collect(),
        }
    }
}

impl ProfileSummary {
    fn share(&self, kind: &str) -> f64 {
        self.shares
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .unwrap_or(0.0)
    }
}

/// Which part of the server a sampled symbol belongs to. "crypto" is the
/// floor: the RSA operations and OAEP (AWS-LC), ed25519 verification
/// (curve25519-dalek, SHA-512) and AES-GCM.
fn classify(dso_symbol: &str) -> &'static str {
    let s = dso_symbol;
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&[
        "aws_lc_",
        "curve25519",
        "ed25519",
        "sha2::",
        "aes::",
        "aes_gcm",
        "ghash",
        "polyval",
        "subtle::",
        "crypto_bigint",
        "bn_",
    ]) {
        "crypto"
    } else if s.contains("[k]") {
        "kernel"
    } else if any(&[
        "malloc",
        "free",
        "memmove",
        "memset",
        "memcpy",
        "memcmp",
        "_int_",
        "realloc",
        "unlink_chunk",
        "calloc",
    ]) {
        "allocator"
    } else if any(&[
        "hyper", "tokio", "httparse", "mio::", "http::", "futures", "warp", "bytes::", "epoll",
        "pthread", "futex", "syscall", "__libc_",
    ]) {
        "http/runtime"
    } else {
        "other"
    }
}
