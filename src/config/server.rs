//! The server's configuration (`locket serve --config FILE`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::keys::{DEFAULT_SERVER_KEY_BITS, MAX_RSA_BITS, MIN_RSA_BITS};
use crate::registry::{ClientEntry, Registry};
use crate::source::SourceConfig;

/// Top-level keys that `LOCKET_<KEY>` environment variables may set.
pub const ENV_KEYS: &[&str] = &[
    "refresh_interval",
    "max_age",
    "start_unready",
    "listen",
    "key_file",
    "key_bits",
    "clock_skew",
    "max_request_bytes",
    "max_answer_bytes",
    "replay_cache_size",
    "request_timeout",
    "max_connections",
    "max_connections_per_source",
    "max_failed_auth",
    "failed_auth_window",
    "require_bound_requests",
];

/// `server.toml`. Unknown keys are errors, so a typo is never silently
/// ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// RSA private key file; created (mode 0600) on first start if missing.
    pub key_file: PathBuf,
    /// The next server key, during a rotation: created like `key_file` if
    /// missing, announced beside the current key, and requests encrypted to
    /// either are opened. Promote it by swapping the two files' roles.
    pub next_key_file: Option<PathBuf>,
    /// Size of a newly created server key.
    pub key_bits: usize,
    /// Largest accepted difference between a request's timestamp and the
    /// server clock.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Largest accepted request body (413 beyond).
    pub max_request_bytes: u64,
    /// Largest answer plaintext (names + values) per request.
    pub max_answer_bytes: usize,
    /// Most nonces remembered at once (bounds replay-cache memory).
    pub replay_cache_size: usize,
    /// Longest a request may take, body included (a slow sender gets 408).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Length of the listen queue: connections the kernel accepts before
    /// the server takes them. A fleet restarting at once opens thousands
    /// together; a short queue makes the rest retry their SYN after a
    /// second or more. Capped by the kernel's `net.core.somaxconn` (the
    /// server warns when it is).
    pub listen_backlog: u32,
    /// Most connections open at once from one source (IPv4 address or IPv6
    /// /64); more are closed at once, so one host cannot take every slot.
    /// Raise it for many clients behind one NAT address.
    pub max_connections_per_source: usize,
    /// Failed authentications from one source (IPv4 address or IPv6 /64)
    /// within `failed_auth_window` before it gets 429; 0 turns it off.
    pub max_failed_auth: u32,
    #[serde(with = "humantime_serde")]
    pub failed_auth_window: Duration,
    /// Refuse requests that are not bound to this server process (protocol
    /// version 2, from clients before version 3 existed). Bound requests
    /// are answered once across restarts and across servers sharing a key;
    /// set this once every client sends them.
    pub require_bound_requests: bool,
    /// Reload the sources this often (with up to 10% jitter); `0s` never.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// `/readyz` fails when the set is older than this (default: three
    /// refresh intervals, at least 1m; no limit when refresh is off).
    #[serde(with = "humantime_serde", default)]
    pub max_age: Option<Duration>,
    /// Listen even when the first load fails, answering 503 and reporting
    /// not ready until a load succeeds (default: refuse to start).
    pub start_unready: bool,
    /// Addresses that may call `/healthz`, `/readyz` and `/metrics` (CIDRs
    /// or single addresses); others get 403. Default: loopback only.
    pub health_networks: Vec<String>,
    /// Where secrets come from, in order; later sources win on a name clash.
    pub sources: Vec<SourceConfig>,
    /// Registered clients by name.
    pub clients: BTreeMap<String, ClientEntry>,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// The original locket's protocol, for existing Go clients (off by default).
    pub v1: super::v1::Config,
    /// Keep the last good set sealed to this host (off by default).
    pub sealed_set: Option<SealedSetConfig>,
}

/// `[sealed_set]`: after each good load the whole set, with what each
/// source remembers of it (1Password item versions), is sealed to this
/// host with `systemd-creds`; a restart starts from it at once and then
/// reads only what changed, and a start while the sources cannot be read
/// serves it, stale, if it is at most `max_age` old.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealedSetConfig {
    /// The sealed copy (created mode 0600; its folder 0700).
    pub path: PathBuf,
    /// The oldest copy a start may serve.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// `systemd-creds --with-key=`: auto (TPM2 where present, else the
    /// host key), host, tpm2 or host+tpm2.
    #[serde(default = "auto")]
    pub key: String,
    /// The `systemd-creds` program.
    #[serde(default = "systemd_creds")]
    pub systemd_creds: PathBuf,
    /// Seal with this key instead of running `systemd-creds`: for a server
    /// without root, a key systemd decrypts for it
    /// (`LoadCredentialEncrypted=`; make one with `locket seal-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn auto() -> String {
    "auto".into()
}

fn systemd_creds() -> PathBuf {
    "systemd-creds".into()
}

/// `[tls]`: certificate chain and private key, PEM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7410)),
            key_file: PathBuf::from("server-key.pem"),
            next_key_file: None,
            key_bits: DEFAULT_SERVER_KEY_BITS,
            clock_skew: Duration::from_secs(30),
            max_request_bytes: 64 * 1024,
            max_answer_bytes: 4 * 1024 * 1024,
            replay_cache_size: 100_000,
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            listen_backlog: 4096,
            max_connections_per_source: 256,
            max_failed_auth: 30,
            failed_auth_window: Duration::from_secs(60),
            require_bound_requests: false,
            refresh_interval: Duration::from_secs(300),
            max_age: None,
            start_unready: false,
            sources: Vec::new(),
            clients: BTreeMap::new(),
            tls: None,
            v1: super::v1::Config::default(),
            sealed_set: None,
            health_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// A configuration that passed every check that needs no I/O, with the
/// registry it describes. Checking builds the registry, so it is kept here
/// rather than built a second time by whoever loaded the file.
#[derive(Debug)]
pub struct Checked {
    /// The settings, as read.
    pub config: ServerConfig,
    /// The clients, their keys, networks and grants, checked.
    pub registry: Registry,
}

impl ServerConfig {
    /// The readiness age limit in force.
    pub fn effective_max_age(&self) -> Duration {
        match self.max_age {
            Some(age) => age,
            None if self.refresh_interval.is_zero() => Duration::MAX,
            None => (self.refresh_interval * 3).max(Duration::from_secs(60)),
        }
    }

    /// Reads `path`, layers the environment over it, resolves relative paths
    /// against the file's folder and validates everything that needs no I/O.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        super::check_readable(path)?;
        let text = super::read_toml(path)?;
        Self::from_file_text(path, &text)
    }

    /// [`ServerConfig::load`] for text already read from `path` (through a
    /// handle whose owner and mode the caller checked, as `locket plan`
    /// does with another process's config): relative paths resolve against
    /// `path`'s folder.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Checked, ConfigError> {
        super::check_syntax(text, Some(path))?;
        let text = text.to_owned();
        let figment = Figment::from(Serialized::defaults(Self::default()))
            .merge(Toml::string(&text))
            .merge(Env::prefixed("LOCKET_").only(ENV_KEYS));
        let mut cfg: Self = figment
            .extract()
            .map_err(|e| super::describe(e, Some(&text), Some(path)))?;
        let base = super::base_dir(Some(path));
        super::resolve(&base, &mut cfg.key_file);
        if let Some(k) = cfg.next_key_file.as_mut() {
            super::resolve(&base, k);
        }
        for s in &mut cfg.sources {
            s.resolve_paths(&base);
        }
        if let Some(k) = cfg.v1.key_file.as_mut() {
            super::resolve(&base, k);
        }
        if let Some(tls) = cfg.tls.as_mut() {
            super::resolve(&base, &mut tls.cert_file);
            super::resolve(&base, &mut tls.key_file);
        }
        if let Some(sealed) = cfg.sealed_set.as_mut() {
            super::resolve(&base, &mut sealed.path);
            if let Some(k) = sealed.key_file.as_mut() {
                super::resolve(&base, k);
            }
        }
        cfg.check()
    }

    /// Parses a configuration from TOML text alone (no environment, paths
    /// left as written) and validates it: what `locket check` does to a
    /// file, minus the file. Used by the fuzz targets and by tests.
    pub fn from_toml_str(text: &str) -> Result<Checked, ConfigError> {
        super::check_syntax(text, None)?;
        let cfg: Self = Figment::from(Serialized::defaults(Self::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| super::describe(e, Some(text), None))?;
        cfg.check()
    }

    /// Checks ranges and builds the registry: the one place it is built.
    fn check(self) -> Result<Checked, ConfigError> {
        let registry = self.validate()?;
        Ok(Checked {
            config: self,
            registry,
        })
    }

    fn validate(&self) -> Result<Registry, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&self.key_bits) {
            return invalid(format!(
                "key_bits = {} is out of range: use {MIN_RSA_BITS} to {MAX_RSA_BITS} (default {DEFAULT_SERVER_KEY_BITS})",
                self.key_bits
            ));
        }
        if self.clock_skew < Duration::from_secs(1) || self.clock_skew > Duration::from_secs(600) {
            return invalid("clock_skew must be between 1s and 10m (default 30s)".into());
        }
        if self.max_request_bytes < 1024 {
            return invalid("max_request_bytes must be at least 1024".into());
        }
        if self.max_answer_bytes < 1024 {
            return invalid("max_answer_bytes must be at least 1024".into());
        }
        if self.max_connections_per_source == 0 {
            return invalid("max_connections_per_source must be at least 1 (default 256)".into());
        }
        if self.request_timeout < Duration::from_secs(1) || self.max_connections == 0 {
            return invalid(
                "request_timeout must be at least 1s and max_connections at least 1".into(),
            );
        }
        if self.listen_backlog == 0 {
            return invalid("listen_backlog must be at least 1 (default 4096)".into());
        }
        if self.next_key_file.as_ref() == Some(&self.key_file) {
            return invalid(
                "next_key_file is key_file: stage the next key of a rotation in a file of its own"
                    .into(),
            );
        }
        if self.replay_cache_size < 1000 {
            return invalid("replay_cache_size must be at least 1000".into());
        }
        if let Some(age) = self.max_age
            && !self.refresh_interval.is_zero()
            && age < self.refresh_interval
        {
            return invalid(format!(
                "max_age ({}) is shorter than refresh_interval ({}): the server would turn unready between refreshes",
                humantime::format_duration(age),
                humantime::format_duration(self.refresh_interval)
            ));
        }
        self.v1.validate()?;
        if let Some(sealed) = &self.sealed_set {
            if sealed.max_age.is_zero() {
                return invalid("sealed_set.max_age must be more than 0s, e.g. \"24h\"".into());
            }
            if !["auto", "host", "tpm2", "host+tpm2"].contains(&sealed.key.as_str()) {
                return invalid(format!(
                    "sealed_set.key = {:?}: use auto, host, tpm2 or host+tpm2",
                    sealed.key
                ));
            }
        }
        if let Some(bad) = self
            .health_networks
            .iter()
            .find(|n| crate::registry::parse_network(n).is_none())
        {
            return invalid(format!(
                "health_networks: {bad:?} is not a network; use CIDRs or addresses, e.g. [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.5\"]"
            ));
        }
        if self.sources.is_empty() {
            return invalid("no [[sources]]: add at least one, e.g. [[sources]] type = \"dotenv\" path = \"secrets.env\"".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            s.validate()
                .map_err(|e| ConfigError::Invalid(format!("sources[{i}]: {e}")))?;
        }
        Ok(Registry::from_config(&self.clients)?)
    }
}
