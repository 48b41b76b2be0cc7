//! The client: fetches the server key once per process (checking the pin
//! before anything else is sent), then asks for any number of secrets in
//! one signed, encrypted request.

pub mod output;
pub mod render;

use std::time::Duration;

use tokio::sync::OnceCell;

use crate::config::client::ClientConfig;
use crate::keys::{ClientKey, KeyError, ReplyKey, ServerPublicKey};
use crate::protocol::{self, Header, Request, RequestBody, WireError, WireKey};
use crate::secret::SecretValue;

/// Largest answer body the client reads (an answer is at most the server's
/// `max_answer_bytes` plus base64 and JSON overhead).
pub const MAX_ANSWER_BODY: usize = 64 * 1024 * 1024;

/// Why fetching failed. [`ClientError::exit_code`] maps each to the
/// documented exit code.
#[derive(Debug, thiserror::Error)]
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
    #[error("not found on the server: {}", .0.join(", "))]
    NotFound(Vec<String>),
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the server's answer was refused: {0}")]
    Protocol(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot build the request: {0}")]
    Local(String),
}

impl ClientError {
    /// 1 other failure, 2 usage or config (here: key files), 3 denied,
    /// 4 not found.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Denied { .. } => 3,
            Self::NotFound(_) => 4,
            Self::Key(_) => 2,
            _ => 1,
        }
    }
}

/// A client of one server.
pub struct Client {
    http: reqwest::Client,
    server: String,
    name: String,
    key: ClientKey,
    reply: ReplyKey,
    pin: Option<String>,
    server_key: OnceCell<ServerPublicKey>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Installs the ring crypto provider for rustls (once per process).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client for `config`, signing with `key`. Generates the reply key
    /// (once for the life of this client).
    pub fn new(config: &ClientConfig, key: ClientKey) -> Result<Self, ClientError> {
        Self::with_reply_key(config, key, ReplyKey::generate()?)
    }

    /// As [`Client::new`], with a given reply key.
    pub fn with_reply_key(
        config: &ClientConfig,
        key: ClientKey,
        reply: ReplyKey,
    ) -> Result<Self, ClientError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("locket-client/", env!("CARGO_PKG_VERSION")));
        if let Some(bind) = config.bind {
            builder = builder.local_address(bind);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Local(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            server: config.server.clone(),
            name: config.name.clone(),
            key,
            reply,
            pin: config.server_fingerprint.clone(),
            server_key: OnceCell::new(),
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            detail: e.to_string(),
        }
    }

    /// The server's public key, fetched once and checked against the pin.
    pub async fn server_key(&self) -> Result<&ServerPublicKey, ClientError> {
        self.server_key
            .get_or_try_init(|| self.fetch_server_key())
            .await
    }

    async fn fetch_server_key(&self) -> Result<ServerPublicKey, ClientError> {
        let url = format!("{}{}", self.server, protocol::KEY_PATH);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = read_limited(response, 1024 * 1024)
            .await
            .map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(ClientError::Server {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let wire: WireKey = serde_json::from_slice(&body).map_err(|e| {
            ClientError::Protocol(format!(
                "GET {} did not return a locket key: {e}",
                protocol::KEY_PATH
            ))
        })?;
        let key = ServerPublicKey::from_pem(&wire.public_key).map_err(ClientError::Protocol)?;
        if let Some(expected) = &self.pin
            && *expected != key.fingerprint
        {
            return Err(ClientError::PinMismatch {
                server: self.server.clone(),
                expected: expected.clone(),
                actual: key.fingerprint,
            });
        }
        Ok(key)
    }

    /// Fetches `names` (all granted secrets when empty) in one request.
    pub async fn fetch(&self, names: &[String]) -> Result<Vec<(String, SecretValue)>, ClientError> {
        let server_key = self.server_key().await?;
        let header = Header {
            client: self.name.clone(),
            server_fingerprint: server_key.fingerprint.clone(),
            timestamp: crate::server::unix_now(),
            nonce: crate::crypto::random_bytes().map_err(|e| ClientError::Local(e.to_string()))?,
        };
        let body = RequestBody {
            names: names.to_vec(),
            reply_key: self.reply.spki_der().to_vec(),
        };
        let request = Request::seal(header, &body, server_key, &self.key)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let url = format!("{}{}", self.server, protocol::SECRETS_PATH);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(request.encode())
            .send()
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let bytes = read_limited(response, MAX_ANSWER_BODY)
            .await
            .map_err(|e| self.unreachable(e))?;
        match status {
            200 | 404 => {
                let answer = protocol::open_answer(&bytes, &self.reply, &request.header)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if status == 404 {
                    if answer.missing.is_empty() {
                        return Err(ClientError::Protocol(
                            "a 404 answer that names nothing missing".into(),
                        ));
                    }
                    return Err(ClientError::NotFound(answer.missing));
                }
                if !answer.missing.is_empty() {
                    return Err(ClientError::Protocol(
                        "a 200 answer that names missing secrets".into(),
                    ));
                }
                if !names.is_empty() {
                    let asked: std::collections::BTreeSet<&str> =
                        names.iter().map(String::as_str).collect();
                    let got: std::collections::BTreeSet<&str> =
                        answer.secrets.iter().map(|(n, _)| n.as_str()).collect();
                    if asked != got {
                        return Err(ClientError::Protocol(
                            "the answer does not hold exactly the names asked for".into(),
                        ));
                    }
                }
                Ok(answer.secrets)
            }
            403 => Err(ClientError::Denied { request_id }),
            _ => Err(ClientError::Server {
                status,
                message: error_message(&bytes),
            }),
        }
    }
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<WireError>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// The error and its causes on one line (reqwest hides the useful part).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(format!("answer larger than {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
