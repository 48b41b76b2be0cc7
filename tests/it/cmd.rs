//! The command-line contract of both binaries, as cases in `tests/cmd/`:
//! help, usage errors and their exit codes, pinned by trycmd (as rage
//! does). A changed flag, message or exit code fails here; regenerate with
//! `TRYCMD=overwrite cargo test cli_contract` only for an intended change,
//! and say so in docs/cli.md.

#[test]
fn cli_contract() {
    trycmd::TestCases::new()
        .register_bin("locket", std::path::Path::new(env!("CARGO_BIN_EXE_locket")))
        .register_bin(
            "locket-client",
            std::path::Path::new(env!("CARGO_BIN_EXE_locket-client")),
        )
        .case("tests/cmd/*.toml");
}
