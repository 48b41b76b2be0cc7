# nixpkgs' `lib`, taken by path (CI: ../shared/nixpkgs-lib/lib, the 25.11
# branch-off; a NixOS machine: the flake's nixpkgs input), evaluable with
# the Nix CI has: Debian 12's nix-bin 2.8.
#
# lib 25.11 calls a few builtins that Nix 2.8 lacks. Each is added below,
# written from its documented behaviour, and only when missing: on a current
# Nix this is plain `import libPath`. The lib's own code is what runs.
libPath:
let
  added = {
    # Nix 2.14. The type of the file at `path`, as readDir reports it.
    readFileType =
      path:
      let
        p = toString path;
      in
      if p == "/" then "directory" else (builtins.readDir (dirOf p)).${baseNameOf p};
  };
  missing = builtins.filter (n: !(builtins.hasAttr n builtins)) (builtins.attrNames added);
  shimmed = builtins // builtins.listToAttrs (map (n: { name = n; value = added.${n}; }) missing);
  # Every file the lib imports sees the same builtins.
  scopedImportAll = path: scopedImport { builtins = shimmed; import = scopedImportAll; } path;
in
if missing == [ ] then import libPath else scopedImportAll libPath
