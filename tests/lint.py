#!/usr/bin/env python3
"""Project checks beyond the tests: claude_bottle.py stays one stdlib-only file in our style.

- imports only standard-library modules (the curl-and-run install has nothing else);
- compiles; no tab indents; lines of at most 120 characters;
- pyflakes, when it is installed (Debian: python3-pyflakes), finds nothing.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINE = 120
# Standard-library modules of other Python versions, imported with a fallback (_sha2: 3.12 and later).
OTHER_VERSIONS = {"_sha2"}


def main() -> int:
    problems = []
    source = (ROOT / "claude_bottle.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        for name in names:
            if name.split(".")[0] not in sys.stdlib_module_names | OTHER_VERSIONS:
                problems.append(f"claude_bottle.py:{node.lineno}: imports {name}, which is not in the standard library")
    paths = [ROOT / "claude_bottle.py", *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("\t"):
                problems.append(f"{path.relative_to(ROOT)}:{n}: tab indent")
            if len(line) > MAX_LINE:
                problems.append(f"{path.relative_to(ROOT)}:{n}: {len(line)} characters (max {MAX_LINE})")
    flakes = shutil.which("pyflakes3") or shutil.which("pyflakes")
    if flakes:
        r = subprocess.run([flakes, "claude_bottle.py", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
        problems += [line for line in r.stdout.splitlines() if line.strip()]
    else:
        print("lint: pyflakes not installed; skipped (apt-get install python3-pyflakes)")
    for p in problems:
        print(p)
    print(f"lint: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
