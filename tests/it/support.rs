//! Shared harness: real servers on loopback (in-process through the library,
//! or the real `locket` binary), real clients, real files.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use locket::client::Client;
use locket::config::client::ClientConfig;
use locket::keys::{ClientKey, ReplyKey, ServerKey, ServerPublicKey};
use locket::server::{Server, StartError};

/// One RSA-2048 server key per test process (generation is the slow part).
pub(crate) fn server_key() -> &'static ServerKey {
    static KEY: OnceLock<ServerKey> = OnceLock::new();
    KEY.get_or_init(|| ServerKey::generate(2048).expect("generate server key"))
}

/// One reply key per test process.
pub(crate) fn reply_key() -> ReplyKey {
    static KEY: OnceLock<ReplyKey> = OnceLock::new();
    KEY.get_or_init(|| ReplyKey::generate().expect("reply key"))
        .clone()
}

/// A client registered with the test server.
pub(crate) struct Registered {
    pub name: &'static str,
    pub key: ClientKey,
    pub networks: Vec<&'static str>,
    pub secrets: Vec<&'static str>,
}

impl Registered {
    pub(crate) fn new(
        name: &'static str,
        seed: u8,
        networks: &[&'static str],
        secrets: &[&'static str],
    ) -> Self {
        Self {
            name,
            key: ClientKey::from_seed(&[seed; 32]),
            networks: networks.to_vec(),
            secrets: secrets.to_vec(),
        }
    }
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A blocking `GET path` over a raw socket, `connection: close`; returns
/// the whole answer, status line first.
pub(crate) fn raw_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A keep-alive connection on which `body` (a request a registered client
/// signed) was served: the server counts it as a verified client's, which
/// never gives way to newcomers. Panics unless the answer is 200.
pub(crate) fn verified_connection(addr: SocketAddr, body: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/secrets HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    // Read the head, then exactly the body it announces, so the connection
    // stays open and idle afterwards.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    let mut answer = vec![0u8; length];
    s.read_exact(&mut answer).unwrap();
    s
}

/// The answer to `POST path` announcing a body of `content_length` bytes,
/// sent as the head alone. A server that refuses the size answers at once,
/// so the test never races its own body against the server closing the
/// connection (reqwest then reports a broken pipe instead of the 413).
pub(crate) fn post_head_only(addr: SocketAddr, path: &str, content_length: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer's head and body; the server closes or keeps the
    // connection, so read until the head is complete and a little more.
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer to an oversize head: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The answer's head to `POST path` from the local address `from`,
/// announcing `content_length` bytes but sending only `first` of them: a
/// server that refuses on those bytes (or before any) answers at once; one
/// that waits for the rest answers only at its request timeout.
pub(crate) async fn post_first_bytes(
    addr: SocketAddr,
    from: &str,
    path: &str,
    content_length: usize,
    first: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `sig` to the process `pid` (a server or client under test).
pub(crate) fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// Writes a new file readable by its owner only (mode 0600), as key and
/// token files must be.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap();
}

/// A loopback port that is free now and below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so that no client connection of a
/// parallel test takes it as its source port while a server restarts on
/// it. Ports handed out in this process are not handed out again.
pub(crate) fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000).max(1));
    let start = std::process::id() % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < span, "no free port below {low}");
        let port = (first + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Writes `server.toml`, `secrets.env` and the server key into `dir`.
pub(crate) fn write_server_files(
    dir: &Path,
    secrets_env: &str,
    clients: &[Registered],
    extra: &str,
) -> PathBuf {
    std::fs::write(dir.join("secrets.env"), secrets_env).unwrap();
    let key_path = dir.join("server-key.pem");
    if !key_path.exists() {
        server_key().write_new(&key_path).unwrap();
    }
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\n{extra}\n[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n"
    );
    for c in clients {
        toml.push_str(&format!(
            "\n[clients.{}]\nkeys = [{:?}]\nnetworks = {}\nsecrets = {}\n",
            c.name,
            c.key.public_line(),
            toml_list(&c.networks),
            toml_list(&c.secrets)
        ));
    }
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A server running in this process on 127.0.0.1:<random port>.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    /// The config, secrets and key files, kept until the server is dropped.
    _dir: tempfile::TempDir,
    fingerprint: String,
    public_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
}

impl TestServer {
    pub(crate) async fn start(secrets_env: &str, clients: &[Registered]) -> Self {
        Self::start_with(secrets_env, clients, "").await
    }

    /// `extra` is TOML inserted at the top level of the config.
    pub(crate) async fn start_with(secrets_env: &str, clients: &[Registered], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = write_server_files(dir.path(), secrets_env, clients, extra);
        // The binary's own start-up: config, registry, key, first load.
        let server = Server::load(&path).await.expect("the server starts");
        let (fingerprint, public_pem) = (
            server.fingerprint().to_owned(),
            server.public_key_pem().to_owned(),
        );
        let listener = server.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            _dir: dir,
            fingerprint,
            public_pem,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    pub(crate) fn public_key(&self) -> ServerPublicKey {
        ServerPublicKey::from_pem(&self.public_pem).unwrap()
    }

    pub(crate) fn client_config(&self, name: &str, bind: Option<IpAddr>) -> ClientConfig {
        let mut c = ClientConfig::single(self.url(), name, "unused");
        c.server_fingerprint = Some(self.fingerprint());
        c.bind = bind;
        c
    }

    /// A library client for `name` signing with the key made from `seed`.
    pub(crate) fn client(&self, name: &str, seed: u8, bind: Option<IpAddr>) -> Client {
        let key = ClientKey::from_seed(&[seed; 32]);
        Client::with_reply_key(&self.client_config(name, bind), key, reply_key()).unwrap()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Sends a raw body to `POST /v1/secrets`, optionally from `bind`.
pub(crate) async fn post_raw(
    addr: SocketAddr,
    body: Vec<u8>,
    bind: Option<IpAddr>,
) -> (u16, String) {
    let mut b = http_builder();
    if let Some(ip) = bind {
        b = b.local_address(ip);
    }
    let r = b
        .build()
        .unwrap()
        .post(format!("http://{addr}/v1/secrets"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// A `locket` binary running as its own process.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl ServerProcess {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts `locket serve --config <config>` with extra args and waits
    /// for its "listening on" line.
    pub(crate) fn start(config: &Path, extra_args: &[&str]) -> Self {
        Self::start_with_env(config, extra_args, &[])
    }

    /// As [`ServerProcess::start`], with extra environment variables.
    pub(crate) fn start_with_env(config: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(&[], config, extra_args, env)
    }

    /// As [`ServerProcess::start_with_env`], run through `wrapper` (e.g.
    /// `prlimit --memlock=0:0 --`), which must exec its last argument.
    pub(crate) fn start_wrapped(
        wrapper: &[&str],
        config: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_locket");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .envs(env.iter().copied())
            .args(extra_args)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn locket");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        // Text or JSON logs: the address is the run of address characters.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                            .collect();
                        let _ = tx.send(addr);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Self { child, addr, log }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log comes to hold what `found` looks for, waited for up
    /// to 30 s: a line reaches the test through the server's stderr and a
    /// reader thread, possibly after the answer it logs has arrived (more
    /// so on a loaded machine).
    pub(crate) fn logged(&self, found: impl Fn(&str) -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if found(&self.log()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP and waits for the server to say how the reload went;
    /// returns that log line ("config reloaded" or "config reload rejected").
    pub(crate) fn reload(&self) -> String {
        let outcomes = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains("config reload"))
                .map(str::to_owned)
                .collect()
        };
        let before = outcomes(&self.log()).len();
        signal(self.child.id(), nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = outcomes(&self.log()).get(before) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no reload outcome in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for exit; returns the whole log.
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.log()
    }
}

/// A test that fails (or never calls `stop`) does not leave its server
/// running: CI shares the machine with whatever runs next.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `locket-client`, pinned (through LOCKET_SERVER_FINGERPRINT, which a
/// flag overrides) to the test server key that [`write_server_files`] uses.
pub(crate) fn client_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_locket-client"));
    command.env("LOCKET_SERVER_FINGERPRINT", server_key().fingerprint());
    command
}

/// As [`run_client`], pinned like [`client_command`].
pub(crate) fn run_client_pinned(args: &[&str], cwd: &Path) -> (i32, String, String) {
    output_of(client_command().args(args).current_dir(cwd))
}

/// An HTTP client builder for the tests' raw requests. Plain HTTP only, so
/// no system CA certificates are loaded: the Nix build sandbox has none,
/// and loading them would fail there before any request.
pub(crate) fn http_builder() -> reqwest::ClientBuilder {
    locket::http_client(locket::Roots::None)
}

/// Runs `locket-client` with `args`; returns (exit code, stdout, stderr).
pub(crate) fn run_client(args: &[&str], cwd: &Path) -> (i32, String, String) {
    output_of(
        Command::new(env!("CARGO_BIN_EXE_locket-client"))
            .args(args)
            .current_dir(cwd),
    )
}

fn output_of(command: &mut Command) -> (i32, String, String) {
    let out = command
        .env_remove("LOCKET_CONFIG")
        .output()
        .expect("run locket-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `locket` with `args`; returns (exit code, stdout, stderr).
pub(crate) fn run_server_cmd(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_locket"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run locket");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the per-source failed-authentication answer: 429 with a
/// `Retry-After` within the configured one-minute window.
pub(crate) fn assert_rate_limited(r: &reqwest::Response) {
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

/// A library client of `server` for client `name` (key from `seed`),
/// pinned to the test server key, with a 5 s timeout.
pub(crate) fn pinned_client(server: &ServerProcess, name: &str, seed: u8) -> Client {
    let mut cfg = ClientConfig::single(format!("http://{}", server.addr), name, "unused");
    cfg.timeout = Duration::from_secs(5);
    cfg.server_fingerprint = Some(server_key().fingerprint().to_owned());
    Client::with_reply_key(&cfg, ClientKey::from_seed(&[seed; 32]), reply_key()).unwrap()
}

/// One secret's value, fetched by `c`.
pub(crate) async fn value(c: &Client, name: &str) -> Result<String, locket::client::ClientError> {
    c.fetch(&[name.to_string()])
        .await
        .map(|v| v[0].1.expose().to_owned())
}
