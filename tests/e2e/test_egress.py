"""End to end: what the bottle lets out and what it keeps in, on the real engine."""

import json
import os
import subprocess
import sys
import time
import unittest

from tests.e2e import servers
from tests.e2e.harness import CLI, READY, E2ETest, docker, module_fixtures, session_of, wait_ready

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
host, port = os.environ["https_proxy"].rsplit("/", 1)[-1].rsplit(":", 1)
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


class Dlp(E2ETest):
    """With plain_http = "scan", a secret leaving over plain HTTP is refused, wherever it is in the request, and no
    report repeats it."""

    def test_a_github_token_in_a_header_the_body_or_the_url_is_refused(self):
        project = world.project(world.config(plain_http="scan"))
        report = project / "report.json"
        # GitHub-token shaped, and given to the agent through its environment, so that no command line shows it.
        token = "ghp_" + os.urandom(18).hex()
        curl = "curl -sS --max-time 20 -o /dev/null"
        script = (f'{curl} -w "header=%{{http_code}}\\n" -H "X-Note: $CBTEST_TOKEN" http://web:8000/; '
                  f'{curl} -w "body=%{{http_code}}\\n" --data "note=$CBTEST_TOKEN" http://web:8000/; '
                  f'{curl} -w "url=%{{http_code}}\\n" "http://web:8000/?note=$CBTEST_TOKEN"; '
                  f'{curl} -w "clean=%{{http_code}}\\n" -H "X-Note: nothing secret" http://web:8000/')
        proc = world.start(project, script, "--report-json", str(report), env=world.env(CBTEST_TOKEN=token))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for what in ("header", "body", "url"):
            self.assertIn(f"{what}=403", proc.stdout, f"a token in the {what} must not leave")
        self.assertIn("clean=200", proc.stdout)
        data = json.loads(report.read_text())
        dlp = [b for b in data["blocked"] if b["scanner"] == "dlp"]
        self.assertEqual(sum(b["count"] for b in dlp), 3, data)
        self.assertEqual({b["host"] for b in dlp}, {"web"})
        self.assertRegex(proc.stderr, r"web \(1\) dlp: ")
        for text in (proc.stdout, proc.stderr, report.read_text()):
            self.assertNotIn(token, text)
        self.assertNotIn(token[4:20], proc.stderr)


def build_apt_agent(test, mirror_alias: str) -> str:
    """The built-in image's base stage, its apt sources pointing at our mirror alone; removed after the test."""
    tag = f"claude-bottle-test/apt-agent:{os.urandom(4).hex()}"
    dockerfile = (f"FROM {test.world.images['agent-base']}\n"
                  f"RUN rm -f /etc/apt/sources.list.d/* && echo '{servers.sources_line(mirror_alias)}' "
                  f"> /etc/apt/sources.list\n"
                  "LABEL claude-bottle-test=1\n")
    docker("build", "--quiet", "--tag", tag, "-", input=dockerfile, timeout=300)
    test.addCleanup(docker, "rmi", "--force", tag, check=False)
    return tag


def session_owned_by(pid: int, timeout: float = 120) -> str:
    flt = f"label=claude-bottle.owner={os.uname().nodename}:{pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = docker("ps", "--filter", flt, "--filter", "label=claude-bottle.role=agent",
                       "--format", '{{.Label "claude-bottle.session"}}').stdout.split()
        if names:
            return names[0]
        time.sleep(0.2)
    raise AssertionError(f"no session of process {pid}")


class Apt(E2ETest):
    """apt in a bottle on the built-in image: `claude-bottle install` from a mirror of ours, through the sidecar."""

    def test_install_from_our_mirror_through_the_sidecar(self):
        mirror = servers.apt_mirror(world.network, ["mirror"])
        self.addCleanup(mirror.close)
        image = build_apt_agent(self, "mirror")
        config = world.config(allow=["mirror"], trusted=["mirror"]).replace(f'image = "{world.debian}"',
                                                                           f'image = "{image}"')
        project = world.project(config)
        # The agent waits until the install is over, then runs `hello`: it never gets root to install anything.
        script = (f"echo {READY}; i=0; while [ ! -e /workspace/installed ] && [ $i -lt 1200 ]; do sleep 0.1; "
                  "i=$((i+1)); done; id -u; hello")
        proc = world.popen(project, script)
        wait_ready(proc)
        session = session_owned_by(proc.pid)
        bad = subprocess.run([sys.executable, str(CLI), "install", session, "hello;id"], env=world.env(),
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        install = subprocess.run([sys.executable, str(CLI), "install", session, "hello"], env=world.env(),
                                 capture_output=True, text=True, timeout=300)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        self.assertIn("http://mirror ./ Release", install.stderr)
        self.assertIn("Setting up hello", install.stderr)
        (project / "installed").touch()
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("Hello, world!", out)
        self.assertNotIn("\n0\nHello", out, "the agent itself is not root")
        self.assertRegex(err, r"reached: .*mirror \(\d+\)", "apt went through the sidecar")


if __name__ == "__main__":
    unittest.main()
