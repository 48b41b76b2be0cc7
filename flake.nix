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
      # For those who want `pkgs.locket`; the module does not need it.
      overlays.default = final: _prev: { locket = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (
        pkgs:
        let
          # As nixpkgs packages carry their NixOS tests (`nixosTests`):
          # `nix build .#locket.tests.vm-handshake` runs the VM test.
          withTests =
            pkg:
            pkg.overrideAttrs (old: {
              passthru = old.passthru // {
                tests.vm-handshake = self.checks.${pkgs.stdenv.hostPlatform.system}.vm-handshake;
              };
            });
          locket = withTests (pkgs.callPackage ./nix/package.nix { });
          locket-static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
        in
        {
          inherit locket locket-static;
          locket-client = clientOf locket;
          locket-client-static = clientOf locket-static;
          default = locket;
        }
      );

      # The module sets nothing under `nixpkgs.*` (read-only pkgs, as in
      # runNixOSTest or fleets that set nixpkgs.pkgs, stay usable): the
      # package is built by the host's own pkgs (its overlays, its
      # cross-compilation), as sops-nix does, from this flake's source.
      nixosModules.default =
        { lib, pkgs, ... }:
        let
          own = pkgs.callPackage ./nix/package.nix { };
        in
        {
          imports = [ ./nix/module.nix ];
          services.locket.package = lib.mkDefault own;
        };

      # Delivery to a user's own services (systemd --user), for
      # home-manager (standalone, or home-manager.users.<name> on NixOS):
      # `imports = [ locket.homeManagerModules.default ];` and
      # `services.locket-client`. Built by the user's pkgs, as above.
      homeManagerModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/home-manager.nix ];
          services.locket-client.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };

      # Pure functions behind the module (registry and config generation).
      # `lib` is one of the outputs `nix flake check` knows (Nix >= 2.13,
      # NixOS/nix#7606) and checks no further, so it prints no warning.
      lib = import ./nix/lib.nix;

      checks = forAllSystems (
        pkgs:
        let
          unit = import ./nix/tests/unit.nix;
          moduleEval = import ./nix/tests/module-eval.nix {
            inherit (nixpkgs) lib;
            flake = self;
          };
        in
        {
          inherit (self.packages.${pkgs.stdenv.hostPlatform.system}) locket locket-static;
          nix-unit =
            assert lib.assertMsg (unit.failed == [ ]) "nix unit tests failed: ${builtins.toJSON unit.failed}";
            pkgs.runCommand "locket-nix-unit" { } "echo '${toString unit.passed} passed, 0 failed' > $out";
          # The same module evaluation CI runs with nixpkgs' lib by path.
          module-eval =
            assert lib.assertMsg (moduleEval.failed == [ ]) "module evaluation checks failed: ${builtins.toJSON moduleEval.failed}";
            pkgs.runCommand "locket-module-eval" { } "echo '${toString moduleEval.passed} passed, 0 failed' > $out";
          home-eval =
            let
              homeEval = import ./nix/tests/home-eval.nix { inherit (nixpkgs) lib; };
            in
            assert lib.assertMsg (homeEval.failed == [ ]) "home-manager module checks failed: ${builtins.toJSON homeEval.failed}";
            pkgs.runCommand "locket-home-eval" { } "echo '${toString homeEval.passed} passed, 0 failed' > $out";
          vm-handshake = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
