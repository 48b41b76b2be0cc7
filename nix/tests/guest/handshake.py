#!/usr/bin/env python3
"""The guest-machine test: the NixOS module's units, run by a real systemd.

The stand-in for nix/tests/vm.nix on a machine that cannot build NixOS:
the module and the VM test's three nodes are evaluated with nixpkgs' real
lib.evalModules (../nixos/eval.nix), their units rendered as NixOS renders
them, and installed unchanged into a Debian bookworm guest booted under
QEMU (./boot.sh), where systemd 252 is PID 1. Store paths are a stand-in
/nix/store in the guest holding the static binaries (.ci/static-build),
the generated TOML, the job scripts and the test's key files. Each node is
a network namespace with the VM test's address (a drop-in
`NetworkNamespacePath=` per unit: the only line added to a generated unit).
guest-test.sh then drives the handshake and asserts, with systemctl and
the journal, what the issue lists.

Usage: handshake.py [--lib NIXPKGS_LIB] [--bin STATIC_DIR] [--cache DIR] [--timeout S]
Exit code: the guest test's (0 when every assertion held).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import module_check as mc  # noqa: E402  (shared: store stand-in, TOML, systemd's command-line syntax)

REPO = mc.REPO
# The home-manager test's user (nix/tests/home.nix).
ALICE_UID = 1001


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(REPO, "..", "shared", "nixpkgs-lib", "lib"))
    host_triple = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    triple = next(l.split()[1] for l in host_triple.splitlines() if l.startswith("host:"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", triple, "release"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--timeout", default="1800")
    args = ap.parse_args()
    lib = os.path.realpath(args.lib)
    bins = os.path.realpath(args.bin)
    for b in ("locket", "locket-client"):
        info = subprocess.run(["file", "-L", os.path.join(bins, b)], capture_output=True, text=True).stdout
        if "statically linked" not in info and "static-pie linked" not in info:
            raise SystemExit(f"{bins}/{b} is not a static binary (run .ci/static-build first): {info}")

    started = time.time()
    # The guest runs Debian's systemd 252: the units are made for it.
    vm = mc.nix_eval("nix/tests/nixos/eval.nix", "test.json", lib, ["--arg", "testFile", "./nix/tests/vm.nix", *mc.host_systemd_overlay()])
    cases = mc.nix_eval("nix/tests/module-eval.nix", "cases", lib, mc.host_systemd_overlay())
    expect = json.loads(subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "nix/tests/expectations.nix"], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    nodes = vm["nodes"]
    server, client, intruder = nodes["server"], nodes["client"], nodes["intruder"]
    change = server["specialisations"]["registry-change"]
    genkey = cases["generatedKey"]

    payload = tempfile.mkdtemp(prefix="locket-guest-payload.")
    try:
        root = os.path.join(payload, "root")
        store = os.path.join(root, "nix", "store")
        os.makedirs(store)
        for node in (server, client, intruder, change, genkey):
            mc.populate_store(store, node, bins, copy_bins=True)
        units = os.path.join(root, "etc", "systemd", "system")
        os.makedirs(units)
        variants = os.path.join(payload, "variants")
        # The client node's units, each in the client's network namespace.
        client_units = []
        for name, text in sorted(client["units"].items()):
            if text:
                write(os.path.join(units, name), text)
                if name.endswith(".service"):
                    write(os.path.join(units, name + ".d", "netns.conf"), "[Service]\nNetworkNamespacePath=/run/netns/client\n")
                client_units.append(name)
                # NixOS's <unit>.requires/ links for requiredBy (what ties a
                # fetch unit to its consumer). WantedBy=multi-user.target is
                # left out: the test starts each unit itself, once the
                # network namespaces exist.
                for kind, targets in (("requires", client["links"].get(name, {}).get("requiredBy", [])),):
                    for target in targets:
                        link = os.path.join(units, f"{target}.{kind}", name)
                        os.makedirs(os.path.dirname(link), exist_ok=True)
                        os.symlink(f"../{name}", link)
        # The lingering user alice (#29): her home-manager configuration
        # (nix/tests/home.nix) as home-manager places it under ~/.config:
        # the TOML files as links into the store, the user units as files,
        # and the <target>.wants/.requires links. Her user manager runs in
        # the client's network namespace (a drop-in on the system's
        # user@<uid>.service: the only thing added).
        home = json.loads(mc.nix_eval("nix/tests/home-manager/eval.nix", "json", lib, [
            "--arg", "modules", f'[ (import ./nix/tests/home.nix {{ server = "{server["primaryIPAddress"]}"; }}) ]',
            *mc.host_systemd_overlay()]))
        if home["failedAssertions"] or home["warnings"]:
            raise SystemExit(f"nix/tests/home.nix: {home['failedAssertions']} {home['warnings']}")
        home_node = {"units": home["units"], "tmpfiles": {"rules": []}, "scripts": {},
                     "etc": {t: {"source": f["source"], "value": f["value"]} for t, f in home["files"].items() if f["value"] is not None}}
        mc.populate_store(store, home_node, bins, copy_bins=True)
        config_home = os.path.join(root, "home", "alice", ".config")
        for target, f in sorted(home["files"].items()):
            dest = os.path.join(config_home, target)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if f["value"] is not None:
                os.symlink(f["source"], dest)
            elif target.removeprefix("systemd/user/") in home["links"]:
                os.symlink(f"../{os.path.basename(target)}", dest)
            else:
                write(dest, f["text"])
        shutil.copy(os.path.join(REPO, "nix", "tests", "keys", "alice.key"), os.path.join(config_home, "locket", "client.key"))
        os.chmod(os.path.join(config_home, "locket", "client.key"), 0o600)
        write(os.path.join(units, f"user@{ALICE_UID}.service.d", "netns.conf"), "[Service]\nNetworkNamespacePath=/run/netns/client\n")
        # The client's `plan-change` specialisation, as a switch would see
        # it: its units that differ (or are gone: an empty file), and its
        # delivery plan.
        plan_change = client["specialisations"]["plan-change"]
        mc.populate_store(store, plan_change, bins, copy_bins=True)
        pc = os.path.join(variants, "plan-change")
        os.makedirs(pc)
        for name in sorted(set(client["units"]) | set(plan_change["units"])):
            old, new = client["units"].get(name) or "", plan_change["units"].get(name) or ""
            if old != new:
                write(os.path.join(pc, "units", name), new)
        os.symlink(plan_change["etc"]["locket/delivery.toml"]["source"], os.path.join(pc, "delivery.toml"))
        # The server's unit in two variants: the generated-key server (phase
        # 1, in the guest's own namespace) and the VM test's (phase 2).
        for variant, node, netns in (("genkey", genkey, None), ("vm", server, "server"), ("change", change, "server")):
            d = os.path.join(variants, variant)
            write(os.path.join(d, "locket.service"), node["units"]["locket.service"])
            write(os.path.join(d, "netns.conf"), f"[Service]\nNetworkNamespacePath=/run/netns/{netns}\n" if netns else "")
            os.symlink(node["etc"]["locket/server.toml"]["source"], os.path.join(d, "server.toml"))
        # The generated-key server's sealed set: the unit that makes its key
        # once, before the server (NixOS's locket.service.requires/ link).
        write(os.path.join(units, "locket-seal-key.service"), genkey["units"]["locket-seal-key.service"])
        for target in genkey["links"]["locket-seal-key.service"]["requiredBy"]:
            link = os.path.join(units, f"{target}.requires", "locket-seal-key.service")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("../locket-seal-key.service", link)
        # /etc as NixOS links it: the client's config; the operator's tools.
        etc_locket = os.path.join(root, "etc", "locket")
        os.makedirs(etc_locket)
        os.symlink(client["etc"]["locket/client.toml"]["source"], os.path.join(etc_locket, "client.toml"))
        os.symlink(client["etc"]["locket/delivery.toml"]["source"], os.path.join(etc_locket, "delivery.toml"))
        os.makedirs(os.path.join(root, "usr", "local", "bin"))
        pkg = next(p for p in mc.store_paths(server) if "-locket-" in p and p.split("-locket-")[1][:1].isdigit())
        for b in ("locket", "locket-client"):
            os.symlink(f"{pkg}/bin/{b}", os.path.join(root, "usr", "local", "bin", b))
        # tmpfiles: the nodes' own rules (not NixOS's generic ones).
        rules = [r for n in (server, client) for r in n["tmpfiles"]["rules"] if any(p in r for p in ("/etc/locket-test", "/var/lib/locket-client", "/run/locket"))]
        write(os.path.join(root, "etc", "tmpfiles.d", "locket-test.conf"), "\n".join(dict.fromkeys(rules)) + "\n")
        # The intruder's own /etc (its client.toml and its two keys).
        intr = os.path.join(payload, "intruder")
        os.makedirs(os.path.join(intr, "etc-locket"))
        os.makedirs(os.path.join(intr, "etc-intruder"))
        mc.to_toml(intruder["etc"]["locket/client.toml"]["value"], os.path.join(intr, "etc-locket", "client.toml"))
        for target, e in intruder["etc"].items():
            if target.startswith("intruder/"):
                dest = os.path.join(intr, "etc-intruder", target.split("/", 1)[1])
                shutil.copy(mc.source_file(e["source"], store), dest)
                os.chmod(dest, 0o600)
        # Users and groups the client node declares (NixOS creates them).
        users = [f"{u} {spec['group']}" for u, spec in sorted(client["users"].items()) if spec.get("isSystemUser") and spec.get("uid") is None]
        groups = sorted(g for g in client["groups"] if client["groups"][g].get("gid") is None)
        write(os.path.join(payload, "setup.sh"), SETUP.format(groups=" ".join(groups), users="\n".join(users), alice_uid=ALICE_UID), mode=0o755)
        # What the test needs to know, as shell variables.
        fetch = {c: mc.split_exec(mc.unit_values(client["units"][f"locket-fetch-{c}.service"], "ExecStart")[0], {})[1] for c in ("demo-consumer", "group-consumer")}
        env = {
            "SERVER_IP": server["primaryIPAddress"],
            "CLIENT_IP": client["primaryIPAddress"],
            "INTRUDER_IP": intruder["primaryIPAddress"],
            "EXPECT_WRONG_KEY": expect["wrongKey"],
            "EXPECT_WRONG_ADDRESS": expect["wrongAddress"],
            "CLIENT_UNITS": " ".join(client_units),
            "FETCH_TIMEOUT": mc.unit_values(client["units"]["locket-fetch-demo-consumer.service"], "TimeoutStartSec")[0].rstrip("s"),
            "FINGERPRINT": open(os.path.join(REPO, "nix/tests/keys/server.fingerprint")).read().strip(),
            "DEMO_FETCH": shlex.join(fetch["demo-consumer"]),
            "ALICE_UID": str(ALICE_UID),
        }
        write(os.path.join(payload, "env.sh"), "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        # systemd's own EnvironmentFile= reader on the values that try to
        # run something (tests/fixtures/hostile-values.json, shared with
        # tests/it/formats.rs): what a server serves them as, and what env -0
        # must print for them, sorted as `LC_ALL=C sort -z` sorts.
        with open(os.path.join(REPO, "tests", "fixtures", "hostile-values.json"), encoding="utf-8") as f:
            hostile = [v.replace("@MARKER@", "/tmp/locket-hostile-ran") for v in json.load(f)]
        named = {f"V{i}": v for i, v in enumerate(hostile)}
        os.makedirs(os.path.join(payload, "hostile"))
        with open(os.path.join(payload, "hostile", "values.json"), "w", encoding="utf-8") as f:
            json.dump(named, f, ensure_ascii=False)
        with open(os.path.join(payload, "hostile", "expected.env0"), "wb") as f:
            f.write(b"".join(sorted(f"{k}={v}".encode() + b"\0" for k, v in named.items())))
        shutil.copy(os.path.join(HERE, "guest-test.sh"), os.path.join(payload, "test.sh"))
        shutil.copy(os.path.join(HERE, "faults.sh"), os.path.join(payload, "faults.sh"))
        os.chmod(os.path.join(payload, "test.sh"), 0o755)
        print(f"guest: payload built in {time.time() - started:.0f} s ({du(payload)})", flush=True)

        cmd = [os.path.join(HERE, "boot.sh"), "--payload", payload, "--timeout", args.timeout]
        if args.cache:
            cmd += ["--cache", args.cache]
        rc = subprocess.run(cmd).returncode
        print(f"guest: the guest-machine test took {time.time() - started:.0f} s, exit {rc}")
        sys.exit(rc)
    finally:
        shutil.rmtree(payload, ignore_errors=True)


SETUP = """#!/bin/sh
# Runs on the host with the guest's root as $1: installs the payload's root
# tree, and the users and groups the client node declares.
set -eu
cp -a "$(dirname "$0")/root/." "$1/"
for g in {groups}; do
  chroot "$1" getent group "$g" >/dev/null || chroot "$1" groupadd --system "$g"
done
echo '{users}' | while read -r u g; do
  [ -z "$u" ] || chroot "$1" getent passwd "$u" >/dev/null || chroot "$1" useradd --system --gid "$g" --home-dir /var/empty --shell /usr/sbin/nologin "$u"
done
# The home-manager test's user: an ordinary user, not lingering yet.
chroot "$1" getent passwd alice >/dev/null || chroot "$1" useradd --uid {alice_uid} --user-group --home-dir /home/alice --shell /bin/sh alice
chown -R {alice_uid}:{alice_uid} "$1/home/alice"
chmod 0700 "$1/home/alice"
exit 0
"""


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def du(path):
    return subprocess.run(["du", "-sh", path], capture_output=True, text=True).stdout.split()[0]


if __name__ == "__main__":
    main()
