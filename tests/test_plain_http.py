"""Plain HTTP at wire speed (issue 26): the bottle's `plain_http` key, the agent's proxy variables, the preflight
and report lines, and the plain-HTTP forwarder's programs run on this host against the pipelock stand-in.

The forwarder tests run each program (python3, node, perl: those this host has) on 127.0.0.1 and send it requests
for servers on 127.0.0.1 through the stand-in, so nothing leaves the loopback interface. Every forwarder this module
starts is killed by its pid at the end.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard, test_standin as standin  # noqa: E402
from tests.test_broker_wiring import envs_of  # noqa: E402


def setUpModule():
    guard.setUpModule()
    standin.setUpModule()


def tearDownModule():
    standin.tearDownModule()
    guard.tearDownModule()


class PlanTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-plain-http-")
        self.addCleanup(tmp.cleanup)
        self.home = Path(tmp.name).resolve() / "home"
        self.home.mkdir()
        self.root = self.home.parent / "project"
        self.root.mkdir()

    def plan(self, bottle_lines=""):
        path = self.root / "claude-bottle.toml"
        path.write_text(f"[bottles.b]\n{bottle_lines}\n[agents.a]\nbottle = \"b\"\n")
        return cb.resolve_plan(cb.load_config(path), "a", cwd=self.root, environ={"HOME": str(self.home)},
                               suffix="0a1b2c", owner="host:1", private_dir="/tmp/cb-private")

    def proxies(self, plan):
        env = dict(e.split("=", 1) for e in envs_of(guard.agent_create_argv(plan)) if "=" in e)
        return {k: env[k] for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}

    def test_tunnel_is_the_default_and_only_plain_http_goes_to_the_forwarder(self):
        plan = self.plan()
        self.assertEqual(plan.plain_http, "tunnel")
        forwarder = f"http://127.0.0.1:{cb.PLAIN_HTTP_PORT}"
        self.assertEqual(self.proxies(plan), {"HTTPS_PROXY": plan.proxy_url, "https_proxy": plan.proxy_url,
                                              "HTTP_PROXY": forwarder, "http_proxy": forwarder})
        argv = guard.agent_create_argv(plan)
        script = argv[argv.index("-c") + 1]
        self.assertTrue(script.startswith(cb.render_plain_http_forwarder(plan)))
        # The forwarder talks to the sidecar only: its address is the one argument besides its own port.
        self.assertIn(f"{cb.PLAIN_HTTP_PORT} {plan.sidecar} {cb.PROXY_PORT} </dev/null", script)
        self.assertIn("plain http: tunnel: wire speed", "\n".join(cb.render_summary(plan)))

    def test_scan_points_plain_http_at_pipelock_and_starts_no_forwarder(self):
        plan = self.plan('plain_http = "scan"')
        self.assertEqual(set(self.proxies(plan).values()), {plan.proxy_url})
        self.assertEqual(cb.render_plain_http_forwarder(plan), "")
        argv = guard.agent_create_argv(plan)
        self.assertNotIn(str(cb.PLAIN_HTTP_PORT), " ".join(argv))
        summary = "\n".join(cb.render_summary(plan))
        self.assertIn("plain http: scan: pipelock's DLP on each request", summary)
        self.assertIn('plain_http = "tunnel" is wire speed', summary)

    def test_a_bad_mode_is_one_line_naming_the_field_and_the_fix(self):
        for value in ('"fast"', "true", '"Tunnel"'):
            with self.subTest(value=value), self.assertRaises(cb.ConfigError) as cm:
                self.plan(f"plain_http = {value}")
            msg = str(cm.exception)
            self.assertEqual(cm.exception.status, 2)
            self.assertNotIn("\n", msg)
            self.assertIn("[bottles.b] plain_http:", msg)
            self.assertIn('plain_http = "tunnel"', msg)
            self.assertIn('plain_http = "scan"', msg)

    def test_the_report_says_plain_http_is_counted_per_tunnel(self):
        events = [{"event": "tunnel_open", "target": "deb.debian.org:80"}]
        report = cb.egress_report(events)
        self.assertIn(f"  {cb.PLAIN_HTTP_PER_TUNNEL}", cb.render_report(self.plan(), report))
        self.assertNotIn(f"  {cb.PLAIN_HTTP_PER_TUNNEL}", cb.render_report(self.plan('plain_http = "scan"'), report))

    def test_the_dry_run_shows_the_mode_and_the_forwarder(self):
        (self.root / "claude-bottle.toml").write_text('[bottles.b]\n[agents.a]\nbottle = "b"\n')
        env = {**os.environ, "HOME": str(self.home)}
        proc = subprocess.run([sys.executable, str(ROOT / "claude_bottle.py"), "start", "a", "--dry-run"],
                              cwd=self.root, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout + proc.stderr
        self.assertIn("plain http: tunnel", out)
        self.assertIn(f"http_proxy=http://127.0.0.1:{cb.PLAIN_HTTP_PORT}", out)

    def test_without_python_node_or_perl_the_command_gets_pipelock_back(self):
        plan = self.plan()
        script = cb.render_plain_http_forwarder(plan) + 'echo "$http_proxy $HTTP_PROXY"\n'
        proc = subprocess.run(["/bin/sh", "-c", script], env={"PATH": str(self.root / "empty")},
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, f"{plan.proxy_url} {plan.proxy_url}\n")
        self.assertEqual(proc.stderr, cb.HTTP_FORWARDER_NONE + "\n")


TOOLS = {"python3": ("-c", cb._HTTP_FORWARD_PY), "node": ("-e", cb._HTTP_FORWARD_JS),
         "perl": ("-e", cb._HTTP_FORWARD_PL)}


def forwarder_pids(port: int) -> list:
    """The processes serving the forwarder on `port`: those whose argv holds a forwarder program and the port."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(port).encode() in argv and any(p.encode() in argv for _, p in TOOLS.values()):
            pids.append(int(pid))
    return pids


def stop_forwarder(port: int) -> None:
    for pid in forwarder_pids(port):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # a connection's process (perl forks one per connection) that ended meanwhile


class ForwarderTest(unittest.TestCase):
    """Each program against the stand-in: what it lets through goes through a CONNECT tunnel; what the stand-in
    refuses is refused with its reason."""

    @classmethod
    def setUpClass(cls):
        cls.proxy = standin.StandIn(standin.config_text(["127.0.0.1", "localhost", "not-allowed.example"],
                                                        trusted=["127.0.0.1"]))

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def start(self, tool):
        if not shutil.which(tool):
            self.skipTest(f"no {tool} on this host")
        port = standin.free_port()
        flag, program = TOOLS[tool]
        # Returns once the port listens: the program goes to the background itself (with the streams it got, so
        # none of them may be a pipe this test reads to its end).
        proc = subprocess.run([tool, flag, program, str(port), "127.0.0.1", str(self.proxy.port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.assertEqual(proc.returncode, 0)
        self.addCleanup(stop_forwarder, port)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        return port

    def check_tool(self, tool):
        port = self.start(tool)
        after = len(self.proxy.events())
        web = f"127.0.0.1:{standin.WEB}"
        self.assertEqual(standin.http_via(port, f"http://{web}/a?b=c"), (200, standin.WEB_BODY.decode()))
        self.assertEqual(standin.http_via(port, f"http://{web}/a", "POST", body=b"x" * 100000),
                         (200, standin.WEB_BODY.decode()))
        # Every request went through a CONNECT tunnel of the proxy, none through its forward proxy.
        # The proxy may log a tunnel a moment after its client had the answer: wait for the line, not for a clock.
        deadline = time.monotonic() + 30
        while True:
            kinds = [(e["event"], e.get("target")) for e in self.proxy.events()[after:]]
            if kinds.count(("tunnel_open", web)) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(kinds.count(("tunnel_open", web)), 2, kinds)
        self.assertNotIn("forward_http", [k for k, _ in kinds])
        # Refused hosts: the proxy's 403 and reason come back as the answer.
        status, body = standin.http_via(port, "http://evil.example/x")
        self.assertEqual((status, body), (403, "CONNECT blocked: domain not in allowlist: evil.example\n"))
        status, body = standin.http_via(port, f"http://localhost:{standin.WEB}/x")
        self.assertEqual(status, 403)
        self.assertIn("CONNECT blocked: SSRF", body)
        # A CONNECT goes to the proxy as it came.
        line, _, sock = standin.connect_via(port, f"127.0.0.1:{standin.ECHO}")
        with sock:
            self.assertIn(" 200 ", line)
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")
        # Anything but an absolute http:// URL is refused here.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(standin.read_all(sock).startswith(b"HTTP/1.1 400 "))

    def test_python3(self):
        self.check_tool("python3")

    def test_node(self):
        self.check_tool("node")

    def test_perl(self):
        self.check_tool("perl")


if __name__ == "__main__":
    unittest.main()
