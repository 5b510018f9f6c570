#!/usr/bin/env python3
"""Run the README's unit-test command on a fresh Debian bookworm machine: the distribution's own python3 and make,
nothing else.

    python3 tests/fresh_debian.py [-v] [TARGET]       (TARGET: a make target, default `unit`)

The machine is ``claude-bottle-test/fresh-debian:<hash>``, a ``debootstrap --variant=minbase`` bookworm root with
python3 and make, imported with ``docker import`` (tests/e2e/images.py ``build_root``; built once, cached by the
hash of what made it, which needs root and debootstrap). This checkout is mounted read-only, copied to a writable
directory in the container and `make TARGET` runs there with CLAUDE_BOTTLE_NO_INSTALL=1 and no network and no
engine, so the tests that need a missing tool skip, as they would for a new user. It catches what the development
machine hides (issue 20: its PYTHONUNBUFFERED=1 hid the exit status 120 of a failing flush of a closed stderr).
The container is removed however this ends. Exit status: make's, or 1 when the machine could not be made.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import images  # noqa: E402

REPO = "claude-bottle-test/fresh-debian"
PACKAGES = ("python3", "make")
SETUP = "set -eu\napt-get clean\nrm -rf /var/lib/apt/lists/* /var/cache/apt/*\n"
# `cp -a` keeps the modes the tests rely on; the copy is root's, as on a fresh machine where root runs `make`.
SCRIPT = 'set -e; cp -a /src/. /clone; cd /clone; python3 --version; exec make "$1"'


def fresh_tag() -> str:
    inputs = json.dumps({"suite": images.SUITE, "variant": images.VARIANT, "mirror": images.MIRROR,
                         "packages": PACKAGES, "setup": SETUP}, sort_keys=True)
    return f"{REPO}:{images._digest(inputs)}"


def ensure_image(verbose: bool) -> str:
    images._verbose = verbose
    with images.build_lock():
        return images._ensure(fresh_tag(), images.build_root, PACKAGES, SETUP)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="make TARGET in a fresh Debian bookworm container.")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress lines of the image build")
    parser.add_argument("target", nargs="?", default="unit")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        tag = ensure_image(args.verbose)
    except images.ImageBuildError as exc:
        print(f"fresh-debian: error: {exc}", file=sys.stderr)
        return 1
    built = time.monotonic() - started
    name = f"claude-bottle-test-fresh-{os.getpid()}"
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the container is removed on the way out.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.default_int_handler)
    try:
        proc = subprocess.run(["docker", "run", "--rm", "--name", name, "--label", images.LABEL,
                               "--network", "none",
                               "--mount", f"type=bind,source={ROOT},target=/src,readonly",
                               "--env", "CLAUDE_BOTTLE_NO_INSTALL=1", "--env", "TESTFLAGS",
                               tag, "sh", "-c", SCRIPT, "sh", args.target], stdin=subprocess.DEVNULL)
        status = proc.returncode
    except KeyboardInterrupt:
        status = 130
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
    print(f"fresh-debian: make {args.target} in {tag}: exit {status}; image {built:.1f} s, "
          f"total {time.monotonic() - started:.1f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
