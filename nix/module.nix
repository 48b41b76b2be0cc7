# services.locket: the locket server, and the client side (a key, a client
# config, and per consuming service a oneshot that fetches its secrets into
# /run/locket/<service>/ before the service starts).
#
# Secrets never enter the Nix store: source files, tokens and the server key
# are paths handed to the units with LoadCredential=; assertions refuse
# store paths. The generated TOML holds only paths, names and public keys.
#
# The flake's `nixosModules.default` imports this file and adds an overlay
# that provides `pkgs.locket`.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    types
    ;

  cfg = config.services.locket;
  # The pure validators return messages; each one is a failed assertion.
  failedAssertions = map (message: {
    assertion = false;
    inherit message;
  });
  ccfg = cfg.client;
  locketLib = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };

  serverArgs = {
    inherit (cfg) listenAddress port keyFile clients settings;
    sources = cfg.sources;
    unit = "locket.service";
    stateDirectory = "/var/lib/locket";
  };
  serverSettings = locketLib.mkServerSettings serverArgs;
  serverConfigFile = settingsFormat.generate "locket-server.toml" serverSettings;

  clientSettings = locketLib.mkClientSettings {
    inherit (ccfg) server name keyFile serverFingerprint bind;
  };
  clientConfigFile = settingsFormat.generate "locket-client.toml" clientSettings;

  hardening = {
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    UMask = "0077";
    LimitCORE = 0;
  };

  sourceModule = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      type = mkOption {
        type = types.enum [
          "dotenv"
          "env"
          "file"
          "command"
          "onepassword-cli"
          "onepassword-connect"
        ];
        description = "Kind of source (see the locket README).";
      };
      path = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Secret file read by the source. Passed with LoadCredential=; must not be in the Nix store.";
      };
      token_file = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Token file (1Password). Passed with LoadCredential=; must not be in the Nix store.";
      };
    };
  };

  clientModule = types.submodule {
    options = {
      keys = mkOption {
        type = types.listOf types.str;
        description = "ed25519 public keys (the line printed by `locket-client keygen`); two during a rotation.";
      };
      networks = mkOption {
        type = types.listOf types.str;
        description = "CIDRs or addresses the client may call from.";
        example = [ "10.0.1.0/24" ];
      };
      secrets = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Secret names the client may read; exact names and `*`/`?` globs.";
      };
    };
  };

  consumerModule = types.submodule (
    { name, ... }:
    {
      options = {
        secrets = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Secret names to fetch; empty fetches every secret this client may read.";
        };
        user = mkOption {
          type = types.str;
          default = "root";
          description = "Owner of the secret files (the consuming service's user).";
        };
        group = mkOption {
          type = types.str;
          default = "root";
          description = "Group of the secret files.";
        };
        mode = mkOption {
          type = types.strMatching "0[0-7][0-7]0";
          default = "0400";
          description = "Mode of the secret files (0400 or 0440).";
        };
        envFile = mkOption {
          type = types.bool;
          default = true;
          description = "Also write `/run/locket/<name>/env` for `EnvironmentFile=`.";
        };
        unit = mkOption {
          type = types.str;
          default = "${name}.service";
          description = "The consuming unit, which requires the fetch and starts after it.";
        };
      };
    }
  );
in
{
  options.services.locket = {
    enable = mkEnableOption "the locket secrets cache server";

    package = mkPackageOption pkgs "locket" { };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address to listen on.";
    };

    port = mkOption {
      type = types.port;
      default = locketLib.defaultPort;
      description = "TCP port to listen on.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    keyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/locket-server-key.pem";
      description = ''
        The server's RSA private key (PKCS#8 PEM), passed with LoadCredential=.
        When null, the server generates one on first start under its state
        directory (/var/lib/locket/server-key.pem, mode 0600) and keeps it, so
        clients can pin its fingerprint (`locket fingerprint`).
      '';
    };

    sources = mkOption {
      type = types.listOf sourceModule;
      default = [ ];
      example = literalExpression ''[ { type = "dotenv"; path = "/run/secrets/app.env"; } ]'';
      description = "Where secrets come from, in order; later sources win on a name clash.";
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "EnvironmentFile= for the server (for `env` sources); outside the Nix store.";
    };

    clients = mkOption {
      type = types.attrsOf clientModule;
      default = { };
      description = "Registered clients by name: their keys, networks and grants.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        clock_skew = "20s";
        max_answer_bytes = 1048576;
      };
      description = "Further server.toml settings (RFC 42 freeform). The typed options above win.";
    };

    client = {
      enable = mkEnableOption "the locket client side (key, config, per-service fetch units)";

      package = mkPackageOption pkgs "locket" { };

      server = mkOption {
        type = types.str;
        example = "http://10.0.0.1:7410";
        description = "Server base URL.";
      };

      serverFingerprint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
        description = "Pinned server key fingerprint (`locket fingerprint` on the server). Null warns on every fetch.";
      };

      name = mkOption {
        type = types.str;
        default = config.networking.hostName;
        defaultText = literalExpression "config.networking.hostName";
        description = "This client's registered name.";
      };

      keyFile = mkOption {
        type = types.str;
        default = "/var/lib/locket-client/client.key";
        description = "The client's ed25519 private key, placed by the operator or generated (see generateKey).";
      };

      generateKey = mkOption {
        type = types.bool;
        default = true;
        description = "Generate keyFile on first boot when absent, and print its public key line to the journal (`journalctl -u locket-client-keygen`).";
      };

      bind = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Local source address for connections.";
      };

      services = mkOption {
        type = types.attrsOf consumerModule;
        default = { };
        example = literalExpression ''{ myapp = { secrets = [ "DB_PASSWORD" ]; user = "myapp"; }; }'';
        description = ''
          Per consuming service: a oneshot `locket-fetch-<name>` fetches the
          secrets into /run/locket/<name>/ (one file per secret, plus `env` for
          EnvironmentFile=) before the unit starts; the unit requires it, so
          it never starts without its secrets. Stopping the unit removes them.
        '';
      };
    };
  };

  config = mkMerge [
    (mkIf cfg.enable {
      assertions = failedAssertions (locketLib.serverErrors serverArgs)
      ++ [
        {
          assertion = cfg.environmentFile == null || !locketLib.isStorePath cfg.environmentFile;
          message = "services.locket.environmentFile must not be in the Nix store";
        }
      ];

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];
      # `locket check` and `locket fingerprint` for the operator.
      environment.systemPackages = [ cfg.package ];

      environment.etc."locket/server.toml".source = serverConfigFile;

      systemd.services.locket = {
        description = "locket secrets cache";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        restartTriggers = [ serverConfigFile ];
        serviceConfig = hardening // {
          Type = "notify";
          ExecStart = "${cfg.package}/bin/locket serve --config ${serverConfigFile}";
          # SIGHUP re-reads the config: a valid one is swapped in, an invalid one is refused.
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          WatchdogSec = "30s";
          # Room to mlock the loaded secret values (one region per set).
          LimitMEMLOCK = "64M";
          Restart = "on-failure";
          RestartSec = 5;
          DynamicUser = true;
          StateDirectory = "locket";
          StateDirectoryMode = "0700";
          WorkingDirectory = "/var/lib/locket";
          LoadCredential = locketLib.serverCredentials serverArgs;
          EnvironmentFile = mkIf (cfg.environmentFile != null) cfg.environmentFile;
          CapabilityBoundingSet = [ "" ];
          AmbientCapabilities = [ "" ];
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
        };
      };
    })

    (mkIf ccfg.enable {
      assertions = failedAssertions (locketLib.clientErrors ccfg);

      environment.systemPackages = [ ccfg.package ];
      environment.etc."locket/client.toml".source = clientConfigFile;
      systemd.tmpfiles.rules = [ "d /run/locket 0755 root root -" ];

      systemd.services = mkMerge [
        (mkIf ccfg.generateKey {
          locket-client-keygen = {
            description = "Generate the locket client key";
            wantedBy = [ "multi-user.target" ];
            unitConfig.ConditionPathExists = "!${ccfg.keyFile}";
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              UMask = "0077";
              StateDirectory = "locket-client";
              StateDirectoryMode = "0700";
            };
            script = ''
              mkdir -p "$(dirname ${lib.escapeShellArg ccfg.keyFile})"
              public=$(${ccfg.package}/bin/locket-client keygen --out ${lib.escapeShellArg ccfg.keyFile})
              echo "locket client key created; register it on the server as:"
              echo "  services.locket.clients.${ccfg.name}.keys = [ \"$public\" ];"
            '';
          };
        })
        (lib.mapAttrs' (
          consumer: svc:
          lib.nameValuePair (locketLib.fetchUnitName consumer) {
            description = "Fetch locket secrets for ${svc.unit}";
            before = [ svc.unit ];
            requiredBy = [ svc.unit ];
            partOf = [ svc.unit ];
            after = [ "network-online.target" ] ++ lib.optional ccfg.generateKey "locket-client-keygen.service";
            wants = [ "network-online.target" ];
            restartTriggers = [ clientConfigFile ];
            serviceConfig = hardening // {
              Type = "oneshot";
              RemainAfterExit = true;
              ExecStart = "${ccfg.package}/bin/locket-client --config ${clientConfigFile} ${locketLib.escapeArgs (locketLib.renderArgs consumer svc)}";
              ExecStopPost = "${pkgs.coreutils}/bin/rm -rf ${locketLib.secretsDir consumer}";
              ReadWritePaths = [ "/run/locket" ];
              # chown(2) is in @privileged, which the shared hardening denies.
              SystemCallFilter = [ "@system-service" ];
              CapabilityBoundingSet = [
                "CAP_CHOWN"
                "CAP_FOWNER"
                "CAP_DAC_OVERRIDE"
              ];
              RestrictAddressFamilies = [
                "AF_INET"
                "AF_INET6"
                "AF_UNIX"
              ];
              # Network failures at boot: retry, then give up so the consumer fails visibly.
              Restart = "on-failure";
              RestartSec = 3;
            };
            startLimitBurst = 5;
            startLimitIntervalSec = 60;
          }
        ) ccfg.services)
      ];
    })
  ];
}
