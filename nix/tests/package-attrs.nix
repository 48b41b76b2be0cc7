# What nix/package.nix hands to buildRustPackage, evaluated with nixpkgs'
# real `lib` (by path) and a stand-in rustPlatform that returns its
# arguments: the source set as relative file names, and the check phase's
# flags. `.ci/sandbox-check` replays that check phase from this.
#
#   nix-instantiate --eval --strict --json nix/tests/package-attrs.nix --arg libPath ../shared/nixpkgs-lib/lib
{ libPath }:
let
  lib = import ./nixpkgs-lib.nix libPath;
  root = toString ../..;
  attrs = import ../package.nix {
    inherit lib;
    rustPlatform.buildRustPackage = a: a;
    stdenv.hostPlatform.isStatic = false;
    stdenv.buildPlatform.canExecute = _: true;
    installShellFiles = {
      pname = "install-shell-files";
    };
    util-linux = {
      pname = "util-linux";
    };
    python3 = {
      pname = "python3";
    };
  };
  relative = p: lib.removePrefix "${root}/" (toString p);
in
{
  files = map relative (lib.fileset.toList attrs.passthru.fileset);
  inherit (attrs)
    doCheck
    checkFlags
    env
    ;
  cargoTestFlags = attrs.cargoTestFlags or [ ];
  cargoCheckType = attrs.cargoCheckType or attrs.buildType or "release";
  nativeCheckInputs = map (p: p.pname) attrs.nativeCheckInputs;
  inherit (attrs) postInstall;
  skippedInSandbox = attrs.passthru.skippedInSandbox;
}
