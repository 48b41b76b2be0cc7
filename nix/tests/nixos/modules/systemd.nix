# systemd.services and how NixOS turns them into unit files, limited to the
# options nix/module.nix and nix/tests/vm.nix set or the rendering reads.
# Mirrors (NixOS 25.11):
#   nixos/lib/systemd-unit-options.nix   the service options, their types
#                                        and defaults, `unitOption` merging
#   nixos/lib/systemd-lib.nix            the unit text (serviceToUnit), the
#                                        default PATH, job scripts, triggers
#   nixos/modules/system/boot/systemd.nix  systemd.package, systemd.units,
#                                        the warnings
#   nixos/modules/config/i18n.nix, locale.nix  LOCALE_ARCHIVE and TZDIR
#   nixos/modules/system/boot/systemd/tmpfiles.nix  systemd.tmpfiles.rules
# Mounts: what, where, type, options into [Mount] (mountOptions and
# mountToUnit), named by the escaped path, as NixOS does.
# Sockets: listenStreams, listenDatagrams and socketConfig into [Socket]
# (socketOptions and socketToUnit).
# Left out: timers (and startAt), targets, paths, automounts, preStop,
# postStop, shellcheck'ed scripts, aliases and [Install] beyond WantedBy=.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) concatStringsSep mkOption optional optionalAttrs optionalString types;

  unitScript = import ../unit-script.nix { inherit lib pkgs; };

  option = type: default: mkOption { inherit type default; };

  unitKinds = "service|socket|device|mount|automount|swap|target|path|timer|scope|slice";
  unitNames = option (types.listOf (types.strMatching "[a-zA-Z0-9@%:_.-]+\\.(${unitKinds})")) [ ];

  # One key of a [Unit] or [Service] section. A list is a key systemd takes
  # several times: list definitions are concatenated (a scalar definition
  # among them counts as one element). Scalar definitions must all agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if lib.any (def: builtins.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  # NixOS refuses a Type= or Restart= that systemd does not know: it traces
  # the reason and the serviceConfig definition fails its type check. A
  # value may still be wrapped in mkIf/mkOverride at this point.
  knownServiceValues = {
    Type = [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ];
    Restart = [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ];
  };
  serviceSectionOk =
    section:
    let
      unwrap = v: if builtins.elem (v._type or "") [ "if" "override" ] then v.content else v;
      errors = lib.concatLists (
        lib.mapAttrsToList (
          key: allowed:
          optional (
            section ? ${key} && !builtins.elem (unwrap section.${key}) allowed
          ) "Systemd Service field `${key}' cannot have value `${toString (unwrap section.${key})}'."
        ) knownServiceValues
      );
    in
    errors == [ ] || builtins.trace (concatStringsSep "\n" errors) false;

  # Dependency options and the [Unit] keys they fill (space-separated).
  dependencyKeys = {
    requires = "Requires";
    wants = "Wants";
    after = "After";
    before = "Before";
    bindsTo = "BindsTo";
    partOf = "PartOf";
    conflicts = "Conflicts";
  };

  # Every service's PATH ends with these (systemd-lib.nix's
  # stage2ServiceConfig, before 26.05's enableDefaultPath): systemd is
  # systemd.package there.
  defaultPath = with pkgs; [ coreutils findutils gnugrep gnused config.systemd.package ];

  # What i18n.nix and locale.nix put in systemd.globalEnvironment with their
  # defaults (i18n.supportedLocales, time.timeZone = null).
  globalEnvironment = {
    LOCALE_ARCHIVE = "${
      pkgs.glibcLocales.override {
        allLocales = false;
        locales = [ "C.UTF-8/UTF-8" "en_US.UTF-8/UTF-8" ];
      }
    }/lib/locale/locale-archive";
    TZDIR = "${pkgs.tzdata}/share/zoneinfo";
  };

  # The scripts and the [Service] key each one fills; ExecStart also gets
  # scriptArgs (after a space, even when empty).
  jobScripts = {
    preStart = { suffix = "pre-start"; set = exe: _: { ExecStartPre = [ exe ]; }; };
    script = { suffix = "start"; set = exe: svc: { ExecStart = "${exe} ${svc.scriptArgs}"; }; };
    postStart = { suffix = "post-start"; set = exe: _: { ExecStartPost = [ exe ]; }; };
    reload = { suffix = "reload"; set = exe: _: { ExecReload = exe; }; };
  };

  # The file of a trigger list: its items (flattened, paths copied to the
  # store) joined by spaces. The unit names the file, so the unit changes
  # exactly when a trigger does.
  triggerFile =
    key: name: items:
    "${pkgs.writeText "${key}-${name}" (
      toString (map (x: if builtins.isPath x then "${x}" else x) (lib.flatten items))
    )}";

  serviceModule =
    { name, config, options, ... }:
    {
      options =
        lib.genAttrs ([ "wantedBy" "requiredBy" "upheldBy" ] ++ builtins.attrNames dependencyKeys) (_: unitNames)
        // lib.genAttrs (builtins.attrNames jobScripts) (_: option types.lines "")
        // {
          enable = option types.bool true;
          description = option types.singleLineStr "";
          unitConfig = option (types.attrsOf unitOption) { };
          serviceConfig = option (types.addCheck (types.attrsOf unitOption) serviceSectionOk) { };
          environment = option (types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]))) { };
          path = option (types.listOf (types.oneOf [ types.package types.str ])) [ ];
          scriptArgs = option types.str "";
          restartTriggers = option (types.listOf types.unspecified) [ ];
          reloadTriggers = option (types.listOf unitOption) [ ];
          restartIfChanged = option types.bool true;
          reloadIfChanged = option types.bool false;
          stopIfChanged = option types.bool true;
          # No default: rendered only when defined.
          startLimitBurst = mkOption { type = types.int; };
          startLimitIntervalSec = mkOption { type = types.int; };
        };

      config = lib.mkMerge (
        [
          {
            path = lib.mkAfter defaultPath;
            environment.PATH = lib.mkIf (config.path != [ ]) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";

            unitConfig =
              lib.concatMapAttrs (
                opt: key: optionalAttrs (config.${opt} != [ ]) { ${key} = toString config.${opt}; }
              ) dependencyKeys
              // optionalAttrs (config.restartTriggers != [ ]) {
                X-Restart-Triggers = triggerFile "X-Restart-Triggers" name config.restartTriggers;
              }
              // optionalAttrs (config.reloadTriggers != [ ]) {
                X-Reload-Triggers = triggerFile "X-Reload-Triggers" name config.reloadTriggers;
              }
              // optionalAttrs (config.description != "") { Description = config.description; }
              // optionalAttrs options.startLimitIntervalSec.isDefined {
                StartLimitIntervalSec = toString config.startLimitIntervalSec;
              }
              // optionalAttrs options.startLimitBurst.isDefined {
                StartLimitBurst = toString config.startLimitBurst;
              };
          }
        ]
        ++ lib.mapAttrsToList (
          opt: job:
          lib.mkIf (config.${opt} != "") {
            serviceConfig = job.set (lib.getExe (unitScript "${name}-${job.suffix}" config.${opt})) config;
          }
        ) jobScripts
      );
    };

  # key=value lines: keys in sorted order, one line per element of a list,
  # booleans as true/false, anything else as its string.
  section =
    attrs:
    lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (
          key: value:
          map (v: "${key}=${if v == true then "true" else if v == false then "false" else toString v}\n") (
            lib.toList value
          )
        ) attrs
      )
    );

  serviceText =
    svc:
    let
      env = lib.filterAttrs (_: v: v != null) (globalEnvironment // svc.environment);
    in
    "[Unit]\n"
    + section svc.unitConfig
    + "\n[Service]\n"
    + lib.concatStrings (lib.mapAttrsToList (n: v: "Environment=${builtins.toJSON "${n}=${v}"}\n") env)
    # switch-to-configuration reads these to decide restart vs reload.
    + (
      if svc.reloadIfChanged then
        "X-ReloadIfChanged=true\n"
      else
        optionalString (!svc.restartIfChanged) "X-RestartIfChanged=false\n"
    )
    + optionalString (!svc.stopIfChanged) "X-StopIfChanged=false\n"
    + section svc.serviceConfig
    + optionalString (svc.wantedBy != [ ]) "\n[Install]\nWantedBy=${concatStringsSep " " svc.wantedBy}\n";

  # What mounts and sockets share (NixOS's commonUnitOptions, in part):
  # the dependency lists, enable, description and [Unit], which they fill.
  commonUnitModule =
    { config, ... }:
    {
      options =
        lib.genAttrs ([ "wantedBy" "requiredBy" ] ++ builtins.attrNames dependencyKeys) (_: unitNames)
        // {
          enable = option types.bool true;
          description = option types.singleLineStr "";
          unitConfig = option (types.attrsOf unitOption) { };
        };
      config.unitConfig =
        lib.concatMapAttrs (
          opt: key: optionalAttrs (config.${opt} != [ ]) { ${key} = toString config.${opt}; }
        ) dependencyKeys
        // optionalAttrs (config.description != "") { Description = config.description; };
    };

  mountModule =
    { config, ... }:
    {
      imports = [ commonUnitModule ];
      options = {
        mountConfig = option (types.attrsOf unitOption) { };
        what = mkOption { type = types.str; };
        where = mkOption { type = types.str; };
        type = option types.str "";
        options = option types.commas "";
      };
      config = {
        mountConfig = {
          What = config.what;
          Where = config.where;
        }
        // optionalAttrs (config.type != "") { Type = config.type; }
        // optionalAttrs (config.options != "") { Options = config.options; };
      };
    };

  mountText =
    m:
    "[Unit]\n"
    + section m.unitConfig
    + "\n[Mount]\n"
    + section m.mountConfig
    + optionalString (m.wantedBy != [ ]) "\n[Install]\nWantedBy=${concatStringsSep " " m.wantedBy}\n";

  socketModule = {
    imports = [ commonUnitModule ];
    options = {
      listenStreams = option (types.listOf types.str) [ ];
      listenDatagrams = option (types.listOf types.str) [ ];
      socketConfig = option (types.attrsOf unitOption) { };
    };
  };

  socketText =
    s:
    "[Unit]\n"
    + section s.unitConfig
    + "\n[Socket]\n"
    + section s.socketConfig
    + lib.concatMapStrings (l: "ListenStream=${l}\n") s.listenStreams
    + lib.concatMapStrings (l: "ListenDatagram=${l}\n") s.listenDatagrams
    + optionalString (s.wantedBy != [ ]) "\n[Install]\nWantedBy=${concatStringsSep " " s.wantedBy}\n";

  perService = f: lib.concatLists (lib.mapAttrsToList f config.systemd.services);
in
{
  options.systemd = {
    # As systemd.nix: the systemd whose tools the system (and modules that
    # call systemctl or systemd-creds) use.
    package = lib.mkPackageOption pkgs "systemd" { };
    services = option (types.attrsOf (types.submodule serviceModule)) { };
    mounts = option (types.listOf (types.submodule mountModule)) [ ];
    sockets = option (types.attrsOf (types.submodule socketModule)) { };
    # The unit files by file name; NixOS links a disabled one to /dev/null.
    units = option (types.attrsOf (
      types.submodule {
        options.enable = option types.bool true;
        options.text = option (types.nullOr types.str) null;
      }
    )) { };
    tmpfiles.rules = option (types.listOf types.str) [ ];
  };

  config = {
    systemd.units = lib.mapAttrs' (
      name: svc: lib.nameValuePair "${name}.service" { inherit (svc) enable; text = serviceText svc; }
    ) config.systemd.services
    // lib.listToAttrs (
      map (
        m: lib.nameValuePair "${utils.escapeSystemdPath m.where}.mount" { inherit (m) enable; text = mountText m; }
      ) config.systemd.mounts
    )
    // lib.mapAttrs' (
      name: s: lib.nameValuePair "${name}.socket" { inherit (s) enable; text = socketText s; }
    ) config.systemd.sockets;

    # In NixOS's order: the Type/Restart warnings, then network-online.
    warnings =
      perService (
        name: svc:
        optional (
          svc.serviceConfig.Type or "" == "oneshot"
          && builtins.elem (svc.serviceConfig.Restart or "no") [ "always" "on-success" ]
        ) "Service '${name}.service' with 'Type=oneshot' cannot have 'Restart=always' or 'Restart=on-success'"
      )
      ++ perService (
        name: svc:
        optional (
          builtins.elem "network-online.target" svc.after
          && !builtins.elem "network-online.target" (svc.wants ++ svc.requires ++ svc.bindsTo)
        ) "${name}.service is ordered after 'network-online.target' but doesn't depend on it"
      );
  };
}
