# docs/nixos.md's fleetRegistry example, evaluated with nixpkgs' real
# lib.evalModules: three hosts, each through the flake's
# nixosModules.default, and a server whose `clients` come from
# `self.lib.fleetRegistry` over all of them (itself included, as
# `self.nixosConfigurations` would).
#
#   nix-instantiate --eval --strict --json nix/tests/fleet.nix --arg libPath ../shared/nixpkgs-lib/lib
#
# evaluates to { registry; serverClients; failedAssertions; }. With
# `--argstr break <case>` one host is bent so that the registry cannot be
# derived (duplicate, noKey, everySecret, noNetworks); evaluation must then
# fail with a message naming the host(s) (nix/tests/run.sh checks the text).
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ./nixpkgs-lib.nix libPath,
  break ? null,
}:
let
  nixos = args: import ./nixos/eval.nix ({ inherit lib; } // args);
  self = (nixos { }).self;
  host = config: nixos { modules = [ self.nixosModules.default config ]; };
  fingerprint = lib.fileContents ./keys/server.fingerprint;

  # What every client host shares: where the server is, and its pin.
  client = name: extra: {
    networking.hostName = name;
    services.locket.client = {
      enable = true;
      server = "http://10.0.0.1:7410";
      serverFingerprint = fingerprint;
    }
    // extra;
  };

  nodes = {
    # Key inline, networks declared, two consumers sharing a name.
    web1 = host (
      client "web1" (
        {
          publicKey = "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
          networks = [ "10.0.1.11/32" ];
          services.nginx.secrets = [
            "DB_PASSWORD"
            "API_TOKEN"
          ];
          services.worker.secrets = [
            "API_TOKEN"
            "QUEUE_URL"
          ];
        }
        // lib.optionalAttrs (break == "everySecret") { services.cron.secrets = [ ]; }
      )
    );
    # Key from a committed .pub file, networks from its addresses.
    web2 = host (
      lib.recursiveUpdate
        (client "web2" (
          {
            services.api.secrets = [ "API_TOKEN" ];
          }
          // lib.optionalAttrs (break != "noKey") { publicKeyFile = ./keys/app.pub; }
          // lib.optionalAttrs (break == "duplicate") { name = "web1"; }
        ))
        (
          lib.optionalAttrs (break != "noNetworks") {
            networking.interfaces.eth0.ipv4.addresses = [
              {
                address = "10.0.1.12";
                prefixLength = 24;
              }
            ];
            networking.interfaces.eth0.ipv6.addresses = [
              {
                address = "fd00::12";
                prefixLength = 64;
              }
            ];
          }
        )
    );
    # The server, registering the fleet (itself included: it is no client).
    db1 = host {
      networking.hostName = "db1";
      services.locket = {
        enable = true;
        sources = [
          {
            type = "dotenv";
            path = "/run/secrets/app.env";
          }
        ];
        clients = self.lib.fleetRegistry { inherit nodes; };
      };
    };
  };
in
{
  registry = self.lib.fleetRegistry { inherit nodes; };
  # Through the build-time check (a runCommand over the generated file).
  serverClients = (builtins.head (builtins.attrValues nodes.db1.etc."locket/server.toml".build.inputs)).value.clients;
  inherit (nodes.db1) failedAssertions;
}
