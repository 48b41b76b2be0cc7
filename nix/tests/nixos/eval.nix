# Evaluates NixOS modules against ./stubs.nix with the real lib.evalModules
# (nixpkgs' lib, 25.11, used by path), the way nixos/lib/eval-config.nix and
# testers.runNixOSTest do, and returns what NixOS would generate.
#
#   # a module set: units as NixOS renders them, failed assertions, …
#   nix-instantiate --eval --strict --json nix/tests/nixos/eval.nix -A json \
#     --arg modules '[ ./nix/module.nix { services.locket.enable = true; … } ]' \
#     --arg flakeOverlay true
#
#   # a runNixOSTest-style test file `{ self }: { name; nodes; testScript; }`
#   nix-instantiate --eval --strict --json nix/tests/nixos/eval.nix -A test.json \
#     --arg testFile ./nix/tests/vm.nix
#
# Arguments:
#   libPath / lib      nixpkgs' lib (default: ../shared/nixpkgs-lib/lib beside the repo)
#   modules            NixOS modules to evaluate with the stubs
#   extraArgs          added to _module.args (eval-config.nix's legacy extraArgs)
#   specialArgs        evalModules specialArgs
#   system, nixpkgsConfig, overlays
#                      how the stub pkgs (./pkgs.nix) is made; it reaches the
#                      modules read-only through `nixpkgs.pkgs`, as in tests
#   flakeOverlay       also apply the flake's overlays.default (pkgs.locket)
#   flake              the flake.nix whose outputs become `self` (its nixpkgs
#                      input is replaced by the stub pkgs and lib)
#   pkgs               a ready pkgs instead of the above
#   test / testFile    a runNixOSTest module, or a file `{ self }: module`
#
# Results (each also in `json`, which --strict --json can print). Asking for
# any of them evaluates all of them, as building the system would:
#   units             "<name>.service" -> unit file text (null when disabled)
#   scripts           "<name>.service" -> { script|preStart|postStart|reload = { path; text; } }
#   failedAssertions  messages of the assertions that do not hold
#   warnings          NixOS warnings
#   etc               environment.etc entries (source path, text, mode, user,
#                     group, and `value` for files made by pkgs.formats.*.generate;
#                     `build` = { command; inputs } for files made by runCommand)
#   tmpfiles          { rules; files."00-nixos.conf" = text; }
#   users             name -> { name uid group extraGroups isSystemUser
#                     isNormalUser home createHome description }
#   groups            name -> { name gid members }
#   firewall          { enable allowedTCPPorts }
#   systemPackages    names (systemPackagePaths: store paths)
#   hostName, stateVersion
#   specialisations   name -> the same, plus changedUnits/addedUnits/removedUnits
#                     against the parent
#   config, options   the evaluated NixOS configuration
#   test              { name; testScript; nodes.<n> = (as above) + primaryIPAddress;
#                       json; config }  when test/testFile is given
{
  libPath ? ../../../../shared/nixpkgs-lib/lib,
  lib ? import libPath,
  modules ? [ ],
  extraArgs ? null,
  specialArgs ? { },
  system ? "x86_64-linux",
  nixpkgsConfig ? { },
  overlays ? [ ],
  flakeOverlay ? false,
  flake ? ../../../flake.nix,
  pkgs ? null,
  test ? null,
  testFile ? null,
}:
let
  inherit (lib) attrNames filterAttrs mapAttrs optional;

  pkgsFor = args: import ./pkgs.nix ({ inherit lib; } // args);

  # The flake's outputs, with its nixpkgs input replaced by the stubs.
  self =
    let
      outputs = (import flake).outputs {
        self = outputs // {
          outPath = toString (dirOf flake);
        };
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: pkgsFor { inherit system; });
        };
      };
    in
    outputs;

  stubPkgs =
    if pkgs != null then
      pkgs
    else
      pkgsFor {
        inherit system;
        config = nixpkgsConfig;
        overlays = optional flakeOverlay self.overlays.default ++ overlays;
      };

  # As nixos/lib/eval-config.nix: the base modules alone first (kept as the
  # `noUserModules` argument, for specialisations that do not inherit), then
  # extended with the user's modules.
  evalConfig =
    { baseModules ? [ ./stubs.nix ], modules, specialArgs ? { }, extraArgs ? null }:
    let
      noUserModules = lib.evalModules {
        class = "nixos";
        inherit specialArgs;
        modules = baseModules ++ [
          {
            _module.args = {
              inherit noUserModules baseModules modules;
              extraModules = [ ];
            };
          }
        ];
      };
    in
    noUserModules.extendModules {
      modules = modules ++ optional (extraArgs != null) { _module.args = extraArgs; };
    };

  # The job scripts of a service (as ./modules/systemd.nix makes them).
  unitScript = import ./unit-script.nix { inherit lib; pkgs = stubPkgs; };
  jobScripts = { preStart = "pre-start"; script = "start"; postStart = "post-start"; reload = "reload"; };
  scriptsOf =
    name: svc:
    mapAttrs (
      opt: suffix:
      let
        drv = unitScript "${name}-${suffix}" svc.${opt};
      in
      { path = lib.getExe drv; inherit (drv) text; }
    ) (filterAttrs (opt: _: svc.${opt} != "") jobScripts);

  diffUnits = parent: child: {
    changedUnits = attrNames (filterAttrs (n: text: parent ? ${n} && parent.${n} != text) child);
    addedUnits = attrNames (removeAttrs child (attrNames parent));
    removedUnits = attrNames (removeAttrs parent (attrNames child));
  };

  # What building the system forces. Every result evaluates all of them, so
  # a bad definition anywhere fails any query, as `nixos-rebuild build`
  # would; the read-only nixpkgs options are forced as using `pkgs` does.
  summarize =
    c:
    let
      units = mapAttrs (_: u: if u.enable then u.text else null) c.systemd.units;
      s = {
        inherit units;
        scripts = lib.mapAttrs' (n: svc: lib.nameValuePair "${n}.service" (scriptsOf n svc)) (
          filterAttrs (_: svc: lib.any (o: svc.${o} != "") (attrNames jobScripts)) c.systemd.services
        );
        # What NixOS turns into <target>.wants/ and <unit>.requires/ links.
        links = lib.mapAttrs' (
          n: svc: lib.nameValuePair "${n}.service" { inherit (svc) wantedBy requiredBy; }
        ) c.systemd.services;
        failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
        inherit (c) warnings;
        etc = mapAttrs (_: e: {
          inherit (e) enable target mode user group text;
          source = if e.enable then toString e.source else null;
          value = if e.enable then e.source.value or null else null;
          # A file made by runCommand (a checked config): its build
          # command, and its inputs that pkgs.formats made (by env name),
          # so a harness can build it with the real programs.
          build =
            if e.enable && e.source ? buildCommand then
              {
                command = e.source.buildCommand;
                inputs = mapAttrs (_: d: { path = toString d; inherit (d) value; }) (
                  filterAttrs (_: d: lib.isDerivation d && d ? value) e.source
                );
              }
            else
              null;
        }) c.environment.etc;
        tmpfiles = {
          inherit (c.systemd.tmpfiles) rules;
          files."00-nixos.conf" = ''
            # Made by NixOS from the option systemd.tmpfiles.rules.

            ${lib.concatStringsSep "\n" c.systemd.tmpfiles.rules}
          '';
        };
        users = mapAttrs (_: u: {
          inherit (u) name uid group extraGroups isSystemUser isNormalUser home createHome description;
        }) c.users.users;
        groups = mapAttrs (_: g: { inherit (g) name gid members; }) c.users.groups;
        firewall = { inherit (c.networking.firewall) enable allowedTCPPorts; };
        systemPackages = map (p: p.name or (toString p)) c.environment.systemPackages;
        systemPackagePaths = map toString c.environment.systemPackages;
        hostName = c.networking.hostName;
        stateVersion = c.system.stateVersion;
        specialisations = mapAttrs (
          _: sp:
          let
            child = summarize sp.configuration;
          in
          child // diffUnits units child.units
        ) c.specialisation;
      };
      readOnlyPkgs = map (o: c.nixpkgs.${o}) [ "config" "overlays" "hostPlatform" "buildPlatform" ];
      built = lib.foldr builtins.seq (builtins.deepSeq s null) readOnlyPkgs;
    in
    mapAttrs (_: builtins.seq built) s;

  nixos = evalConfig {
    inherit modules specialArgs extraArgs;
    baseModules = [
      ./stubs.nix
      {
        key = "stub-pkgs";
        nixpkgs.pkgs = stubPkgs;
      }
    ];
  };
  summary = summarize nixos.config;

  testModule =
    if test != null then
      test
    else if testFile != null then
      import testFile { inherit self; }
    else
      null;

  # nixos/lib/testing's evalTest with what pkgs.testers.runNixOSTest adds.
  testEval = lib.evalModules {
    class = "nixosTest";
    modules = [
      (import ./testing.nix evalConfig)
      { hostPkgs = stubPkgs; node.pkgs = stubPkgs; }
      (lib.setDefaultModuleLocation "the argument that was passed to pkgs.runNixOSTest" testModule)
    ];
  };
  testNodes = mapAttrs (
    _: c: summarize c // { primaryIPAddress = c.networking.primaryIPAddress; }
  ) testEval.config.nodes;
  testSummary = {
    inherit (testEval.config) name;
    testScript = testEval.config.testScriptString;
    nodes = testNodes;
  };
in
summary
// {
  inherit lib self nixos evalConfig summarize;
  inherit (nixos) config options;
  pkgs = stubPkgs;
  json = summary;
  test =
    if testModule == null then
      null
    else
      testSummary // { inherit (testEval) config; json = testSummary; };
}
