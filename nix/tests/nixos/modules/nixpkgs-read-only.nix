# Mirrors nixos/modules/misc/nixpkgs/read-only.nix, the nixpkgs module that
# testers.runNixOSTest gives every node (and that fleets setting
# nixpkgs.pkgs use): `pkgs` is handed in whole, and nixpkgs.config /
# nixpkgs.overlays / the platforms only report what it was made with. This
# module defines each of them itself, so one more definition from anywhere
# fails ("… is defined multiple times while it's expected to be unique" /
# "nixpkgs.overlays is set to read-only"). The check happens when `pkgs` is
# used, which is what forces the four options below.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixpkgs;
  reportedOnly =
    what:
    mkOption {
      internal = true;
      type = types.unique { message = "nixpkgs.${what} is set to read-only"; } types.anything;
    };
in
{
  options.nixpkgs = {
    pkgs = mkOption { type = types.pkgs; };
    config = reportedOnly "config";
    overlays = reportedOnly "overlays";
    hostPlatform = mkOption {
      internal = true;
      readOnly = true;
    };
    buildPlatform = mkOption {
      internal = true;
      readOnly = true;
    };
  };

  config = {
    nixpkgs.config = cfg.pkgs.config;
    nixpkgs.overlays = cfg.pkgs.overlays;
    nixpkgs.hostPlatform = cfg.pkgs.stdenv.hostPlatform;
    nixpkgs.buildPlatform = cfg.pkgs.stdenv.buildPlatform;
    _module.args.pkgs = lib.foldr builtins.seq cfg.pkgs.__splicedPackages [
      cfg.config
      cfg.overlays
      cfg.hostPlatform
      cfg.buildPlatform
    ];
  };
}
