# Evaluates home-manager configurations against ./stubs.nix with nixpkgs'
# real lib.evalModules, through the flake's homeManagerModules.default (as
# users import it), and returns what home-manager would generate.
#
#   nix-instantiate --eval --strict --json nix/tests/home-manager/eval.nix -A json \
#     --arg modules '[ ./nix/tests/home.nix ]'
#
# Results:
#   files             xdg.configFile target -> { text; value; source; }
#                     (`value` for files made by pkgs.formats.*.generate)
#   units             "<name>.<type>" -> unit file text (systemd/user/)
#   links             "<target>.wants/<unit>" or ".requires/" -> unit
#   failedAssertions, warnings, packages (names), config, options
{
  libPath ? ../../../../shared/nixpkgs-lib/lib,
  lib ? import ../nixpkgs-lib.nix libPath,
  modules ? [ ],
  overlays ? [ ],
}:
let
  nixos = import ../nixos/eval.nix { inherit lib overlays; };
  pkgs = import ../nixos/pkgs.nix { inherit lib overlays; };
  evaluated = lib.evalModules {
    modules = [
      ./stubs.nix
      nixos.self.homeManagerModules.default
      { _module.args.pkgs = pkgs; }
    ]
    ++ modules;
  };
  config = evaluated.config;
  enabled = lib.filterAttrs (_: f: f.enable) config.xdg.configFile;
  files = lib.mapAttrs' (
    _: f:
    lib.nameValuePair f.target {
      text = f.text;
      value = f.source.value or null;
      source = toString f.source;
    }
  ) enabled;
  unitFiles = lib.filterAttrs (n: _: lib.hasPrefix "systemd/user/" n) files;
  isLink = n: builtins.match "systemd/user/[^/]+[.](wants|requires)/.*" n != null;
  units = lib.mapAttrs' (n: f: lib.nameValuePair (lib.removePrefix "systemd/user/" n) f.text) (
    lib.filterAttrs (n: _: !isLink n) unitFiles
  );
  links = lib.mapAttrs' (n: _: lib.nameValuePair (lib.removePrefix "systemd/user/" n) (baseNameOf n)) (
    lib.filterAttrs (n: _: isLink n) unitFiles
  );
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  result = {
    inherit files units links failedAssertions;
    inherit (config) warnings;
    packages = map (p: p.name) config.home.packages;
  };
in
result
// {
  inherit config;
  inherit (evaluated) options;
  json = builtins.toJSON result;
}
