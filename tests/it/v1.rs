//! The original locket protocol (v1), driven by a v1 client written here
//! from ../shared/reference/original-locket.md alone: its own PEM handling,
//! OAEP and signature code, none of the server's helpers.

use std::net::IpAddr;
use std::path::Path;

use crate::support::{ServerProcess, reply_key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::{Oaep, PrivateKey, PublicKey};
use sha2::Sha256;

/// The v1 client: an ed25519 signing key and an RSA-2048 key of its own.
struct V1Client {
    signing: SigningKey,
    rsa: PrivateKey,
    bind: Option<IpAddr>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn unpem(text: &str) -> Vec<u8> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(body).unwrap()
}

/// The Go client's RSA key (one per test process; generation is slow).
fn go_client_rsa_key() -> &'static PrivateKey {
    static KEY: std::sync::OnceLock<PrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
}

impl V1Client {
    fn new(seed: u8, bind: Option<&str>) -> Self {
        Self {
            signing: SigningKey::from_bytes(&[seed; 32]),
            rsa: go_client_rsa_key().clone(),
            bind: bind.map(|b| b.parse().unwrap()),
        }
    }

    /// The public key as the original registry holds it.
    fn keypub(&self) -> String {
        pem(
            "ED25519 PUBLIC KEY",
            self.signing.verifying_key().as_bytes(),
        )
    }

    fn my_pubkey_pem(&self) -> String {
        pem(
            "RSA PUBLIC KEY",
            self.rsa
                .to_public_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes(),
        )
    }

    fn http(&self) -> reqwest::Client {
        let mut b = crate::support::http_builder();
        if let Some(ip) = self.bind {
            b = b.local_address(ip);
        }
        b.build().unwrap()
    }

    async fn server_key(&self, url: &str) -> PublicKey {
        let text = self
            .http()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.starts_with("-----BEGIN RSA PUBLIC KEY-----"), "{text}");
        PublicKey::from_public_key_der(&unpem(&text))
            .expect("SPKI DER inside an RSA PUBLIC KEY block")
    }

    /// Builds the JSON body for `name`; `bend` may change fields afterwards.
    async fn body(&self, url: &str, name: &str, timestamp: i64) -> serde_json::Value {
        let server = self.server_key(url).await;
        let payload = server
            .encrypt(
                &mut getrandom::SysRng,
                Oaep::<Sha256>::new(),
                name.as_bytes(),
            )
            .unwrap();
        let nonce = B64.encode(locket::crypto::random_bytes::<16>().unwrap());
        let client_pubkey = self.my_pubkey_pem();
        let message = format!("{name}\n{client_pubkey}\n{timestamp}\n{nonce}");
        let signature = self.signing.sign(message.as_bytes());
        serde_json::json!({
            "payload": B64.encode(payload),
            "signature": B64.encode(signature.to_bytes()),
            "client_pubkey": client_pubkey,
            "timestamp": timestamp,
            "nonce": nonce,
        })
    }

    /// This client's request for `name`, signed now.
    async fn request(&self, url: &str, name: &str) -> Vec<u8> {
        self.body(url, name, now()).await.to_string().into_bytes()
    }

    /// Asks for `name` now: the request and its answer.
    async fn ask(&self, url: &str, name: &str) -> (u16, String, String) {
        let request = self.request(url, name).await;
        self.post(url, request).await
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> (u16, String, String) {
        let r = self
            .http()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ctype, r.text().await.unwrap())
    }

    fn open(&self, answer: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(answer).unwrap();
        let ct = B64.decode(v["payload"].as_str().unwrap()).unwrap();
        String::from_utf8(self.rsa.decrypt(Oaep::<Sha256>::new(), &ct).unwrap()).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const SYMBOLS: &str = r"\|!@#$%^&*()_+[]{};:,<.>/?`~===";

fn setup(dir: &Path, extra: &str, svc1: &V1Client, svc2: &V1Client) -> std::path::PathBuf {
    let key_path = dir.join("server-key.pem");
    crate::support::server_key().write_new(&key_path).unwrap();
    std::fs::write(
        dir.join("secrets.env"),
        format!("SERVICE1_VAR=one\nSHARED_VAR=shared\nSERVICE2_SYMBOLS='{SYMBOLS}'\nBIG=\"{}\"\nOTHER=other\n", "x".repeat(300)),
    )
    .unwrap();
    std::fs::write(
        dir.join("per-client.json"),
        r#"{"svc1": {"TOKEN": "per-client-token"}}"#,
    )
    .unwrap();
    let text = format!(
        r#"listen = "127.0.0.1:0"
key_file = "server-key.pem"

[[sources]]
type = "dotenv"
path = "secrets.env"

[[sources]]
type = "file"
path = "per-client.json"

[clients.svc1]
keys = [{k1:?}]
networks = ["127.0.0.1/32"]
secrets = ["SERVICE1_VAR", "SHARED_VAR", "BIG", "svc1/*"]

[clients.svc2]
keys = [{k2:?}]
networks = ["127.0.0.2/32"]
secrets = ["SERVICE2_*", "SHARED_VAR"]

[clients.nothing]
keys = [{k3:?}]
networks = ["127.0.0.1/32"]
secrets = []

[v1]
enable = true
{extra}
"#,
        k1 = svc1.keypub(),
        k2 = locket::keys::ClientKey::from_seed(&[62; 32]).public_line(),
        k3 = locket::keys::ClientKey::from_seed(&[63; 32]).public_line(),
    );
    let _ = svc2;
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// [`setup`] with a failed-authentication limit of `limit` per `window`.
fn setup_limited(
    dir: &Path,
    svc1: &V1Client,
    svc2: &V1Client,
    limit: u32,
    window: &str,
) -> std::path::PathBuf {
    let config = setup(dir, "", svc1, svc2);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("max_failed_auth = {limit}\nfailed_auth_window = \"{window}\"\n{text}"),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_of_the_original_check_list() {
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    let config = setup(dir.path(), "", &svc1, &svc2);
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/", server.addr);

    // GET: the persistent server key, as RSA PUBLIC KEY around SPKI DER.
    let v1_key = svc1.server_key(&url).await;
    let v2: serde_json::Value = serde_json::from_str(
        &crate::support::http_builder()
            .build()
            .unwrap()
            .get(format!("http://{}/v1/key", server.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v1_key,
        PublicKey::from_public_key_pem(v2["public_key"].as_str().unwrap()).unwrap()
    );

    // Happy path (and the original's symbol line for svc2, from its own address).
    let (status, ctype, body) = svc1.ask(&url, "SERVICE1_VAR").await;
    assert_eq!(
        (status, ctype.as_str()),
        (200, "application/json"),
        "{body}"
    );
    assert!(body.ends_with("}\n"));
    assert_eq!(svc1.open(&body), "one");
    let (status, _, body) = svc2.ask(&url, "SERVICE2_SYMBOLS").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(svc2.open(&body), SYMBOLS);

    // 1. CIDR: an address in no client's networks.
    let stranger = V1Client::new(61, Some("127.0.0.3"));
    let (status, _, body) = stranger
        .post(&url, svc1.request(&url, "SERVICE1_VAR").await)
        .await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));
    // ...and a client's own networks apply: svc1's key from svc2's address.
    let svc1_elsewhere = V1Client::new(61, Some("127.0.0.2"));
    let (status, _, _) = svc1_elsewhere
        .post(&url, svc1.request(&url, "SERVICE1_VAR").await)
        .await;
    assert_eq!(status, 403);

    // 2. Oversize, not JSON.
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        crate::support::post_head_only(addr, "/", 1024 * 1024 + 10)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(svc1.post(&url, b"not json".to_vec()).await.0, 400);

    // 3. Bad payload, empty nonce.
    let mut b = svc1.body(&url, "SERVICE1_VAR", now()).await;
    b["payload"] = serde_json::json!(B64.encode([7u8; 256]));
    assert_eq!(svc1.post(&url, b.to_string().into_bytes()).await.0, 400);
    let mut b = svc1.body(&url, "SERVICE1_VAR", now()).await;
    b["nonce"] = serde_json::json!("");
    assert_eq!(svc1.post(&url, b.to_string().into_bytes()).await.0, 400);

    // 4. Clock skew both ways (correctly signed).
    for skew in [-60, 60] {
        let b = svc1.body(&url, "SERVICE1_VAR", now() + skew).await;
        assert_eq!(
            svc1.post(&url, b.to_string().into_bytes()).await.0,
            403,
            "skew {skew}"
        );
    }

    // 5. Substituted client key: the signature covered another key.
    let mut b = svc1.body(&url, "SERVICE1_VAR", now()).await;
    let other = V1Client {
        rsa: PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap(),
        ..V1Client::new(61, None)
    };
    b["client_pubkey"] = serde_json::json!(other.my_pubkey_pem());
    assert_eq!(svc1.post(&url, b.to_string().into_bytes()).await.0, 403);

    // 6. Replay.
    let b = svc1.request(&url, "SHARED_VAR").await;
    assert_eq!(svc1.post(&url, b.clone()).await.0, 200);
    assert_eq!(svc1.post(&url, b).await.0, 403);

    // 7. Unknown service (unregistered key), a service with no secrets, unknown names.
    let unknown = V1Client::new(99, None);
    assert_eq!(unknown.ask(&url, "SHARED_VAR").await.0, 403);
    let nothing = V1Client::new(63, None);
    assert_eq!(nothing.ask(&url, "SHARED_VAR").await.0, 403);
    for name in ["NO_SUCH_NAME", "OTHER"] {
        let (status, _, body) = svc1.ask(&url, name).await;
        assert_eq!((status, body.as_str()), (404, "not found\n"), "{name}");
    }

    // 8. A value over what one RSA-2048 OAEP block carries: 500, explained in the log.
    assert_eq!(svc1.ask(&url, "BIG").await.0, 500);

    // OPTIONS and other methods.
    let http = svc1.http();
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["allow"], "GET, POST");
    for m in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        assert_eq!(
            http.request(m.clone(), &url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            405,
            "{m}"
        );
    }

    // v2 clients are served by the same server at the same time.
    let mut cfg = locket::config::client::ClientConfig::single(
        format!("http://{}", server.addr),
        "svc2",
        "unused",
    );
    cfg.bind = Some("127.0.0.2".parse().unwrap());
    cfg.server_fingerprint = Some(crate::support::server_key().fingerprint().to_owned());
    let v2client = locket::client::Client::with_reply_key(
        &cfg,
        locket::keys::ClientKey::from_seed(&[62; 32]),
        reply_key(),
    )
    .unwrap();
    let names = ["SERVICE2_SYMBOLS".to_string()];
    let v1_body = svc1.request(&url, "SHARED_VAR").await;
    let (a, b) = tokio::join!(v2client.fetch(&names), svc1.post(&url, v1_body));
    assert_eq!(a.unwrap()[0].1.expose(), SYMBOLS);
    assert_eq!(b.0, 200);

    let log = server.stop();
    assert!(log.contains("a v1 answer is one RSA-OAEP block"), "{log}");
    for reason in [
        "is in no client's networks",
        "signature verifies with no registered key",
        "nonce already used",
        "granted no secrets",
        "is not in the client's networks",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}");
    }
    for value in ["per-client-token", "xxxxxxxxxx", "shared\""] {
        assert!(!log.contains(value), "log leaks {value}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_client_lookup_custom_path_and_separate_key() {
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, None);
    let config = setup(
        dir.path(),
        "path = \"/locket\"\nlookup = \"per-client\"\nkey_file = \"v1-key.pem\"",
        &svc1,
        &svc2,
    );
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/locket", server.addr);
    let (status, _, body) = svc1.ask(&url, "TOKEN").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(svc1.open(&body), "per-client-token");
    // A separate 2048-bit compat key, created with mode 0600.
    let v1_key = svc1.server_key(&url).await;
    assert_eq!(rsa::traits::PublicKeyParts::size(&v1_key), 256);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("v1-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The root path is not v1 here.
    assert_eq!(
        crate::support::http_builder()
            .build()
            .unwrap()
            .get(format!("http://{}/", server.addr))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    server.stop();
}

#[test]
fn import_registry_turns_the_original_yaml_into_clients() {
    let dir = tempfile::tempdir().unwrap();
    let a = V1Client::new(71, None);
    let b = V1Client::new(72, None);
    let indent = |s: String| {
        s.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let yaml = format!(
        "- name: Service1\n  keypub: |\n{}\n- name: service2\n  keypub: |\n{}\n",
        indent(a.keypub()),
        indent(b.keypub())
    );
    std::fs::write(dir.path().join("registry.yml"), yaml).unwrap();
    let (code, out, err) = crate::support::run_server_cmd(
        &[
            "import-registry",
            "registry.yml",
            "--network",
            "10.1.0.0/16",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let parsed: toml::Table = toml::from_str(&out).unwrap();
    let clients = parsed["clients"].as_table().unwrap();
    assert_eq!(clients.len(), 2);
    let s1 = clients["service1"].as_table().unwrap();
    let line = s1["keys"][0].as_str().unwrap();
    assert_eq!(
        locket::keys::parse_public_key(line).unwrap(),
        a.signing.verifying_key()
    );
    assert_eq!(s1["networks"][0].as_str(), Some("10.1.0.0/16"));
    assert_eq!(s1["secrets"][0].as_str(), Some("service1/*"));
    // The output drops into a config that `locket check` accepts.
    std::fs::write(dir.path().join("s.json"), r#"{"service1": {"X": "1"}}"#).unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        format!("[[sources]]\ntype = \"file\"\npath = \"s.json\"\n\n{out}"),
    )
    .unwrap();
    let (code, out, err) =
        crate::support::run_server_cmd(&["check", "--config", "server.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("clients: 2"), "{out}");
    // Broken input: a clear error.
    std::fs::write(dir.path().join("bad.yml"), "- name: x\n").unwrap();
    let (code, _, err) =
        crate::support::run_server_cmd(&["import-registry", "bad.yml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("keypub"), "{err}");
}

/// A payload that does not decrypt cost the server a private-key operation
/// before any authentication, so it counts as a failed authentication: a
/// source probing with chosen ciphertexts gets 429 with `Retry-After`, even
/// for a valid request afterwards, while other sources are still served.
#[tokio::test(flavor = "multi_thread")]
async fn undecryptable_payloads_count_toward_the_failed_auth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    let config = setup_limited(dir.path(), &svc1, &svc2, 3, "1m");
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/", server.addr);

    for attempt in 0..3u8 {
        let mut b = svc1.body(&url, "SERVICE1_VAR", now()).await;
        b["payload"] = serde_json::json!(B64.encode([attempt; 256]));
        let (status, _, body) = svc1.post(&url, b.to_string().into_bytes()).await;
        assert_eq!(
            (status, body.as_str()),
            (400, "bad request\n"),
            "attempt {attempt}"
        );
    }
    // Limited: refused before a byte of the body is read.
    let head = crate::support::post_first_bytes(server.addr, "127.0.0.1", "/", 1 << 20, b"{").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let valid = svc1.body(&url, "SERVICE1_VAR", now()).await;
    let r = svc1
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .body(valid.to_string())
        .send()
        .await
        .unwrap();
    crate::support::assert_rate_limited(&r);

    // svc2 calls from its own address and is not affected.
    let (status, _, body) = svc2.ask(&url, "SHARED_VAR").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(svc2.open(&body), "shared");
    assert!(
        server.logged(|log| log.contains("payload does not decrypt with the server key")),
        "the log says why the requests were refused"
    );
}

/// `[v1]` refuses a body at its first bytes that cannot be the original's
/// JSON, and a stranger before its body: announced as 1 MiB, each is
/// answered after a few bytes, without the rest ever being sent (a server
/// that read on would answer only at its 5-minute request timeout).
#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_cannot_be_the_originals_are_refused_at_their_first_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    let config = setup(dir.path(), "", &svc1, &svc2);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("request_timeout = \"5m\"\n{text}")).unwrap();
    let server = ServerProcess::start(&config, &[]);
    let mut long = br#"{"payload":""#.to_vec();
    long.extend(std::iter::repeat_n(b'A', 9000));
    for (from, first, status) in [
        ("127.0.0.1", &b"garbage"[..], "400"),
        ("127.0.0.1", b"{\"payload\":[", "400"),
        ("127.0.0.1", b"{\"payload\":\"\xff", "400"),
        ("127.0.0.1", &long, "400"),
        // In no client's networks: refused before the body.
        ("127.0.0.9", b"", "403"),
    ] {
        let answer = crate::support::post_first_bytes(server.addr, from, "/", 1 << 20, first);
        let head = tokio::time::timeout(std::time::Duration::from_secs(60), answer)
            .await
            .expect("no answer before the rest of the body");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{from} {:?}: {head}",
            String::from_utf8_lossy(&first[..first.len().min(20)])
        );
    }
    let log = server.stop();
    assert!(log.contains("not the original locket's JSON"), "{log}");
    // The original's own requests still pass (every_row_of_the_original_check_list).
}

/// Idle keep-alive connections are not failed logins: connections that
/// each completed a request (a genuine v1 request, or `GET /v1/key`) and
/// were then left idle until the server's header timeout closed them do
/// not count, and the next genuine v1 request is answered, not 429.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_after_a_request_are_not_failed_logins() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    let config = setup_limited(dir.path(), &svc1, &svc2, 2, "5m");
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/", server.addr);
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = if i % 2 == 0 {
            "GET /v1/key HTTP/1.1\r\nHost: x\r\n\r\n".to_string()
        } else {
            let body = svc1.request(&url, "SERVICE1_VAR").await;
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                body.len(),
                String::from_utf8(body).unwrap()
            )
        };
        s.write_all(request.as_bytes()).await.unwrap();
        idle.push(s);
    }
    // Each answered, then closed by the server after its header timeout
    // (read to the end: the close is what is waited for).
    for mut s in idle {
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert!(
            all.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&all)
        );
    }
    let (status, _, body) = svc1.ask(&url, "SERVICE1_VAR").await;
    assert_eq!(status, 200, "{body}");
    // A connection that never sends a request head still counts.
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost:").await.unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
    }
    let (status, _, _) = svc1.ask(&url, "SERVICE1_VAR").await;
    assert_eq!(
        status, 429,
        "stalled heads are still failed authentications"
    );
}

/// The last differences from the original (a side-by-side run of its Go
/// client against both servers), each answered as the original answers it:
/// a service whose grant matches no secret gets 403; a timestamp exactly
/// `clock_skew` old is refused; a request stamped before a restart gets
/// 403 (never 500); errors carry `X-Content-Type-Options: nosniff`, and
/// HEAD gets Go's plain-text 404.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_differences_from_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    let imported = V1Client::new(64, None);
    let config = setup(dir.path(), "", &svc1, &svc2);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[v1]",
        &format!(
            "[clients.imported]\nkeys = [{:?}]\nnetworks = [\"127.0.0.1/32\"]\nsecrets = [\"imported/*\"]\n\n[v1]",
            imported.keypub()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/", server.addr);

    // 3. Stamped before this process started (a v1 client whose clock is
    // behind): refused as stale, 403, with the original's text.
    let early = svc1.body(&url, "SERVICE1_VAR", now() - 10).await;
    let (status, _, body) = svc1.post(&url, early.to_string().into_bytes()).await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));

    // 1. A registered service whose grant matches no secret: 403.
    let (status, _, body) = imported.ask(&url, "anything").await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));

    // 2. Exactly 30 s old (whole seconds; the server reads its clock later,
    // so more than 30 s have passed): refused.
    let b = svc1.body(&url, "SERVICE1_VAR", now() - 30).await;
    assert_eq!(svc1.post(&url, b.to_string().into_bytes()).await.0, 403);
    let (status, _, body) = svc1.ask(&url, "SERVICE1_VAR").await;
    assert_eq!(status, 200, "{body}");

    // 4. Headers: nosniff on every 4xx; HEAD is Go's plain-text 404.
    let http = crate::support::http_builder().build().unwrap();
    for (status, response) in [
        (400, http.post(&url).body("not json").send().await.unwrap()),
        (404, http.head(&url).send().await.unwrap()),
    ] {
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{status}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8",
            "{status}"
        );
    }
    let (status, _, _) = imported.ask(&url, "anything").await;
    assert_eq!(status, 403);
    let log = server.stop();
    assert!(
        log.contains("answering 403, as the original answers a stale request"),
        "{log}"
    );
    // The 30-s-old request was refused by the clock check (it runs first),
    // not only as stamped before the start.
    assert!(log.contains("timestamp is -30s from server time"), "{log}");
    assert!(!log.contains("answering 503"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_pubkey_two_services_share_never_lends_one_the_others_grants() {
    // The server remembers which service last signed with a client_pubkey,
    // to try that service's keys first; svc1 and svc2 send the same one
    // (one RSA key per test process). The hint must never stand in for
    // the signature: each is answered by its own grants, in any order.
    let dir = tempfile::tempdir().unwrap();
    let svc1 = V1Client::new(61, None);
    let svc2 = V1Client::new(62, Some("127.0.0.2"));
    assert_eq!(svc1.my_pubkey_pem(), svc2.my_pubkey_pem());
    let config = setup(dir.path(), "", &svc1, &svc2);
    let server = ServerProcess::start(&config, &[]);
    let url = format!("http://{}/", server.addr);
    for _ in 0..2 {
        let (status, _, body) = svc1.ask(&url, "SERVICE1_VAR").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(svc1.open(&body), "one");
        let (status, _, _) = svc2.ask(&url, "SERVICE1_VAR").await;
        assert_eq!(status, 404, "svc2 is not granted SERVICE1_VAR");
        let (status, _, body) = svc2.ask(&url, "SERVICE2_SYMBOLS").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(svc2.open(&body), SYMBOLS);
        let (status, _, _) = svc1.ask(&url, "SERVICE2_SYMBOLS").await;
        assert_eq!(status, 404, "svc1 is not granted SERVICE2_SYMBOLS");
    }
    // A key nobody registered, with the hinted client_pubkey: refused.
    let stranger = V1Client::new(99, None);
    let (status, _, _) = stranger.ask(&url, "SERVICE1_VAR").await;
    assert_eq!(status, 403);
    server.stop();
}
