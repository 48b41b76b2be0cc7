#![no_main]
//! cargo-fuzz entry point; the body is `targets::v1_wire` (shared with the
//! corpus replay in `tests/it/fuzz_corpus.rs`).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::v1_wire(data));
