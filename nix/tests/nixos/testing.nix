# The test-level module of a runNixOSTest test, limited to what
# nix/tests/vm.nix uses. Mirrors (NixOS 25.11):
#   nixos/lib/testing/name.nix, testScript.nix   name, testScript
#   nixos/lib/testing/nodes.nix    nodes: NixOS configurations that share one
#                                  type, see each other through the `nodes`
#                                  module argument, and get the read-only
#                                  nixpkgs module with node.pkgs
#   nixos/lib/testing/network.nix  nodes numbered 1, 2, … in name order;
#                                  hostName = the node's name, primary
#                                  address 192.168.1.<number> (vlan 1)
#   nixos/modules/virtualisation/qemu-vm.nix  networking.primaryIPAddress
#   nixos/modules/testing/test-instrumentation.nix  stateVersion pinned
# `evalConfig` is eval.nix's stand-in for nixos/lib/eval-config.nix.
evalConfig:
{ config, lib, ... }:
let
  inherit (lib) mkOption types;

  numbers = lib.listToAttrs (lib.imap1 (i: n: lib.nameValuePair n i) (lib.attrNames config.nodes));

  # What the nodes see as `nodes`: each node's config (NixOS still accepts
  # the older nodes.<n>.config too).
  nodesArg = lib.mapAttrs (_: node: node // { config = node; }) config.nodes;

  perNode =
    { config, name, ... }:
    {
      options.virtualisation.test.nodeName = mkOption {
        type = types.str;
        default = name;
        internal = true;
      };
      options.networking.primaryIPAddress = mkOption {
        type = types.str;
        default = "";
        internal = true;
      };
      # A specialisation's `name` is "configuration": hand it the node's.
      options.specialisation = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.configuration = mkOption {
              type = types.submoduleWith {
                modules = [ { virtualisation.test.nodeName = config.virtualisation.test.nodeName; } ];
              };
            };
          }
        );
      };
      config = {
        networking.hostName = lib.mkDefault config.virtualisation.test.nodeName;
        networking.primaryIPAddress = "192.168.1.${toString numbers.${config.virtualisation.test.nodeName}}";
        system.stateVersion = lib.mkDefault lib.trivial.release;
        _module.args.nodes = nodesArg;
      };
    };

  nodeOS = evalConfig {
    baseModules = [
      ./stubs.nix
      perNode
    ];
    modules = [ { nixpkgs.pkgs = config.node.pkgs; } ];
  };
in
{
  options = {
    name = mkOption { type = types.str; };
    testScript = mkOption { type = types.either types.str (types.functionTo types.str); };
    testScriptString = mkOption {
      type = types.str;
      readOnly = true;
      internal = true;
    };
    nodes = mkOption {
      type = types.lazyAttrsOf nodeOS.type;
      default = { };
    };
    # pkgs of the nodes (read-only in them) and of the test driver.
    node.pkgs = mkOption { type = types.pkgs; };
    hostPkgs = mkOption { type = types.raw; };
  };

  config = {
    _module.args.nodes = nodesArg;
    testScriptString =
      if lib.isFunction config.testScript then config.testScript { nodes = nodesArg; } else config.testScript;
  };
}
