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
  # flake.nix's checks pass the flake; the cases load it themselves
  # (./nixos/eval.nix), so it is accepted and not needed.
  flake ? null,
  # The stub pkgs' overlays: the harnesses that run the units on this
  # machine's systemd pass one that gives pkgs.systemd its version.
  overlays ? [ ],
}:
let
  inherit (lib) hasInfix hasPrefix hasSuffix splitString filter;
  nixos = args: import ./nixos/eval.nix ({ inherit lib overlays; } // args);
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
  # The generated value of a /etc file, through the build-time check (a
  # runCommand over the pkgs.formats file) when there is one.
  tomlOf = e: if e.value != null then e.value else (builtins.head (builtins.attrValues e.build.inputs)).value;
  without = prefix: text: filter (l: !hasPrefix prefix l) (lines text);
  unitLines = unit: key: filter (hasPrefix "${key}=") (lines unit);
  unitValues = unit: key: map (lib.removePrefix "${key}=") (unitLines unit key);

  fp = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
  appKey = "ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U=";

  # The VM test's nodes, as runNixOSTest evaluates them (read-only pkgs).
  vm = (nixos { testFile = ./vm.nix; }).test;
  vmServer = vm.nodes.server;
  registryChange = vmServer.specialisations.registry-change;

  # Server and client on one host, with every kind of path the module
  # hands to units, and names that systemd would expand.
  # `op` is unfree: the host's nixpkgs must allow it (docs/nixos.md says how).
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
  serverToml = tomlOf sameHost.etc."locket/server.toml";
  samePlan = sameHost.etc."locket/delivery.toml".value or { };

  # Delivery (issue #15): two consumers, one with every per-consumer
  # option on files and a boot cache, one with credentials; `extra` bends
  # one thing for the cases that compare two configurations.
  deliveryWith =
    extra:
    hostWith { } (
      { config, ... }:
      lib.recursiveUpdate {
        networking.hostName = "web2";
        services.locket.client = {
          enable = true;
          server = "http://10.0.0.1:7410";
          serverFingerprint = fp;
          watch.interval = "30s";
          cacheKey = "tpm2";
          services.app = {
            secrets = [
              "DB_PASSWORD"
              "db/user"
            ];
            user = "app";
            group = "app";
            restartUnits = [ "app.service" ];
            reloadUnits = [ "nginx.service" ];
            onChange = "echo \"$HOME\" 50% > /run/locket/app/changed";
            cacheMaxAge = "7d";
            templates."app.ini".content = "[db]\npassword = {{ DB_PASSWORD }}\n";
            templates.dsn = {
              content = "postgres://{{ db/user }}:{{ DB_PASSWORD }}@db/app";
              mode = "0440";
              group = "www";
            };
          };
          services.worker = {
            secrets = [
              "API/TOKEN"
              "50%_OFF"
            ];
            credentials = true;
            envFile = false;
            restartUnits = [ "worker.service" ];
            templates."worker.conf".content = "token={{ API/TOKEN }}\n";
          };
        };
        # Another module refers to a delivered file through `paths`.
        systemd.services.app = {
          environment.DB_PASSWORD_FILE = config.services.locket.client.services.app.paths.DB_PASSWORD;
          script = "exec sleep infinity";
        };
        systemd.services.worker = {
          serviceConfig.DynamicUser = true;
          script = "cat \"$CREDENTIALS_DIRECTORY/API_TOKEN\"";
        };
      } extra
    );
  delivery = deliveryWith { };
  deliveryPlan = delivery.etc."locket/delivery.toml".value or { };
  stubPkgs = delivery.pkgs;
  # A unit's text, "" when it is missing (a missing attribute is an error
  # tryEval cannot catch: it would stop every check, not fail one).
  unitOf = h: name: h.units.${name} or "";
  appFetch = unitOf delivery "locket-fetch-app.service";
  workerFetch = unitOf delivery "locket-fetch-worker.service";
  watcher = unitOf delivery "locket-watch.service";
  execStart = unit: builtins.head (unitLines unit "ExecStart" ++ [ "" ]);
  # A client host with the given consumers and client options.
  clientWith =
    options:
    host {
      services.locket.client = {
        enable = true;
        server = "http://10.0.0.1:7410";
        serverFingerprint = fp;
      }
      // options;
    };
  # The failed assertions of one consumer `c`.
  refusedConsumer = consumer: (clientWith { services.c = consumer; }).failedAssertions;
  refusedWith = text: consumer: builtins.any (hasInfix text) (refusedConsumer consumer);

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
    # The one output Nix does not know, so `nix flake check` prints
    # "unknown flake output 'homeManagerModules'" for it (as for sops-nix
    # and agenix): the name home-manager users import modules by.
    "homeManagerModules"
  ];

  # The sealed last-good set (#26): one option.
  sealed = host {
    services.locket = {
      enable = true;
      sources = [
        {
          type = "dotenv";
          path = "/run/secrets/app.env";
        }
      ];
      sealedSet.enable = true;
      sealedSet.maxAge = "12h";
      sealedSet.key = "host";
    };
  };
  sealedServer = sealed.units."locket.service";
  sealKey = sealed.units."locket-seal-key.service" or "";
  sealedToml = tomlOf sealed.etc."locket/server.toml";

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
    # #31: the module guide is the module's meta.doc, and fit for the NixOS
    # manual, which takes every module's meta.doc as a chapter: one level-1
    # heading, first; every heading outside code blocks carries the `{#id}`
    # nixos-render-docs requires; no id twice.
    moduleGuideIsAManualChapter =
      let
        docs = map (d: d.value) (host { }).config.meta.doc;
        text = builtins.readFile (builtins.head docs);
        step =
          acc: l:
          if hasPrefix "```" l then
            acc // { fence = !acc.fence; }
          else if !acc.fence && builtins.match "#+ .*" l != null then
            acc // { headings = acc.headings ++ [ l ]; }
          else
            acc;
        headings = (builtins.foldl' step { fence = false; headings = [ ]; } (splitString "\n" text)).headings;
        ids = map (h: builtins.match ".* [{]#([a-z0-9-]+)[}]" h) headings;
      in
      builtins.length docs == 1
      && baseNameOf (toString (builtins.head docs)) == "nixos.md"
      && builtins.length headings > 5
      && hasPrefix "# " (builtins.head headings)
      && builtins.length (filter (hasPrefix "# ") headings) == 1
      && !(builtins.elem null ids)
      && builtins.length (lib.unique ids) == builtins.length ids;

    # #28: one option adds the alert rules to services.prometheus.rules.
    prometheusRulesOption =
      let
        on = host { services.locket.prometheusRules = true; };
        off = host { };
      in
      on.config.services.prometheus.rules == [ (builtins.readFile ../../docs/monitoring/alerts.rules.yml) ]
      && off.config.services.prometheus.rules == [ ];

    # #31: the package points at its NixOS test, as nixpkgs packages do.
    packageCarriesItsVmTest =
      let
        pkg = flake.packages.x86_64-linux.locket;
      in
      pkg.passthru.tests.vm-handshake.name == "vm-test-run-locket-handshake"
      && pkg.tests.vm-handshake.drvPath == flake.checks.x86_64-linux.vm-handshake.drvPath
      && flake.packages.x86_64-linux.locket-client.tests ? vm-handshake;

    packageDefaultsToTheFlakesOwnBuild =
      hasInfix "-locket-" (builtins.head (unitLines server "ExecStart"));

    # 3. The VM test waits only for log lines the server writes (checked
    #    against the real server by module_check.py); here: it uses them.
    vmTestUsesTheSharedExpectations =
      let
        e = import ./expectations.nix;
      in
      hasInfix e.wrongKey vm.testScript && hasInfix e.wrongAddress vm.testScript;

    # 4. The fetch unit keeps UMask=0077; the client sets the modes the
    #    plan names itself.
    fetchUnitRendersGroupReadable =
      (samePlan.consumers.web.mode or null) == "0440"
      && (samePlan.consumers.web.group or null) == "www"
      && (samePlan.consumers.web.owner or null) == "root"
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

    # The sealed last-good set: in the state directory, its key handed over
    # by PID 1 from a credential systemd-creds sealed, made once before the
    # server starts; nothing of it when the option is off.
    sealedSetInTheStateDirectory =
      sealedToml.sealed_set == {
        path = "/var/lib/locket/last-good.sealed";
        max_age = "12h";
        key_file = "/run/credentials/locket.service/seal-key";
      };
    sealedSetKeyByLoadCredentialEncrypted =
      builtins.elem "LoadCredentialEncrypted=seal-key:/var/lib/locket-seal/seal-key.cred" (lines sealedServer);
    sealedSetKeyMadeOnceBeforeTheServer =
      hasInfix "ConditionPathExists=!/var/lib/locket-seal/seal-key.cred" sealKey
      && hasInfix "Before=locket.service" sealKey
      && hasInfix ''"seal-key" "--out" "/var/lib/locket-seal/seal-key.cred" "--with-key" "host"'' sealKey
      && builtins.elem "locket.service" (sealed.links."locket-seal-key.service".requiredBy or [ ]);
    # Bound requests are the default for new installations only.
    boundRequestsByStateVersion =
      serverToml.require_bound_requests == false
      && (tomlOf
        (host {
          system.stateVersion = "26.05";
          services.locket = {
            enable = true;
            sources = [ { type = "env"; prefix = "APP_"; } ];
          };
        }).etc."locket/server.toml"
      ).require_bound_requests;
    sealedSetOffByDefault =
      !(serverToml ? sealed_set)
      && !(hasInfix "LoadCredentialEncrypted" server)
      && !(sameHost.units ? "locket-seal-key.service");

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

    # 10. Command lines as systemd reads them, store paths from
    #     lib.getExe'. Secret names no longer go through a command line:
    #     the plan holds them as they are (TOML has no specifiers), and
    #     LoadCredential= doubles systemd's specifier character.
    execArgsEscaped =
      (samePlan.consumers.web.secrets or null) == [
        "DB_PASSWORD"
        "50%_OFF"
        "$HOME"
      ]
      && !(hasInfix "50%" fetch) && !(hasInfix "HOME" (execStart fetch))
      && builtins.elem "LoadCredential=50%%_OFF:/run/locket/worker/50%%_OFF" (lines (unitOf delivery "worker.service"));

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

    # 10b. A consumer that takes credentials and is never restarted keeps
    #      old values for ever: warned, naming the consumer and the fix.
    credentialsWithoutRestartWarn =
      let
        with_ =
          extra:
          host {
            services.locket.client = {
              enable = true;
              server = "http://10.0.0.1:7410";
              serverFingerprint = fp;
              services.app = {
                secrets = [ "API_TOKEN" ];
                credentials = true;
              }
              // extra;
            };
          };
      in
      builtins.any (w: hasInfix "services.locket.client.services.app: credentials = true, but neither restartUnits nor onChange" w) (with_ { }).warnings
      && (with_ { restartUnits = [ "app.service" ]; }).warnings == [ ]
      && (with_ { onChange = "true"; }).warnings == [ ];

    # 10c. The package comes from the host's own pkgs (its overlays, its
    #      cross-compilation), not from a second nixpkgs: an overlay the
    #      host applies reaches it, and the client side uses the same one.
    packageFromTheHostsPkgs =
      let
        marked = nixos {
          overlays = [
            (final: prev: {
              rustPlatform = prev.rustPlatform // {
                buildRustPackage = args: prev.rustPlatform.buildRustPackage (args // { marker = "host-pkgs"; });
              };
            })
          ];
          modules = [
            (nixos { }).self.nixosModules.default
            {
              services.locket = {
                enable = true;
                sources = [ { type = "env"; } ];
                client = {
                  enable = true;
                  server = "http://10.0.0.1:7410";
                  serverFingerprint = fp;
                };
              };
            }
          ];
        };
        c = marked.config.services.locket;
      in
      (c.package.marker or null) == "host-pkgs" && c.client.package == c.package;

    # 11b. A reload whose outcome systemd sees: ExecReload= waits for the
    #      server's answer; systemd 253+ (the stub's 258) gets the reload
    #      protocol, whose own signal is one that changes nothing; 252
    #      (Debian's, in the guest) gets Type=notify and no ReloadSignal=.
    reloadWaitsForTheOutcome =
      let
        on252 = host {
          services.locket = {
            enable = true;
            sources = [ { type = "env"; } ];
          };
          systemd.package = (nixos { }).pkgs.systemd // {
            version = "252";
          };
        };
        old = on252.units."locket.service";
      in
      unitLines server "Type" == [ "Type=notify-reload" ]
      && unitLines server "ReloadSignal" == [ "ReloadSignal=SIGCONT" ]
      && builtins.length (unitLines server "ExecReload") == 1
      && hasInfix "/bin/locket\" \"reload\" \"--config\" \"/etc/locket/server.toml\" \"--wait\"" server
      && unitLines server "RuntimeDirectory" == [ "RuntimeDirectory=locket-server" ]
      && unitLines old "Type" == [ "Type=notify" ]
      && unitLines old "ReloadSignal" == [ ]
      && unitLines old "ExecReload" == unitLines server "ExecReload";

    # 12. No warning from `nix flake check`: known outputs, nixfmt.
    flakeOutputsAreKnown = builtins.all (n: builtins.elem n knownOutputs) (builtins.attrNames flake);
    formatterIsNixfmt = (flake.formatter.x86_64-linux.pname or "") == "nixfmt";

    # 13. Delivery (issue #15). The plan, exactly: every per-consumer
    #     option, null keys dropped, the host's systemd and shell.
    deliveryPlanIsExact =
      deliveryPlan == {
        status_file = "/run/locket-watch/status.json";
        metrics_file = "/run/locket-watch/locket-watch.prom";
        systemctl = "${stubPkgs.systemd}/bin/systemctl";
        systemd_creds = "${stubPkgs.systemd}/bin/systemd-creds";
        cache_dir = "/var/lib/locket-client/cache";
        cache_key = "tpm2";
        prune_under = "/run/locket";
        credential_socket = "/run/locket/credentials.sock";
        consumers = {
          app = {
            dir = "/run/locket/app";
            secrets = [
              "DB_PASSWORD"
              "db/user"
            ];
            mode = "0400";
            owner = "app";
            group = "app";
            env_file = "/run/locket/app/env";
            restart_units = [ "app.service" ];
            reload_units = [ "nginx.service" ];
            on_change = [
              stubPkgs.runtimeShell
              "-c"
              "echo \"$HOME\" 50% > /run/locket/app/changed"
            ];
            cache_max_age = "7d";
            templates = {
              "app.ini" = {
                content = "[db]\npassword = {{ DB_PASSWORD }}\n";
                mode = "0400";
                owner = "app";
                group = "app";
              };
              dsn = {
                content = "postgres://{{ db/user }}:{{ DB_PASSWORD }}@db/app";
                mode = "0440";
                owner = "app";
                group = "www";
              };
            };
          };
          worker = {
            dir = "/run/locket/worker";
            secrets = [
              "API/TOKEN"
              "50%_OFF"
            ];
            mode = "0400";
            owner = "root";
            group = "root";
            restart_units = [ "worker.service" ];
            reload_units = [ ];
            templates."worker.conf" = {
              content = "token={{ API/TOKEN }}\n";
              mode = "0400";
              owner = "root";
              group = "root";
            };
          };
        };
      }
      && hasSuffix "-locket-delivery.toml" (delivery.etc."locket/delivery.toml".source or "");

    # The fetch unit delivers its one consumer from the plan's fixed path.
    fetchUnitDeliversFromThePlan =
      builtins.all (
        { unit, consumer }:
        hasSuffix ''"--config" "/etc/locket/client.toml" "--timeout" "90s" "deliver" "--plan" "/etc/locket/delivery.toml" "--consumer" "${consumer}"'' (
          execStart unit
        )
        && hasInfix "-locket-" (execStart unit)
        && hasInfix "/bin/locket-client\" " (execStart unit)
      ) [
        { unit = appFetch; consumer = "app"; }
        { unit = workerFetch; consumer = "worker"; }
        { unit = fetch; consumer = "web"; }
      ]
      # What the fetch unit was before stays: order, bound, sandbox.
      && builtins.elem "Before=app.service" (lines appFetch)
      && builtins.elem "PartOf=app.service" (lines appFetch)
      && builtins.elem "Type=oneshot" (lines appFetch)
      && builtins.elem "TimeoutStartSec=105s" (lines appFetch)
      && builtins.elem "CapabilityBoundingSet=CAP_CHOWN" (lines appFetch)
      && (delivery.links."locket-fetch-app.service".requiredBy or null) == [ "app.service" ];

    # Only a change to a consumer's own entry restarts its fetch unit (and
    # so the consumer); the watcher restarts on any plan change.
    # #31: a switch never restarts a fetch unit (which would restart its
    # running consumer through Requires=, and leave it stopped when no
    # server answers then), nor removes a consumer's files when it stops:
    # the watcher restarts on any plan change and delivers the new plan,
    # each delivery prunes the folders under /run/locket that no consumer
    # uses, and /run/locket is a ramfs every delivery unit waits for.
    planChangeNeverRestartsAFetchUnit =
      builtins.all (
        u:
        builtins.elem "X-RestartIfChanged=false" (lines (unitOf delivery u))
        && unitLines (unitOf delivery u) "ExecStopPost" == [ ]
        && builtins.elem "RequiresMountsFor=/run/locket" (lines (unitOf delivery u))
      ) [ "locket-fetch-app.service" "locket-fetch-worker.service" ]
      && builtins.elem "RequiresMountsFor=/run/locket" (lines watcher)
      && !(builtins.elem "X-RestartIfChanged=false" (lines watcher))
      && (
        let
          changed = deliveryWith { services.locket.client.services.worker.reloadUnits = [ "other.service" ]; };
          triggers = h: u: unitLines (unitOf h u) "X-Restart-Triggers";
        in
        triggers changed "locket-watch.service" != triggers delivery "locket-watch.service"
      )
      && (tomlOf delivery.etc."locket/delivery.toml").prune_under == "/run/locket";
    secretsLiveOnANeverSwappedRamfs =
      lines (unitOf delivery "run-locket.mount") == [
        "[Unit]"
        "ConditionDirectoryNotEmpty=!/run/locket"
        "Description=RAM file system for locket's delivered secrets (never swapped)"
        "[Mount]"
        "Options=mode=0755,nosuid,nodev,noexec"
        "Type=ramfs"
        "What=ramfs"
        "Where=/run/locket"
      ];

    # One watcher per host, whatever the number of consumers.
    oneWatcherPerHost =
      filter (hasInfix "watch") (builtins.attrNames delivery.units) == [ "locket-watch.service" ]
      && hasSuffix ''"--config" "/etc/locket/client.toml" "--timeout" "90s" "deliver" "--plan" "/etc/locket/delivery.toml" "--watch" "30s"'' (
        execStart watcher
      )
      && builtins.all (l: builtins.elem l (lines watcher)) [
        "Type=notify"
        "NotifyAccess=main"
        "Restart=on-failure"
        "RestartSec=10"
        "RuntimeDirectory=locket-watch"
        "RuntimeDirectoryMode=0755"
        "ReadWritePaths=/run/locket"
        "SystemCallFilter=@system-service"
        "CapabilityBoundingSet=CAP_CHOWN"
        "CapabilityBoundingSet=CAP_FOWNER"
        "CapabilityBoundingSet=CAP_DAC_OVERRIDE"
        "ProtectSystem=strict"
        "NoNewPrivileges=true"
        # After the fetch units, so its first round at boot compares with
        # what the consumers started on.
        "After=network-online.target locket-client-keygen.service locket-fetch-app.service locket-fetch-worker.service"
        "Wants=network-online.target"
      ]
      && (delivery.links."locket-watch.service".wantedBy or null) == [ "multi-user.target" ];
    watcherWaitsForALocalServer =
      let
        w = unitOf sameHost "locket-watch.service";
      in
      builtins.any (hasPrefix "After=network-online.target locket-client-keygen.service locket.service locket-fetch-") (lines w)
      && builtins.elem "Wants=network-online.target locket.service" (lines w);
    noWatcherWhenDisabledOrWithoutConsumers =
      let
        off = deliveryWith { services.locket.client.watch.enable = false; };
        none = clientWith { };
      in
      !(off.units ? "locket-watch.service")
      && off.units ? "locket-fetch-app.service"
      && !(none.units ? "locket-watch.service")
      && delivery.units ? "locket-watch.service";

    # credentials = true: LoadCredential= on the consumer's own unit, one
    # per secret (`/` as `_`) and per template.
    credentialsOnTheConsumersUnit =
      unitLines (unitOf delivery "worker.service") "LoadCredential" == [
        "LoadCredential=API_TOKEN:/run/locket/worker/API_TOKEN"
        "LoadCredential=50%%_OFF:/run/locket/worker/50%%_OFF"
        "LoadCredential=worker.conf:/run/locket/worker/worker.conf"
      ]
      && unitLines (unitOf delivery "app.service") "LoadCredential" == [ ]
      # Another unit name than the consumer's.
      && unitLines (unitOf (clientWith {
        services.c = {
          secrets = [ "A" ];
          credentials = true;
          unit = "other@x.service";
        };
      }) "other@x.service") "LoadCredential" == [ "LoadCredential=A:/run/locket/c/A" ];

    # `paths`: where each secret and template is, for other modules.
    pathsOfSecretsAndTemplates =
      delivery.config.services.locket.client.services.app.paths == {
        DB_PASSWORD = "/run/locket/app/DB_PASSWORD";
        "db/user" = "/run/locket/app/db_user";
        "app.ini" = "/run/locket/app/app.ini";
        dsn = "/run/locket/app/dsn";
      }
      && builtins.elem ''Environment="DB_PASSWORD_FILE=/run/locket/app/DB_PASSWORD"'' (lines (unitOf delivery "app.service"))
      && fails (deliveryWith { services.locket.client.services.app.paths.DB_PASSWORD = "/tmp/x"; }).units;

    # The boot cache: the state folder writable, the host key set up
    # outside the sandbox, the TPM2 reachable; only where a consumer asks.
    cacheUnitsGetTheCacheAndTheTpm =
      let
        cacheLines = [
          "ReadWritePaths=/var/lib/locket-client"
          "ExecStartPre=+${stubPkgs.systemd}/bin/systemd-creds setup"
          "PrivateDevices=false"
          "DevicePolicy=closed"
          "DeviceAllow=/dev/tpmrm0 rw"
        ];
        has = unit: builtins.all (l: builtins.elem l (lines unit)) cacheLines;
        hasNone = unit: !(builtins.any (l: builtins.elem l (lines unit)) cacheLines);
        noCache = deliveryWith { services.locket.client.services.app.cacheMaxAge = null; };
        rule = "d /var/lib/locket-client/cache 0700 root root -";
      in
      has appFetch
      && has watcher
      && hasNone workerFetch
      && builtins.elem "PrivateDevices=true" (lines workerFetch)
      && builtins.elem rule delivery.tmpfiles.rules
      && noCache.units ? "locket-watch.service"
      && hasNone (unitOf noCache "locket-watch.service")
      && hasNone (unitOf noCache "locket-fetch-app.service")
      && !(builtins.elem rule noCache.tmpfiles.rules);

    # Durations as the client reads them; cacheKey only what systemd-creds takes.
    durationsAndCacheKeyAreChecked =
      !fails (deliveryWith { services.locket.client.watch.interval = "1h 30min"; }).units
      && fails (deliveryWith { services.locket.client.watch.interval = "soon"; }).units
      && fails (deliveryWith { services.locket.client.watch.interval = "0s"; }).units
      && fails (deliveryWith { services.locket.client.services.app.cacheMaxAge = "7"; }).units
      && fails (deliveryWith { services.locket.client.cacheKey = "tpm"; }).units;

    # Each refusal names the option and says what to do; a control with
    # the same shape passes.
    deliveryControlHasNoAssertions =
      delivery.failedAssertions == [ ]
      && refusedConsumer {
        secrets = [ "A" ];
        envFile = false;
        templates.env.content = "x";
        credentials = true;
      } == [ ];
    credentialsForEverySecretIsRefused = refusedWith "services.locket.client.services.c.credentials: secrets is empty" {
      credentials = true;
    };
    credentialsOnANonServiceIsRefused =
      refusedWith "services.locket.client.services.c.credentials: the unit c.socket is not a service" {
        secrets = [ "A" ];
        credentials = true;
        unit = "c.socket";
      };
    credentialNameWithAColonIsRefused = refusedWith "the file name `a:b` has a `:`" {
      secrets = [ "a:b" ];
      credentials = true;
    };
    templateOnASecretsFileIsRefused =
      refusedWith ''services.locket.client.services.c.templates."db_user": the secret db/user is delivered to the same file /run/locket/c/db_user'' {
        secrets = [ "db/user" ];
        templates.db_user.content = "x";
      };
    templateOnTheEnvFileIsRefused = refusedWith "services.locket.client.services.c.templates.env: /run/locket/c/env is the environment file" {
      templates.env.content = "x";
    };
    templateWithoutAFileNameIsRefused = builtins.all (
      name:
      refusedWith ''services.locket.client.services.c.templates."${name}": not a file name in /run/locket/c'' {
        templates.${name}.content = "x";
      }
    ) [ "" "." ".." ".locket-manifest" "conf/app.ini" ];
    restartUnitsMustBeUnitNames = refusedWith "services.locket.client.services.c.restartUnits: `app` is not a unit name" {
      restartUnits = [ "app" ];
    };
    reloadUnitsMustBeUnitNames = refusedWith "services.locket.client.services.c.reloadUnits: `nginx` is not a unit name" {
      reloadUnits = [
        "nginx"
        "ok.service"
      ];
    };

    # delivery = "socket": no fetch unit; the consumer's unit asks the
    # watcher's socket for each secret and template, after and requiring
    # locket-watch.socket (root's, 0600, in /run/locket once mounted), and
    # refuses to start on an empty credential.
    socketDelivery =
      let
        h = clientWith {
          services.sock = {
            secrets = [
              "DB_PASSWORD"
              "db/user"
            ];
            delivery = "socket";
            restartUnits = [ "sock.service" ];
            templates."app.ini".content = "p = {{ DB_PASSWORD }}\n";
          };
        };
        unit = unitOf h "sock.service";
        socket = unitOf h "locket-watch.socket";
        plan = h.etc."locket/delivery.toml".value;
      in
      h.failedAssertions == [ ]
      && h.warnings == [ ]
      && !(h.units ? "locket-fetch-sock.service")
      && unitValues unit "LoadCredential" == [
        "DB_PASSWORD:/run/locket/credentials.sock"
        "app.ini:/run/locket/credentials.sock"
        "db_user:/run/locket/credentials.sock"
      ]
      && unitValues unit "After" == [ "locket-watch.socket" ]
      && unitValues unit "Requires" == [ "locket-watch.socket" ]
      && builtins.length (unitValues unit "ExecStartPre") == 1
      && unitValues socket "ListenStream" == [ "/run/locket/credentials.sock" ]
      && unitValues socket "SocketMode" == [ "0600" ]
      && unitValues socket "Service" == [ "locket-watch.service" ]
      && unitValues socket "RequiresMountsFor" == [ "/run/locket" ]
      # A host without socket consumers has no socket.
      && !(delivery.units ? "locket-watch.socket")
      && builtins.elem "locket-watch.socket" (splitString " " (toString (unitValues (unitOf h "locket-watch.service") "After")))
      && plan.credential_socket == "/run/locket/credentials.sock"
      && plan.consumers.sock == {
        delivery = "socket";
        unit = "sock.service";
        secrets = [
          "DB_PASSWORD"
          "db/user"
        ];
        restart_units = [ "sock.service" ];
        templates."app.ini".content = "p = {{ DB_PASSWORD }}\n";
      }
      && h.config.services.locket.client.services.sock.paths == {
        DB_PASSWORD = "/run/credentials/sock.service/DB_PASSWORD";
        "db/user" = "/run/credentials/sock.service/db_user";
        "app.ini" = "/run/credentials/sock.service/app.ini";
      };
    socketWithCredentialsIsRefused = refusedWith "services.locket.client.services.c.credentials: a delivery = \"socket\" consumer already reaches its unit as credentials" {
      secrets = [ "A" ];
      delivery = "socket";
      credentials = true;
    };
    socketForEverySecretIsRefused = refusedWith "services.locket.client.services.c.secrets: a delivery = \"socket\" consumer needs each secret by name" {
      delivery = "socket";
    };
    socketWithReloadUnitsIsRefused = refusedWith "services.locket.client.services.c.reloadUnits: a delivery = \"socket\" consumer gets its values only when its unit starts" {
      secrets = [ "A" ];
      delivery = "socket";
      reloadUnits = [ "c.service" ];
    };
    socketWithCacheIsRefused = refusedWith "services.locket.client.services.c.cacheMaxAge: a delivery = \"socket\" consumer has no boot cache" {
      secrets = [ "A" ];
      delivery = "socket";
      cacheMaxAge = "1h";
    };
    socketWithoutTheWatcherIsRefused = builtins.any (hasInfix "services.locket.client.services.c: delivery = \"socket\" is served by locket-watch, but services.locket.client.watch.enable is false") (clientWith {
      watch.enable = false;
      services.c = {
        secrets = [ "A" ];
        delivery = "socket";
        restartUnits = [ "c.service" ];
      };
    }).failedAssertions;
    socketWithoutRestartUnitsWarns = builtins.any (hasInfix "delivery = \"socket\", but neither restartUnits nor onChange is set") (clientWith {
      services.c = {
        secrets = [ "A" ];
        delivery = "socket";
      };
    }).warnings;

    # The VM test's client as the guest test expects it: the template, the
    # restart, the cache, the credential, a 5 s watcher.
    vmClientDelivery =
      let
        c = vm.nodes.client;
        demo = c.etc."locket/delivery.toml".value.consumers.demo-consumer or { };
      in
      (demo.templates."app.ini".content or null) == "[db]\npassword = {{ DB_PASSWORD }}\n"
      && (demo.restart_units or null) == [ "demo-consumer.service" ]
      && (demo.cache_max_age or null) == "10m"
      && builtins.elem "LoadCredential=API_TOKEN:/run/locket/cred-consumer/API_TOKEN" (lines (unitOf c "cred-consumer.service"))
      && hasSuffix ''"--watch" "5s"'' (execStart (unitOf c "locket-watch.service"))
      && !(vm.nodes.intruder.units ? "locket-watch.service");

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
  # A settings value the module's types let through and the server
  # refuses: the build of server.toml (`locket check --offline`) fails.
  cases.badSettings =
    (host {
      services.locket = {
        enable = true;
        sources = [ { type = "env"; } ];
        settings.no_such_setting = 1;
      };
    }).json;
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
        # The sealed last-good set, under systemd 252 (the guest test).
        sealedSet.enable = true;
        sealedSet.key = "host";
      };
    }).json;
  # A check that throws (an evaluation error of the module) fails alone.
  passed = builtins.length (builtins.filter holds (builtins.attrNames checks));
  failed = builtins.filter (n: !holds n) (builtins.attrNames checks);
}
