# services.locket: the locket server, and the client side (a key, a client
# config, per consuming service a oneshot that fetches its secrets into
# /run/locket/<service>/ before the service starts, and one watcher per host
# that keeps them current).
#
# Delivery: each consumer (services.locket.client.services.<name>) is one
# entry of the delivery plan /etc/locket/delivery.toml: its folder, the
# secrets, owner and mode, templates, what to restart, reload or run when a
# value changes, and its boot cache. `locket-fetch-<name>` delivers one
# consumer before its unit starts (`locket-client deliver --plan …
# --consumer <name>`); `locket-watch` fetches every consumer again each
# `watch.interval`, rewrites what changed, and restarts or reloads the
# units that asked for it. A consumer reads files (one per secret, `env`
# for EnvironmentFile=, rendered templates), or, with `credentials`, gets
# them through LoadCredential= in $CREDENTIALS_DIRECTORY; with
# `delivery = "socket"` no file is written: its unit's LoadCredential= asks
# locket-watch over /run/locket/credentials.sock (locket-watch.socket),
# which answers from memory. With
# `cacheMaxAge`, its last values are kept encrypted with systemd-creds
# (host key and/or TPM2) under /var/lib/locket-client/cache, so it starts
# even when no server answers at boot.
#
# Secrets never enter the Nix store: source files, tokens, the server key and
# every secret path in `settings` are absolute paths outside the store,
# handed to the units with LoadCredential=. The generated TOML holds only
# paths, names, public keys and template text (placeholders, never values).
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
    sealedSet = if cfg.sealedSet.enable then { inherit (cfg.sealedSet) maxAge; } else null;
  };
  # The key of the sealed last-good set, sealed by systemd-creds; PID 1
  # decrypts it for the server at each start (LoadCredentialEncrypted=).
  sealKeyCredential = "/var/lib/locket-seal/seal-key.cred";
  serverSettings = locketLib.mkServerSettings serverArgs;
  generatedServerConfig = settingsFormat.generate "locket-server.toml" serverSettings;
  # As nixpkgs checks nginx, Prometheus and Caddy configs: the generated
  # file is checked when the system is built (`locket check --offline`:
  # syntax, unknown keys, durations, networks, globs; not the key,
  # credentials or sources, which exist only at run time), so a bad
  # `settings` value fails `nixos-rebuild build`, not the switch.
  serverConfigFile =
    if cfg.checkConfig then
      pkgs.runCommand "locket-server.toml"
        {
          unchecked = generatedServerConfig;
          preferLocalBuild = true;
        }
        ''
          ln -s "$unchecked" "$out"
          ${getExe' cfg.package "locket"} check --offline --config "$out"
        ''
    else
      generatedServerConfig;
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

  # The delivery plan, at a fixed path like client.toml: a plan change
  # restarts the units through restartTriggers, not through their command
  # lines.
  systemdCreds = "${config.systemd.package}/bin/systemd-creds";
  deliveryPlan = locketLib.deliveryPlan {
    systemctl = "${config.systemd.package}/bin/systemctl";
    inherit systemdCreds;
    runtimeShell = pkgs.runtimeShell;
    inherit (ccfg) cacheKey services;
  };
  deliveryPlanFile = settingsFormat.generate "locket-delivery.toml" deliveryPlan;
  anyCache = lib.any locketLib.usesCache (lib.attrValues ccfg.services);
  runWatcher = ccfg.watch.enable && ccfg.services != { };
  fileConsumers = lib.filterAttrs (_: svc: !locketLib.isSocket svc) ccfg.services;
  socketConsumers = lib.filterAttrs (_: svc: locketLib.isSocket svc) ccfg.services;
  serveSocket = runWatcher && socketConsumers != { };

  # Run before a socket consumer starts (its preStart, ahead of the
  # service's own): an empty credential is a refusal (systemd turns
  # "nothing written" into an empty file and starts the unit, systemd
  # #27373), so the unit stops here with a line naming it.
  credentialCheck = locketLib.credentialCheck { journal = "journalctl -u locket-watch"; };

  # systemd 253 and later (NixOS 25.11 ships 258) have Type=notify-reload:
  # systemd holds `systemctl reload` open until the server says RELOADING=1
  # and READY=1. Older systemd gets Type=notify, which accepts the same
  # messages; either way the waiting ExecReload= decides the outcome.
  notifyReload = lib.versionAtLeast (lib.getVersion config.systemd.package) "253";

  # Hardening shared by the server and the delivery units.
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

  clientOptions = import ./client-options.nix { inherit lib; };
  inherit (clientOptions) durationType fileModeType secretPath;

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
        description = "Kind of source (see docs/configuration.md).";
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
      files = mkOption {
        type = types.listOf secretPath;
        default = [ ];
        example = [
          "/run/secrets/app.sops.yaml"
          "/run/secrets/age.key"
        ];
        description = ''
          Files a `command` source reads (a sops-encrypted file, an age
          key, a token), absolute and outside the Nix store. Each is handed
          to the unit with LoadCredential=, and every argument of `command`
          equal to one of them is replaced by its credential's path: the
          server runs as a dynamic user, which could not read a root-only
          file anyway. An absolute argument outside the store that is not
          listed here is refused by an assertion. (A path inside a shell
          string, `sh -c "..."`, is not seen: pass files as arguments.)
        '';
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
    { name, config, ... }:
    let
      consumer = config;
      templateModule = types.submodule {
        options = {
          content = mkOption {
            type = types.lines;
            example = "[db]\npassword = {{ DB_PASSWORD }}\n";
            description = ''
              The template text: each `{{ NAME }}` stands for the value of
              the secret NAME, one this consumer gets. The text goes to the
              Nix store, which every user of the host can read:
              placeholders only, never a value.
            '';
          };
          mode = mkOption {
            type = fileModeType;
            default = consumer.mode;
            defaultText = literalExpression "services.locket.client.services.<name>.mode";
            description = "Mode of the rendered file.";
          };
          owner = mkOption {
            type = types.str;
            default = consumer.user;
            defaultText = literalExpression "services.locket.client.services.<name>.user";
            description = "Owner of the rendered file.";
          };
          group = mkOption {
            type = types.str;
            default = consumer.group;
            defaultText = literalExpression "services.locket.client.services.<name>.group";
            description = "Group of the rendered file.";
          };
        };
      };
    in
    {
      options = {
        secrets = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = ''
            Secret names to fetch; empty fetches every secret this client
            may read. Each goes to /run/locket/<name>/<file>, <file> being
            the name with `/` replaced by `_` (see `paths`).
          '';
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

        restartUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "myapp.service" ];
          description = ''
            Units the watcher restarts (`systemctl try-restart`: only those
            running) when a value this consumer gets actually changed; a
            fetch that brings the same values restarts nothing. For
            services that read their secrets only when they start: from
            EnvironmentFile=, from a file read once, and every
            `credentials = true` consumer (systemd copies credentials at
            start). Usually the consumer's own unit; restarting it also
            runs its fetch unit again (PartOf=). Full names with their
            type, e.g. `myapp.service`.
          '';
        };

        reloadUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "nginx.service" ];
          description = ''
            Units the watcher reloads (`systemctl try-reload-or-restart`)
            when a value this consumer gets actually changed: for services
            that read their secret files again on reload (nginx with a
            certificate key, a daemon with a SIGHUP handler). A value taken
            from EnvironmentFile= or LoadCredential= stays the old one
            across a reload: list such units in restartUnits instead.
          '';
        };

        onChange = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "systemctl start myapp-rotate.service";
          description = ''
            A shell command (run with `<runtimeShell> -c`) that the watcher
            runs when a value this consumer gets actually changed, with the
            new files in place. It runs as root inside the watcher's
            sandbox: the file system is read-only except /run/locket (and
            a private /tmp), and the only capabilities are those to write
            and chown files (CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE); for
            anything more, have it start a unit of your own (`systemctl
            start …`). Its output goes to the journal of locket-watch.
          '';
        };

        templates = mkOption {
          type = types.attrsOf templateModule;
          default = { };
          example = literalExpression ''
            {
              "app.ini".content = '''
                [db]
                password = {{ DB_PASSWORD }}
              ''';
            }
          '';
          description = ''
            Files rendered into /run/locket/<name>/<file>, for programs that
            want their secrets inside a config file of their own format:
            each `{{ NAME }}` becomes the value of the secret NAME. They
            are rendered on every delivery, like the secret files, and with
            `credentials` handed over as credentials too. A template must
            not take the file name of a secret, nor `env` while envFile is
            set.
          '';
        };

        credentials = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Hand the secrets and templates to the consumer's unit with
            LoadCredential= instead of letting it read /run/locket: the
            module adds `LoadCredential=<file>:/run/locket/<name>/<file>`
            to `unit` for every secret and template (<file>: the name with
            `/` replaced by `_`), and the service reads
            `$CREDENTIALS_DIRECTORY/<file>`.

            Files (the default) suit services that read a path or an
            EnvironmentFile= and run as a fixed user (set user, group and
            mode for it). Credentials suit DynamicUser= services, whose user
            does not exist when the files are written, and services that
            should not see /run/locket at all (leave user = "root": the
            files there are then root's alone). systemd copies credentials
            when the unit starts, so a
            changed value reaches the service only by a restart: list its
            unit in restartUnits, not reloadUnits.

            Needs the secrets listed by name (not `[ ]`) and a `.service`
            unit.
          '';
        };

        delivery = mkOption {
          type = types.enum [
            "files"
            "socket"
          ];
          default = "files";
          description = ''
            How the secrets reach the consumer.

            `files` (the default): a fetch unit writes them into
            /run/locket/<name>/ before `unit` starts (or, with
            `credentials`, hands those files over as credentials).

            `socket`: no file is written anywhere. The module adds
            `LoadCredential=<ID>:${locketLib.credentialSocket}` to `unit`
            for every secret and template (<ID>: the name with `/`
            replaced by `_`), and when systemd starts the unit it asks
            `locket-watch` over that socket: the watcher hands each value
            from its memory (fetching it first when it holds none yet),
            and only to the unit this consumer names, only the IDs it
            lists. The service reads `$CREDENTIALS_DIRECTORY/<ID>`, which
            systemd keeps on an unswappable ramfs. A refused or unknown
            credential reaches systemd as an empty one (systemd cannot be
            told "no such credential"), so the module also adds an
            `ExecStartPre=` that stops the unit on an empty credential,
            naming it: a secret whose value is empty cannot be delivered
            this way. A changed value reaches the service by a restart
            (list `unit` in restartUnits). Needs the watcher
            (`watch.enable`), the secrets listed by name, and a `.service`
            unit; not with `credentials`, `reloadUnits` or `cacheMaxAge`.
          '';
        };

        paths = mkOption {
          type = types.attrsOf types.str;
          readOnly = true;
          default = locketLib.consumerPaths name consumer;
          defaultText = literalExpression ''{ <secret> = "/run/locket/<name>/<file>"; <template> = "/run/locket/<name>/<template>"; }'';
          description = ''
            Where this consumer's files are (read-only): each secret name,
            and each template's name, to its path, for other options to
            refer to, e.g.
            `config.services.locket.client.services.myapp.paths.DB_PASSWORD`.
            A consumer with `secrets = [ ]` lists only its templates.
          '';
        };

        cacheMaxAge = mkOption {
          type = types.nullOr durationType;
          default = null;
          example = "7d";
          description = ''
            Keep this consumer's last values in a boot cache, and deliver
            them when no server answers, for up to this long after they
            were fetched: the consumer then starts even when the host boots
            while the servers are down. The values are encrypted with
            systemd-creds (`services.locket.client.cacheKey`) in
            /var/lib/locket-client/cache (root only); its fetch unit and the
            watcher may then write there and use the TPM2. null: no cache,
            and without a server the consumer does not start.
          '';
        };
      };
    }
  );

  # What the fetch units and the watcher share: the client's command line
  # up to its subcommand, the order after the key and a local server, and
  # the sandbox of a process that writes into /run/locket as root and
  # chowns there (the watcher also runs `systemctl try-restart` and
  # `try-reload-or-restart`, which talk to systemd over AF_UNIX as root).
  clientCommand =
    args:
    utils.escapeSystemdExecArgs (
      [
        (getExe' ccfg.package "locket-client")
        "--config"
        clientConfigPath
        "--timeout"
        "${toString ccfg.fetchTimeout}s"
      ]
      ++ args
    );
  deliveryOrdering = {
    after = [
      "network-online.target"
    ]
    ++ optional ccfg.generateKey "locket-client-keygen.service"
    # A server on this host: wait for it instead of timing out against it.
    ++ optional cfg.enable "locket.service";
    wants = [ "network-online.target" ] ++ optional cfg.enable "locket.service";
    # /run/locket is a ramfs (run-locket.mount): mounted before any
    # delivery writes there.
    unitConfig.RequiresMountsFor = [ locketLib.runDir ];
  };
  deliverySandbox =
    cache:
    hardening
    // {
      # The client retries with backoff across every server until its
      # deadline (--timeout), then exits with one line naming the servers
      # it tried, why, and for how long.
      TimeoutStartSec = "${toString (ccfg.fetchTimeout + 15)}s";
      ReadWritePaths = [ "/run/locket" ] ++ optional cache locketLib.cacheStateDir;
      # chown(2) is in @privileged, which the shared hardening denies.
      SystemCallFilter = [ "@system-service" ];
      CapabilityBoundingSet = [
        "CAP_CHOWN"
        "CAP_FOWNER"
        "CAP_DAC_OVERRIDE"
      ];
    }
    // optionalAttrs cache {
      # The boot cache is encrypted with systemd-creds. `setup` creates the
      # host key (/var/lib/systemd/credential.secret) once; `+` runs it
      # outside the sandbox, which keeps /var/lib/systemd read-only.
      ExecStartPre = "+${systemdCreds} setup";
      # The TPM2, when there is one (cacheKey auto, tpm2, host+tpm2), and
      # no other device.
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [ "/dev/tpmrm0 rw" ];
    };

  fetchUnit =
    consumer: svc:
    deliveryOrdering
    // {
      description = "Fetch locket secrets for ${svc.unit}";
      before = [ svc.unit ];
      requiredBy = [ svc.unit ];
      partOf = [ svc.unit ];
      # A switch never restarts this unit: a restart would restart its
      # consumer too (Requires=), and with no server answering at that
      # moment leave it stopped. The plan sits at a fixed path, and a plan
      # change reaches the consumer through the watcher (restarted by the
      # change; it delivers the new plan and restarts what asked for it)
      # or at the consumer's own next start.
      restartIfChanged = false;
      serviceConfig = deliverySandbox (locketLib.usesCache svc) // {
        Type = "oneshot";
        RemainAfterExit = true;
        # Past the client's deadline the consumer (which requires this
        # unit) fails visibly instead of holding up boot and
        # `nixos-rebuild switch`.
        # No ExecStopPost= removal: the files stay while the consumer is
        # stopped or restarted (the next delivery replaces them file by
        # file, atomically), and go when the consumer leaves the plan
        # (each delivery removes folders no consumer uses).
        ExecStart = clientCommand (locketLib.deliverArgs consumer);
      };
    };

  # One per host: fetches every consumer again each watch.interval,
  # rewrites the files whose values changed, then restarts, reloads or runs
  # what those consumers asked for. READY=1 after its first round.
  watchUnit = deliveryOrdering // {
    # At boot, after the fetch units have delivered (or given up): the
    # first round then compares with what the consumers started on.
    after =
      deliveryOrdering.after
      ++ map (consumer: "${locketLib.fetchUnitName consumer}.service") (lib.attrNames fileConsumers)
      ++ optional serveSocket locketLib.credentialSocketUnit;
    wants = deliveryOrdering.wants ++ optional serveSocket locketLib.credentialSocketUnit;
    description = "Keep locket secrets current (restart or reload their consumers on a change)";
    wantedBy = [ "multi-user.target" ];
    restartTriggers = [
      deliveryPlanFile
      clientConfigFile
    ];
    serviceConfig = deliverySandbox anyCache // {
      Type = "notify";
      NotifyAccess = "main";
      ExecStart = clientCommand (locketLib.watchArgs ccfg.watch.interval);
      Restart = "on-failure";
      RestartSec = 10;
      # status.json: what the last round delivered, for monitoring.
      RuntimeDirectory = "locket-watch";
      RuntimeDirectoryMode = "0755";
    };
  };

  # LoadCredential= on the consumers' own units (credentials = true, or
  # delivery = "socket"). A consumer the assertions refuse gets none, so
  # that they report it.
  credentialUnits = mkMerge (
    lib.mapAttrsToList (
      consumer: svc:
      let
        unitAttr = locketLib.serviceAttrName svc.unit;
        socket = locketLib.isSocket svc;
      in
      optionalAttrs (!socket && svc.credentials && svc.secrets != [ ] && unitAttr != null) {
        ${unitAttr}.serviceConfig.LoadCredential = locketLib.consumerCredentials consumer svc;
      }
      // optionalAttrs (socket && serveSocket && svc.secrets != [ ] && unitAttr != null) {
        ${unitAttr} = {
          # The socket exists before the unit asks it; the watcher behind
          # it starts on the first connection if it is not running.
          after = [ locketLib.credentialSocketUnit ];
          requires = [ locketLib.credentialSocketUnit ];
          serviceConfig.LoadCredential = locketLib.socketCredentials svc;
          preStart = lib.mkBefore (credentialCheck (lib.attrValues (locketLib.credentialIds svc)));
        };
      }
    ) ccfg.services
  );

  # The credential socket, held by systemd: it stays open while the
  # watcher restarts (a plan change), so a unit starting meanwhile waits
  # instead of failing, and a connection starts the watcher if it is not
  # running. Root's alone: only PID 1 (root) asks it, and the peer address
  # it binds names the unit and the credential.
  credentialSocketUnit = {
    description = "locket credential socket (LoadCredential= from the watcher's memory)";
    wantedBy = [ "sockets.target" ];
    listenStreams = [ locketLib.credentialSocket ];
    socketConfig = {
      SocketUser = "root";
      SocketGroup = "root";
      SocketMode = "0600";
      Service = "${locketLib.watchUnitName}.service";
    };
    # /run/locket is a ramfs mounted only on an empty folder: mounted first.
    unitConfig.RequiresMountsFor = [ locketLib.runDir ];
  };
in
{
  # The module guide, which a host's NixOS manual carries as a chapter.
  # No meta.maintainers: NixOS's type accepts only entries of nixpkgs'
  # lib.maintainers, which has none for this project until the module is
  # upstreamed; an invented entry would fail every host's evaluation.
  meta.doc = ../docs/nixos.md;

  options.services.locket = {
    enable = mkEnableOption "the locket secrets cache server";

    package = mkPackageOption pkgs "locket" { };

    prometheusRules = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Add locket's alerting rules (docs/monitoring/alerts.rules.yml:
        not ready, a source stale or waiting, the set past max_age, a
        refused reload, the 1Password budget nearly spent, bursts of
        denials or of failed authentications) to
        `services.prometheus.rules` on this host. The rules match every
        locket server Prometheus scrapes, not only this one. Adjust the
        1Password threshold (1,500 reads a day) in a copy if your
        budget differs.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the generated `server.toml` when the system is built, with
        `locket check --offline`: syntax, unknown keys, durations, networks
        and grant globs (not the key, credentials or sources, which exist
        only at run time). Turn it off when cross-compiling, where the
        package cannot run on the build machine.
      '';
    };

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
        which the server creates (allowed under /var/lib/locket only;
        any other path goes here).
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

    sealedSet = {
      enable = mkEnableOption ''
        a sealed copy of the server's last good set in its state directory
        (/var/lib/locket/last-good.sealed): a restart serves it at once and
        reads only what changed (one list per 1Password vault), and a start
        while the sources cannot be read serves it, stale, if it is at most
        `maxAge` old. It is sealed with a key that systemd-creds seals to
        this host (`key`) and PID 1 hands to the server at each start
        (LoadCredentialEncrypted=); `locket-seal-key.service` makes that key
        once'';

      maxAge = mkOption {
        type = durationType;
        default = "24h";
        example = "7d";
        description = "The oldest sealed copy a start may serve; an older one is refused and deleted.";
      };

      key = mkOption {
        type = types.enum locketLib.cacheKeys;
        default = "auto";
        description = ''
          What systemd-creds seals the copy's key with: `host`
          (/var/lib/systemd/credential.secret), `tpm2`, `host+tpm2`, or
          `auto` (both with a TPM2, else host). A host that wipes /var/lib
          at boot loses the host key, and with it the copy: it is then
          refused by name and the server reads every source.
        '';
      };
    };

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

      package = mkOption {
        type = types.package;
        default = cfg.package;
        defaultText = literalExpression "config.services.locket.package";
        description = "The package whose `locket-client` the client side runs (by default the server's package: one build for both).";
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

      inherit (clientOptions.connection)
        server
        serverFingerprint
        serverFingerprints
        knownServersFile
        bind
        fetchTimeout
        ;
      inherit (clientOptions) watch;

      cacheKey = mkOption {
        type = types.enum locketLib.cacheKeys;
        default = "auto";
        description = ''
          The key systemd-creds encrypts the boot cache (cacheMaxAge) with:
          `host` (/var/lib/systemd/credential.secret, made by
          `systemd-creds setup`), `tpm2` (the TPM2 chip, so that a copy of
          the disk cannot read the cache), `host+tpm2` (both), or `auto`
          (systemd-creds' choice: both with a TPM2, else host).
        '';
      };

      services = mkOption {
        type = types.attrsOf consumerModule;
        default = { };
        example = literalExpression ''
          {
            myapp = {
              secrets = [ "DB_PASSWORD" ];
              user = "myapp";
              restartUnits = [ "myapp.service" ];
            };
            # A DynamicUser= service: LoadCredential= instead of files.
            worker = {
              secrets = [ "API_TOKEN" ];
              credentials = true;
              restartUnits = [ "worker.service" ];
            };
          }
        '';
        description = ''
          Per consuming service (by default the unit `<name>.service`): a
          oneshot `locket-fetch-<name>` delivers its secrets into
          /run/locket/<name>/ before the unit starts (one file per secret,
          `env` for EnvironmentFile=, rendered `templates`), or to the unit
          as credentials (`credentials`). The unit requires the fetch, so it
          never starts without its secrets (or, with `cacheMaxAge`, its
          cached ones); stopping the unit removes them. While it runs,
          `locket-watch` keeps them current and restarts, reloads or runs
          what the consumer asked for when a value changes
          (`restartUnits`, `reloadUnits`, `onChange`). With
          `delivery = "socket"` there is no fetch unit and no file: the
          unit asks the watcher for each value as a credential when it
          starts. All a consumer asks for is one entry of
          /etc/locket/delivery.toml.
        '';
      };
    };
  };

  config = mkMerge [
    (mkIf cfg.enable {
      assertions = failedAssertions (locketLib.serverErrors serverArgs);

      # New installations refuse requests not bound to the server process
      # (clients before protocol version 3); existing ones keep accepting
      # them until the operator sets it, as stateVersion intends.
      services.locket.settings.require_bound_requests = lib.mkDefault (
        lib.versionAtLeast config.system.stateVersion "26.05"
      );

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
          Type = if notifyReload then "notify-reload" else "notify";
          ExecStart = utils.escapeSystemdExecArgs [
            (getExe' cfg.package "locket")
            "serve"
            "--config"
            serverConfigPath
          ];
          # `locket reload --wait` sends SIGHUP and waits for that reload's
          # outcome (published in the RuntimeDirectory): `systemctl reload`
          # and a switch fail when the server refuses the new config, which
          # it keeps serving without. Under notify-reload systemd would also
          # send its own reload signal: SIGCONT is one that changes nothing,
          # so each reload reads the sources once.
          ExecReload = utils.escapeSystemdExecArgs [
            (getExe' cfg.package "locket")
            "reload"
            "--config"
            serverConfigPath
            "--wait"
          ];
          ReloadSignal = mkIf notifyReload "SIGCONT";
          RuntimeDirectory = "locket-server";
          RuntimeDirectoryMode = "0700";
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
          LoadCredentialEncrypted = mkIf cfg.sealedSet.enable [ "seal-key:${sealKeyCredential}" ];
          EnvironmentFile = mkIf (cfg.environmentFile != null) cfg.environmentFile;
          CapabilityBoundingSet = [ "" ];
          AmbientCapabilities = [ "" ];
        };
      };

      systemd.services.locket-seal-key = mkIf cfg.sealedSet.enable {
        description = "Make the key of locket's sealed last-good set";
        before = [ "locket.service" ];
        requiredBy = [ "locket.service" ];
        unitConfig.ConditionPathExists = "!${sealKeyCredential}";
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
          StateDirectory = "locket-seal";
          StateDirectoryMode = "0700";
          # `setup` makes the host key (/var/lib/systemd/credential.secret)
          # once; `+` runs it outside the sandbox, which keeps /var/lib/systemd
          # read-only for the rest.
          ExecStartPre = "+${systemdCreds} setup";
          ExecStart = utils.escapeSystemdExecArgs [
            (getExe' cfg.package "locket")
            "seal-key"
            "--out"
            sealKeyCredential
            "--with-key"
            cfg.sealedSet.key
            "--systemd-creds"
            systemdCreds
          ];
          # The TPM2, when there is one, and no other device.
          PrivateDevices = false;
          DevicePolicy = "closed";
          DeviceAllow = [ "/dev/tpmrm0 rw" ];
          PrivateNetwork = true;
          # As the boot cache's units, which run systemd-creds too.
          SystemCallFilter = [ "@system-service" ];
          CapabilityBoundingSet = [ "" ];
        };
      };
    })

    (mkIf cfg.prometheusRules {
      services.prometheus.rules = [ (builtins.readFile ../docs/monitoring/alerts.rules.yml) ];
    })

    (mkIf ccfg.enable {
      assertions = failedAssertions (locketLib.clientErrors ccfg);
      # systemd copies credentials when the unit starts: a consumer that
      # takes them and is never restarted keeps the old values for ever.
      warnings = lib.concatLists (
        lib.mapAttrsToList (
          consumer: svc:
          optional (
            (svc.credentials || locketLib.isSocket svc) && svc.restartUnits == [ ] && svc.onChange == null
          ) "services.locket.client.services.${consumer}: ${if locketLib.isSocket svc then "delivery = \"socket\"" else "credentials = true"}, but neither restartUnits nor onChange is set: systemd ${if locketLib.isSocket svc then "reads" else "copies"} credentials when ${svc.unit} starts, so a changed value never reaches it. Add ${svc.unit} to restartUnits."
        ) ccfg.services
      );

      systemd.sockets = mkIf serveSocket {
        ${lib.removeSuffix ".socket" locketLib.credentialSocketUnit} = credentialSocketUnit;
      };

      environment.systemPackages = [ ccfg.package ];
      environment.etc."locket/client.toml".source = clientConfigFile;
      environment.etc."locket/delivery.toml".source = deliveryPlanFile;
      systemd.tmpfiles.rules = [
        "d ${locketLib.runDir} 0755 root root -"
      ]
      ++ optional anyCache "d ${locketLib.cacheDir} 0700 root root -";

      # The delivered secrets live on a ramfs, as sops-nix keeps
      # /run/secrets: never written to swap (tmpfs pages can be, and
      # tmpfs's `noswap` needs Linux 6.4), and gone at power-off. ramfs has
      # no size limit; only root writes there, a few KiB per consumer.
      # Mounted only on an empty or absent folder: a switch from a version
      # without this mount must not hide the files running consumers use
      # (the ramfs then comes with the next boot).
      systemd.mounts = [
        {
          description = "RAM file system for locket's delivered secrets (never swapped)";
          what = "ramfs";
          where = locketLib.runDir;
          type = "ramfs";
          options = "mode=0755,nosuid,nodev,noexec";
          unitConfig.ConditionDirectoryNotEmpty = "!${locketLib.runDir}";
        }
      ];

      systemd.services = mkMerge [
        (mkIf ccfg.generateKey {
          locket-client-keygen = {
            description = "Generate the locket client key";
            wantedBy = [ "multi-user.target" ];
            unitConfig.ConditionPathExists = "!${ccfg.keyFile}";
            # It only writes one file: the delivery units' sandbox, no
            # network, no capability, write access to the key's folder alone.
            serviceConfig = hardening // {
              Type = "oneshot";
              RemainAfterExit = true;
              StateDirectory = "locket-client";
              StateDirectoryMode = "0700";
              ReadWritePaths = [ "-${dirOf ccfg.keyFile}" ];
              PrivateNetwork = true;
              RestrictAddressFamilies = [ "none" ];
              IPAddressDeny = "any";
              CapabilityBoundingSet = [ "" ];
              AmbientCapabilities = [ "" ];
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
        ) fileConsumers)
        (mkIf runWatcher { ${locketLib.watchUnitName} = watchUnit; })
        credentialUnits
      ];
    })
  ];
}
