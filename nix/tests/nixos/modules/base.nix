# The small NixOS options nix/module.nix and nix/tests/vm.nix set, each
# declared with the type and default NixOS 25.11 gives it:
#   assertions, warnings          nixos/modules/misc/assertions.nix
#   system.stateVersion           nixos/modules/misc/version.nix
#   networking.hostName           nixos/modules/tasks/network-interfaces.nix
#   networking.interfaces.*.ipv{4,6}.addresses  (the same file)
#   networking.firewall.*         nixos/modules/services/networking/firewall.nix
#   environment.systemPackages    nixos/modules/config/system-path.nix
#   environment.etc               nixos/modules/system/etc/etc.nix
#   _module.args.utils            nixos/modules/misc/extra-arguments.nix
#   services.prometheus.rules     nixos/modules/services/monitoring/prometheus/default.nix
#   meta.doc                      nixos/modules/misc/meta.nix (its docFile type:
#                                 a path whose merge keeps every definition
#                                 with its file, for the manual's chapters)
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  option = type: default: mkOption { inherit type default; };

  etcEntry =
    { name, config, options, ... }:
    {
      options = {
        enable = option types.bool true;
        target = mkOption { type = types.str; };
        text = option (types.nullOr types.lines) null;
        source = mkOption { type = types.path; };
        # "symlink", or the octal mode of a copy.
        mode = option types.str "symlink";
        # NixOS derives these from uid and gid (0), not declared here.
        user = option types.str "+0";
        group = option types.str "+0";
      };
      config = {
        target = lib.mkDefault name;
        # `text` goes to the store as etc-<name with / as ->, and the
        # source gets the priority of the text definition.
        source = lib.mkIf (config.text != null) (
          lib.mkDerivedConfig options.text (pkgs.writeText "etc-${lib.replaceStrings [ "/" ] [ "-" ] name}")
        );
      };
    };
in
{
  options = {
    # Checked when the system is built; eval.nix reports the failed ones.
    assertions = option (types.listOf types.unspecified) [ ] // { internal = true; };
    warnings = option (types.listOf types.str) [ ] // { internal = true; };

    # Rule files' contents, each written to the store as YAML.
    services.prometheus.rules = option (types.listOf types.str) [ ];

    meta.doc = mkOption {
      type = types.path // {
        merge = loc: defs: defs;
      };
      internal = true;
    };

    system.stateVersion = option types.str lib.trivial.release;

    # One DNS label (letters, digits, `-`, and the `_` NixOS tolerates), or
    # empty to take it from DHCP. NixOS's default is system.nixos.distroId.
    networking.hostName = option (types.strMatching "([[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?)?") "nixos";

    # Static addresses per interface (what fleetRegistry reads): NixOS's
    # networking.interfaces.<name>.ipv4/ipv6.addresses, each
    # { address; prefixLength; }.
    networking.interfaces = option (types.attrsOf (
      types.submodule {
        options =
          lib.genAttrs
            [
              "ipv4"
              "ipv6"
            ]
            (v: {
              addresses = option (types.listOf (
                types.submodule {
                  options = {
                    address = mkOption { type = types.str; };
                    prefixLength = mkOption {
                      type = types.addCheck types.int (n: n >= 0 && n <= (if v == "ipv4" then 32 else 128));
                    };
                  };
                }
              )) [ ];
            });
      }
    )) { };

    networking.firewall.enable = option types.bool true;
    # NixOS hands the ports on sorted and without duplicates.
    networking.firewall.allowedTCPPorts = option (types.listOf types.port) [ ] // {
      apply = ports: lib.unique (lib.sort lib.lessThan ports);
    };

    environment.systemPackages = option (types.listOf types.package) [ ];
    environment.etc = option (types.attrsOf (types.submodule etcEntry)) { };
  };

  config._module.args.utils = import ../utils.nix { inherit lib; };
}
