"""End to end: the security promises (hardening, secrets, workspace escape, fail closed, no host services).

Each test breaks, or would break, without the protection it checks; where that is not obvious, a control run
shows the same probe succeeding when the protection is missing.
"""

import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import claude_bottle as cb
from tests.e2e.harness import TEST_LABEL, E2ETest, docker, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())


READY = "AGENT-READY"
# The agent's command prints READY, then waits until the test creates /workspace/stop.
WAIT_FOR_STOP = f"echo {READY}; while [ ! -e /workspace/stop ]; do sleep 0.05; done"


class Running:
    """A `start` in the background. Threads drain its output, so a chatty `-v` can never block it."""

    def __init__(self, test: unittest.TestCase, project: Path, script: str, *args, env=None):
        self.project = project
        self.proc = world.popen(project, script, *args, env=env)
        self.out, self.err = [], []
        self._cv = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                         for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()
        test.addCleanup(self.stop)

    def _read(self, stream, buf):
        for line in stream:
            with self._cv:
                buf.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def stdout(self) -> str:
        with self._cv:
            return "".join(self.out)

    @property
    def stderr(self) -> str:
        with self._cv:
            return "".join(self.err)

    def wait_for(self, pattern: str, timeout=90) -> re.Match:
        """The first stdout line matching `pattern` (a regex, whole line), waiting for it to come."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.out:
                    m = rx.fullmatch(line.rstrip("\n"))
                    if m:
                        return m
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise AssertionError(f"start ended ({self.proc.returncode}) before {pattern!r}:\n"
                                         f"{''.join(self.out)}{''.join(self.err)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n{''.join(self.out)}{''.join(self.err)}")
                self._cv.wait(min(left, 0.5))

    @property
    def session(self) -> str:
        return self.wait_for(r"claude-bottle \S+: session (\S+)").group(1)

    def finish(self, timeout=90) -> int:
        self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return self.proc.returncode

    def stop(self):
        """Cleanup: end the agent's command; a start that hangs gets SIGTERM, so it still tears down."""
        if self.proc.poll() is None:
            (self.project / "stop").touch()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        for t in self._readers:
            t.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def session_container(session: str, role: str, all_=False) -> str | None:
    names = docker("ps", *(["-a"] if all_ else []), "--format", "{{.Names}}",
                   "--filter", f"label=claude-bottle.session={session}",
                   "--filter", f"label=claude-bottle.role={role}").stdout.split()
    return names[0] if names else None


def env_of(info: dict) -> dict:
    return dict(e.split("=", 1) for e in info["Config"]["Env"] or [])


def as_agent_uid() -> dict:
    """Keyword arguments that run a host command as the agent's uid: the agent is the user running the tests."""
    return {}


# ---- 1. Hardening ----

class Hardening(E2ETest):
    def test_agent_and_sidecar_hardening(self):
        project = world.project(world.config())
        script = ("echo uid=$(id -u) gid=$(id -g); "
                  "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; "
                  + WAIT_FOR_STOP)
        run = Running(self, project, script, env=world.env(CBTEST_TOKEN="cbtest-hardening-value"))
        session = run.session
        run.wait_for(READY)
        agent = inspect(session_container(session, "agent"))
        sidecar = inspect(session_container(session, "pipelock"))
        internal = f"claude-bottle-{session}-internal"
        proxy = f"http://{sidecar['Name'].lstrip('/')}:8888"

        host = agent["HostConfig"]
        with self.subTest("agent"):
            self.assertEqual(agent["Config"]["User"], f"{os.getuid()}:{os.getgid()}", "the user who ran it")
            self.assertIn("ALL", host["CapDrop"] or [])
            self.assertFalse(host["CapAdd"])
            self.assertFalse(host["Privileged"])
            self.assertIn("no-new-privileges", host["SecurityOpt"] or [])
            self.assertGreater(host["PidsLimit"] or 0, 0)
            self.assertEqual(host["NetworkMode"], internal)
            self.assertEqual(set(agent["NetworkSettings"]["Networks"]), {internal}, "on the internal network only")
            for mode in ("IpcMode", "PidMode", "UTSMode", "UsernsMode"):
                self.assertNotEqual(host[mode], "host", mode)
            self.assertFalse(host["Devices"])
            self.assertEqual(host["Dns"], ["127.0.0.1"])
            self.assertTrue(host["Init"])
            private = Path(tempfile.gettempdir(), f"claude-bottle-{os.getuid()}", session)
            for m in agent["Mounts"]:
                self.assertNotIn("docker.sock", m["Source"] + m["Destination"])
                self.assertIn(m["Type"], ("bind", "volume"), m)
                if m["Type"] == "bind":
                    # Beyond the project, only the session's own files: its ~/.ssh (config, known_hosts), passwd,
                    # group.
                    source = Path(m["Source"])
                    own = source.parent == private and source.name in ("ssh", "passwd", "group")
                    self.assertTrue(source.is_relative_to(project) or own, f"a host path beyond the project: {m}")
            # Exactly one volume: Claude Code's state kept for this agent and project, and nothing else.
            volumes = [(m["Name"], m["Destination"], m["RW"]) for m in agent["Mounts"] if m["Type"] == "volume"]
            state = docker("volume", "inspect", "--format", '{{index .Labels "claude-bottle.state"}} '
                           '{{index .Labels "claude-bottle.project"}} {{index .Labels "claude-bottle.agent"}}',
                           volumes[0][0] if volumes else "none", check=False).stdout.split()
            self.assertEqual(len(volumes), 1, agent["Mounts"])
            self.assertEqual(state, ["1", str(project.resolve()), "e2e"], "the agent's own state volume")
            self.assertEqual(env_of(agent).get("CLAUDE_CONFIG_DIR"), volumes[0][1])
        with self.subTest("agent env"):
            env = env_of(agent)
            for name in ("HTTPS_PROXY", "https_proxy"):
                self.assertEqual(env.get(name), proxy, name)
            for name in ("HTTP_PROXY", "http_proxy"):  # the plain-HTTP forwarder, in the agent's own container
                self.assertEqual(env.get(name), f"http://127.0.0.1:{cb.PLAIN_HTTP_PORT}", name)
            for name in ("NO_PROXY", "no_proxy"):
                self.assertIn("127.0.0.1", env[name].split(","))
                self.assertTrue(set(env[name].split(",")) <= {"localhost", "127.0.0.1", "::1"}, env[name])
            for name in ("NODE_USE_ENV_PROXY", "CLAUDE_CODE_PROXY_RESOLVES_HOSTS",
                         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER"):
                self.assertEqual(env.get(name), "1", name)
            self.assertEqual(env.get("CBTEST_TOKEN"), "cbtest-hardening-value", "passed through by name")
        with self.subTest("agent, from inside"):
            self.assertIn(f"uid={os.getuid()} gid={os.getgid()}", run.stdout)
            caps = dict(re.findall(r"^(Cap\w+|NoNewPrivs):\s*(\S+)$", run.stdout, re.M))
            for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                self.assertEqual(int(caps[name], 16), 0, f"{name} = {caps.get(name)}")
            self.assertEqual(caps["NoNewPrivs"], "1")
        with self.subTest("internal network"):
            net = json.loads(docker("network", "inspect", internal).stdout)[0]
            self.assertTrue(net["Internal"])
            self.assertEqual(net["Options"].get("com.docker.network.bridge.inhibit_ipv4"), "true")
        with self.subTest("sidecar"):
            side = sidecar["HostConfig"]
            self.assertTrue(side["ReadonlyRootfs"])
            self.assertEqual(sidecar["Config"]["User"], "65534:65534")
            self.assertIn("ALL", side["CapDrop"] or [])
            self.assertFalse(side["CapAdd"])
            self.assertFalse(side["Privileged"])
            self.assertIn("no-new-privileges", side["SecurityOpt"] or [])
            self.assertGreater(side["PidsLimit"] or 0, 0)
            self.assertEqual(set(sidecar["NetworkSettings"]["Networks"]), {internal, world.network})
            self.assertEqual([(m["Destination"], m["RW"]) for m in sidecar["Mounts"]], [("/etc/pipelock", False)])
            image_env = json.loads(docker("image", "inspect", "--format", "{{json .Config.Env}}",
                                          sidecar["Config"]["Image"]).stdout) or []
            added = set(sidecar["Config"]["Env"] or []) - set(image_env)
            self.assertEqual(added, set(), "the sidecar gets no environment of the agent's")
            self.assertNotIn("cbtest-hardening-value", json.dumps(sidecar))
        (project / "stop").touch()
        self.assertEqual(run.finish(), 0, run.stderr)
        self.assertNoLeftovers(session)


# ---- 2. Secrets ----

class Secrets(E2ETest):
    def test_a_passed_through_secret_appears_nowhere_else(self):
        secret = "sk-cbtest-" + os.urandom(24).hex()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        tmpdir = Path(tempfile.mkdtemp(prefix="tmpdir-", dir=world.tmp))
        project = world.project(world.config())
        env = world.env(CBTEST_TOKEN=secret, TMPDIR=str(tmpdir), SSH_AUTH_SOCK=world.agent_sock)
        script = (f'[ "$(printf %s "$CBTEST_TOKEN" | sha256sum | cut -d" " -f1)" = {digest} ] '
                  f'&& echo token=ok || echo token=wrong; ' + WAIT_FOR_STOP)
        run = Running(self, project, script, "-v", env=env)
        session = run.session
        run.wait_for(READY)

        with self.subTest("the agent has it"):
            self.assertIn("token=ok", run.stdout)
        with self.subTest("host process list"):
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
            self.assertIn("claude_bottle.py start", ps, "the CLI itself is in the list")
            self.assertNotIn(secret, ps)
        with self.subTest("sidecar"):
            self.assertNotIn(secret, docker("inspect", session_container(session, "pipelock")).stdout)
        with self.subTest("private dir"):
            bases = list(tmpdir.glob("claude-bottle-*"))
            self.assertEqual(len(bases), 1, bases)
            base = bases[0]
            self.assertEqual(stat.S_IMODE(base.stat().st_mode), 0o700)
            private = base / session
            self.assertEqual(stat.S_IMODE(private.stat().st_mode), 0o700)
            files = [p for p in private.rglob("*") if not p.is_dir()]
            self.assertIn(private / "ssh_config", files)
            for path in files:
                rel = path.relative_to(private)
                if rel.parts[0] != "pipelock":
                    self.assertEqual(stat.S_IMODE(path.lstat().st_mode), 0o600, rel)
                if path.is_file():
                    self.assertNotIn(secret.encode(), path.read_bytes(), rel)
            if os.geteuid() == 0:
                for rel in ("pipelock", "pipelock/pipelock.yaml"):
                    st = (private / rel).stat()
                    self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode) & 0o077), (65534, 0), rel)

        (project / "stop").touch()
        self.assertEqual(run.finish(), 0, run.stderr)
        self.assertNoLeftovers(session)
        with self.subTest("CLI output, every docker argv included"):
            self.assertRegex(run.stderr, r"\+ docker create .* --env CBTEST_TOKEN ", "verbose logs the argv")
            self.assertNotIn(secret, run.stdout + run.stderr)
            self.assertEqual(list(base.iterdir()), [], "the session's private dir is gone")
        with self.subTest("images"):
            for image in {world.debian, world.pipelock}:
                self.assertNotIn(secret, docker("image", "inspect", image).stdout)
                self.assertNotIn(secret, docker("history", "--no-trunc", image).stdout)
        for args in (["--dry-run"], ["--dry-run", "--json"]):
            with self.subTest(" ".join(args)):
                proc = world.start(project, "true", *args, env=env)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertIn("CBTEST_TOKEN", proc.stdout)
                self.assertNotIn(secret, proc.stdout + proc.stderr)
                if "--json" in args:
                    json.loads(proc.stdout)


# ---- 3. Workspace escape ----

def host_env(repo: Path) -> dict:
    """A fresh environment for git on the host: no GIT_* variables, no user or system config."""
    home = repo.parent / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


def host_git(repo: Path, *args, check=True) -> subprocess.CompletedProcess:
    """git on the host as the project's owner (the user running the tests, as the agent), in a fresh environment."""
    return subprocess.run(["git", "-c", "user.name=host", "-c", "user.email=host@example.test", *args],
                          cwd=repo, env=host_env(repo), capture_output=True, text=True, check=check, timeout=30,
                          **as_agent_uid())


def scratch_repo(test: unittest.TestCase, prefix: str) -> Path:
    """An empty directory `<top>/project` of the user running the tests; `<top>` holds markers and HOME."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    test.addCleanup(shutil.rmtree, top, True)
    repo = top / "project"
    repo.mkdir()
    return repo


def git_project(test: unittest.TestCase, config: str) -> Path:
    """A git repository with one commit, owned by the user running the tests (and so by the agent).

    claude-bottle.toml stays root's (claude-bottle refuses a config another user owns) but is writable by
    anyone, so only the read-only mount keeps the agent from editing it.
    """
    repo = scratch_repo(test, "cbtest-git-")
    (repo / "claude-bottle.toml").write_text(config)
    (repo / "claude-bottle.toml").chmod(0o666)
    host_git(repo, "init", "-q", "-b", "main")
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-qm", "seed")
    return repo


TRY = 'try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name=done"; else echo "$name=refused"; fi; }'


def payloads(marker_dir: Path) -> str:
    """Shell lines planting code that git on the host would run; each payload leaves `<marker_dir>/ran-<name>`."""
    def hook(name):
        return f"#!/bin/sh\\ntouch {marker_dir}/ran-{name}\\n"
    return f"""
try post_commit_hook sh -c 'printf "{hook("post-commit")}" > .git/hooks/post-commit && chmod +x .git/hooks/post-commit'
try pre_commit_hook sh -c 'printf "{hook("pre-commit")}" > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit'
try hooks_path_abs git config core.hooksPath /tmp/x
mkdir -p .cbhooks && printf '{hook("hooks-path")}' > .cbhooks/post-commit && chmod +x .cbhooks/post-commit
try hooks_path_rel git config core.hooksPath .cbhooks
try fsmonitor git config core.fsmonitor 'touch {marker_dir}/ran-fsmonitor; false'
"""


# Ways around the read-only mounts: move or remove them, or edit the bottle's own config.
ESCAPES = """
try mv_git mv .git .git-old
try mv_hooks mv .git/hooks .git/hooks-old
try mv_config mv .git/config .git/config-old
try rm_hooks rm -rf .git/hooks
try edit_config sh -c 'echo "# planted" >> claude-bottle.toml'
try mv_config_toml mv claude-bottle.toml claude-bottle.toml.old
"""


def markers_in(directory: Path) -> list:
    return sorted(p.name for p in directory.glob("ran-*"))


def run_host_git_commands(repo: Path) -> None:
    """What a developer does next on the host: each of these would run a planted hook or fsmonitor."""
    host_git(repo, "status")
    host_git(repo, "commit", "-q", "--allow-empty", "-m", "x")


class WorkspaceEscape(E2ETest):
    def test_nothing_planted_runs_on_the_host(self):
        repo = git_project(self, world.config())
        markers = repo.parent
        script = "\n".join(["cd /workspace", TRY, payloads(markers), ESCAPES, """
echo from-the-bottle > work.txt
git add work.txt && git -c user.name=agent -c user.email=agent@example.test commit -qm "from the bottle" \
  && echo commit=done
"""])
        proc = world.start(repo, script)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        results = dict(re.findall(r"^(\w+)=(done|refused)$", proc.stdout, re.M))
        for name in ("post_commit_hook", "pre_commit_hook", "hooks_path_abs", "hooks_path_rel", "fsmonitor",
                     "mv_git", "mv_hooks", "mv_config", "rm_hooks", "edit_config", "mv_config_toml"):
            with self.subTest(name):
                self.assertEqual(results.get(name), "refused", proc.stdout)
        with self.subTest("the agent's own git works"):
            self.assertEqual(results.get("commit"), "done", proc.stdout)
            log = host_git(repo, "log", "--format=%s").stdout.split("\n")
            self.assertEqual(log[:2], ["from the bottle", "seed"])
        with self.subTest("nothing planted on the host"):
            self.assertFalse((repo / ".git/hooks/post-commit").exists())
            self.assertFalse((repo / ".git/hooks/pre-commit").exists())
            self.assertTrue((repo / ".cbhooks/post-commit").exists(), "the workspace itself is writable")
            for key in ("core.hooksPath", "core.fsmonitor"):
                self.assertEqual(host_git(repo, "config", "--get", key, check=False).stdout, "", key)
            self.assertNotIn("planted", (repo / "claude-bottle.toml").read_text())
        with self.subTest("git on the host runs nothing"):
            run_host_git_commands(repo)
            self.assertEqual(markers_in(markers), [])
        with self.subTest("control: the same payloads, planted without the bottle, do run"):
            control = scratch_repo(self, "cbtest-control-")
            host_git(control, "init", "-q", "-b", "main")
            plant = "\n".join(["set -e", TRY, payloads(control.parent)])
            subprocess.run(["sh", "-c", plant], cwd=control, env=host_env(control), check=True,
                           capture_output=True, **as_agent_uid())
            run_host_git_commands(control)
            self.assertEqual(markers_in(control.parent), ["ran-fsmonitor", "ran-hooks-path"])
            host_git(control, "config", "--unset", "core.hooksPath")
            run_host_git_commands(control)
            self.assertEqual(markers_in(control.parent),
                             ["ran-fsmonitor", "ran-hooks-path", "ran-post-commit", "ran-pre-commit"])


# Known bugs. Each setUp runs the attack and checks that it ran, so that only its outcome on the host (the
# test method) can be the expected failure, never a start that broke for another reason.

class CommondirRedirect(E2ETest):
    def setUp(self):
        super().setUp()
        self.repo = git_project(self, world.config())
        self.markers = self.repo.parent
        script = f"""
set -e
cd /workspace
mkdir .cbcommon && ln -s ../.git/objects .cbcommon/objects && ln -s ../.git/refs .cbcommon/refs
printf '[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = "touch {self.markers}/ran-commondir; false"\\n' \
  > .cbcommon/config
{{ echo ../.cbcommon > .git/commondir && echo planted || echo refused; }}
"""
        proc = world.start(self.repo, script)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"(?m)^(planted|refused)$")

    # Fixed bug: .git is writable, and git reads $GIT_DIR/commondir to find the config and the hooks: a
    # `.git/commondir` written by the agent points host git at a config the agent wrote, around the
    # read-only .git/config and .git/hooks mounts. Patch in the report: refuse one at start, move it
    # aside at teardown.
    def test_host_git_ignores_a_planted_commondir(self):
        host_git(self.repo, "status", check=False)
        self.assertEqual(markers_in(self.markers), [], "git on the host ran the agent's fsmonitor via .git/commondir")


class WorktreeGitfileRedirect(E2ETest):
    def setUp(self):
        super().setUp()
        main = git_project(self, world.config())
        self.markers = main.parent
        self.worktree = self.markers / "wt"
        host_git(main, "worktree", "add", "-q", str(self.worktree))
        # A fresh copy, not the checked-out one (0644 after checkout, where the original is 0666).
        (self.worktree / "claude-bottle.toml").unlink()
        (self.worktree / "claude-bottle.toml").write_text(world.config())
        script = f"""
set -e
cd /workspace
git init -q --bare .cbgit && git --git-dir=.cbgit config core.bare false
git --git-dir=.cbgit config core.fsmonitor 'touch {self.markers}/ran-gitfile; false'
{{ printf 'gitdir: .cbgit\\n' > .git && echo planted || echo refused; }}
"""
        proc = world.start(self.worktree, script)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"(?m)^(planted|refused)$")

    # Fixed bug: in a linked worktree (or a submodule) `.git` is a file naming the git dir; claude-bottle
    # protects nothing there (plan.git_dir is False), so the agent can point it at a git dir of its own
    # whose config runs code on the host. Patch in the report: mount that file read-only.
    def test_host_git_ignores_a_planted_gitfile(self):
        host_git(self.worktree, "status", check=False)
        self.assertEqual(markers_in(self.markers), [], "git on the host ran the agent's fsmonitor via the .git file")


# ---- 4. Fail closed ----

# Stand-ins for a broken pipelock: the real program moves to /pipelock.real, and a script takes its place.
GATED_HEALTH = """\
#!/bin/sh
# A pipelock whose health check waits (at most 20 s) until the test creates /dev/shm/cbtest-go: a window
# to break the bottle's isolation in. /dev/shm is the one writable place in the read-only sidecar.
if [ "$1" = healthcheck ]; then
  i=0
  while [ ! -e /dev/shm/cbtest-go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
fi
exec /pipelock.real "$@"
"""
DEAD_ON_ARRIVAL = """\
#!/bin/sh
# A pipelock that exits as soon as it starts, so its health check never answers.
if [ "$1" = healthcheck ]; then exec /pipelock.real "$@"; fi
echo "cbtest: this pipelock exits at once" >&2
exit 1
"""
WRAPPER_DOCKERFILE = """\
FROM {debian}
COPY --from={pipelock} /pipelock /pipelock.real
COPY pipelock /pipelock
ENTRYPOINT ["/pipelock"]
"""


def wrapped_pipelock(name: str, script: str) -> str:
    """The pipelock image with `script` as /pipelock, built once per set of inputs (cached by its tag).

    FROM the debian test image, so the script has a shell even when the pipelock image has none.
    """
    ids = [docker("image", "inspect", "--format", "{{.Id}}", i).stdout.strip() for i in (world.debian, world.pipelock)]
    dockerfile = WRAPPER_DOCKERFILE.format(debian=world.debian, pipelock=world.pipelock)
    digest = hashlib.sha256("\0".join([*ids, dockerfile, script]).encode()).hexdigest()[:12]
    tag = f"claude-bottle-test/{name}:{digest}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    context = Path(tempfile.mkdtemp(prefix="ctx-", dir=world.tmp))
    (context / "pipelock").write_text(script)
    (context / "pipelock").chmod(0o755)
    # The legacy builder uses the local parent images and never pulls them.
    docker("build", "--quiet", "--tag", tag, "--file", "-", str(context), input=dockerfile,
           env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=300)
    return tag


class FailClosed(E2ETest):
    def break_isolation(self, run: Running) -> str:
        """While the sidecar's health check waits, put the agent on the egress network (a direct route out),
        then let the health check answer."""
        session = run.session
        deadline = time.monotonic() + 60

        def poll(what, fn):
            while not (result := fn()):
                self.assertLess(time.monotonic(), deadline, f"no {what}:\n{run.stdout}{run.stderr}")
                self.assertIsNone(run.proc.poll(), f"start ended before {what}:\n{run.stdout}{run.stderr}")
                time.sleep(0.05)
            return result

        agent = poll("agent container", lambda: session_container(session, "agent", all_=True))
        # `docker ps -a` may list a container whose create is still under way: connect once the engine has it.
        poll("agent on the outside network",
             lambda: docker("network", "connect", world.network, agent, check=False).returncode == 0)
        sidecar = poll("running sidecar", lambda: session_container(session, "pipelock"))
        poll("open health gate", lambda: docker("exec", sidecar, "touch", "/dev/shm/cbtest-go",
                                                check=False).returncode == 0)
        return session

    def test_self_test_refuses_a_bottle_with_a_route_out(self):
        project = world.project(world.config())
        env = world.env(CLAUDE_BOTTLE_PIPELOCK_IMAGE=wrapped_pipelock("gated-health", GATED_HEALTH))
        run = Running(self, project, "touch /workspace/command-ran", env=env)
        session = self.break_isolation(run)
        self.assertEqual(run.finish(), 1, run.stdout + run.stderr)
        self.assertIn("isolation self-test failed", run.stderr)
        self.assertRegex(run.stderr, r"the agent reached \S+ directly, without the proxy")
        self.assertFalse((project / "command-ran").exists(), "the agent's command ran")
        self.assertNoLeftovers(session)
        net = json.loads(docker("network", "inspect", world.network).stdout)[0]
        self.assertFalse([c["Name"] for c in net["Containers"].values() if session in c["Name"]])

    def test_no_self_test_is_the_only_way_past(self):
        project = world.project(world.config())
        env = world.env(CLAUDE_BOTTLE_PIPELOCK_IMAGE=wrapped_pipelock("gated-health", GATED_HEALTH))
        script = (f"touch /workspace/command-ran; "
                  f"curl -sS --noproxy '*' --max-time 5 http://{world.web_ip}:8000/")
        run = Running(self, project, script, "--no-self-test", env=env)
        session = self.break_isolation(run)
        self.assertEqual(run.finish(), 0, run.stdout + run.stderr)
        self.assertTrue((project / "command-ran").exists())
        self.assertIn("hello-from-web", run.stdout, "the broken bottle really had a route out")
        self.assertNoLeftovers(session)

    def test_sidecar_that_never_answers(self):
        cases = (("no /pipelock in the image", world.debian, r"`docker run .*` failed \(exit 12[67]\)"),
                 ("pipelock exits at once", wrapped_pipelock("dead-sidecar", DEAD_ON_ARRIVAL),
                  r"did not become healthy .*cbtest: this pipelock exits at once"))
        for case, image, error in cases:
            with self.subTest(case):
                project = world.project(world.config())
                proc = world.start(project, "touch /workspace/command-ran",
                                   env=world.env(CLAUDE_BOTTLE_PIPELOCK_IMAGE=image))
                self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
                self.assertRegex(proc.stderr, r"claude-bottle: error: .*pipelock")
                self.assertRegex(proc.stderr, error)
                self.assertNotIn("Traceback", proc.stderr)
                self.assertFalse((project / "command-ran").exists())
                self.assertNoLeftovers(session_of(proc.stdout))


# ---- 5. Host services ----

class HostServices(E2ETest):
    def serve(self) -> int:
        """An HTTP server on the host on every address (0.0.0.0), on a free port; stopped at the end."""
        root = Path(tempfile.mkdtemp(prefix="www-", dir=world.tmp))
        (root / "index.html").write_text("hello-from-the-host\n")
        server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "0.0.0.0", "0"],
                                  cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(lambda: (server.kill(), server.wait(), server.stdout.close()))
        port = int(re.search(r"port (\d+)", server.stdout.readline()).group(1))
        body = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "5", f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True).stdout
        self.assertEqual(body, "hello-from-the-host\n", "the host service answers on loopback")
        return port

    def test_host_services_are_unreachable(self):
        port = self.serve()
        project = world.project(world.config())
        script = (
            "gw=$(ip route | awk '$1 == \"default\" {print $3}'); echo gateway=$gw; "
            f"curl -sS --noproxy '*' --connect-timeout 2 --max-time 4 -o /dev/null -w 'code=%{{http_code}}\\n' "
            f"http://$gw:{port}/; echo host_rc=$?; "
            "curl -sS --noproxy '*' --connect-timeout 2 --max-time 4 -o /dev/null -w 'sidecar=%{http_code}\\n' "
            "http://claude-bottle-$CLAUDE_BOTTLE_SESSION-pipelock:8888/health; " + WAIT_FOR_STOP)
        run = Running(self, project, script)
        session = run.session
        run.wait_for(READY)
        internal = json.loads(docker("network", "inspect", f"claude-bottle-{session}-internal").stdout)[0]
        ipam = internal["IPAM"]["Config"][0]
        # With --subnet and no --gateway, Docker 20.10 takes the first address and does not record it.
        gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
        (project / "stop").touch()
        self.assertEqual(run.finish(), 0, run.stderr)
        out = run.stdout
        self.assertIn(f"gateway={gateway}\n", out, "the agent's default route points at the network's gateway")
        self.assertNotIn("code=200", out, "the agent reached a host service")
        self.assertRegex(out, r"host_rc=(7|28)\n")
        self.assertIn("sidecar=200", out, "the sidecar answers directly (sanity)")
        self.assertNoLeftovers(session)
        with self.subTest("control: an internal network with a host address reaches it"):
            name = f"cbtest-{world.tag}-control"
            docker("network", "create", "--internal", "--label", TEST_LABEL, name)
            self.addCleanup(docker, "network", "rm", name, check=False)
            gw = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
            ctl = docker("run", "--rm", "--network", name, "--label", TEST_LABEL, world.debian,
                         "curl", "-sS", "--noproxy", "*", "--connect-timeout", "2", "--max-time", "4",
                         f"http://{gw}:{port}/", check=False)
            self.assertEqual(ctl.stdout, "hello-from-the-host\n", ctl.stderr)


if __name__ == "__main__":
    unittest.main()
