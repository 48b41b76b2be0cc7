# Both binaries, locket (server) and locket-client, from the committed
# Cargo.lock. The source is filtered to what the build and its tests read,
# so editing the README or the Nix files does not rebuild.
{
  lib,
  rustPlatform,
  stdenv,
  util-linux,
}:
let
  fs = lib.fileset;
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "locket";
  inherit (cargoToml.package) version;

  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../examples
      ../benches # declared in Cargo.toml; cargo reads every target
      ../.cargo
      ../docs/protocol.md # its test vectors are checked by the test suite
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # As in .cargo/config.toml: AWS-LC seeds from getrandom instead of running
  # its CPU-jitter collector (about 40 ms of CPU at the start of every process).
  env.AWS_LC_SYS_NO_JITTER_ENTROPY = "1";

  # prlimit, for the test that runs the server without a memory-lock allowance.
  nativeCheckInputs = [ util-linux ];

  # The test suite starts real servers on 127.0.0.1 (and binds 127.0.0.2/3
  # as client addresses), which the build sandbox's loopback allows. The
  # static variant is the same code; its tests run in the dynamic build.
  doCheck = !stdenv.hostPlatform.isStatic;

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
