# Both binaries, locket (server) and locket-client, from the committed
# Cargo.lock. The source is filtered to what the build and its tests read,
# so editing the README, the docs or the Nix files does not rebuild.
#
# Which tests run here: the check phase runs the whole Rust suite that can
# run in the Nix build sandbox (no network but loopback, nothing in /bin but
# sh, HOME=/homeless-shelter, an unprivileged build user, only the files of
# `fileset`). Left to `.ci/test` and the flake's other `checks`, by name in
# `skippedInSandbox` below: tests that read files outside the source set
# (docs/configuration.md) and the soak, a timed load test that does not belong on a
# shared builder. `.ci/sandbox-check` replays exactly this check phase in a
# namespace that looks like the sandbox.
{
  lib,
  rustPlatform,
  stdenv,
  util-linux,
  python3,
  installShellFiles,
}:
let
  fs = lib.fileset;
  cargoToml = lib.importTOML ../Cargo.toml;
  fileset = fs.unions [
    ../Cargo.toml
    ../Cargo.lock
    ../src
    ../tests
    ../examples
    ../benches # declared in Cargo.toml; cargo reads every target
    ../.cargo
    ../docs/protocol.md # its test vectors are checked by the test suite
    ../docs/monitoring # the alert rules and dashboard, checked against /metrics
  ];
  # Test names (libtest --skip filters) that do not run in the build sandbox.
  skippedInSandbox = [
    # Reads docs/configuration.md, which is not in the source set (editing it must not rebuild).
    "the_documented_server_config_example_is_accepted"
    # Reads docs/configuration.md's reference tables (not in the source set either).
    "the_configuration_reference_matches_the_code"
    # A 15 s load test under attack; run by .ci/test, not on a shared builder.
    "soak_under_attack"
    # Reads the env formats back with python-dotenv, which .ci/test installs.
    "no_format_runs_anything_under_any_reader_it_names"
    # Reads the listen queue's length with `ss` (iproute2), not in the sandbox.
    "the_listen_queue_is_long_and_configurable"
    # Run a server (or an impostor) in a PID namespace of their own
    # (unshare, setpriv), which needs root.
    "plan_compares_with_the_running_servers_config_by_default"
    "plan_never_trusts_a_process_that_only_calls_itself_locket"
    "plan_refuses_a_running_servers_config_that_others_can_write"
    # Both encrypt with the real systemd-creds (host key, root), which .ci/test installs.
    "the_boot_cache_stands_in_only_when_no_server_answers_and_only_within_its_max_age"
    "two_deliveries_storing_one_copy_at_once_both_succeed"
    "a_restart_starts_from_the_sealed_set_and_reads_only_what_changed"
    "the_sealed_set_seals_with_a_key_systemd_hands_over"
    # chowns a file to another user, which needs root.
    "the_file_is_held_to_the_rules_of_a_key_file"
    # Runs the real git (and less, when installed), which the sandbox does not have.
    "git_config_and_lessopen_cannot_run_a_command_through_exec"
    # Gives the client a terminal with script(1), which needs a pseudo-terminal.
    "retry_progress_shows_on_a_terminal_only"
    # Renders the generated man pages with man-db's man(1), which .ci/test installs.
    "man_renders_every_generated_page"
    # Preloads Debian's libfaketime (at the path .ci/test installs it to) into the server.
    "a_clock_jump_either_way_names_the_skew_recovers_and_never_answers_a_replay"
  ];
  # Man pages and completions come from the binaries themselves (`generate`),
  # which must run on the build machine.
  canRun = stdenv.buildPlatform.canExecute stdenv.hostPlatform;
in
rustPlatform.buildRustPackage {
  pname = "locket";
  inherit (cargoToml.package) version;

  src = fs.toSource {
    root = ../.;
    inherit fileset;
  };

  cargoLock.lockFile = ../Cargo.lock;

  # As in .cargo/config.toml: AWS-LC seeds from getrandom instead of running
  # its CPU-jitter collector (about 40 ms of CPU at the start of every process).
  env.AWS_LC_SYS_NO_JITTER_ENTROPY = "1";

  # prlimit, for the test that runs the server without a memory-lock
  # allowance; python3 runs the tests' stand-in for 1Password's `op`.
  nativeCheckInputs = [
    util-linux
    python3
  ];

  nativeBuildInputs = [ installShellFiles ];
  postInstall = lib.optionalString canRun ''
    mkdir -p man
    for bin in locket locket-client; do
      "$out/bin/$bin" generate man --out man >/dev/null
      installShellCompletion --cmd "$bin" \
        --bash <("$out/bin/$bin" generate bash) \
        --zsh <("$out/bin/$bin" generate zsh) \
        --fish <("$out/bin/$bin" generate fish)
    done
    installManPage man/*.1
  '';

  # The static variant is the same code; its tests run in the dynamic build.
  doCheck = !stdenv.hostPlatform.isStatic;
  checkFlags = lib.concatMap (name: [
    "--skip"
    name
  ]) skippedInSandbox;

  passthru = {
    # For .ci/sandbox-check, which copies exactly these files.
    inherit fileset skippedInSandbox;
  };

  meta = {
    description = "Secrets cache for production services, with signed and encrypted per-client access";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "locket";
    platforms = lib.platforms.linux;
  };
}
