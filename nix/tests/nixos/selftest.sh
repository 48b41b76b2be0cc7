#!/usr/bin/env bash
# Proves that the NixOS stubs catch what NixOS catches and render what NixOS
# renders: runs the cases of selftest.nix, then evaluations that must fail
# with NixOS's message. Needs nix-instantiate and nixpkgs' lib (default:
# ../shared/nixpkgs-lib/lib beside the repository, or $NIXPKGS_LIB).
# Prints "N passed, M failed" and exits non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
lib="${NIXPKGS_LIB:-$(cd "$repo/.." && pwd)/shared/nixpkgs-lib/lib}"
passed=0
failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1"; failed=$((failed + 1)); }

# 1. positive cases
if out=$(nix-instantiate --eval --strict --json -A results "$here/selftest.nix" --arg libPath "$lib" 2>/tmp/locket-stub-selftest.err); then
  while IFS=$'\t' read -r status name got; do
    if [ "$status" = ok ]; then ok "$name"; else bad "$name: got $got"; fi
  done < <(python3 -c '
import json, sys
for r in json.loads(sys.argv[1]):
    print("ok" if r["ok"] else "bad", r["name"], json.dumps(r["got"])[:2000], sep="\t")' "$out")
else
  bad "selftest.nix did not evaluate: $(head -c 3000 /tmp/locket-stub-selftest.err)"
fi

# 2. evaluations that must fail, with the message NixOS gives.
#    expect_fail NAME REGEX MODULES [EXTRA nix-instantiate ARGS...]
expect_fail() {
  local name=$1 pattern=$2 modules=$3
  shift 3
  local err
  if err=$(nix-instantiate --eval --strict --json -A units "$here/eval.nix" --arg libPath "$lib" \
    --arg modules "$modules" "$@" 2>&1 >/dev/null); then
    bad "$name: evaluated, but NixOS refuses it"
  elif grep -Eq -- "$pattern" <<<"$err"; then
    ok "$name"
  else
    bad "$name: failed with another message: $(head -c 1500 <<<"$err")"
  fi
}
# shellcheck disable=SC2016
{
expect_fail "nixpkgs.overlays under the read-only nixpkgs module" \
  'nixpkgs.overlays is set to read-only' \
  '[ { nixpkgs.overlays = [ (final: prev: { }) ]; } ]'
expect_fail "nixpkgs.config under the read-only nixpkgs module" \
  'nixpkgs.config is set to read-only' \
  '[ { nixpkgs.config.allowUnfree = true; } ]'
expect_fail "an undeclared option" \
  "The option \`services.demo.nonexistent' does not exist" \
  '[ ({ lib, ... }: { options.services.demo.enable = lib.mkEnableOption "demo"; }) { services.demo.nonexistent = 1; } ]'
expect_fail "an undeclared NixOS option (networking.fooBar)" \
  "The option \`networking.fooBar' does not exist" \
  '[ { networking.fooBar = true; } ]'
expect_fail "a wrongly typed option (wantedBy is not a unit name)" \
  "is not of type .string matching the pattern" \
  '[ { systemd.services.a.wantedBy = [ "multi-user" ]; } ]'
expect_fail "a serviceConfig.Type systemd does not know" \
  "Systemd Service field .Type' cannot have value .bogus'" \
  '[ { systemd.services.a.serviceConfig.Type = "bogus"; } ]'
expect_fail "conflicting scalar serviceConfig definitions" \
  "The option \`systemd.services.a.serviceConfig.User' has conflicting definition values" \
  '[ { systemd.services.a.serviceConfig.User = "x"; } { systemd.services.a.serviceConfig.User = "y"; } ]'
expect_fail "a non-package in environment.systemPackages" \
  "is not of type .package" \
  '[ { environment.systemPackages = [ "curl" ]; } ]'
expect_fail "environment.etc source that is a relative path" \
  "is not of type .absolute path" \
  '[ { environment.etc.x.source = "relative/file"; } ]'
expect_fail "the \`nodes\` argument outside a test" \
  "attribute 'nodes' missing|value is a function while a set was expected|called without required argument 'nodes'" \
  '[ ({ nodes, ... }: { networking.hostName = nodes.x.networking.hostName; }) ]'
expect_fail "networking.primaryIPAddress outside a test (qemu-vm.nix only)" \
  "The option \`networking.primaryIPAddress' does not exist" \
  '[ { networking.primaryIPAddress = "10.0.0.1"; } ]'
expect_fail "an unfree package without allowUnfree" \
  "has an unfree license" \
  '[ ({ pkgs, ... }: { systemd.services.a.path = [ pkgs._1password-cli ]; }) ]'
expect_fail "mkPackageOption of a package the stub pkgs lacks" \
  "nosuchpkg cannot be found in pkgs" \
  '[ ({ lib, pkgs, config, ... }: { options.x = lib.mkPackageOption pkgs "nosuchpkg" { }; config.environment.systemPackages = [ config.x ]; }) ]'
}

expect_fail "a store path name with a slash (pkgs.writeText \"a/b\")" \
  "invalid derivation name" \
  '[ ({ pkgs, ... }: { systemd.services.a.restartTriggers = [ (pkgs.writeText "a/b" "x") ]; }) ]'

# 3. the same read-only rule inside a runNixOSTest node
err=$(nix-instantiate --eval --strict --json -A test.json "$here/eval.nix" --arg libPath "$lib" \
  --arg test '{ name = "t"; nodes.a = { nixpkgs.overlays = [ (f: p: { }) ]; }; testScript = ""; }' 2>&1 >/dev/null) \
  && bad "nixpkgs.overlays in a test node: evaluated" \
  || { grep -q 'nixpkgs.overlays is set to read-only' <<<"$err" && ok "nixpkgs.overlays in a test node" \
    || bad "nixpkgs.overlays in a test node: $(head -c 1500 <<<"$err")"; }

# 4. the repository's VM test evaluates on the stubs: every node and the
#    specialisation, with no failed assertion or warning
if out=$(nix-instantiate --eval --strict --json -A test.json "$here/eval.nix" --arg libPath "$lib" \
  --arg testFile "$repo/nix/tests/vm.nix" 2>&1); then
  if msg=$(python3 -c '
import json, sys
t = json.loads(sys.argv[1])
probs = []
def walk(prefix, n):
    probs.extend(f"{prefix}: {m}" for m in n["failedAssertions"] + n["warnings"])
    for s, c in n["specialisations"].items():
        walk(f"{prefix}/specialisation/{s}", c)
for name, node in t["nodes"].items():
    walk(name, node)
# the registry change (a new client) must reach locket.service as a reload:
# of its unit, only the X-Reload-Triggers= line may change
spec = t["nodes"]["server"]["specialisations"]["registry-change"]
if spec["changedUnits"] != ["locket.service"] or spec["addedUnits"] or spec["removedUnits"]:
    probs.append(f"registry-change changes {spec}")
old = t["nodes"]["server"]["units"]["locket.service"].splitlines()
new = spec["units"]["locket.service"].splitlines()
changed = [l for l in set(old) ^ set(new) if not l.startswith("X-Reload-Triggers=")]
if changed or len(old) != len(new) or old == new:
    probs.append(f"registry-change changes more than X-Reload-Triggers: {changed}")
print("; ".join(probs)); sys.exit(1 if probs else 0)' "$out"); then
    ok "nix/tests/vm.nix evaluates on the stubs (all nodes and specialisations; registry-change only reloads)"
  else
    bad "nix/tests/vm.nix: $msg"
  fi
else
  bad "nix/tests/vm.nix does not evaluate on the stubs: $(head -c 2000 <<<"$out")"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
