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
    replaceStrings
    stringLength
    substring
    tail
    ;

  imap0 = f: list: genList (i: f i (builtins.elemAt list i)) (length list);
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  hasSuffix =
    suffix: s:
    let
      n = stringLength s - stringLength suffix;
    in
    n >= 0 && substring n (stringLength suffix) s == suffix;
  # Remove attributes whose value is null (TOML has no null).
  dropNulls = attrs: removeAttrs attrs (filter (n: attrs.${n} == null) (attrNames attrs));
  optionalAttrs = cond: attrs: if cond then attrs else { };
  optional = cond: x: if cond then [ x ] else [ ];
  attrValues = attrs: map (n: attrs.${n}) (attrNames attrs);
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
          # A command's files: each one a credential, and each argument
          # equal to one replaced by its credential's path.
          files = src.files or [ ];
          fileCred = j: "source-${toString i}-file-${toString j}";
          fileCreds = imap0 (j: f: {
            from = toString f;
            name = fileCred j;
          }) files;
          routed =
            a:
            let
              hit = filter (c: c.from == a) fileCreds;
            in
            if hit == [ ] then a else "${credDir}/${(head hit).name}";
          command = optionalAttrs (src ? command) { command = map routed src.command; };
          # A credential loses its file name, so a `file` source's format
          # (otherwise taken from the extension) is made explicit.
          ext = if src ? path then match ".*\\.(json|toml)" (toString src.path) else null;
          format = if src.type or "" == "file" && !(src ? format) && ext != null then { format = head ext; } else { };
        in
        {
          source =
            removeAttrs src [ "files" ]
            // format
            // command
            // listToAttrs (
              map (k: {
                name = k;
                value = "${credDir}/${credName k}";
              }) keys
            );
          credentials = map (k: "${credName k}:${toString src.${k}}") keys ++ map (c: "${c.name}:${c.from}") fileCreds;
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
      sealedSet ? null, # { maxAge; }: a sealed last-good set, keyed by the seal-key credential
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
    // (
      if sealedSet == null then
        { }
      else
        {
          sealed_set = {
            path = "${stateDirectory}/last-good.sealed";
            max_age = sealedSet.maxAge;
            key_file = "${credDir}/seal-key";
          };
        }
    )
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
      stateDirectory ? "/var/lib/locket",
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
          ++ map (f: "services.locket.sources.${toString i}.files: ${toString f} is in the Nix store, which every user can read: point it at a file outside the store, e.g. under /run/secrets") (
            filter isStorePath (s.files or [ ])
          )
        ) sources
      );
      # A command's argument naming a file outside the store would bypass
      # LoadCredential= (and the server, a DynamicUser, could not read a
      # root-only file anyway): it must be listed in `files`. The program
      # itself (the first argument) is not a secret.
      commandPaths = concatLists (
        imap0 (
          i: s:
          let
            routed = map toString (s.files or [ ]);
          in
          map (a: "services.locket.sources.${toString i}.command: argument ${a} is a file outside the Nix store that would bypass LoadCredential= (and the server's dynamic user cannot read a root-only file): list it in services.locket.sources.${toString i}.files, which hands it over and replaces the argument by the credential's path") (
            filter (a: isString a && hasPrefix "/" a && !isStorePath a && !(builtins.elem a routed)) (
              if (s.command or null) == null then [ ] else builtins.tail s.command
            )
          )
          ++ (
            if (s.files or [ ]) != [ ] && (s.type or "") != "command" then
              [ "services.locket.sources.${toString i}.files is set on a ${s.type or "?"} source: only a command source reads files (others take `path`)" ]
            else
              [ ]
          )
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
      # RFC 42: `settings` is for the keys no typed option covers. A key a
      # typed option writes would be silently replaced by it; say which
      # option to use instead (for a key file, the option also routes it
      # through LoadCredential=).
      typedKeys = {
        listen = "listenAddress and port";
        key_file = "keyFile";
        next_key_file = "nextKeyFile";
        sources = "sources";
        clients = "clients";
        sealed_set = "sealedSet";
      };
      # One exception: with a generated key, the next key of a rotation is
      # the server's own too (it creates it in its state directory), and
      # no credential can hand over a file that does not exist yet.
      generatedNext =
        k:
        k == "next_key_file"
        && keyFile == null
        && nextKeyFile == null
        && isString settings.next_key_file
        && hasPrefix "${stateDirectory}/" settings.next_key_file;
      overlaps =
        map (
          k: "services.locket.settings.${k} is set, but services.locket.${typedKeys.${k}} writes ${k}: set it there instead (the typed option would win)"
        ) (filter (k: hasAttr k settings && !generatedNext k) (attrNames typedKeys));
    in
    noSources ++ storePaths ++ keyInStore ++ settingsPaths ++ commandPaths ++ clientErrors ++ overlaps;

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
      watch ? { },
      # The option path the messages name (home-manager: services.locket-client).
      prefix ? "services.locket.client",
      runDir ? "/run/locket",
      ...
    }:
    map (c: "${prefix}.services.${c}: delivery = \"socket\" is served by locket-watch, but ${prefix}.watch.enable is false: enable the watcher, or use delivery = \"files\"") (
      filter (c: isSocket services.${c} && !(watch.enable or true)) (attrNames services)
    )
    ++ (
      if serverFingerprint == null && serverFingerprints == [ ] && knownServersFile == null then
        [ "${prefix}: the server's key is not pinned, and the client refuses an unpinned server: set serverFingerprint to the output of `locket fingerprint` on the server (or knownServersFile to a file of `<URL> <fingerprint>` lines)" ]
      else
        [ ]
    )
    ++ (if validClientName name then [ ] else [ "${prefix}.name must be 1-64 characters of A-Za-z0-9._-" ])
    ++ (if isStorePath keyFile then [ "${prefix}.keyFile is in the Nix store, which every user can read" ] else [ ])
    ++ (
      if serverFingerprint == null || match "sha256:[0-9a-f]{64}" serverFingerprint != null then
        [ ]
      else
        [ "${prefix}.serverFingerprint must be sha256:<64 lowercase hex digits> (from `locket fingerprint`)" ]
    )
    ++ map (fp: "${prefix}.serverFingerprints: ${fp} must be sha256:<64 lowercase hex digits> (from `locket fingerprint`)") (
      filter (fp: match "sha256:[0-9a-f]{64}" fp == null) serverFingerprints
    )
    ++ concatLists (
      map (
        svc:
        if match "[A-Za-z0-9._@-]+" svc == null then
          [ "${prefix}.services.${svc}: not a usable unit name" ]
        else
          [ ]
      ) (attrNames services)
    )
    ++ concatLists (map (svc: consumerErrorsIn { inherit prefix runDir; } svc services.${svc}) (attrNames services));

  # The oneshot that fetches a consumer's secrets, and the folder it fills.
  fetchUnitName = consumer: "locket-fetch-${consumer}";
  runDir = "/run/locket";
  secretsDir = consumer: "${runDir}/${consumer}";

  # --- Delivery (issue #15) ---
  #
  # The module writes one delivery plan per host (delivery.toml at a fixed
  # path, so a plan change does not change the units' command lines), and
  # `locket-client deliver --plan` reads it: once per consumer in its fetch
  # unit (`--consumer <name>`), and for all of them in the watcher
  # (`--watch <interval>`), which rewrites what changed and restarts or
  # reloads the units that asked for it.
  deliveryPlanPath = "/etc/locket/delivery.toml";
  # Where the watcher serves `delivery = "socket"` consumers
  # (locket-watch.socket, LoadCredential=ID:<this>).
  credentialSocket = "${runDir}/credentials.sock";
  credentialSocketUnit = "locket-watch.socket";
  isSocket = svc: (svc.delivery or "files") == "socket";
  watchUnitName = "locket-watch";
  watchStatusFile = "/run/locket-watch/status.json";
  watchMetricsFile = "/run/locket-watch/locket-watch.prom";
  # The boot cache: values encrypted with systemd-creds, for consumers
  # with a cacheMaxAge, so they start when no server answers at boot.
  cacheStateDir = "/var/lib/locket-client";
  cacheDir = "/var/lib/locket-client/cache";
  cacheKeys = [
    "auto"
    "host"
    "tpm2"
    "host+tpm2"
  ];

  # A duration as the client reads it (humantime): one or more <number><unit>
  # spans such as "30s", "12h", "7d" or "1h 30min", the first one not zero.
  # humantime 2.4's unit names (Unit::from_str), but µs.
  durationUnits = [
    "nanos"
    "nsec"
    "ns"
    "usec"
    "us"
    "millis"
    "msec"
    "ms"
    "seconds"
    "second"
    "secs"
    "sec"
    "s"
    "minutes"
    "minute"
    "min"
    "mins"
    "m"
    "hours"
    "hour"
    "hr"
    "hrs"
    "h"
    "days"
    "day"
    "d"
    "weeks"
    "week"
    "wk"
    "wks"
    "w"
    "months"
    "month"
    "M"
    "years"
    "year"
    "yr"
    "yrs"
    "y"
  ];
  durationPattern =
    let
      unit = "(${concatStringsSep "|" durationUnits})";
    in
    "0*[1-9][0-9]* *${unit}( *[0-9]+ *${unit})*";
  validDuration = s: isString s && match durationPattern s != null;

  # A unit name with its type, as NixOS's unitNameType (systemd-lib.nix).
  unitNamePattern = "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  validUnitName = u: isString u && match unitNamePattern u != null;

  # The file a secret is delivered to in its consumer's folder: the
  # client's rule (`/` becomes `_`).
  secretFileName = name: replaceStrings [ "/" ] [ "_" ] name;
  # A name the client writes as a file of its own in a consumer's folder.
  validFileName =
    f: !(f == "" || f == "." || f == ".." || hasPrefix ".locket-" f || match ".*/.*" f != null);

  # The files of a consumer: secret name -> path, template file -> path.
  # A consumer that asks for every secret (secrets = [ ]) lists only its
  # templates: which secrets it gets is known to the server alone.
  consumerPaths = consumerPathsIn { inherit runDir credentialsDir; };
  # As consumerPaths, for a manager whose folders are `runDir` and
  # `credentialsDir <unit>` (a user manager's: userRunDir, userCredentialsDir).
  consumerPathsIn =
    { runDir, credentialsDir }:
    consumer: svc:
    if isSocket svc then
      mapAttrs (_: id: "${credentialsDir (svc.unit or "${consumer}.service")}/${id}") (credentialIds svc)
    else
    listToAttrs (
      map (s: {
        name = s;
        value = "${runDir}/${consumer}/${secretFileName s}";
      }) svc.secrets
    )
    // mapAttrs (f: _: "${runDir}/${consumer}/${f}") (svc.templates or { });

  # LoadCredential= entries of a consumer with `credentials = true`: one per
  # secret and per template, named like its file. systemd expands
  # specifiers (%) on both sides of the `:`, so `%` is doubled.
  consumerCredentials =
    consumer: svc:
    let
      escape = replaceStrings [ "%" ] [ "%%" ];
      files = map secretFileName svc.secrets ++ attrNames (svc.templates or { });
    in
    map (f: "${escape f}:${escape "${secretsDir consumer}/${f}"}") files;

  # A socket consumer's credential IDs: secret name -> ID (its file name),
  # template file -> itself.
  credentialIds =
    svc:
    listToAttrs (map (s: { name = s; value = secretFileName s; }) (svc.secrets or [ ]))
    // mapAttrs (f: _: f) (svc.templates or { });

  # LoadCredential= entries of a `delivery = "socket"` consumer: each
  # secret and template asked of the watcher's credential socket.
  socketCredentials = socketCredentialsAt credentialSocket;
  # As socketCredentials, for the socket at `socket` (a user manager's is
  # userCredentialSocket, whose `%t` systemd expands).
  socketCredentialsAt =
    socket: svc:
    let
      escape = replaceStrings [ "%" ] [ "%%" ];
    in
    map (id: "${escape id}:${socket}") (attrValues (credentialIds svc));

  # The ExecStartPre/preStart check of a socket consumer: systemd turns a
  # refused credential ("nothing written") into an empty file and starts
  # the unit (systemd #27373), so the unit stops here, with a line naming
  # the credential and where the reason is logged (`journal`).
  credentialCheck =
    { journal }:
    ids: ''
      for id in ${concatStringsSep " " (map (id: "'${replaceStrings [ "'" ] [ "'\\''" ] id}'") ids)}; do
        if [ ! -s "$CREDENTIALS_DIRECTORY/$id" ]; then
          echo "locket: credential $id is empty: locket-watch did not hand it over (this unit or this ID is not in its delivery plan, the server denied the secret, or no server answered and none was held); see ${journal}. Not starting." >&2
          exit 1
        fi
      done
    '';

  # systemd's Exec*= quoting, as NixOS's utils.escapeSystemdExecArg(s):
  # each argument a JSON string (systemd reads C escapes inside double
  # quotes), with `%` and `$` doubled so that systemd expands nothing.
  escapeSystemdExecArg =
    arg:
    replaceStrings [ "%" "$" ] [ "%%" "$$" ] (
      builtins.toJSON (if isString arg || builtins.isPath arg then "${arg}" else toString arg)
    );
  escapeSystemdExecArgs = args: concatStringsSep " " (map escapeSystemdExecArg args);

  # The systemd.services attribute of a consumer's unit ("app.service" ->
  # "app"), or null when the unit is not a service.
  serviceAttrName =
    unit:
    if hasSuffix ".service" unit && stringLength unit > 8 then
      substring 0 (stringLength unit - 8) unit
    else
      null;

  usesCache = svc: (svc.cacheMaxAge or null) != null;

  # A consumer's entry in delivery.toml. Templates default to the
  # consumer's mode, user and group (the module sets them explicitly).
  consumerPlan =
    {
      runtimeShell,
      runDir ? "/run/locket",
    }:
    consumer: svc:
    let
      dir = "${runDir}/${consumer}";
      onChange =
        if (svc.onChange or null) == null then
          null
        else
          [
            runtimeShell
            "-c"
            svc.onChange
          ];
    in
    if isSocket svc then
      dropNulls {
        delivery = "socket";
        unit = svc.unit or "${consumer}.service";
        secrets = svc.secrets;
        restart_units = svc.restartUnits or [ ];
        on_change = onChange;
        templates = mapAttrs (_: t: { content = t.content; }) (svc.templates or { });
      }
    else
    dropNulls {
      inherit dir;
      secrets = svc.secrets;
      mode = svc.mode;
      owner = svc.user or null;
      group = svc.group or null;
      env_file = if svc.envFile then "${dir}/env" else null;
      restart_units = svc.restartUnits or [ ];
      reload_units = svc.reloadUnits or [ ];
      on_change = onChange;
      cache_max_age = svc.cacheMaxAge or null;
      templates = mapAttrs (
        _: t:
        dropNulls {
          content = t.content;
          mode = t.mode or svc.mode;
          owner = t.owner or svc.user or null;
          group = t.group or svc.group or null;
        }
      ) (svc.templates or { });
    };

  # The whole plan (delivery.toml). `systemctl` and `systemdCreds` are the
  # paths of the host's systemd tools.
  deliveryPlan =
    {
      systemctl,
      systemdCreds,
      runtimeShell,
      cacheKey ? "auto",
      services ? { },
    }:
    {
      status_file = watchStatusFile;
      # For node_exporter's textfile collector (--collector.textfile.directory=/run/locket-watch).
      metrics_file = watchMetricsFile;
      inherit systemctl;
      systemd_creds = systemdCreds;
      cache_dir = cacheDir;
      cache_key = cacheKey;
      # Each delivery removes the folders here that no consumer uses.
      prune_under = runDir;
      credential_socket = credentialSocket;
      consumers = mapAttrs (consumerPlan { inherit runtimeShell; }) services;
    };

  # --- User services (home-manager, issue #29) ---
  # A user manager's runtime folder is $XDG_RUNTIME_DIR (/run/user/<uid>),
  # which home-manager cannot know (it evaluates without the uid): the plan
  # and the units name it as systemd's specifier `%t`, which systemd
  # expands in units and the client when it loads a `manager = "user"`
  # plan.
  userRunDir = "%t/locket";
  userCredentialSocket = "%t/locket/credentials.sock";
  userWatchStatusFile = "%t/locket-watch/status.json";
  userCredentialsDir = unit: "%t/credentials/${unit}";

  # A user's delivery plan: as deliveryPlan, without the boot cache
  # (systemd-creds' host key is root's) and without owners (a user manager
  # cannot chown).
  userDeliveryPlan =
    {
      systemctl,
      runtimeShell,
      services ? { },
    }:
    {
      manager = "user";
      status_file = userWatchStatusFile;
      inherit systemctl;
      prune_under = userRunDir;
      credential_socket = userCredentialSocket;
      consumers = mapAttrs (consumerPlan {
        inherit runtimeShell;
        runDir = userRunDir;
      }) services;
    };

  # The client's arguments after `--config … --timeout …`: a fetch unit
  # delivers one consumer, the watcher all of them, every `interval`.
  deliverArgs = deliverArgsFor deliveryPlanPath;
  watchArgs = watchArgsFor deliveryPlanPath;
  deliverArgsFor = plan: consumer: [
    "deliver"
    "--plan"
    plan
    "--consumer"
    consumer
  ];
  watchArgsFor = plan: interval: [
    "deliver"
    "--plan"
    plan
    "--watch"
    interval
  ];

  # Problems with one consumer's delivery options, as messages.
  consumerErrors = consumerErrorsIn {
    prefix = "services.locket.client";
    inherit runDir;
  };
  consumerErrorsIn =
    { prefix, runDir }:
    consumer: svc:
    let
      opt = "${prefix}.services.${consumer}";
      dir = "${runDir}/${consumer}";
      secrets = svc.secrets or [ ];
      secretFiles = map secretFileName secrets;
      templates = attrNames (svc.templates or { });
      credentials = svc.credentials or false;
      unit = svc.unit or "${consumer}.service";
      envFile = svc.envFile or true;
      secretOf = f: head (filter (s: secretFileName s == f) secrets);
      notUnits =
        option:
        map (u: "${opt}.${option}: `${toString u}` is not a unit name: give the full name with its type, e.g. ${toString u}.service") (
          filter (u: !validUnitName u) (svc.${option} or [ ])
        );
      socket = isSocket svc;
      socketOnly = "a delivery = \"socket\" consumer";
    in
    (
      if socket then
        optional credentials "${opt}.credentials: ${socketOnly} already reaches its unit as credentials (from the watcher's memory, no file): remove credentials = true"
        ++ optional (secrets == [ ]) "${opt}.secrets: ${socketOnly} needs each secret by name (LoadCredential= asks for each): list them"
        ++ optional (serviceAttrName unit == null) "${opt}.unit: ${unit} is not a service, and only a service takes LoadCredential=: set ${opt}.unit to the consuming <name>.service"
        ++ optional ((svc.reloadUnits or [ ]) != [ ]) "${opt}.reloadUnits: ${socketOnly} gets its values only when its unit starts, so a reload keeps the old ones: list the units in restartUnits"
        ++ optional ((svc.cacheMaxAge or null) != null) "${opt}.cacheMaxAge: ${socketOnly} has no boot cache (its values live in the watcher's memory only): remove cacheMaxAge, or use delivery = \"files\""
        ++ map (f: "${opt}: the credential ID `${f}` has a `:`, `%` or a backslash, which LoadCredential= cannot carry: rename it") (
          filter (f: match ".*[:\\%].*" f != null) (secretFiles ++ templates)
        )
        ++ map (f: "${opt}.templates.\"${f}\": the secret ${secretOf f} has the same credential ID: give the template another name") (
          filter (f: elem f secretFiles) templates
        )
      else
        [ ]
    )
    ++ (
      if socket then
        [ ]
      else if credentials && secrets == [ ] then
        [
          "${opt}.credentials: secrets is empty (every secret the client may read), but LoadCredential= needs each name: list the secrets in ${opt}.secrets, or set credentials = false and read the files in ${dir}"
        ]
      else
        [ ]
    )
    ++ (
      if credentials && !socket && serviceAttrName unit == null then
        [
          "${opt}.credentials: the unit ${unit} is not a service, and only a service takes LoadCredential=: set ${opt}.unit to the consuming <name>.service, or set credentials = false"
        ]
      else
        [ ]
    )
    ++ (
      if credentials && !socket then
        map (f: "${opt}.credentials: the file name `${f}` has a `:` or a backslash, which LoadCredential= cannot carry: rename it, or set credentials = false and read the file in ${dir}") (
          filter (f: match ".*[:\\].*" f != null) (secretFiles ++ templates)
        )
      else
        [ ]
    )
    ++ concatLists (
      map (
        f:
        if !validFileName f then
          [
            "${opt}.templates.\"${f}\": not a file name${if socket then " (a credential ID)" else " in ${dir}"} (it is empty, `.` or `..`, starts with `.locket-`, or has a `/`): name the file plainly, e.g. app.ini"
          ]
        else if socket then
          [ ]
        else if f == "env" && envFile then
          [
            "${opt}.templates.env: ${dir}/env is the environment file (envFile = true): give the template another name, or set ${opt}.envFile = false"
          ]
        else if elem f secretFiles then
          [
            "${opt}.templates.\"${f}\": the secret ${secretOf f} is delivered to the same file ${dir}/${f}: give the template another name"
          ]
        else
          [ ]
      ) templates
    )
    ++ notUnits "restartUnits"
    ++ notUnits "reloadUnits";

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
