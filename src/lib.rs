//! locket: a secrets cache for production services.
//!
//! The server holds secrets in memory, loaded from sources, and serves them
//! only to registered clients over protocol v2 (`docs/protocol.md`): every
//! request is signed with the client's ed25519 key and encrypted to the
//! server's RSA key; every answer is encrypted to a reply key that the
//! client keeps only in memory.
//!
//! The public surface is what the two binaries, the tests, the benchmark
//! and the fuzz targets use: the public modules below, and the items of
//! the private ones exported at the root (`locket::check`,
//! `locket::plan_files`, `locket::http_client`, ...). The rest is
//! `pub(crate)`, and `unreachable_pub` keeps it so; `missing_docs` keeps
//! the surface documented (an error's variants by their messages).
//!
//! Module map (the one map of `src/`; docs/development.md points here). Floors from
//! the ground up; a module uses only what is on its floor or below:
//! * `locked` (internal): memory kept out of swap and core dumps;
//!   [`secret`]: zeroizing, redacted values; [`secret_set`]: named values
//!   in order, the set everything passes around; [`clock`]: the protocols'
//!   time and clock-skew rule, and how times are shown; `hygiene`: no core
//!   dumps; `fsutil` (internal): private files and the one atomic writer;
//!   `systemd` (internal): sd_notify, one place; `error_chain`: an error
//!   and its causes on one line.
//! * [`crypto`]: RSA-OAEP, AES-256-GCM, fingerprints; `store` (internal):
//!   the served set, swapped atomically; `tls`: rustls on the one crypto
//!   provider; `sealed`: copies sealed to this host with `systemd-creds`
//!   (the client's boot cache, the server's last-good set).
//! * [`keys`]: server, client and reply keys, their files and text forms,
//!   and loading (or creating) the server's.
//! * [`protocol`]: wire types, canonical signed bytes, seal/open.
//! * `registry`: clients, their keys, networks and grants;
//!   [`source`]: where secrets come from (`source/memory.rs`: requests,
//!   budgets, rate limits and what a source last read; `combine.rs`: each
//!   source's last good values); [`config`]: server, client and `[v1]`
//!   settings.
//! * [`server`]: `state` (keys, guards, secrets), `gate` (what both
//!   protocols share around a request), `pipeline`/`outcome`, `routes`,
//!   `admission` (who holds the connection slots), `conn` (the accept
//!   loop), `refresh`, `startup`
//!   ([`server::Server::load`] and [`server::Server::serve`], which tests
//!   share with `locket serve`, and which mount v1); `check`: what a
//!   config would serve (`locket check`); `plan`: what a config change
//!   grants (`locket plan`); `discover`: the running server's config, for
//!   `locket plan`, trusting only what deserves it.
//! * [`client`]: fetching secrets (`trust`: pins and known servers).
//! * [`cli_docs`]: man pages and shell completions from the binaries' clap
//!   definitions (`generate`).
//! * [`deliver`]: handing secrets to programs, over `client`: `plan` (the
//!   module's delivery plan), `once` (one round), `watch` (the one watch
//!   loop, and what a change owes consumers), `render` (files in a
//!   folder), `template`, `output` (env-file and JSON encodings), `exec`,
//!   `cache` (the boot cache).
//! * [`v1`]: the original locket's protocol, on `server`'s gate and state.
//! * `src/bin/`: the two binaries, thin over all of the above (one function
//!   per subcommand); `src/bin/locket-client/messages.rs` shows events.

#![warn(missing_docs)]
// The library reports (errors, `tracing` events); each binary decides how
// to show them. Nor does it unwrap: a failure is an error with a cause.
#![cfg_attr(
    not(test),
    deny(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)
)]

mod check;
pub mod cli_docs;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod deliver;
mod discover;
mod error_chain;
pub(crate) mod fsutil;
mod hygiene;
pub mod keys;
pub(crate) mod locked;
mod plan;
pub mod protocol;
mod registry;
mod sealed;
pub mod secret;
pub mod secret_set;
pub mod server;
pub mod source;
pub(crate) mod store;
pub(crate) mod systemd;
mod tls;
pub mod v1;

// The surface of the modules above that stay private: what the binaries,
// the tests, the benches and the fuzz targets call.
pub use check::{
    CheckError, ClientSummary, KeyState, OfflineReport, Report, check, check_offline, fingerprint,
};
pub use error_chain::error_chain;
pub use hygiene::no_core_dumps;
pub use plan::{ClientChange, Diff, FilePlan, GrantPlan, PlanError, plan_files};
pub use registry::{ClientEntry, RegisteredClient, Registry, RegistryError};
pub use sealed::{SealError, new_key_credential};
pub use tls::{Roots, TlsError, http_client};
