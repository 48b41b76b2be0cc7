# Mirrors nixos/modules/system/activation/specialisation.nix (and the
# no-clone.nix it adds): each specialisation.<name>.configuration is this
# very configuration extended with more modules (extendModules), or, with
# inheritParentConfig = false, the base modules alone extended with them
# (`noUserModules`, from eval.nix as from nixos/lib/eval-config.nix). A
# specialisation has no specialisations of its own.
{
  lib,
  extendModules,
  noUserModules,
  ...
}:
let
  inherit (lib) mkOption types;
  noClone = {
    specialisation = lib.mkOverride 0 { };
    isSpecialisation = lib.mkOverride 0 true;
  };
in
{
  options.isSpecialisation = mkOption {
    type = types.bool;
    default = false;
    internal = true;
  };

  options.specialisation = mkOption {
    default = { };
    type = types.attrsOf (
      types.submodule (
        { config, ... }:
        {
          options.inheritParentConfig = mkOption {
            type = types.bool;
            default = true;
          };
          # The option's type is the extended configuration itself, so its
          # definitions are modules and its value is a config.
          options.configuration = mkOption {
            default = { };
            visible = "shallow";
            type =
              ((if config.inheritParentConfig then extendModules else noUserModules.extendModules) {
                modules = [ noClone ];
              }).type;
          };
        }
      )
    );
  };
}
