//! What the server holds while it runs, grouped by what it is:
//!
//! * [`Keys`]: what the server proves itself with (its RSA key, the next
//!   one during a rotation, the `[v1]` key, TLS, this process's instance).
//! * [`Guards`]: what keeps a request from being answered twice or one host
//!   from starving the others (replay cache, failed-authentication limit,
//!   connection slots).
//! * [`Secrets`]: the secret set being served, the sources it came from and
//!   their health.
//! * [`Runtime`]: everything a config reload replaces at once, swapped
//!   atomically; a request takes one snapshot of it.
//!
//! [`State::new`] builds all of it at once: nothing is assigned after
//! construction, so a reader of a field knows it was set there.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;

use super::{admission, health, metrics, ratelimit, replay};
use crate::config::server::ServerConfig;
use crate::keys::ServerKey;
use crate::locked::LockStatus;
use crate::registry::Registry;
use crate::source::combine::Sources;
use crate::store::{ServedSet, Store};

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

/// The server's keys, fixed for the life of the process.
pub(crate) struct Keys {
    /// The server key: requests are encrypted to it, clients pin it.
    pub current: ServerKey,
    /// The next server key during a rotation (`next_key_file`): announced
    /// by `GET /v1/key`, and requests encrypted to it are opened with it.
    pub next: Option<ServerKey>,
    /// A separate key for the v1 protocol (`[v1] key_file`); else `current`.
    pub v1: Option<ServerKey>,
    /// When set, connections are TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// This process's instance id (`GET /v1/key`'s `instance`): random at
    /// every start, so a bound (version 3) request is answered by this
    /// process only, never by a second server sharing the key or by this
    /// server after a restart, whose replay caches never saw its nonce.
    pub instance: [u8; crate::protocol::INSTANCE_LEN],
    /// A digest of the TLS certificate and key files as loaded, so a
    /// reload can tell that they changed on disk.
    pub tls_files: Option<[u8; 32]>,
    /// `GET /v1/key`'s signatures (base64), by the current key and by the
    /// next one: made once here, since what they cover is fixed for the
    /// life of the process.
    pub signature: String,
    pub next_signature: Option<String>,
}

/// The reply keys this server announces.
pub(crate) fn reply_keys() -> Vec<String> {
    vec![
        crate::protocol::REPLY_KEY_RSA.into(),
        crate::protocol::REPLY_KEY_X25519.into(),
    ]
}

impl Keys {
    /// The keys loaded at start, with a fresh instance id.
    pub(crate) fn new(
        current: ServerKey,
        next: Option<ServerKey>,
        v1: Option<ServerKey>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        tls_files: Option<[u8; 32]>,
    ) -> Result<Self, crate::keys::KeyError> {
        use base64::Engine as _;
        let instance: [u8; crate::protocol::INSTANCE_LEN] =
            crate::crypto::random_bytes().map_err(|e| crate::keys::KeyError::Generate(e.into()))?;
        let signed = crate::protocol::key_response_signed_bytes(
            current.fingerprint(),
            Some(&crate::protocol::encode_instance(&instance)),
            &reply_keys(),
            next.as_ref().map(|k| k.fingerprint()),
        );
        let sign = |key: &ServerKey| {
            key.decrypter()
                .sign_pss_sha256(&signed)
                .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
                .map_err(|e| crate::keys::KeyError::Generate(e.into()))
        };
        let signature = sign(&current)?;
        let next_signature = next.as_ref().map(sign).transpose()?;
        Ok(Self {
            current,
            next,
            v1,
            tls,
            tls_files,
            instance,
            signature,
            next_signature,
        })
    }

    /// The key (current or next) whose fingerprint is `fingerprint`.
    pub(crate) fn by_fingerprint(&self, fingerprint: &str) -> Option<&ServerKey> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .find(|k| k.fingerprint() == fingerprint)
    }

    /// The key v1 requests are encrypted to.
    pub(crate) fn v1(&self) -> &ServerKey {
        self.v1.as_ref().unwrap_or(&self.current)
    }
}

/// What keeps requests from being answered twice, and one host from
/// starving the others.
pub(crate) struct Guards {
    pub replay: Mutex<replay::ReplayCache>,
    /// Sources that failed to authenticate too often.
    pub failures: ratelimit::FailureLimiter,
    /// Every open connection and who gives way when the slots are full
    /// (`max_connections`, `max_connections_per_source`).
    pub admission: Arc<admission::Admission>,
    /// Requests stamped before this (unix seconds) are refused: this
    /// process cannot know whether their nonces were spent (before it
    /// started, or before a reload widened the clock window).
    remembered_since: AtomicI64,
    /// A valid key no client holds: verifications for unknown clients run
    /// against it so they cost the same as for known ones.
    pub dummy_key: VerifyingKey,
}

impl Guards {
    fn new(config: &ServerConfig) -> Self {
        Self {
            replay: Mutex::new(replay::ReplayCache::new(config.replay_cache_size)),
            failures: ratelimit::FailureLimiter::new(
                config.max_failed_auth,
                config.failed_auth_window.as_secs(),
                100_000,
            ),
            admission: Arc::default(),
            remembered_since: AtomicI64::new(crate::clock::unix_now()),
            dummy_key: crate::keys::ClientKey::from_seed(&[0x42; 32]).verifying_key(),
        }
    }
}

/// The secret set being served, the sources it came from, and its health.
pub(crate) struct Secrets {
    pub store: Store,
    pub health: health::Health,
    /// Each source's last load and values; held while sources load, so a
    /// refresh and a reload never load at once.
    pub sources: tokio::sync::Mutex<Sources>,
    /// The same, for `/readyz` and `/metrics`, which never wait for a load.
    pub sources_view: ArcSwap<Sources>,
    /// What the sealed last-good set (`[sealed_set]`) holds now.
    pub sealed: Mutex<super::sealed_set::SealMark>,
}

/// Everything a request handler needs. Shared behind an `Arc`.
pub(crate) struct State {
    pub keys: Keys,
    pub guards: Guards,
    pub secrets: Secrets,
    pub runtime: ArcSwap<Runtime>,
    pub metrics: metrics::Metrics,
    /// Fixed at start (it shapes the HTTP filter); a reload cannot change it.
    pub max_request_bytes: u64,
    /// Key and TLS files that changed on disk since the start (found at
    /// the last reload): the running server keeps what it loaded, and says
    /// a restart is needed (`/readyz` `restart_needed`).
    pub restart_needed: Mutex<Vec<String>>,
}

impl State {
    /// State with the sources as first loaded and no secret set yet
    /// (answering 503 until [`State::set_loaded`]).
    pub(crate) fn new(
        keys: Keys,
        registry: Registry,
        config: &ServerConfig,
        sources: Sources,
    ) -> Self {
        Self {
            keys,
            guards: Guards::new(config),
            secrets: Secrets {
                store: Store::new(ServedSet::new(Default::default())),
                health: health::Health::default(),
                sources_view: ArcSwap::from_pointee(sources.clone()),
                sources: tokio::sync::Mutex::new(sources),
                sealed: Mutex::default(),
            },
            runtime: ArcSwap::from_pointee(Runtime::new(config.clone(), registry)),
            metrics: metrics::Metrics::default(),
            max_request_bytes: config.max_request_bytes,
            restart_needed: Mutex::default(),
        }
    }

    /// Serves `set` from now on: the store, the health record and the
    /// metrics change together, here only. Returns whether this was the
    /// first set ever loaded (the server just turned ready).
    pub(crate) fn set_loaded(&self, set: ServedSet) -> bool {
        let first = self.secrets.health.success(set.loaded_at());
        self.secrets.store.replace(set);
        first
    }

    /// Serves a set in which some sources failed but kept their earlier
    /// values: stale, as old as the oldest values in it.
    /// Returns whether this was the first set ever served.
    pub(crate) fn set_partial(&self, set: ServedSet, oldest: SystemTime, error: String) -> bool {
        let first = self.secrets.health.partial(oldest, error);
        self.secrets.store.replace(set);
        first
    }

    /// Keeps `sources` (after a round of loading) for the next round and
    /// for readers.
    pub(crate) fn keep_sources(&self, held: &mut Sources, next: Sources) {
        self.secrets.sources_view.store(Arc::new(next.clone()));
        *held = next;
    }

    /// Applies the limits a reload may change while serving: the
    /// failed-authentication limit and window. `max_connections`,
    /// `max_connections_per_source` and `request_timeout` are read per
    /// connection; a lower connection cap holds as connections are admitted
    /// (see `admission`).
    pub(crate) fn apply_limits(&self, config: &ServerConfig) {
        self.guards
            .failures
            .set_limits(config.max_failed_auth, config.failed_auth_window.as_secs());
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
        if let Ok(mut cache) = self.guards.replay.lock() {
            cache.extend(new - old);
        }
        self.guards
            .remembered_since
            .fetch_max(now.saturating_sub(old), Ordering::SeqCst);
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
        if timestamp < self.guards.remembered_since.load(Ordering::SeqCst) {
            return replay::Seen::Unknowable;
        }
        let skew = runtime.config.clock_skew.as_secs() as i64;
        let clients = runtime.registry.len();
        self.guards
            .replay
            .lock()
            .map(|mut c| {
                c.check_and_insert(client, nonce, timestamp.saturating_add(skew), now, clients)
            })
            .unwrap_or(replay::Seen::Full)
    }

    /// Updates the gauges that describe the current state (before a scrape).
    pub(crate) fn update_gauges(&self) -> health::Readiness {
        let rt = self.runtime.load();
        let mut readiness = self.secrets.health.readiness(rt.config.effective_max_age());
        let set = self.secrets.store.snapshot();
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
        readiness.restart_needed = self
            .restart_needed
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        readiness.sources = self.secrets.sources_view.load().health();
        readiness.origin = match readiness
            .sources
            .iter()
            .find(|s| s.origin.starts_with("sealed"))
        {
            Some(s) => s.origin.clone(),
            None => "sources".into(),
        };
        // A source a reload removed leaves no gauges behind.
        self.metrics.clear_sources();
        for source in &readiness.sources {
            self.metrics.source(source);
        }
        readiness
    }
}
