//! HTTP routes: `GET /v1/key`, `POST /v1/secrets`, `GET /healthz`, and the
//! mapping of outcomes and rejections to answers and log lines.

use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::conn::Peer;
use super::gate::{self, json_error, request_id};
use super::pipeline::{self, Outcome};
use super::state::State;
use crate::clock::unix_now;
use crate::protocol::{self, WireKey};

/// The body of every 403: identical whatever the real reason.
pub(super) const FORBIDDEN_MESSAGE: &str =
    "request denied; the server log has the reason under this request's X-Request-Id";

use warp::Reply as _;

/// The v2 routes and the health endpoints. Rejections are left to
/// [`rejection`], which start-up applies after every protocol's routes.
pub(super) fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let key = warp::path!("v1" / "key")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            let body = WireKey {
                version: protocol::VERSION,
                algorithm: "RSA-OAEP-SHA256".into(),
                public_key: state.keys.current.public_pem().to_owned(),
                fingerprint: state.keys.current.fingerprint().to_owned(),
                instance: Some(protocol::encode_instance(&state.keys.instance)),
                reply_keys: super::state::reply_keys(),
                next: state.keys.next.as_ref().map(|k| protocol::WireNextKey {
                    public_key: k.public_pem().to_owned(),
                    fingerprint: k.fingerprint().to_owned(),
                    signature: state.keys.next_signature.clone(),
                }),
                signature: Some(state.keys.signature.clone()),
            };
            warp::reply::json(&body).into_response()
        });
    let limit = state.max_request_bytes;
    let secrets = warp::path!("v1" / "secrets")
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::ext::get::<Peer>())
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .then(handle_secrets);
    // Health and metrics: only from `health_networks` (default loopback).
    let observer = with_state
        .clone()
        .and(warp::ext::get::<Peer>())
        .and_then(|state: Arc<State>, peer: Peer| async move {
            if state.runtime.load().may_see_health(peer.0.ip()) {
                Ok(state)
            } else {
                tracing::debug!(peer = %peer.0, "health or metrics request from outside health_networks");
                Err(warp::reject::custom(NotAnObserver))
            }
        });
    let health = warp::path!("healthz")
        .and(warp::get())
        .and(observer.clone())
        .map(|_: Arc<State>| {
            warp::reply::json(&serde_json::json!({"status": "ok"})).into_response()
        });
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(observer.clone())
        .map(|state: Arc<State>| {
            let readiness = state.update_gauges();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&readiness), status).into_response()
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(observer)
        .map(|state: Arc<State>| {
            state.update_gauges();
            let mut r = Response::new(state.metrics.encode().into());
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        });
    key.or(secrets)
        .unify()
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .or(metrics)
        .unify()
}

/// A health or metrics request from outside `health_networks`.
#[derive(Debug)]
struct NotAnObserver;
impl warp::reject::Reject for NotAnObserver {}

/// The answer to a request no route took (v2's JSON error shape).
pub(super) async fn rejection(err: warp::Rejection) -> Result<Response, Infallible> {
    let (status, code, message) = if err.find::<NotAnObserver>().is_some() {
        (
            StatusCode::FORBIDDEN,
            "forbidden",
            "the health and metrics endpoints answer only from health_networks (default: loopback)",
        )
    } else if err.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; locket serves GET /v1/key, POST /v1/secrets, GET /healthz, /readyz and /metrics",
        )
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body is larger than the server's max_request_bytes",
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header",
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET /v1/key or POST /v1/secrets",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be read",
        )
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(
            status = 413,
            "request denied: body larger than max_request_bytes"
        );
    }
    Ok(json_error(status, code, message))
}

async fn handle_secrets(state: Arc<State>, peer: Peer, body: bytes::Bytes) -> Response {
    let id = request_id();
    let ip = peer.0.ip().to_canonical();
    let started = std::time::Instant::now();
    // The limit slows failures only: a request that a registered client
    // signed, from its address, in time, passes even from a limited source
    // (checking that costs one ed25519 verification, no RSA).
    if let Some(retry) = state.guards.failures.retry_after(ip, unix_now())
        && !pipeline::authenticates(&state, ip, &body)
    {
        return gate::too_many_failures(&state, ip, &id, retry);
    }
    let outcome = pipeline::process(&state, ip, &body).await;
    gate::finish(&state, &outcome, &id, "v2", ip, started);
    let mut response = match outcome {
        Outcome::Ok { answer, .. } => warp::reply::json(&answer).into_response(),
        Outcome::NotFound {
            answer: Some(answer),
            ..
        } => warp::reply::with_status(warp::reply::json(&answer), StatusCode::NOT_FOUND)
            .into_response(),
        Outcome::NotFound { answer: None, .. } => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "a requested name does not exist",
        ),
        Outcome::BadRequest { reason, .. } | Outcome::Undecryptable { reason } => {
            json_error(StatusCode::BAD_REQUEST, "bad_request", &reason)
        }
        Outcome::Denied { .. } | Outcome::Replay { .. } => {
            json_error(StatusCode::FORBIDDEN, "forbidden", FORBIDDEN_MESSAGE)
        }
        Outcome::AnswerTooLarge { .. } => json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answer_too_large",
            "the answer would exceed the server's max_answer_bytes; ask for fewer names per request",
        ),
        Outcome::Busy { .. } => retry_later(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "server is busy; retry shortly",
        )),
        Outcome::Unknowable { .. } => {
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "send a new request (this one was made before the server could remember it)",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
        Outcome::NotReady => retry_later(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server has not loaded its secrets yet; retry shortly",
        )),
        Outcome::Internal { .. } => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn retry_later(mut r: Response) -> Response {
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("5"));
    r
}
