# The home-manager configuration of the guest test's lingering user
# `alice`: her own client (key nix/tests/keys/alice.key, TEST-ONLY),
# registered on the VM test's server as `alice`, with a files consumer and
# a socket consumer, each a user service that records what it read.
# Evaluated by nix/tests/home-manager/eval.nix; `server` is the server's
# address.
{
  server ? "192.168.1.2",
}:
{ lib, ... }:
let
  locketLib = import ../lib.nix;
  fingerprint = lib.removeSuffix "\n" (builtins.readFile ./keys/server.fingerprint);
  # A user service that runs `script` (systemd's Exec= quoting).
  sh = script: locketLib.escapeSystemdExecArgs [ "/bin/sh" "-c" script ];
in
{
  home.username = "alice";
  home.homeDirectory = "/home/alice";
  home.stateVersion = "25.11";

  services.locket-client = {
    enable = true;
    server = "http://${server}:7410";
    serverFingerprint = fingerprint;
    name = "alice";
    fetchTimeout = 60;
    watch.interval = "5s";
    services = {
      # Files under $XDG_RUNTIME_DIR/locket/user-app/, its env file and a
      # template; a change restarts it.
      user-app = {
        secrets = [ "USER_TOKEN" ];
        restartUnits = [ "user-app.service" ];
        templates."app.conf".content = "token = {{ USER_TOKEN }}\n";
      };
      # No file: LoadCredential= from the watcher's memory.
      user-sock = {
        secrets = [ "USER_SOCKET" ];
        delivery = "socket";
        restartUnits = [ "user-sock.service" ];
      };
    };
  };

  # Each start appends the SHA-256 of what it read (never the value).
  systemd.user.services.user-app = {
    Unit.Description = "A user service reading its secrets from files";
    Service = {
      EnvironmentFile = "%t/locket/user-app/env";
      ExecStart = sh ''
        grep -qx "token = $USER_TOKEN" "$XDG_RUNTIME_DIR/locket/user-app/app.conf" || exit 1
        printf %s "$USER_TOKEN" | sha256sum | cut -d' ' -f1 >> "$HOME/user-app.starts"
        exec sleep infinity
      '';
    };
    Install.WantedBy = [ "default.target" ];
  };
  systemd.user.services.user-sock = {
    Unit.Description = "A user service reading its secret as a credential";
    Service = {
      ExecStart = sh ''
        sha256sum < "$CREDENTIALS_DIRECTORY/USER_SOCKET" | cut -d' ' -f1 >> "$HOME/user-sock.starts"
        exec sleep infinity
      '';
    };
    Install.WantedBy = [ "default.target" ];
  };
}
