"""End to end: operating bottles on the real engine: ls, logs, stop, gc after kill -9, doctor."""

import json
import signal
import subprocess
import sys
import unittest

import claude_bottle as cb
from tests.e2e.harness import CLI, READY_ECHO, E2ETest, docker, leftovers, module_fixtures, session_of, wait_ready

world = None
setUpModule, tearDownModule = module_fixtures(globals())


class Operations(E2ETest):
    def cli(self, project, *args):
        return subprocess.run([sys.executable, str(CLI), *args], cwd=project, env=world.env(),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def running(self, project, script="sleep 300"):
        """A session whose agent has started its command; returns (process, session id)."""
        proc = world.popen(project, f"curl -s -o /dev/null http://web:8000/; curl -s -o /dev/null "
                                    f"http://other:8000/; echo {READY_ECHO}; {script}")
        session = session_of(proc.stdout.readline())
        wait_ready(proc)
        return proc, session

    def test_ls_logs_and_stop_from_another_terminal(self):
        project = world.project(world.config())
        proc, session = self.running(project)
        try:
            ls = self.cli(project, "ls", "--json")
            self.assertEqual(ls.returncode, 0, ls.stderr)
            [mine] = [s for s in json.loads(ls.stdout) if s["session"] == session]
            self.assertEqual((mine["agent"], mine["bottle"], mine["state"], mine["owner_alive"]),
                             ("e2e", "e2e", "running", True))
            self.assertTrue(mine["owner"].endswith(f":{proc.pid}"))
            table = self.cli(project, "ps")
            self.assertRegex(table.stdout, rf"{session} +e2e +e2e +running +\S+ +\S+ \(alive\)")

            logs = self.cli(project, "logs", session)
            self.assertEqual(logs.returncode, 0, logs.stderr)
            # Plain HTTP through the forwarder's CONNECT (plain_http = "tunnel"): one line per tunnel, no URL.
            self.assertRegex(logs.stdout, r"allowed  CONNECT web:8000\n")
            self.assertRegex(logs.stdout, r"blocked  CONNECT other:8000 +\(allowlist: domain not in allowlist: "
                                          r"other\)")
            self.assertIn(cb.PLAIN_HTTP_PER_TUNNEL, logs.stderr)

            stop = self.cli(project, "stop", session)
            self.assertEqual(stop.returncode, 0, stop.stderr)
            self.assertEqual(stop.stdout, f"stopped {session}\n")
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        # The owner tore down on its own normal path: SIGTERM, egress report, ordered teardown.
        self.assertEqual(proc.returncode, 128 + signal.SIGTERM, err)
        self.assertIn("other (1) allowlist: domain not in allowlist: other", err)
        self.assertNoLeftovers(session)

    def test_gc_after_kill_9(self):
        project = world.project(world.config())
        proc, session = self.running(project)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.assertEqual(len(leftovers(session)), 3, "kill -9 leaves agent, sidecar and internal network")
        ls = json.loads(self.cli(project, "ls", "--json").stdout)
        self.assertIs(next(s for s in ls if s["session"] == session)["owner_alive"], False)

        dry = self.cli(project, "gc", "--dry-run")
        self.assertIn(f"would remove {session}", dry.stdout)
        self.assertEqual(len(leftovers(session)), 3, "gc --dry-run removes nothing")

        gc = self.cli(project, "gc")
        self.assertEqual(gc.returncode, 0, gc.stderr)
        self.assertIn(f"removed {session}", gc.stdout)
        self.assertNoLeftovers(session)
        unlabelled = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        self.assertIn(world.network, unlabelled, "gc never touches anything without the label")

    def test_start_reaps_orphans(self):
        project = world.project(world.config())
        proc, orphan = self.running(project)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        run = world.start(project, "true")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(leftovers(orphan), [], "the next start removed the killed session's leftovers")

    def test_doctor(self):
        # The built-in image needs Claude Code from a registry: the default agent uses the test image here.
        project = world.project(world.config() + f'[agents.claude]\nimage = "{world.debian}"\n')
        ok = subprocess.run([sys.executable, str(CLI), "doctor"], cwd=project, capture_output=True, text=True,
                            env=world.env(SSH_AUTH_SOCK=world.agent_sock, ANTHROPIC_API_KEY="sk-ant-doctor-test"),
                            timeout=120)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        for check in ("docker CLI", "docker daemon", "engine DNS", "config", "pipelock image", "agent image",
                      "ssh, socat and git in the agent image", "login", "ssh-agent"):
            self.assertRegex(ok.stdout, rf"(?m)^ok    {check}: ")
        missing = "127.0.0.1:1/nothing@sha256:" + "0" * 64
        bad = subprocess.run([sys.executable, str(CLI), "doctor"], cwd=project, capture_output=True, text=True,
                             env=world.env(CLAUDE_BOTTLE_PIPELOCK_IMAGE=missing), timeout=120)
        self.assertEqual(bad.returncode, 1)
        self.assertIn(f"FAIL  pipelock image: {missing} missing; `docker pull", bad.stdout)
        self.assertIn("FAIL  ssh-agent", bad.stdout)
        self.assertIn("FAIL  login: none: Claude Code will ask you to log in inside the bottle", bad.stdout)


if __name__ == "__main__":
    unittest.main()
