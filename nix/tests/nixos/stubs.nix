# The NixOS modules the stubs replace: the option declarations and
# conversions nix/module.nix and nix/tests/vm.nix rely on, written to behave
# as NixOS 25.11 does (each file names what it mirrors). Any option not
# declared here or by the modules under test fails the evaluation ("The
# option `…' does not exist"), as on NixOS. ./eval.nix evaluates them with
# nixpkgs' lib.evalModules and hands `pkgs` (./pkgs.nix) in through the
# read-only nixpkgs module, as runNixOSTest does.
{
  imports = [
    ./modules/base.nix
    ./modules/nixpkgs-read-only.nix
    ./modules/systemd.nix
    ./modules/users.nix
    ./modules/specialisation.nix
  ];
}
