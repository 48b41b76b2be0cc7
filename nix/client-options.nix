# Options the NixOS client side (services.locket.client, ./module.nix) and
# the home-manager module (services.locket-client, ./home-manager.nix)
# share: where the server is, how its key is pinned, the fetch's deadline
# and the watcher. Declared once, so the two cannot drift apart.
{ lib }:
let
  inherit (lib) mkOption types;
  locketLib = import ./lib.nix;
in
rec {
  # A duration as the client reads it (humantime): "30s", "12h", "7d".
  durationType = types.strMatching locketLib.durationPattern // {
    description = "duration (a number and a unit, e.g. 30s, 2m, 12h, 7d; not zero)";
  };
  fileModeType = types.strMatching "0[0-7][0-7]0";
  # A path outside the Nix store (secret material, read at run time).
  secretPath = types.externalPath;

  connection = {
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
        or a switch.
      '';
    };
  };

  watch = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `locket-watch.service`, which fetches every consumer's
        secrets again each `watch.interval` and applies a change: it
        rewrites the files, then restarts restartUnits, reloads
        reloadUnits and runs onChange of the consumers whose values
        changed. It also serves `delivery = "socket"` consumers. Off:
        secrets are fetched only when a consumer starts.
      '';
    };
    interval = mkOption {
      type = durationType;
      default = "2m";
      example = "30s";
      description = "How often the watcher asks the server for new values.";
    };
  };
}
