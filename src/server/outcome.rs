//! How a request ended, for both protocols: one type, one metrics label,
//! one rule for what counts as a failed authentication, one log line per
//! request. Each protocol turns an outcome into its own HTTP answer (v2:
//! JSON errors; v1: the original's plain-text ones).

use std::net::IpAddr;

/// How a request ended. `reason` strings go to the log only. `A` is the
/// protocol's sealed answer.
#[derive(Debug)]
pub(crate) enum Outcome<A> {
    /// 200 with the sealed answer.
    Ok {
        answer: A,
        client: String,
        names: Vec<String>,
        served: usize,
    },
    /// 404 (v2: with a sealed answer listing the missing names).
    NotFound {
        answer: Option<A>,
        client: String,
        missing: Vec<String>,
    },
    /// 400.
    BadRequest {
        client: Option<String>,
        reason: String,
    },
    /// 400 for a v1 payload that did not decrypt: it cost a private-key
    /// operation before authentication, so it counts as a failed
    /// authentication and chosen-ciphertext probing runs into the 429 limit.
    Undecryptable { reason: String },
    /// 403, uniform body.
    Denied {
        client: Option<String>,
        reason: String,
    },
    /// 403, uniform body; a replayed nonce.
    Replay { client: String },
    /// 413 for an answer larger than `max_answer_bytes`.
    AnswerTooLarge { client: String, size: usize },
    /// 503: the replay cache is full.
    Busy { client: String },
    /// 503 with Retry-After: stamped before this server could know whether
    /// its nonce was spent (see `State::spend_nonce`); a new request passes.
    Unknowable { client: String, why: &'static str },
    /// 503: no secret set has been loaded yet.
    NotReady,
    /// 500.
    Internal {
        client: Option<String>,
        reason: String,
    },
}

impl<A> Outcome<A> {
    /// The `outcome` label of the request metrics and log lines.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::NotFound { .. } => "not_found",
            Outcome::BadRequest { .. } | Outcome::Undecryptable { .. } => "bad_request",
            Outcome::Denied { .. } => "denied",
            Outcome::Replay { .. } => "replay",
            Outcome::AnswerTooLarge { .. } => "too_large",
            Outcome::Busy { .. } => "busy",
            Outcome::Unknowable { .. } => "retry",
            Outcome::NotReady => "not_ready",
            Outcome::Internal { .. } => "internal",
        }
    }

    /// Whether this counts toward the source's failed-authentication limit.
    pub(crate) fn is_failed_authentication(&self) -> bool {
        matches!(
            self,
            Outcome::Denied { .. } | Outcome::Replay { .. } | Outcome::Undecryptable { .. }
        )
    }

    /// The one log line of a request. Everything that came from the request
    /// is logged with `?` (escaped), so it cannot forge a line.
    pub(crate) fn log(&self, id: &str, protocol: &'static str, ip: IpAddr, ms: f64) {
        let outcome = self.label();
        match self {
            Outcome::Ok {
                client,
                names,
                served,
                ..
            } => {
                tracing::info!(request_id = %id, protocol, client = %client, ip = %ip, names = ?names, served, ms, outcome, "answered");
            }
            Outcome::NotFound {
                client, missing, ..
            } => {
                tracing::info!(request_id = %id, protocol, client = %client, ip = %ip, missing = ?missing, ms, outcome, "answered");
            }
            Outcome::BadRequest { client, reason } => {
                tracing::warn!(request_id = %id, protocol, client = client.as_deref().unwrap_or("-"), ip = %ip, reason = ?reason, outcome, "request rejected");
            }
            Outcome::Undecryptable { reason } => {
                tracing::warn!(request_id = %id, protocol, client = "-", ip = %ip, reason = ?reason, outcome, "request rejected");
            }
            Outcome::Denied { client, reason } => {
                tracing::warn!(request_id = %id, protocol, client = client.as_deref().unwrap_or("-"), ip = %ip, reason = ?reason, outcome, "request denied");
            }
            Outcome::Replay { client } => {
                tracing::warn!(request_id = %id, protocol, client = %client, ip = %ip, reason = "nonce already used (replay)", outcome, "request denied");
            }
            Outcome::AnswerTooLarge { client, size } => {
                tracing::warn!(request_id = %id, protocol, client = %client, ip = %ip, size, outcome, "answer too large");
            }
            Outcome::Busy { client } => {
                tracing::error!(request_id = %id, protocol, client = %client, ip = %ip, outcome, "replay cache full; refusing requests until nonces expire (raise replay_cache_size)");
            }
            Outcome::Unknowable { client, why } if protocol == "v1" => {
                tracing::info!(request_id = %id, protocol, client = %client, ip = %ip, outcome, "{why}; answering 403, as the original answers a stale request (v1 clients do not retry)");
            }
            Outcome::Unknowable { client, why } => {
                tracing::info!(request_id = %id, protocol, client = %client, ip = %ip, outcome, "{why}; answering 503, retry with a new request");
            }
            Outcome::NotReady => {
                tracing::warn!(request_id = %id, protocol, ip = %ip, outcome, "no secret set loaded yet; answering 503");
            }
            Outcome::Internal { client, reason } => {
                tracing::error!(request_id = %id, protocol, client = client.as_deref().unwrap_or("-"), ip = %ip, reason = ?reason, outcome, "request failed");
            }
        }
    }
}
