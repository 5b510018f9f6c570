"""End to end: exit statuses, no orphans on any exit path, concurrent sessions, dry runs."""

import signal
import time
import unittest

from tests.e2e.harness import READY_ECHO, E2ETest, docker, leftovers, module_fixtures, session_of, wait_ready

world = None
setUpModule, tearDownModule = module_fixtures(globals())


def snapshot():
    return (docker("ps", "-a", "--format", "{{.ID}} {{.Names}} {{.State}}").stdout,
            docker("network", "ls", "--format", "{{.ID}} {{.Name}}").stdout)


class Lifecycle(E2ETest):
    def test_exit_status_is_the_agents(self):
        project = world.project(world.config())
        for status in (0, 3, 7):
            with self.subTest(status=status):
                proc = world.start(project, f"exit {status}")
                self.assertEqual(proc.returncode, status, proc.stderr)
                self.assertNoLeftovers(session_of(proc.stdout))

    def test_sidecar_fails_to_start(self):
        # The original tool's smoke test: a pipelock image that cannot exist. The registry address is a
        # closed loopback port, so the pull fails here without sending anything anywhere.
        project = world.project(f'[agents.e2e]\nimage = "{world.debian}"\n')
        env = world.env(CLAUDE_BOTTLE_PIPELOCK_IMAGE="127.0.0.1:1/nothing@sha256:" + "0" * 64)
        proc = world.start(project, "true", "-v", env=env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("claude-bottle: error: `docker run", proc.stderr)
        session = session_of(proc.stdout)
        self.assertIn("docker network create --internal", proc.stderr, "the networks were created")
        self.assertIn(f"claude-bottle-{session}-egress", proc.stderr)
        self.assertEqual(leftovers(session), [])

    def test_signals_mid_session(self):
        project = world.project(world.config())
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with self.subTest(signal=signum.name):
                proc = world.popen(project, f"echo {READY_ECHO}; sleep 300")
                try:
                    head = proc.stdout.readline()
                    session = session_of(head)
                    wait_ready(proc)
                    self.assertEqual(len(leftovers(session)), 3, "agent, sidecar, internal network")
                    proc.send_signal(signum)
                    out, err = proc.communicate(timeout=60)
                finally:
                    proc.kill()
                self.assertEqual(proc.returncode, 128 + signum, err)
                self.assertNoLeftovers(session)

    def test_two_sessions_of_one_agent(self):
        project = world.project(world.config())
        wait = f"echo {READY_ECHO}; while [ ! -e /workspace/stop-$CLAUDE_BOTTLE_SESSION ]; do sleep 0.1; done"
        a, b = world.popen(project, wait), world.popen(project, wait)
        try:
            sessions = []
            for p in (a, b):
                sessions.append(session_of(p.stdout.readline()))
                wait_ready(p)
            sa, sb = sessions
            self.assertNotEqual(sa, sb)
            self.assertTrue(sa.startswith("e2e-") and sb.startswith("e2e-"))
            (project / f"stop-{sb}").touch()
            b.communicate(timeout=60)
            self.assertEqual(b.returncode, 0)
            self.assertEqual(leftovers(sb), [])
            self.assertEqual(len(leftovers(sa)), 3, "ending one session must not touch the other")
            (project / f"stop-{sa}").touch()
            a.communicate(timeout=60)
            self.assertEqual(a.returncode, 0)
            self.assertEqual(leftovers(sa), [])
        finally:
            a.kill()
            b.kill()

    def test_dry_run_changes_nothing(self):
        project = world.project(world.config())
        before = snapshot()
        proc = world.start(project, "true", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("dry run: none was run", proc.stdout)
        time.sleep(0.2)
        self.assertEqual(snapshot(), before)


if __name__ == "__main__":
    unittest.main()
