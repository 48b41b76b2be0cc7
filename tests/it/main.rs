//! The integration tests: one binary, a module per area, sharing one
//! harness (`support`): real servers on loopback (in-process through the
//! library's own start-up, or the real `locket` binary), real clients, real
//! files. One binary links the library once instead of once per file.

mod cli;
mod clock_jump;
mod cmd;
mod config_docs;
mod credential_socket;
mod deliver_plan;
mod delivery;
mod formats;
mod freshness;
mod fuzz_corpus;
mod handshake;
mod limits;
mod monitoring;
mod onepassword;
mod operations;
mod opvault;
mod plan;
mod properties;
mod protocol_vectors;
mod reload;
mod render;
mod reply_keys;
mod rotation;
mod soak;
mod sources;
mod support;
mod v1;
