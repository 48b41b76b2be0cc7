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
//! Module map (the one map of `src/`; the README points here). Floors from
//! the ground up; a module uses only what is on its floor or below:
//! * `locked` (internal): memory kept out of swap and core dumps;
//!   [`secret`]: zeroizing, redacted values; [`clock`]: the protocols' time
//!   and clock-skew rule; [`hygiene`]: no core dumps; `fsutil` (internal):
//!   private files; `systemd` (internal): sd_notify, one place.
//! * [`crypto`]: RSA-OAEP, AES-256-GCM, fingerprints; `store` (internal):
//!   the current secret set, swapped atomically; [`tls`]: rustls on the one
//!   crypto provider; [`sealed`]: copies sealed to this host with
//!   `systemd-creds` (the client's boot cache, the server's last-good set).
//! * [`keys`]: server, client and reply keys, their files and text forms,
//!   and loading (or creating) the server's.
//! * [`protocol`]: wire types, canonical signed bytes, seal/open.
//! * [`registry`]: clients, their keys, networks and grants;
//!   [`source`]: where secrets come from (`source/memory.rs`: requests,
//!   budgets, rate limits and what a source last read; `combine.rs`: each
//!   source's last good values); [`config`]: server, client and `[v1]`
//!   settings.
//! * [`server`]: `state` (keys, guards, secrets), `gate` (what both
//!   protocols share around a request), `pipeline`/`outcome`, `routes`,
//!   `admission` (who holds the connection slots), `conn` (the accept
//!   loop), `refresh`, `startup`
//!   ([`server::Server::load`] and [`server::Server::serve`], which tests
//!   share with `locket serve`, and which mount v1); [`client`]: fetching
//!   secrets and handing them to programs; [`check`]: what a config would
//!   serve (`locket check`); [`plan`]: what a config change grants
//!   (`locket plan`); [`discover`]: the running server's config, for `locket plan`,
//!   trusting only what deserves it.
//! * [`v1`]: the original locket's protocol, on `server`'s gate and state.
//! * `src/bin/`: the two binaries, thin over all of the above.

pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod deliver;
pub mod discover;
mod error_chain;
pub use error_chain::error_chain;
pub(crate) mod fsutil;
pub mod hygiene;
pub mod keys;
pub(crate) mod locked;
pub mod plan;
pub mod protocol;
pub mod registry;
pub mod sealed;
pub mod secret;
pub mod secret_set;
pub mod server;
pub mod source;
pub(crate) mod store;
pub(crate) mod systemd;
pub mod tls;
pub mod v1;
