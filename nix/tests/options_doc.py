#!/usr/bin/env python3
"""docs/options.md and docs/home-manager-options.md from the modules
(nix/docs/options.nix): --write regenerates them, --check (CI) fails when a
committed file is stale."""
import argparse
import difflib
import json
import os
import subprocess
import sys

REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(REPO, "..", "shared", "nixpkgs-lib", "lib"))
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = ap.parse_args()
    lib = os.path.realpath(args.lib)
    said = []
    for module, name in (("nixos", "options.md"), ("home-manager", "home-manager-options.md")):
        r = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "nix/docs/options.nix", "--arg", "libPath", lib, "--argstr", "module", module],
            cwd=REPO, capture_output=True, text=True,
        )
        if r.returncode != 0:
            sys.exit(f"options_doc: evaluating nix/docs/options.nix ({module}) failed:\n{r.stderr}")
        text = json.loads(r.stdout)
        path = os.path.join(REPO, "docs", name)
        count = text.count(chr(10) + "## ")
        if args.write:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            said.append(f"wrote {path} ({count} options)")
            continue
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        if old != text:
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"docs/{name} (committed)", f"docs/{name} (from the module)", n=1))
            sys.exit(f"options_doc: docs/{name} is stale; run nix/tests/options_doc.py --write\n{diff[:4000]}")
        said.append(f"docs/{name} is current ({count} options)")
    print("options_doc: " + "; ".join(said))


if __name__ == "__main__":
    main()
