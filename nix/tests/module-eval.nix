# The NixOS module, evaluated by the real module system (nixpkgs'
# lib.evalModules) against stub NixOS modules (./nixos: the options the
# module and the VM test set, with NixOS's types, and NixOS's rendering of
# units), with pure checks of what it generates. Each check names the
# point of the NixOS-deliverable issue it guards.
#
#   nix-instantiate --eval --strict --json nix/tests/module-eval.nix --arg libPath ../shared/nixpkgs-lib/lib
#
# evaluates to { passed = N; failed = [ names ]; }. CI runs it (through
# nix/tests/run.sh) with nixpkgs' lib by path; `nix flake check` runs it
# with the flake's own nixpkgs lib (checks.<system>.module-eval).
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ./nixpkgs-lib.nix libPath,
}:
let
  inherit (lib) hasInfix hasPrefix splitString filter;
  nixos = args: import ./nixos/eval.nix ({ inherit lib; } // args);
  # A configuration through the flake's nixosModules.default, as users
  # import it (no overlay: the module must not need pkgs.locket).
  host = hostWith { };
  hostWith =
    nixpkgsConfig: config:
    nixos {
      inherit nixpkgsConfig;
      modules = [
        (nixos { }).self.nixosModules.default
        config
      ];
    };
  # Whether evaluating `value` fails (a type error, a throw).
  fails = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
  lines = text: filter (l: l != "") (splitString "\n" text);
  without = prefix: text: filter (l: !hasPrefix prefix l) (lines text);
  unitLines = unit: key: filter (hasPrefix "${key}=") (lines unit);

  fp = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
  appKey = "ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U=";

  # The VM test's nodes, as runNixOSTest evaluates them (read-only pkgs).
  vm = (nixos { testFile = ./vm.nix; }).test;
  vmServer = vm.nodes.server;
  registryChange = vmServer.specialisations.registry-change;

  # Server and client on one host, with every kind of path the module
  # hands to units, and names that systemd would expand.
  # `op` is unfree: the host's nixpkgs must allow it (the README says how).
  sameHost = hostWith { allowUnfreePredicate = p: lib.getName p == "1password-cli"; } (
    { pkgs, ... }:
    {
      networking.hostName = "web1";
      services.locket = {
        enable = true;
        sources = [
          {
            type = "dotenv";
            path = "/run/secrets/app.env";
          }
          {
            type = "onepassword-cli";
            vault = "prod";
            token_file = "/run/secrets/op-token";
          }
          {
            type = "command";
            # Found on the unit's PATH (`path` below), like `sops` would be.
            command = [
              "cat"
              "/run/secrets/extra.json"
            ];
            format = "json";
          }
        ];
        path = [ pkgs.coreutils ];
        clients.web1 = {
          keys = [ appKey ];
          networks = [ "127.0.0.1/32" ];
          secrets = [ "*" ];
        };
        settings = {
          tls = {
            cert_file = "/etc/ssl/locket.crt";
            key_file = "/run/secrets/tls.key";
          };
          v1 = {
            enable = true;
            key_file = "/run/secrets/v1.pem";
          };
        };
      };
      services.locket.client = {
        enable = true;
        server = "https://127.0.0.1:7410";
        serverFingerprint = fp;
        services.web = {
          secrets = [
            "DB_PASSWORD"
            "50%_OFF"
            "$HOME"
          ];
          group = "www";
          mode = "0440";
        };
      };
    }
  );
  server = sameHost.units."locket.service";
  fetch = sameHost.units."locket-fetch-web.service";
  serverToml = sameHost.etc."locket/server.toml".value;

  # Cases that must be refused.
  bad = config: host ({ services.locket = { enable = true; } // config; });
  withSettingsKey = key: (bad {
    sources = [ { type = "env"; } ];
    settings = key;
  }).failedAssertions;

  flake = (nixos { }).self;
  # `nix flake check` warns about outputs it does not know; these it knows
  # (NixOS/nix src/nix/flake.cc; `lib` since Nix 2.13, NixOS/nix#7606).
  knownOutputs = [
    "checks"
    "packages"
    "apps"
    "devShells"
    "formatter"
    "legacyPackages"
    "overlays"
    "nixosModules"
    "nixosConfigurations"
    "hydraJobs"
    "templates"
    "bundlers"
    "lib"
  ];

  checks = {
    # 1. The VM test's nodes evaluate with runNixOSTest's read-only pkgs,
    #    and the module sets nothing under nixpkgs.*.
    vmNodesEvaluateWithReadOnlyPkgs = builtins.all (n: n.failedAssertions == [ ] && n.warnings == [ ]) (
      builtins.attrValues vm.nodes
    );
    aModuleSettingNixpkgsOverlaysFailsThere = fails (
      (nixos {
        testFile = ./vm.nix;
        flake = ./fixtures/overlay-flake/flake.nix;
      }).test.nodes.server.units
    );
    packageDefaultsToTheFlakesOwnBuild =
      hasInfix "-locket-" (builtins.head (unitLines server "ExecStart"));

    # 3. The VM test waits only for log lines the server writes (checked
    #    against the real server by module_check.py); here: it uses them.
    vmTestUsesTheSharedExpectations =
      let
        e = import ./expectations.nix;
      in
      hasInfix e.wrongKey vm.testScript && hasInfix e.wrongAddress vm.testScript;

    # 4. The fetch unit keeps UMask=0077; render sets the folder mode itself.
    fetchUnitRendersGroupReadable =
      hasInfix "\"--mode\" \"0440\"" fetch && hasInfix "\"--group\" \"www\"" fetch
      && builtins.elem "UMask=0077" (lines fetch);

    # 5. A fetch gives up in bounded time: no restart loop, a start timeout
    #    above the client's own deadline, which defaults to 90 s.
    fetchGivesUpInBoundedTime =
      unitLines fetch "Restart" == [ ]
      && builtins.elem "TimeoutStartSec=105s" (lines fetch)
      && hasInfix "\"--timeout\" \"90s\"" fetch;

    # 6. Secret paths in settings go through credentials; store paths and
    #    relative paths there are refused.
    settingsSecretsAreCredentials =
      builtins.elem "LoadCredential=tls-key:/run/secrets/tls.key" (lines server)
      && builtins.elem "LoadCredential=v1-key:/run/secrets/v1.pem" (lines server)
      && serverToml.tls.key_file == "/run/credentials/locket.service/tls-key"
      && serverToml.v1.key_file == "/run/credentials/locket.service/v1-key"
      && serverToml.tls.cert_file == "/etc/ssl/locket.crt";
    settingsStorePathIsRefused = builtins.any (hasInfix "settings.tls.key_file") (withSettingsKey {
      tls.key_file = "${builtins.storeDir}/00000000000000000000000000000000-tls.key";
    });
    settingsRelativePathIsRefused = builtins.any (hasInfix "settings.v1.key_file must be an absolute path") (
      withSettingsKey { v1.key_file = "v1.pem"; }
    );

    # 7. op on the server's PATH when a onepassword-cli source exists, with
    #    a writable config folder; the operator's packages too.
    opOnPath =
      let
        path = builtins.head (filter (hasInfix "\"PATH=") (lines server));
      in
      hasInfix "1password-cli" path && hasInfix "coreutils" path;
    opConfigFolder = builtins.elem "Environment=\"OP_CONFIG_DIR=/var/lib/locket/op\"" (lines server);

    # 8. Server and client on one host: the fetch waits for the server.
    fetchWaitsForALocalServer =
      builtins.elem "locket.service" (splitString " " (lib.removePrefix "After=" (builtins.head (unitLines fetch "After"))))
      && builtins.any (hasInfix "locket.service") (unitLines fetch "Wants");

    # 9. Paths are absolute, outside the store, and never path literals
    #    (each beside a control that differs only in the path).
    controlWithAbsolutePathsEvaluates = !fails (bad {
      sources = [
        {
          type = "dotenv";
          path = "/run/secrets/app.env";
        }
      ];
      keyFile = "/run/secrets/key.pem";
    }).units;
    relativeSourcePathIsRefused = fails (bad {
      sources = [
        {
          type = "dotenv";
          path = "app.env";
        }
      ];
    }).units;
    storeSourcePathIsRefused = fails (bad {
      sources = [
        {
          type = "dotenv";
          path = "${builtins.storeDir}/00000000000000000000000000000000-app.env";
        }
      ];
    }).units;
    pathLiteralKeyIsRefused = fails (bad {
      sources = [ { type = "env"; } ];
      keyFile = ./keys/server-key.pem;
    }).units;

    # 10. Command lines as systemd reads them: % and $ escaped, store paths
    #     from lib.getExe'.
    execArgsEscaped = hasInfix "\"50%%_OFF\" \"$$HOME\"" fetch;

    # 11. A registry change reloads: only X-Reload-Triggers differs. A
    #     change a reload cannot apply restarts.
    registryChangeOnlyReloads =
      registryChange.changedUnits == [ "locket.service" ]
      && without "X-Reload-Triggers=" registryChange.units."locket.service"
        == without "X-Reload-Triggers=" vmServer.units."locket.service"
      && registryChange.units."locket.service" != vmServer.units."locket.service";
    listenChangeRestarts =
      let
        moved = host {
          services.locket = {
            enable = true;
            port = 7411;
            sources = [ { type = "env"; } ];
          };
        };
        base = host {
          services.locket = {
            enable = true;
            sources = [ { type = "env"; } ];
          };
        };
      in
      unitLines moved.units."locket.service" "X-Restart-Triggers"
      != unitLines base.units."locket.service" "X-Restart-Triggers";
    serverRunsFromTheEtcPath = hasInfix "\"--config\" \"/etc/locket/server.toml\"" server;

    # 12. No warning from `nix flake check`: known outputs, nixfmt.
    flakeOutputsAreKnown = builtins.all (n: builtins.elem n knownOutputs) (builtins.attrNames flake);
    formatterIsNixfmt = (flake.formatter.x86_64-linux.pname or "") == "nixfmt";

    # Security issue: the client side needs a pin.
    unpinnedClientIsRefused = builtins.any (hasInfix "is not pinned") (host {
      services.locket.client = {
        enable = true;
        server = "http://10.0.0.1:7410";
      };
    }).failedAssertions;
  };
  holds =
    name:
    let
      r = builtins.tryEval checks.${name};
    in
    r.success && r.value;
in
{
  # For module_check.py, which runs what these generate.
  cases.sameHost = sameHost.json;
  # A server that generates its key on first start (the guest test).
  cases.generatedKey =
    (host {
      services.locket = {
        enable = true;
        sources = [
          {
            type = "dotenv";
            path = "/run/secrets/app.env";
          }
        ];
        clients.local = {
          keys = [ appKey ];
          networks = [ "127.0.0.1/32" ];
          secrets = [ "*" ];
        };
        # Key generation under software emulation: the smallest size.
        settings.key_bits = 2048;
      };
    }).json;
  # A check that throws (an evaluation error of the module) fails alone.
  passed = builtins.length (builtins.filter holds (builtins.attrNames checks));
  failed = builtins.filter (n: !holds n) (builtins.attrNames checks);
}
