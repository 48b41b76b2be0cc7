# A realistic services.locket configuration, turned into settings by the
# same pure functions the module uses. nix/tests/run.sh evaluates it, writes
# the TOML exactly as pkgs.formats.toml would (remarshal's json2toml), fills
# the credentials folder as LoadCredential= would, and runs the real server
# and client on it: the Nix side and the Rust side cannot drift apart.
{
  credentialsDirectory,
  stateDirectory,
  port,
  fixtures ? toString ./fixtures,
  keys ? toString ./keys,
}:
let
  l = import ../lib.nix;
  trim = s: builtins.replaceStrings [ "\n" ] [ "" ] s;
  # What an operator writes under services.locket (the module passes these
  # same attributes to mkServerSettings / serverCredentials / serverErrors).
  server = {
    listenAddress = "127.0.0.1";
    inherit port stateDirectory credentialsDirectory;
    keyFile = "${keys}/server-key.pem";
    sources = [
      {
        type = "dotenv";
        path = "${fixtures}/secrets.env";
        token_file = null;
      }
      {
        type = "file";
        path = "${fixtures}/extra.json";
        token_file = null;
      }
      # A command and the file it reads, handed over with LoadCredential=.
      {
        type = "command";
        command = [
          "cat"
          "${fixtures}/command.json"
        ];
        files = [ "${fixtures}/command.json" ];
      }
    ];
    clients = {
      app = {
        keys = [ (trim (builtins.readFile ./keys/app.pub)) ];
        networks = [
          "127.0.0.0/8"
          "::1/128"
        ];
        secrets = [
          "DB_PASSWORD"
          "API_TOKEN"
          "SYMBOLS"
          "service/*"
        ];
      };
      intruder = {
        keys = [ (trim (builtins.readFile ./keys/intruder.pub)) ];
        networks = [ "10.99.0.0/16" ];
        secrets = [ "API_TOKEN" ];
      };
    };
    settings = {
      clock_skew = "20s";
      max_answer_bytes = 1048576;
    };
  };
in
{
  errors = l.serverErrors server;
  settings = l.mkServerSettings server;
  credentials = l.serverCredentials server;
  client = l.mkClientSettings {
    server = "http://127.0.0.1:${toString port}";
    name = "app";
    keyFile = "${keys}/app.key";
    serverFingerprint = trim (builtins.readFile ./keys/server.fingerprint);
  };
}
