//! Start-up: everything `locket serve` does, as library calls that tests use
//! too (in the manner of mini-redis's `server::run`).
//!
//! [`Server::load`] reads and checks the config (building the registry once),
//! loads or creates the key(s), does the first load of every source and
//! prepares TLS. [`Server::serve`] takes an already-bound listener and a
//! shutdown future: it starts the refresh loop, the SIGHUP reload, the
//! systemd watchdog, tells systemd it is ready, and serves until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use warp::Filter;

use super::state::{Keys, State};
use super::{conn, refresh, routes};
use crate::config::ConfigError;
use crate::config::server::{Checked, ServerConfig};
use crate::keys::{KeyError, ServerKey};
use crate::source::SourceError;
use crate::systemd::{self, NotifyState};
use crate::tls::TlsError;

/// Why the server could not start. [`StartError::exit_code`] maps each to
/// the binary's exit code: 2 for what the operator must fix in the config
/// or key files, 1 for the world (sources, the network).
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "{0}; fix the source and start again (nothing is served without a first good load; start_unready = true listens anyway)"
    )]
    FirstLoad(SourceError),
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("serving on {addr} stopped: {source}; start it again, and report it if it recurs")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Key(_) | StartError::Tls(_) => 2,
            StartError::FirstLoad(_)
            | StartError::Bind { .. }
            | StartError::Signals(_)
            | StartError::Serve { .. } => 1,
        }
    }
}

/// `locket serve`: loads the config at `path`, listens, and serves until
/// SIGTERM or SIGINT, then lets requests in flight finish. The handlers
/// are installed before `serve` says READY=1, so that a signal arriving
/// right after it is never the default "terminate".
///
/// `runtime_dir` (systemd's `RuntimeDirectory=`, or `--runtime-dir`) is
/// where each reload's outcome is published for `locket reload --wait`.
pub async fn run(path: &std::path::Path, runtime_dir: Option<PathBuf>) -> Result<(), StartError> {
    if let Some(warning) = crate::hygiene::no_core_dumps() {
        tracing::warn!("{warning}");
    }
    let mut server = Server::load(path).await?;
    if let Some(dir) = runtime_dir {
        server = server.with_runtime_dir(dir);
    }
    let listener = server.bind().await?;
    let shutdown = shutdown_signal()?;
    server.serve(listener, shutdown).await
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that
/// completes on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
            _ = int.recv() => tracing::info!("interrupted: finishing requests in flight"),
        }
    })
}

/// A server that has loaded everything and is ready to serve.
pub struct Server {
    path: PathBuf,
    state: Arc<State>,
    runtime_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.path)
            .field("fingerprint", &self.state.keys.current.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Everything before listening: reads and checks the config at `path`,
    /// loads (or creates) the server key and the `[v1]` key, prepares TLS and
    /// loads every source once. A failed first load is an error unless
    /// `start_unready = true`, which starts with nothing to serve (503) and
    /// lets the refresh loop retry.
    pub async fn load(path: &Path) -> Result<Self, StartError> {
        let Checked { config, registry } = ServerConfig::load(path)?;
        let key =
            ServerKey::load_or_create_logged(&config.key_file, config.key_bits, "server key")?;
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::acceptor(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let next_key = match &config.next_key_file {
            Some(path) => Some(ServerKey::load_or_create_logged(
                path,
                config.key_bits,
                "next server key",
            )?),
            None => None,
        };
        let v1_key = crate::v1::load_key(&config.v1)?;
        let initial = match &config.sealed_set {
            Some(sealed) => super::sealed_set::restore(sealed, &config.sources)
                .await
                .map(|r| r.sources),
            None => None,
        };
        let (sources, round) = initial.unwrap_or_default().load(&config.sources).await;
        let good = round.errors.is_empty() && round.set.is_some();
        let tls_files = config
            .tls
            .as_ref()
            .and_then(|t| super::refresh::files_digest(&[&t.cert_file, &t.key_file]));
        let keys = Keys::new(key, next_key, v1_key, tls, tls_files)?;
        let state = State::new(keys, registry, &config, sources);
        refresh::log_duplicates(&round.duplicates, true);
        for _ in 0..round.loaded {
            state.metrics.source_load(true);
        }
        match (round.errors.into_iter().next(), round.set) {
            (None, Some(set)) => {
                state.set_loaded(set);
            }
            (Some(e), Some(set)) => {
                // Only a restored sealed set gives every source values
                // while one of them failed: serve it, stale, and say so.
                let oldest = state
                    .secrets
                    .sources_view
                    .load()
                    .oldest_success()
                    .unwrap_or_else(std::time::SystemTime::now);
                tracing::warn!(error = %e, "a source failed at start; serving its values from the sealed set (stale) until it loads");
                state.set_partial(set, oldest, e.summary());
                state.metrics.source_load(false);
            }
            (None, None) => unreachable!("a source without values has failed"),
            (Some(e), _) if e.wait.is_some() => {
                // Exiting would only make systemd start us again, and every
                // start would ask again: a restart loop is how a rate-limited
                // account stays limited. Listen, unready, and wait it out.
                tracing::error!(error = %e, "first load waits for a rate limit or a request budget; listening anyway, answering 503 until a load succeeds");
                state.secrets.health.failure(e.summary());
                state.metrics.source_load(false);
            }
            (Some(e), _) if config.start_unready => {
                tracing::error!(error = %e, "first load failed; listening anyway (start_unready), answering 503 until a load succeeds");
                state.secrets.health.failure(e.summary());
                state.metrics.source_load(false);
            }
            (Some(e), _) => return Err(StartError::FirstLoad(e)),
        }
        if good && let Some(sealed) = &config.sealed_set {
            let held = state.secrets.sources.lock().await;
            super::sealed_set::store(sealed, &held, &state.secrets.sealed).await;
        }
        Ok(Self {
            path: path.to_owned(),
            state: Arc::new(state),
            runtime_dir: None,
        })
    }

    /// Publishes each reload's outcome in `dir` (see `reload_control`).
    pub fn with_runtime_dir(mut self, dir: PathBuf) -> Self {
        self.runtime_dir = Some(dir);
        self
    }

    /// The server key's fingerprint (what clients pin).
    pub fn fingerprint(&self) -> &str {
        self.state.keys.current.fingerprint()
    }

    /// The server's public key, SPKI PEM (what `GET /v1/key` serves).
    pub fn public_key_pem(&self) -> &str {
        self.state.keys.current.public_pem()
    }

    /// Binds the configured `listen` address with a listen queue of
    /// `listen_backlog` (tokio's own bind, like std's, asks for 128).
    pub async fn bind(&self) -> Result<TcpListener, StartError> {
        let config = &self.state.runtime.load().config;
        let (addr, backlog) = (config.listen, config.listen_backlog);
        let bind = || -> std::io::Result<TcpListener> {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog)
        };
        let listener = bind().map_err(|source| StartError::Bind { addr, source })?;
        if let Some(max) = somaxconn()
            && max < backlog
        {
            tracing::warn!(
                listen_backlog = backlog,
                somaxconn = max,
                "the kernel caps the listen queue at net.core.somaxconn = {max}, below listen_backlog = {backlog}; a burst of connections beyond it waits for SYN retries (raise it: sysctl -w net.core.somaxconn={backlog})"
            );
        }
        Ok(listener)
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests
    /// in flight finish. Starts the refresh loop, reloads the config on
    /// SIGHUP, pings systemd's watchdog, and tells systemd it is ready once a
    /// set is loaded (only after every signal handler is in place).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let state = self.state;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: state.runtime.load().config.listen,
            source,
        })?;
        // SIGHUP's default action ends the process: its handler is in place
        // before anything says the server is up.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signals)?;
        // Published before the server says it listens: whoever waits for
        // that line (systemd, a test, `locket reload --wait`) finds it.
        let reloads =
            super::reload_control::Publisher::new(self.runtime_dir.as_deref(), &self.path);
        {
            let rt = state.runtime.load();
            tracing::info!(
                clients = rt.registry.len(),
                secrets = state.secrets.store.snapshot().len(),
                fingerprint = state.keys.current.fingerprint(),
                next_fingerprint = state.keys.next.as_ref().map(|k| k.fingerprint()),
                tls = state.keys.tls.is_some(),
                "locket listening on {addr}"
            );
            if state.keys.tls.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(
                    "serving plain HTTP on non-loopback address {addr}: requests and answers are encrypted end to end, but consider TLS or a private network"
                );
            }
            if rt.config.v1.enable {
                tracing::warn!(path = %rt.config.v1.path, "the original locket protocol (v1) is enabled: it decrypts before it authenticates; turn it off once Go clients have moved to v2");
            }
        }
        let refresh_now = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        tokio::spawn(refresh::refresh_loop(
            Arc::clone(&state),
            Arc::clone(&refresh_now),
            Arc::clone(&stop),
        ));
        tokio::spawn(reload_on_sighup(
            Arc::clone(&state),
            self.path,
            hangup,
            reloads,
        ));
        systemd::spawn_watchdog();
        if state.secrets.health.loaded() {
            systemd::notify(NotifyState::Ready);
        }
        let routes = mount(&state);
        let served = conn::run(listener, state, routes, async move {
            shutdown.await;
            stop.notify_waiters();
            systemd::notify(NotifyState::Stopping);
        })
        .await;
        served.map_err(|source| StartError::Serve { addr, source })?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The kernel's cap on any listen queue (Linux; `None` where unknown).
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every route the server answers: v1 first when `[v1] enable = true` (as
/// configured at start; its path may be `/`), then v2 and the health
/// endpoints; anything else gets v2's JSON rejection.
fn mount(
    state: &Arc<State>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
+ Clone
+ Send
+ Sync
+ 'static {
    crate::v1::routes(Arc::clone(state))
        .or(routes::routes(Arc::clone(state)))
        .unify()
        .recover(routes::rejection)
        .unify()
}

/// SIGHUP: re-read the config; a valid one replaces the running one. Each
/// reload's start and end are published (`reload_control`).
async fn reload_on_sighup(
    state: Arc<State>,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
    reloads: super::reload_control::Publisher,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading {}", path.display());
        let ready = state.secrets.health.loaded();
        reloads.started(ready);
        let result = refresh::reload(&state, &path).await;
        reloads.finished(result.map_err(|e| crate::error_chain(&e)), ready);
    }
}
