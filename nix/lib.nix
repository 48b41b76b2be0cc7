# Pure functions behind the NixOS module: turning options into the server's
# and client's TOML settings, and validating them. They need only builtins,
# so `nix-instantiate --eval` tests them without nixpkgs (nix/tests/unit.nix).
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    genList
    hasAttr
    head
    isString
    length
    listToAttrs
    mapAttrs
    match
    removeAttrs
    stringLength
    substring
    tail
    ;

  imap0 = f: list: genList (i: f i (builtins.elemAt list i)) (length list);
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  # Remove attributes whose value is null (TOML has no null).
  dropNulls = attrs: removeAttrs attrs (filter (n: attrs.${n} == null) (attrNames attrs));
in
rec {
  defaultPort = 7410;

  # Source settings whose values are paths to secret files. They reach the
  # service with LoadCredential=, never through the Nix store.
  credentialKeys = [
    "path"
    "token_file"
  ];

  # Paths inside the freeform `settings` that name secret material. Like a
  # source's `path`, each is handed to the unit with LoadCredential= (so a
  # root-owned 0600 file is readable under DynamicUser) and never taken from
  # the Nix store: { path = [ "tls" "key_file" ]; credential = "tls-key"; }.
  settingsSecretPaths = [
    {
      path = [
        "tls"
        "key_file"
      ];
      credential = "tls-key";
    }
    {
      path = [
        "v1"
        "key_file"
      ];
      credential = "v1-key";
    }
  ];

  # Top-level server.toml keys that a reload (SIGHUP) applies. A change to
  # any other key needs a restart; the module restarts for those and
  # reloads for these (reloadTriggers), so a registry change keeps the cache
  # warm and the fetches in flight. An allow-list: a key added to the server
  # later is restarted for until someone shows that a reload applies it.
  reloadableSettings = [
    "clients"
    "sources"
  ];

  # The part of the settings that only a restart applies.
  restartSettings = settings: removeAttrs settings reloadableSettings;

  # Where systemd places the credentials of `unit`.
  credentialsDir = unit: "/run/credentials/${unit}";

  isStorePath = p: hasPrefix "${builtins.storeDir}/" (toString p);

  # A client name the server accepts: 1-64 of A-Za-z0-9._-
  validClientName = name: stringLength name <= 64 && match "[A-Za-z0-9._-]+" name != null;

  # Moves every secret path of `sources` into credentials:
  #   { sources = [ settings with credential paths ]; credentials = [ "source-0-path:/real/path" ]; }
  credentialize =
    unit: sources: credentialsDirIn unit null sources;

  # As credentialize, with the credentials folder overridable (tests point
  # it at a temporary folder that they fill as LoadCredential= would).
  credentialsDirIn =
    unit: dir: sources:
    let
      credDir = if dir == null then credentialsDir unit else dir;
      one =
        i: source:
        let
          src = dropNulls source;
          keys = filter (k: hasAttr k src) credentialKeys;
          credName = k: "source-${toString i}-${builtins.replaceStrings [ "_" ] [ "-" ] k}";
          # A credential loses its file name, so a `file` source's format
          # (otherwise taken from the extension) is made explicit.
          ext = if src ? path then match ".*\\.(json|toml)" (toString src.path) else null;
          format = if src.type or "" == "file" && !(src ? format) && ext != null then { format = head ext; } else { };
        in
        {
          source = src // format // listToAttrs (map (k: {
            name = k;
            value = "${credDir}/${credName k}";
          }) keys);
          credentials = map (k: "${credName k}:${toString src.${k}}") keys;
        };
      done = imap0 one sources;
    in
    {
      sources = map (d: d.source) done;
      credentials = concatLists (map (d: d.credentials) done);
    };

  # The server's settings (the attrset that becomes server.toml) from the
  # module's options. Typed options win over the freeform `settings`.
  mkServerSettings =
    {
      listenAddress ? "127.0.0.1",
      port ? defaultPort,
      keyFile ? null, # operator-provided key file (passed as a credential), or null
      nextKeyFile ? null, # the next key of a rotation (a credential), or null
      stateDirectory ? "/var/lib/locket",
      sources ? [ ],
      clients ? { },
      settings ? { },
      unit ? "locket.service",
      credentialsDirectory ? null, # null: systemd's /run/credentials/<unit>
    }:
    let
      creds = credentialsDirIn unit credentialsDirectory sources;
      credDir = if credentialsDirectory == null then credentialsDir unit else credentialsDirectory;
      host = if match ".*:.*" listenAddress != null then "[${listenAddress}]" else listenAddress;
    in
    moveSettingsSecrets credDir settings
    // {
      listen = "${host}:${toString port}";
      key_file = if keyFile == null then "${stateDirectory}/server-key.pem" else "${credDir}/server-key";
      sources = creds.sources;
    }
    // (if nextKeyFile == null then { } else { next_key_file = "${credDir}/server-next-key"; })
    // {
      clients = mapAttrs (_: c: {
        inherit (c) keys networks secrets;
      }) clients;
    };

  # The secret paths set in `settings`: [ { path; credential; value; } ].
  settingsSecrets =
    settings:
    filter (e: e.value != null) (
      map (
        e:
        e
        // {
          value =
            let
              outer = settings.${head e.path} or null;
            in
            if builtins.isAttrs outer then outer.${builtins.elemAt e.path 1} or null else null;
        }
      ) settingsSecretPaths
    );

  # `settings` with each secret path replaced by its credential's path.
  moveSettingsSecrets =
    credDir: settings:
    builtins.foldl' (
      acc: e:
      acc
      // {
        ${head e.path} = acc.${head e.path} // {
          ${builtins.elemAt e.path 1} = "${credDir}/${e.credential}";
        };
      }
    ) settings (settingsSecrets settings);

  # LoadCredential= entries for the server unit.
  serverCredentials =
    {
      keyFile ? null,
      nextKeyFile ? null,
      sources ? [ ],
      settings ? { },
      unit ? "locket.service",
      ...
    }:
    (credentialize unit sources).credentials
    ++ (if keyFile == null then [ ] else [ "server-key:${toString keyFile}" ])
    ++ (if nextKeyFile == null then [ ] else [ "server-next-key:${toString nextKeyFile}" ])
    ++ map (e: "${e.credential}:${toString e.value}") (settingsSecrets settings);

  # Problems with the server options, as messages (empty when all is well).
  serverErrors =
    {
      keyFile ? null,
      nextKeyFile ? null,
      sources ? [ ],
      clients ? { },
      settings ? { },
      ...
    }:
    let
      settingsPaths = concatLists (
        map (
          e:
          let
            name = "services.locket.settings.${concatStringsSep "." e.path}";
          in
          if !isString e.value || !hasPrefix "/" e.value then
            [ "${name} must be an absolute path (it is handed to the unit with LoadCredential=)" ]
          else if isStorePath e.value then
            [ "${name} (${e.value}) is in the Nix store, which every user can read: point it at a file outside the store, e.g. under /run/secrets" ]
          else
            [ ]
        ) (settingsSecrets settings)
      );
      storePaths = concatLists (
        imap0 (
          i: s:
          map (k: "services.locket.sources.${toString i}.${k} (${toString s.${k}}) is in the Nix store, which every user can read: point it at a file outside the store, e.g. under /run/secrets")
            (filter (k: hasAttr k s && s.${k} != null && isStorePath s.${k}) credentialKeys)
        ) sources
      );
      keyInStore =
        if keyFile != null && isStorePath keyFile then
          [ "services.locket.keyFile (${toString keyFile}) is in the Nix store, which every user can read: place the key outside the store, or leave keyFile null to generate one" ]
        else if nextKeyFile != null && isStorePath nextKeyFile then
          [ "services.locket.nextKeyFile (${toString nextKeyFile}) is in the Nix store, which every user can read: place the key outside the store" ]
        else
          [ ];
      clientErrors = concatLists (
        map (
          name:
          let
            c = clients.${name};
          in
          (if validClientName name then [ ] else [ "services.locket.clients.${name}: the name must be 1-64 characters of A-Za-z0-9._-" ])
          ++ (if c.keys == [ ] then [ "services.locket.clients.${name}.keys is empty: add the line printed by `locket-client keygen`" ] else [ ])
          ++ (if c.networks == [ ] then [ "services.locket.clients.${name}.networks is empty: list the CIDRs it may call from" ] else [ ])
          ++ map (k: "services.locket.clients.${name}.keys: ${k} is not an ed25519:<base64> line or a PEM public key") (
            filter (k: !(isString k && (hasPrefix "ed25519:" k || hasPrefix "-----BEGIN" k))) c.keys
          )
        ) (attrNames clients)
      );
      noSources = if sources == [ ] then [ "services.locket.sources is empty: add at least one source" ] else [ ];
    in
    noSources ++ storePaths ++ keyInStore ++ settingsPaths ++ clientErrors;

  # The client's settings (client.toml).
  mkClientSettings =
    {
      server,
      name,
      keyFile,
      serverFingerprint ? null,
      serverFingerprints ? [ ],
      knownServersFile ? null,
      bind ? null,
    }:
    let
      pins = (if serverFingerprint == null then [ ] else [ serverFingerprint ]) ++ serverFingerprints;
    in
    dropNulls {
      inherit server name bind;
      key_file = toString keyFile;
      # One pin as `server_fingerprint`; during a rotation the list.
      server_fingerprint = if length pins == 1 then head pins else null;
      server_fingerprints = if length pins > 1 then pins else null;
      known_servers_file = if knownServersFile == null then null else toString knownServersFile;
    };

  clientErrors =
    {
      name,
      keyFile,
      serverFingerprint ? null,
      serverFingerprints ? [ ],
      knownServersFile ? null,
      services ? { },
      ...
    }:
    (
      if serverFingerprint == null && serverFingerprints == [ ] && knownServersFile == null then
        [ "services.locket.client: the server's key is not pinned, and the client refuses an unpinned server: set serverFingerprint to the output of `locket fingerprint` on the server (or knownServersFile to a file of `<URL> <fingerprint>` lines)" ]
      else
        [ ]
    )
    ++ (if validClientName name then [ ] else [ "services.locket.client.name must be 1-64 characters of A-Za-z0-9._-" ])
    ++ (if isStorePath keyFile then [ "services.locket.client.keyFile is in the Nix store, which every user can read" ] else [ ])
    ++ (
      if serverFingerprint == null || match "sha256:[0-9a-f]{64}" serverFingerprint != null then
        [ ]
      else
        [ "services.locket.client.serverFingerprint must be sha256:<64 lowercase hex digits> (from `locket fingerprint`)" ]
    )
    ++ map (fp: "services.locket.client.serverFingerprints: ${fp} must be sha256:<64 lowercase hex digits> (from `locket fingerprint`)") (
      filter (fp: match "sha256:[0-9a-f]{64}" fp == null) serverFingerprints
    )
    ++ concatLists (
      map (
        svc:
        if match "[A-Za-z0-9._@-]+" svc == null then
          [ "services.locket.client.services.${svc}: not a usable unit name" ]
        else
          [ ]
      ) (attrNames services)
    );

  # The oneshot that fetches a consumer's secrets, and its render command.
  fetchUnitName = consumer: "locket-fetch-${consumer}";
  secretsDir = consumer: "/run/locket/${consumer}";

  renderArgs =
    consumer: svc:
    [
      "render"
      "--dir"
      (secretsDir consumer)
      "--mode"
      svc.mode
      "--owner"
      svc.user
      "--group"
      svc.group
    ]
    ++ (if svc.envFile then [ "--env-file" "${secretsDir consumer}/env" ] else [ ])
    ++ svc.secrets;

  # The server's `clients`, derived from the fleet's own host configurations
  # (`locket.lib.fleetRegistry { nodes = self.nixosConfigurations; }`), so a
  # grant exists exactly when a consumer on a host asks for it. Each node is
  # a NixOS configuration (anything with `.config`); those with
  # `services.locket.client.enable` become one client each:
  #   name      services.locket.client.name (default: the host name)
  #   keys      services.locket.client.publicKey, or the line in publicKeyFile
  #             (a `.pub` file committed beside the host's config)
  #   networks  services.locket.client.networks, else the host's addresses
  #             (networking.interfaces.*.ipv4/ipv6.addresses, one host each)
  #   secrets   the union of the names its consumers declare
  # It throws, naming the hosts, when two hosts claim one client name, and
  # naming the host when it has no public key, no networks, or a consumer
  # that asks for every secret (an empty `secrets`): a registry cannot
  # derive a grant from "all".
  fleetRegistry =
    { nodes }:
    let
      enabled = filter (
        host:
        let
          c = nodes.${host}.config.services.locket.client or { };
        in
        c.enable or false
      ) (attrNames nodes);
      uniq = list: attrNames (listToAttrs (map (x: { name = x; value = null; }) list));
      trim = s: head (match "[[:space:]]*([^[:space:]]*)[[:space:]]*" s);
      hostAddresses =
        config:
        concatLists (
          map (
            ifname:
            let
              i = config.networking.interfaces.${ifname};
            in
            map (a: "${a.address}/32") (i.ipv4.addresses or [ ])
            ++ map (a: "${a.address}/128") (i.ipv6.addresses or [ ])
          ) (attrNames (config.networking.interfaces or { }))
        );
      entry =
        host:
        let
          config = nodes.${host}.config;
          c = config.services.locket.client;
          keys =
            if (c.publicKey or null) != null then
              [ c.publicKey ]
            else if (c.publicKeyFile or null) != null then
              [ (trim (builtins.readFile c.publicKeyFile)) ]
            else
              throw "locket.lib.fleetRegistry: host ${host} (client ${c.name}) has no public key: set services.locket.client.publicKey, or publicKeyFile to the .pub file of its key (the line `locket-client keygen` prints)";
          declared = c.networks or [ ];
          networks =
            if declared != [ ] then
              declared
            else if hostAddresses config != [ ] then
              hostAddresses config
            else
              throw "locket.lib.fleetRegistry: host ${host} (client ${c.name}) has no networks: set services.locket.client.networks, or give it addresses in networking.interfaces";
          wantsAll = filter (svc: c.services.${svc}.secrets == [ ]) (attrNames c.services);
          secrets =
            if wantsAll != [ ] then
              throw "locket.lib.fleetRegistry: host ${host}: consumer ${head wantsAll} asks for every secret (secrets = [ ]); list the names it needs, so that the registry grants exactly those"
            else
              uniq (concatLists (map (svc: c.services.${svc}.secrets) (attrNames c.services)));
        in
        {
          name = c.name;
          value = { inherit keys networks secrets; };
          inherit host;
        };
      entries = map entry enabled;
      claimed = name: map (e: e.host) (filter (e: e.name == name) entries);
      clash = filter (e: length (claimed e.name) > 1) entries;
    in
    if clash != [ ] then
      throw "locket.lib.fleetRegistry: hosts ${concatStringsSep " and " (claimed (head clash).name)} both claim client name ${(head clash).name}; give each host its own services.locket.client.name"
    else
      listToAttrs (map (e: { inherit (e) name value; }) entries);

}
