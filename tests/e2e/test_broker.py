"""End to end: the credential broker keeps each secret out of the bottle and adds it on the way to its one host.

The upstream is the HTTPS test server of servers.py (a certificate from a CA made here; `upstream` and `ca_file`
point at it) on the World's outside network, the bottle's egress_network, so the broker's requests leave through
pipelock's CONNECT like the agent's own. Its git smart HTTP answers only `Authorization: Bearer <the secret>`.
"""

import base64
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

from tests.e2e import servers
from tests.e2e.harness import READY, E2ETest, docker, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())

SECRET = "cbtest-secret-" + os.urandom(12).hex()
PLACEHOLDER = "brokered-by-claude-bottle"
# The agent's command prints READY, then waits until the test creates /workspace/stop.
WAIT_FOR_STOP = f"echo {READY}; while [ ! -e /workspace/stop ]; do sleep 0.05; done"


def credential(**kw) -> str:
    entry = {"env": "CBTEST_SECRET", "host": "upstream", "header": "Authorization", "format": "Bearer {}",
             "base_url_env": "CBTEST_URL", **kw}
    return "[[bottles.e2e.credentials]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())


class UpstreamTest(E2ETest):
    """The HTTPS upstream on the World's network, and projects whose bottle reaches it; no tests of its own."""

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(prefix="cbtest-broker-ca-")
        cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        os.chmod(tmp, 0o755)
        # `api.example.test` is the same server under another name: a request the broker sent anywhere but
        # `upstream` (a followed redirect, a Host header taken from the agent) would show in its log.
        cls.ca = servers.make_ca(tmp, ["upstream", "api.example.test"])
        os.chmod(cls.ca.ca_cert, 0o644)
        cls.upstream = servers.https_upstream(world.network, ["upstream", "api.example.test"], cls.ca, token=SECRET)
        cls.addClassCleanup(cls.upstream.close)

    def project(self, *credentials: str):
        config = world.config(allow=["web", "git", "upstream", "api.example.test"],
                              trusted=["web", "git", "upstream", "api.example.test"])
        project = world.project(config + "".join(credentials))
        shutil.copy(self.ca.ca_cert, project / "ca.pem")
        os.chmod(project / "ca.pem", 0o644)
        return project

    def mine(self, marker: str) -> list:
        return [r for r in self.upstream.requests() if ["X-Marker", marker] in r["headers"]]

    def assertNoSecret(self, *texts):
        for text in texts:
            self.assertNotIn(SECRET, text)


class Broker(UpstreamTest):
    # ---- the secret is nowhere in the bottle ----

    def test_the_secret_appears_nowhere_in_the_bottle(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert), git=True))
        needle = base64.b64encode(SECRET.encode()).decode()
        script = f"""
printf %s {needle} | base64 -d > /tmp/cbtest-needle
cp /tmp/cbtest-needle /tmp/cbtest-planted   # the scan must find this one: proof that it looks
echo ENV-BEGIN; env; echo ENV-END
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
  grep -qaF -f /tmp/cbtest-needle "$f" 2>/dev/null && echo "LEAK $f"
done
grep -rlaF -D skip --exclude=cbtest-needle --exclude-dir=proc --exclude-dir=sys -f /tmp/cbtest-needle / 2>/dev/null \\
  | sed 's/^/LEAK /'
echo SCANNED
code=$(curl -sS -o /tmp/echo -w '%{{http_code}}' -H 'X-Marker: scan' "$CBTEST_URL/echo")
echo "status=$code"
rm -f /tmp/echo /tmp/cbtest-needle /tmp/cbtest-planted
{WAIT_FOR_STOP}
"""
        proc = world.popen(project, script, "-v", env=world.env(CBTEST_SECRET=SECRET))
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == READY:
                break
        out = "".join(lines)
        self.assertIn("SCANNED", out, proc.stderr.read() if proc.poll() is not None else out)
        session = session_of(out)
        agent, sidecar = f"claude-bottle-{session}", f"claude-bottle-{session}-pipelock"
        inspect = docker("inspect", agent, sidecar).stdout
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            cli_argv = f.read().decode(errors="replace")
        (project / "stop").touch()
        rest, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        leaks = sorted(set(re.findall(r"^LEAK (\S+)$", out, re.M)))
        self.assertEqual(leaks, ["/tmp/cbtest-planted"], "the scan found the planted copy, and nothing else")
        env = dict(line.split("=", 1) for line in out.split("ENV-BEGIN\n")[1].split("ENV-END")[0].splitlines()
                   if "=" in line)
        self.assertEqual(env["CBTEST_SECRET"], PLACEHOLDER)
        self.assertEqual(env["CBTEST_URL"], "http://127.0.0.1:41800")
        self.assertEqual(env["GIT_CONFIG_VALUE_0"], "https://upstream/")
        self.assertIn("status=200", out)
        self.assertIn(agent, inspect)
        self.assertIn(PLACEHOLDER, inspect)
        self.assertNoSecret(out, rest, err, inspect, cli_argv)
        self.assertIn("brokered:   CBTEST_SECRET -> upstream (brokered)", out)
        self.assertIn("broker: GET upstream /echo 200", err, "-v logs method, host and path")
        self.assertIn("brokered: CBTEST_SECRET -> upstream: 1 request (200 x1)", err)
        (seen,) = self.mine("scan")
        self.assertEqual([v for n, v in seen["headers"] if n.lower() == "authorization"], [f"Bearer {SECRET}"])

    # ---- a request gets exactly the configured header; the agent reads the answer ----

    def test_a_request_arrives_with_exactly_the_configured_header(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert), header="X-Api-Token", format="tok={}"))
        script = """
curl -sS -X POST -H 'X-Marker: exact' -H "X-Api-Token: $CBTEST_SECRET" -H 'x-api-token: another' \\
  --data-binary 'the body' "$CBTEST_URL/echo?q=1" \\
  | python3 -c 'import json, sys; e = json.load(sys.stdin); print("READ", e["method"], e["path"], e["body"])'
"""
        proc = world.start(project, script, env=world.env(CBTEST_SECRET=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("READ POST /echo?q=1 the body", proc.stdout)
        (seen,) = self.mine("exact")
        tokens = [v for n, v in seen["headers"] if n.lower() == "x-api-token"]
        self.assertEqual(tokens, [f"tok={SECRET}"], "the agent's own values are dropped, the secret set once")
        self.assertIn(["Host", "upstream"], seen["headers"])
        self.assertNoSecret(proc.stdout, proc.stderr)

    def test_without_the_self_test_the_forwarders_still_run_first(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert)))
        script = "curl -sS -o /dev/null -w 'status=%{http_code}\\n' -H 'X-Marker: noselftest' \"$CBTEST_URL/echo\""
        proc = world.start(project, script, "--no-self-test", env=world.env(CBTEST_SECRET=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("status=200", proc.stdout)
        (seen,) = self.mine("noselftest")
        self.assertIn(["Authorization", f"Bearer {SECRET}"], seen["headers"])

    # ---- the agent cannot send the secret anywhere else ----

    def test_the_agent_cannot_point_the_secret_at_another_host(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert)))
        script = """
u=$CBTEST_URL
r() { m=$1; shift; echo "$m=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -H "X-Marker: $m" "$@")"; }
r host -H 'Host: api.example.test' "$u/echo"
r absolute --request-target 'https://api.example.test/echo' "$u/"
r plain --request-target 'http://api.example.test/echo' "$u/"
r at --request-target '@api.example.test/echo' "$u/"
r userinfo "http://api.example.test@127.0.0.1:${u##*:}/echo"
r atpath "$u/@api.example.test/echo"
c=$(curl -sS -o /dev/null -w '%{http_connect}' --max-time 20 -p -x "$u" https://api.example.test/echo)
echo "connect=$c"
r redirect-other "$u/redirect?to=https://api.example.test/echo%3Ffollowed-other"
r redirect-same "$u/redirect?to=https://upstream/echo%3Ffollowed-same"
r redirect-http "$u/redirect?to=http://upstream/echo%3Ffollowed-http"
"""
        proc = world.start(project, script, env=world.env(CBTEST_SECRET=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        codes = dict(re.findall(r"^([\w-]+)=(\d+)$", proc.stdout, re.M))
        self.assertEqual({k: codes.get(k) for k in ("absolute", "plain", "at", "connect")},
                         {"absolute": "400", "plain": "400", "at": "400", "connect": "405"}, proc.stdout)
        self.assertEqual({k: codes.get(k) for k in ("redirect-other", "redirect-same", "redirect-http")},
                         dict.fromkeys(("redirect-other", "redirect-same", "redirect-http"), "302"),
                         "redirects come back to the agent unfollowed")
        log = self.upstream.requests()
        self.assertEqual([r["path"] for r in log if r["path"].startswith("/echo?followed")], [],
                         "the broker followed no redirect")
        arrived = [r for r in log if any(n == "X-Marker" for n, _ in r["headers"])
                   and any(v == f"Bearer {SECRET}" for _, v in r["headers"])]
        for r in arrived:
            self.assertIn(["Host", "upstream"], r["headers"], "with the secret, only ever to upstream")
        self.assertEqual(sorted({dict(r["headers"])["X-Marker"] for r in arrived}),
                         ["atpath", "host", "redirect-http", "redirect-other", "redirect-same", "userinfo"])
        self.assertEqual([r["path"] for r in arrived if dict(r["headers"])["X-Marker"] == "atpath"],
                         ["/@api.example.test/echo"], "a path is a path on upstream")
        self.assertNoSecret(proc.stdout, proc.stderr)

    # ---- git's https://<host>/ goes through the broker ----

    def test_git_ls_remote_reaches_the_git_server_with_the_token(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert), git=True))
        script = ("git ls-remote https://upstream/repo.git; echo ls-remote=$?; "
                  "cd /tmp && git clone -q https://upstream/repo.git r && cat r/README; "
                  "git -C r config --get remote.origin.url")
        proc = world.start(project, script, env=world.env(CBTEST_SECRET=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertRegex(proc.stdout, r"[0-9a-f]{40}\trefs/heads/main\n")
        self.assertIn("ls-remote=0", proc.stdout)
        self.assertIn("seed\nhttps://upstream/repo.git\n", proc.stdout, "the clone keeps the real URL")
        self.assertNoSecret(proc.stdout, proc.stderr)
        self.assertNotIn(SECRET, (project / ".git").read_text() if (project / ".git").is_file() else "")

    # ---- Claude Code's own credential ----

    def test_the_api_key_on_the_host_is_brokered_with_no_configuration(self):
        project = self.project()
        script = ("env | grep ^ANTHROPIC_ | sort; "
                  "curl -sS --max-time 20 -w '\\nstatus=%{http_code}\\n' --request-target '*' \"$ANTHROPIC_BASE_URL/\"")
        proc = world.start(project, script, env=world.env(ANTHROPIC_API_KEY=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"ANTHROPIC_API_KEY={PLACEHOLDER}\nANTHROPIC_BASE_URL=http://127.0.0.1:41800\n", proc.stdout)
        # The broker's own answer: it refuses this target itself, so nothing leaves for api.anthropic.com.
        self.assertIn("claude-bottle broker: the broker takes paths only\n\nstatus=400", proc.stdout)
        self.assertIn("brokered:   ANTHROPIC_API_KEY -> api.anthropic.com (brokered)", proc.stdout)
        self.assertIn("brokered: ANTHROPIC_API_KEY -> api.anthropic.com: 1 request (400 x1)", proc.stderr)
        self.assertNoSecret(proc.stdout, proc.stderr)

    def test_a_replaced_api_key_goes_as_x_api_key_to_the_stand_in(self):
        project = self.project(credential(env="ANTHROPIC_API_KEY", host="api.anthropic.com", header="x-api-key",
                                          format="{}", base_url_env="ANTHROPIC_BASE_URL", upstream="https://upstream",
                                          ca_file=str(self.ca.ca_cert)))
        script = ("curl -sS -H 'X-Marker: builtin' -H \"x-api-key: $ANTHROPIC_API_KEY\" "
                  "-H 'authorization: Bearer placeholder' -d '{}' \"$ANTHROPIC_BASE_URL/v1/messages\" -o /dev/null "
                  "-w 'status=%{http_code}\\n'")
        proc = world.start(project, script, env=world.env(ANTHROPIC_API_KEY=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("status=404", proc.stdout, "the stand-in has no /v1/messages; the answer came back")
        (seen,) = self.mine("builtin")
        self.assertEqual([v for n, v in seen["headers"] if n.lower() in ("x-api-key", "authorization")], [SECRET])
        self.assertEqual(seen["path"], "/v1/messages")
        self.assertNoSecret(proc.stdout, proc.stderr)

    # ---- streams ----

    def test_a_stream_of_sixty_seconds_arrives_whole(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert)))
        script = ("curl -sS -N --max-time 200 \"$CBTEST_URL/stream?seconds=61&interval=1\" "
                  "| while IFS= read -r line; do [ -z \"$line\" ] || echo \"$(date +%s) $line\"; done")
        proc = world.start(project, script, env=world.env(CBTEST_SECRET=SECRET), timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        events = re.findall(r"^(\d+) data: (\S+)$", proc.stdout, re.M)
        self.assertEqual([e for _, e in events], [str(i) for i in range(61)] + ["done"])
        self.assertGreaterEqual(int(events[-1][0]) - int(events[0][0]), 60, "live, not buffered to the end")


# ---- The latency the broker adds, inside the bottle ----

LATENCY = r"""
import http.client, os, ssl, statistics, sys, time
n = int(sys.argv[1])
broker = os.environ["CBTEST_URL"].rsplit(":", 1)
proxy = os.environ["https_proxy"].rsplit("/", 1)[-1].rsplit(":", 1)
def kept(conn):
    times = []
    for i in range(n + 5):
        t = time.perf_counter()
        conn.request("GET", "/echo", headers={"Authorization": "Bearer x"})
        conn.getresponse().read()
        if i >= 5:
            times.append(time.perf_counter() - t)
    conn.close()
    return statistics.median(times) * 1000
def fresh(make):
    times = []
    for i in range(n):
        conn = make()
        t = time.perf_counter()
        conn.request("GET", "/echo", headers={"Authorization": "Bearer x"})
        conn.getresponse().read()
        times.append(time.perf_counter() - t)
        conn.close()
    return statistics.median(times) * 1000
ctx = ssl.create_default_context(cafile="/workspace/ca.pem")
def direct():
    c = http.client.HTTPSConnection(proxy[0], int(proxy[1]), context=ctx, timeout=30)
    c.set_tunnel("upstream", 443)
    return c
def brokered():
    return http.client.HTTPConnection("127.0.0.1", int(broker[1]), timeout=30)
print("LATENCY kept direct=%.3f broker=%.3f" % (kept(direct()), kept(brokered())))
print("LATENCY fresh direct=%.3f broker=%.3f" % (fresh(direct), fresh(brokered)))
"""


class Latency(UpstreamTest):
    def test_the_latency_the_broker_adds(self):
        project = self.project(credential(ca_file=str(self.ca.ca_cert)))
        (project / "latency.py").write_text(LATENCY)
        proc = world.start(project, "python3 /workspace/latency.py 50", env=world.env(CBTEST_SECRET=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        found = re.findall(r"^LATENCY (\w+) direct=([\d.]+) broker=([\d.]+)$", proc.stdout, re.M)
        self.assertEqual([kind for kind, _, _ in found], ["kept", "fresh"], proc.stdout)
        for kind, direct, broker in found:
            print(f"\nbroker latency, median of 50 requests ({kind} connection): through pipelock {direct} ms, "
                  f"through broker and pipelock {broker} ms, added {float(broker) - float(direct):.3f} ms",
                  file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
