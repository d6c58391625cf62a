"""Check that an environment built from the lock loads: run by `make install` before anything else.

Each import runs in its own interpreter, so one binary that fails to load (a torchaudio built for another torch, a
torchvision without its operators) is reported with the versions of the packages involved instead of a traceback
from deep inside the first test. With ``--lock FILE`` it also checks that the installed versions are the locked
ones (a venv built from an older lock is named, with the command that rebuilds it).

    python requirements/check_env.py --lock requirements/lock.txt
Exit status 0 when everything loads, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata

# What must import, in this order, and the check each import runs (a compiled operator, not just the module).
CHECKS = {
    "torch": "import torch; torch.ones(2) @ torch.ones(2)",
    "torchvision": "import torchvision, torch; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)",
    "torchaudio": "import torchaudio, torch; torchaudio.functional.lfilter(torch.zeros(8), torch.tensor([1., 0.]), "
                  "torch.tensor([1., 0.]))",
    "audiossl": "import audiossl.frontend.features, audiossl.models, audiossl.data",
}
PACKAGES = ("torch", "torchvision", "torchaudio", "lightning", "timm")


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def locked_versions(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", help="the lock file the environment was built from")
    args = ap.parse_args(argv)
    versions = ", ".join(f"{p} {version(p)}" for p in PACKAGES)
    failed = []
    for name, code in CHECKS.items():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
            failed.append(f"  {name}: {last}")
    if failed:
        print(f"check_env: these packages do not load together ({versions}, Python {sys.version.split()[0]}):",
              file=sys.stderr)
        print("\n".join(failed), file=sys.stderr)
        print("check_env: torchaudio and torchvision load only beside the torch build they were made for; install the "
              "locked versions together (`make install`, which rebuilds .venv from requirements/lock.txt).",
              file=sys.stderr)
        return 1
    if args.lock:
        drift = []
        for dist, want in sorted(locked_versions(args.lock).items()):
            have = version(dist)
            if have.split("+")[0] != want.split("+")[0]:
                drift.append(f"{dist} {have} (locked {want})")
        if drift:
            print(f"check_env: the environment differs from {args.lock}: {', '.join(drift)}; rebuild it with "
                  "`rm -rf .venv && make install`", file=sys.stderr)
            return 1
    print(f"check_env: ok ({versions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
