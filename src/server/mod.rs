//! The locket server: state, HTTP routes and the accept loop.
//!
//! [`Server::load`] does everything before listening and [`Server::serve`]
//! takes an already-bound listener and a shutdown future, so tests bind
//! port 0 and the binary only wires flags to it. What a SIGHUP can
//! change (registry, limits, sources) lives in one `Runtime` swapped
//! atomically; requests take one snapshot of it and of the secret set.

pub(crate) mod health;
pub(crate) mod metrics;
mod outcome;
mod pipeline;
pub(crate) mod ratelimit;
pub(crate) mod refresh;
pub(crate) mod replay;
mod routes;
mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::server::ServerConfig;
use crate::keys::ServerKey;
use crate::locked::LockStatus;
use crate::registry::Registry;
use crate::store::{SecretSet, Store};

pub(crate) use outcome::{Outcome, request_id};
pub(crate) use routes::rate_limited;

pub use startup::{Server, StartError, load_key};

/// Everything a config reload replaces at once.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub config: ServerConfig,
    pub registry: Registry,
    /// `health_networks`, parsed.
    pub health_networks: Vec<ipnet::IpNet>,
}

impl Runtime {
    pub(crate) fn new(config: ServerConfig, registry: Registry) -> Self {
        // Checked when the config was loaded.
        let health_networks = config
            .health_networks
            .iter()
            .filter_map(|n| crate::registry::parse_network(n))
            .collect();
        Self {
            config,
            registry,
            health_networks,
        }
    }

    /// Whether `ip` may call the health and metrics endpoints.
    pub(crate) fn may_see_health(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.health_networks.iter().any(|n| n.contains(&ip))
    }
}

/// Everything a request handler needs. Shared behind an `Arc`.
pub(crate) struct State {
    pub key: ServerKey,
    pub runtime: ArcSwap<Runtime>,
    pub store: Store,
    pub replay: Mutex<replay::ReplayCache>,
    pub health: health::Health,
    pub metrics: metrics::Metrics,
    /// Fixed at start (it shapes the HTTP filter); a reload cannot change it.
    pub max_request_bytes: u64,
    /// Sources that failed to authenticate too often.
    pub failures: ratelimit::FailureLimiter,
    /// One permit per connection served at once (`max_connections`).
    connection_slots: Arc<tokio::sync::Semaphore>,
    /// The number of permits `connection_slots` stands for now.
    max_connections: std::sync::atomic::AtomicUsize,
    /// Open connections per source (`max_connections_per_source`).
    per_source: Arc<ratelimit::ConnectionCounter>,
    /// Requests stamped before this (unix seconds) are refused: this
    /// process cannot know whether their nonces were spent (before it
    /// started, or before a reload widened the clock window).
    remembered_since: std::sync::atomic::AtomicI64,
    /// This process's instance id (`GET /v1/key`'s `instance`): random at
    /// every start, so a bound (version 3) request is answered by this
    /// process only, never by a second server sharing the key or by this
    /// server after a restart, whose replay caches never saw its nonce.
    pub instance: [u8; crate::protocol::INSTANCE_LEN],
    /// Each source's last load and values; held while sources load, so a
    /// refresh and a reload never load at once.
    pub(crate) sources: tokio::sync::Mutex<crate::source::combine::Sources>,
    /// The same, for `/readyz` and `/metrics`, which never wait for a load.
    pub(crate) sources_view: ArcSwap<crate::source::combine::Sources>,
    /// A valid key no client holds: verifications for unknown clients run
    /// against it so they cost the same as for known ones.
    dummy_key: VerifyingKey,
    /// When set, connections are TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A separate key for the v1 protocol (`[v1] key_file`); else `key`.
    pub v1_key: Option<ServerKey>,
    /// The next server key during a rotation (`next_key_file`): announced
    /// by `GET /v1/key`, and requests encrypted to it are opened with it.
    pub next_key: Option<ServerKey>,
}

impl State {
    /// State with no secret set yet (answering 503 until
    /// [`State::set_loaded`]).
    pub(crate) fn new(key: ServerKey, registry: Registry, config: &ServerConfig) -> Self {
        Self {
            key,
            runtime: ArcSwap::from_pointee(Runtime::new(config.clone(), registry)),
            store: Store::new(SecretSet::new(Default::default())),
            replay: Mutex::new(replay::ReplayCache::new(config.replay_cache_size)),
            health: health::Health::default(),
            metrics: metrics::Metrics::default(),
            max_request_bytes: config.max_request_bytes,
            failures: ratelimit::FailureLimiter::new(
                config.max_failed_auth,
                config.failed_auth_window.as_secs(),
                100_000,
            ),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            max_connections: std::sync::atomic::AtomicUsize::new(config.max_connections),
            per_source: Arc::default(),
            remembered_since: std::sync::atomic::AtomicI64::new(crate::clock::unix_now()),
            sources: tokio::sync::Mutex::default(),
            sources_view: ArcSwap::default(),
            instance: crate::crypto::random_bytes()
                .expect("the OS random number generator failed at start"),
            dummy_key: crate::keys::ClientKey::from_seed(&[0x42; 32]).verifying_key(),
            tls: None,
            v1_key: None,
            next_key: None,
        }
    }

    /// The key (current or next) whose fingerprint is `fingerprint`.
    pub(crate) fn key_for(&self, fingerprint: &str) -> Option<&ServerKey> {
        std::iter::once(&self.key)
            .chain(self.next_key.as_ref())
            .find(|k| k.fingerprint() == fingerprint)
    }

    /// Serves `set` from now on: the store, the health record and the
    /// metrics change together, here only. Returns whether this was the
    /// first set ever loaded (the server just turned ready).
    pub(crate) fn set_loaded(&self, set: SecretSet) -> bool {
        let first = self.health.success(set.loaded_at());
        self.store.replace(set);
        first
    }

    /// Serves a set in which some sources failed but kept their earlier
    /// values: stale, as old as the oldest values in it.
    /// Returns whether this was the first set ever served.
    pub(crate) fn set_partial(
        &self,
        set: SecretSet,
        oldest: std::time::SystemTime,
        error: String,
    ) -> bool {
        let first = self.health.partial(oldest, error);
        self.store.replace(set);
        first
    }

    /// Keeps `sources` (after a round of loading) for the next round and
    /// for readers.
    pub(crate) fn keep_sources(
        &self,
        held: &mut crate::source::combine::Sources,
        next: crate::source::combine::Sources,
    ) {
        self.sources_view.store(Arc::new(next.clone()));
        *held = next;
    }

    /// Applies the limits a reload may change while serving: the
    /// failed-authentication limit and window, and `max_connections`
    /// (`request_timeout` is read per connection). A lower connection cap
    /// takes effect as connections end: the surplus permits are taken back
    /// as they come free.
    pub(crate) fn apply_limits(&self, config: &ServerConfig) {
        self.failures
            .set_limits(config.max_failed_auth, config.failed_auth_window.as_secs());
        let old = self
            .max_connections
            .swap(config.max_connections, std::sync::atomic::Ordering::SeqCst);
        let new = config.max_connections;
        if new > old {
            self.connection_slots.add_permits(new - old);
        } else if new < old {
            let surplus = u32::try_from(old - new).unwrap_or(u32::MAX);
            // Free permits are taken back at once (so the new cap holds when
            // the reload is reported); those in use, as their connections end.
            match Arc::clone(&self.connection_slots).try_acquire_many_owned(surplus) {
                Ok(permits) => permits.forget(),
                Err(_) => {
                    let slots = Arc::clone(&self.connection_slots);
                    tokio::spawn(async move {
                        if let Ok(permits) = slots.acquire_many_owned(surplus).await {
                            permits.forget();
                        }
                    });
                }
            }
        }
    }

    /// A reload changes the clock window from `old` to `new` seconds at
    /// `now`. A wider window must not reopen a request whose nonce was
    /// remembered only for the narrower one: remembered nonces are kept
    /// longer by the difference, and requests stamped before `now - old`
    /// (whose nonces may already be forgotten) are refused from now on.
    pub(crate) fn widen_clock_window(&self, old: i64, new: i64, now: i64) {
        if new <= old {
            return;
        }
        if let Ok(mut cache) = self.replay.lock() {
            cache.extend(new - old);
        }
        self.remembered_since
            .fetch_max(now.saturating_sub(old), std::sync::atomic::Ordering::SeqCst);
    }

    /// Spends `nonce` for `client`, for both protocols: `New` the first time
    /// within its window (`timestamp` + the clock skew), then `Replay`.
    /// Each client's nonces are its own, with a guaranteed share of the
    /// cache, so one client cannot spend another's or crowd it out.
    pub(crate) fn spend_nonce(
        &self,
        runtime: &Runtime,
        client: &str,
        nonce: [u8; 16],
        timestamp: i64,
        now: i64,
    ) -> replay::Seen {
        if timestamp
            < self
                .remembered_since
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return replay::Seen::Unknowable;
        }
        let skew = runtime.config.clock_skew.as_secs() as i64;
        let clients = runtime.registry.len();
        self.replay
            .lock()
            .map(|mut c| {
                c.check_and_insert(client, nonce, timestamp.saturating_add(skew), now, clients)
            })
            .unwrap_or(replay::Seen::Full)
    }

    /// Updates the gauges that describe the current state (before a scrape).
    pub(crate) fn update_gauges(&self) -> health::Readiness {
        let rt = self.runtime.load();
        let mut readiness = self.health.readiness(rt.config.effective_max_age());
        let set = self.store.snapshot();
        readiness.secret_memory = match set.memory() {
            LockStatus::Locked => "locked".into(),
            LockStatus::Empty => "empty".into(),
            LockStatus::Unlocked(why) => format!("unlocked: {why}"),
        };
        self.metrics
            .memory_locked
            .set(matches!(set.memory(), LockStatus::Locked) as i64);
        self.metrics.secrets.set(set.len() as i64);
        self.metrics.clients.set(rt.registry.len() as i64);
        self.metrics
            .age_seconds
            .set(readiness.age_seconds.map(|a| a as f64).unwrap_or(f64::NAN));
        self.metrics.stale.set(readiness.stale as i64);
        self.metrics.ready.set(readiness.ready as i64);
        readiness.sources = self.sources_view.load().health();
        // A source a reload removed leaves no gauges behind.
        self.metrics.clear_sources();
        for source in &readiness.sources {
            self.metrics.source(source);
        }
        readiness
    }
}

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The peer address of a connection, attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves `state` on `listener` until `shutdown` completes, then lets
/// requests in flight finish (for up to 10 seconds).
pub(crate) async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let routes = routes::routes(Arc::clone(&state));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let builder = builder.http1_only();
    tokio::pin!(shutdown);
    let slots = Arc::clone(&state.connection_slots);
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
        let Some(source_slot) = state.per_source.try_open(addr.ip(), per_source_limit) else {
            tracing::debug!(peer = %addr, "connection closed: its source has max_connections_per_source open");
            state.metrics.request("too_many_connections", 0.0);
            continue;
        };
        let service = warp::service(routes.clone());
        let timeout_state = Arc::clone(&state);
        let hyper_service = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
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
        let tls = state.tls.clone();
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
                if timed_out {
                    conn_state
                        .failures
                        .failure(addr.ip(), crate::clock::unix_now());
                }
                tracing::debug!(peer = %addr, error = %e, timed_out, "connection ended with an error");
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
