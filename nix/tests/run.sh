#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (Debian's nix-bin is enough):
#  1. every .nix file parses;
#  2. the pure-function unit tests (nix/tests/unit.nix) pass;
#  3. flake.lock is well-formed and holds the agreed nixpkgs pin;
#  4. the TOML generated from a realistic module configuration is accepted
#     by the real server (`locket check`), and a server started on it
#     serves the real client.
# Prints "N passed, M failed" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
passed=0
failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1"; failed=$((failed + 1)); }

# 1. parse
while IFS= read -r f; do
  if nix-instantiate --parse "$f" >/dev/null 2>/tmp/locket-nix-parse.err; then ok "parse $f"; else bad "parse $f: $(cat /tmp/locket-nix-parse.err)"; fi
done < <(git ls-files --cached --others --exclude-standard '*.nix' 2>/dev/null || find . -name '*.nix' -not -path './target/*')

# 2. unit tests of nix/lib.nix
if out=$(nix-instantiate --eval --strict --json nix/tests/unit.nix 2>&1); then
  n=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["passed"]); [print("  failed:", json.dumps(f), file=sys.stderr) for f in r["failed"]]; sys.exit(1 if r["failed"] else 0)' "$out") \
    && ok "nix unit tests ($n cases)" || bad "nix unit tests: $out"
else
  bad "nix unit tests did not evaluate: $out"
fi

# 2b. the module, through the real module system (nixpkgs' lib by path)
lib="${NIXPKGS_LIB:-$(cd .. && pwd)/shared/nixpkgs-lib/lib}"
if [ ! -f "$lib/default.nix" ]; then
  bad "nixpkgs lib not found at $lib (set NIXPKGS_LIB)"
else
  for selftest in nix/tests/nixos/selftest.sh; do
    if out=$(NIXPKGS_LIB="$lib" bash "$selftest" 2>&1); then ok "NixOS stubs self-test: $(tail -1 <<<"$out")"; else bad "NixOS stubs self-test: $out"; fi
  done
  # NIX_ABORT_ON_WARN: any evaluation warning (lib.warn: deprecated
  # packages or options) fails the checks, as `nix flake check` must print none.
  if out=$(NIX_ABORT_ON_WARN=1 nix-instantiate --eval --strict --json nix/tests/module-eval.nix -A passed --arg libPath "$lib" 2>&1) \
    && failedChecks=$(NIX_ABORT_ON_WARN=1 nix-instantiate --eval --strict --json --expr "(import ./nix/tests/module-eval.nix { lib = import ./nix/tests/nixpkgs-lib.nix $lib; flake = { }; }).failed" 2>&1) \
    && [ "$failedChecks" = "[]" ]; then
    ok "module evaluation checks ($out passed)"
  else
    bad "module evaluation checks: $out ${failedChecks:-}"
  fi
fi

# 2b'. the home-manager module (user services), through the real module
#      system against stubs of home-manager's options.
if [ -f "$lib/default.nix" ]; then
  if out=$(NIX_ABORT_ON_WARN=1 nix-instantiate --eval --strict --json nix/tests/home-eval.nix -A passed --arg libPath "$lib" 2>&1) \
    && failedChecks=$(NIX_ABORT_ON_WARN=1 nix-instantiate --eval --strict --json nix/tests/home-eval.nix -A failed --arg libPath "$lib" 2>&1) \
    && [ "$failedChecks" = "[]" ]; then
    ok "home-manager module checks ($out passed)"
  else
    bad "home-manager module checks: $out ${failedChecks:-}"
  fi
fi

# 2b''. docs/options.md, generated from the module: CI fails when it is stale.
if [ -f "$lib/default.nix" ]; then
  if out=$(python3 nix/tests/options_doc.py --check --lib "$lib" 2>&1); then
    ok "$out"
  else
    bad "$out"
  fi
fi

# 2b'''. the module guide's worked examples (docs/nixos.md), each a whole
#       NixOS module, evaluated with the module.
if [ -f "$lib/default.nix" ]; then
  ex=$(mktemp -d)
  if out=$(LIB="$lib" python3 - "$ex" <<'PY' 2>&1
import json, os, re, subprocess, sys
ex = sys.argv[1]
text = open("docs/nixos.md", encoding="utf-8").read()
section = text.split("## Worked examples", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```nix\n(.*?)\n```", section, re.S)
assert len(blocks) == 5, f"{len(blocks)} examples"
files = []
for i, b in enumerate(blocks):
    files.append(os.path.join(ex, f"example-{i}.nix"))
    open(files[-1], "w").write(b + "\n")
r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "nix/tests/guide-examples.nix", "--arg", "libPath", os.environ["LIB"], "--arg", "files", "[ " + " ".join(files) + " ]"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr[-2000:]
for e in json.loads(r.stdout):
    assert e["failedAssertions"] == [] and e["warnings"] == [] and (e["fetchUnits"] or e["socket"]), e
print(f"{len(blocks)} examples, each with its fetch unit (or credential socket), no assertion or warning")
PY
  ); then
    ok "the module guide's worked examples evaluate with the module: $out"
  else
    bad "the module guide's worked examples: $out"
  fi
  rm -rf "$ex"
fi

# 2b'. the VM test's testScript (Python, run by NixOS's test driver, which
#      this machine cannot start) at least compiles.
if [ -f "$lib/default.nix" ]; then
  if out=$(nix-instantiate --eval --strict --json nix/tests/nixos/eval.nix -A test.json --arg libPath "$lib" --arg testFile ./nix/tests/vm.nix 2>&1) \
    && err=$(python3 -c 'import json, sys; compile(json.loads(sys.argv[1])["testScript"], "nix/tests/vm.nix testScript", "exec")' "$out" 2>&1); then
    ok "the VM test's testScript compiles as Python"
  else
    bad "the VM test's testScript: ${err:-$out}"
  fi
  # …and has none of the racy patterns the guest test learned to avoid.
  if lint=$(python3 nix/tests/testscript_lint.py <<<"$out" 2>&1); then
    ok "the VM test's testScript waits for what it checks ($(tail -1 <<<"$lint"))"
  else
    bad "the VM test's testScript: $lint"
  fi
fi

# 2c. locket.lib.fleetRegistry on docs/nixos.md's three-host fleet: the
#     registry it derives, as the server's generated config holds it, and
#     each way a fleet can be wrong failing with a message naming the host.
if [ -f "$lib/default.nix" ]; then
  fleet() { nix-instantiate --eval --strict --json nix/tests/fleet.nix --arg libPath "$lib" "$@" 2>&1; }
  if out=$(fleet) && python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
want = {
    "web1": {"keys": ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="], "networks": ["10.0.1.11/32"],
             "secrets": ["API_TOKEN", "DB_PASSWORD", "QUEUE_URL"]},
    "web2": {"keys": ["ed25519:OsMR+wXsSJ8Umzy7Ilw4r7yetpvLPsSdLDxQChMW71U="], "networks": ["10.0.1.12/32", "fd00::12/128"],
             "secrets": ["API_TOKEN"]},
}
assert r["registry"] == want, r["registry"]
assert r["serverClients"] == want, r["serverClients"]
assert r["failedAssertions"] == [], r["failedAssertions"]
PY
  then ok "fleetRegistry: three hosts give the server exactly the grants their consumers declare"; else bad "fleetRegistry: $out"; fi
  for case in "duplicate:hosts web1 and web2 both claim client name web1" "noKey:host web2 (client web2) has no public key" \
    "everySecret:host web1: consumer cron asks for every secret" "noNetworks:host web2 (client web2) has no networks"; do
    if out=$(fleet --argstr break "${case%%:*}"); then
      bad "fleetRegistry ${case%%:*}: evaluated instead of failing"
    elif grep -qF "${case#*:}" <<<"$out"; then
      ok "fleetRegistry ${case%%:*}: refused, naming it"
    else
      bad "fleetRegistry ${case%%:*}: $out"
    fi
  done
fi

# 3. flake.lock pin
if python3 - <<'PY'
import json, sys
lock = json.load(open("flake.lock"))
assert lock["version"] == 7, "version"
assert lock["root"] == "root" and lock["nodes"]["root"]["inputs"] == {"nixpkgs": "nixpkgs"}, "root inputs"
n = lock["nodes"]["nixpkgs"]
assert n["locked"] == {
    "lastModified": 1778430510,
    "narHash": "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q=",
    "owner": "NixOS", "repo": "nixpkgs",
    "rev": "8fd9daa3db09ced9700431c5b7ad0e8ba199b575", "type": "github",
}, n["locked"]
assert n["original"] == {"owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github"}, n["original"]
assert 'github:NixOS/nixpkgs/nixos-25.11' in open("flake.nix").read(), "flake.nix input"
assert set(lock["nodes"]) == {"root", "nixpkgs"}, "only nixpkgs as input"
PY
then ok "flake.lock pin"; else bad "flake.lock pin"; fi

# 4. generated config against the real binaries
if ! python3 -c 'import remarshal' 2>/dev/null; then
  python3 -m pip install -q remarshal >/dev/null 2>&1 || pip install -q remarshal >/dev/null 2>&1
fi
cargo build -q --locked --bins || { bad "cargo build"; echo "$passed passed, $failed failed"; exit 1; }
tmp=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/creds" "$tmp/state"

# 3b. the package's postInstall (man pages, shell completions from the
#     binaries' `generate`), replayed with the debug binaries and
#     installShellFiles' two functions, as nixpkgs' setup hook installs.
if [ -f "$lib/default.nix" ] && post=$(nix-instantiate --eval --strict --json nix/tests/package-attrs.nix --arg libPath "$lib" -A postInstall | python3 -c 'import json,sys; print(json.load(sys.stdin))'); then
  pkg="$tmp/pkg" && mkdir -p "$pkg/bin" "$tmp/build"
  completions_ok() {
    for b in locket locket-client; do
      test -s "$pkg/share/bash-completion/completions/$b.bash" && test -s "$pkg/share/zsh/site-functions/_$b" && test -s "$pkg/share/fish/vendor_completions.d/$b.fish" || return 1
    done
  }
  ln -s "$PWD/target/debug/locket" "$PWD/target/debug/locket-client" "$pkg/bin/"
  if (
    set -e
    out=$pkg
    installManPage() { for f; do install -Dm644 "$f" "$out/share/man/man1/${f##*/}"; done; }
    installShellCompletion() {
      local cmd=""
      while [ $# -gt 0 ]; do
        case $1 in
          --cmd) cmd=$2 ;;
          --bash) install -Dm644 "$2" "$out/share/bash-completion/completions/$cmd.bash" ;;
          --zsh) install -Dm644 "$2" "$out/share/zsh/site-functions/_$cmd" ;;
          --fish) install -Dm644 "$2" "$out/share/fish/vendor_completions.d/$cmd.fish" ;;
          *) return 1 ;;
        esac
        shift 2
      done
    }
    cd "$tmp/build" && eval "$post"
  ) 2>"$tmp/post.err" \
    && grep -q '^.TH locket-client-deliver 1' "$pkg/share/man/man1/locket-client-deliver.1" \
    && grep -q '^.TH locket-serve 1' "$pkg/share/man/man1/locket-serve.1" \
    && completions_ok; then
    ok "the package's postInstall installs $(ls "$pkg/share/man/man1" | wc -l) man pages and 3 completions per binary"
  else
    bad "the package's postInstall: $(cat "$tmp/post.err")"
  fi
fi
if nix-instantiate --eval --strict --json -E "import ./nix/tests/example.nix { credentialsDirectory = \"$tmp/creds\"; stateDirectory = \"$tmp/state\"; port = $port; }" >"$tmp/example.json" 2>"$tmp/eval.err"; then
  ok "example configuration evaluates"
else
  bad "example configuration: $(cat "$tmp/eval.err")"
fi
python3 - "$tmp" <<'PY' && ok "example has no assertion errors; credentials placed as LoadCredential= would" || bad "example errors or credentials"
import json, os, shutil, sys
tmp = sys.argv[1]
ex = json.load(open(f"{tmp}/example.json"))
assert ex["errors"] == [], ex["errors"]
# The command's file argument points at its credential, not the original.
assert ex["settings"]["sources"][2]["command"] == ["cat", f"{tmp}/creds/source-2-file-0"], ex["settings"]["sources"][2]
assert "files" not in ex["settings"]["sources"][2]
for entry in ex["credentials"]:
    name, path = entry.split(":", 1)
    dst = f"{tmp}/creds/{name}"
    shutil.copyfile(path, dst)
    os.chmod(dst, 0o400)  # systemd hands credentials over read-only to the owner
json.dump(ex["settings"], open(f"{tmp}/server.json", "w"))
json.dump(ex["client"], open(f"{tmp}/client.json", "w"))
PY
# pkgs.formats.toml runs remarshal's json2toml; so do we.
if python3 -m remarshal --if json --of toml "$tmp/server.json" "$tmp/server.toml" 2>"$tmp/r.err" \
  && python3 -m remarshal --if json --of toml "$tmp/client.json" "$tmp/client.toml" 2>>"$tmp/r.err"; then
  ok "settings converted to TOML with remarshal (as pkgs.formats.toml)"
else
  bad "remarshal: $(cat "$tmp/r.err")"
fi
if out=$(target/debug/locket check --config "$tmp/server.toml" 2>&1) && grep -q "^clients: 2" <<<"$out" && grep -q "^secrets: 5" <<<"$out" && grep -q "app: 1 key(s), 2 network(s), can read 5 of 5" <<<"$out"; then
  ok "locket check accepts the generated server.toml"
else
  bad "locket check on the generated server.toml: $out"
fi
target/debug/locket serve --config "$tmp/server.toml" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$tmp/server.log" && break; sleep 0.1; done
client() { target/debug/locket-client --config "$tmp/client.toml" "$@"; }
if [ "$(client get DB_PASSWORD 2>"$tmp/c.err")" = "nix-db-password" ] \
  && [ "$(client get service/token 2>>"$tmp/c.err")" = "nix-json-token" ] \
  && [ "$(client get API_TOKEN 2>>"$tmp/c.err")" = "overridden-by-later-source" ] \
  && [ "$(client get service/cmd 2>>"$tmp/c.err")" = "nix-command-value" ] \
  && [ "$(client get SYMBOLS 2>>"$tmp/c.err")" = '\|!@#$%^&*()_+[]{};:,<.>/?`~===' ]; then
  ok "a server on the generated config serves the pinned client"
else
  bad "client against the generated config: $(cat "$tmp/c.err") / $(cat "$tmp/server.log")"
fi
client get OTHER >/dev/null 2>&1; rc=$?
if [ "$rc" = 3 ]; then ok "a name not granted is denied (exit 3)"; else bad "expected exit 3, got $rc"; fi

# 5. what the module generates, run: unit files verified, command lines
#    parsed by the real binaries, server.toml checked, the handshake on the
#    VM test's addresses (needs root for namespaces; CI is root).
if [ -f "$lib/default.nix" ]; then
  if python3 nix/tests/module_check.py --lib "$lib" --bin target/debug >"$tmp/module-check.log" 2>&1; then
    ok "module check: $(tail -1 "$tmp/module-check.log")"
  else
    bad "module check:
$(grep -v '^ok:' "$tmp/module-check.log")"
  fi
fi

echo "nix: $passed passed, $failed failed"
[ "$failed" = 0 ]
