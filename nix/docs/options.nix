# docs/options.md: the NixOS module's options as Markdown, generated from
# the module itself with nixpkgs' lib.optionAttrSetToDocList (as
# nixosOptionsDoc does), evaluated against the stub NixOS modules
# (nix/tests/nixos) with nixpkgs' real lib. With `module = "home-manager"`:
# docs/home-manager-options.md, the home-manager module's, evaluated
# against the stub home-manager modules (nix/tests/home-manager).
#
#   nix/tests/options_doc.py --write    # regenerate both
#   nix/tests/options_doc.py --check    # CI: fail when either is stale
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ../tests/nixpkgs-lib.nix libPath,
  module ? "nixos",
}:
let
  inherit (lib) concatStringsSep filter hasInfix removePrefix;
  nixos = import ../tests/nixos/eval.nix { inherit lib; };
  host = import ../tests/nixos/eval.nix {
    inherit lib;
    modules = [ nixos.self.nixosModules.default ];
  };
  root = toString ../..;
  home = import ../tests/home-manager/eval.nix {
    inherit lib;
    modules = [
      {
        home.username = "user";
        home.homeDirectory = "/home/user";
        home.stateVersion = "25.11";
      }
    ];
  };
  options = filter (o: o.visible && !o.internal) (
    lib.optionAttrSetToDocList (
      if module == "nixos" then host.options.services.locket else home.options.services.locket-client
    )
  );
  # A rendered value (literalExpression or literalMD): inline when short.
  value =
    v:
    let
      text = v.text or (toString v);
    in
    if v._type or "" == "literalMD" then
      text
    else if hasInfix "\n" text then
      "\n\n```nix\n${text}\n```"
    else
      "`${text}`";
  file = d: removePrefix "${root}/" (toString d);
  one =
    o:
    concatStringsSep "\n" (
      [
        "## `${o.name}`"
        ""
        (if o.description == null then "(no description)" else o.description)
        ""
        "*Type:* ${o.type}${if o.readOnly then " (read-only)" else ""}"
      ]
      ++ lib.optional (o ? default) ""
      ++ lib.optional (o ? default) "*Default:* ${value o.default}"
      ++ lib.optional (o ? example) ""
      ++ lib.optional (o ? example) "*Example:* ${value o.example}"
      ++ [
        ""
        "*Declared in:* ${concatStringsSep ", " (map (d: "`${file d}`") o.declarations)}"
      ]
    );
in
(
  if module == "nixos" then
    ''
      # NixOS options: `services.locket`

      Generated from `nix/module.nix` by `nix/docs/options.nix`
      (`lib.optionAttrSetToDocList`, as `nixosOptionsDoc` does); do not edit.
      CI fails when this file is stale: run `nix/tests/options_doc.py --write`.
      The guide to these options, with worked examples, is [nixos.md](nixos.md).

    ''
  else
    ''
      # home-manager options: `services.locket-client`

      Generated from `nix/home-manager.nix` by `nix/docs/options.nix`
      (`lib.optionAttrSetToDocList`); do not edit. CI fails when this file
      is stale: run `nix/tests/options_doc.py --write`. The guide, with a
      worked example, is [home-manager.md](home-manager.md).

    ''
)
+ concatStringsSep "\n\n" (map one options)
+ "\n"
