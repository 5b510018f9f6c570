"""End to end: the agent is the host user who ran claude-bottle, in any image with a POSIX sh.

The host-user matrix runs the CLI as root, as uid 1000 and as uid 1234 (a temporary user), each in the docker
socket's group and on a project it owns. The image matrix runs it as uid 1000 on each test image: git over the
SSH alias, a writable $HOME, no private key inside; busybox with an SSH bottle is refused before anything exists.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import claude_bottle as cb
from tests.e2e.harness import (CLI, SHARED, E2ETest, docker, engine_events, leftovers, module_fixtures,
                               remove_state_volumes, session_of)

world = None
setUpModule, tearDownModule = module_fixtures(globals())

SOCKET = "/var/run/docker.sock"
TEMP_UID = 1234


def need_root(test):
    if os.geteuid() != 0:
        raise unittest.SkipTest("runs the CLI as other users: needs root")


class HostUser:
    """A uid to run the CLI as, in the docker socket's group, with a home and a project of its own."""

    def __init__(self, test: unittest.TestCase, uid: int):
        self.uid = self.gid = uid
        if uid and subprocess.run(["getent", "passwd", str(uid)], capture_output=True).returncode != 0:
            name = f"cbtest{uid}"
            subprocess.run(["useradd", "--no-create-home", "--uid", str(uid), "--user-group", name], check=True)
            test.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
        self.top = Path(tempfile.mkdtemp(prefix=f"cbtest-u{uid}-"))
        test.addCleanup(shutil.rmtree, self.top, True)
        test.addCleanup(remove_state_volumes, self.top)
        self.home, self.project = self.top / "home", self.top / "project"
        for d in (self.top, self.home, self.project):
            d.mkdir(exist_ok=True)
            os.chown(d, uid, uid)
        self.socket_gid = os.stat(SOCKET).st_gid

    def setpriv(self) -> list:
        if self.uid == 0:
            return []
        return ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--groups", str(self.socket_gid), "--"]

    def cli(self) -> list:
        return [*self.setpriv(), sys.executable, str(CLI)]

    def env(self, **extra) -> dict:
        return world.env(HOME=str(self.home), XDG_CACHE_HOME=str(self.home / ".cache"), **extra)

    def config(self, image: str, ssh: bool) -> str:
        text = world.config(**({} if ssh else {"ssh": []}))
        return text.replace(f'image = "{world.debian}"', f'image = "{image}"')

    def write_config(self, image: str, ssh: bool = False) -> None:
        path = self.project / "claude-bottle.toml"
        path.write_text(self.config(image, ssh))
        os.chown(path, self.uid, self.gid)

    def ssh_agent(self, test: unittest.TestCase) -> str:
        """An ssh-agent of this user's holding the world's key (the relay connects to it as the user)."""
        sock = str(self.top / "agent.sock")
        key = self.top / "key"
        shutil.copy(world.tmp / "id_ed25519", key)
        os.chown(key, self.uid, self.gid)
        key.chmod(0o600)
        out = subprocess.run([*self.setpriv(), "ssh-agent", "-a", sock], capture_output=True, text=True,
                             check=True).stdout
        pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))
        test.addCleanup(os.kill, pid, 15)
        subprocess.run([*self.setpriv(), "ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": sock},
                       check=True, capture_output=True)
        key.unlink()
        return sock


FILES = r"""
set -e
echo "id=$(id -u):$(id -g) home=$HOME"
cd /workspace
echo one > made && echo two >> made && echo appended=$(wc -l < made)
echo gone > doomed && rm doomed && echo deleted
mkdir -p sub/dir && echo deep > sub/dir/file
touch "$HOME/.home-writable" && echo home-writable
touch /tmp/.tmp-writable && echo tmp-writable
touch "$CLAUDE_CONFIG_DIR/.state-writable" && echo state-writable
"""


class HostUsers(E2ETest):
    """Whatever the host uid, the agent edits the project, and the host sees the user's files."""

    def test_root_1000_and_another_uid(self):
        need_root(self)
        for uid in (0, 1000, TEMP_UID):
            with self.subTest(uid=uid):
                user = HostUser(self, uid)
                user.write_config(world.debian)
                proc = world.start(user.project, FILES, env=user.env(), cli=user.cli())
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                self.assertIn(f"id={uid}:{uid} ", proc.stdout)
                self.assertRegex(proc.stdout, rf"(?m)^  user: +\S+ uid {uid} gid {uid}, home ")
                for word in ("appended=2", "deleted", "home-writable", "tmp-writable", "state-writable"):
                    self.assertIn(word, proc.stdout)
                self.assertFalse((user.project / "doomed").exists())
                for rel in ("made", "sub", "sub/dir", "sub/dir/file"):
                    st = (user.project / rel).stat()
                    self.assertEqual((st.st_uid, st.st_gid), (uid, uid), rel)
                self.assertEqual((user.project / "made").read_text(), "one\ntwo\n")
                self.assertEqual(leftovers(session_of(proc.stdout)), [])


SSH_SCRIPT = r"""
set -e
echo "id=$(id -un 2>/dev/null || echo NONAME):$(id -u) home=$HOME"
git ls-remote gitserver:/srv/git/repo.git | grep -q refs/heads/main && echo ls-remote-ok
cd "$HOME"
git clone -q gitserver:/srv/git/repo.git repo && cd repo && cat README
echo "$IMAGE_NAME" > "from-$IMAGE_NAME" && git add . && git -c user.name=agent -c user.email=agent@example.test \
  commit -qm "from $IMAGE_NAME" && git push -q origin main && echo pushed
ls -ld "$HOME/.ssh/config" | awk '{print "ssh-config", $1, $3}'
echo "keys: $(grep -rlI -e '-----BEGIN OPENSSH PRIVATE KEY' / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | wc -l)"
"""


class Images(E2ETest):
    """As uid 1000: each test image's user, home, and git through the SSH alias."""

    @classmethod
    def setUpClass(cls):
        need_root(cls)

    def setUp(self):
        super().setUp()
        self.user = HostUser(self, 1000)
        self.sock = self.user.ssh_agent(self)

    def check_image(self, name: str, expect_user: str, expect_home: str):
        self.user.write_config(world.images[name], ssh=True)
        env = self.user.env(SSH_AUTH_SOCK=self.sock)
        proc = world.start(self.user.project, f"IMAGE_NAME={name}; " + SSH_SCRIPT, env=env, cli=self.user.cli())
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn(f"id={expect_user}:1000 home={expect_home}", proc.stdout)
        self.assertIn(f"  user:       {expect_user} uid 1000 gid 1000, home {expect_home}", proc.stdout)
        self.assertIn("ls-remote-ok", proc.stdout)
        self.assertIn("seed", proc.stdout)
        self.assertIn("pushed", proc.stdout)
        self.assertRegex(proc.stdout, r"ssh-config -rw------- \S+")
        self.assertIn("keys: 0", proc.stdout, "no private key file may enter the container")
        log = docker("exec", world.git, "git", "--git-dir=/srv/git/repo.git", "log", "--format=%s", "main").stdout
        self.assertIn(f"from {name}", log)
        self.assertEqual(leftovers(session_of(proc.stdout)), [])
        return proc

    def test_no_user_at_uid_1000(self):
        self.check_image("nouser", "claude", "/home/claude")

    def test_node_keeps_its_user_and_home(self):
        self.check_image("node", "node", "/home/node")

    def test_built_in_base(self):
        self.check_image("agent-base", "claude", "/home/claude")

    def test_busybox_with_ssh_is_refused_before_anything(self):
        self.user.write_config(world.images["busybox"], ssh=True)
        # A TMPDIR of its own: every object of a session carries its private dir, under it, in a label.
        tmp = self.user.top / "tmp"
        tmp.mkdir()
        os.chown(tmp, self.user.uid, self.user.gid)
        before, since = (docker("ps", "-aq").stdout.split(), docker("network", "ls", "-q").stdout.split()), time.time()
        proc = world.start(self.user.project, "echo ran", env=self.user.env(SSH_AUTH_SOCK=self.sock, TMPDIR=str(tmp)),
                           cli=self.user.cli())
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual(proc.stderr.count("\n"), 1, proc.stderr)
        self.assertIn("has no ssh and no socat and no git", proc.stderr)
        self.assertNotIn("ran", proc.stdout)
        self.assertEqual(engine_events(str(tmp), since), [], "nothing of the session was made")
        if not SHARED:  # other runs change the engine at the same time
            self.assertEqual((docker("ps", "-aq").stdout.split(), docker("network", "ls", "-q").stdout.split()),
                             before)

    def test_busybox_without_ssh_runs_and_self_tests_with_wget(self):
        self.user.write_config(world.images["busybox"])
        proc = world.start(self.user.project, FILES, env=self.user.env(), cli=self.user.cli())
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("id=1000:1000 home=/home/claude", proc.stdout)
        for word in ("appended=2", "deleted", "home-writable", "tmp-writable", "state-writable"):
            self.assertIn(word, proc.stdout)
        self.assertEqual((self.user.project / "made").stat().st_uid, 1000)


class ProbeCost(E2ETest):
    def test_first_and_cached(self):
        cache = Path(tempfile.mkdtemp(prefix="cbtest-cache-"))
        self.addCleanup(shutil.rmtree, cache, True)
        environ = {"XDG_CACHE_HOME": str(cache)}
        engine = cb.DockerEngine(cb.Context(environ))
        timings = {}
        for name in ("node", "busybox"):
            for run in ("first", "cached"):
                started = time.monotonic()
                probe = cb.probe_image(engine, world.images[name], environ)
                timings[f"{name} {run}"] = time.monotonic() - started
            self.assertIn("/home/node" if name == "node" else "wget", str(probe))
        print("\nimage probe: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()), file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
