"""End to end: plain HTTP at wire speed by default (plain_http = "tunnel", issue 26), on the real engine.

One bottle on an image of ours whose apt sources say `http://` (the built-in image's base stage, pointed at our
mirror): a 9 MB download over plain HTTP beside the same download without any proxy (the times and their ratio
are printed, not asserted), a host not allowed and an allowed host at a private address refused (403, pipelock's
reason), and `claude-bottle install SESSION hello` (apt-get update and install over http://) through the sidecar.
"""

import statistics
import subprocess
import sys
import unittest

import claude_bottle as cb
from tests.e2e import servers
from tests.e2e.harness import CLI, READY, E2ETest, docker, module_fixtures, wait_ready
from tests.e2e.test_egress import build_apt_agent, session_owned_by

world = None
setUpModule, tearDownModule = module_fixtures(globals())

BIG_MB = 9
RUNS = 3
CURL = "curl -s --max-time 600 -o /dev/null -w '%{http_code} %{time_total} %{size_download}\\n'"


def times(text: str, label: str) -> list:
    """The seconds of the `label` lines (`label CODE SECONDS BYTES`) whose download was whole."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith(label + " ")]
    return [float(t) for code, t, size in rows if code == "200" and int(size) == BIG_MB * 1000000]


class PlainHttp(E2ETest):
    def test_wire_speed_refusals_and_apt_over_http(self):
        # One server under three names: allowed and trusted, allowed at a private address, not allowed.
        mirror = servers.apt_mirror(world.network, ["mirror", "private", "elsewhere"])
        self.addCleanup(mirror.close)
        docker("exec", mirror.name, "sh", "-c", f"head -c {BIG_MB * 1000000} /dev/urandom > {servers.SRV}/apt/big.bin")
        direct = servers.client(world.network, f"for i in $(seq {RUNS}); do printf 'direct '; {CURL} "
                                               "http://mirror/big.bin; done", timeout=600)
        self.assertEqual(direct.returncode, 0, direct.stderr)
        image = build_apt_agent(self, "mirror")
        config = world.config(allow=["mirror", "private"], trusted=["mirror"]).replace(
            f'image = "{world.debian}"', f'image = "{image}"')
        project = world.project(config)
        # Before READY, into a file: wait_ready reads the agent's output up to READY.
        script = (f"{{ for i in $(seq {RUNS}); do printf 'bottle '; {CURL} http://mirror/big.bin; done; "
                  "curl -s -w ' elsewhere=%{http_code}\\n' http://elsewhere/Release; "
                  "curl -s -w ' private=%{http_code}\\n' http://private/Release; } > /workspace/out.txt 2>&1; "
                  f"echo {READY}; i=0; while [ ! -e /workspace/installed ] && [ $i -lt 3000 ]; do sleep 0.1; "
                  "i=$((i+1)); done; hello")
        proc = world.popen(project, script)
        wait_ready(proc)
        session = session_owned_by(proc.pid)
        install = subprocess.run([sys.executable, str(CLI), "install", session, "hello"], env=world.env(),
                                 capture_output=True, text=True, timeout=600)
        (project / "installed").touch()
        out, err = proc.communicate(timeout=300)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        self.assertIn("http://mirror ./ Release", install.stderr)
        self.assertIn("Setting up hello", install.stderr)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("Hello, world!", out)
        out = (project / "out.txt").read_text()
        # Refused as before, with pipelock's reason as the answer.
        self.assertIn("domain not in allowlist: elsewhere\n elsewhere=403", out)
        self.assertRegex(out, r"SSRF[^\n]*private[^\n]*\n private=403")
        self.assertIn(f"  {cb.PLAIN_HTTP_PER_TUNNEL}", err)
        self.assertRegex(err, r"reached: .*mirror \(\d+\)")
        self.assertRegex(err, r"elsewhere \(1\) allowlist")
        self.assertRegex(err, r"private \(1\) ssrf")
        # The same file directly and in the bottle: printed, not asserted (a loaded machine must not fail it).
        d, b = times(direct.stdout, "direct"), times(out, "bottle")
        self.assertEqual((len(d), len(b)), (RUNS, RUNS), direct.stdout + out)
        ratio = statistics.median(b) / statistics.median(d)
        print(f"\n  plain HTTP, {BIG_MB} MB: direct {statistics.median(d):.3f} s, in a bottle (plain_http = "
              f"\"tunnel\") {statistics.median(b):.3f} s: {ratio:.1f}x direct (issue 26 asks for at most 3x; "
              f"{RUNS} runs each, medians)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    unittest.main()
