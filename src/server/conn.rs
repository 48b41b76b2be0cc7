//! The accept loop: connection slots, the per-source cap, TLS, the
//! header and request timeouts, and graceful shutdown. It serves whatever
//! routes start-up gives it (v2 and, when enabled, v1), so it knows no
//! protocol.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use warp::Filter;
use warp::reply::Response;

use super::state::State;

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The peer address of a connection, attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves `state` on `listener` until `shutdown` completes, then lets
/// requests in flight finish (for up to 10 seconds).
pub(crate) async fn run<F>(
    listener: TcpListener,
    state: Arc<State>,
    routes: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let builder = builder.http1_only();
    tokio::pin!(shutdown);
    let slots = Arc::clone(&state.guards.connection_slots);
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's
        // listen queue until one closes.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
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
        // Read per connection: a reload may change them.
        let (request_timeout, per_source_limit) = {
            let rt = state.runtime.load();
            (
                rt.config.request_timeout,
                rt.config.max_connections_per_source,
            )
        };
        // One host cannot hold every slot: past its share it is closed at
        // once, and its slot goes back to everyone else.
        let Some(source_slot) = state
            .guards
            .per_source
            .try_open(addr.ip(), per_source_limit)
        else {
            tracing::debug!(peer = %addr, "connection closed: its source has max_connections_per_source open");
            state.metrics.request("too_many_connections", 0.0);
            continue;
        };
        let service = warp::service(routes.clone());
        let timeout_state = Arc::clone(&state);
        // Whether a whole request head arrived on this connection: a
        // keep-alive connection that served requests and then sat idle is
        // not a failed authentication when the header timeout closes it.
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served_in_service = Arc::clone(&served);
        let hyper_service = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                served_in_service.store(true, std::sync::atomic::Ordering::SeqCst);
                let timeout_state = Arc::clone(&timeout_state);
                req.extensions_mut().insert(Peer(addr));
                let mut service = service.clone();
                let call = tower_service::Service::call(&mut service, req);
                async move {
                    // The whole request, body included, within request_timeout.
                    match tokio::time::timeout(request_timeout, call).await {
                        Ok(answer) => answer,
                        Err(_) => {
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
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = state.keys.tls.clone();
        let conn_state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let _source_slot = source_slot;
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
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
            let result = watcher
                .watch(
                    builder
                        .serve_connection(TokioIo::new(io), hyper_service)
                        .into_owned(),
                )
                .await;
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
