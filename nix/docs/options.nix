# docs/options.md: the NixOS module's options as Markdown, generated from
# the module itself with nixpkgs' lib.optionAttrSetToDocList (as
# nixosOptionsDoc does), evaluated against the stub NixOS modules
# (nix/tests/nixos) with nixpkgs' real lib.
#
#   nix/tests/options_doc.py --write    # regenerate docs/options.md
#   nix/tests/options_doc.py --check    # CI: fail when it is stale
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ../tests/nixpkgs-lib.nix libPath,
}:
let
  inherit (lib) concatStringsSep filter hasInfix removePrefix;
  nixos = import ../tests/nixos/eval.nix { inherit lib; };
  host = import ../tests/nixos/eval.nix {
    inherit lib;
    modules = [ nixos.self.nixosModules.default ];
  };
  root = toString ../..;
  options = filter (o: o.visible && !o.internal) (
    lib.optionAttrSetToDocList host.options.services.locket
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
''
  # NixOS options: `services.locket`

  Generated from `nix/module.nix` by `nix/docs/options.nix`
  (`lib.optionAttrSetToDocList`, as `nixosOptionsDoc` does); do not edit.
  CI fails when this file is stale: run `nix/tests/options_doc.py --write`.
  The guide to these options, with worked examples, is [nixos.md](nixos.md).

''
+ concatStringsSep "\n\n" (map one options)
+ "\n"
