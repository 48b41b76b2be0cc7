# services.locket-client: locket's delivery to a user's own services, as a
# home-manager module (the flake's homeManagerModules.default).
#
# The same client as the NixOS module's, run by the user's systemd
# (`systemd --user`) with the user's own key, registered on the server like
# any other client. Each consumer (services.locket-client.services.<name>)
# is one entry of the user's delivery plan (~/.config/locket/delivery.toml,
# `manager = "user"`):
# - files (the default): a user oneshot `locket-fetch-<name>` writes the
#   secrets into $XDG_RUNTIME_DIR/locket/<name>/ (0400) before the
#   consumer's unit starts, which requires it;
# - socket: no file; the unit gets `LoadCredential=<ID>:%t/locket/credentials.sock`
#   and the user's watcher hands each value from its memory when the user
#   manager starts the unit.
# The user's `locket-watch` fetches every consumer again each interval and
# restarts (`systemctl --user try-restart`), reloads or runs what a
# consumer asked for when a value changed.
#
# Why a home-manager module and not `services.locket.client.users.<user>`
# in the NixOS module: NixOS's `systemd.user.*` units are the same for
# every user of the host, while each user here has a key, a client name and
# consumers of their own; home-manager is where per-user units live, and it
# runs on NixOS (home-manager.users.<name>) and on any other Linux alike.
#
# What a user manager cannot do, and the module therefore does not offer:
# owners and groups other than the user's own (no chown), the boot cache
# (systemd-creds' host key is root's), `credentials = true` (socket
# delivery gives the same without a file), and a ramfs for the files
# ($XDG_RUNTIME_DIR is the tmpfs logind mounts, mode 0700, which can be
# swapped; socket delivery keeps values in memory and in the unit's own
# credentials folder only).
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
    optional
    types
    ;

  cfg = config.services.locket-client;
  locketLib = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };
  prefix = "services.locket-client";

  configDir = "${config.xdg.configHome}/locket";
  clientConfigPath = "${configDir}/client.toml";
  deliveryPlanPath = "${configDir}/delivery.toml";

  clientConfigFile = settingsFormat.generate "locket-client.toml" (
    locketLib.mkClientSettings {
      inherit (cfg)
        server
        name
        keyFile
        serverFingerprint
        serverFingerprints
        knownServersFile
        bind
        ;
    }
  );
  deliveryPlanFile = settingsFormat.generate "locket-delivery.toml" (
    locketLib.userDeliveryPlan {
      systemctl = "${pkgs.systemd}/bin/systemctl";
      runtimeShell = pkgs.runtimeShell;
      inherit (cfg) services;
    }
  );

  fileConsumers = lib.filterAttrs (_: svc: !locketLib.isSocket svc) cfg.services;
  socketConsumers = lib.filterAttrs (_: svc: locketLib.isSocket svc) cfg.services;
  runWatcher = cfg.watch.enable && cfg.services != { };
  serveSocket = runWatcher && socketConsumers != { };
  socketUnit = locketLib.credentialSocketUnit;
  watchUnit = "${locketLib.watchUnitName}.service";
  keygenUnit = "locket-client-keygen.service";

  clientCommand =
    args:
    locketLib.escapeSystemdExecArgs (
      [
        (lib.getExe' cfg.package "locket-client")
        "--config"
        clientConfigPath
        "--timeout"
        "${toString cfg.fetchTimeout}s"
      ]
      ++ args
    );

  # What a user manager can apply without privileges (the mount-namespace
  # options need unprivileged user namespaces, which not every host has).
  hardening = {
    NoNewPrivileges = true;
    UMask = "0077";
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    SystemCallArchitectures = "native";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
  };
  deliveryOrdering = optional cfg.generateKey keygenUnit;

  fetchUnit = consumer: svc: {
    Unit = {
      Description = "Fetch locket secrets for ${svc.unit}";
      Before = [ svc.unit ];
      PartOf = [ svc.unit ];
      After = deliveryOrdering;
    };
    Service = hardening // {
      Type = "oneshot";
      RemainAfterExit = true;
      # Past the client's deadline the consumer, which requires this unit,
      # fails visibly.
      TimeoutStartSec = "${toString (cfg.fetchTimeout + 15)}s";
      ExecStart = clientCommand (locketLib.deliverArgsFor deliveryPlanPath consumer);
    };
    # home-manager links it into <unit>.requires/.
    Install.RequiredBy = [ svc.unit ];
  };

  watcher = {
    Unit = {
      Description = "Keep locket secrets current (restart or reload their consumers on a change)";
      After =
        deliveryOrdering
        ++ map (c: "${locketLib.fetchUnitName c}.service") (lib.attrNames fileConsumers)
        ++ optional serveSocket socketUnit;
      Wants = optional serveSocket socketUnit;
      # The config and the plan are at fixed paths: a change to either
      # restarts the watcher when home-manager switches (sd-switch).
      X-Restart-Triggers = [
        clientConfigFile
        deliveryPlanFile
      ];
    };
    Service = hardening // {
      Type = "notify";
      NotifyAccess = "main";
      ExecStart = clientCommand (locketLib.watchArgsFor deliveryPlanPath cfg.watch.interval);
      Restart = "on-failure";
      RestartSec = 10;
      # status.json: what the last round delivered ($XDG_RUNTIME_DIR/locket-watch).
      RuntimeDirectory = "locket-watch";
    };
    Install.WantedBy = [ "default.target" ];
  };

  # The credential socket, held by the user manager: it stays open while
  # the watcher restarts, and a connection starts the watcher. The user's
  # alone (0600): the user manager asks it as the user.
  credentialSocket = {
    Unit.Description = "locket credential socket (LoadCredential= from the watcher's memory)";
    Socket = {
      ListenStream = locketLib.userCredentialSocket;
      SocketMode = "0600";
      Service = watchUnit;
    };
    Install.WantedBy = [ "sockets.target" ];
  };

  # LoadCredential= and the empty-credential check on a socket consumer's
  # own unit, merged when consumers share a unit. A consumer the
  # assertions refuse gets none.
  socketConsumerUnits = mkMerge (
    lib.mapAttrsToList
      (_: svc: {
        ${locketLib.serviceAttrName svc.unit} = {
          Unit = {
            After = [ socketUnit ];
            Requires = [ socketUnit ];
          };
          Service = {
            LoadCredential = locketLib.socketCredentialsAt locketLib.userCredentialSocket svc;
            ExecStartPre = lib.mkBefore [
              (locketLib.escapeSystemdExecArgs [
                pkgs.runtimeShell
                "-c"
                (locketLib.credentialCheck { journal = "journalctl --user -u ${locketLib.watchUnitName}"; } (
                  lib.attrValues (locketLib.credentialIds svc)
                ))
              ])
            ];
          };
        };
      })
      (
        lib.filterAttrs (
          _: svc: svc.secrets != [ ] && locketLib.serviceAttrName svc.unit != null
        ) socketConsumers
      )
  );

  clientOptions = import ./client-options.nix { inherit lib; };
  inherit (clientOptions) fileModeType secretPath;

  consumerModule = types.submodule (
    { name, config, ... }:
    let
      consumer = config;
    in
    {
      options = {
        secrets = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = ''
            Secret names to fetch; empty fetches every secret this client
            may read (files only). Each goes to
            $XDG_RUNTIME_DIR/locket/<name>/<file>, <file> being the name
            with `/` replaced by `_` (see `paths`).
          '';
        };
        mode = mkOption {
          type = fileModeType;
          default = "0400";
          description = "Mode of the secret files (the user's own).";
        };
        envFile = mkOption {
          type = types.bool;
          default = true;
          description = "Also write `$XDG_RUNTIME_DIR/locket/<name>/env` for `EnvironmentFile=%t/locket/<name>/env`.";
        };
        unit = mkOption {
          type = types.str;
          default = "${name}.service";
          defaultText = literalExpression ''"<name>.service"'';
          description = "The consuming user unit, which requires the fetch and starts after it.";
        };
        restartUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "myapp.service" ];
          description = ''
            User units the watcher restarts (`systemctl --user
            try-restart`) when a value this consumer gets actually changed.
            Full names with their type.
          '';
        };
        reloadUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = ''
            User units the watcher reloads (`systemctl --user
            try-reload-or-restart`) when a value changed (files only).
          '';
        };
        onChange = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = ''
            A shell command (`<runtimeShell> -c`) the watcher runs, as the
            user, when a value this consumer gets changed.
          '';
        };
        templates = mkOption {
          type = types.attrsOf (
            types.submodule {
              options = {
                content = mkOption {
                  type = types.lines;
                  description = ''
                    The template text: each `{{ NAME }}` stands for the
                    value of the secret NAME. It goes to the Nix store:
                    placeholders only, never a value.
                  '';
                };
                mode = mkOption {
                  type = fileModeType;
                  default = consumer.mode;
                  defaultText = literalExpression "services.locket-client.services.<name>.mode";
                  description = "Mode of the rendered file.";
                };
              };
            }
          );
          default = { };
          description = ''
            Files rendered into $XDG_RUNTIME_DIR/locket/<name>/<file> (or,
            with `delivery = "socket"`, credentials named <file>): each
            `{{ NAME }}` becomes the value of the secret NAME.
          '';
        };
        delivery = mkOption {
          type = types.enum [
            "files"
            "socket"
          ];
          default = "files";
          description = ''
            `files` (the default): a user oneshot `locket-fetch-<name>`
            writes the secrets into $XDG_RUNTIME_DIR/locket/<name>/ before
            `unit` starts. `socket`: no file; the module adds
            `LoadCredential=<ID>:%t/locket/credentials.sock` to `unit`,
            and the user's watcher hands each value from its memory when
            the user manager starts the unit. An empty credential (refused,
            or no server and nothing held) stops the unit with a line
            naming it. A change reaches the service by a restart: list
            `unit` in restartUnits. Needs the watcher, the secrets by name
            and a `.service` unit, and systemd 252.4 or later.
          '';
        };
        paths = mkOption {
          type = types.attrsOf types.str;
          readOnly = true;
          default = locketLib.consumerPathsIn {
            runDir = locketLib.userRunDir;
            credentialsDir = locketLib.userCredentialsDir;
          } name consumer;
          defaultText = literalExpression ''{ <secret> = "%t/locket/<name>/<file>"; }'';
          description = ''
            Where this consumer's files are (read-only): each secret
            name, and each template's name, to its path, with `%t` for
            $XDG_RUNTIME_DIR as systemd writes it in units (which expand
            it), e.g. `ExecStart = "myapp --password-file ''${config.services.locket-client.services.myapp.paths.DB_PASSWORD}"`.
            A socket consumer's are in its unit's credentials folder.
          '';
        };
      };
    }
  );
in
{
  options.services.locket-client = {
    enable = mkEnableOption "locket's secret delivery to this user's services (systemd --user)";

    package = mkPackageOption pkgs "locket" { };

    inherit (clientOptions.connection)
      server
      serverFingerprint
      serverFingerprints
      knownServersFile
      bind
      fetchTimeout
      ;
    inherit (clientOptions) watch;

    name = mkOption {
      type = types.str;
      example = "alice-laptop";
      description = "This user's registered client name on the server.";
    };

    keyFile = mkOption {
      type = secretPath;
      default = "${config.xdg.configHome}/locket/client.key";
      defaultText = literalExpression ''"''${config.xdg.configHome}/locket/client.key"'';
      description = "The user's ed25519 private key (absolute, outside the Nix store), placed by the user or generated (see generateKey).";
    };

    generateKey = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Generate keyFile when absent (a user oneshot,
        `locket-client-keygen`), and print its public key line to the
        user's journal (`journalctl --user -u locket-client-keygen`), for
        the server's registry.
      '';
    };

    services = mkOption {
      type = types.attrsOf consumerModule;
      default = { };
      example = literalExpression ''
        {
          # EnvironmentFile=%t/locket/mail-sync/env in its own unit.
          mail-sync = {
            secrets = [ "IMAP_PASSWORD" ];
            restartUnits = [ "mail-sync.service" ];
          };
          # No file: LoadCredential= from the watcher's memory.
          notes = {
            secrets = [ "NOTES_TOKEN" ];
            delivery = "socket";
            restartUnits = [ "notes.service" ];
          };
        }
      '';
      description = ''
        Per consuming user service (by default the user unit
        `<name>.service`, which you define in `systemd.user.services`).
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions =
      map
        (message: {
          assertion = false;
          inherit message;
        })
        (
          locketLib.clientErrors (
            cfg
            // {
              inherit prefix;
              runDir = locketLib.userRunDir;
            }
          )
        );
    warnings = lib.concatLists (
      lib.mapAttrsToList (
        consumer: svc:
        optional (locketLib.isSocket svc && svc.restartUnits == [ ] && svc.onChange == null)
          "${prefix}.services.${consumer}: delivery = \"socket\", but neither restartUnits nor onChange is set: systemd reads credentials when ${svc.unit} starts, so a changed value never reaches it. Add ${svc.unit} to restartUnits."
      ) cfg.services
    );

    home.packages = [ cfg.package ];
    xdg.configFile."locket/client.toml".source = clientConfigFile;
    xdg.configFile."locket/delivery.toml".source = deliveryPlanFile;

    systemd.user.sockets = mkIf serveSocket {
      ${lib.removeSuffix ".socket" socketUnit} = credentialSocket;
    };

    systemd.user.services = mkMerge [
      (mkIf cfg.generateKey {
        locket-client-keygen = {
          Unit = {
            Description = "Generate the locket client key";
            ConditionPathExists = "!${cfg.keyFile}";
          };
          Service = hardening // {
            Type = "oneshot";
            RemainAfterExit = true;
            RestrictAddressFamilies = [ "AF_UNIX" ];
            # Prints the public key line for the server's registry to the journal.
            ExecStart = locketLib.escapeSystemdExecArgs [
              (lib.getExe' cfg.package "locket-client")
              "keygen"
              "--out"
              cfg.keyFile
            ];
          };
          Install.WantedBy = [ "default.target" ];
        };
      })
      (lib.mapAttrs' (
        consumer: svc: lib.nameValuePair (locketLib.fetchUnitName consumer) (fetchUnit consumer svc)
      ) fileConsumers)
      (mkIf runWatcher { ${locketLib.watchUnitName} = watcher; })
      (mkIf serveSocket socketConsumerUnits)
    ];
  };
}
