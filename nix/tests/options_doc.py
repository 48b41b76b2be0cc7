#!/usr/bin/env python3
"""docs/options.md from the module (nix/docs/options.nix): --write
regenerates it, --check (CI) fails when the committed file is stale."""
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
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "nix/docs/options.nix", "--arg", "libPath", lib],
        cwd=REPO, capture_output=True, text=True,
    )
    if r.returncode != 0:
        sys.exit(f"options_doc: evaluating nix/docs/options.nix failed:\n{r.stderr}")
    text = json.loads(r.stdout)
    path = os.path.join(REPO, "docs", "options.md")
    if args.write:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"options_doc: wrote {path} ({text.count(chr(10) + '## ')} options)")
        return
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if old != text:
        diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), "docs/options.md (committed)", "docs/options.md (from the module)", n=1))
        sys.exit(f"options_doc: docs/options.md is stale; run nix/tests/options_doc.py --write\n{diff[:4000]}")
    print(f"options_doc: docs/options.md is current ({text.count(chr(10) + '## ')} options)")


if __name__ == "__main__":
    main()
