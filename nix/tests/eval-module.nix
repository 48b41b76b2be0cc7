# Evaluates nix/module.nix with the real module system (lib.evalModules from
# nixpkgs' lib) and checks what it generates: units, hardening, credentials,
# assertions. It needs a nixpkgs `lib` folder, which CI does not have:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix --arg libPath /path/to/nixpkgs.lib/lib
#
# NixOS's own option declarations are stubbed below (this is not a NixOS
# evaluation), and so is `pkgs`: only what the module reads from it.
{ libPath }:
let
  lib = import libPath;
  inherit (lib) mkOption types;

  stubPkgs = {
    locket = {
      type = "derivation";
      name = "locket";
      outPath = "/nix/store/00000000000000000000000000000000-locket";
      meta.mainProgram = "locket";
    };
    coreutils = "/nix/store/00000000000000000000000000000000-coreutils";
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      # A stand-in for the generated file that keeps the value to inspect.
      generate = name: value: {
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        inherit value;
      };
    };
  };

  nixosStubs = {
    options = {
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      networking.hostName = mkOption { type = types.str; default = "host1"; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      environment.etc = mkOption { type = types.attrsOf types.anything; default = { }; };
      environment.systemPackages = mkOption { type = types.listOf types.anything; default = [ ]; };
      systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };

  eval =
    config:
    (lib.evalModules {
      modules = [
        nixosStubs
        ../module.nix
        config
        { _module.args.pkgs = stubPkgs; }
      ];
    }).config;

  appKey = "ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U=";
  good = eval {
    services.locket = {
      enable = true;
      openFirewall = true;
      listenAddress = "0.0.0.0";
      keyFile = "/run/secrets/locket-key.pem";
      sources = [
        { type = "dotenv"; path = "/run/secrets/app.env"; }
        { type = "env"; prefix = "APP_"; }
      ];
      clients.web = {
        keys = [ appKey ];
        networks = [ "10.0.0.0/24" ];
        secrets = [ "DB_*" ];
      };
    };
    services.locket.client = {
      enable = true;
      server = "http://10.0.0.1:7410";
      serverFingerprint = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
      services.nginx = { secrets = [ "DB_PASSWORD" ]; user = "nginx"; group = "nginx"; };
    };
  };
  bad = eval {
    services.locket = {
      enable = true;
      sources = [ { type = "dotenv"; path = "${builtins.storeDir}/abc-secrets.env"; } ];
    };
  };
  failing = c: map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);

  server = good.systemd.services.locket;
  fetch = good.systemd.services.locket-fetch-nginx;
  sc = server.serviceConfig;
  checks = {
    noAssertionsFailOnAGoodConfig = failing good == [ ];
    storePathAssertionFires = builtins.any (m: lib.hasInfix "is in the Nix store" m) (failing bad);
    firewall = good.networking.firewall.allowedTCPPorts == [ 7410 ];
    typeNotify = sc.Type == "notify";
    hardening =
      sc.DynamicUser && sc.NoNewPrivileges && sc.PrivateTmp && sc.PrivateDevices && sc.ProtectHome
      && sc.ProtectSystem == "strict" && sc.MemoryDenyWriteExecute && sc.LockPersonality
      && sc.UMask == "0077" && sc.LimitCORE == 0 && sc.LimitMEMLOCK == "64M" && sc.CapabilityBoundingSet == [ "" ]
      && sc.StateDirectory == "locket" && builtins.elem "@system-service" sc.SystemCallFilter
      && sc.RestrictAddressFamilies == [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    credentials = sc.LoadCredential == [
      "source-0-path:/run/secrets/app.env"
      "server-key:/run/secrets/locket-key.pem"
    ];
    execStart = lib.hasSuffix "/bin/locket serve --config ${good.environment.etc."locket/server.toml".source}" sc.ExecStart;
    generatedSettings =
      good.environment.etc."locket/server.toml".source.value == {
        listen = "0.0.0.0:7410";
        key_file = "/run/credentials/locket.service/server-key";
        sources = [
          { type = "dotenv"; path = "/run/credentials/locket.service/source-0-path"; }
          { type = "env"; prefix = "APP_"; }
        ];
        clients.web = { keys = [ appKey ]; networks = [ "10.0.0.0/24" ]; secrets = [ "DB_*" ]; };
      };
    fetchUnitOrdering =
      fetch.before == [ "nginx.service" ] && fetch.requiredBy == [ "nginx.service" ] && fetch.partOf == [ "nginx.service" ];
    fetchUnitCommand = lib.hasInfix "render' '--dir' '/run/locket/nginx' '--mode' '0400' '--owner' 'nginx' '--group' 'nginx' '--env-file' '/run/locket/nginx/env' 'DB_PASSWORD'" fetch.serviceConfig.ExecStart;
    fetchUnitCanChown = builtins.elem "CAP_CHOWN" fetch.serviceConfig.CapabilityBoundingSet && fetch.serviceConfig.SystemCallFilter == [ "@system-service" ];
    clientName = good.environment.etc."locket/client.toml".source.value == {
      server = "http://10.0.0.1:7410";
      name = "host1";
      key_file = "/var/lib/locket-client/client.key";
      server_fingerprint = "sha256:5505e055cbbabb0aa17c8bfb0cd25ebb58046a36173767e14eb62367cce443b2";
    };
    keygenUnit = good.systemd.services.locket-client-keygen.unitConfig.ConditionPathExists == "!/var/lib/locket-client/client.key";
    runLocketDir = builtins.elem "d /run/locket 0755 root root -" good.systemd.tmpfiles.rules;
  };
in
{
  passed = builtins.length (builtins.filter (n: checks.${n}) (builtins.attrNames checks));
  failed = builtins.filter (n: !checks.${n}) (builtins.attrNames checks);
}
