# users.users and users.groups as nixos/modules/config/users-groups.nix
# declares the options used here, with the assertions of that module that
# need no other module (the first line of each message is NixOS's). NixOS
# also creates its standard accounts (nixos/modules/misc/ids.nix); of those
# only the groups that usually serve as primary groups are declared, so that
# `group = "users"` (a normal user's default) or "root" passes the
# undefined-group check as on NixOS.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  option = type: default: mkOption { inherit type default; };
  passwd = types.passwdEntry types.str;

  userModule =
    { name, config, ... }:
    {
      options = {
        name = option passwd name;
        uid = option (types.nullOr types.int) null;
        isSystemUser = option types.bool false;
        isNormalUser = option types.bool false;
        group = option passwd "";
        extraGroups = option (types.listOf types.str) [ ];
        home = option (types.passwdEntry types.path) "/var/empty";
        createHome = option types.bool false;
        description = option passwd "";
      };
      # A normal user gets a home under /home and the `users` group.
      config = lib.mkIf config.isNormalUser {
        group = lib.mkDefault "users";
        home = lib.mkDefault "/home/${config.name}";
        createHome = lib.mkDefault true;
      };
    };

  groupModule =
    { name, ... }:
    {
      options = {
        name = option passwd name;
        gid = option (types.nullOr types.int) null;
        members = option (types.listOf passwd) [ ];
      };
    };

  cfg = config.users;
  unique = ids: lib.length ids == lib.length (lib.unique ids);
  idsOf = id: accounts: lib.filter (x: x != null) (lib.mapAttrsToList (_: a: a.${id}) accounts);
  lostUsers = lib.filterAttrs (_: u: u.group != "" && !(cfg.groups ? ${u.group})) cfg.users;
in
{
  options.users = {
    users = option (types.attrsOf (types.submodule userModule)) { };
    groups = option (types.attrsOf (types.submodule groupModule)) { };
  };

  config = {
    users.groups = {
      root.gid = 0;
      wheel.gid = 1;
      users.gid = 100;
      nogroup.gid = 65534;
    };

    assertions = [
      {
        assertion = unique (idsOf "uid" cfg.users) && unique (idsOf "gid" cfg.groups);
        message = "UIDs and GIDs must be unique!";
      }
      {
        assertion = lostUsers == { };
        message = ''
          The following users have a primary group that is undefined: ${toString (lib.attrNames lostUsers)}
          Hint: declare it, e.g. ${toString (lib.unique (lib.mapAttrsToList (_: u: "users.groups.${u.group} = {};") lostUsers))}
        '';
      }
    ]
    ++ lib.concatLists (
      lib.mapAttrsToList (n: u: [
        {
          # A uid below 1000 makes a user a system user, unless it is normal.
          assertion = lib.xor (u.isSystemUser || (u.uid != null && u.uid < 1000 && !u.isNormalUser)) u.isNormalUser;
          message = "Exactly one of users.users.${n}.isSystemUser and users.users.${n}.isNormalUser must be set.\n";
        }
        {
          assertion = u.group != "";
          message = ''
            users.users.${n}.group is unset. This used to default to
            nogroup, but this is unsafe. Give the user a group of its own:
            users.users.${n}.group = "${n}"; users.groups.${n} = {};
          '';
        }
      ]) cfg.users
    );
  };
}
