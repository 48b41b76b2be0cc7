//! What both protocols do around a request, written once: refusing a
//! source over its failed-authentication limit before any work, and
//! finishing a request with its outcome (the failed-authentication count,
//! the metrics and the one log line). The nonce rule is
//! [`State::spend_nonce`](super::state::State::spend_nonce), also shared.
//! v2 (`routes.rs`) and v1 (`crate::v1`) each add only their wire format.

use std::net::IpAddr;
use std::time::Instant;

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::outcome::Outcome;
use super::state::State;
use crate::clock::unix_now;
use crate::protocol::WireError;

/// A fresh id for one request: in its log line and its `X-Request-Id`.
pub(crate) fn request_id() -> String {
    crate::crypto::random_bytes::<8>()
        .map(hex::encode)
        .unwrap_or_else(|_| "0000000000000000".into())
}

/// A JSON error answer (`{"error", "message"}`).
pub(crate) fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    use warp::Reply as _;
    let body = WireError {
        error: error.into(),
        message: message.into(),
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// 429 for a source over its failed-authentication limit, before any work.
pub(crate) fn rate_limited(state: &State, ip: IpAddr, id: &str) -> Option<Response> {
    let retry = state.guards.failures.retry_after(ip, unix_now())?;
    Some(too_many_failures(state, ip, id, retry))
}

/// The 429 itself, with its log line, metric and `Retry-After`.
pub(crate) fn too_many_failures(state: &State, ip: IpAddr, id: &str, retry: u64) -> Response {
    tracing::warn!(request_id = %id, ip = %ip, retry_after = retry, outcome = "rate_limited", "too many failed authentications from this source");
    state.metrics.request("rate_limited", 0.0);
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many failed authentications from this address; retry after the Retry-After delay",
    );
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// Finishes a request that began at `started`: counts a failed
/// authentication against its source, records the metrics and writes the
/// request's one log line. Each protocol then builds its own answer.
pub(crate) fn finish<A>(
    state: &State,
    outcome: &Outcome<A>,
    id: &str,
    protocol: &'static str,
    ip: IpAddr,
    started: Instant,
) {
    if outcome.is_failed_authentication() {
        state.guards.failures.failure(ip, unix_now());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = (elapsed * 1000.0 * 100.0).round() / 100.0;
    state.metrics.request(outcome.label(), elapsed);
    outcome.log(id, protocol, ip, ms);
}
