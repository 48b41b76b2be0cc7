//! The locket server.
//!
//! [`Server::load`] does everything before listening and [`Server::serve`]
//! takes an already-bound listener and a shutdown future, so tests bind
//! port 0 and the binary only wires flags to it (`startup`). What a SIGHUP
//! can change (registry, limits, sources) lives in one `Runtime` swapped
//! atomically; requests take one snapshot of it and of the secret set.
//!
//! The files, from the bottom up: `state` (what the server holds), `gate`
//! (what both protocols share around a request), `pipeline` and `outcome`
//! (v2's checks, in order, and how any request ended), `routes` (v2's HTTP
//! answers), `admission` (who holds the connection slots, and who gives
//! way when they are full), `conn` (the accept loop, which knows no protocol), `refresh`
//! (sources and reloads), `reload_control` (what a reload published, for
//! `locket reload --wait`), and `startup`, which mounts v2 and, when enabled,
//! v1 (`crate::v1`, which stands on `gate` and `state`; nothing here imports
//! it but start-up).

mod admission;
pub(crate) mod conn;
pub(crate) mod gate;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod outcome;
mod pipeline;
pub(crate) mod ratelimit;
pub(crate) mod refresh;
pub mod reload_control;
pub(crate) mod replay;
mod routes;
pub(crate) mod sealed_set;
mod startup;
pub(crate) mod state;

pub use conn::Peer;
pub use startup::{Server, StartError, run};
