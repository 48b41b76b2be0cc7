"""Refuses the VM test's racy patterns (issue #31), reading its testScript
as the driver would run it (JSON from nix/tests/nixos/eval.nix on stdin):

* a journal read with `succeed`/`fail`/`execute` right after an action:
  journald takes lines in asynchronously, so a line the action causes may
  not be there yet. Wait for it: `wait_until_succeeds("journalctl ...")`.
  (A check that a line is absent, `fail(...)`, is allowed: absence cannot
  be waited for, and a late line only weakens it.)
* `start_all()`: the clients' fetch units run at boot, racing a server
  that boots in the same second; start the server, wait for it, then the
  clients.
* `grep -q` (or `-Eq`, `-Fq`...) after a pipe: the driver runs commands
  under `set -o pipefail`, and grep -q exits at the first match, so the
  writer dies of SIGPIPE and the command fails although the line is there.
  Use `grep ... >/dev/null`.

Prints each offending line with its number; exits 1 if there is one.
"""
import json
import re
import sys

script = json.load(sys.stdin)["testScript"]
problems = []
for n, line in enumerate(script.splitlines(), 1):
    calls = re.findall(r"\.(succeed|execute|wait_until_succeeds|fail)\((.*)", line)
    for method, args in calls:
        if "journalctl" in args and method in ("succeed", "execute"):
            problems.append(f"{n}: reads the journal with {method}() right after an action; use wait_until_succeeds(): {line.strip()}")
    if re.search(r"\bstart_all\(\)", line):
        problems.append(f"{n}: start_all() boots the clients with the server; start the server first and wait for it: {line.strip()}")
    if re.search(r"\|\s*grep\s+(-[A-Za-z]*q[A-Za-z]*)\b", line):
        problems.append(f"{n}: grep -q after a pipe fails under pipefail when the writer gets SIGPIPE; use grep ... >/dev/null: {line.strip()}")
for p in problems:
    print(p)
print(f"testscript_lint: {len(problems)} racy line(s)")
sys.exit(1 if problems else 0)
