"""End to end, without claude-bottle: the equipment other e2e tests stand on (images.py, servers.py) on its own."""

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import unittest

from tests.e2e import harness, servers
from tests.e2e.harness import TEST_LABEL, docker

images = None
network = None  # one internal network for the module: nothing here needs the internet


def setUpModule():
    global images, network
    images = harness.require_engine()
    network = f"cbtest-{os.urandom(3).hex()}-servers"
    docker("network", "create", "--internal", "--label", TEST_LABEL, network)
    unittest.addModuleCleanup(docker, "network", "rm", network, check=False)


def run(image, script, *args):
    return docker("run", "--rm", "--pull", "never", "--network", "none", "--label", TEST_LABEL, *args, image,
                  "sh", "-c", script, check=False)


class Images(unittest.TestCase):
    def test_busybox_image_holds_busybox_and_its_applets_only(self):
        proc = run(images["busybox"], "echo ok; test -e /etc/passwd || echo no-passwd; "
                   "test -e /tmp || echo no-tmp; test -e /home || echo no-home; readlink /bin/sh; id -u")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.split(), ["ok", "no-passwd", "no-tmp", "no-home", "/bin/busybox", "0"])
        saved = subprocess.run(["docker", "image", "save", images["busybox"]], capture_output=True, check=True)
        paths = set()
        with tarfile.open(fileobj=io.BytesIO(saved.stdout)) as image:
            for member in image.getmembers():
                if member.name.endswith("/layer.tar"):
                    with tarfile.open(fileobj=image.extractfile(member)) as layer:
                        paths |= {(m.name, m.linkname) for m in layer.getmembers()}
        self.assertIn(("bin/busybox", ""), paths)
        others = {p for p in paths if p not in {("bin", ""), ("bin/busybox", "")} and p[1] != "/bin/busybox"}
        self.assertEqual(others, set(), "every other file in the image is a symlink to /bin/busybox")
        self.assertGreater(len(paths), 100)

    def test_nouser_image_has_no_uid_1000(self):
        proc = run(images["nouser"], "id 1000; echo id=$?; getent passwd 1000; getent group 1000; echo getent=$?; "
                   "ls -A /home; test -e /workspace || echo no-workspace")
        self.assertEqual(proc.stdout.split(), ["id=1", "getent=2", "no-workspace"])

    def test_node_image_has_node_as_uid_1000(self):
        proc = run(images["node"], "getent passwd 1000; getent group 1000; stat -c '%U:%G %a' /home/node; id -un",
                   "--user", "1000")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.splitlines(),
                         ["node:x:1000:1000::/home/node:/bin/bash", "node:x:1000:", "node:node 755", "node"])


class HttpsUpstream(unittest.TestCase):
    TOKEN = "cbtest-" + os.urandom(8).hex()

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(prefix="cbtest-ca-")
        cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        cls.ca = servers.make_ca(tmp, ["upstream", "api.example.test"])
        cls.upstream = servers.https_upstream(network, ["upstream", "api.example.test"], cls.ca, token=cls.TOKEN)
        cls.addClassCleanup(cls.upstream.close)

    def client(self, script):
        proc = servers.client(network, script, files=[self.ca.ca_cert])
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc.stdout

    def test_certificate_is_for_the_names_and_signed_by_the_ca(self):
        text = subprocess.run(["openssl", "x509", "-in", self.ca.cert, "-noout", "-text"], capture_output=True,
                              text=True, check=True).stdout
        self.assertIn("DNS:upstream, DNS:api.example.test", text)
        verify = subprocess.run(["openssl", "verify", "-CAfile", self.ca.ca_cert, self.ca.cert],
                                capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

    def test_echo_returns_method_headers_in_order_and_body(self):
        out = self.client("curl -sS --cacert /cbtest/ca.pem -X PUT -H 'X-One: 1' -H 'x-two: two words' "
                          "--data-binary 'the body' https://api.example.test/echo?q=1")
        echo = json.loads(out)
        self.assertEqual((echo["method"], echo["path"], echo["body"]), ("PUT", "/echo?q=1", "the body"))
        names = [name for name, _ in echo["headers"]]
        self.assertEqual(echo["headers"][0], ["Host", "api.example.test"])
        self.assertLess(names.index("X-One"), names.index("x-two"))
        self.assertIn(["x-two", "two words"], echo["headers"])

    def test_stream_yields_events_over_time(self):
        out = self.client("curl -sS -N -D /tmp/h --cacert /cbtest/ca.pem "
                          "'https://upstream/stream?seconds=2&interval=0.5'"
                          " | while IFS= read -r line; do [ -z \"$line\" ] || echo \"$(date +%s.%N) $line\"; done;"
                          " tr -d '\\r' < /tmp/h | grep -i -e '^content-type' -e '^transfer-encoding'")
        events = re.findall(r"^(\S+) data: (\S+)$", out, re.M)
        self.assertEqual([e for _, e in events], ["0", "1", "2", "3", "done"])
        # A lower bound only: the server sleeps between events, so a stream that is not buffered end to end spreads
        # them over about 2 s however slow the machine; a buffered one would deliver them together.
        self.assertGreater(float(events[-1][0]) - float(events[0][0]), 1.0)
        self.assertIn("Content-Type: text/event-stream", out)
        self.assertIn("Transfer-Encoding: chunked", out)

    def test_redirect(self):
        out = self.client("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' --cacert /cbtest/ca.pem "
                          "'https://upstream/redirect?to=https://elsewhere.test/x'")
        self.assertEqual(out, "302 https://elsewhere.test/x")

    def test_requests_lists_what_arrived(self):
        marker = os.urandom(4).hex()
        self.client(f"curl -sS -o /dev/null --cacert /cbtest/ca.pem -H 'X-Marker: {marker}' https://upstream/echo")
        seen = [r for r in self.upstream.requests() if ["X-Marker", marker] in r["headers"]]
        self.assertEqual([(r["method"], r["path"], r["status"]) for r in seen], [("GET", "/echo", 200)])
        self.assertIn(["Host", "upstream"], seen[0]["headers"])

    def test_git_over_https_needs_the_bearer_token(self):
        marker = os.urandom(4).hex()
        out = self.client(f"""
git config --global http.sslCAInfo /cbtest/ca.pem
git config --global http.extraHeader 'X-Marker: {marker}'
auth='http.extraHeader=Authorization: Bearer {self.TOKEN}'
git -c "$auth" ls-remote https://upstream/repo.git
cd /tmp && git -c "$auth" clone -q https://upstream/repo.git repo && cat repo/README
# A pack bigger than http.postBuffer goes up with a chunked request body.
cd repo && head -c 300000 /dev/urandom > big && git add big
git -c user.name=t -c user.email=t@example.test commit -qm big
git -c "$auth" -c http.postBuffer=65536 push -q origin main && echo pushed
GIT_TERMINAL_PROMPT=0 git ls-remote https://upstream/repo.git; echo no-token=$?
GIT_TERMINAL_PROMPT=0 git -c 'http.extraHeader=Authorization: Bearer wrong' ls-remote https://upstream/repo.git
echo wrong-token=$?
curl -s -o /dev/null -w 'curl=%{{http_code}}\\n' --cacert /cbtest/ca.pem https://upstream/repo.git/info/refs
""")
        self.assertRegex(out, r"\trefs/heads/main\n")
        self.assertIn("seed\npushed\n", out)
        self.assertIn("no-token=128", out)
        self.assertIn("wrong-token=128", out)
        self.assertIn("curl=401", out)
        log = docker("exec", self.upstream.name, "git", "--git-dir=/srv/git/repo.git", "log", "--format=%s").stdout
        self.assertEqual(log.split(), ["big", "seed"])
        mine = [r for r in self.upstream.requests() if ["X-Marker", marker] in r["headers"]]
        statuses = [(r["path"].split("?")[0], r["status"]) for r in mine]
        self.assertIn(("/repo.git/git-receive-pack", 200), statuses)
        self.assertTrue(any(["Transfer-Encoding", "chunked"] in r["headers"] for r in mine
                            if r["path"] == "/repo.git/git-receive-pack"), "the push went up chunked")
        self.assertEqual(statuses[-2:], [("/repo.git/info/refs", 401)] * 2, "the last two: no token, wrong token")


class AptMirror(unittest.TestCase):
    def test_apt_installs_hello_from_the_mirror_alone(self):
        mirror = servers.apt_mirror(network, ["mirror"])
        self.addCleanup(mirror.close)
        self.assertEqual(servers.sources_line("mirror"), "deb [trusted=yes] http://mirror/ ./")
        proc = servers.client(network, f"""set -e
rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/*
echo '{servers.sources_line("mirror")}' > /etc/apt/sources.list
apt-get update
apt-get install -y hello
hello
""")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("Get:2 http://mirror ./ Release", proc.stdout)
        self.assertNotIn("deb.debian.org", proc.stdout)
        self.assertIn("Setting up hello", proc.stdout)
        self.assertTrue(proc.stdout.endswith("Hello, world!\n"), proc.stdout[-300:])


class ClaudeInstaller(unittest.TestCase):
    VERSION = servers.CLAUDE_VERSION

    @classmethod
    def setUpClass(cls):
        cls.installer = servers.claude_installer()
        cls.addClassCleanup(cls.installer.close)

    def test_docker_build_installs_claude_as_a_user(self):
        # --no-cache: the RUN line, and so a cached layer, can be the same from one test run to the next.
        dockerfile = (f"FROM {images['debian']}\nUSER claude\n"
                      f"RUN cd && curl -fsSL {self.installer.url} | bash -s {self.VERSION} "
                      f"&& PATH=$HOME/.local/bin:$PATH && claude --version && readlink ~/.local/bin/claude\n")
        proc = docker("build", "--no-cache", "--force-rm", "-", input=dockerfile, timeout=300,
                      env=dict(os.environ, DOCKER_BUILDKIT="0"))
        built = re.search(r"^Successfully built (\w+)$", proc.stdout, re.M).group(1)
        self.addCleanup(docker, "image", "rm", built, check=False)
        self.assertIn("Setting up Claude Code...", proc.stdout)
        self.assertIn(f"\n{self.VERSION} (Claude Code)\n/home/claude/.local/share/claude/versions/{self.VERSION}\n",
                      proc.stdout)
        paths = [r["path"] for r in self.installer.requests()]
        self.assertIn(f"/claude-code-releases/{self.VERSION}/linux-x64/claude", paths)

    def test_downloaded_script_takes_latest_and_refuses_a_bad_target(self):
        proc = servers.client("bridge", f"""cd
curl -fsSL -o install.sh {self.installer.url}
bash install.sh bogus; echo bogus=$?
bash install.sh latest >/dev/null && ~/.local/bin/claude --version
bash install.sh 2.0.1 >/dev/null && ~/.local/bin/claude --version && ls ~/.local/share/claude/versions | tr '\\n' ' '
""", user="claude")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("Usage: install.sh [stable|latest|VERSION]", proc.stderr)
        self.assertEqual(proc.stdout.splitlines(),
                         ["bogus=1", f"{self.VERSION} (Claude Code)", "2.0.1 (Claude Code)", f"2.0.1 {self.VERSION} "])


if __name__ == "__main__":
    unittest.main()
