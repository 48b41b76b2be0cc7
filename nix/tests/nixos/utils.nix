# The `utils` module argument (NixOS: nixos/lib/utils.nix, handed to modules
# by nixos/modules/misc/extra-arguments.nix), reduced to what nix/module.nix
# calls: the escaping of command lines for ExecStart= and friends.
{ lib }:
let
  # As NixOS: a path is copied to the store, numbers and derivations become
  # their string; the result is a JSON string literal (systemd accepts C
  # escapes in double quotes) in which systemd's specifier character `%` and
  # variable character `$` are doubled.
  escapeSystemdExecArg =
    arg:
    let
      asString =
        if builtins.isPath arg then
          "${arg}"
        else if builtins.isString arg then
          arg
        else if builtins.isInt arg || builtins.isFloat arg || lib.isDerivation arg then
          toString arg
        else
          throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
    in
    lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON asString);
in
{
  inherit escapeSystemdExecArg;
  escapeSystemdExecArgs = args: lib.concatStringsSep " " (map escapeSystemdExecArg args);
}
