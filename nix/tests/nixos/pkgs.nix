# A stand-in for a Nixpkgs package set, just big enough for nix/module.nix,
# the flake's package (nix/package.nix through callPackage) and the NixOS
# stubs. Nothing is built. A derivation is an attribute set with
# type = "derivation", outPath, outputs and meta, so lib.getExe, lib.getBin,
# lib.makeBinPath, types.package and "${drv}" treat it like a real one.
#
# Store paths are fake but follow the content: /nix/store/<32 chars of a
# sha256 of the name and the inputs>-<name>, so a changed file has a changed
# path (restart and reload triggers depend on that). Builders keep what they
# were given (`text` for text files, `value` for pkgs.formats.*.generate).
#
# As in Nixpkgs: overlays apply in order over a fixpoint, unfree packages
# refuse to evaluate without config.allowUnfree (or allowUnfreePredicate, or
# NIXPKGS_ALLOW_UNFREE=1), and `_type = "pkgs"` satisfies lib.types.pkgs.
{ lib, system ? "x86_64-linux", overlays ? [ ], config ? { } }:
let
  inherit (lib) head optionalString;

  cfg = { allowUnfree = false; } // config;
  platform = lib.systems.elaborate system;

  # Hex with the `e` swapped out, so it reads like nix32 (which has no e).
  fakeHash = seed: lib.replaceStrings [ "e" ] [ "z" ] (builtins.substring 0 32 (builtins.hashString "sha256" seed));

  unfreeAllowed =
    drv:
    cfg.allowUnfree
    || builtins.getEnv "NIXPKGS_ALLOW_UNFREE" == "1"
    || (cfg.allowUnfreePredicate or (_: false)) drv;
  licenses = drv: lib.toList (drv.meta.license or [ ]);

  # What Nix (store path names) and Nixpkgs' meta check refuse, checked
  # when a path of the derivation is asked for.
  checked =
    drv: path:
    if builtins.match "[A-Za-z0-9+._?=-]+" drv.name == null || lib.hasPrefix "." drv.name then
      throw "invalid derivation name ‘${drv.name}’: a store path name may only contain A-Za-z0-9+-._?= and must not start with a dot"
    else if lib.any (l: !(l.free or true)) (licenses drv) && !unfreeAllowed drv then
      throw "Package ‘${drv.name}’ has an unfree license (‘${
        lib.concatMapStringsSep ", " (l: l.shortName or "?") (licenses drv)
      }’), refusing to evaluate. Allow it with nixpkgs config allowUnfree (under runNixOSTest: node.pkgs)."
    else
      path;

  # stdenv.mkDerivation as evaluation sees it. `hashInput` stands for what
  # the build reads; it only feeds the fake hash.
  mkDerivation =
    args@{ name ? "${args.pname}-${args.version}", outputs ? [ "out" ], passthru ? { }, hashInput ? "", ... }:
    let
      pathOf =
        out:
        checked drv "${builtins.storeDir}/${fakeHash "${name}\n${hashInput}\n${out}"}-${name}${
          optionalString (out != "out") "-${out}"
        }";
      outputAttrs = lib.genAttrs outputs (
        out: drv // { outPath = pathOf out; outputName = out; outputSpecified = true; }
      );
      drv =
        removeAttrs args [ "passthru" "hashInput" ]
        // passthru
        // outputAttrs
        // {
          type = "derivation";
          # As extendDerivation: the passthru set itself is kept too.
          inherit name outputs passthru;
          system = platform.system;
          meta = { inherit name; } // args.meta or { };
          outPath = pathOf (head outputs);
          outputName = head outputs;
          drvPath = checked drv "${builtins.storeDir}/${fakeHash "${name}\n${hashInput}\ndrv"}-${name}.drv";
          overrideAttrs =
            f:
            let
              new = f args;
            in
            mkDerivation (args // (if lib.isFunction new then new args else new));
        };
    in
    drv;

  package =
    pname: version: extra:
    mkDerivation (
      extra
      // {
        inherit pname version;
        meta = { platforms = lib.platforms.all; } // extra.meta or { };
      }
    );

  # trivial-builders' writeTextFile: `destination` /bin/<x> makes <x> the
  # main program.
  writeTextFile =
    { name, text, executable ? false, destination ? "", meta ? { }, ... }@args:
    let
      bin = builtins.match "/bin/([^/]+)" destination;
    in
    mkDerivation (
      args
      // {
        hashInput = "${destination}\n${if executable then "x" else "-"}\n${text}";
        meta = lib.optionalAttrs (bin != null) { mainProgram = head bin; } // meta;
      }
    );

  # pkgs.formats.<fmt> { }: the option type of the format, and a generator
  # that keeps the value (the real one runs a converter).
  format =
    description: allowNull:
    { }:
    {
      type =
        let
          t = lib.types;
          value =
            (if allowNull then t.nullOr else lib.id) (
              t.oneOf [ t.bool t.int t.float t.str t.path (t.attrsOf value) (t.listOf value) ]
            )
            // { inherit description; };
        in
        value;
      generate = name: value: mkDerivation { inherit name value; hashInput = builtins.toJSON value; };
    };

  base = self: {
    _type = "pkgs";
    inherit lib system overlays;
    config = cfg;
    __splicedPackages = self;

    stdenv = { hostPlatform = platform; buildPlatform = platform; inherit mkDerivation; };
    inherit mkDerivation;
    rustPlatform.buildRustPackage = args: mkDerivation (removeAttrs args [ "src" ] // { hashInput = "rust"; });

    callPackage =
      fn: overrides:
      let
        f = if lib.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (lib.functionArgs f) self // overrides);

    inherit writeTextFile;
    # testers.runNixOSTest: the test's derivation, named as nixpkgs names
    # it (vm-test-run-<name>); the test itself runs only under real Nix.
    testers.runNixOSTest = test: mkDerivation { name = "vm-test-run-${test.name}"; hashInput = test.name; };
    writeText = name: text: writeTextFile { inherit name text; };
    writeScript = name: text: writeTextFile { inherit name text; executable = true; };
    writeShellScript = name: text: self.writeScript name "#!${self.runtimeShell}\n${text}\n";
    writeShellScriptBin =
      name: text:
      writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!${self.runtimeShell}\n${text}\n";
      };
    # As in Nix, the output path depends on the command and on every
    # attribute the builder sees (an input's path among them).
    runCommand =
      name: env: buildCommand:
      mkDerivation (
        env
        // {
          inherit name buildCommand;
          hashInput = builtins.toJSON [
            buildCommand
            (lib.mapAttrs (_: toString) env)
          ];
        }
      );

    formats.json = format "JSON value" true;
    formats.toml = format "TOML value" false;

    # Packages; the versions (nixos-25.11's) only show in store path names.
    bash = package "bash" "5.3p3" { passthru.shellPath = "/bin/bash"; meta.mainProgram = "bash"; };
    runtimeShell = "${self.bash}${self.bash.shellPath}";
    coreutils = package "coreutils" "9.8" { };
    findutils = package "findutils" "4.10.0" { };
    gnugrep = package "gnugrep" "3.12" { meta.mainProgram = "grep"; };
    gnused = package "gnused" "4.9" { meta.mainProgram = "sed"; };
    systemd = package "systemd" "258.2" { meta.mainProgram = "systemctl"; };
    # Its first output is `bin`, which lib.getBin and makeBinPath pick.
    util-linux = package "util-linux" "2.41.2" { outputs = [ "bin" "out" ]; };
    # In the package's nativeCheckInputs (the tests' `op` stand-in).
    python3 = package "python3" "3.13.9" { meta.mainProgram = "python3"; };
    # A setup hook in nixpkgs (makeSetupHook): installManPage, installShellCompletion.
    installShellFiles = mkDerivation { name = "install-shell-files"; };
    tzdata = package "tzdata" "2025b" { };
    # The flake's formatter.
    nixfmt = package "nixfmt" "1.1.0" { meta.mainProgram = "nixfmt"; };
    # 25.11 keeps the old name as an alias that warns when it is used.
    nixfmt-rfc-style = lib.warn "nixfmt-rfc-style is now the same as pkgs.nixfmt which should be used instead." self.nixfmt;
    glibcLocales =
      let
        locales =
          args:
          mkDerivation {
            name = "glibc-locales-2.40-66";
            hashInput = builtins.toJSON args;
            passthru.override = more: locales (args // more);
          };
      in
      locales { };
    _1password-cli = package "1password-cli" "2.32.0" {
      meta = { license = lib.licenses.unfree; mainProgram = "op"; };
    };
  };
in
lib.fix (lib.extends (lib.composeManyExtensions overlays) base)
