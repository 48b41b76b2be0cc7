//! The request pipeline for `POST /v1/secrets`:
//!
//! decode -> client lookup -> source IP -> clock -> signature -> server
//! fingerprint -> nonce (replay) -> RSA unwrap + decrypt -> access -> answer.
//!
//! Everything before the replay check costs one JSON parse and one ed25519
//! verification, whoever asks. Unknown clients, wrong addresses, stale
//! clocks and bad signatures all run the same verification (against a dummy
//! key when there is no client) and get the same answer; only the log says
//! which it was. The RSA private key is used only after all of them pass.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::{clock_ok, unix_now};
use crate::protocol::{self, Request, WireAnswer};
use crate::server::outcome;
use crate::server::replay::Seen;
use crate::server::state::{Runtime, State};

/// How a v2 request ended.
pub(crate) type Outcome = outcome::Outcome<WireAnswer>;

/// Whether `body`, from `ip`, is a request that a registered client signed
/// (address, clock and signature all hold): such a request is never refused
/// by the failed-authentication limit, which slows failures only. Costs one
/// JSON parse and one ed25519 verification, no RSA.
pub(super) fn authenticates(state: &State, ip: IpAddr, body: &[u8]) -> bool {
    let Ok(request) = Request::decode(body) else {
        return false;
    };
    let runtime = state.runtime.load_full();
    cheap_checks(state, &runtime, &request, ip, unix_now()).is_ok()
}

/// Runs the whole pipeline for one request body from `ip`.
pub(super) async fn process(state: &Arc<State>, ip: IpAddr, body: &[u8]) -> Outcome {
    let request = match Request::decode(body) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::BadRequest {
                client: None,
                reason: e.to_string(),
            };
        }
    };
    if !state.secrets.health.loaded() {
        return Outcome::NotReady;
    }
    let runtime = state.runtime.load_full();
    let name = request.header.client.clone();
    let now = unix_now();
    if let Err(denied) = cheap_checks(state, &runtime, &request, ip, now) {
        return denied;
    }
    // A bound request names the server process it is for; another process
    // (a second server sharing the key, or this one before a restart) may
    // have answered it already, so it is refused here. The client fetches
    // the key again, learns this instance and sends a new request.
    match request.header.instance {
        Some(instance) if instance != state.keys.instance => {
            return Outcome::Unknowable {
                client: name,
                why: "request bound to another server instance (a second server sharing this key, or this server before a restart)",
            };
        }
        None if runtime.config.require_bound_requests => {
            return Outcome::Denied {
                client: Some(name),
                reason: "request not bound to this server instance (version 2), and require_bound_requests is set; upgrade the client".into(),
            };
        }
        _ => {}
    }
    // Each client's nonces are its own: a registered client that sees
    // another's traffic cannot spend that client's nonce first.
    match state.spend_nonce(
        &runtime,
        &name,
        request.header.nonce,
        request.header.timestamp,
        now,
    ) {
        Seen::New => {}
        Seen::Replay => return Outcome::Replay { client: name },
        Seen::Full => return Outcome::Busy { client: name },
        Seen::Unknowable => {
            return Outcome::Unknowable {
                client: name,
                why: "request stamped before this server could remember its nonce (a start, a widened clock window, or a clock that jumped back)",
            };
        }
    }

    // Authenticated: now, and only now, the RSA private-key operation. It
    // runs on this worker: it is CPU-bound, the runtime has one worker per
    // core, and handing it to the blocking pool cost two thread switches per
    // request without adding capacity (the bench's profile: kernel share
    // 4.4-7.9% with the hand-off, 3.1-4.7% without, at 2048 bits).
    answer(state, &runtime, request)
}

/// Client, address, clock, signature and server key: everything before the
/// replay check, evaluated without an early exit.
fn cheap_checks(
    state: &State,
    runtime: &Runtime,
    request: &Request,
    ip: IpAddr,
    now: i64,
) -> Result<(), Outcome> {
    let registry = &runtime.registry;
    let name = request.header.client.clone();
    let skew = runtime.config.clock_skew.as_secs() as i64;

    // Evaluate every cheap check without an early exit, so that the work
    // done (and so the time taken) does not depend on which one fails.
    let client = registry.get(&name);
    let signed = request.signed_bytes();
    let (sig_ok, ip_ok) = match client {
        Some(c) => (
            c.keys.iter().fold(false, |ok, k| {
                k.verify_strict(&signed, &request.signature).is_ok() | ok
            }),
            c.allows_ip(ip),
        ),
        None => {
            let _ = state
                .guards
                .dummy_key
                .verify_strict(&signed, &request.signature);
            (false, false)
        }
    };
    let clock_ok = clock_ok(now, request.header.timestamp, skew);
    let fingerprint_ok = state
        .keys
        .by_fingerprint(&request.header.server_fingerprint)
        .is_some();

    let denied = |reason: String| {
        Err(Outcome::Denied {
            client: Some(name.clone()),
            reason,
        })
    };
    if client.is_none() {
        return denied("unknown client".into());
    }
    if !ip_ok {
        return denied(format!(
            "source address {ip} is not in the client's networks"
        ));
    }
    if !clock_ok {
        return denied(format!(
            "timestamp {} is {}s from server time (allowed: {skew}s); check the client's clock",
            request.header.timestamp,
            i128::from(request.header.timestamp) - i128::from(now)
        ));
    }
    if !sig_ok {
        return denied("signature does not verify with any of the client's keys".into());
    }
    if !fingerprint_ok {
        return denied(format!(
            "request was made for server key {}, but this server's key is {}{}",
            request.header.server_fingerprint,
            state.keys.current.fingerprint(),
            state
                .keys
                .next
                .as_ref()
                .map(|k| format!(" (next: {})", k.fingerprint()))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

fn answer(state: &State, runtime: &Runtime, request: Request) -> Outcome {
    let name = request.header.client.clone();
    let Some(client) = runtime.registry.get(&name) else {
        return Outcome::Internal {
            client: Some(name),
            reason: "client vanished".into(),
        };
    };
    let Some(key) = state
        .keys
        .by_fingerprint(&request.header.server_fingerprint)
    else {
        return Outcome::Internal {
            client: Some(name),
            reason: "server key vanished".into(),
        };
    };
    let body = match request.open(key) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::BadRequest {
                client: Some(name),
                reason: e.to_string(),
            };
        }
    };
    let reply_key = match crate::keys::parse_reply_key(&body.reply_key) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::BadRequest {
                client: Some(name),
                reason: e.to_string(),
            };
        }
    };
    let snapshot = state.secrets.store.snapshot();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    if body.names.is_empty() {
        found = client.readable(&snapshot);
    } else {
        let unique: BTreeSet<&str> = body.names.iter().map(String::as_str).collect();
        let refused: Vec<&str> = unique
            .iter()
            .copied()
            .filter(|n| !client.may_read(n))
            .collect();
        if !refused.is_empty() {
            return Outcome::Denied {
                client: Some(name),
                reason: format!("not granted: {}", refused.join(", ")),
            };
        }
        for n in unique {
            match snapshot.get(n) {
                Some(v) => found.push((n, v)),
                None => missing.push(n.to_owned()),
            }
        }
    }
    if !missing.is_empty() {
        found.clear();
    }
    let size = protocol::answer_size(found.iter().copied(), &missing);
    if size > runtime.config.max_answer_bytes {
        return Outcome::AnswerTooLarge { client: name, size };
    }
    let plain = protocol::encode_answer(&found, &missing);
    let served = found.len();
    match protocol::seal_answer(plain, &reply_key, &request.header) {
        Ok(answer) if missing.is_empty() => Outcome::Ok {
            answer,
            client: name,
            names: body.names,
            served,
        },
        Ok(answer) => Outcome::NotFound {
            answer: Some(answer),
            client: name,
            missing,
        },
        // An X25519 reply key that cannot be sealed to (a low-order
        // point) is the requester's broken key, not the server's fault.
        Err(e @ protocol::ProtocolError::Crypto(crate::crypto::CryptoError::HpkeSeal)) => {
            Outcome::BadRequest {
                client: Some(name),
                reason: format!("reply key refused: {e}"),
            }
        }
        Err(e) => Outcome::Internal {
            client: Some(name),
            reason: format!("sealing the answer failed: {e}"),
        },
    }
}
