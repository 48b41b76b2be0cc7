# The home-manager module (nix/home-manager.nix), evaluated by the real
# module system (nixpkgs' lib.evalModules) against stubs of the
# home-manager options it sets (./home-manager/stubs.nix: home-manager's
# own types and unit rendering), with pure checks of what it generates
# (issue #29, user services).
#
#   nix-instantiate --eval --strict --json nix/tests/home-eval.nix --arg libPath ../shared/nixpkgs-lib/lib
#
# evaluates to { passed = N; failed = [ names ]; }.
{
  libPath ? ../../../shared/nixpkgs-lib/lib,
  lib ? import ./nixpkgs-lib.nix libPath,
}:
let
  inherit (lib) hasInfix hasPrefix filter splitString;
  home = modules: import ./home-manager/eval.nix { inherit lib modules; };
  fails = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
  lines = text: filter (l: l != "") (splitString "\n" text);
  has = unit: line: builtins.elem line (lines unit);
  fp = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";

  guest = home [ (import ./home.nix { }) ];
  plan = guest.files."locket/delivery.toml".value;
  client = guest.files."locket/client.toml".value;

  # A minimal user with one consumer, changed by `extra`.
  user =
    extra:
    home [
      {
        home.username = "bob";
        home.homeDirectory = "/home/bob";
        home.stateVersion = "25.11";
        services.locket-client = {
          enable = true;
          server = "http://10.0.0.1:7410";
          serverFingerprint = fp;
          name = "bob";
          services.app = {
            secrets = [ "A" ];
            restartUnits = [ "app.service" ];
          };
        };
      }
      extra
    ];
  messages = cfg: (user cfg).failedAssertions;
  says = cfg: text: builtins.any (m: hasInfix text m) (messages cfg);

  checks = {
    # A files consumer: a user oneshot that the consumer requires (the
    # home-manager link <unit>.requires/), ordered before it, that
    # delivers its plan entry.
    fetchUnitRequiredByItsConsumer =
      guest.links."user-app.service.requires/locket-fetch-user-app.service" == "locket-fetch-user-app.service"
      && has guest.units."locket-fetch-user-app.service" "Before=user-app.service"
      && has guest.units."locket-fetch-user-app.service" "Type=oneshot"
      && hasInfix ''"deliver" "--plan" "/home/alice/.config/locket/delivery.toml" "--consumer" "user-app"'' guest.units."locket-fetch-user-app.service";
    # The plan is a user manager's: `%t` paths (no uid at evaluation), no
    # owner, the user's systemctl, the credential socket under %t.
    userPlan =
      plan.manager == "user"
      && plan.consumers.user-app.dir == "%t/locket/user-app"
      && plan.consumers.user-app.env_file == "%t/locket/user-app/env"
      && !(plan.consumers.user-app ? owner)
      && !(plan.consumers.user-app.templates."app.conf" ? owner)
      && plan.consumers.user-sock.delivery == "socket"
      && plan.consumers.user-sock.unit == "user-sock.service"
      && plan.credential_socket == "%t/locket/credentials.sock"
      && !(plan ? cache_dir)
      && hasPrefix "/nix/store/" plan.systemctl;
    # The key lives in the user's config folder by default, never the store.
    clientConfig = client.key_file == "/home/alice/.config/locket/client.key" && client.name == "alice" && client.server_fingerprint == lib.removeSuffix "\n" (builtins.readFile ./keys/server.fingerprint);
    # The watcher: started with the user manager (default.target), its
    # socket with sockets.target, restarted when the plan or config change.
    watcher =
      guest.links."default.target.wants/locket-watch.service" == "locket-watch.service"
      && guest.links."sockets.target.wants/locket-watch.socket" == "locket-watch.socket"
      && has guest.units."locket-watch.service" "Type=notify"
      && has guest.units."locket-watch.service" "X-Restart-Triggers=${guest.files."locket/delivery.toml".source}"
      && has guest.units."locket-watch.socket" "ListenStream=%t/locket/credentials.sock"
      && has guest.units."locket-watch.socket" "SocketMode=0600";
    # A socket consumer's own unit asks the socket, after it, and stops on
    # an empty credential; it has no fetch unit.
    socketConsumer =
      has guest.units."user-sock.service" "LoadCredential=USER_SOCKET:%t/locket/credentials.sock"
      && has guest.units."user-sock.service" "Requires=locket-watch.socket"
      && hasInfix "journalctl --user -u locket-watch" guest.units."user-sock.service"
      && !(guest.units ? "locket-fetch-user-sock.service");
    # Two socket consumers of one unit: its LoadCredential= lists both
    # (merged, as the NixOS module merges them), neither is lost.
    socketConsumersShareAUnit =
      let
        shared = user {
          services.locket-client.services = {
            a = {
              secrets = [ "A1" ];
              delivery = "socket";
              unit = "both.service";
              restartUnits = [ "both.service" ];
            };
            b = {
              secrets = [ "B1" ];
              delivery = "socket";
              unit = "both.service";
              restartUnits = [ "both.service" ];
            };
          };
        };
      in
      has shared.units."both.service" "LoadCredential=A1:%t/locket/credentials.sock"
      && has shared.units."both.service" "LoadCredential=B1:%t/locket/credentials.sock";
    nothingWrongInTheGuestHome = guest.failedAssertions == [ ] && guest.warnings == [ ];
    # Refusals name home-manager's option path and what to do.
    refusesAnUnpinnedServer = says { services.locket-client.serverFingerprint = lib.mkForce null; } "services.locket-client: the server's key is not pinned";
    refusesAKeyInTheStore = says { services.locket-client.keyFile = "/nix/store/aaaa-key"; } "services.locket-client.keyFile is in the Nix store";
    refusesSocketWithoutNames = says {
      services.locket-client.services.s = {
        delivery = "socket";
        restartUnits = [ "s.service" ];
      };
    } "services.locket-client.services.s.secrets: a delivery = \"socket\" consumer needs each secret by name";
    refusesSocketWithoutWatcher = says {
      services.locket-client.watch.enable = false;
      services.locket-client.services.s = {
        secrets = [ "S" ];
        delivery = "socket";
        restartUnits = [ "s.service" ];
      };
    } "services.locket-client.services.s: delivery = \"socket\" is served by locket-watch, but services.locket-client.watch.enable is false";
    warnsSocketWithoutRestart =
      (user {
        services.locket-client.services.s = {
          secrets = [ "S" ];
          delivery = "socket";
        };
      }).warnings == [
        "services.locket-client.services.s: delivery = \"socket\", but neither restartUnits nor onChange is set: systemd reads credentials when s.service starts, so a changed value never reaches it. Add s.service to restartUnits."
      ];
    # What a user manager cannot do is not offered: owners, the boot cache.
    noOwnerOption = fails (user { services.locket-client.services.app.user = "root"; }).json;
    noCacheOption = fails (user { services.locket-client.services.app.cacheMaxAge = "1d"; }).json;
    # Turned off, it generates nothing.
    offIsNothing =
      (home [
        {
          home.username = "bob";
          home.homeDirectory = "/home/bob";
          home.stateVersion = "25.11";
        }
      ]).files == { };
  };
  holds = n: (builtins.tryEval (builtins.deepSeq checks.${n} checks.${n})).value == true;
in
{
  inherit checks;
  passed = builtins.length (builtins.filter holds (builtins.attrNames checks));
  failed = builtins.filter (n: !holds n) (builtins.attrNames checks);
}
