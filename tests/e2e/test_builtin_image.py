"""End to end: the built-in image's final stage, built by `start` against the stand-in installer (servers.py), and a
start whose installer cannot be fetched.

The base image debian:bookworm-slim cannot be pulled here: CLAUDE_BOTTLE_BASE_IMAGE names our Debian root instead, and
CLAUDE_BOTTLE_INSTALLER_URL the stand-in. Both are part of the tag, so the image built here is never the one a user's
start would take for the real one; the tests remove every tag they make.
"""


import os

from tests.e2e import servers
from tests.e2e.harness import E2ETest, docker, leftovers, module_fixtures, session_of

import claude_bottle as cb

world = None
setUpModule, tearDownModule = module_fixtures(globals())


def agent_tags() -> set:
    return set(docker("image", "ls", "claude-bottle/agent", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())


class BuiltInImage(E2ETest):
    def config(self) -> str:
        # The e2e bottle (our outside network) with an agent on the built-in image.
        return world.config() + '[agents.builtin]\nbottle = "e2e"\n'

    def env(self, url: str) -> dict:
        return world.env(CLAUDE_BOTTLE_INSTALLER_URL=url, CLAUDE_BOTTLE_BASE_IMAGE=world.debian)

    def expected_tag(self, url: str) -> str:
        tag = cb.agent_image_tag((("BASE_IMAGE", world.debian), ("CLAUDE_INSTALLER_URL", url)))
        self.addCleanup(docker, "image", "rm", "--force", tag, check=False)
        return tag

    def test_final_stage_builds_against_the_stand_in_and_claude_is_on_path(self):
        installer = servers.claude_installer()
        self.addCleanup(installer.close)
        # A URL of this run's own (the stand-in ignores the query): a build argument that differs, so docker's layer
        # cache of an earlier run cannot stand in for the fetch.
        url = f"{installer.url}?cbtest={os.urandom(4).hex()}"
        tag = self.expected_tag(url)
        self.assertNotEqual(tag, cb.AGENT_IMAGE)
        project = world.project(self.config())
        self.addCleanup(docker, "volume", "rm", "--force",
                        cb.state_volume_name(str(project.resolve()), "builtin"), check=False)
        proc = world.start(project, 'command -v claude; claude --version; echo "config=$CLAUDE_CONFIG_DIR"',
                           agent="builtin", env=self.env(url), timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn(f"image:      {tag} (built-in; built if missing)", proc.stdout)
        self.assertIn("/home/claude/.local/bin/claude\n", proc.stdout)
        self.assertIn(f"{servers.CLAUDE_VERSION} (Claude Code)\n", proc.stdout)
        self.assertIn(f"config={cb.AGENT_STATE_DIR}", proc.stdout)
        self.assertIn(tag, agent_tags())
        paths = [r["path"] for r in installer.requests()]
        self.assertIn(url.split(":8080", 1)[1], paths, "the build fetched the installer from the URL given")
        self.assertNoLeftovers(session_of(proc.stdout))
        # Built once: the next start reuses the tag and fetches nothing.
        again = world.start(project, "claude --version", agent="builtin", env=self.env(url))
        self.assertEqual(again.returncode, 0, again.stderr[-2000:])
        self.assertNotIn("building the agent image", again.stderr)
        self.assertEqual(len(installer.requests()), len(paths))

    def test_unreachable_installer_fails_the_start_and_tags_nothing(self):
        url = "http://127.0.0.1:1/install.sh"
        tag = self.expected_tag(url)
        before = agent_tags()
        stopped = docker("ps", "--all", "--quiet", "--filter", "status=exited").stdout.split()
        project = world.project(self.config())
        proc = world.start(project, "true", agent="builtin", env=self.env(url), timeout=600)
        self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("claude-bottle: error: the built-in agent image was not built: "), last)
        self.assertIn(f"installer {url} could not be fetched", last)
        self.assertIn("image =", last)
        self.assertNotIn(tag, agent_tags(), "no image tagged")
        self.assertEqual(agent_tags() - before, set(), "no claude-bottle/agent:* tag left")
        self.assertEqual(leftovers(session_of(proc.stdout)), [])
        left = set(docker("ps", "--all", "--quiet", "--filter", "status=exited").stdout.split()) - set(stopped)
        self.assertEqual(left, set(), "the failed build step's container is removed (--force-rm)")
        state = cb.state_volume_name(str(project.resolve()), "builtin")
        self.assertNotEqual(docker("volume", "inspect", state, check=False).returncode, 0, "no state volume made")


if __name__ == "__main__":
    import unittest
    unittest.main()
