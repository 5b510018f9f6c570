"""End to end: what the bottle lets out and what it keeps in, on the real engine."""

import json
import unittest

from tests.e2e.harness import E2ETest, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())


class Egress(E2ETest):
    def test_allowed_host_plain_http_and_connect(self):
        project = world.project(world.config())
        script = ("curl -sS --max-time 20 http://web:8000/; "
                  "curl -sS --max-time 20 --proxytunnel http://web:8000/; "
                  "curl -sS --max-time 20 -o /dev/null -w 'code=%{http_code}\\n' http://sub.example.test:8000/")
        proc = world.start(project, script)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.count("hello-from-web"), 2, proc.stdout)
        self.assertIn("code=200", proc.stdout, "*.example.test covers sub.example.test")
        self.assertRegex(proc.stderr, r"reached: .*web \(\d+\)")
        self.assertNoLeftovers(session_of(proc.stdout))

    def test_host_not_allowed_is_refused_and_logged(self):
        project = world.project(world.config())
        report = project / "report.json"
        script = ("curl -sS --max-time 20 -w '\\nplain=%{http_code}\\n' http://other:8000/; "
                  "curl -sS --max-time 20 --proxytunnel http://other:8000/; echo connect_rc=$?")
        proc = world.start(project, script, "--report-json", str(report))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("blocked: domain not in allowlist: other", proc.stdout)
        self.assertIn("plain=403", proc.stdout)
        self.assertIn("connect_rc=56", proc.stdout, "curl exits 56 on a refused CONNECT")
        self.assertNotIn("hello-from-other", proc.stdout)
        # The sidecar's log recorded the block with its reason; the report shows it and how to allow it.
        self.assertIn("other (2) allowlist: domain not in allowlist: other", proc.stderr)
        self.assertIn('allow = ["web", "notrusted", "*.example.test", "git", "other"]', proc.stderr)
        data = json.loads(report.read_text())
        self.assertEqual(data["blocked"], [{"host": "other", "scanner": "allowlist",
                                            "reason": "domain not in allowlist: other", "count": 2}])

    def test_private_address_needs_trusted(self):
        project = world.project(world.config())
        proc = world.start(project, "curl -sS --max-time 20 -w '\\ncode=%{http_code}\\n' http://notrusted:8000/")
        self.assertIn("code=403", proc.stdout)
        self.assertIn("SSRF blocked: notrusted resolves to internal IP", proc.stdout)
        self.assertIn("ssrf: SSRF blocked: notrusted", proc.stderr)
        self.assertIn('trusted = ["git", "sub.example.test", "web", "notrusted"]', proc.stderr)
        trusting = world.project(world.config(trusted=["web", "git", "notrusted"]))
        proc = world.start(trusting, "curl -sS --max-time 20 http://notrusted:8000/")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("hello-from-web", proc.stdout)

    def test_no_direct_egress_and_no_outside_dns(self):
        project = world.project(world.config())
        script = (
            "curl -sS --max-time 5 --noproxy '*' http://web:8000/; echo by_name=$?; "
            f"curl -sS --max-time 5 --noproxy '*' http://{world.web_ip}:8000/; echo by_ip=$?; "
            "getent hosts web; echo dns_web=$?; "
            "getent hosts claude-bottle-$CLAUDE_BOTTLE_SESSION-pipelock >/dev/null; echo dns_sidecar=$?")
        proc = world.start(project, script)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn("hello-from-web", proc.stdout)
        self.assertRegex(proc.stdout, r"by_name=(6|7|28)\n")
        self.assertRegex(proc.stdout, r"by_ip=(7|28)\n")
        self.assertIn("dns_web=2", proc.stdout, "the agent must not resolve outside names")
        self.assertIn("dns_sidecar=0", proc.stdout, "the sidecar's own name resolves")


# A CONNECT tunnel to the echo service: one line at once, another after `pause` seconds of silence
# (or of keep-alive lines every second, with `keepalive`). Prints what came back.
TUNNEL = r"""
import os, socket, sys, time
host, port = os.environ["http_proxy"].rsplit("/", 1)[-1].rsplit(":", 1)
pause, keepalive = float(sys.argv[1]), sys.argv[2] == "1"
s = socket.create_connection((host, int(port)), timeout=30)
s.sendall(b"CONNECT web:9000 HTTP/1.1\r\nHost: web:9000\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print("connect:", head.split(b"\r\n")[0].decode())
s.sendall(b"first\n"); print("first:", s.recv(100).decode().strip())
end = time.time() + pause
while time.time() < end:
    time.sleep(1)
    if keepalive:
        s.sendall(b"tick\n"); s.recv(100)
try:
    s.sendall(b"second\n"); s.settimeout(5); got = s.recv(100).decode().strip()
except OSError as e:
    got = type(e).__name__
print("second:", got or "closed")
"""


class TunnelLifetimes(E2ETest):
    def tunnel(self, pause, keepalive=False, **bottle):
        project = world.project(world.config(**bottle))
        (project / "tunnel.py").write_text(TUNNEL)
        proc = world.start(project, f"python3 /workspace/tunnel.py {pause} {int(keepalive)}")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("connect: HTTP/1.1 200", proc.stdout)
        self.assertIn("first: first", proc.stdout)
        return proc.stdout

    def test_lasts_within_the_written_lifetimes(self):
        # The defaults claude-bottle writes (4 h, 30 min idle) keep a quiet tunnel open.
        self.assertIn("second: second", self.tunnel(6))

    def test_cut_after_max_tunnel_seconds(self):
        out = self.tunnel(5, max_tunnel_seconds=2)
        self.assertNotIn("second: second", out)

    def test_cut_after_idle_timeout(self):
        out = self.tunnel(5, idle_timeout_seconds=2)
        self.assertNotIn("second: second", out)

    def test_busy_tunnel_outlives_idle_timeout(self):
        self.assertIn("second: second", self.tunnel(5, keepalive=True, idle_timeout_seconds=3))


if __name__ == "__main__":
    unittest.main()
