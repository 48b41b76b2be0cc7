{
  description = "locket: a secrets cache for production services";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # The same derivation with `nix run` pointed at the client binary.
      clientOf = pkg: pkg.overrideAttrs (old: { meta = old.meta // { mainProgram = "locket-client"; }; });
    in
    {
      overlays.default = final: _prev: { locket = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (
        pkgs:
        let
          locket = pkgs.callPackage ./nix/package.nix { };
          locket-static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
        in
        {
          inherit locket locket-static;
          locket-client = clientOf locket;
          locket-client-static = clientOf locket-static;
          default = locket;
        }
      );

      nixosModules.default = {
        imports = [ ./nix/module.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };

      # Pure functions behind the module (registry and config generation).
      lib = import ./nix/lib.nix;

      checks = forAllSystems (
        pkgs:
        let
          unit = import ./nix/tests/unit.nix;
        in
        {
          inherit (self.packages.${pkgs.stdenv.hostPlatform.system}) locket locket-static;
          nix-unit =
            assert lib.assertMsg (unit.failed == [ ]) "nix unit tests failed: ${builtins.toJSON unit.failed}";
            pkgs.runCommand "locket-nix-unit" { } "echo '${toString unit.passed} passed, 0 failed' > $out";
          vm-handshake = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
