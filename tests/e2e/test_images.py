"""The built-in agent image's embedded Dockerfile builds here, up to the step that installs Claude Code.

That step needs claude.ai, which cannot be reached here, so the test builds the `base` stage with
`--target`, on a Debian root imported under the Dockerfile's base image name. An existing image of that
name (a real one) is used as it is, never replaced.
"""

import hashlib
import unittest

from tests.e2e import harness
from tests.e2e.harness import docker

import claude_bottle as cb

BASE = "debian:bookworm-slim"


def setUpModule():
    global images
    images = harness.require_engine()


class BuiltInDockerfile(unittest.TestCase):
    def test_base_stage_builds_and_has_what_the_bottle_needs(self):
        self.assertIn(f"FROM {BASE} AS base", cb.AGENT_DOCKERFILE)
        if docker("image", "inspect", BASE, check=False).returncode != 0:
            docker("tag", images["debian"], BASE)
        digest = hashlib.sha256((cb.AGENT_DOCKERFILE + docker("image", "inspect", "--format", "{{.Id}}", BASE)
                                 .stdout).encode()).hexdigest()[:12]
        tag = f"claude-bottle-test/agent-base:{digest}"
        if docker("image", "inspect", tag, check=False).returncode != 0:
            docker("build", "--target", "base", "--tag", tag, "-", input=cb.AGENT_DOCKERFILE, timeout=900)
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
