# The module guide's worked examples (docs/nixos.md, "Worked examples"),
# each evaluated as a whole NixOS module with the flake's
# nixosModules.default and nixpkgs' real lib: no failed assertion, no
# warning, and the fetch unit of its consumer (or, for delivery =
# "socket", the credential socket and a unit that asks it). nix/tests/run.sh extracts
# the ```nix blocks into files (evaluation cannot write a string to the
# store here) and passes them:
#
#   nix-instantiate --eval --strict --json nix/tests/guide-examples.nix \
#     --arg libPath ../shared/nixpkgs-lib/lib --arg files '[ /tmp/x/0.nix ... ]'
#
# evaluates to one { file; failedAssertions; warnings; fetchUnits; socket; } each.
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ./nixpkgs-lib.nix libPath,
  files,
}:
let
  nixos = args: import ./nixos/eval.nix ({ inherit lib; } // args);
  self = (nixos { }).self;
  # nginx's own options are a stand-in: the stubs have no nginx module.
  nginxStandIn = {
    options.services.nginx = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      default = { };
    };
  };
in
map (
  file:
  let
    h = nixos {
      modules = [
        self.nixosModules.default
        nginxStandIn
        (import file)
      ];
    };
  in
  {
    file = toString file;
    inherit (h) failedAssertions warnings;
    fetchUnits = builtins.filter (lib.hasPrefix "locket-fetch-") (builtins.attrNames h.units);
    # delivery = "socket": the socket, and a unit that asks it.
    socket =
      h.units ? "locket-watch.socket"
      && builtins.any (t: t != null && lib.hasInfix ":/run/locket/credentials.sock" t) (builtins.attrValues h.units);
  }
) files
