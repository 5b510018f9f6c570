"""A guard for unit tests that import claude_bottle: any call that would reach docker fails the test.

    from tests import guard
    setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402

_real = []


def setUpModule():
    def no_docker(*args, **kwargs):
        raise AssertionError(f"a unit test reached docker: {args}")

    _real[:] = [cb.docker]
    cb.docker = no_docker


def tearDownModule():
    cb.docker = _real.pop()
