#!/usr/bin/env python3
"""What the NixOS module generates, run for real on a machine without Nix builds.

The module and the VM test's nodes are evaluated with nixpkgs' real
lib.evalModules (nix/tests/nixos/eval.nix, stubs of the NixOS options they
set), and each unit is rendered to the unit file NixOS would write. Then,
for each host (the VM test's server, client and intruder, the server after
the registry-change specialisation, and a server and client on one host):

  * the unit files pass `systemd-analyze verify` (Debian's systemd);
  * the delivery plan (/etc/locket/delivery.toml) is in place beside
    client.toml and names exactly the consumers that have a fetch unit;
  * every Exec*= line is split the way systemd splits it (quotes, %%, $$,
    $MAINPID) and every locket command line gets through the real binary's
    argument parsing (the watcher, locket-watch.service, too: it keeps
    running, which counts as parsed);
  * the generated server.toml passes `locket check`, with the credentials
    placed where LoadCredential= puts them and the unit's own PATH (so
    `op` must be on it when a onepassword-cli source is configured);
  * with the VM test's addresses on loopback in a network namespace, the
    server started from its ExecStart serves every fetch unit's command
    (`deliver --plan … --consumer …`: files, the template, the credential
    consumer's files), logs each refusal the VM test waits for
    (expectations.nix), reloads on its ExecReload (same process) for the
    registry change; with the server gone, a fetch without a cache fails
    within its bound, naming the server, and one with cacheMaxAge delivers
    from its boot cache (after its ExecStartPre, `systemd-creds setup`).

Each host sees its own /nix/store (the stub store paths, backed by the
real binaries built by cargo), /etc/locket, /run/credentials, the
watcher's /run/locket-watch, /var/lib/systemd (where `systemd-creds`
keeps the host key of the boot cache), ... through a private mount
namespace: nothing on this machine is changed.

Usage: module_check.py [--lib NIXPKGS_LIB] [--bin DIR]   (root: namespaces)
Prints one line per check and "N passed, M failed".
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
STORE = "/nix/store/"
STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[^\s\"'/:]+")
# Mount points each host gets privately (created on this machine only if
# missing, and removed again).
PRIVATE = [
    "/nix/store",
    "/etc/locket",
    "/etc/locket-test",
    "/etc/intruder",
    "/etc/ssl/locket",
    "/run/credentials",
    "/run/secrets",
    "/run/locket",
    "/run/locket-watch",
    "/run/locket-server",
    "/var/lib/locket",
    "/var/lib/locket-client",
    # systemd-creds' host key (credential.secret), for the boot cache.
    "/var/lib/systemd",
]
# The units that deliver: one fetch unit per consumer, and one watcher per
# host, which is no fetch unit (it runs on, for every consumer).
FETCH_PREFIX = "locket-fetch-"
WATCHER = "locket-watch.service"
PLAN = "/etc/locket/delivery.toml"


def fetch_units(node):
    """consumer name -> its fetch unit's name (never the watcher)."""
    return {
        u[len(FETCH_PREFIX) : -len(".service")]: u
        for u, text in sorted(node["units"].items())
        if text and u.startswith(FETCH_PREFIX) and u.endswith(".service") and u != WATCHER
    }

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAILED: {name}" + (f"\n    {detail}" if detail else ""))
    return ok


def host_systemd_overlay():
    """`--arg overlays` that gives the stub pkgs.systemd this machine's
    systemd version: units that this systemd verifies or runs are generated
    for it, as NixOS generates them for the systemd it ships (the module
    picks Type=notify-reload from 253 on)."""
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, check=True).stdout
    version = re.match(r"systemd (\d+)", out).group(1)
    return ["--arg", "overlays", f'[ (final: prev: {{ systemd = prev.systemd // {{ version = "{version}"; }}; }}) ]']


def nix_eval(expr_file, attr, lib, extra=()):
    cmd = ["nix-instantiate", "--eval", "--strict", "--json", expr_file, "-A", attr, "--arg", "libPath", lib, *extra]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"evaluation failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def to_toml(value, path):
    """pkgs.formats.toml's conversion (remarshal json2toml), as in nixpkgs."""
    src = path + ".json"
    with open(src, "w") as f:
        json.dump(value, f)
    subprocess.run([sys.executable, "-m", "remarshal", "--if", "json", "--of", "toml", src, path], check=True)
    os.unlink(src)


# --- systemd's command-line syntax (systemd.service(5), "Command lines") ---

def split_exec(value, env):
    """Splits one Exec*= value into (prefixes, argv) as systemd does."""
    m = re.match(r"^([-@:+!]*)(.*)$", value, re.S)
    prefixes, rest = m.group(1), m.group(2)
    words, i = [], 0
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f", "r": "\r", "v": "\v", "s": " "}
    while i < len(rest):
        while i < len(rest) and rest[i] in " \t":
            i += 1
        if i >= len(rest):
            break
        word, quoted = "", None
        if rest[i] in "\"'":
            quoted = rest[i]
            i += 1
        while i < len(rest):
            c = rest[i]
            if quoted and c == quoted:
                i += 1
                break
            if not quoted and c in " \t":
                break
            if c == "\\" and i + 1 < len(rest):
                word += escapes.get(rest[i + 1], rest[i + 1])
                i += 2
                continue
            word += c
            i += 1
        words.append(word)

    def expand(w):
        # Specifiers: only %% occurs in what the module writes; any other is an error here.
        w2 = ""
        j = 0
        while j < len(w):
            if w[j] == "%":
                if w[j + 1 : j + 2] == "%":
                    w2 += "%"
                    j += 2
                    continue
                raise ValueError(f"unexpected specifier in {w!r}")
            w2 += w[j]
            j += 1
        # $$ is a literal $; $NAME and ${NAME} are environment variables.
        out, j = "", 0
        while j < len(w2):
            if w2[j] == "$":
                if w2[j + 1 : j + 2] == "$":
                    out += "$"
                    j += 2
                    continue
                mm = re.match(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)", w2[j + 1 :])
                if mm:
                    out += env.get(mm.group(1) or mm.group(2), "")
                    j += 1 + mm.end()
                    continue
            out += w2[j]
            j += 1
        return out

    return prefixes, [expand(w) for w in words]


def unit_values(text, key):
    return [line[len(key) + 1 :] for line in text.splitlines() if line.startswith(key + "=")]


def unit_env(text):
    """Environment= as systemd sets it, and $RUNTIME_DIRECTORY for a
    RuntimeDirectory= (the host has the folder)."""
    env = {}
    for v in unit_values(text, "Environment"):
        _, words = split_exec(v, {})
        for w in words:
            k, _, val = w.partition("=")
            env[k] = val
    dirs = [d for v in unit_values(text, "RuntimeDirectory") for d in v.split()]
    if dirs:
        env["RUNTIME_DIRECTORY"] = ":".join(f"/run/{d}" for d in dirs)
    return env


def etc_value(entry):
    """The value of a generated /etc file: its pkgs.formats value, or for a
    checked config (runCommand over such a file) its input's."""
    if entry.get("value") is not None:
        return entry["value"]
    build = entry.get("build") or {}
    values = [i["value"] for i in build.get("inputs", {}).values()]
    if len(values) != 1:
        raise SystemExit(f"{entry.get('target')}: no generated value to write ({entry})")
    return values[0]


def build_etc(store, node):
    """Builds the /etc files a node makes with runCommand (the checked
    server.toml) as Nix would: the inputs pkgs.formats made written as TOML
    into `store`, then the build command run by sh with $out and the inputs
    set, the real programs it names reached through `store` bound at
    /nix/store. A failing check fails here, with its output, as
    `nixos-rebuild build` would."""
    for target, e in sorted(node["etc"].items()):
        build = e.get("build")
        if not build or not e.get("source"):
            continue
        out = os.path.join(store, e["source"][len(STORE) :])
        if os.path.lexists(out):
            continue
        env = {"PATH": "/usr/bin:/bin"}
        for name, i in build["inputs"].items():
            dest = os.path.join(store, i["path"][len(STORE) :])
            if not os.path.lexists(dest):
                to_toml(i["value"], dest)
            env[name] = i["path"]
        env["out"] = e["source"]
        r = build_command(store, build["command"], env)
        if r.returncode != 0:
            raise SystemExit(f"building /etc/{target} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def build_command(store, command, env):
    """`command` run by sh with `env`, `store` bound at /nix/store (the
    mount point made for it, and removed after, when this machine has no
    /nix)."""
    made = [p for p in ("/nix", "/nix/store") if not os.path.exists(p)]
    os.makedirs("/nix/store", exist_ok=True)
    try:
        wrapper = ["unshare", "--mount", "--fork", "sh", "-c", 'mount --bind "$0" /nix/store && exec "$@"', store]
        return subprocess.run(wrapper + ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + ["sh", "-ec", command], capture_output=True, text=True, timeout=120)
    finally:
        for p in reversed(made):
            os.rmdir(p)


def store_paths(node):
    """Every store path a node's units, /etc, tmpfiles and scripts name
    (and the build commands of its /etc files)."""
    texts = [t for t in node["units"].values() if t]
    texts += [e["source"] for e in node["etc"].values() if e.get("source")]
    texts += [e["build"]["command"] for e in node["etc"].values() if e.get("build")]
    texts += node["tmpfiles"]["rules"]
    for s in node.get("scripts", {}).values():
        for part in s.values():
            texts += [part["path"], part["text"]]
    paths = set()
    for t in texts:
        paths.update(STORE_PATH.findall(t))
    return paths


def populate_store(store, node, bins, copy_bins=False):
    """Fills `store` (a stand-in for /nix/store) with what `node` names:
    the locket package from `bins` (symlinked, or copied for a guest), the
    generated files (TOML as pkgs.formats.toml writes it), the job
    scripts, the test's key and fixture files, `op` as a stand-in, and the
    NixOS packages whose programs Debian has (their bin is /usr/bin)."""
    scripts = {part["path"]: part["text"] for s in node.get("scripts", {}).values() for part in s.values()}
    etc_values = {e["source"]: e for e in node["etc"].values() if e.get("source")}
    for path, text in scripts.items():  # <store path>/bin/<name>
        dest = os.path.join(store, path[len(STORE) :])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(text)
        os.chmod(dest, 0o755)
    built = {e["source"] for e in node["etc"].values() if e.get("build")}
    for p in sorted(store_paths(node)):
        base = p[len(STORE) :]
        dest = os.path.join(store, base)
        name = base.split("-", 1)[1]
        if os.path.lexists(dest) or p in built:
            continue
        if p in etc_values and "value" in etc_values[p]:
            to_toml(etc_values[p]["value"], dest)
        elif name.startswith("locket-") and name[7:8].isdigit():
            os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
            for b in ("locket", "locket-client"):
                if copy_bins:
                    shutil.copy(os.path.join(bins, b), os.path.join(dest, "bin", b))
                else:
                    os.symlink(os.path.join(bins, b), os.path.join(dest, "bin", b))
        elif re.match(r"(coreutils|findutils|gnugrep|gnused|bash|bash-interactive|systemd)-[0-9]", name):
            os.makedirs(dest, exist_ok=True)
            os.symlink("/usr/bin", os.path.join(dest, "bin"))
            os.symlink("/usr/sbin", os.path.join(dest, "sbin"))
        elif name.startswith("1password-cli-"):
            os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
            op = os.path.join(dest, "bin", "op")
            with open(op, "w") as f:
                f.write(OP_STAND_IN)
            os.chmod(op, 0o755)
        else:
            repo_file = find_fixture(name)
            if repo_file:
                shutil.copy(repo_file, dest)
            else:
                os.makedirs(dest, exist_ok=True)
    build_etc(store, node)


# --- a host: its own store, /etc/locket, credentials, users ---

class Host:
    def __init__(self, name, node, work, bins, netns=None):
        self.name, self.node, self.netns = name, node, netns
        self.root = os.path.join(work, name)
        self.dirs = {p: os.path.join(self.root, p.strip("/").replace("/", "_")) for p in PRIVATE}
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dirs["/run/locket"], 0o755)
        self.bins = bins
        self.build_store()
        self.write_etc()
        self.apply_tmpfiles()
        self.write_passwd()

    def build_store(self):
        populate_store(self.dirs["/nix/store"], self.node, self.bins)

    def write_etc(self):
        # Every generated file under /etc/locket, as pkgs.formats.toml writes
        # it: server.toml, client.toml and the delivery plan (delivery.toml),
        # all seen at their /etc paths through the private /etc/locket.
        for target, e in self.node["etc"].items():
            if not target.startswith("locket/"):
                continue
            dest = os.path.join(self.dirs["/etc/locket"], target[len("locket/") :])
            to_toml(etc_value(e), dest)

    def host_path(self, path):
        for p in sorted(PRIVATE, key=len, reverse=True):
            if path == p or path.startswith(p + "/"):
                return self.dirs[p] + path[len(p) :]
        raise ValueError(f"{path} is outside this host's private folders")

    def apply_tmpfiles(self):
        for rule in self.node["tmpfiles"]["rules"]:
            f = rule.split()
            if f[0] == "d" and any(f[1] == p or f[1].startswith(p + "/") for p in PRIVATE):
                os.makedirs(self.host_path(f[1]), exist_ok=True)
                os.chmod(self.host_path(f[1]), int(f[2], 8))
            elif f[0] == "C":
                src = os.path.join(self.dirs["/nix/store"], f[6][len(STORE) :])
                shutil.copy(src, self.host_path(f[1]))
                os.chmod(self.host_path(f[1]), int(f[2], 8))
        for target, e in self.node["etc"].items():
            if target.startswith(("intruder/",)) and e.get("source"):
                dest = self.host_path("/etc/" + target)
                shutil.copy(source_file(e["source"], self.dirs["/nix/store"]), dest)
                os.chmod(dest, int(e["mode"], 8) if e["mode"] != "symlink" else 0o644)

    def write_passwd(self):
        # This machine's users plus the node's, as NixOS would create them.
        passwd = open("/etc/passwd").read()
        group = open("/etc/group").read()
        used_uid = {int(l.split(":")[2]) for l in passwd.splitlines() if l}
        used_gid = {int(l.split(":")[2]) for l in group.splitlines() if l}
        known_g = {l.split(":")[0] for l in group.splitlines() if l}
        known_u = {l.split(":")[0] for l in passwd.splitlines() if l}
        self.gids = {}
        for g, spec in sorted(self.node["groups"].items()):
            if g in known_g:
                continue
            gid = spec.get("gid") or next(i for i in range(900, 1000) if i not in used_gid)
            used_gid.add(gid)
            self.gids[g] = gid
            group += f"{g}:x:{gid}:\n"
        for u, spec in sorted(self.node["users"].items()):
            if u in known_u:
                continue
            uid = spec.get("uid") or next(i for i in range(800, 900) if i not in used_uid)
            used_uid.add(uid)
            gid = self.gids.get(spec["group"]) or int(
                next(l.split(":")[2] for l in group.splitlines() if l.startswith(spec["group"] + ":"))
            )
            passwd += f"{u}:x:{uid}:{gid}::/var/empty:/usr/sbin/nologin\n"
        self.passwd = os.path.join(self.root, "passwd")
        self.group = os.path.join(self.root, "group")
        open(self.passwd, "w").write(passwd)
        open(self.group, "w").write(group)

    def place_credentials(self, unit):
        text = self.node["units"][unit]
        cred_dir = self.host_path(f"/run/credentials/{unit}")
        os.makedirs(cred_dir, exist_ok=True)
        for v in unit_values(text, "LoadCredential"):
            cname, _, src = v.partition(":")
            dest = os.path.join(cred_dir, cname)
            shutil.copy(self.host_path(src), dest)
            os.chmod(dest, 0o400)

    def command(self, argv, env=None):
        """argv, run in this host's mount namespace (and network namespace)."""
        mounts = "".join(
            f'mkdir -p {p} && mount --bind {d} {p} && ' for p, d in self.dirs.items()
        )
        mounts += f"mount --bind {self.passwd} /etc/passwd && mount --bind {self.group} /etc/group && "
        wrapper = ["unshare", "--mount", "--fork", "--kill-child", "sh", "-c", mounts + 'exec "$@"', "sh"]
        if self.netns:
            wrapper = ["ip", "netns", "exec", self.netns] + wrapper
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        full_env.update(env or {})
        return wrapper + ["env", "-i"] + [f"{k}={v}" for k, v in full_env.items()] + argv


OP_STAND_IN = """#!/bin/sh
# A stand-in for 1Password's `op` (the JSON it documents), for module_check.py.
[ -n "$OP_SERVICE_ACCOUNT_TOKEN" ] || { echo "no token" >&2; exit 1; }
[ -n "$OP_CONFIG_DIR" ] || { echo "op: no writable config folder (OP_CONFIG_DIR)" >&2; exit 1; }
case "$1 $2" in
  "item list") echo '[{"id":"k1","title":"payments","vault":{"id":"v","name":"prod"}}]' ;;
  "item get") echo '{"id":"k1","title":"payments","fields":[{"id":"a","label":"api_key","value":"pk_live_1"}]}' ;;
  *) echo "unexpected $*" >&2; exit 2 ;;
esac
"""


def source_file(source, store):
    """Where an environment.etc `source` is here: a store path in the
    stand-in store, or a file of the repository (a path literal, which a
    real evaluation would have copied into the store)."""
    if source.startswith(STORE):
        return os.path.join(store, source[len(STORE) :])
    return source


def find_fixture(name):
    for d in ("nix/tests/keys", "nix/tests/fixtures"):
        p = os.path.join(REPO, d, name)
        if os.path.isfile(p):
            return p
    return None


def clap_usage_error(stderr):
    return "Usage:" in stderr and ("error: " in stderr)


def run(cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# The highest `systemd-analyze security` exposure a generated unit may have.
MAX_EXPOSURE = 3.0


def verify_units(host):
    udir = os.path.join(host.root, "units")
    os.makedirs(udir, exist_ok=True)
    files = []
    for unit, text in sorted(host.node["units"].items()):
        if text is None or not unit.endswith((".service", ".socket")):
            continue
        path = os.path.join(udir, unit)
        with open(path, "w") as f:
            f.write(text)
        files.append(path)
    if not files:
        print(f"({host.name}: no units to verify)")
        return
    r = run(host.command(["systemd-analyze", "verify", "--man=no", *files]))
    # Units the consumers reference exist on the node, not here.
    problems = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and "not found" not in l.lower()]
    check(f"{host.name}: systemd-analyze verify accepts {len(files)} unit(s)", r.returncode == 0 and not problems, "\n    ".join(problems))
    # Every unit the module makes, as hardened as systemd can tell offline:
    # at most MAX_EXPOSURE (the server scores 1.5, the fetch units and the
    # watcher, which need CAP_CHOWN and the network, 2.4-2.5).
    for path in files:
        unit = os.path.basename(path)
        if not unit.startswith("locket") or not unit.endswith(".service"):
            continue
        r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", path])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        score = float(m.group(1)) if m else None
        check(f"{host.name}: {unit} scores {score} <= {MAX_EXPOSURE} in systemd-analyze security --offline", score is not None and score <= MAX_EXPOSURE, (r.stdout + r.stderr)[-400:])


def delivery_plan(host):
    """The plan is at /etc/locket/delivery.toml beside client.toml, and
    names exactly the consumers that have a fetch unit, and those served
    over the credential socket (which have none); every delivering unit
    reads it from there."""
    fetches = fetch_units(host.node)
    if not fetches and WATCHER not in host.node["units"]:
        return
    entry = host.node["etc"].get("locket/delivery.toml")
    path = host.host_path(PLAN)
    planned = (entry or {}).get("value", {}).get("consumers", {})
    consumers = sorted(c for c, v in planned.items() if v.get("delivery", "files") == "files")
    sockets = sorted(c for c, v in planned.items() if v.get("delivery") == "socket")
    check(
        f"{host.name}: {PLAN} is in place and names the consumers of the fetch units",
        entry is not None and os.path.isfile(path) and consumers == sorted(fetches),
        f"plan consumers {consumers}, fetch units {sorted(fetches)}",
    )
    for c in sockets:
        unit = planned[c]["unit"]
        text = host.node["units"].get(unit) or ""
        creds = sorted(unit_values(text, "LoadCredential"))
        want = sorted(f"{i}:/run/locket/credentials.sock" for i in [s.replace("/", "_") for s in planned[c]["secrets"]] + sorted(planned[c].get("templates", {})))
        check(
            f"{host.name}: socket consumer {c} has no fetch unit, and {unit} asks the credential socket for each of its secrets and templates",
            f"{FETCH_PREFIX}{c}.service" not in host.node["units"] and creds == want and "locket-watch.socket" in host.node["units"],
            f"LoadCredential= {creds}, want {want}",
        )
    for unit in list(fetches.values()) + ([WATCHER] if host.node["units"].get(WATCHER) else []):
        _, argv = split_exec(unit_values(host.node["units"][unit], "ExecStart")[0], {})
        check(f"{host.name}: {unit} delivers from {PLAN}", argv[argv.index("deliver") + 1 :][:2] == ["--plan", PLAN] if "deliver" in argv else False, " ".join(argv))


def exec_lines(host):
    for unit, text in sorted(host.node["units"].items()):
        if not text:
            continue
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"):
            for value in unit_values(text, key):
                try:
                    _, argv = split_exec(value, {"MAINPID": "1"})
                except ValueError as e:
                    check(f"{host.name}: {unit} {key} splits as systemd does", False, str(e))
                    continue
                exe = argv[0]
                r = run(host.command(["test", "-x", exe]))
                check(f"{host.name}: {unit} {key} runs an executable ({os.path.basename(exe)})", r.returncode == 0, value)
                if os.path.basename(exe) in ("locket", "locket-client"):
                    # The real binary parses the line; a clap usage error is
                    # the only failure this check is about (no network here,
                    # so a fetch fails later, with its own error).
                    try:
                        # With the environment systemd gives the unit.
                        r = run(host.command(argv, env=unit_env(text)), timeout=3)
                        ok, err = not clap_usage_error(r.stderr), r.stderr
                    except subprocess.TimeoutExpired:
                        ok, err = True, ""  # started and kept running: parsed
                    check(f"{host.name}: {unit} {key}: {' '.join(argv[1:4])}... parses", ok, err.strip()[:400])


def locket_check(host, expect_clients):
    unit = "locket.service"
    host.place_credentials(unit)
    env = unit_env(host.node["units"][unit])
    r = run(host.command([f"{host.bins}/locket", "check", "--config", "/etc/locket/server.toml"], env=env))
    ok = r.returncode == 0 and f"clients: {expect_clients}" in r.stdout and "OK" in r.stdout
    check(f"{host.name}: locket check accepts the generated server.toml (with the unit's PATH and credentials)", ok, (r.stdout + r.stderr).strip()[:600])


class Server:
    def __init__(self, host, env):
        _, argv = split_exec(unit_values(host.node["units"]["locket.service"], "ExecStart")[0], {})
        self.host = host
        self.log_path = os.path.join(host.root, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(host.command(argv, env=env), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while "listening on" not in self.text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{host.name}: the server did not start:\n{self.text()}")
            time.sleep(0.1)

    def text(self):
        return open(self.log_path).read()

    def pid(self):
        # The server process inside the wrappers: the newest `locket serve` of our session.
        out = run(["pgrep", "-n", "-s", str(self.proc.pid), "-f", "bin/locket serve"]).stdout.split()
        return int(out[-1]) if out else None

    def wait_for(self, needle, count=1, timeout=30):
        deadline = time.time() + timeout
        while self.text().count(needle) < count:
            if time.time() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)


def handshake(hosts, registry_change, expect):
    server_h, client_h, intruder_h = hosts["server"], hosts["client"], hosts["intruder"]
    server_h.place_credentials("locket.service")
    env = unit_env(server_h.node["units"]["locket.service"])
    server = Server(server_h, env)
    try:
        addr = {n: h.node["primaryIPAddress"] for n, h in hosts.items()}
        client_cmd = lambda h, *args, bind: h.command(
            [f"{h.bins}/locket-client", "--config", "/etc/locket/client.toml", *args], env={"LOCKET_BIND": addr[bind]}
        )
        # The fetch units' own command lines (each consumer's, never the
        # watcher's), from the client's address, after their ExecStartPre
        # (`systemd-creds setup` for a consumer with a boot cache), as
        # systemd runs them.
        for consumer, unit in fetch_units(client_h.node).items():
            r = run_unit_start(client_h, unit, addr["client"])
            check(f"handshake: {unit}'s ExecStart delivers", r.returncode == 0, r.stderr.strip())
        st = lambda p: run(client_h.command(["stat", "-c", "%a %U %G", p])).stdout.strip()
        cat = lambda p: run(client_h.command(["cat", p])).stdout
        check("handshake: demo-consumer's files are 0400 demo:demo", st("/run/locket/demo-consumer/DB_PASSWORD") == "400 demo demo", st("/run/locket/demo-consumer/DB_PASSWORD"))
        check("handshake: group-consumer's folder is 0750 root:readers, its file 0440", (st("/run/locket/group-consumer"), st("/run/locket/group-consumer/API_TOKEN")) == ("750 root readers", "440 root readers"), f"{st('/run/locket/group-consumer')} / {st('/run/locket/group-consumer/API_TOKEN')}")
        check("handshake: demo-consumer's template app.ini is rendered, 0400 demo:demo", cat("/run/locket/demo-consumer/app.ini") == "[db]\npassword = vm-db-password\n" and st("/run/locket/demo-consumer/app.ini") == "400 demo demo", repr(cat("/run/locket/demo-consumer/app.ini")) + " " + st("/run/locket/demo-consumer/app.ini"))
        # cred-consumer's files are what its unit's LoadCredential= names.
        creds = [v.split(":", 1)[1] for v in unit_values(client_h.node["units"]["cred-consumer.service"], "LoadCredential")]
        check("handshake: the files cred-consumer's LoadCredential= names are delivered, root-only", creds == ["/run/locket/cred-consumer/API_TOKEN"] and cat(creds[0]) == "vm-api-token" and st(creds[0]) == "400 root root", f"{creds} {st(creds[0]) if creds else ''}")

        # The refusals the VM test waits for, in its order.
        r = run(client_cmd(client_h, "--key", "/var/lib/locket-client/other.key", "get", "API_TOKEN", bind="client"))
        check("handshake: a wrong key from the client's address is denied (3)", r.returncode == 3, r.stderr)
        check(f"handshake: the server logs /{expect['wrongKey']}/ for it", bool(re.search(expect["wrongKey"], server.text())), server.text()[-800:])
        r = run(client_cmd(intruder_h, "--key", "/etc/intruder/stolen.key", "get", "API_TOKEN", bind="intruder"))
        check("handshake: the right key from the intruder's address is denied (3)", r.returncode == 3, r.stderr)
        check(f"handshake: the server logs /{expect['wrongAddress']}/ for it", bool(re.search(expect["wrongAddress"], server.text())), server.text()[-800:])
        check("handshake: no value in the server log", "vm-db-password" not in server.text() and "vm-api-token" not in server.text())

        # The registry change: new config in place, ExecReload, same process.
        pid = server.pid()
        to_toml(etc_value(registry_change["etc"]["locket/server.toml"]), os.path.join(server_h.dirs["/etc/locket"], "server.toml"))
        _, reload_argv = split_exec(unit_values(server_h.node["units"]["locket.service"], "ExecReload")[0], {"MAINPID": str(pid)})
        r = run(server_h.command(reload_argv, env=env))
        # `locket reload --wait` returns once the reload is done: its log
        # line is already there.
        check("handshake: ExecReload (locket reload --wait) applies the registry change before it returns", r.returncode == 0 and "config reloaded" in server.text(), r.stdout + r.stderr + server.text()[-500:])
        check("handshake: same process after the reload", server.pid() == pid)
        r = run(client_cmd(intruder_h, "--name", "intruder", "get", "API_TOKEN", bind="intruder"))
        check("handshake: the new client is served after the reload", r.stdout == "vm-api-token\n", r.stderr)
        # A config the server refuses: ExecReload fails with the reason, the
        # server keeps serving the config it had, in the same process.
        conf = os.path.join(server_h.dirs["/etc/locket"], "server.toml")
        good = open(conf).read()
        with open(conf, "w") as f:
            f.write('listen = "not an address"\n' + good)
        r = run(server_h.command(reload_argv, env=env))
        check("handshake: ExecReload fails (1) for a config the server refuses, saying why", r.returncode == 1 and "refused the config and keeps serving the previous one" in r.stderr, f"{r.returncode}: {r.stderr}")
        check("handshake: and the server keeps serving, same process", server.pid() == pid and run(client_cmd(intruder_h, "--name", "intruder", "get", "API_TOKEN", bind="intruder")).returncode == 0)
        with open(conf, "w") as f:
            f.write(good)
    finally:
        server.stop()

    # Server gone: group-consumer (no cache) restarted in the outage starts
    # on the files it was running with; after a boot (/run empty) its fetch
    # gives up within its bound, naming the server.
    unit = "locket-fetch-group-consumer.service"
    text = client_h.node["units"][unit]
    bound = int(unit_values(text, "TimeoutStartSec")[0].rstrip("s"))
    r = run_unit_start(client_h, unit, addr["client"], timeout=bound + 30)
    got = run(client_h.command(["cat", "/run/locket/group-consumer/API_TOKEN"])).stdout
    check("outage: group-consumer's fetch keeps the files it delivered (a restart in an outage starts on them)", r.returncode == 0 and "kept the files already in /run/locket/group-consumer" in r.stderr and got == "vm-api-token", r.stderr.strip()[-600:])
    shutil.rmtree(client_h.host_path("/run/locket/group-consumer"))
    started = time.time()
    r = run_unit_start(client_h, unit, addr["client"], timeout=bound + 30)
    took = time.time() - started
    url = f"http://{addr['server']}:7410"
    lines = r.stderr.strip().splitlines()
    check(f"bounded fetch: fails in {took:.0f} s (TimeoutStartSec={bound}s) with one line naming {url} and how long it tried", r.returncode != 0 and took < bound and len(lines) == 1 and url in lines[0] and " times over " in lines[0], r.stderr)

    # Server gone, after a boot (/run empty): demo-consumer (cacheMaxAge)
    # starts from its boot cache.
    unit = "locket-fetch-demo-consumer.service"
    text = client_h.node["units"][unit]
    bound = int(unit_values(text, "TimeoutStartSec")[0].rstrip("s"))
    shutil.rmtree(client_h.host_path("/run/locket/demo-consumer"))
    gone = not os.path.exists(client_h.host_path("/run/locket/demo-consumer/DB_PASSWORD"))
    r = run_unit_start(client_h, unit, addr["client"], timeout=bound + 30)
    got = run(client_h.command(["cat", "/run/locket/demo-consumer/DB_PASSWORD"])).stdout
    check("boot cache: with the server gone, demo-consumer's fetch (cacheMaxAge) delivers the cached values", gone and r.returncode == 0 and got == "vm-db-password", r.stderr.strip()[-600:])
    cache = client_h.host_path("/var/lib/locket-client/cache")
    mode = oct(os.stat(cache).st_mode & 0o777) if os.path.isdir(cache) else "missing"
    plain = [f for d, _, fs in os.walk(cache) for f in fs if b"vm-db-password" in open(os.path.join(d, f), "rb").read()]
    check("boot cache: its folder is 0700, and no value is in it in the clear", mode == "0o700" and not plain, f"{cache}: {mode}, clear values in {plain}")


def run_unit_start(host, unit, bind, timeout=60):
    """A unit's ExecStartPre lines, then its ExecStart, in the host's
    namespaces; the result of the first that fails, else of ExecStart."""
    text = host.node["units"][unit]
    env = {"LOCKET_BIND": bind}
    for value in unit_values(text, "ExecStartPre"):
        r = run(host.command(split_exec(value, {})[1], env=env), timeout=timeout)
        if r.returncode != 0:
            return r
    _, argv = split_exec(unit_values(text, "ExecStart")[0], {})
    return run(host.command(argv, env=env), timeout=timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(REPO, "..", "shared", "nixpkgs-lib", "lib"))
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "debug"))
    args = ap.parse_args()
    lib = os.path.realpath(args.lib)
    bins = os.path.realpath(args.bin)
    if os.geteuid() != 0:
        raise SystemExit("module_check.py needs root (mount and network namespaces)")
    vm = nix_eval("nix/tests/nixos/eval.nix", "test.json", lib, ["--arg", "testFile", "./nix/tests/vm.nix", *host_systemd_overlay()])
    cases = nix_eval("nix/tests/module-eval.nix", "cases", lib, host_systemd_overlay())
    expect = json.loads(run(["nix-instantiate", "--eval", "--strict", "--json", "nix/tests/expectations.nix"], cwd=REPO).stdout)
    created = [p for p in PRIVATE if not os.path.exists(p)]
    netns = f"locket-check-{os.getpid()}"
    work = tempfile.mkdtemp(prefix="locket-module-check.")
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        for node in vm["nodes"].values():
            subprocess.run(["ip", "netns", "exec", netns, "ip", "addr", "add", node["primaryIPAddress"] + "/32", "dev", "lo"], check=True)
        hosts = {n: Host(n, node, work, bins, netns) for n, node in vm["nodes"].items()}
        change = vm["nodes"]["server"]["specialisations"]["registry-change"]
        change_host = Host("server-registry-change", dict(change, primaryIPAddress=vm["nodes"]["server"]["primaryIPAddress"]), work, bins, netns)
        same = Host("same-host", cases["sameHost"], work, bins, netns)
        secrets = same.dirs["/run/secrets"]
        for name, text in {
            "app.env": "DB_PASSWORD=same-host-db\n",
            "op-token": "ops_test_token\n",
            "extra.json": '{"REPORTS_TOKEN": "from-the-command-source"}\n',
        }.items():
            with open(os.path.join(secrets, name), "w") as f:
                f.write(text)
        for name in ("tls.key", "v1.pem"):
            shutil.copy(os.path.join(REPO, "nix/tests/keys/server-key.pem"), os.path.join(secrets, name))
        for h in list(hosts.values()) + [change_host, same]:
            verify_units(h)
            delivery_plan(h)
            exec_lines(h)
        # The build-time check: the VM server's server.toml was built by
        # `locket check --offline` (Host() builds it); a bad settings value
        # fails that build, naming the key.
        built = hosts["server"].node["etc"]["locket/server.toml"]
        check("build-time check: the VM server's server.toml is built through `locket check --offline`", built.get("build") is not None and "check --offline" in built["build"]["command"] and os.path.islink(os.path.join(hosts["server"].dirs["/nix/store"], built["source"][len(STORE):])))
        bad_store = os.path.join(work, "bad-settings-store")
        os.makedirs(bad_store)
        try:
            populate_store(bad_store, cases["badSettings"], bins)
            check("build-time check: a bad settings value fails the build of server.toml", False, "it built")
        except SystemExit as e:
            check("build-time check: a bad settings value fails the build of server.toml, naming the key", "no_such_setting" in str(e) and "unknown" in str(e), str(e)[-600:])
        locket_check(hosts["server"], 2)  # app, and alice (the guest's home-manager user)
        locket_check(change_host, 3)
        locket_check(same, 1)
        handshake(hosts, change, expect)
    finally:
        subprocess.run(["ip", "netns", "delete", netns])
        for p in reversed(created):
            try:
                os.rmdir(p)
            except OSError:
                pass
        if os.path.exists("/nix") and "/nix/store" in created and not os.listdir("/nix"):
            os.rmdir("/nix")
        shutil.rmtree(work, ignore_errors=True)
    print(f"module check: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
