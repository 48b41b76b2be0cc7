//! The v1 endpoint: the original locket's protocol, for existing Go clients.
//!
//! Checks run in the original's order (see docs/protocol.md, "Protocol v1"):
//! source IP, size, JSON, payload decryption, nonce present, clock,
//! signature (tried against every registered key: a v1 request does not say
//! who sent it; the client that last signed with the same `client_pubkey`
//! is tried first, see `Hints`), then that client's own networks, replay, and its grants.
//! Unlike v2, this decrypts before it authenticates, as the original did;
//! the first check (the address must be inside some client's networks) is
//! what keeps strangers from the RSA key. Keep it off unless Go clients
//! still need it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use bytes::Buf;
use futures_util::{Stream, StreamExt};

use super::{Lookup, shape, wire};
use crate::clock::{clock_ok, unix_now};
use crate::crypto::Encrypter;
use crate::server::conn::Peer;
use crate::server::gate::{self, rate_limited, request_id};
use crate::server::outcome::Outcome;
use crate::server::replay::Seen;
use crate::server::state::State;

fn text(status: StatusCode, body: &str) -> Response {
    let mut r = Response::new(format!("{body}\n").into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Go's http.Error, which the original answers errors with, sends it.
    if status.is_client_error() {
        r.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
    }
    r
}

/// What earlier requests taught about a `client_pubkey` (a Go client's RSA
/// key, the same in every request of one process): which registered client
/// signed with it, and the key parsed. A v1 request does not say who sent
/// it, so without this each request tries the signature against every
/// registered key (one ed25519 verification each: half the registry on
/// average) and parses the PEM again. A hint only orders the trials: the
/// signature is still verified, and a wrong or stale hint (a reload renamed
/// the client, or another client sent the same key) falls back to the full
/// scan. Bounded: forgotten whole when full.
#[derive(Default)]
struct Hints {
    map: std::sync::Mutex<HashMap<[u8; 32], Hint>>,
}

#[derive(Clone)]
struct Hint {
    client: String,
    key: Arc<Encrypter>,
}

/// Most `client_pubkey`s remembered at once.
const HINTS: usize = 4096;

impl Hints {
    fn id(client_pubkey: &str) -> [u8; 32] {
        Sha256::digest(client_pubkey.as_bytes()).into()
    }

    fn get(&self, client_pubkey: &str) -> Option<Hint> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&Self::id(client_pubkey)).cloned()
    }

    fn learn(&self, client_pubkey: &str, hint: Hint) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= HINTS {
            map.clear();
        }
        map.insert(Self::id(client_pubkey), hint);
    }
}

/// The v1 routes on `path`: GET (key), OPTIONS, POST; other methods 405.
pub(super) fn routes(
    state: Arc<State>,
    path: String,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let path = Arc::new(path);
    let on_path = warp::path::full()
        .and_then(move |full: warp::path::FullPath| {
            let path = Arc::clone(&path);
            async move {
                if full.as_str() == path.as_str() {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one();
    let with_state = warp::any().map(move || Arc::clone(&state));
    let hints = Arc::new(Hints::default());
    let with_hints = warp::any().map(move || Arc::clone(&hints));
    let get = warp::get()
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            let key = state.keys.v1();
            let mut r = text(
                StatusCode::OK,
                wire::public_key_pem(key.spki_der()).trim_end(),
            );
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            r
        });
    // HEAD, as the original answers it (Go's 404, plain text).
    let head = warp::head().map(|| text(StatusCode::NOT_FOUND, "404 page not found"));
    let options = warp::options().map(|| {
        let mut r = Response::new("".into());
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, POST"));
        r
    });
    let post = warp::post()
        .and(with_state)
        .and(with_hints)
        .and(warp::ext::get::<Peer>())
        .and(warp::body::content_length_limit(wire::MAX_BODY))
        .and(warp::body::stream())
        .then(handle);
    // Only methods the endpoint does not serve: a rejected POST (413) must
    // keep its own answer.
    let other = warp::method().and_then(|m: warp::http::Method| async move {
        use warp::http::Method;
        if [Method::GET, Method::POST, Method::OPTIONS, Method::HEAD].contains(&m) {
            Err(warp::reject::not_found())
        } else {
            Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"))
        }
    });
    on_path.and(
        get.or(head)
            .unify()
            .or(options)
            .unify()
            .or(post)
            .unify()
            .or(other)
            .unify(),
    )
}

/// How a v1 request ended; the answer is the sealed value's base64.
type V1Outcome = Outcome<String>;

async fn handle<B: Buf>(
    state: Arc<State>,
    hints: Arc<Hints>,
    peer: Peer,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Response {
    let id = request_id();
    let ip = peer.0.ip().to_canonical();
    let started = std::time::Instant::now();
    // A limited source is refused before a byte of its body is read.
    if let Some(response) = rate_limited(&state, ip, &id) {
        return response;
    }
    let outcome = match read_body(&state, ip, body).await {
        // On the worker thread, as v2's pipeline: one RSA operation is
        // shorter than the two thread hand-offs a blocking task would cost.
        Ok(body) => process(&state, &hints, ip, &body),
        Err(refused) => refused,
    };
    gate::finish(&state, &outcome, &id, "v1", ip, started);
    // The original's answers: JSON for a value, one plain-text line else.
    match outcome {
        Outcome::Ok { answer, .. } => {
            let mut r = Response::new(
                format!(
                    "{}\n",
                    serde_json::to_string(&wire::Answer { payload: answer }).unwrap_or_default()
                )
                .into(),
            );
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        // A request stamped before this process could remember nonces is
        // refused as the original refuses a stale one (403): Go clients do
        // not retry, and a 5xx would read as a server fault.
        Outcome::Denied { .. } | Outcome::Replay { .. } | Outcome::Unknowable { .. } => {
            text(StatusCode::FORBIDDEN, "forbidden")
        }
        Outcome::BadRequest { .. } | Outcome::Undecryptable { .. } => {
            text(StatusCode::BAD_REQUEST, "bad request")
        }
        Outcome::NotFound { .. } => text(StatusCode::NOT_FOUND, "not found"),
        Outcome::AnswerTooLarge { .. }
        | Outcome::Busy { .. }
        | Outcome::NotReady
        | Outcome::Internal { .. } => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        }
    }
}

/// The original's first checks, made before the body is held: the address
/// (1), then each piece of the body as it arrives, refused at its first
/// byte that cannot be the original's JSON (2; the declared size was
/// checked by the filter: 413). So garbage, or a body from a stranger,
/// costs a few bytes of reading, not up to 1 MiB of memory.
async fn read_body<B: Buf>(
    state: &State,
    ip: IpAddr,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Result<Vec<u8>, V1Outcome> {
    if !state.runtime.load().registry.any_allows_ip(ip) {
        return Err(V1Outcome::Denied {
            client: None,
            reason: format!("source address {ip} is in no client's networks"),
        });
    }
    let mut body = std::pin::pin!(body);
    let mut shape = shape::Shape::default();
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        let mut piece = piece.map_err(|e| V1Outcome::BadRequest {
            client: None,
            reason: format!("reading the body failed: {e}"),
        })?;
        while piece.has_remaining() {
            let bytes = piece.chunk();
            shape
                .feed(bytes, out.len())
                .map_err(|e| V1Outcome::BadRequest {
                    client: None,
                    reason: e.to_string(),
                })?;
            out.extend_from_slice(bytes);
            let n = bytes.len();
            piece.advance(n);
        }
    }
    Ok(out)
}

fn process(state: &State, hints: &Hints, ip: IpAddr, body: &[u8]) -> V1Outcome {
    let runtime = state.runtime.load_full();
    let registry = &runtime.registry;
    // 1. (the address) and the shape of the body: `read_body`.
    // 2. JSON.
    let request: wire::Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return V1Outcome::BadRequest {
                client: None,
                reason: format!("not the v1 JSON: {e}"),
            };
        }
    };
    // 3. Payload and nonce.
    let name = match wire::open_payload(state.keys.v1().decrypter(), &request.payload) {
        Ok(plain) => match String::from_utf8(plain.to_vec()) {
            Ok(n) => n,
            Err(_) => {
                return V1Outcome::BadRequest {
                    client: None,
                    reason: "the decrypted name is not UTF-8".into(),
                };
            }
        },
        Err(e) => {
            return V1Outcome::Undecryptable {
                reason: e.to_string(),
            };
        }
    };
    if request.nonce.is_empty() {
        return V1Outcome::BadRequest {
            client: None,
            reason: "empty nonce".into(),
        };
    }
    // 4. Clock, with sub-second precision as the original compares it: a
    // timestamp exactly `skew` seconds old is already older than `skew`.
    let now = unix_now();
    let skew = runtime.config.clock_skew.as_secs() as i64;
    let precise = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let within = (precise - request.timestamp as f64).abs() <= skew as f64;
    if !clock_ok(now, request.timestamp, skew) || !within {
        return V1Outcome::Denied {
            client: None,
            reason: format!(
                "timestamp is {}s from server time (allowed: {skew}s)",
                i128::from(request.timestamp) - i128::from(now)
            ),
        };
    }
    // 5. Signature, against every registered key (the hinted client's
    // first).
    let Ok(signature) = base64_signature(&request.signature) else {
        return V1Outcome::Denied {
            client: None,
            reason: "signature is not 64 bytes of base64".into(),
        };
    };
    let signed = wire::signed_string(
        &name,
        &request.client_pubkey,
        request.timestamp,
        &request.nonce,
    );
    let verifies = |c: &crate::registry::RegisteredClient| {
        c.keys
            .iter()
            .any(|k| k.verify_strict(signed.as_bytes(), &signature).is_ok())
    };
    let hint = hints.get(&request.client_pubkey);
    let hinted_name = hint.as_ref().map(|h| h.client.as_str());
    let hinted = hinted_name
        .and_then(|name| registry.get(name))
        .filter(|c| verifies(c));
    // A stale hint falls back to the scan, without trying that client twice.
    let Some(client) = hinted.or_else(|| {
        registry
            .iter()
            .find(|c| Some(c.name.as_str()) != hinted_name && verifies(c))
    }) else {
        return V1Outcome::Denied {
            client: None,
            reason: "signature verifies with no registered key".into(),
        };
    };
    let client_name = client.name.clone();
    // The client's own networks (stricter than the original's one CIDR).
    if !client.allows_ip(ip) {
        return V1Outcome::Denied {
            client: Some(client_name),
            reason: format!("source address {ip} is not in the client's networks"),
        };
    }
    // 6. Replay.
    let mut key = [0u8; 16];
    key.copy_from_slice(
        &Sha256::digest(format!("locket/v1 nonce\0{}", request.nonce).as_bytes())[..16],
    );
    match state.spend_nonce(&runtime, &client_name, key, request.timestamp, now) {
        Seen::New => {}
        Seen::Replay => {
            return V1Outcome::Replay {
                client: client_name,
            };
        }
        Seen::Full => {
            return V1Outcome::Busy {
                client: client_name,
            };
        }
        Seen::Unknowable => {
            return V1Outcome::Unknowable {
                client: client_name,
                why: "request stamped before this server could remember its nonce (a start, a widened clock window, or a clock that jumped back)",
            };
        }
    }
    // 7. Grants and lookup.
    let lookup = match runtime.config.v1.lookup {
        Lookup::Plain => name.clone(),
        Lookup::PerClient => format!("{}/{name}", client_name.to_lowercase()),
    };
    let snapshot = state.secrets.store.snapshot();
    // A service whose grant matches no secret that exists (imported
    // registries grant `<name>/*`) is refused, as the original refuses a
    // service without secrets: 403, not 404.
    if client.grants_nothing() {
        return V1Outcome::Denied {
            client: Some(client_name),
            reason: "the client is granted no secrets".into(),
        };
    }
    // The value asked for, when it exists and is granted: then the grants
    // plainly match a secret, and the scan below is not needed.
    let granted = snapshot.get(&lookup).filter(|_| client.may_read(&lookup));
    if granted.is_none() && !snapshot.iter().any(|(n, _)| client.may_read(n)) {
        return V1Outcome::Denied {
            client: Some(client_name),
            reason: "the client's grants match no secret that exists".into(),
        };
    }
    let Some(value) = granted else {
        return V1Outcome::NotFound {
            answer: None,
            client: client_name,
            missing: vec![lookup],
        };
    };
    let client_key = match hint {
        // The same text parses to the same key, whoever sent it.
        Some(h) => {
            if h.client != client_name {
                hints.learn(
                    &request.client_pubkey,
                    Hint {
                        client: client_name.clone(),
                        key: Arc::clone(&h.key),
                    },
                );
            }
            h.key
        }
        None => match wire::parse_public_key_pem(&request.client_pubkey) {
            Ok(k) => {
                let key = Arc::new(k);
                hints.learn(
                    &request.client_pubkey,
                    Hint {
                        client: client_name.clone(),
                        key: Arc::clone(&key),
                    },
                );
                key
            }
            Err(e) => {
                return V1Outcome::BadRequest {
                    client: Some(client_name),
                    reason: e.to_string(),
                };
            }
        },
    };
    let max = wire::max_plaintext(&client_key);
    if value.len() > max {
        return V1Outcome::Internal {
            client: Some(client_name),
            reason: format!(
                "the value of {lookup:?} is {} bytes, but a v1 answer is one RSA-OAEP block to the client's key ({max} bytes at most); move this client to a v2 client (locket-client) to serve it",
                value.len()
            ),
        };
    }
    match wire::seal_value(&client_key, value.expose().as_bytes()) {
        Ok(answer) => V1Outcome::Ok {
            answer,
            client: client_name,
            names: vec![lookup],
            served: 1,
        },
        Err(e) => V1Outcome::Internal {
            client: Some(client_name),
            reason: e.to_string(),
        },
    }
}

fn base64_signature(text: &str) -> Result<ed25519_dalek::Signature, ()> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ())?;
    ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| ())
}
