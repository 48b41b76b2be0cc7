//! Prometheus metrics (OpenMetrics text) through `prometheus-client`.
//! Labels are fixed words (outcomes, results); no secret name or value ever
//! becomes a label.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: String,
}

/// A source by its number and type (never its path, command or URL).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
    source_type: String,
}

/// Every metric the server exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Histogram,
    source_loads: Family<Result_, Counter>,
    reloads: Family<Result_, Counter>,
    pub secrets: Gauge,
    pub clients: Gauge,
    pub age_seconds: Gauge<f64, AtomicU64>,
    pub stale: Gauge,
    pub ready: Gauge,
    pub memory_locked: Gauge,
    /// Connections closed to make room for a newer one.
    pub connections_shed: Counter,
    source_stale: Family<SourceLabel, Gauge>,
    source_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    source_load: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    source_secrets: Family<SourceLabel, Gauge>,
    source_requests: Family<SourceLabel, Counter>,
    source_rate_limited: Family<SourceLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("locket");
        let requests = Family::<Outcome, Counter>::default();
        registry.register("requests", "Secret requests by outcome (ok, denied, replay, bad_request, not_found, too_large, busy, retry, not_ready, rate_limited, too_many_connections, internal)", requests.clone());
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "request_duration_seconds",
            "Time to answer a secret request",
            latency.clone(),
        );
        let connections_shed = Counter::default();
        registry.register(
            "connections_shed",
            "Connections closed to make room for a newer one: they had no request in progress, or had been sending one for too long",
            connections_shed.clone(),
        );
        let source_loads = Family::<Result_, Counter>::default();
        registry.register(
            "source_loads",
            "Loads of the secret sources by result (ok, error), one per source and attempt",
            source_loads.clone(),
        );
        let reloads = Family::<Result_, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP) by result (ok, error)",
            reloads.clone(),
        );
        let secrets = Gauge::default();
        registry.register("secrets", "Secrets in the current set", secrets.clone());
        let clients = Gauge::default();
        registry.register("registry_clients", "Registered clients", clients.clone());
        let age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "secrets_age_seconds",
            "Age of the current secret set",
            age_seconds.clone(),
        );
        let stale = Gauge::default();
        registry.register(
            "secrets_stale",
            "1 when the last refresh failed and an older set is served",
            stale.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the server is ready (see /readyz)",
            ready.clone(),
        );
        let memory_locked = Gauge::default();
        registry.register(
            "secret_memory_locked",
            "1 when the current set's values are locked in RAM (mlock) and excluded from core dumps",
            memory_locked.clone(),
        );
        let source_stale = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_stale",
            "1 when the source's last load failed (its last good values are served)",
            source_stale.clone(),
        );
        let source_age = Family::<SourceLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "source_age_seconds",
            "Age of the values served from the source (NaN: never loaded)",
            source_age.clone(),
        );
        let source_load = Family::<SourceLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "source_load_seconds",
            "How long the source's last load took",
            source_load.clone(),
        );
        let source_secrets = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_secrets",
            "Names the source holds (a count, never the names)",
            source_secrets.clone(),
        );
        let source_requests = Family::<SourceLabel, Counter>::default();
        registry.register(
            "source_requests",
            "Requests made to the source's service, counted as the service counts them (1Password: op item list 2-3, op item get 3)",
            source_requests.clone(),
        );
        let source_rate_limited = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_waiting",
            "1 while the source asks nothing: rate-limited by its service, or its request budget spent",
            source_rate_limited.clone(),
        );
        Self {
            source_requests,
            source_rate_limited,
            source_stale,
            source_age,
            source_load,
            source_secrets,
            registry,
            requests,
            latency,
            connections_shed,
            source_loads,
            reloads,
            secrets,
            clients,
            age_seconds,
            stale,
            ready,
            memory_locked,
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn request(&self, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.latency.observe(seconds);
    }

    /// Forgets every source's gauges (before they are set again).
    pub(crate) fn clear_sources(&self) {
        self.source_stale.clear();
        self.source_age.clear();
        self.source_load.clear();
        self.source_secrets.clear();
        self.source_rate_limited.clear();
    }

    /// One source's gauges (before a scrape).
    pub(crate) fn source(&self, s: &crate::source::combine::SourceHealth) {
        let label = SourceLabel {
            source: s.index.to_string(),
            source_type: s.source_type.to_owned(),
        };
        self.source_stale.get_or_create(&label).set(s.stale as i64);
        self.source_age
            .get_or_create(&label)
            .set(s.age_seconds.map(|a| a as f64).unwrap_or(f64::NAN));
        self.source_load
            .get_or_create(&label)
            .set(s.load_ms as f64 / 1000.0);
        self.source_secrets
            .get_or_create(&label)
            .set(s.secrets as i64);
        self.source_rate_limited
            .get_or_create(&label)
            .set(s.waiting_until.is_some() as i64);
        // The counter follows the source's own count (which starts again
        // only when its settings change: then the counter stays put).
        let counter = self.source_requests.get_or_create(&label);
        let seen = counter.get();
        if s.requests_total > seen {
            counter.inc_by(s.requests_total - seen);
        }
    }

    pub(crate) fn source_load(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.source_loads
            .get_or_create(&Result_ {
                result: result.into(),
            })
            .inc();
    }

    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&Result_ {
                result: result.into(),
            })
            .inc();
    }

    /// The exposition text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
