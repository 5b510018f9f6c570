"""End to end: changing a running bottle on the real engine: allow and deny live, a trusted host refused, learn mode."""

import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

from tests.e2e.harness import CLI, READY, E2ETest, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())

# The agent: a CONNECT tunnel to web:9000 (an echo server) opened first and kept open, then a request to
# http://other:8000/ every INTERVAL seconds. Each request prints `T <time> <status>`; each one also sends a line
# through the tunnel and expects it back, printing TUNNEL-DROPPED (and stopping) when it does not come.
AGENT = r"""
import os, socket, sys, time, urllib.request
interval = float(sys.argv[1])
proxy = os.environ["HTTPS_PROXY"].split("//")[1]
host, port = proxy.rsplit(":", 1)
tunnel = socket.create_connection((host, int(port)), timeout=10)
tunnel.sendall(b"CONNECT web:9000 HTTP/1.1\r\nHost: web:9000\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += tunnel.recv(1)
assert head.startswith(b"HTTP/1.1 200"), head
print("AGENT-READY", flush=True)
echoes = 0
while not os.path.exists("/workspace/stop"):
    try:
        status = urllib.request.urlopen("http://other:8000/", timeout=5).status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:
        status = "error:" + type(e).__name__
    print("T", time.time(), status, flush=True)
    try:
        tunnel.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            chunk = tunnel.recv(5 - len(got))
            if not chunk:
                break
            got += chunk
        if got != b"ping\n":
            raise OSError(got)
        echoes += 1
    except OSError as e:
        print("TUNNEL-DROPPED", repr(e), flush=True)
        break
    time.sleep(interval)
print("TUNNEL-ECHOES", echoes, flush=True)
"""


class Polls:
    """The agent's stdout, read in a thread: (time, status) of every request, and every other line."""

    def __init__(self, proc):
        self.proc, self.polls, self.lines, self.cond = proc, [], [], threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "T":
                    self.polls.append((float(parts[1]), parts[2]))
                else:
                    self.lines.append(line.strip())
                self.cond.notify_all()

    def first(self, status: str, after: float, timeout: float = 30) -> float:
        """The time of the first request after `after` that got `status`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, s in self.polls:
                    if t >= after and s == status:
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {status} after {after}: {self.polls[-5:]} {self.lines}")
                self.cond.wait(left)

    def between(self, start: float, end: float) -> set:
        with self.cond:
            return {s for t, s in self.polls if start <= t <= end}


class Live(E2ETest):
    def cli(self, project, *args):
        return subprocess.run([sys.executable, str(CLI), *args], cwd=project, env=world.env(),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def start_agent(self, project, interval: float, *args):
        path = project / "agent.py"
        path.write_text(AGENT)
        os.chmod(path, 0o644)
        proc = world.popen(project, f"python3 /workspace/agent.py {interval}", *args)
        session = session_of(proc.stdout.readline())
        for line in proc.stdout:
            if line.strip() == READY:
                return proc, session
        raise AssertionError(f"the agent never started: {proc.stderr.read()}")

    def config_file(self, session: str) -> str:
        return os.path.join(f"{os.environ.get('TMPDIR', '/tmp')}/claude-bottle-{os.getuid()}", session,
                            "pipelock", "pipelock.yaml")

    def test_allow_deny_live_without_dropping_a_tunnel(self):
        # `other` is trusted ahead of time (it resolves to a private address) but not allowed.
        config = world.config(allow=["web", "git", "*.example.test"], trusted=["web", "git", "other"])
        project = world.project(config)
        proc, session = self.start_agent(project, 0.1, "--report-json", "report.json")
        polls = Polls(proc)
        try:
            closed = polls.first("403", 0)
            # The way to the fix, where the user looks.
            logs = self.cli(project, "logs", session)
            self.assertEqual(logs.returncode, 0, logs.stderr)
            # Plain HTTP goes through the forwarder's CONNECT (plain_http = "tunnel"): logged per tunnel.
            self.assertRegex(logs.stdout, rf"blocked  CONNECT other:8000 .*\n +fix: claude-bottle allow "
                                          rf"{session} other\n")
            self.assertRegex(logs.stdout, r"started  pipelock .*\n")
            self.assertNotIn("anomaly", logs.stdout)
            latencies, after_return = [], []
            for _ in range(10):
                t0 = time.time()
                allow = self.cli(project, "allow", session, "other")
                t1 = time.time()
                self.assertEqual(allow.returncode, 0, allow.stderr)
                self.assertIn("now allowed:", allow.stdout)
                first_ok = polls.first("200", t0)
                self.assertEqual(polls.between(closed, t0), {"403"}, "only 403 before the allow")
                latencies.append(first_ok - t0)
                after_return.append(first_ok - t1)
                t2 = time.time()
                deny = self.cli(project, "deny", session, "other")
                self.assertEqual(deny.returncode, 0, deny.stderr)
                closed = polls.first("403", t2)
            print(f"\nallow -> first allowed request: median {statistics.median(latencies):.3f} s, "
                  f"min {min(latencies):.3f} s, max {max(latencies):.3f} s over {len(latencies)} "
                  f"(after the command returned: median {statistics.median(after_return):.3f} s)", file=sys.stderr)
            self.assertLess(max(after_return), 2.0, "200 within 2 s of pipelock confirming the reload")

            # After a deny has been confirmed, nothing but 403 again.
            t3 = time.time()
            time.sleep(1)
            self.assertEqual(polls.between(t3, time.time()), {"403"})

            # A trusted host cannot be added live: refused before anything is written, and nothing changes.
            before = hashlib.sha256(Path(self.config_file(session)).read_bytes()).hexdigest()
            refused = self.cli(project, "allow", session, "sub.example.test", "--trusted")
            self.assertEqual(refused.returncode, 2, refused.stderr)
            self.assertIn("refuses new trusted_domains", refused.stderr)
            self.assertIn(f"claude-bottle stop {session} && claude-bottle start e2e", refused.stderr)
            after = hashlib.sha256(Path(self.config_file(session)).read_bytes()).hexdigest()
            self.assertEqual(before, after)

            # Denying a built-in default needs --force.
            default = self.cli(project, "deny", session, "api.anthropic.com")
            self.assertEqual(default.returncode, 2)
            self.assertIn("--force", default.stderr)

            allow = self.cli(project, "allow", session, "other")
            self.assertEqual(allow.returncode, 0, allow.stderr)
            (project / "stop").write_text("")
            # stdout is the Polls thread's alone: read it to its end there, then stderr here.
            polls.thread.join(60)
            err = proc.stderr.read()
            proc.wait(timeout=60)
        finally:
            proc.kill()
        self.assertNotIn("TUNNEL-DROPPED", " ".join(polls.lines), err)
        echoes = next(int(line.split()[1]) for line in polls.lines if line.startswith("TUNNEL-ECHOES"))
        self.assertEqual(echoes, len(polls.polls), "every request's echo came back through the one tunnel")
        self.assertIn("changed live: allowed other; denied nothing", err)
        report = json.loads((project / "report.json").read_text())
        self.assertEqual(report["live"]["added"], ["other"])
        self.assertNoLeftovers(session)

    def test_learn_reports_exactly_the_hosts_used(self):
        # `other` is trusted but not allowed: learn mode lets it through. `sub.example.test` is neither: on a private
        # address, pipelock's dialer refuses it even in learn mode, and the report says it needs trust too.
        project = world.project(world.config(allow=["web"], trusted=["web", "other"], ssh=[]))
        script = ("for u in http://web:8000/ http://other:8000/ http://sub.example.test:8000/; do "
                  "curl -s -o /dev/null -w '%{http_code}\\n' $u; done")
        run = world.start(project, script, "--learn", "--yes-learn", "--save", "--report-json", "report.json")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.stdout.split()[-3:], ["200", "200", "502"],
                         "the allowlist refuses nothing; a private address of an untrusted host stays refused")
        self.assertIn("LEARN MODE: THE ALLOWLIST IS OFF", run.stdout)
        self.assertIn('allow = ["other", "sub.example.test", "web"]', run.stderr)
        report = json.loads((project / "report.json").read_text())
        self.assertEqual(report["proposed"], ["other", "sub.example.test", "web"])
        self.assertEqual([(b["host"], b["scanner"]) for b in report["blocked"]], [("sub.example.test", "ssrf")])
        self.assertEqual(sorted({w["host"] for w in report["would_block"]}), ["other", "sub.example.test"])
        self.assertIn('allow = ["web", "other", "sub.example.test"]\n', (project / "claude-bottle.toml").read_text())
        self.assertEqual(report["proposed_trusted"], ["sub.example.test"])
        self.assertIn('trusted = ["other", "web", "sub.example.test"]', run.stderr)
        print("\nlearn-mode report from a real run:\n" + "\n".join(
            line for line in run.stderr.splitlines() if line.startswith(("claude-bottle: egress", "  "))),
            file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
