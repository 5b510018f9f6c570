"""Real clients from Debian drive the CLI: tmux answers the y/N prompt on a terminal, and pre-commit runs
the hook this repository offers. Both against a fake docker; skipped when the client is missing unless
CI is set.
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from tests.test_cli import CLI, ROOT, CliTest


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{tool} is missing, and CI is set: install it (.ci/run does)")
        raise unittest.SkipTest(f"{tool} is not installed")
    return path


class Prompt(CliTest):
    """`start` asks `Start this bottle? [y/N]` on a terminal; tmux is the terminal."""

    def setUp(self):
        super().setUp()
        require("tmux")
        self.socket = f"cbtest-{os.getpid()}-{id(self)}"
        self.addCleanup(subprocess.run, ["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def run_in_tmux(self, answer: str | None, env: dict) -> tuple:
        script = self.fake.tmpdir.parent / "run.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script.write_text(f"{exports}cd {shlex.quote(str(self.project))}\n"
                          f"{shlex.quote(sys.executable)} {shlex.quote(str(CLI))} start -- true\n"
                          "echo EXIT=$?\nsleep 60\n")
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-x", "200", "-y", "50",
                        f"sh {shlex.quote(str(script))}"], check=True)
        screen = self.wait_for("Start this bottle? [y/N]")
        if answer is not None:
            subprocess.run(["tmux", "-L", self.socket, "send-keys", answer, "Enter"], check=True)
        return screen, self.wait_for("EXIT=")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "-L", self.socket, "capture-pane", "-p", "-J", "-S", "-100"],
                                    capture_output=True, text=True).stdout
            if text in screen:
                return screen
            time.sleep(0.05)
        self.fail(f"{text!r} never appeared:\n{screen}")

    def test_no_is_the_default(self):
        screen, end = self.run_in_tmux("", self.env())
        self.assertIn("6 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +3 more)", screen)
        self.assertIn("Not started.", end)
        self.assertIn("EXIT=1", end)
        self.assertEqual(self.fake.calls(), [], "nothing may touch docker before the answer")

    def test_n(self):
        _, end = self.run_in_tmux("n", self.env())
        self.assertIn("EXIT=1", end)
        self.assertEqual(self.fake.calls(), [])

    def test_yes_starts(self):
        screen, end = self.run_in_tmux("y", self.env(start_rc=0))
        # The first command comes after the answer: a read of the sessions on the engine.
        self.assertEqual(self.fake.calls()[0]["argv"][:2], ["ps", "--all"])
        self.assertIn("EXIT=0", end)
        self.assertTrue(any(c["argv"][0] == "start" for c in self.fake.calls()))
        create = next(c["argv"] for c in self.fake.calls() if c["argv"][0] == "create")
        self.assertIn("--tty", create, "a terminal gets a TTY in the bottle")


class PreCommitHook(unittest.TestCase):
    """The `claude-bottle-check` hook from .pre-commit-hooks.yaml, run by pre-commit itself."""

    def setUp(self):
        require("pre-commit")
        require("git")
        tmp = tempfile.TemporaryDirectory(prefix="cbtest-precommit-")
        self.addCleanup(tmp.cleanup)
        self.repo = Path(tmp.name) / "project"
        self.repo.mkdir()
        self.env = {**os.environ, "PRE_COMMIT_HOME": str(Path(tmp.name) / "cache"),
                    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        subprocess.run(["git", "init", "-q"], cwd=self.repo, check=True, env=self.env)

    def run_hook(self, config: str) -> subprocess.CompletedProcess:
        (self.repo / "claude-bottle.toml").write_text(config)
        subprocess.run(["git", "add", "-A"], cwd=self.repo, check=True, env=self.env)
        return subprocess.run(["pre-commit", "try-repo", str(ROOT), "claude-bottle-check", "--all-files"],
                              cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=300)

    def test_valid_config_passes(self):
        proc = self.run_hook('[bottles.web]\nallow = ["github.com"]\n[agents.a]\nbottle = "web"\n')
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"claude-bottle check\.+Passed")

    def test_broken_config_fails_with_the_error(self):
        proc = self.run_hook('[bottles.web]\nalow = ["github.com"]\n')
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"claude-bottle check\.+Failed")
        self.assertIn("unknown key 'alow'; did you mean 'allow'?", proc.stdout)


if __name__ == "__main__":
    unittest.main()
