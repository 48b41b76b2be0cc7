//! The client: fetches each server's key once per process (checking the pin
//! before anything else is sent), then asks for any number of secrets in
//! one signed, encrypted request.
//!
//! With several servers, a fetch tries them in order (or shuffled), moving
//! on after a connection error, a timeout, a 5xx or a key that does not
//! match the pin, and retries with backoff until one overall deadline. A 403
//! or 404 is an answer, not a failure: it is returned at once.

pub mod trust;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::client::{ClientConfig, ServerOrder};
use crate::error_chain;
use crate::keys::{ClientKey, KeyError, ReplyKey, ServerPublicKey};
use crate::protocol::{self, Header, ProtocolError, Request, RequestBody, WireError, WireKey};
use crate::secret_set::SecretSet;
use crate::tls;
use trust::{KnownServersError, Refusal, Trust};

/// The least time one try at one server gets when several share the
/// timeout: enough for a cold client's key fetch and request on a loaded
/// host.
pub const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// Largest answer body the client reads (an answer is at most the server's
/// `max_answer_bytes` plus base64 and JSON overhead).
pub const MAX_ANSWER_BODY: usize = 64 * 1024 * 1024;

/// Why fetching failed. [`ClientError::exit_code`] maps each to the
/// documented exit code.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum ClientError {
    #[error("cannot reach the server at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error(
        "the server at {server} has key {actual}, but server_fingerprint pins {expected}; nothing was sent. If the server key was replaced on purpose, set server_fingerprint to the output of `locket fingerprint` on the server"
    )]
    PinMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the server denied the request (request id {request_id}); the server log says why under that id: client name, key, source address, clock or grants"
    )]
    Denied { request_id: String },
    #[error(
        "the server at {server} offered key {actual}, but {file} records {stored} for it; nothing was sent. If the server key was replaced on purpose, check the new one with `locket fingerprint` on the server, then delete that line of {file} (or set server_fingerprint)"
    )]
    KnownServerMismatch {
        server: String,
        stored: String,
        actual: String,
        file: String,
    },
    #[error(
        "the server at {server} is not pinned, so nothing was sent (it offered key {actual}). Check that key with `locket fingerprint` on the server, then set server_fingerprint = \"{actual}\", or run once with --trust-on-first-use to record it in {file}; only for a throwaway setup, set insecure_unpinned = true"
    )]
    Unpinned {
        server: String,
        actual: String,
        file: String,
    },
    #[error(transparent)]
    KnownServers(#[from] KnownServersError),
    #[error("not found on the server: {}", .0.iter().map(|n| printable(n)).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<String>),
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the server's answer was refused: {0}")]
    Protocol(#[from] AnswerError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("no server answered within {timeout:?}: {}", .attempts.join("; "))]
    AllFailed {
        timeout: Duration,
        attempts: Vec<String>,
        /// No server gave an answer (each was unreachable, timed out or
        /// failed with a 5xx); false when one answered with a pin mismatch,
        /// a refusal or a bad answer.
        unanswered: bool,
    },
}

/// Why a server's answer, or its key response, was refused. The request
/// was sent (or, for a key response, nothing was); another server may
/// answer properly.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum AnswerError {
    #[error(transparent)]
    Sealed(#[from] ProtocolError),
    #[error("GET /v1/key did not return a locket key: {source}")]
    NotAKey {
        #[source]
        source: serde_json::Error,
    },
    #[error("GET /v1/key: the server key: {0}")]
    ServerKey(#[source] KeyError),
    #[error("GET /v1/key: {0}")]
    Instance(#[source] ProtocolError),
    #[error(
        "the key response of {server} is not signed by its key {fingerprint}: the server is older than this client (upgrade the servers first), or something between altered the response; nothing was sent"
    )]
    Unsigned { server: String, fingerprint: String },
    #[error("a 404 answer that names nothing missing")]
    NothingMissing,
    #[error("a 200 answer that names missing secrets")]
    MissingIn200,
    #[error("the answer does not hold exactly the names asked for")]
    NotWhatWasAsked,
}

/// A problem on this side, before anything is sent: the settings, the
/// TLS roots, this machine's randomness.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum LocalError {
    #[error("no server configured; set server (or --server, LOCKET_SERVER)")]
    NoServer,
    #[error("cannot read ca_file {path}: {source}")]
    CaFileRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file {path} is not PEM certificates: {source}")]
    CaFilePem {
        path: std::path::PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("ca_file {path} holds no certificate")]
    CaFileEmpty { path: std::path::PathBuf },
    #[error(
        "HTTP client: {detail}; for https:// servers the system's CA certificates must be installed, or set ca_file"
    )]
    HttpClient {
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the request: {0}")]
    Random(#[source] crate::crypto::CryptoError),
    #[error("cannot build the request: {0}")]
    Seal(#[source] ProtocolError),
    #[error("reply key generation panicked")]
    ReplyKeyPanicked,
}

impl ClientError {
    /// 1 other failure, 2 usage or config (here: key files), 3 denied,
    /// 4 not found.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Denied { .. } => 3,
            Self::NotFound(_) => 4,
            Self::Key(_) | Self::Unpinned { .. } | Self::KnownServers(_) => 2,
            _ => 1,
        }
    }

    /// Whether another server may do better: this one could not be
    /// reached, failed, timed out, or is not the pinned one.
    pub fn is_retryable(&self) -> bool {
        self.is_transient()
            || matches!(
                self,
                Self::PinMismatch { .. } | Self::KnownServerMismatch { .. } | Self::Protocol(_)
            )
    }

    /// Whether the same server may do better later.
    /// The cause alone, for a progress line that names the server itself.
    fn cause(&self) -> String {
        match self {
            Self::Unreachable { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// One server and its key, fetched at most once.
struct Endpoint {
    url: String,
    /// Fetched on first use, and again only when the server refuses a
    /// request as bound to another process (it restarted, perhaps with a
    /// promoted key); the lock makes concurrent first uses fetch once.
    key: tokio::sync::Mutex<Option<Arc<ServerPublicKey>>>,
    announced: std::sync::Mutex<Announced>,
}

/// What `GET /v1/key` last said beside the key.
#[derive(Clone, Copy, Default)]
struct Announced {
    /// The server process (servers before protocol version 3 name none):
    /// requests are bound to it.
    instance: Option<[u8; protocol::INSTANCE_LEN]>,
    /// It seals answers to X25519 reply keys.
    x25519: bool,
}

impl Endpoint {
    fn announced(&self) -> Announced {
        *self.announced.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_announced(&self, announced: Announced) {
        *self.announced.lock().unwrap_or_else(|e| e.into_inner()) = announced;
    }
}

/// A client of one server.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    order: ServerOrder,
    timeout: Duration,
    name: String,
    key: ClientKey,
    reply: ReplySlot,
    trust: Trust,
}

/// The reply key: a given one (tests, benchmarks), or made for each
/// request: X25519 where the server takes it (microseconds, fresh every
/// request, so each answer has its own key), else one RSA key for the life
/// of this client, made on first need (50-130 ms of prime search).
struct ReplySlot {
    given: Option<ReplyKey>,
    rsa: OnceCell<ReplyKey>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<&str> = self.endpoints.iter().map(|e| e.url.as_str()).collect();
        f.debug_struct("Client")
            .field("servers", &servers)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`, signing with `key`.
    pub fn new(config: &ClientConfig, key: ClientKey) -> Result<Self, ClientError> {
        Self::build(
            config,
            key,
            ReplySlot {
                given: None,
                rsa: OnceCell::new(),
            },
        )
    }

    /// As [`Client::new`], with a given reply key for every request.
    pub fn with_reply_key(
        config: &ClientConfig,
        key: ClientKey,
        reply: ReplyKey,
    ) -> Result<Self, ClientError> {
        Self::build(
            config,
            key,
            ReplySlot {
                given: Some(reply),
                rsa: OnceCell::new(),
            },
        )
    }

    /// The reply key for one request to `endpoint` (see [`ReplySlot`]).
    async fn reply_key(&self, endpoint: &Endpoint) -> Result<ReplyKey, ClientError> {
        if let Some(given) = &self.reply.given {
            return Ok(given.clone());
        }
        if endpoint.announced().x25519 {
            return Ok(ReplyKey::generate_x25519()?);
        }
        self.reply
            .rsa
            .get_or_try_init(|| async {
                match tokio::task::spawn_blocking(ReplyKey::generate).await {
                    Ok(generated) => generated.map_err(ClientError::from),
                    Err(_) => Err(LocalError::ReplyKeyPanicked.into()),
                }
            })
            .await
            .cloned()
    }

    fn build(config: &ClientConfig, key: ClientKey, reply: ReplySlot) -> Result<Self, ClientError> {
        if config.servers.is_empty() {
            return Err(LocalError::NoServer.into());
        }
        let roots = match &config.ca_file {
            Some(ca_file) => {
                let pem = std::fs::read(ca_file).map_err(|source| LocalError::CaFileRead {
                    path: ca_file.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    LocalError::CaFilePem {
                        path: ca_file.clone(),
                        source,
                    }
                })?;
                if certs.is_empty() {
                    return Err(LocalError::CaFileEmpty {
                        path: ca_file.clone(),
                    }
                    .into());
                }
                tls::Roots::Only(certs)
            }
            None => tls::Roots::for_urls(config.servers.iter().map(String::as_str)),
        };
        let mut builder = tls::http_client(roots)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("locket-client/", env!("CARGO_PKG_VERSION")));
        if let Some(bind) = config.bind {
            builder = builder.local_address(bind);
        }
        let http = builder.build().map_err(|source| LocalError::HttpClient {
            detail: error_chain(&source),
            source,
        })?;
        Ok(Self {
            http,
            endpoints: config
                .servers
                .iter()
                .map(|url| Endpoint {
                    url: url.clone(),
                    key: tokio::sync::Mutex::new(None),
                    announced: std::sync::Mutex::default(),
                })
                .collect(),
            order: config.server_order,
            timeout: config.timeout,
            name: config.name.clone(),
            key,
            reply,
            trust: Trust::from_config(config)?,
        })
    }

    /// The first server's public key, fetched once and checked against the
    /// pin.
    pub async fn server_key(&self) -> Result<Arc<ServerPublicKey>, ClientError> {
        self.endpoint_key(&self.endpoints[0]).await
    }

    async fn endpoint_key(&self, endpoint: &Endpoint) -> Result<Arc<ServerPublicKey>, ClientError> {
        let mut key = endpoint.key.lock().await;
        if let Some(key) = &*key {
            return Ok(Arc::clone(key));
        }
        let (fetched, announced) = self.fetch_server_key(&endpoint.url).await?;
        let fetched = Arc::new(fetched);
        endpoint.set_announced(announced);
        *key = Some(Arc::clone(&fetched));
        Ok(fetched)
    }

    /// Asks the server again which process it is, and which key to use,
    /// after it refused a request bound to another process: it restarted
    /// (perhaps having promoted its next key during a rotation), or a
    /// second server sharing the key answered. The key is checked against
    /// the pins as on first use.
    async fn refresh_instance(&self, endpoint: &Endpoint) -> Result<(), ClientError> {
        let mut key = endpoint.key.lock().await;
        let (fetched, announced) = self.fetch_server_key(&endpoint.url).await?;
        endpoint.set_announced(announced);
        *key = Some(Arc::new(fetched));
        Ok(())
    }

    /// The server's key, checked against the pin, and what it announced
    /// beside it.
    async fn fetch_server_key(
        &self,
        server: &str,
    ) -> Result<(ServerPublicKey, Announced), ClientError> {
        let unreachable = |e: String| ClientError::Unreachable {
            server: server.to_owned(),
            detail: e,
        };
        let url = format!("{server}{}", protocol::KEY_PATH);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(send_error(&e)))?;
        let status = response.status();
        let body = read_limited(response, 1024 * 1024)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(ClientError::Server {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let wire: WireKey =
            serde_json::from_slice(&body).map_err(|source| AnswerError::NotAKey { source })?;
        let key = ServerPublicKey::from_pem(&wire.public_key).map_err(AnswerError::ServerKey)?;
        let instance = wire
            .instance
            .as_deref()
            .map(protocol::decode_instance)
            .transpose()
            .map_err(AnswerError::Instance)?;
        let announced = Announced {
            instance,
            x25519: wire
                .reply_keys
                .iter()
                .any(|k| k == protocol::REPLY_KEY_X25519),
        };
        let server = server.to_owned();
        // `instance` and `reply_keys` are taken only from a response the
        // trusted key signed: stripping them is a downgrade (unbound
        // requests, RSA reply keys).
        let signed = protocol::key_response_signed_bytes(
            &key.fingerprint,
            wire.instance.as_deref(),
            &wire.reply_keys,
            wire.next.as_ref().map(|n| n.fingerprint.as_str()),
        );
        let verified = |trusted: ServerPublicKey,
                        signature: Option<&str>|
         -> Result<(ServerPublicKey, Announced), ClientError> {
            use base64::Engine as _;
            let ok = signature
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .is_some_and(|s| crate::crypto::verify_pss_sha256(&trusted.spki_der, &signed, &s));
            if ok {
                Ok((trusted, announced))
            } else {
                Err(AnswerError::Unsigned {
                    server: server.clone(),
                    fingerprint: trusted.fingerprint,
                }
                .into())
            }
        };
        match self.trust.check(&server, &key.fingerprint)? {
            Ok(()) => verified(key, wire.signature.as_deref()),
            // During a rotation a client may pin only the next key (the
            // server announces it beside the current one): it encrypts to
            // that. Only an explicit pin selects it.
            Err(Refusal::Pin { .. })
                if let Some(wire_next) = &wire.next
                    && let Ok(next) = ServerPublicKey::from_pem(&wire_next.public_key)
                    && self.trust.pinned(&next.fingerprint) =>
            {
                verified(next, wire_next.signature.as_deref())
            }
            // The same for a key recorded in the known-servers file: after a
            // promotion the recorded key is the server's next one.
            Err(Refusal::Known { ref stored, .. })
                if let Some(wire_next) = &wire.next
                    && let Ok(next) = ServerPublicKey::from_pem(&wire_next.public_key)
                    && next.fingerprint == *stored =>
            {
                verified(next, wire_next.signature.as_deref())
            }
            Err(Refusal::Pin { expected }) => Err(ClientError::PinMismatch {
                server,
                expected,
                actual: key.fingerprint,
            }),
            Err(Refusal::Known { stored, file }) => Err(ClientError::KnownServerMismatch {
                server,
                stored,
                actual: key.fingerprint,
                file: file.display().to_string(),
            }),
            Err(Refusal::Unpinned { file }) => Err(ClientError::Unpinned {
                server,
                actual: key.fingerprint,
                file: file.display().to_string(),
            }),
        }
    }

    /// Fetches `names` (all granted secrets when empty) in one request,
    /// failing over between servers within the overall timeout; each try
    /// gets a fair share of the time left, at least [`MIN_ATTEMPT`].
    pub async fn fetch(&self, names: &[String]) -> Result<SecretSet, ClientError> {
        let deadline = Instant::now() + self.timeout;
        // The last error of each server; a server whose error will not go
        // away by retrying (wrong key, broken answers) is not asked again.
        let mut last: Vec<Option<ClientError>> = self.endpoints.iter().map(|_| None).collect();
        let mut given_up = vec![false; self.endpoints.len()];
        let mut tries = vec![0u32; self.endpoints.len()];
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let order = self.ordered();
            for (position, &index) in order.iter().enumerate() {
                let endpoint = &self.endpoints[index];
                let left = deadline.saturating_duration_since(Instant::now());
                if given_up[index] || left.is_zero() {
                    continue;
                }
                // A server that accepts and never answers (frozen, hung)
                // gets its share of what is left, not all of it: the
                // servers still to try this round get theirs.
                let still = order[position..].iter().filter(|&&i| !given_up[i]).count();
                let share = left / u32::try_from(still.max(1)).unwrap_or(u32::MAX);
                let attempt = share.max(MIN_ATTEMPT).min(left);
                let result =
                    match tokio::time::timeout(attempt, self.fetch_from(endpoint, names)).await {
                        Ok(result) => result,
                        Err(_) => Err(ClientError::Unreachable {
                            server: endpoint.url.clone(),
                            detail: "timed out".into(),
                        }),
                    };
                match result {
                    Err(e) if e.is_retryable() => {
                        given_up[index] = !e.is_transient();
                        tries[index] += 1;
                        // Progress, one line per failed attempt; the binary
                        // shows it on a terminal only (never in a journal).
                        let left = deadline.saturating_duration_since(Instant::now());
                        if !given_up[index] && !left.is_zero() {
                            tracing::info!(
                                target: PROGRESS,
                                "waiting for {} (attempt {}, next in {}, giving up in {}): {}",
                                endpoint.url,
                                tries[index],
                                seconds(backoff.min(left)),
                                seconds(left),
                                e.cause()
                            );
                        }
                        last[index] = Some(e);
                    }
                    other => return other,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || given_up.iter().all(|g| *g) {
                break;
            }
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if self.endpoints.len() == 1
            && let Some(e) = last.pop().flatten()
        {
            // For how long it was tried, when it was tried more than once.
            return Err(match e {
                ClientError::Unreachable { server, detail } if tries[0] > 1 => {
                    ClientError::Unreachable {
                        server,
                        detail: format!(
                            "{detail}; tried {} times over {}",
                            tries[0],
                            crate::clock::human(started.elapsed())
                        ),
                    }
                }
                other => other,
            });
        }
        let unanswered = last
            .iter()
            .all(|e| e.as_ref().is_none_or(ClientError::is_transient));
        let attempts = self
            .endpoints
            .iter()
            .zip(last)
            .map(|(e, err)| match err {
                Some(err) => format!("{}: {err}", e.url),
                None => format!("{}: not tried before the deadline", e.url),
            })
            .collect();
        Err(ClientError::AllFailed {
            timeout: self.timeout,
            attempts,
            unanswered,
        })
    }

    /// Indices of the endpoints in the order to try them this round.
    fn ordered(&self) -> Vec<usize> {
        let mut list: Vec<usize> = (0..self.endpoints.len()).collect();
        if self.order == ServerOrder::Random {
            // Fisher-Yates with OS randomness.
            for i in (1..list.len()).rev() {
                let r = crate::crypto::random_bytes::<8>()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                list.swap(i, (r % (i as u64 + 1)) as usize);
            }
        }
        list
    }

    async fn fetch_from(
        &self,
        endpoint: &Endpoint,
        names: &[String],
    ) -> Result<SecretSet, ClientError> {
        let server_key = self.endpoint_key(endpoint).await?;
        let reply = self.reply_key(endpoint).await?;
        let header = Header {
            client: self.name.clone(),
            server_fingerprint: server_key.fingerprint.clone(),
            timestamp: crate::clock::unix_now(),
            nonce: crate::crypto::random_bytes().map_err(LocalError::Random)?,
            instance: endpoint.announced().instance,
        };
        let body = RequestBody {
            names: names.to_vec(),
            reply_key: reply.spki_der().to_vec(),
        };
        let request =
            Request::seal(header, &body, &server_key, &self.key).map_err(LocalError::Seal)?;
        let url = format!("{}{}", endpoint.url, protocol::SECRETS_PATH);
        let unreachable = |e: String| ClientError::Unreachable {
            server: endpoint.url.clone(),
            detail: e,
        };
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(request.encode())
            .send()
            .await
            .map_err(|e| unreachable(send_error(&e)))?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(printable)
            .unwrap_or_else(|| "-".to_owned());
        let bytes = read_limited(response, MAX_ANSWER_BODY)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match status {
            200 | 404 => {
                let answer = protocol::open_answer(&bytes, &reply, &request.header)
                    .map_err(AnswerError::Sealed)?;
                if status == 404 {
                    if answer.missing.is_empty() {
                        return Err(AnswerError::NothingMissing.into());
                    }
                    return Err(ClientError::NotFound(answer.missing));
                }
                if !answer.missing.is_empty() {
                    return Err(AnswerError::MissingIn200.into());
                }
                if !names.is_empty() {
                    let asked: std::collections::BTreeSet<&str> =
                        names.iter().map(String::as_str).collect();
                    let got: std::collections::BTreeSet<&str> =
                        answer.secrets.iter().map(|(n, _)| n.as_str()).collect();
                    if asked != got {
                        return Err(AnswerError::NotWhatWasAsked.into());
                    }
                }
                Ok(answer.secrets)
            }
            403 => Err(ClientError::Denied { request_id }),
            503 if error_code(&bytes).as_deref() == Some("retry") => {
                // Made before this server could remember it, or bound to
                // another instance: learn the current one, then the retry
                // loop sends a new request.
                self.refresh_instance(endpoint).await?;
                Err(ClientError::Server {
                    status,
                    message: error_message(&bytes),
                })
            }
            _ => Err(ClientError::Server {
                status,
                message: error_message(&bytes),
            }),
        }
    }
}

/// The `error` code of an unsealed error answer.
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<WireError>(body)
        .ok()
        .map(|e| e.error)
}

fn error_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<WireError>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    printable(&text)
}

/// Text that came from the network, made safe to print on one line of a
/// terminal or the journal: control characters (newlines, escape
/// sequences) and the bidirectional-text overrides are shown escaped
/// (`\n`, `\u{1b}`), and it is cut at 300 characters. Without this a
/// server's error text could forge log lines ("consumer web: changed") or
/// repaint a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 300 {
            out.push_str("...");
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Transport(String),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(error_chain(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The rustls error in `err`, which rustls reports wrapped in io::Errors
/// (whose `source()` skips what they wrap).
fn find_tls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_tls(inner)
}

/// A TLS failure in one sentence that says what to check.
fn tls_hint(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as Tls};
    match e {
        Tls::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a CA this client trusts (set ca_file, or --ca-file)".to_owned()
        }
        Tls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: the server's certificate is not valid for the host name in the URL".to_owned(),
        Tls::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".to_owned()
        }
        Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => {
            "TLS handshake failed: the server does not speak TLS there (an http:// server behind an https:// URL?)".to_owned()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A wait as a person reads it in a progress line: "0.4 s", "12 s".
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", d.as_secs())
    }
}

/// The `tracing` target of retry progress (`waiting for … (attempt 3, …)`),
/// which a binary shows only where a person watches (a terminal).
pub const PROGRESS: &str = "locket::progress";

/// Why a request could not be sent, in words that say what to check: the
/// kind of the underlying I/O error when there is one, else the chain.
fn send_error(e: &reqwest::Error) -> String {
    use std::io::ErrorKind;
    let chain = error_chain(e);
    // The whole chain, for whoever runs with LOCKET_LOG=debug.
    tracing::debug!("request failed: {chain}");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = find_tls(err) {
            return tls_hint(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let hint = match io.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused, nothing listens there (is the server running, and are the address and port right?)"
                }
                ErrorKind::TimedOut => {
                    "timed out connecting (the host is down, or a firewall drops the packets)"
                }
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    "no route to the host (check this host's network and the server's address)"
                }
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                    "the connection was reset (a TLS server behind an http:// URL, or a proxy in the way?)"
                }
                _ => "",
            };
            if !hint.is_empty() {
                return hint.to_owned();
            }
        }
        source = err.source();
    }
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return "the server's host name does not resolve (check the URL's host name, and this host's DNS)".to_owned();
    }
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    chain
}
