//! The accept loop: admission to the connection slots, TLS, the
//! header and request timeouts, and graceful shutdown. It serves whatever
//! routes start-up gives it (v2 and, when enabled, v1), so it knows no
//! protocol.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use warp::Filter;
use warp::reply::Response;

use super::admission::Admitted;
use super::state::State;

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The peer address of a connection, attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// All unfinished request heads together may hold this much memory.
const HEADS_BUDGET: usize = 32 * 1024 * 1024;

/// The read buffer of one connection when `max_connections` may be open:
/// the heads budget shared among them, within hyper's smallest buffer
/// (8 KiB) and 64 KiB: 8 KiB at the default 4,096 connections, as nginx's
/// default for a header line. A request head larger than it gets 431. Every route
/// keeps its data in the body (bounded by `max_request_bytes`), so a
/// genuine head is a few hundred bytes.
pub(crate) fn head_buffer(max_connections: usize) -> usize {
    (HEADS_BUDGET / max_connections.max(1)).clamp(8 * 1024, 64 * 1024)
}

/// The HTTP/1 server settings for one connection.
fn http(max_buf_size: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(max_buf_size);
    builder.http1_only()
}

/// Serves `state` on `listener` until `shutdown` completes, then lets
/// requests in flight finish (for up to 10 seconds).
///
/// One thread per core, each with a current-thread runtime accepting from
/// the same socket: a request is read, answered and written by the thread
/// that accepted it, with no hand-over between threads. On a multi-thread
/// runtime the hand-overs cost a sleep and a wake-up per request, about a
/// tenth of a `[v1]` request's CPU at one client at a time
/// (docs/performance.md). A thread that ends (an error, or a panic) ends
/// the server: it never serves on fewer threads unnoticed.
pub(crate) async fn run<F>(
    listener: TcpListener,
    state: Arc<State>,
    routes: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let listener = listener.into_std()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let (state, routes, mut stopped) = (Arc::clone(&state), routes.clone(), stopped.clone());
        let mut ended = Ended(Some(ended.clone()));
        std::thread::Builder::new()
            .name(format!("locket-conn-{i}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            let stop = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            serve_thread(listener, state, routes, stop).await
                        })
                    });
                ended.report(served);
            })?;
    }
    drop((listener, ended));
    let early = tokio::select! {
        () = shutdown => None,
        served = ends.recv() => served,
    };
    let _ = stop.send(true);
    let mut result = early.unwrap_or(Ok(()));
    while let Some(served) = ends.recv().await {
        result = result.and(served);
    }
    result
}

/// A connection thread's end, reported to `run`: its result, or an error
/// when the thread unwinds from a panic before it could report.
struct Ended(Option<tokio::sync::mpsc::UnboundedSender<std::io::Result<()>>>);

impl Ended {
    fn report(&mut self, served: std::io::Result<()>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(served);
        }
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.report(Err(std::io::Error::other(
            "a connection thread panicked (see the log above)",
        )));
    }
}

/// One connection thread's accept loop (see [`run`]).
async fn serve_thread<F>(
    listener: TcpListener,
    state: Arc<State>,
    routes: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let admission = Arc::clone(&state.guards.admission);
    'accept: loop {
        // At the cap, with no connection that can give way, stop accepting:
        // new connections wait in the kernel's listen queue.
        let limit = state.runtime.load().config.max_connections;
        tokio::select! {
            () = admission.room(limit) => {}
            () = &mut shutdown => break,
        }
        // Unconstrained by tokio's task budget: this thread also runs the
        // connections it accepted, and a budgeted accept loop would yield
        // after a few accepts and wait for all of them, leaving a burst's
        // connections in the kernel's queue until it overflows (SYN
        // retries, a second each). Draining is bounded by the queue and by
        // max_connections.
        let (stream, addr) = tokio::select! {
            accepted = tokio::task::unconstrained(listener.accept()) => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Read per connection, once it is here: a reload may change them.
        let (request_timeout, limit, per_source_limit) = {
            let rt = state.runtime.load();
            (
                rt.config.request_timeout,
                rt.config.max_connections,
                rt.config.max_connections_per_source,
            )
        };
        // One host cannot hold every slot, and nobody can keep a client
        // out by holding slots without sending requests (`admission`).
        let slot = loop {
            match admission.admit(addr.ip(), limit, per_source_limit, Instant::now()) {
                Admitted::Yes { slot, shed } => {
                    if shed > 0 {
                        tracing::debug!(peer = %addr, shed, "closed connections that had no request in progress to make room");
                        state.metrics.connections_shed.inc_by(shed as u64);
                    }
                    break Some(Arc::new(slot));
                }
                Admitted::SourceFull => {
                    tracing::debug!(peer = %addr, "connection closed: its source's every slot is held by requests in progress or verified clients");
                    state.metrics.request("too_many_connections", 0.0);
                    break None;
                }
                // Nothing this one may push out (the slots are held by
                // verified clients, young requests, or sources holding no
                // more than its own): it waits, as it would have in the
                // listen queue, and tries again when a connection closes.
                Admitted::Full => tokio::select! {
                    () = admission.changed() => {}
                    () = &mut shutdown => break 'accept,
                },
            }
        };
        let Some(slot) = slot else {
            continue;
        };
        let service = warp::service(routes.clone());
        let timeout_state = Arc::clone(&state);
        // Whether a whole request head arrived on this connection: a
        // keep-alive connection that served requests and then sat idle is
        // not a failed authentication when the header timeout closes it.
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served_in_service = Arc::clone(&served);
        let slot_in_service = Arc::clone(&slot);
        let hyper_service = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                served_in_service.store(true, std::sync::atomic::Ordering::SeqCst);
                slot_in_service.request_started();
                let slot = Arc::clone(&slot_in_service);
                let post = req.method() == hyper::Method::POST;
                let timeout_state = Arc::clone(&timeout_state);
                req.extensions_mut().insert(Peer(addr));
                let mut service = service.clone();
                let call = tower_service::Service::call(&mut service, req);
                async move {
                    // The whole request, body included, within request_timeout.
                    match tokio::time::timeout(request_timeout, call).await {
                        Ok(answer) => {
                            // Every POST route is a secrets route: a 2xx there
                            // means a registered client's signature held.
                            let verified =
                                post && answer.as_ref().is_ok_and(|r| r.status().is_success());
                            slot.request_ended(verified);
                            answer
                        }
                        Err(_) => {
                            slot.request_ended(false);
                            tracing::warn!(peer = %addr, "request took longer than request_timeout; answering 408");
                            // A sender too slow to finish counts as a failed
                            // authentication: holding connections open is
                            // how one host starves the others.
                            timeout_state
                                .guards
                                .failures
                                .failure(addr.ip(), crate::clock::unix_now());
                            let mut r = warp::reply::Response::new(
                                "{\"error\":\"timeout\",\"message\":\"the request took too long to arrive\"}".into(),
                            );
                            *r.status_mut() = warp::http::StatusCode::REQUEST_TIMEOUT;
                            r.headers_mut().insert(
                                "connection",
                                warp::http::HeaderValue::from_static("close"),
                            );
                            Ok(r)
                        }
                    }
                }
            },
        );
        let builder = http(head_buffer(limit));
        let watcher = graceful.watcher();
        let tls = state.keys.tls.clone();
        let conn_state = Arc::clone(&state);
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    let handshake = tokio::select! {
                        done = handshake => done,
                        () = slot.shed() => {
                            tracing::debug!(peer = %addr, "closed during the TLS handshake to make room");
                            return;
                        }
                    };
                    match handshake {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let serving = watcher.watch(
                builder
                    .serve_connection(TokioIo::new(io), hyper_service)
                    .into_owned(),
            );
            // Dropping the connection closes it.
            let result = tokio::select! {
                result = serving => result,
                () = slot.shed() => {
                    tracing::debug!(peer = %addr, "closed to make room for a newer connection");
                    return;
                }
            };
            if let Err(e) = result {
                // A request head that never finished within the header
                // timeout counts as a failed authentication, like a body
                // that never finished (408 above).
                let timed_out = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout);
                let idle = served.load(std::sync::atomic::Ordering::SeqCst);
                if timed_out && !idle {
                    conn_state
                        .guards
                        .failures
                        .failure(addr.ip(), crate::clock::unix_now());
                }
                tracing::debug!(peer = %addr, error = %e, timed_out, idle, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("requests still in flight after 10s; stopping anyway");
        }
    }
    Ok(())
}
