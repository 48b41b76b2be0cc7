//! locket: a secrets cache for production services.
//!
//! The server holds secrets in memory, loaded from sources, and serves them
//! only to registered clients over protocol v2 (`docs/protocol.md`): every
//! request is signed with the client's ed25519 key and encrypted to the
//! server's RSA key; every answer is encrypted to a reply key that the
//! client keeps only in memory.
//!
//! The public surface is what the two binaries, the tests, the benchmark
//! and the fuzz targets use; the rest is `pub(crate)`, and `unreachable_pub`
//! keeps it so.
//!
//! Module map:
//! * [`protocol`]: wire types, canonical signed bytes, seal/open.
//! * [`crypto`]: RSA-OAEP key wrapping, AES-256-GCM, fingerprints.
//! * [`keys`]: server, client and reply keys and their file/text forms.
//! * [`secret`]: zeroizing, redacted secret values.
//! * `locked` (internal): memory kept out of swap and core dumps, for loaded sets.
//! * [`registry`]: clients, their keys, networks and grants.
//! * `store` (internal): the current secret set, swapped atomically.
//! * [`source`]: where secrets come from.
//! * [`config`]: server and client configuration.
//! * [`server`]: [`server::Server::load`] and [`server::Server::serve`], the
//!   start-up `locket serve` and the tests share; routes, the request
//!   pipeline, the replay cache.
//! * [`client`]: fetching secrets and handing them to programs.
//! * `fsutil` (internal): creating private files safely.
//! * [`hygiene`]: no core dumps for processes that hold secrets.
//! * [`tls`]: rustls on the one crypto provider, for both sides.
//! * [`clock`]: the protocols' time and clock-skew rule.
//! * [`v1`]: the original locket's protocol, all of it (opt-in).

pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub(crate) mod fsutil;
pub mod hygiene;
pub mod keys;
pub(crate) mod locked;
pub mod plan;
pub mod protocol;
pub mod registry;
pub mod secret;
pub mod server;
pub mod source;
pub(crate) mod store;
pub mod tls;
pub mod v1;
