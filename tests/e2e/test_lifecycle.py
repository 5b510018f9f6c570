"""End to end: exit statuses, no orphans on any exit path, concurrent sessions, dry runs, owners."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

from tests.e2e.harness import (CLI, READY_ECHO, SHARED, E2ETest, docker, engine_events, leftovers, module_fixtures,
                               owned_by, remove_owned_by, session_of, wait_ready)

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
        # A repository: started at once, the two may both edit it in place (neither sees the other yet) or the
        # second may work on a copy, so each one's stop file is made inside its own container.
        project = world.project(world.config())
        for argv in (["init", "-q"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
            subprocess.run(["git", "-c", "safe.directory=*", *argv], cwd=project, check=True, capture_output=True)
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
            docker("exec", f"claude-bottle-{sb}", "touch", f"/workspace/stop-{sb}")
            b.communicate(timeout=60)
            self.assertEqual(b.returncode, 0)
            self.assertEqual(leftovers(sb), [])
            self.assertEqual(len(leftovers(sa)), 3, "ending one session must not touch the other")
            docker("exec", f"claude-bottle-{sa}", "touch", f"/workspace/stop-{sa}")
            a.communicate(timeout=60)
            self.assertEqual(a.returncode, 0)
            self.assertEqual(leftovers(sa), [])
        finally:
            a.kill()
            b.kill()

    def test_more_sessions_at_once_than_dockers_default_pools_hold(self):
        """Each session makes two networks; Docker's default pools hold about 31. Sixteen at once all run."""
        # A project each: two agents are never let into one working tree in place.
        procs = [world.popen(world.project(f'[agents.e2e]\nimage = "{world.debian}"\nenv = []\n'), "echo ok", "-q")
                 for _ in range(16)]
        results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
        self.assertEqual([r[0] for r in results], [0] * 16, [r[2] for r in results if r[0]])
        self.assertTrue(all(r[1] == "ok\n" for r in results), results)
        self.assertEqual(leftovers(), [])

    def test_a_network_that_cannot_be_had_says_why_and_leaves_nothing(self):
        # A range that holds one /28: the first network takes it, the second finds none.
        project = world.project(f'[agents.e2e]\nimage = "{world.debian}"\nenv = []\n')
        proc = world.start(project, "true", env=world.env(CLAUDE_BOTTLE_SUBNETS="10.213.255.240/28"))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, "one line: no warning about removing what was never made")
        self.assertRegex(lines[0], r"^claude-bottle: error: no free /28 for network claude-bottle-\S+ in "
                                   r"CLAUDE_BOTTLE_SUBNETS=10.213.255.240/28 .*claude-bottle gc")
        self.assertEqual(leftovers(session_of(proc.stdout)), [])

    def test_a_renamed_copy_a_symlink_and_python_m_survive_another_start_and_gc(self):
        """The owner is its pid, start time and secret, not its name: none of these is mistaken for gone.

        Each session has a project of its own: two agents are never let into one working tree in place."""
        projects = {name: world.project(world.config()) for name in ("renamed copy", "symlink", "python3 -m", "other")}
        bin_dir = world.tmp / f"bin-{os.urandom(3).hex()}"
        bin_dir.mkdir()
        shutil.copy(CLI, bin_dir / "cb.py")
        (bin_dir / "bottle").symlink_to(CLI)
        env = world.env(PYTHONPATH=str(CLI.parent))
        wait = f"echo {READY_ECHO}; while [ ! -e /workspace/stop-$CLAUDE_BOTTLE_SESSION ]; do sleep 0.1; done"
        ways = {"renamed copy": [sys.executable, str(bin_dir / "cb.py")], "symlink": [str(bin_dir / "bottle")],
                "python3 -m": [sys.executable, "-m", "claude_bottle"]}
        running = {}
        for name, cli in ways.items():
            proc = world.popen(projects[name], wait, cli=cli, env=env)
            running[name] = (proc, session_of(proc.stdout.readline()))
            wait_ready(proc)
        project = projects["other"]
        other = world.start(project, "true")
        self.assertEqual(other.returncode, 0, other.stderr)
        gc = subprocess.run([sys.executable, str(CLI), "gc"], cwd=project, env=world.env(), capture_output=True,
                            text=True, timeout=120)
        self.assertEqual(gc.returncode, 0, gc.stderr)
        ls = json.loads(subprocess.run([sys.executable, str(CLI), "ls", "--json"], cwd=project, env=world.env(),
                                       capture_output=True, text=True, timeout=60).stdout)
        states = {s["session"]: s["owner_state"] for s in ls}
        for name, (proc, session) in running.items():
            with self.subTest(way=name):
                self.assertIsNone(proc.poll(), f"the {name}'s session was killed")
                self.assertEqual(len(leftovers(session)), 3, "its agent, sidecar and internal network are all there")
                self.assertEqual(states[session], "alive")
                self.assertNotIn(session, gc.stdout)
        for name, (proc, session) in running.items():
            (projects[name] / f"stop-{session}").touch()
            proc.wait(timeout=60)
            self.assertEqual(proc.returncode, 0, name)
            self.assertNoLeftovers(session)

    def test_signals_at_many_moments_of_setup_leave_nothing(self):
        """SIGTERM and SIGINT at 24 moments spread over the whole setup: each exits 143 or 130, nothing left.

        Setup is timed from the preflight's first line (the CLI runs, nothing exists yet) to the agent's command
        (everything exists); a signal before the first line lands in the interpreter's own start-up.
        """
        project = world.project(world.config())
        proc = world.popen(project, f"echo {READY_ECHO}")
        proc.stdout.readline()
        started = time.monotonic()
        wait_ready(proc)
        setup = time.monotonic() - started
        proc.wait(timeout=60)
        for i in range(24):
            moment = setup * i / 23
            signum = (signal.SIGTERM, signal.SIGINT)[i % 2]
            with self.subTest(moment=round(moment, 2), signal=signum.name):
                proc = world.popen(project, f"echo {READY_ECHO}; sleep 300")
                proc.stdout.readline()
                time.sleep(moment)
                proc.send_signal(signum)
                out, err = proc.communicate(timeout=120)
                self.assertEqual(proc.returncode, 128 + signum, err)
                flt = owned_by(proc.pid)
                left = docker("ps", "-aq", *flt).stdout.split() + docker("network", "ls", "-q", *flt).stdout.split()
                self.assertEqual(left, [], f"left behind after a signal {moment:.2f} s into setup: {err}")
                remove_owned_by(proc.pid)

    def test_dry_run_changes_nothing(self):
        project = world.project(world.config())
        before, since = snapshot(), time.time()
        proc = world.start(project, "true", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("dry run: none was run", proc.stdout)
        time.sleep(0.2)
        # The engine's own record of the moment: no event of anything named or labelled with the dry run's session.
        self.assertEqual(engine_events(session_of(proc.stdout), since), [])
        if not SHARED:  # other runs change the engine at the same time
            self.assertEqual(snapshot(), before)


if __name__ == "__main__":
    unittest.main()
