# Checks that the stubs behave like NixOS (positive cases; the cases that
# must fail with a given message are in selftest.sh). Each case is
# { name; ok; got; } — `got` shows the value when a case fails.
#   nix-instantiate --eval --strict --json nix/tests/nixos/selftest.nix
{ libPath ? ../../../../shared/nixpkgs-lib/lib }:
let
  lib = import libPath;
  ev = args: import ./eval.nix ({ inherit libPath lib; } // args);
  run = modules: ev { inherit modules; };
  svc = name: attrs: { system.stateVersion = "25.11"; systemd.services.${name} = attrs; };
  unit = modules: name: (run modules).units.${name};
  lines = text: lib.filter (l: l != "") (lib.splitString "\n" text);
  hasLine = l: text: builtins.elem l (lines text);
  fails = v: !(builtins.tryEval (builtins.deepSeq v v)).success;

  pkgs = (run [ ]).pkgs;
  utils = (run [ ]).nixos._module.args.utils;

  case = name: got: expected: { inherit name got; ok = got == expected; };
  check = name: ok: got: { inherit name ok got; };
  stateVersion.system.stateVersion = "25.11";

  execList = unit [ (svc "a" { serviceConfig.ExecStart = [ "/bin/one" "/bin/two --x" ]; }) ] "a.service";
  mixed = unit [
    (svc "a" { serviceConfig.ExecStart = "/bin/one"; })
    (svc "a" { serviceConfig.ExecStart = [ "" "/bin/two" ]; })
  ] "a.service";
  bools = unit [
    (svc "a" { serviceConfig = { PrivateTmp = true; ProtectHome = false; LimitCORE = 0; }; })
  ] "a.service";
  scripted = run [
    (svc "a" {
      path = [ pkgs.util-linux ];
      environment.FOO = "bar baz";
      script = "echo hi";
      scriptArgs = "%i";
      restartTriggers = [ (pkgs.writeText "conf" "x") ];
      startLimitBurst = 5;
      startLimitIntervalSec = 60;
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
    })
  ];
  a = scripted.units."a.service";
  trigger = pkgs.writeText "X-Restart-Triggers-a" "${pkgs.writeText "conf" "x"}";

  exactUnit = unit [ (svc "b" { description = "B"; serviceConfig.ExecStart = "/bin/b"; }) ] "b.service";
  locales = pkgs.glibcLocales.override { allLocales = false; locales = [ "C.UTF-8/UTF-8" "en_US.UTF-8/UTF-8" ]; };
  defaultPath = with pkgs; [ coreutils findutils gnugrep gnused systemd ];
  expectedB = ''
    [Unit]
    Description=B

    [Service]
    Environment="LOCALE_ARCHIVE=${locales}/lib/locale/locale-archive"
    Environment="PATH=${lib.makeBinPath defaultPath}:${lib.makeSearchPathOutput "bin" "sbin" defaultPath}"
    Environment="TZDIR=${pkgs.tzdata}/share/zoneinfo"
    ExecStart=/bin/b
  '';

  opModule = { pkgs, ... }: svc "op" { path = [ pkgs._1password-cli ]; };
  unfree = ev { modules = [ opModule ]; };
  unfreeAllowed = ev { modules = [ opModule ]; nixpkgsConfig.allowUnfree = true; };

  etcText = run [ stateVersion { environment.etc."locket/x.conf".text = "hello"; } ];
  users = run [
    stateVersion
    {
      users.users.nogroup-user.isSystemUser = true;
      users.users.lost = { isSystemUser = true; group = "missing"; };
    }
  ];
  normal = run [ stateVersion { users.users.alice.isNormalUser = true; } ];
  fw = run [ stateVersion { networking.firewall.allowedTCPPorts = [ 7410 22 7410 ]; } ];
  netWarn = run [ (svc "w" { after = [ "network-online.target" ]; }) ];
  flags = run [
    (svc "f" { stopIfChanged = false; restartIfChanged = false; serviceConfig.ExecStart = "/bin/f"; })
    (svc "r" { reloadIfChanged = true; restartIfChanged = false; })
    (svc "off" { enable = false; })
  ];

  # Another systemd: NixOS puts systemd.package, not pkgs.systemd, on PATH.
  ownSystemd = pkgs.util-linux;
  otherSystemd = run [
    (svc "o" { serviceConfig.ExecStart = "/bin/o"; })
    { systemd.package = ownSystemd; }
  ];

  spec = run [
    (svc "s" { serviceConfig.ExecStart = "/bin/s"; })
    { specialisation.other.configuration.systemd.services.s.serviceConfig.ExecStart = lib.mkForce "/bin/other"; }
  ];

  vmLike = ev {
    test = {
      name = "t";
      nodes.zeta = { };
      nodes.alpha = { nodes, ... }: { systemd.services.x.environment.PEER = nodes.zeta.networking.primaryIPAddress; };
      testScript = { nodes, ... }: "ip ${nodes.alpha.networking.primaryIPAddress}";
    };
  };
in
{
  results = [
    (case "escapeSystemdExecArgs [ \"a b\" \"%x\" \"$Y\" ]" (utils.escapeSystemdExecArgs [ "a b" "%x" "$Y" ])
      ''"a b" "%%x" "$$Y"''
    )
    (case "escapeSystemdExecArg of an int and of a quote" (map utils.escapeSystemdExecArg [ 5 "a\"b" ]) [ ''"5"'' ''"a\"b"'' ])
    (case "escapeSystemdExecArg on a derivation is its quoted store path" (utils.escapeSystemdExecArg pkgs.coreutils) ''"${pkgs.coreutils}"'')
    (check "ExecStart list renders one line per entry"
      (hasLine "ExecStart=/bin/one" execList && hasLine "ExecStart=/bin/two --x" execList)
      execList
    )
    (check "string and list definitions of ExecStart merge into lines (NixOS unitOption)"
      (hasLine "ExecStart=/bin/one" mixed && hasLine "ExecStart=" mixed && hasLine "ExecStart=/bin/two" mixed)
      mixed
    )
    (check "bools render true/false, ints as digits"
      (hasLine "PrivateTmp=true" bools && hasLine "ProtectHome=false" bools && hasLine "LimitCORE=0" bools)
      bools
    )
    (case "a plain service renders exactly like NixOS (sections, env, PATH)" exactUnit expectedB)
    (check "script becomes ExecStart of a unit-script with scriptArgs"
      (hasLine "ExecStart=${scripted.scripts."a.service".script.path} %i" a)
      a
    )
    (case "the unit script text is NixOS's (shebang, set -e)" scripted.scripts."a.service".script.text "#!${pkgs.runtimeShell}\nset -e\n\necho hi\n\n")
    (check "path adds bin then sbin, util-linux through its bin output"
      (lib.hasInfix "Environment=\"PATH=${pkgs.util-linux.bin}/bin:${pkgs.coreutils}/bin:" a)
      a
    )
    (check "environment lines are JSON-quoted" (hasLine ''Environment="FOO=bar baz"'' a) a)
    (check "restartTriggers become X-Restart-Triggers=<writeText of the paths>"
      (hasLine "X-Restart-Triggers=${trigger}" a)
      a
    )
    (check "startLimitBurst/IntervalSec go to [Unit]"
      (hasLine "StartLimitBurst=5" a && hasLine "StartLimitIntervalSec=60" a)
      a
    )
    (check "wantedBy adds an [Install] WantedBy= line" (lib.hasSuffix "\n[Install]\nWantedBy=multi-user.target\n" a) a)
    (check "after network-online.target without wants warns as NixOS does"
      (builtins.elem "w.service is ordered after 'network-online.target' but doesn't depend on it" netWarn.warnings)
      netWarn.warnings
    )
    (case "lib.getExe' on util-linux uses its bin output" (lib.getExe' pkgs.util-linux "prlimit") "${pkgs.util-linux.bin}/bin/prlimit")
    (check "an unfree package in a unit fails without allowUnfree" (fails unfree.units) null)
    (check "and evaluates with nixpkgs config allowUnfree"
      (lib.hasInfix "1password-cli-2.32.0/bin" unfreeAllowed.units."op.service")
      null
    )
    (check "environment.etc text becomes writeText \"etc-<name with - for />\""
      (lib.hasSuffix "-etc-locket-x.conf" etcText.etc."locket/x.conf".source)
      etcText.etc
    )
    (check "a system user without group fails its assertion"
      (lib.any (lib.hasPrefix "users.users.nogroup-user.group is unset") users.failedAssertions)
      users.failedAssertions
    )
    (check "a user whose group is not declared fails its assertion"
      (lib.any (lib.hasPrefix "The following users have a primary group that is undefined: lost") users.failedAssertions)
      users.failedAssertions
    )
    (case "allowedTCPPorts are sorted and deduplicated" fw.firewall.allowedTCPPorts [ 22 7410 ])
    (check "restartIfChanged/stopIfChanged = false render X-RestartIfChanged/X-StopIfChanged"
      (hasLine "X-RestartIfChanged=false" flags.units."f.service" && hasLine "X-StopIfChanged=false" flags.units."f.service")
      flags.units
    )
    (check "reloadIfChanged renders X-ReloadIfChanged=true only"
      (hasLine "X-ReloadIfChanged=true" flags.units."r.service" && !(lib.hasInfix "X-RestartIfChanged" flags.units."r.service"))
      flags.units
    )
    (case "a disabled service has no unit text (a /dev/null link on NixOS)" flags.units."off.service" null)
    (case "a normal user gets /home/<name>, createHome and the users group"
      { inherit (normal.users.alice) home createHome group; inherit (normal) failedAssertions; }
      { home = "/home/alice"; createHome = true; group = "users"; failedAssertions = [ ]; }
    )
    (case "a specialisation changes exactly the unit it redefines"
      { inherit (spec.specialisations.other) changedUnits addedUnits removedUnits; }
      { changedUnits = [ "s.service" ]; addedUnits = [ ]; removedUnits = [ ]; }
    )
    (case "test nodes are numbered in name order (alpha .1, zeta .2)"
      (lib.mapAttrs (_: n: n.primaryIPAddress) vmLike.test.nodes)
      { alpha = "192.168.1.1"; zeta = "192.168.1.2"; }
    )
    (check "nodes see each other through the `nodes` argument"
      (hasLine ''Environment="PEER=192.168.1.2"'' vmLike.test.nodes.alpha.units."x.service")
      vmLike.test.nodes.alpha.units
    )
    (case "testScript gets `nodes`" vmLike.test.testScript "ip 192.168.1.1")
    (case "hostName defaults to the node name in tests" vmLike.test.nodes.zeta.hostName "zeta")
    (case "systemd.package defaults to pkgs.systemd" (toString (run [ stateVersion ]).config.systemd.package) (toString pkgs.systemd))
    (check "every service's PATH ends with systemd.package, not pkgs.systemd"
      (lib.hasInfix ":${ownSystemd.bin}/bin:" otherSystemd.units."o.service"
        && !(lib.hasInfix "${pkgs.systemd}" otherSystemd.units."o.service"))
      otherSystemd.units."o.service"
    )
  ];
}
