"""End to end: Claude Code's state kept per agent and project, --fresh, a second session, state ls/rm, gc."""

import os
import subprocess
import sys

from tests.e2e.harness import CLI, READY_ECHO, E2ETest, docker, module_fixtures, session_of, wait_ready

import claude_bottle as cb

# The agent runs as the user who runs the tests: its state is that user's.
AGENT = f"{os.getuid()}:{os.getgid()}"

world = None
setUpModule, tearDownModule = module_fixtures(globals())

# What the agent sees of its state: where CLAUDE_CONFIG_DIR points, its owner and mode, the marker of an earlier
# session, and whether it can write there.
PROBE = ('d="$CLAUDE_CONFIG_DIR"; echo "dir=$d owner=$(stat -c %u:%g "$d") mode=$(stat -c %a "$d")"; '
         'echo "marker=$(cat "$d/marker" 2>/dev/null || echo none)"; '
         'grep -q hasCompletedOnboarding "$d/.claude.json" && echo onboarded; ')


def own_volumes(session: str) -> list:
    flt = f"label=claude-bottle.session={session}"
    return docker("volume", "ls", "--format", "{{.Name}}", "--filter", flt).stdout.split()


class State(E2ETest):
    def setUp(self):
        super().setUp()
        self.project = world.project(world.config())
        self.volume = cb.state_volume_name(str(self.project.resolve()), "e2e")
        self.addCleanup(docker, "volume", "rm", "--force", self.volume, check=False)

    def cli(self, *args):
        return subprocess.run([sys.executable, str(CLI), *args], cwd=self.project, env=world.env(),
                              capture_output=True, text=True, timeout=60)

    def volume_exists(self) -> bool:
        return docker("volume", "inspect", self.volume, check=False).returncode == 0

    def test_state_persists_fresh_is_empty_and_thrown_away_and_state_rm_removes_it(self):
        first = world.start(self.project, PROBE + 'echo kept-from-one > "$CLAUDE_CONFIG_DIR/marker"')
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn(f"dir={cb.AGENT_STATE_DIR} owner={AGENT} mode=700", first.stdout, "the agent's own: the user's")
        self.assertIn("marker=none", first.stdout)
        self.assertIn("onboarded", first.stdout)
        self.assertIn(f"state:      {self.volume}", first.stdout)

        second = world.start(self.project, PROBE)
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertIn("marker=kept-from-one", second.stdout, "the next session finds the state")

        fresh = world.start(self.project, PROBE + 'touch "$CLAUDE_CONFIG_DIR/x" && echo writable', "--fresh")
        self.assertEqual(fresh.returncode, 0, fresh.stderr)
        self.assertIn("state:      fresh", fresh.stdout)
        self.assertIn("marker=none", fresh.stdout, "--fresh starts from nothing")
        self.assertIn(f"owner={AGENT}", fresh.stdout)
        self.assertIn("writable", fresh.stdout)
        self.assertNoLeftovers(session_of(fresh.stdout))
        self.assertEqual(own_volumes(session_of(fresh.stdout)), [], "its own state is thrown away")

        # gc never removes kept state.
        gc = self.cli("gc")
        self.assertEqual(gc.returncode, 0, gc.stderr)
        self.assertTrue(self.volume_exists(), "gc left the state alone")
        again = world.start(self.project, PROBE)
        self.assertIn("marker=kept-from-one", again.stdout, "--fresh did not touch the kept state")

        ls = self.cli("state", "ls")
        self.assertEqual(ls.returncode, 0, ls.stderr)
        self.assertRegex(ls.stdout, rf"(?m)^e2e +{self.volume} +{self.project.resolve()}$")
        rm = self.cli("state", "rm", "e2e")
        self.assertEqual(rm.returncode, 0, rm.stderr)
        self.assertFalse(self.volume_exists(), "state rm removed it")
        self.assertIn("no Claude Code state kept", self.cli("state", "ls").stdout)
        after = world.start(self.project, PROBE)
        self.assertIn("marker=none", after.stdout, "a new, empty state after state rm")

    def test_second_session_of_the_agent_gets_a_fresh_state_and_state_rm_refuses(self):
        # A repository: the second session, in the tree the first edits in place, works on a copy of it.
        for argv in (["init", "-q"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
            subprocess.run(["git", "-c", "safe.directory=*", *argv], cwd=self.project, check=True, capture_output=True)
        seed = world.start(self.project, 'echo from-before > "$CLAUDE_CONFIG_DIR/marker"')
        self.assertEqual(seed.returncode, 0, seed.stderr)
        holder = world.popen(self.project, f"echo {READY_ECHO}; while [ ! -e /workspace/stop ]; do sleep 0.05; done")
        wait_ready(holder)
        try:
            second = world.start(self.project, PROBE + 'echo second > "$CLAUDE_CONFIG_DIR/marker"')
            self.assertEqual(second.returncode, 0, second.stderr)
            self.assertIn(f"the state {self.volume} is in use by", second.stderr)
            self.assertIn("works on a copy", second.stderr)
            self.assertIn("marker=none", second.stdout, "its own state, not the one in use")
            self.assertNoLeftovers(session_of(second.stdout))
            self.assertEqual(own_volumes(session_of(second.stdout)), [], "its own state is thrown away")
            rm = self.cli("state", "rm", "e2e")
            self.assertEqual(rm.returncode, 1, rm.stderr)
            self.assertIn("in use by", rm.stderr)
            self.assertTrue(self.volume_exists())
        finally:
            (self.project / "stop").touch()
            holder.communicate(timeout=60)
        check = world.start(self.project, PROBE)
        self.assertIn("marker=from-before", check.stdout, "the second session wrote nothing into the kept state")


if __name__ == "__main__":
    import unittest
    unittest.main()
