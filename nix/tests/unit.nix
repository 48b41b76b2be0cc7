# Unit tests of nix/lib.nix, pure: `nix-instantiate --eval --strict --json nix/tests/unit.nix`
# evaluates to { passed = N; failed = [ { name; expected; actual; } ]; }.
let
  l = import ../lib.nix;
  fpA = "5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
  fpB = "0b8e4f2c7d1a9e3b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";
  app = {
    keys = [ "ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U=" ];
    networks = [ "10.0.1.0/24" ];
    secrets = [ "DB_*" ];
  };
  svc = {
    secrets = [
      "A"
      "B"
    ];
    user = "web";
    group = "www";
    mode = "0400";
    envFile = true;
  };
  # A consumer with every delivery option, as the module hands it over
  # (templates already carry their defaulted mode, owner and group).
  full = svc // {
    secrets = [
      "DB_PASSWORD"
      "db/user"
    ];
    restartUnits = [ "web.service" ];
    reloadUnits = [ "nginx.service" ];
    onChange = "touch /run/locket/web/changed";
    cacheMaxAge = "7d";
    credentials = false;
    templates."app.ini" = {
      content = "password = {{ DB_PASSWORD }}\n";
      mode = "0440";
      owner = "web";
      group = "www";
    };
  };
  pinned = {
    name = "app";
    keyFile = "/k";
    serverFingerprint = "sha256:${fpA}";
  };
  # The messages clientErrors gives for one consumer `c`.
  consumerErrors = c: l.clientErrors (pinned // { services.c = svc // c; });
  tests = {
    # A rotation: the next key is a credential, named in server.toml.
    nextKeyIsACredential = {
      expr =
        let
          args = {
            keyFile = "/run/secrets/a.pem";
            nextKeyFile = "/run/secrets/b.pem";
          };
        in
        {
          inherit (l.mkServerSettings args) key_file next_key_file;
          credentials = l.serverCredentials args;
        };
      expected = {
        key_file = "/run/credentials/locket.service/server-key";
        next_key_file = "/run/credentials/locket.service/server-next-key";
        credentials = [
          "server-key:/run/secrets/a.pem"
          "server-next-key:/run/secrets/b.pem"
        ];
      };
    };
    # One pin stays `server_fingerprint`; two become `server_fingerprints`.
    clientPins = {
      expr = map (extra: removeAttrs (l.mkClientSettings ({ server = "http://s"; name = "c"; keyFile = "/k"; } // extra)) [ "server" "name" "key_file" ]) [
        { serverFingerprint = "sha256:${fpA}"; }
        { serverFingerprint = "sha256:${fpA}"; serverFingerprints = [ "sha256:${fpB}" ]; }
        { serverFingerprints = [ "sha256:${fpB}" ]; }
      ];
      expected = [
        { server_fingerprint = "sha256:${fpA}"; }
        { server_fingerprints = [ "sha256:${fpA}" "sha256:${fpB}" ]; }
        { server_fingerprint = "sha256:${fpB}"; }
      ];
    };
    rotationPinsCountAsPinnedAndAreChecked = {
      expr = map (extra: builtins.length (l.clientErrors ({ name = "c"; keyFile = "/k"; } // extra))) [
        { serverFingerprints = [ "sha256:${fpB}" ]; }
        { serverFingerprints = [ "sha256:XYZ" ]; }
        { }
      ];
      expected = [
        0
        1
        1
      ];
    };
    defaults = {
      expr = l.mkServerSettings { };
      expected = {
        listen = "127.0.0.1:7410";
        key_file = "/var/lib/locket/server-key.pem";
        sources = [ ];
        clients = { };
      };
    };
    ipv6Listen = {
      expr = (l.mkServerSettings { listenAddress = "::"; port = 8443; }).listen;
      expected = "[::]:8443";
    };
    typedOptionsWinOverFreeformSettings = {
      expr = l.mkServerSettings {
        port = 9000;
        settings = {
          listen = "0.0.0.0:1";
          clock_skew = "20s";
        };
      };
      expected = {
        listen = "127.0.0.1:9000";
        clock_skew = "20s";
        key_file = "/var/lib/locket/server-key.pem";
        sources = [ ];
        clients = { };
      };
    };
    keyFileBecomesACredential = {
      expr = {
        settings = (l.mkServerSettings { keyFile = "/run/secrets/k.pem"; }).key_file;
        creds = l.serverCredentials { keyFile = "/run/secrets/k.pem"; };
      };
      expected = {
        settings = "/run/credentials/locket.service/server-key";
        creds = [ "server-key:/run/secrets/k.pem" ];
      };
    };
    sourcePathsBecomeCredentials = {
      expr =
        let
          sources = [
            {
              type = "dotenv";
              path = "/run/secrets/app.env";
              token_file = null;
            }
            {
              type = "env";
              prefix = "APP_";
              path = null;
            }
            {
              type = "onepassword-connect";
              url = "http://op:8080";
              vault = "prod";
              token_file = "/run/secrets/op-token";
            }
          ];
        in
        {
          settings = (l.mkServerSettings { inherit sources; }).sources;
          creds = l.serverCredentials { inherit sources; };
        };
      expected = {
        settings = [
          {
            type = "dotenv";
            path = "/run/credentials/locket.service/source-0-path";
          }
          {
            type = "env";
            prefix = "APP_";
          }
          {
            type = "onepassword-connect";
            url = "http://op:8080";
            vault = "prod";
            token_file = "/run/credentials/locket.service/source-2-token-file";
          }
        ];
        creds = [
          "source-0-path:/run/secrets/app.env"
          "source-2-token-file:/run/secrets/op-token"
        ];
      };
    };
    fileSourceKeepsItsFormat = {
      expr =
        (l.credentialize "locket.service" [
          {
            type = "file";
            path = "/run/secrets/a.json";
          }
          {
            type = "file";
            path = "/run/secrets/b.toml";
          }
          {
            type = "file";
            path = "/run/secrets/c";
            format = "json";
          }
        ]).sources;
      expected = [
        {
          type = "file";
          format = "json";
          path = "/run/credentials/locket.service/source-0-path";
        }
        {
          type = "file";
          format = "toml";
          path = "/run/credentials/locket.service/source-1-path";
        }
        {
          type = "file";
          format = "json";
          path = "/run/credentials/locket.service/source-2-path";
        }
      ];
    };
    credentialsDirectoryOverride = {
      expr =
        (l.mkServerSettings {
          credentialsDirectory = "/tmp/c";
          keyFile = "/k";
          sources = [
            {
              type = "dotenv";
              path = "/s";
            }
          ];
        });
      expected = {
        listen = "127.0.0.1:7410";
        key_file = "/tmp/c/server-key";
        sources = [
          {
            type = "dotenv";
            path = "/tmp/c/source-0-path";
          }
        ];
        clients = { };
      };
    };
    clientsKeepOnlyTheirThreeKeys = {
      expr = (l.mkServerSettings { clients.app = app // { _module = "ignored"; }; }).clients;
      expected.app = app;
    };
    validConfigHasNoErrors = {
      expr = l.serverErrors {
        sources = [
          {
            type = "dotenv";
            path = "/run/secrets/app.env";
          }
        ];
        clients.app = app;
      };
      expected = [ ];
    };
    storePathsAreRefused = {
      expr = builtins.length (
        l.serverErrors {
          keyFile = "${builtins.storeDir}/abc-key.pem";
          sources = [
            {
              type = "dotenv";
              path = "${builtins.storeDir}/abc-secrets.env";
            }
          ];
        }
      );
      expected = 2;
    };
    typedOptionsAreNotOverriddenInSettings = {
      expr = l.serverErrors {
        sources = [ { type = "env"; } ];
        settings = {
          listen = "0.0.0.0:1";
          next_key_file = "/run/secrets/next.pem";
          clock_skew = "20s";
        };
      };
      expected = [
        "services.locket.settings.listen is set, but services.locket.listenAddress and port writes listen: set it there instead (the typed option would win)"
        "services.locket.settings.next_key_file is set, but services.locket.nextKeyFile writes next_key_file: set it there instead (the typed option would win)"
      ];
    };
    # #31: a generated key's next key lives in the state directory, where
    # the server creates it; anywhere else it goes through nextKeyFile.
    aGeneratedNextKeyStaysInSettings = {
      expr = map (f: l.serverErrors {
        sources = [ { type = "env"; } ];
        settings.next_key_file = f;
      }) [ "/var/lib/locket/server-next-key.pem" "/var/lib/locket-other/next.pem" ];
      expected = [
        [ ]
        [ "services.locket.settings.next_key_file is set, but services.locket.nextKeyFile writes next_key_file: set it there instead (the typed option would win)" ]
      ];
    };
    # #31: a command source's files go through LoadCredential=, its
    # arguments point at the credentials; an unlisted file is refused.
    commandFilesAreCredentials = {
      expr =
        let
          args.sources = [
            {
              type = "command";
              command = [ "/run/current-system/sw/bin/sops" "-d" "--age-key" "/run/secrets/age.key" "/run/secrets/app.yaml" ];
              files = [ "/run/secrets/app.yaml" "/run/secrets/age.key" ];
            }
          ];
        in
        {
          inherit ((l.mkServerSettings args)) sources;
          credentials = l.serverCredentials args;
          errors = l.serverErrors args;
        };
      expected = {
        sources = [
          {
            type = "command";
            command = [ "/run/current-system/sw/bin/sops" "-d" "--age-key" "/run/credentials/locket.service/source-0-file-1" "/run/credentials/locket.service/source-0-file-0" ];
          }
        ];
        credentials = [
          "source-0-file-0:/run/secrets/app.yaml"
          "source-0-file-1:/run/secrets/age.key"
        ];
        errors = [ ];
      };
    };
    commandFilesNotListedAreRefused = {
      expr = l.serverErrors {
        sources = [
          {
            type = "command";
            command = [ "sops" "-d" "/run/secrets/app.yaml" "${builtins.storeDir}/abc-sops.yaml" ];
          }
          {
            type = "dotenv";
            path = "/run/secrets/a.env";
            files = [ "/run/secrets/b" ];
          }
        ];
      };
      expected = [
        "services.locket.sources.0.command: argument /run/secrets/app.yaml is a file outside the Nix store that would bypass LoadCredential= (and the server's dynamic user cannot read a root-only file): list it in services.locket.sources.0.files, which hands it over and replaces the argument by the credential's path"
        "services.locket.sources.1.files is set on a dotenv source: only a command source reads files (others take `path`)"
      ];
    };
    noSourcesIsAnError = {
      expr = l.serverErrors { };
      expected = [ "services.locket.sources is empty: add at least one source" ];
    };
    badClientsAreNamed = {
      expr = l.serverErrors {
        sources = [ { type = "env"; } ];
        clients."bad name" = {
          keys = [ "ssh-ed25519 AAAA" ];
          networks = [ ];
          secrets = [ ];
        };
      };
      expected = [
        "services.locket.clients.bad name: the name must be 1-64 characters of A-Za-z0-9._-"
        "services.locket.clients.bad name.networks is empty: list the CIDRs it may call from"
        "services.locket.clients.bad name.keys: ssh-ed25519 AAAA is not an ed25519:<base64> line or a PEM public key"
      ];
    };
    clientSettingsDropNulls = {
      expr = [
        (l.mkClientSettings {
          server = "http://s:7410";
          name = "app";
          keyFile = "/var/lib/locket-client/client.key";
        })
        (l.mkClientSettings {
          server = "http://s:7410";
          name = "app";
          keyFile = "/k";
          serverFingerprint = "sha256:00";
          bind = "10.0.0.2";
        })
      ];
      expected = [
        {
          server = "http://s:7410";
          name = "app";
          key_file = "/var/lib/locket-client/client.key";
        }
        {
          server = "http://s:7410";
          name = "app";
          key_file = "/k";
          server_fingerprint = "sha256:00";
          bind = "10.0.0.2";
        }
      ];
    };
    clientErrors = {
      expr = l.clientErrors {
        name = "app";
        keyFile = "${builtins.storeDir}/x.key";
        serverFingerprint = "sha256:XYZ";
      };
      expected = [
        "services.locket.client.keyFile is in the Nix store, which every user can read"
        "services.locket.client.serverFingerprint must be sha256:<64 lowercase hex digits> (from `locket fingerprint`)"
      ];
    };
    unpinnedClientIsAnError = {
      expr = map (e: builtins.substring 0 59 e) (l.clientErrors {
        name = "app";
        keyFile = "/k";
      });
      expected = [ "services.locket.client: the server's key is not pinned, and" ];
    };
    knownServersFilePins = {
      expr = {
        errors = l.clientErrors {
          name = "app";
          keyFile = "/k";
          knownServersFile = "/etc/locket/known_servers";
        };
        settings = (l.mkClientSettings {
          server = "http://s:7410";
          name = "app";
          keyFile = "/k";
          knownServersFile = "/etc/locket/known_servers";
        }).known_servers_file;
      };
      expected = {
        errors = [ ];
        settings = "/etc/locket/known_servers";
      };
    };
    settingsSecretPathsBecomeCredentials = {
      expr =
        let
          args = {
            settings = {
              tls = {
                cert_file = "/etc/ssl/locket.crt";
                key_file = "/run/secrets/tls.key";
              };
              v1 = {
                enable = true;
                key_file = "/run/secrets/v1.pem";
              };
              clock_skew = "20s";
            };
          };
          settings = l.mkServerSettings args;
        in
        {
          inherit (settings) tls v1 clock_skew;
          creds = l.serverCredentials args;
        };
      expected = {
        tls = {
          cert_file = "/etc/ssl/locket.crt";
          key_file = "/run/credentials/locket.service/tls-key";
        };
        v1 = {
          enable = true;
          key_file = "/run/credentials/locket.service/v1-key";
        };
        clock_skew = "20s";
        creds = [
          "tls-key:/run/secrets/tls.key"
          "v1-key:/run/secrets/v1.pem"
        ];
      };
    };
    settingsSecretPathsMustBeAbsoluteAndOutsideTheStore = {
      expr = builtins.filter (e: builtins.substring 0 22 e == "services.locket.settin") (l.serverErrors {
        sources = [ { type = "env"; } ];
        settings = {
          tls.key_file = "${builtins.storeDir}/abc-tls.key";
          v1.key_file = "v1.pem";
        };
      });
      expected = [
        "services.locket.settings.tls.key_file (${builtins.storeDir}/abc-tls.key) is in the Nix store, which every user can read: point it at a file outside the store, e.g. under /run/secrets"
        "services.locket.settings.v1.key_file must be an absolute path (it is handed to the unit with LoadCredential=)"
      ];
    };
    onlyClientsAndSourcesAreReloadable = {
      expr = l.restartSettings {
        listen = "127.0.0.1:7410";
        clients.a = { };
        sources = [ ];
        v1.enable = true;
      };
      expected = {
        listen = "127.0.0.1:7410";
        v1.enable = true;
      };
    };
    goodClientHasNoErrors = {
      expr = l.clientErrors {
        name = "app";
        keyFile = "/var/lib/locket-client/client.key";
        serverFingerprint = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
        services.web = svc;
      };
      expected = [ ];
    };
    # Delivery (#15): the fetch unit and the watcher read the plan.
    deliverArgs = {
      expr = {
        fetch = l.deliverArgs "web";
        watch = l.watchArgs "2m";
      };
      expected = {
        fetch = [
          "deliver"
          "--plan"
          "/etc/locket/delivery.toml"
          "--consumer"
          "web"
        ];
        watch = [
          "deliver"
          "--plan"
          "/etc/locket/delivery.toml"
          "--watch"
          "2m"
        ];
      };
    };
    consumerPlanWithEveryOption = {
      expr = l.consumerPlan { runtimeShell = "/bin/sh"; } "web" full;
      expected = {
        dir = "/run/locket/web";
        secrets = [
          "DB_PASSWORD"
          "db/user"
        ];
        mode = "0400";
        owner = "web";
        group = "www";
        env_file = "/run/locket/web/env";
        restart_units = [ "web.service" ];
        reload_units = [ "nginx.service" ];
        on_change = [
          "/bin/sh"
          "-c"
          "touch /run/locket/web/changed"
        ];
        cache_max_age = "7d";
        templates."app.ini" = {
          content = "password = {{ DB_PASSWORD }}\n";
          mode = "0440";
          owner = "web";
          group = "www";
        };
      };
    };
    # TOML has no null: unset options leave their keys out; a template
    # without mode/owner/group takes the consumer's.
    consumerPlanDropsNulls = {
      expr = l.consumerPlan { runtimeShell = "/bin/sh"; } "web" (
        svc
        // {
          envFile = false;
          templates.t.content = "x";
        }
      );
      expected = {
        dir = "/run/locket/web";
        secrets = [
          "A"
          "B"
        ];
        mode = "0400";
        owner = "web";
        group = "www";
        restart_units = [ ];
        reload_units = [ ];
        templates.t = {
          content = "x";
          mode = "0400";
          owner = "web";
          group = "www";
        };
      };
    };
    deliveryPlanTopLevel = {
      expr = removeAttrs (l.deliveryPlan {
        systemctl = "/s/bin/systemctl";
        systemdCreds = "/s/bin/systemd-creds";
        runtimeShell = "/bin/sh";
        services.web = svc;
      }) [ "consumers" ];
      expected = {
        status_file = "/run/locket-watch/status.json";
        metrics_file = "/run/locket-watch/locket-watch.prom";
        systemctl = "/s/bin/systemctl";
        systemd_creds = "/s/bin/systemd-creds";
        credential_socket = "/run/locket/credentials.sock";
        cache_dir = "/var/lib/locket-client/cache";
        cache_key = "auto";
        prune_under = "/run/locket";
      };
    };
    pathsAndCredentials = {
      expr = {
        paths = l.consumerPaths "web" full;
        credentials = l.consumerCredentials "web" (
          full
          // {
            secrets = [
              "API/TOKEN"
              "50%_OFF"
            ];
          }
        );
      };
      expected = {
        paths = {
          DB_PASSWORD = "/run/locket/web/DB_PASSWORD";
          "db/user" = "/run/locket/web/db_user";
          "app.ini" = "/run/locket/web/app.ini";
        };
        credentials = [
          "API_TOKEN:/run/locket/web/API_TOKEN"
          "50%%_OFF:/run/locket/web/50%%_OFF"
          "app.ini:/run/locket/web/app.ini"
        ];
      };
    };
    serviceAttrName = {
      expr = map l.serviceAttrName [
        "web.service"
        "web@1.service"
        "web.socket"
        ".service"
      ];
      expected = [
        "web"
        "web@1"
        null
        null
      ];
    };
    validDuration = {
      expr = map l.validDuration [
        "30s"
        "2m"
        "12h"
        "7d"
        "1h 30min"
        "90 seconds"
        "0s"
        "10"
        "soon"
        "-5m"
        ""
      ];
      expected = [
        true
        true
        true
        true
        true
        true
        false
        false
        false
        false
        false
      ];
    };
    validUnitName = {
      expr = map l.validUnitName [
        "app.service"
        "getty@tty1.service"
        "dev-disk-by\\x2dlabel.mount"
        "timers.target"
        "app"
        "app.conf"
        ""
      ];
      expected = [
        true
        true
        true
        true
        false
        false
        false
      ];
    };
    goodDeliveryHasNoErrors = {
      expr = l.clientErrors (pinned // { services.web = full; });
      expected = [ ];
    };
    consumerErrors = {
      expr = map consumerErrors [
        {
          secrets = [ ];
          credentials = true;
        }
        {
          credentials = true;
          unit = "c.socket";
        }
        {
          secrets = [ "a:b" ];
          credentials = true;
        }
        {
          secrets = [ "db/user" ];
          templates.db_user.content = "x";
        }
        { templates.env.content = "x"; }
        {
          envFile = false;
          templates.env.content = "x";
        }
        { templates."a/b".content = "x"; }
        {
          restartUnits = [ "app" ];
          reloadUnits = [
            "nginx"
            "ok.service"
          ];
        }
      ];
      expected = [
        [
          "services.locket.client.services.c.credentials: secrets is empty (every secret the client may read), but LoadCredential= needs each name: list the secrets in services.locket.client.services.c.secrets, or set credentials = false and read the files in /run/locket/c"
        ]
        [
          "services.locket.client.services.c.credentials: the unit c.socket is not a service, and only a service takes LoadCredential=: set services.locket.client.services.c.unit to the consuming <name>.service, or set credentials = false"
        ]
        [
          "services.locket.client.services.c.credentials: the file name `a:b` has a `:` or a backslash, which LoadCredential= cannot carry: rename it, or set credentials = false and read the file in /run/locket/c"
        ]
        [
          "services.locket.client.services.c.templates.\"db_user\": the secret db/user is delivered to the same file /run/locket/c/db_user: give the template another name"
        ]
        [
          "services.locket.client.services.c.templates.env: /run/locket/c/env is the environment file (envFile = true): give the template another name, or set services.locket.client.services.c.envFile = false"
        ]
        [ ]
        [
          "services.locket.client.services.c.templates.\"a/b\": not a file name in /run/locket/c (it is empty, `.` or `..`, starts with `.locket-`, or has a `/`): name the file plainly, e.g. app.ini"
        ]
        [
          "services.locket.client.services.c.restartUnits: `app` is not a unit name: give the full name with its type, e.g. app.service"
          "services.locket.client.services.c.reloadUnits: `nginx` is not a unit name: give the full name with its type, e.g. nginx.service"
        ]
      ];
    };
    isStorePath = {
      expr = map l.isStorePath [
        "${builtins.storeDir}/abc"
        "/run/secrets/x"
        "/nix/storefront"
      ];
      expected = [
        true
        false
        false
      ];
    };
    validClientName = {
      expr = map l.validClientName [
        "app"
        "a.b-c_d"
        ""
        "no/slash"
      ];
      expected = [
        true
        true
        false
        false
      ];
    };
  };
  names = builtins.attrNames tests;
  failed = builtins.filter (r: r != null) (
    map (
      name:
      let
        t = tests.${name};
      in
      if t.expr == t.expected then
        null
      else
        {
          inherit name;
          inherit (t) expected;
          actual = t.expr;
        }
    ) names
  );
in
{
  passed = builtins.length names - builtins.length failed;
  inherit failed;
}
