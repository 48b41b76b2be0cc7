# NixOS VM test of the whole handshake: a server, an allowed client and an
# intruder, and delivery on the client (files, a template, credentials, the
# watcher's restart on a change, the boot cache). Run with `nix flake check`
# (or `nix build .#checks.x86_64-linux.vm-handshake`).
#
# The keys under ./keys are TEST-ONLY and public. They reach the machines
# through tmpfiles copies so that the module's options point outside the
# Nix store, as the module demands of real secrets.
{ self }:
let
  keys = {
    app = builtins.readFile ./keys/app.pub;
    alice = builtins.readFile ./keys/alice.pub;
    intruder = builtins.readFile ./keys/intruder.pub;
    fingerprint = builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile ./keys/server.fingerprint);
  };
  trim = s: builtins.replaceStrings [ "\n" ] [ "" ] s;
  expect = import ./expectations.nix;
  secretsEnv = ./fixtures/vm-secrets.env;
  # The client's consumers, and the plan its `plan-change` specialisation
  # switches to: demo-consumer's template changes (a plan change for a
  # running consumer), group-consumer leaves the plan (its folder goes).
  consumers = {
    demo-consumer = {
      secrets = [
        "DB_PASSWORD"
        "API_TOKEN"
      ];
      user = "demo";
      group = "demo";
      # A change restarts it (once), which reads the env file again.
      restartUnits = [ "demo-consumer.service" ];
      templates."app.ini".content = "[db]\npassword = {{ DB_PASSWORD }}\n";
      # With the server down it starts from the cache.
      cacheMaxAge = "10m";
    };
    # A DynamicUser consumer reads its secret as a credential.
    cred-consumer = {
      secrets = [ "API_TOKEN" ];
      credentials = true;
      # Credentials are copied at start: a change needs a restart.
      restartUnits = [ "cred-consumer.service" ];
    };
    # Socket delivery: from the watcher's memory through LoadCredential=,
    # no file anywhere but the unit's own credentials (SOCKET_ONLY goes to
    # no other consumer, so a scan of /run and /var can look for it).
    sock-consumer = {
      secrets = [
        "SOCKET_ONLY"
        "API_TOKEN"
      ];
      delivery = "socket";
      restartUnits = [ "sock-consumer.service" ];
      templates."conf.ini".content = "[auth]\ntoken = {{ SOCKET_ONLY }}\n";
    };
    # Group delivery: files 0440 root:readers, read by a DynamicUser
    # consumer through SupplementaryGroups.
    group-consumer = {
      secrets = [ "API_TOKEN" ];
      group = "readers";
      mode = "0440";
      envFile = false;
    };
  };
  changedConsumers = builtins.removeAttrs consumers [ "group-consumer" ] // {
    demo-consumer = consumers.demo-consumer // {
      templates."app.ini".content = "[db]\npassword = {{ DB_PASSWORD }}\nplan = changed\n";
    };
  };
in
{
  name = "locket-handshake";

  nodes = {
    server =
      { nodes, ... }:
      {
        imports = [ self.nixosModules.default ];
        systemd.tmpfiles.rules = [
          "d /etc/locket-test 0700 root root -"
          "C /etc/locket-test/server-key.pem 0600 root root - ${./keys/server-key.pem}"
          "C /etc/locket-test/secrets.env 0600 root root - ${secretsEnv}"
        ];
        services.locket = {
          enable = true;
          listenAddress = "0.0.0.0";
          openFirewall = true;
          keyFile = "/etc/locket-test/server-key.pem";
          sources = [
            {
              type = "dotenv";
              path = "/etc/locket-test/secrets.env";
            }
          ];
          clients.app = {
            keys = [ (trim keys.app) ];
            networks = [ "${nodes.client.networking.primaryIPAddress}/32" ];
            secrets = [
              "DB_PASSWORD"
              "API_TOKEN"
              "MULTI"
              "SOCKET_ONLY"
            ];
          };
        };
        # A user's own client on the client host (the guest test's
        # home-manager user alice, nix/tests/home.nix): its own key and
        # grants, beside the host's.
        services.locket.clients.alice = {
          keys = [ (trim keys.alice) ];
          networks = [ "${nodes.client.networking.primaryIPAddress}/32" ];
          secrets = [
            "USER_TOKEN"
            "USER_SOCKET"
          ];
        };
        # A registry change: the intruder becomes a client of its own.
        specialisation.registry-change.configuration = {
          services.locket.clients.intruder = {
            keys = [ (trim keys.intruder) ];
            networks = [ "${nodes.intruder.networking.primaryIPAddress}/32" ];
            secrets = [ "API_TOKEN" ];
          };
        };
      };

    client =
      { nodes, pkgs, lib, ... }:
      {
        imports = [ self.nixosModules.default ];
        systemd.tmpfiles.rules = [
          "d /var/lib/locket-client 0700 root root -"
          "C /var/lib/locket-client/client.key 0600 root root - ${./keys/app.key}"
          # A key the server does not know for this client (wrong-key test).
          "C /var/lib/locket-client/other.key 0600 root root - ${./keys/intruder.key}"
        ];
        services.locket.client = {
          enable = true;
          server = "http://${nodes.server.networking.primaryIPAddress}:7410";
          serverFingerprint = keys.fingerprint;
          name = "app";
          generateKey = false;
          services = consumers;
          fetchTimeout = 20;
          watch.interval = "5s";
        };
        specialisation.plan-change.configuration = {
          services.locket.client.services = lib.mkForce changedConsumers;
        };
        users.groups.readers = { };
        systemd.services.group-consumer = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            DynamicUser = true;
            SupplementaryGroups = [ "readers" ];
          };
          script = ''
            test "$(cat /run/locket/group-consumer/API_TOKEN)" = vm-api-token
          '';
        };
        # Reads its credentials from the watcher's socket; each start
        # appends the SHA-256 of what it read (never the value itself).
        systemd.services.sock-consumer = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            DynamicUser = true;
            StateDirectory = "sock-consumer";
          };
          script = ''
            test "$(cat "$CREDENTIALS_DIRECTORY/API_TOKEN")" = vm-api-token
            token=$(cat "$CREDENTIALS_DIRECTORY/SOCKET_ONLY")
            test -n "$token"
            grep -Fxq "token = $token" "$CREDENTIALS_DIRECTORY/conf.ini"
            sha256sum <"$CREDENTIALS_DIRECTORY/SOCKET_ONLY" | cut -d' ' -f1 >> "$STATE_DIRECTORY/starts"
          '';
        };
        systemd.services.cred-consumer = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            DynamicUser = true;
            StateDirectory = "cred-consumer";
          };
          script = ''
            test "$(cat "$CREDENTIALS_DIRECTORY/API_TOKEN")" = vm-api-token
            echo started > "$STATE_DIRECTORY/proof"
          '';
        };
        users.users.demo = {
          isSystemUser = true;
          group = "demo";
        };
        users.groups.demo = { };
        # A consumer that starts only with its secrets in place.
        systemd.services.demo-consumer = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            User = "demo";
            Group = "demo";
            EnvironmentFile = "/run/locket/demo-consumer/env";
            StateDirectory = "demo-consumer";
          };
          # The env file and the files agree (the value itself changes in
          # the test); each start appends a line to `starts`.
          script = ''
            test -n "$DB_PASSWORD"
            test "$DB_PASSWORD" = "$(cat /run/locket/demo-consumer/DB_PASSWORD)"
            test "$(cat /run/locket/demo-consumer/API_TOKEN)" = vm-api-token
            echo started > /var/lib/demo-consumer/proof
            date +%s%N >> /var/lib/demo-consumer/starts
          '';
        };
      };

    intruder =
      { nodes, ... }:
      {
        imports = [ self.nixosModules.default ];
        environment.etc."intruder/own.key" = {
          source = ./keys/intruder.key;
          mode = "0600";
        };
        environment.etc."intruder/stolen.key" = {
          source = ./keys/app.key;
          mode = "0600";
        };
        services.locket.client = {
          enable = true;
          server = "http://${nodes.server.networking.primaryIPAddress}:7410";
          serverFingerprint = keys.fingerprint;
          name = "app";
          keyFile = "/etc/intruder/own.key";
          generateKey = false;
        };
      };
  };

  testScript =
    { nodes, ... }:
    ''
      # The server first, the clients once it answers: their fetch units
      # run at boot, and fetchTimeout bounds a wait for a server that is
      # down, not for one booting in the same second. A real fleet boots a
      # host against servers that are already up (and a fetch retries
      # within its bound either way).
      server.start()
      server.wait_for_unit("locket.service")
      server.wait_for_open_port(7410)
      client.start()
      intruder.start()

      with subtest("the server key is the pinned one and the server runs hardened"):
          server.succeed("locket fingerprint --config /etc/locket/server.toml | grep -x '${keys.fingerprint}'")
          server.succeed("systemctl show locket -p DynamicUser | grep -x DynamicUser=yes")

      with subtest("the allowed client fetches with the CLI"):
          client.wait_for_unit("multi-user.target")
          client.succeed("locket-client --config /etc/locket/client.toml get DB_PASSWORD | grep -x vm-db-password")
          out = client.succeed("locket-client --config /etc/locket/client.toml env --format json")
          import json
          got = json.loads(out)
          assert got == {"API_TOKEN": "vm-api-token", "DB_PASSWORD": "vm-db-password", "MULTI": "line one\nline two"}, got
          # Not granted: denied (exit 3). Granted but absent would be 4.
          client.fail("locket-client --config /etc/locket/client.toml get OTHER")
          rc = client.execute("locket-client --config /etc/locket/client.toml get OTHER")[0]
          assert rc == 3, rc

      with subtest("the generated unit feeds the consumer, which never starts without it"):
          client.wait_for_unit("locket-fetch-demo-consumer.service")
          client.wait_for_unit("demo-consumer.service")
          client.succeed("grep -x started /var/lib/demo-consumer/proof")
          client.succeed("test \"$(stat -c '%a %U %G' /run/locket/demo-consumer/DB_PASSWORD)\" = '400 demo demo'")
          client.succeed("grep -x vm-db-password /run/locket/demo-consumer/DB_PASSWORD")
          client.succeed("test ! -e /run/locket/demo-consumer/MULTI")
          # A ramfs: never written to swap.
          client.succeed("test \"$(findmnt -no FSTYPE /run/locket)\" = ramfs")

      with subtest("a template is rendered beside the secrets, with the consumer's owner and mode"):
          client.succeed("grep -Fx 'password = vm-db-password' /run/locket/demo-consumer/app.ini")
          client.succeed("test \"$(stat -c '%a %U %G' /run/locket/demo-consumer/app.ini)\" = '400 demo demo'")
          client.fail("grep -F '{{' /run/locket/demo-consumer/app.ini")

      with subtest("a DynamicUser consumer reads its secret from LoadCredential="):
          client.wait_for_unit("cred-consumer.service")
          client.succeed("grep -x started /var/lib/cred-consumer/proof")
          client.succeed("test \"$(stat -c '%a %U' /run/locket/cred-consumer/API_TOKEN)\" = '400 root'")

      with subtest("group delivery reaches a DynamicUser consumer"):
          client.wait_for_unit("group-consumer.service")
          client.succeed("test \"$(stat -c '%a %U %G' /run/locket/group-consumer)\" = '750 root readers'")
          client.succeed("test \"$(stat -c '%a %U %G' /run/locket/group-consumer/API_TOKEN)\" = '440 root readers'")

      with subtest("a changed value reaches the files and the template, and restarts demo-consumer exactly once"):
          import time
          client.wait_for_unit("locket-watch.service")
          client.succeed("test -s /run/locket-watch/status.json")
          before = int(client.succeed("wc -l < /var/lib/demo-consumer/starts").strip())
          # The dotenv source reaches the server as a credential, which a
          # restart copies again (a reload would read the old copy).
          server.succeed("sed -i 's/^DB_PASSWORD=.*/DB_PASSWORD=vm-db-password-2/' /etc/locket-test/secrets.env")
          server.systemctl("restart locket.service")
          server.wait_for_unit("locket.service")
          server.wait_for_open_port(7410)
          client.wait_until_succeeds(f"test $(wc -l < /var/lib/demo-consumer/starts) -gt {before}", timeout=60)
          client.wait_for_unit("demo-consumer.service")
          client.succeed("grep -x vm-db-password-2 /run/locket/demo-consumer/DB_PASSWORD")
          client.succeed("grep -Fx 'password = vm-db-password-2' /run/locket/demo-consumer/app.ini")
          # Three more watcher rounds (counted in its status, not timed):
          # the change is not applied twice.
          r = json.loads(client.succeed("cat /run/locket-watch/status.json"))["rounds"]
          client.wait_until_succeeds(f"test $(grep -o '\"rounds\": [0-9]*' /run/locket-watch/status.json | grep -o '[0-9]*$') -ge {r + 3}", timeout=120)
          after = int(client.succeed("wc -l < /var/lib/demo-consumer/starts").strip())
          assert after == before + 1, f"demo-consumer started {after - before} times for one change"

      with subtest("a wrong key from an allowed address, and the right key from a wrong address, are denied"):
          rc = client.execute("locket-client --config /etc/locket/client.toml --key /var/lib/locket-client/other.key get API_TOKEN")[0]
          assert rc == 3, f"wrong key from the client's address: {rc}"
          server.wait_until_succeeds("journalctl -u locket -o cat | grep -E '${expect.wrongKey}' >/dev/null", timeout=60)
          intruder.wait_for_unit("multi-user.target")
          rc = intruder.execute("locket-client --config /etc/locket/client.toml get API_TOKEN")[0]
          assert rc == 3, f"own key under the name app: {rc}"
          rc = intruder.execute("locket-client --config /etc/locket/client.toml --key /etc/intruder/stolen.key get API_TOKEN")[0]
          assert rc == 3, f"stolen key from a wrong address: {rc}"
          server.wait_until_succeeds("journalctl -u locket -o cat | grep -E '${expect.wrongAddress}' >/dev/null", timeout=60)
          server.fail("journalctl -u locket -o cat | grep vm-db-password >/dev/null")

      with subtest("after a server restart the pinned client still fetches"):
          server.systemctl("restart locket.service")
          server.wait_for_unit("locket.service")
          server.wait_for_open_port(7410)
          client.succeed("locket-client --config /etc/locket/client.toml get API_TOKEN | grep -x vm-api-token")

      with subtest("a registry change is applied by a reload: same process, warm cache"):
          pid = server.succeed("systemctl show -P MainPID locket.service").strip()
          server.succeed("/run/current-system/specialisation/registry-change/bin/switch-to-configuration test")
          server.wait_for_unit("locket.service")
          assert server.succeed("systemctl show -P MainPID locket.service").strip() == pid, "the server was restarted"
          # ExecReload= waits for the reload's outcome: the switch returned
          # after it; journald may take the line in a moment later.
          server.wait_until_succeeds("journalctl -u locket -o cat | grep 'config reloaded' >/dev/null", timeout=60)
          intruder.succeed("locket-client --config /etc/locket/client.toml --name intruder get API_TOKEN | grep -x vm-api-token")
          rc = intruder.execute("locket-client --config /etc/locket/client.toml --name intruder get DB_PASSWORD")[0]
          assert rc == 3, rc

      with subtest("with the server down, a fetch gives up in bounded time and its consumer does not start"):
          server.systemctl("stop locket.service")
          # group-consumer has no cache (cacheMaxAge = null). Restarted in
          # the outage, it starts on the files it was running with.
          client.succeed("systemctl restart group-consumer.service")
          client.wait_until_succeeds("journalctl -u locket-fetch-group-consumer -o cat | grep 'kept the files already in /run/locket/group-consumer' >/dev/null", timeout=60)
          # After a boot /run is empty: then nothing can stand in.
          client.systemctl("stop group-consumer.service")
          client.succeed("rm -rf /run/locket/group-consumer")
          started = time.monotonic()
          client.fail("systemctl start group-consumer.service")
          took = time.monotonic() - started
          assert took < 60, f"the fetch took {took:.0f} s to give up (fetchTimeout = 20)"
          client.wait_until_succeeds("journalctl -u locket-fetch-group-consumer -o cat | grep 'http://${nodes.server.networking.primaryIPAddress}:7410' >/dev/null", timeout=60)
          client.fail("systemctl is-active group-consumer.service")

      with subtest("with the server down, a consumer with cacheMaxAge starts from its boot cache"):
          client.succeed("test \"$(stat -c '%a %U' /var/lib/locket-client/cache)\" = '700 root'")
          client.systemctl("stop demo-consumer.service")
          # As after a boot: /run is empty, the cache is not.
          client.succeed("rm -rf /run/locket/demo-consumer")
          client.succeed("systemctl start demo-consumer.service")
          client.succeed("grep -x vm-db-password-2 /run/locket/demo-consumer/DB_PASSWORD")
          client.succeed("grep -Fx 'password = vm-db-password-2' /run/locket/demo-consumer/app.ini")
          client.fail("grep -rq vm-db-password-2 /var/lib/locket-client/cache")

      with subtest("with the server down, a plan change leaves the running consumer on its files"):
          before = client.succeed("systemctl show -P ActiveEnterTimestampMonotonic demo-consumer.service")
          client.succeed("/run/current-system/specialisation/plan-change/bin/switch-to-configuration test")
          assert client.succeed("systemctl show -P ActiveEnterTimestampMonotonic demo-consumer.service") == before, "demo-consumer was restarted"
          client.succeed("systemctl is-active demo-consumer.service")
          client.succeed("grep -x vm-db-password-2 /run/locket/demo-consumer/DB_PASSWORD")
          # group-consumer left the plan: the restarted watcher removes its folder.
          client.wait_until_succeeds("test ! -e /run/locket/group-consumer", timeout=120)
          # The server back: the watcher delivers the new plan.
          server.systemctl("start locket.service")
          client.wait_until_succeeds("grep -Fx 'plan = changed' /run/locket/demo-consumer/app.ini", timeout=120)
    '';
}
