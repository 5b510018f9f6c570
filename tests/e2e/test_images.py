"""The built-in agent image's embedded Dockerfile builds here, up to the step that installs Claude Code.

That step needs claude.ai, which cannot be reached here, so tests/e2e/images.py builds the `base` stage with
`--target`, on our Debian root given as the `BASE_IMAGE` build argument: no tag outside claude-bottle-test/.
"""

import unittest

from tests.e2e import harness
from tests.e2e.harness import docker


def setUpModule():
    global images
    images = harness.require_engine()


class BuiltInDockerfile(unittest.TestCase):
    def test_base_stage_builds_and_has_what_the_bottle_needs(self):
        tag = images["agent-base"]
        probe = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c",
                       "id claude; stat -c '%U %a' /workspace /home/claude/.ssh; "
                       "for t in git ssh socat curl; do command -v $t; done").stdout
        self.assertIn("uid=1000(claude) gid=1000(claude)", probe)
        self.assertIn("claude 755", probe)
        self.assertIn("claude 700", probe)
        for tool in ("git", "ssh", "socat", "curl"):
            self.assertRegex(probe, rf"/usr/bin/{tool}\n")


    def test_apt_works_as_root_without_capabilities_and_fetches_over_https(self):
        # As `claude-bottle install` runs it: root in a container that dropped every capability.
        tag = images["agent-base"]
        proc = docker("run", "--rm", "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                      "--user", "0:0", "--entrypoint", "sh", tag, "-c",
                      "grep -rhE '^(deb|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; "
                      "stat -c 'partial %U %a' /var/cache/apt/archives/partial; apt-get update 2>&1; echo rc=$?",
                      check=False)
        out = proc.stdout
        self.assertRegex(out, r"https://deb\.debian\.org/debian")
        self.assertNotRegex(out, r"(deb|URIs:) +http://", "bulk downloads go through CONNECT, not the scanned path")
        self.assertIn("partial root 755", out)
        # No network here: the fetch fails on the name, not on dropping privileges to _apt.
        self.assertIn("deb.debian.org", out)
        self.assertNotIn("setgroups", out)
        self.assertNotIn("died unexpectedly", out)


if __name__ == "__main__":
    unittest.main()
