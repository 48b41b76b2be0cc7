//! Delivery to consuming services: the plan the NixOS module writes
//! (`/etc/locket/delivery.toml`), one round of fetching and rendering, and
//! the host's one watcher that repeats the round and restarts, reloads or
//! notifies consumers whose values changed.
//!
//! Why one watcher per host and one request per round: the server sees one
//! signed request per host per interval however many consumers the host
//! runs, and all consumers move to a new set at the same moment. Why
//! compare content: a consumer is restarted only when a value it reads
//! changed (`RenderReport::changed`), at most once per round however many
//! of its secrets changed, and a unit that several consumers name is
//! restarted once, so changes that arrive together cause one restart.
//!
//! The watcher refreshes only consumers whose folder is delivered (it has a
//! manifest): it never creates a folder, which is the fetch unit's job
//! before its consumer starts. A folder stays when its consumer stops (a
//! restart during an outage starts on it, see [`deliver_once`]) and goes
//! when the consumer leaves the plan ([`prune`]).

pub mod cache;
pub mod exec;
mod once;
pub mod output;
mod plan;
mod prune;
pub mod render;
pub mod socket;
pub mod template;
mod watch;

pub use once::{deliver_once, origin};
pub use plan::{
    Consumer, ConsumerPlan, DeliverError, Delivery, DeliveryPlan, SocketConsumer, TemplatePlan,
};
pub use prune::prune;
pub use watch::{
    ConsumerStatus, Pending, WatchStatus, check_units, render_folder, repeat, watch, watch_folder,
};
