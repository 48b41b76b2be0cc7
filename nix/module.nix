# services.locket: the locket server, and the client side (a key, a client
# config, and per consuming service a oneshot that fetches its secrets into
# /run/locket/<service>/ before the service starts).
#
# Secrets never enter the Nix store: source files, tokens, the server key and
# every secret path in `settings` are absolute paths outside the store,
# handed to the units with LoadCredential=. The generated TOML holds only
# paths, names and public keys.
#
# The module sets nothing under `nixpkgs.*` (so it works with read-only
# pkgs, as in `testers.runNixOSTest` and fleets that set `nixpkgs.pkgs`):
# the flake's `nixosModules.default` defaults `package` to its own build,
# and `overlays.default` is there for those who want `pkgs.locket`.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib)
    getExe'
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.locket;
  ccfg = cfg.client;
  locketLib = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };
  # The pure validators return messages; each one is a failed assertion.
  failedAssertions = map (message: {
    assertion = false;
    inherit message;
  });

  # Both configs live at fixed paths under /etc, so the units' command lines
  # do not change when only the config does: a registry change then reloads
  # the server (reloadTriggers) instead of restarting it.
  serverConfigPath = "/etc/locket/server.toml";
  clientConfigPath = "/etc/locket/client.toml";

  serverArgs = {
    inherit (cfg)
      listenAddress
      port
      keyFile
      nextKeyFile
      clients
      settings
      sources
      ;
    unit = "locket.service";
    stateDirectory = "/var/lib/locket";
  };
  serverSettings = locketLib.mkServerSettings serverArgs;
  serverConfigFile = settingsFormat.generate "locket-server.toml" serverSettings;
  usesOpCli = lib.any (s: s.type == "onepassword-cli") cfg.sources;

  clientSettings = locketLib.mkClientSettings {
    inherit (ccfg)
      server
      name
      keyFile
      serverFingerprint
      serverFingerprints
      knownServersFile
      bind
      ;
  };
  clientConfigFile = settingsFormat.generate "locket-client.toml" clientSettings;

  # Hardening shared by the server and the fetch units.
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
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    UMask = "0077";
    LimitCORE = 0;
  };

  secretPath = types.externalPath;

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
        type = types.nullOr secretPath;
        default = null;
        description = "Secret file read by the source (absolute, outside the Nix store). Handed to the unit with LoadCredential=.";
      };
      token_file = mkOption {
        type = types.nullOr secretPath;
        default = null;
        description = "Token file (1Password; absolute, outside the Nix store). Handed to the unit with LoadCredential=.";
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
          description = "Mode of the secret files: 0400, or 0440 for the group (the folder is then 0750).";
        };
        envFile = mkOption {
          type = types.bool;
          default = true;
          description = "Also write `/run/locket/<name>/env` for `EnvironmentFile=`.";
        };
        unit = mkOption {
          type = types.str;
          default = "${name}.service";
          defaultText = literalExpression ''"<name>.service"'';
          description = "The consuming unit, which requires the fetch and starts after it.";
        };
      };
    }
  );

  fetchUnit =
    consumer: svc:
    let
      timeout = toString ccfg.fetchTimeout;
    in
    {
      description = "Fetch locket secrets for ${svc.unit}";
      before = [ svc.unit ];
      requiredBy = [ svc.unit ];
      partOf = [ svc.unit ];
      after = [
        "network-online.target"
      ]
      ++ optional ccfg.generateKey "locket-client-keygen.service"
      # A server on this host: wait for it instead of timing out against it.
      ++ optional cfg.enable "locket.service";
      wants = [ "network-online.target" ] ++ optional cfg.enable "locket.service";
      restartTriggers = [ clientConfigFile ];
      serviceConfig = hardening // {
        Type = "oneshot";
        RemainAfterExit = true;
        # The client retries with backoff across every server until this
        # deadline, then exits with one line naming the servers it tried;
        # the consumer (which requires this unit) then fails visibly instead
        # of holding up boot and `nixos-rebuild switch`.
        ExecStart = utils.escapeSystemdExecArgs (
          [
            (getExe' ccfg.package "locket-client")
            "--config"
            clientConfigPath
            "--timeout"
            "${timeout}s"
          ]
          ++ locketLib.renderArgs consumer svc
        );
        ExecStopPost = utils.escapeSystemdExecArgs [
          (getExe' pkgs.coreutils "rm")
          "-rf"
          (locketLib.secretsDir consumer)
        ];
        TimeoutStartSec = "${toString (ccfg.fetchTimeout + 15)}s";
        ReadWritePaths = [ "/run/locket" ];
        # chown(2) is in @privileged, which the shared hardening denies.
        SystemCallFilter = [ "@system-service" ];
        CapabilityBoundingSet = [
          "CAP_CHOWN"
          "CAP_FOWNER"
          "CAP_DAC_OVERRIDE"
        ];
      };
    };
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
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/locket-server-key.pem";
      description = ''
        The server's RSA private key (PKCS#8 PEM), absolute and outside the
        Nix store, handed to the unit with LoadCredential=. When null, the
        server generates one on first start under its state directory
        (/var/lib/locket/server-key.pem, mode 0600) and keeps it, so clients
        can pin its fingerprint (`locket fingerprint`).
      '';
    };

    nextKeyFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/locket-server-next-key.pem";
      description = ''
        The next server key of a rotation (PKCS#8 PEM, outside the Nix
        store, handed over with LoadCredential=): announced beside the
        current key, and requests encrypted to either are answered. The
        workflow: set it and roll its fingerprint out to clients
        (`services.locket.client.serverFingerprints`), then swap keyFile and
        nextKeyFile (promote), then drop nextKeyFile (retire). With a
        generated key, stage the next one with
        `settings.next_key_file = "/var/lib/locket/server-next-key.pem"`,
        which the server creates.
      '';
    };

    sources = mkOption {
      type = types.listOf sourceModule;
      default = [ ];
      example = literalExpression ''[ { type = "dotenv"; path = "/run/secrets/app.env"; } ]'';
      description = "Where secrets come from, in order; later sources win on a name clash.";
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.sops ]";
      description = ''
        Packages on the server unit's PATH, for `command` sources (e.g.
        `sops`). `op` is added by itself when a `onepassword-cli` source is
        configured (it is unfree: allow it with
        `nixpkgs.config.allowUnfreePredicate` in the host's nixpkgs).
      '';
    };

    onePasswordPackage = mkPackageOption pkgs "_1password-cli" { };

    environmentFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      description = "EnvironmentFile= for the server (for `env` sources); absolute, outside the Nix store.";
    };

    clients = mkOption {
      type = types.attrsOf clientModule;
      default = { };
      description = "Registered clients by name: their keys, networks and grants. A change reloads the server (no restart).";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        clock_skew = "20s";
        max_answer_bytes = 1048576;
      };
      description = ''
        Further server.toml settings (RFC 42 freeform). The typed options
        above win. Secret paths here (`tls.key_file`, `v1.key_file`) are
        handed to the unit with LoadCredential= like the typed ones.
      '';
    };

    client = {
      enable = mkEnableOption "the locket client side (key, config, per-service fetch units)";

      package = mkPackageOption pkgs "locket" { };

      server = mkOption {
        type = types.str;
        example = "http://10.0.0.1:7410";
        description = "Server base URL (several: comma-separated, tried in order).";
      };

      serverFingerprint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
        description = ''
          Pinned server key fingerprint (`locket fingerprint` on the server).
          The client refuses a server it has not pinned: set this, or
          `knownServersFile`.
        '';
      };

      serverFingerprints = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "sha256:0b8e4f2c7d1a9e3b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b" ];
        description = ''
          More pinned server keys, trusted like serverFingerprint: during a
          server key rotation, the next key's fingerprint
          (`locket fingerprint --next` on the server), so clients keep
          working when it is promoted.
        '';
      };

      knownServersFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/etc/locket/known_servers";
        description = ''
          A file of `<server URL> sha256:<fingerprint>` lines (the format
          `locket-client --trust-on-first-use` writes), for fleets that place
          pins as files. Used when `serverFingerprint` is null.
        '';
      };

      name = mkOption {
        type = types.str;
        default = config.networking.hostName;
        defaultText = literalExpression "config.networking.hostName";
        description = "This client's registered name.";
      };

      keyFile = mkOption {
        type = secretPath;
        default = "/var/lib/locket-client/client.key";
        description = "The client's ed25519 private key (absolute, outside the Nix store), placed by the operator or generated (see generateKey).";
      };

      publicKey = mkOption {
        type = types.nullOr (types.strMatching "ed25519:[A-Za-z0-9+/]{43}=");
        default = null;
        example = "ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U=";
        description = ''
          The public key line of keyFile (what `locket-client keygen`
          prints). Not used on this host: `locket.lib.fleetRegistry` reads
          it to register this client on the server. Or set publicKeyFile.
        '';
      };

      publicKeyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./keys/web1.pub";
        description = ''
          A file holding the public key line (committed beside the host's
          configuration), for `locket.lib.fleetRegistry` when publicKey is
          null. Public: it may live in the Nix store.
        '';
      };

      networks = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.1.5/32" ];
        description = ''
          Networks this host calls the server from, for
          `locket.lib.fleetRegistry` (default there: the host's addresses
          in networking.interfaces).
        '';
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

      fetchTimeout = mkOption {
        type = types.ints.between 1 600;
        default = 90;
        description = ''
          Seconds a fetch unit keeps trying (every server, with backoff)
          before it gives up with one journal line naming the servers it
          tried. Its consumer then fails to start instead of holding up boot
          or `nixos-rebuild switch`.
        '';
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
      assertions = failedAssertions (locketLib.serverErrors serverArgs);

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];
      # `locket check` and `locket fingerprint` for the operator.
      environment.systemPackages = [ cfg.package ];

      environment.etc."locket/server.toml".source = serverConfigFile;

      systemd.services.locket = {
        description = "locket secrets cache";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        # A change that a reload applies (clients, sources) reloads: fetches
        # in flight finish, and a source that fails on the reload keeps its
        # last good values. Anything else restarts.
        reloadTriggers = [ serverConfigFile ];
        restartTriggers = [
          (builtins.hashString "sha256" (builtins.toJSON (locketLib.restartSettings serverSettings)))
        ];
        path = cfg.path ++ optional usesOpCli cfg.onePasswordPackage;
        environment = optionalAttrs usesOpCli {
          # `op` keeps its config under $HOME, which DynamicUser + ProtectHome
          # leave unwritable; give it a folder in the state directory.
          OP_CONFIG_DIR = "/var/lib/locket/op";
        };
        serviceConfig = hardening // {
          Type = "notify";
          ExecStart = utils.escapeSystemdExecArgs [
            (getExe' cfg.package "locket")
            "serve"
            "--config"
            serverConfigPath
          ];
          # SIGHUP re-reads the config: a valid one is swapped in, an invalid one is refused.
          ExecReload = "${getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
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
              # Prints the public key line for the server's registry to the journal.
              ExecStart = utils.escapeSystemdExecArgs [
                (getExe' ccfg.package "locket-client")
                "keygen"
                "--out"
                ccfg.keyFile
              ];
            };
          };
        })
        (lib.mapAttrs' (
          consumer: svc: lib.nameValuePair (locketLib.fetchUnitName consumer) (fetchUnit consumer svc)
        ) ccfg.services)
      ];
    })
  ];
}
