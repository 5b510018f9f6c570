#!/usr/bin/env python3
"""Run the test modules in parallel: `make test` and `make unit` call this.

    python3 tests/run.py [--jobs N] [-v] [--unit] [MODULE ...]

Each test module runs as its own `python3 -m unittest MODULE` process, N at a time (default 3), longest first, so
the end-to-end modules, which mostly wait for the engine, overlap each other and the unit tests. Each module's
output is printed whole when it ends. The end-to-end modules run with CLAUDE_BOTTLE_E2E_SHARED=1 (each checks only
the sessions it started, since the others run at the same time); once every module has ended, this runner checks
what they would have checked alone: nothing of any claude-bottle session is left on the engine (skipped when the
caller set CLAUDE_BOTTLE_E2E_SHARED=1 itself: other runs share the engine). Exit status 0 when
every module passed and nothing is left, 1 otherwise.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Seconds each module took in a quiet run, longest first (the order modules start in; unknown ones go first).
WEIGHTS = {"tests.e2e.test_lifecycle": 300, "tests.e2e.test_faults": 250, "tests.e2e.test_broker": 180,
           "tests.e2e.test_security": 160, "tests.e2e.test_remote_rig": 150, "tests.e2e.test_identity": 150,
           "tests.e2e.test_servers": 90, "tests.e2e.test_egress": 80, "tests.e2e.test_live": 60,
           "tests.e2e.test_state": 55, "tests.e2e.test_builtin_image": 55, "tests.e2e.test_ssh": 50,
           "tests.e2e.test_clone": 60, "tests.test_cli": 45}


# Modules whose tests need the engine to themselves: they run after the others, one at a time, as they would alone.
# test_ops: a kill -9's orphan, which any other start would reap first.
ALONE = ("tests.e2e.test_ops",)


def modules(unit_only: bool) -> list:
    found = [f"tests.{p.stem}" for p in sorted((ROOT / "tests").glob("test_*.py"))]
    if not unit_only:
        found += [f"tests.e2e.{p.stem}" for p in sorted((ROOT / "tests" / "e2e").glob("test_*.py"))]
    return found


def leftovers() -> list:
    """Whatever of a claude-bottle session is still on the engine: containers, networks, volumes."""
    flt = ["--filter", "label=claude-bottle.session"]
    found = []
    for argv in (["ps", "-a", "--format", "{{.Names}}"], ["network", "ls", "--format", "{{.Name}}"],
                 ["volume", "ls", "--format", "{{.Name}}"]):
        r = subprocess.run(["docker", *argv, *flt], capture_output=True, text=True, timeout=120)
        found += r.stdout.split()
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run claude-bottle's test modules in parallel.")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("TEST_JOBS") or 3))
    parser.add_argument("-v", "--verbose", action="store_true", help="unittest -v for each module")
    parser.add_argument("--unit", action="store_true", help="only the unit tests (CLAUDE_BOTTLE_E2E=0)")
    parser.add_argument("modules", nargs="*", help="these modules only (default: every test module)")
    args = parser.parse_args(argv)
    todo = args.modules or modules(args.unit)
    todo.sort(key=lambda m: -WEIGHTS.get(m, 1000 if ".e2e." in m else 30))
    env = {**os.environ, "CLAUDE_BOTTLE_E2E_SHARED": "1"}
    if args.unit:
        env["CLAUDE_BOTTLE_E2E"] = "0"
    lock, results = threading.Lock(), {}
    queue = [m for m in todo if m not in ALONE]
    started = time.monotonic()

    def worker(env=env):
        while True:
            with lock:
                if not queue:
                    return
                module = queue.pop(0)
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "unittest", *(["-v"] if args.verbose else []), module],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
            took = time.monotonic() - t0
            with lock:
                results[module] = (proc.returncode, took)
                sys.stdout.write(proc.stdout.decode(errors="replace"))
                print(f"run.py: {module}: {'OK' if proc.returncode == 0 else 'FAILED'} in {took:.1f} s", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue = [m for m in todo if m in ALONE]
    worker({**env, "CLAUDE_BOTTLE_E2E_SHARED": os.environ.get("CLAUDE_BOTTLE_E2E_SHARED", "0")})
    failed = sorted(m for m, (rc, _) in results.items() if rc != 0)
    left = []
    # When the caller shares the engine with other runs (CLAUDE_BOTTLE_E2E_SHARED=1 already set), theirs are not ours.
    alone = os.environ.get("CLAUDE_BOTTLE_E2E_SHARED") != "1"
    if alone and not args.unit and any(".e2e." in m for m in todo) and os.environ.get("CLAUDE_BOTTLE_E2E") != "0":
        try:
            left = leftovers()
        except (OSError, subprocess.SubprocessError):
            left = []
    print(f"run.py: {len(results)} modules in {time.monotonic() - started:.1f} s, {args.jobs} at a time; "
          f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    if left:
        print(f"run.py: FAILED: claude-bottle sessions left on the engine: {', '.join(left)}")
    return 1 if failed or left else 0


if __name__ == "__main__":
    raise SystemExit(main())
