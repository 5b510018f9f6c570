"""A fresh machine: the README's two commands, typed in a fresh clone, do all the set-up.

The first command (with --dry-run) runs in a fresh `git clone` of this repository and from another project, against a
fake docker; the second, `make test`, runs `tests/prereqs.sh` before any test. That script is checked with fakes of
id, dpkg-query, apt-get and sudo first on PATH: nothing is ever installed here.
"""

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from tests.fakedocker import FakeDocker

ROOT = Path(__file__).resolve().parent.parent
PREREQS = ROOT / "tests" / "prereqs.sh"
SKIP_HINT = "CLAUDE_BOTTLE_NO_INSTALL=1 make test"
# What the suite needs after this round; the script may list more.
NEEDED = ("debootstrap python3-yaml socat openssh-client tmux pre-commit make git busybox-static openssl dpkg-dev "
          "apt-utils python3-pyflakes ca-certificates curl strace").split()
# Variables a surrounding `make` passes down; the runs here must see what a newcomer's shell has.
MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "TESTFLAGS", "PYTHON")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{tool} is missing, and CI is set: install it (make test does)")
        raise unittest.SkipTest(f"{tool} is not installed")
    return path


def two_commands(readme: str) -> list:
    """The argv of each command in the README's "The two commands that matter first" block."""
    section = readme.split("## The two commands that matter first", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


# ---- Fakes for the prerequisite step ----

FAKES = {
    # id -u: $FAKE_UID (default 0).
    "id": '[ "$1" = -u ] && echo "${FAKE_UID:-0}"\n',
    # dpkg-query -W -f=... NAME: installed unless NAME is in $FAKE_MISSING.
    "dpkg-query": 'for a; do name=$a; done\n'
                  'case " $FAKE_MISSING " in *" $name "*)\n'
                  '    echo "dpkg-query: no packages found matching $name" >&2; exit 1 ;;\nesac\n'
                  "printf 'install ok installed'\n",
    "apt-get": 'echo "apt-get $*" >> "$FAKE_LOG"\n',
    # sudo: works without a password only when FAKE_SUDO=ok, and then runs its command.
    "sudo": '[ "${FAKE_SUDO:-}" = ok ] || { echo "sudo: a password is required" >&2; exit 1; }\n'
            'echo "sudo $*" >> "$FAKE_LOG"\n[ "$1" = -n ] && shift\nexec "$@"\n',
}


class Fakes:
    """A bin directory of fakes and the log they write; `env()` gives the environment to run the script in."""

    def __init__(self, names=tuple(FAKES)):
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-prereqs-")
        root = Path(self._tmp.name)
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        self.log.touch()
        for name in names:
            exe = self.bin / name
            exe.write_text("#!/bin/sh\n" + FAKES[name])
            exe.chmod(0o755)

    def close(self):
        self._tmp.cleanup()

    def env(self, uid=0, missing="", path=None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CLAUDE_BOTTLE_", "FAKE_")) and k not in MAKE_VARS and k != "CI"}
        path = os.environ.get("PATH", "") if path is None else path
        env.update(PATH=os.pathsep.join(p for p in (str(self.bin), path) if p),
                   FAKE_UID=str(uid), FAKE_MISSING=missing, FAKE_LOG=str(self.log), **extra)
        return env

    def calls(self) -> list:
        return self.log.read_text().splitlines()


class Prereqs(unittest.TestCase):
    """tests/prereqs.sh: the one list, installed when missing, or named in one line with exit 2."""

    def setUp(self):
        self.fakes = Fakes()
        self.addCleanup(self.fakes.close)

    def run_script(self, *args, env) -> subprocess.CompletedProcess:
        return subprocess.run([shutil.which("sh") or "/bin/sh", str(PREREQS), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def test_the_list_holds_what_the_suite_needs(self):
        listed = self.run_script("--list", env=self.fakes.env()).stdout.split()
        self.assertEqual(len(listed), len(set(listed)), "a package is listed twice")
        for name in NEEDED:
            self.assertIn(name, listed)

    def test_the_list_lives_only_in_the_script(self):
        ci = (ROOT / ".ci" / "run").read_text()
        self.assertNotIn("apt-get", ci)
        self.assertRegex(ci, r"(?m)^make test\b", ".ci/run runs make test")
        listed = self.run_script("--list", env=self.fakes.env()).stdout.split()
        for name in listed:
            if name != "make":
                self.assertNotRegex(ci, rf"(?<![\w-]){re.escape(name)}(?![\w-])", f"{name} is named in .ci/run")

    def test_everything_present_installs_nothing(self):
        for uid in (0, 1000):
            proc = self.run_script(env=self.fakes.env(uid=uid))
            self.assertEqual((proc.returncode, proc.stdout, proc.stderr), (0, "", ""))
        self.assertEqual(self.fakes.calls(), [])

    def test_without_root_or_sudo_it_names_the_packages_and_stops(self):
        proc = self.run_script(env=self.fakes.env(uid=1000, missing="socat tmux"))
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stdout, "")
        self.assertEqual(proc.stderr, "prereqs: the tests need socat tmux; install them as root "
                                      "(apt-get install socat tmux) and run make test again, or run without them: "
                                      f"{SKIP_HINT}\n")
        self.assertEqual(self.fakes.calls(), [])

    def test_as_root_it_says_what_it_installs_then_installs_it(self):
        proc = self.run_script(env=self.fakes.env(uid=0, missing="debootstrap pre-commit"))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout,
                         f"prereqs: installing debootstrap pre-commit with apt-get (to skip: {SKIP_HINT})\n")
        self.assertEqual(self.fakes.calls(), ["apt-get update -qq",
                                              "apt-get install -y -qq --no-install-recommends debootstrap pre-commit"])

    def test_with_passwordless_sudo_it_installs_through_sudo(self):
        proc = self.run_script(env=self.fakes.env(uid=1000, missing="curl", FAKE_SUDO="ok"))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, f"prereqs: installing curl with sudo apt-get (to skip: {SKIP_HINT})\n")
        self.assertEqual(self.fakes.calls(), [
            "sudo -n true",
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
            "apt-get update -qq",
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl",
            "apt-get install -y -qq --no-install-recommends curl",
        ])

    def test_the_skip_variable_installs_nothing_and_lets_the_tests_run(self):
        proc = self.run_script(env=self.fakes.env(uid=1000, missing="tmux", CLAUDE_BOTTLE_NO_INSTALL="1"))
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        self.assertEqual(proc.stdout, "prereqs: not installing tmux (CLAUDE_BOTTLE_NO_INSTALL=1); the tests that need "
                                      "them skip, or fail under CI\n")
        self.assertEqual(self.fakes.calls(), [])

    def test_check_only_names_what_is_missing(self):
        proc = self.run_script("--check", env=self.fakes.env(uid=0, missing="openssl git"))
        self.assertEqual((proc.returncode, proc.stdout, proc.stderr), (2, "", "prereqs: missing: git openssl\n"))
        self.assertEqual(self.run_script("--check", env=self.fakes.env(uid=0)).returncode, 0)
        self.assertEqual(self.fakes.calls(), [])

    def test_without_apt_it_names_every_package_and_stops(self):
        fakes = Fakes(names=("id", "sudo"))
        self.addCleanup(fakes.close)
        listed = self.run_script("--list", env=fakes.env()).stdout.split()
        proc = self.run_script(env=fakes.env(uid=0, path=""))
        self.assertEqual((proc.returncode, proc.stdout), (2, ""), proc.stderr)
        self.assertEqual(proc.stderr, "prereqs: no dpkg-query and apt-get here; install these packages or their "
                                      f"equivalents: {' '.join(listed)}; then run {SKIP_HINT}\n")
        skipped = self.run_script(env=fakes.env(uid=0, path="", CLAUDE_BOTTLE_NO_INSTALL="1"))
        self.assertEqual((skipped.returncode, skipped.stdout, skipped.stderr), (0, "", ""))


class FreshClone(unittest.TestCase):
    """A `git clone` of this repository's HEAD, and the README's two commands typed in it."""

    @classmethod
    def setUpClass(cls):
        require("git")
        if not (ROOT / ".git").exists():
            if os.environ.get("CI"):
                raise AssertionError(f"{ROOT} is not a git checkout, and CI is set")
            raise unittest.SkipTest("not a git checkout")
        cls._tmp = tempfile.TemporaryDirectory(prefix="cb-fresh-")
        cls.tmp = Path(cls._tmp.name).resolve()
        cls.clone = cls.tmp / "claude-bottle"
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(cls.clone)], check=True,
                       capture_output=True, timeout=120)
        cls.commands = two_commands((cls.clone / "README.md").read_text())

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def setUp(self):
        self.fake = FakeDocker()
        self.addCleanup(self.fake.close)
        home = tempfile.TemporaryDirectory(prefix="cb-home-")
        self.addCleanup(home.cleanup)
        self.home = home.name

    def env(self, **extra) -> dict:
        env = self.fake.env(HOME=self.home, **extra)
        for name in MAKE_VARS:
            env.pop(name, None)
        return env

    def test_the_readme_names_the_tool_then_make_test(self):
        self.assertEqual(len(self.commands), 2, self.commands)
        tool, test = self.commands
        self.assertEqual(tool[:3], ["python3", "claude_bottle.py", "start"])
        self.assertEqual(test, ["make", "test"])

    def dry_run(self, argv, cwd: Path) -> subprocess.CompletedProcess:
        proc = subprocess.run([*argv, "--dry-run"], cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("(dry run: none was run)", proc.stdout)
        self.assertEqual(self.fake.calls(), [], "a dry run called docker")
        return proc

    def test_the_first_command_as_typed_in_the_clone(self):
        proc = self.dry_run(self.commands[0], self.clone)
        self.assertIn(f"workspace:  {self.clone} -> /workspace", proc.stdout)

    def test_the_first_command_from_another_project(self):
        project = self.tmp / "project"
        project.mkdir(exist_ok=True)
        argv = list(self.commands[0])
        argv[1] = str(self.clone / argv[1])
        proc = self.dry_run(argv, project)
        self.assertIn(f"workspace:  {project} -> /workspace", proc.stdout)

    def test_make_test_runs_the_prerequisite_step_first(self):
        require("make")
        make, target = self.commands[1]
        proc = subprocess.run([make, "-n", target], cwd=self.clone, env=self.env(), capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], "sh tests/prereqs.sh")
        self.assertTrue(lines[1].startswith("python3 tests/run.py"), lines)

    def test_make_test_without_root_stops_before_any_test(self):
        require("make")
        fakes = Fakes()
        self.addCleanup(fakes.close)
        env = fakes.env(uid=1000, missing="tmux pre-commit")
        # Should the step not stop make, `false` stands in for python3: no test suite runs inside this one.
        env["PYTHON"] = "false"
        proc = subprocess.run(self.commands[1], cwd=self.clone, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        self.assertEqual(proc.stdout, "sh tests/prereqs.sh\n")
        self.assertIn("prereqs: the tests need tmux pre-commit; install them as root", proc.stderr.splitlines()[0])
        self.assertEqual(fakes.calls(), [])


class E2EImagesAsNonRoot(unittest.TestCase):
    """A user in the docker group cannot debootstrap the e2e image: skip saying how, or fail under CI."""

    def require_engine(self, **environ):
        from tests.e2e import harness, images
        answered = subprocess.CompletedProcess(["docker", "info"], 0)
        with mock.patch.dict(os.environ, environ), \
                mock.patch.object(harness.shutil, "which", return_value="/usr/bin/docker"), \
                mock.patch.object(harness.subprocess, "run", return_value=answered), \
                mock.patch.object(harness.os, "geteuid", return_value=1000), \
                mock.patch.object(images, "image_exists", return_value=False), \
                mock.patch.object(images, "ensure_images", side_effect=AssertionError("a build was attempted")):
            os.environ.pop("CLAUDE_BOTTLE_E2E", None)
            if "CI" not in environ:
                os.environ.pop("CI", None)
            return harness.require_engine()

    def test_outside_ci_the_tests_skip_with_the_fix(self):
        with self.assertRaises(unittest.SkipTest) as caught:
            self.require_engine()
        self.assertIn("building them needs root (debootstrap): run `sudo make images` once", str(caught.exception))

    def test_under_ci_they_fail(self):
        with self.assertRaisesRegex(RuntimeError, "needs root .* and CI is set"):
            self.require_engine(CI="1")


class E2ESecondEngineCannotStart(unittest.TestCase):
    """The second engine (tests/e2e/remote.py) that cannot be built or started: skip in one line, or fail under CI."""

    def start(self, failure, **environ):
        from tests.e2e import remote
        # OpenSSH present, as where the engine itself fails (a fresh machine has no ssh: that skip comes first).
        with mock.patch.dict(os.environ, environ), mock.patch.object(remote, "RemoteEngine", side_effect=failure), \
                mock.patch.object(remote.shutil, "which", return_value="/usr/bin/ssh-keygen"), \
                mock.patch.object(remote, "SSH_BIN", str(PREREQS)):
            if "CI" not in environ:
                os.environ.pop("CI", None)
            return remote.start_or_skip()

    def test_outside_ci_it_skips_with_the_reason_in_one_line(self):
        from tests.e2e import images, remote
        for failure, reason in (
                (remote.RemoteEngineError("docker run failed (125): docker: Error response from daemon: unable to "
                                          "apply caps\nRun 'docker run --help' for more information"),
                 "e2e: the second engine cannot start here: docker run failed (125): docker: Error response from "
                 "daemon: unable to apply caps | Run 'docker run --help' for more information"),
                (images.ImageBuildError("debootstrap not found; install it with: apt-get install debootstrap"),
                 "e2e: no second engine: debootstrap not found; install it with: apt-get install debootstrap")):
            with self.subTest(reason=reason), self.assertRaises(unittest.SkipTest) as caught:
                self.start(failure)
            self.assertEqual(str(caught.exception), reason)

    def test_under_ci_it_fails(self):
        from tests.e2e import remote
        with self.assertRaisesRegex(RuntimeError, "^e2e: the second engine cannot start here: no answer, and CI is "
                                                  "set: the end-to-end tests must run$"):
            self.start(remote.RemoteEngineError("no answer"), CI="1")

    def test_an_image_that_cannot_be_built_skips(self):
        from tests.e2e import harness, images, remote
        failure = images.ImageBuildError("building claude-bottle-test/remote-engine:x needs root (debootstrap)")
        with mock.patch.object(harness, "require_engine", return_value={}), \
                mock.patch.object(remote, "remote_engine_image", side_effect=failure), \
                mock.patch.dict(os.environ), self.assertRaises(unittest.SkipTest) as caught:
            os.environ.pop("CI", None)
            remote.require_remote()
        self.assertEqual(str(caught.exception), f"e2e: no second engine: {failure}")


if __name__ == "__main__":
    unittest.main()
