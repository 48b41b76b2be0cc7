# The script a service's `script`/`preStart`/`postStart`/`reload` becomes
# (NixOS: makeJobScript in nixos/lib/systemd-lib.nix, without the optional
# shellcheck variant): a `set -e` shell script at bin/<name> of a derivation
# named unit-script-<name>, with `\` and `@` made safe for the file name.
# Used by ./modules/systemd.nix and, for the `scripts` result, ./eval.nix.
{ lib, pkgs }:
name: text:
let
  fileName = lib.replaceStrings [ "\\" "@" ] [ "--" "_" ] name;
in
(pkgs.writeShellScriptBin fileName "set -e\n\n${text}\n").overrideAttrs (_: {
  name = "unit-script-${fileName}";
})
