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


if __name__ == "__main__":
    unittest.main()
