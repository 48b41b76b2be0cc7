//! locket: a secrets cache for production services.
//!
//! The server holds secrets in memory, loaded from sources, and serves them
//! only to registered clients over protocol v2 (`docs/protocol.md`): every
//! request is signed with the client's ed25519 key and encrypted to the
//! server's RSA key; every answer is encrypted to a reply key that the
//! client keeps only in memory.
//!
//! Module map:
//! * [`protocol`]: wire types, canonical signed bytes, seal/open.
//! * [`protocol_v1`]: the original locket's wire format (opt-in).
//! * [`crypto`]: RSA-OAEP key wrapping, AES-256-GCM, fingerprints.
//! * [`keys`]: server, client and reply keys and their file/text forms.
//! * [`secret`]: zeroizing, redacted secret values.
//! * [`locked`]: memory kept out of swap and core dumps, for loaded sets.
//! * [`registry`]: clients, their keys, networks and grants.
//! * [`store`]: the current secret set, swapped atomically.
//! * [`source`]: where secrets come from.
//! * [`config`]: server and client configuration.
//! * [`server`]: HTTP routes, the request pipeline, the replay cache.
//! * [`client`]: fetching secrets and handing them to programs.
//! * [`fsutil`]: creating private files safely.
//! * [`hygiene`]: no core dumps for processes that hold secrets.
//! * [`sd_notify`]: telling systemd the server is ready.

pub mod client;
pub mod config;
pub mod crypto;
pub mod fsutil;
pub mod hygiene;
pub mod keys;
pub mod locked;
pub mod protocol;
pub mod protocol_v1;
pub mod registry;
pub mod sd_notify;
pub mod secret;
pub mod server;
pub mod source;
pub mod store;
