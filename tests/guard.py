"""A guard for unit tests that import claude_bottle: any call that would reach a real engine fails the test.

    from tests import guard
    setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

The dry run's RecordingEngine runs nothing, so it still works under the guard.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402

_real = []


def setUpModule():
    def no_engine(self, argv, *args, **kwargs):
        raise AssertionError(f"a unit test reached the engine: {argv}")

    _real[:] = [cb.DockerEngine.call, cb.DockerEngine.popen]
    cb.DockerEngine.call = no_engine
    cb.DockerEngine.popen = no_engine


def tearDownModule():
    cb.DockerEngine.call, cb.DockerEngine.popen = _real
    _real.clear()


# The Docker CLI's argv for the specs a start builds, as DockerEngine renders them (it runs nothing here).
DOCKER = cb.DockerEngine(cb.Context({}))


def agent_create_argv(plan, ip=None, state=None) -> list:
    return DOCKER.create_argv(cb.agent_spec(plan, ip, state))


def sidecar_run_argv(plan, ip=None) -> list:
    return DOCKER.run_detached_argv(cb.sidecar_spec(plan, ip))


def network_create_argv(plan, name, internal, subnet) -> list:
    return DOCKER.network_create_argv(cb.network_spec(plan, name, internal, subnet))


def state_init_argv(plan, volume) -> list:
    return DOCKER.run_argv(cb.state_init_spec(plan, volume))


def mount_arg(source, target, readonly=False) -> str:
    return DOCKER.mount_value("bind", source, target, readonly)
