# The home-manager options nix/home-manager.nix sets, declared and rendered
# as home-manager (release-25.11) does, so that the real lib.evalModules
# checks the module's definitions against home-manager's own types. Any
# option not declared here fails the evaluation, as in home-manager.
# Each block names the file it mirrors.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.systemd.user;

  # modules/systemd.nix: unitBaseType, unitType and serviceType.
  unitBaseType =
    unitKind: mod:
    types.submodule {
      freeformType =
        with types;
        let
          primitive = oneOf [
            bool
            int
            str
            path
          ];
        in
        attrsOf (attrsOf (either primitive (listOf primitive)))
        // {
          description = "systemd ${unitKind} unit configuration";
        };
      imports = [
        {
          options.Unit = {
            Description = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            Documentation = mkOption {
              type = with types; coercedTo str lib.toList (listOf str);
              default = [ ];
            };
          };
        }
        mod
      ];
    };
  unitType = unitKind: types.attrsOf (unitBaseType unitKind { });
  serviceType = types.attrsOf (
    unitBaseType "service" {
      options = {
        Unit = {
          X-Reload-Triggers = mkOption {
            type = with types; listOf (either package str);
            default = [ ];
          };
          X-Restart-Triggers = mkOption {
            type = with types; listOf (either package str);
            default = [ ];
          };
          X-SwitchMethod = mkOption {
            type = types.enum [
              null
              "reload"
              "restart"
              "stop-start"
              "keep-old"
            ];
            default = null;
          };
        };
        Service = {
          Environment = mkOption {
            type = with types; coercedTo str lib.toList (listOf str);
            default = [ ];
          };
          ExecStart = mkOption {
            type =
              with types;
              let
                primitive = either package str;
              in
              either primitive (listOf primitive);
            apply = lib.toList;
            default = [ ];
          };
        };
      };
    }
  );

  # modules/systemd.nix: toSystemdIni, and buildService's dropping of
  # null and [ ] values and of empty sections.
  toSystemdIni = lib.generators.toINI {
    listsAsDuplicateKeys = true;
    mkKeyValue =
      key: value:
      let
        value' = if lib.isBool value then (if value then "true" else "false") else toString value;
      in
      "${key}=${value'}";
  };
  filterUnit =
    unit:
    lib.filterAttrs (_: v: v != { }) (
      lib.mapAttrs (_: lib.filterAttrs (_: v: v != null && v != [ ])) unit
    );
  # buildService: the unit under systemd/user/, and a link in
  # <target>.wants/ or <target>.requires/ per Install.WantedBy/RequiredBy
  # (which must be lists: `map` over them). The stub gives the unit's
  # text where home-manager gives a writeTextFile of the same text.
  buildService =
    style: name: serviceCfg:
    let
      filename = "${name}.${style}";
      unit = filterUnit serviceCfg;
      file = {
        text = toSystemdIni unit;
      };
      install = variant: target: {
        name = "systemd/user/${target}.${variant}/${filename}";
        value = file;
      };
    in
    [
      {
        name = "systemd/user/${filename}";
        value = file;
      }
    ]
    ++ map (install "wants") (serviceCfg.Install.WantedBy or [ ])
    ++ map (install "requires") (serviceCfg.Install.RequiredBy or [ ]);
  buildServices = style: units: lib.concatLists (lib.mapAttrsToList (buildService style) units);

  # modules/lib/file-type.nix (the options the module and the tests use).
  fileType = types.attrsOf (
    types.submodule (
      { name, config, ... }:
      {
        options = {
          enable = mkOption {
            type = types.bool;
            default = true;
          };
          target = mkOption {
            type = types.nonEmptyStr;
            default = name;
          };
          text = mkOption {
            type = types.nullOr types.lines;
            default = null;
          };
          source = mkOption {
            type = types.path;
          };
          executable = mkOption {
            type = types.nullOr types.bool;
            default = null;
          };
          recursive = mkOption {
            type = types.bool;
            default = false;
          };
          onChange = mkOption {
            type = types.lines;
            default = "";
          };
          force = mkOption {
            type = types.bool;
            default = false;
          };
        };
        config.source = lib.mkIf (config.text != null) (
          lib.mkDefault (
            pkgs.writeTextFile {
              inherit (config) text;
              executable = config.executable == true;
              name = lib.replaceStrings [ "/" ] [ "-" ] name;
            }
          )
        );
      }
    )
  );
in
{
  options = {
    # nixos/modules/misc/assertions.nix, which home-manager imports.
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
      internal = true;
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
      internal = true;
    };

    # modules/home-environment.nix
    home.username = mkOption { type = types.str; };
    home.homeDirectory = mkOption {
      type = types.path;
      apply = toString;
    };
    home.packages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    home.stateVersion = mkOption { type = types.str; };

    # modules/misc/xdg.nix
    xdg.configHome = mkOption {
      type = types.path;
      apply = toString;
    };
    xdg.configFile = mkOption {
      type = fileType;
      default = { };
    };

    # modules/systemd.nix
    systemd.user = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      services = mkOption {
        type = serviceType;
        default = { };
      };
      sockets = mkOption {
        type = unitType "socket";
        default = { };
      };
      targets = mkOption {
        type = unitType "target";
        default = { };
      };
      timers = mkOption {
        type = unitType "timer";
        default = { };
      };
      startServices = mkOption {
        type = with types; either bool (enum [ "suggest" "sd-switch" ]);
        apply = p: if lib.isBool p then p else p == "sd-switch";
        default = true;
      };
    };
  };

  config = {
    xdg.configHome = lib.mkOptionDefault "${config.home.homeDirectory}/.config";
    # release-25.11: no units for root.
    xdg.configFile = lib.mkIf (cfg.enable && config.home.username != "root") (
      lib.listToAttrs (
        buildServices "service" cfg.services
        ++ buildServices "socket" cfg.sockets
        ++ buildServices "target" cfg.targets
        ++ buildServices "timer" cfg.timers
      )
    );
  };
}
