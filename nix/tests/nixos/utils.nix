# The `utils` module argument (NixOS: nixos/lib/utils.nix, handed to modules
# by nixos/modules/misc/extra-arguments.nix), reduced to what nix/module.nix
# calls: the escaping of command lines for ExecStart= and friends, and of a
# path into a unit name (a mount unit's name).
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

  # As NixOS: the path normalised and trimmed of its outer slashes, `-`,
  # punctuation and a leading `.` C-escaped, `/` made `-` ("/run/locket"
  # -> "run-locket").
  escapeSystemdPath =
    s:
    let
      replacePrefix =
        p: r: s:
        if lib.hasPrefix p s then r + lib.removePrefix p s else s;
      trim = s: lib.removeSuffix "/" (lib.removePrefix "/" s);
      normalizedPath = lib.strings.normalizePath s;
    in
    lib.replaceStrings [ "/" ] [ "-" ] (
      replacePrefix "." (lib.strings.escapeC [ "." ] ".") (
        lib.strings.escapeC (lib.stringToCharacters " !\"#$%&'()*+,;<=>=@[\\]^`{|}~-") (if normalizedPath == "/" then normalizedPath else trim normalizedPath)
      )
    );
in
{
  inherit escapeSystemdExecArg escapeSystemdPath;
  escapeSystemdExecArgs = args: lib.concatStringsSep " " (map escapeSystemdExecArg args);
}
