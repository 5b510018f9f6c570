"""Shared pieces of the end-to-end tests: the real engine, locally built images, "outside" hosts.

Every test drives `claude_bottle.py start --yes ... -- COMMAND` on the real Docker engine. The outside
world is ours: a user-defined bridge (the bottle's `egress_network`) holding two HTTP servers, a TCP
echo service and an sshd git server. No test sends traffic to any other address.

Without a working docker, or as a non-root user before the images were built once as root, the tests skip with a
one-line reason, unless CI is set: then they fail.
`CLAUDE_BOTTLE_E2E=0` skips them on purpose (`make unit`).
"""

import json
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
from tests.e2e import images

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "claude_bottle.py"
TEST_LABEL = "claude-bottle-test=1"


def docker(*args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def require_engine() -> dict:
    """Build the test images when missing; skip (or fail under CI) when the engine cannot be used."""
    if os.environ.get("CLAUDE_BOTTLE_E2E") == "0":
        raise unittest.SkipTest("e2e: CLAUDE_BOTTLE_E2E=0")
    reason = None
    if shutil.which("docker") is None:
        reason = "no docker CLI on PATH"
    elif subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        reason = "the Docker daemon does not answer"
    elif os.geteuid() != 0 and not images.image_exists(images.debian_tag()):
        # A user in the docker group can run every test but cannot debootstrap the image they all start from.
        reason = "the test images are missing and building them needs root (debootstrap): run `sudo make images` once"
    if reason:
        if os.environ.get("CI"):
            raise RuntimeError(f"e2e: {reason}, and CI is set: the end-to-end tests must run")
        raise unittest.SkipTest(f"e2e: {reason}")
    return images.ensure_images(verbose=True)


def session_of(text: str) -> str:
    m = re.search(r"^claude-bottle \S+: session (\S+)$", text, re.M)
    if not m:
        raise AssertionError(f"no session line in:\n{text}")
    return m.group(1)


# CLAUDE_BOTTLE_E2E_SHARED=1: other test runs use this engine at the same time (several engineers, one machine), so
# the check for leftovers looks only at sessions whose CLI this run started; by default (CI) it looks at everything.
SHARED = os.environ.get("CLAUDE_BOTTLE_E2E_SHARED") == "1"
# The CLIs this run started: pid -> the owner-start token their sessions carry. A pid alone names another process
# once it is reused (on a busy machine pids wrap within minutes), and its sessions are not this run's to remove.
STARTED = {}


def owned_by(pid: int) -> list:
    """docker filters for the sessions of the CLI `pid` this run started: its owner and owner-start labels."""
    return ["--filter", f"label=claude-bottle.owner={os.uname().nodename}:{pid}",
            "--filter", f"label=claude-bottle.owner-start={STARTED.get(pid, '')}"]


def engine_events(session: str, since: float) -> list:
    """The engine's events since `since` (time.time()) that name `session`: what it created or removed, even when
    gone again. Other runs sharing the engine make events too, so a whole-engine snapshot cannot tell."""
    out = docker("events", "--since", f"{since - 1:.3f}", "--until", f"{time.time():.3f}",
                 "--format", "{{json .}}").stdout
    return [e for e in out.splitlines() if session in e]


def leftovers(session: str | None = None) -> list:
    """Containers and networks of claude-bottle still present (of one session, or any)."""
    label = f"label=claude-bottle.session={session}" if session else "label=claude-bottle.session"
    flt = ["--filter", label]
    if SHARED and session is None:
        names = []
        for pid in sorted(STARTED):
            own = owned_by(pid)
            names += docker("ps", "-a", "--format", "{{.Names}}", *own).stdout.split()
            names += docker("network", "ls", "--format", "{{.Name}}", *own).stdout.split()
        return sorted(set(names))
    names = docker("ps", "-a", "--format", "{{.Names}}", *flt).stdout.split()
    names += docker("network", "ls", "--format", "{{.Name}}", *flt).stdout.split()
    if session is None:
        # Also by name, labelled or not: `docker network ls | grep claude-bottle` must come out empty.
        names += [n for n in docker("network", "ls", "--format", "{{.Name}}").stdout.split() if "claude-bottle" in n]
        names += [n for n in docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if "claude-bottle" in n]
    return sorted(set(names))


def remove_owned_by(pid: int) -> None:
    """Remove every container, network and volume whose claude-bottle owner is the CLI process `pid` this run
    started."""
    flt = owned_by(pid)
    containers = docker("ps", "-aq", *flt).stdout.split()
    if containers:
        docker("rm", "--force", *containers, check=False)
    networks = docker("network", "ls", "-q", *flt).stdout.split()
    if networks:
        docker("network", "rm", *networks, check=False)
    volumes = docker("volume", "ls", "-q", *flt).stdout.split()
    if volumes:
        docker("volume", "rm", *volumes, check=False)


def made_by_tests(path: str, under: Path) -> bool:
    """A project a test made: under `under`, or, when no other run shares the engine, in a temporary directory named
    cbtest-* (tests' own prefix). Beside other runs those may be theirs, in use right now."""
    tmp = Path(tempfile.gettempdir()).resolve()
    p = Path(path)
    return p.is_relative_to(under.resolve()) or (not SHARED and p.is_relative_to(tmp) and p != tmp and
                                                   p.relative_to(tmp).parts[0].startswith("cbtest-"))


def remove_state_volumes(under: Path) -> list:
    """Remove the kept Claude Code state of every project the tests made (each start makes one); their names."""
    fmt = '{{.Name}} {{.Label "claude-bottle.project"}}'
    listing = docker("volume", "ls", "--filter", "label=claude-bottle.state=1", "--format", fmt).stdout
    names = [name for name, _, project in (ln.partition(" ") for ln in listing.splitlines())
             if project and made_by_tests(project, under)]
    if names:
        docker("volume", "rm", "--force", *names, check=False)
    return names


def cli_env(pipelock_image: str, **extra) -> dict:
    """The environment to run claude_bottle.py in: ours, minus any CLAUDE_BOTTLE_* and ssh-agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_BOTTLE_")}
    env.pop("SSH_AUTH_SOCK", None)
    env["CLAUDE_BOTTLE_PIPELOCK_IMAGE"] = pipelock_image
    env.update(extra)
    return env


def agent_writable(path: Path) -> Path:
    """`path` as a workspace: the agent runs as the user running the tests, who owns it already."""
    return path


class World:
    """The outside: one bridge network with web, other, echo and git hosts, torn down at the end."""

    def __init__(self, images_: dict):
        self.images = images_
        self.debian = images_["debian"]
        self.pipelock = images_["pipelock"]
        self.tag = os.urandom(3).hex()
        self.network = f"cbtest-{self.tag}-outside"
        self.containers = []
        self.tmp = Path(tempfile.mkdtemp(prefix="cbtest-"))
        self.ssh_agent_pid = None
        self.started = []
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _run(self, name: str, aliases, script: str, env=()):
        full = f"cbtest-{self.tag}-{name}"
        argv = ["run", "--detach", "--name", full, "--label", TEST_LABEL, "--network", self.network]
        for alias in aliases:
            argv += ["--network-alias", alias]
        for e in env:
            argv += ["--env", e]
        self.containers.append(full)
        docker(*argv, self.debian, "sh", "-c", script)
        return full

    def _create(self):
        docker("network", "create", "--label", TEST_LABEL, self.network)
        web_script = ("mkdir -p /srv/www && echo hello-from-web > /srv/www/index.html && cd /srv/www && "
                      "(socat TCP-LISTEN:9000,fork,reuseaddr EXEC:cat &) && exec python3 -m http.server 8000")
        self.web = self._run("web", ["web", "notrusted", "sub.example.test"], web_script)
        self.other = self._run("other", ["other"], web_script.replace("hello-from-web", "hello-from-other"))
        self._ssh_setup()
        self.git = self._run("git", ["git"], GIT_SERVER, env=[f"PUBKEY={self.pubkey}"])
        for ctr, probe in ((self.web, "curl -sf http://127.0.0.1:8000/ >/dev/null"),
                           (self.other, "curl -sf http://127.0.0.1:8000/ >/dev/null"),
                           (self.git, "test -e /tmp/ready && nc -z 127.0.0.1 22")):
            self._wait(ctr, probe)
        self.web_ip = self.ip(self.web)

    def _wait(self, ctr: str, probe: str, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if docker("exec", ctr, "sh", "-c", probe, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{ctr} never became ready: {docker('logs', ctr, check=False).stderr[-500:]}")

    def _ssh_setup(self):
        """A key in an ssh-agent on the host; the private key file never leaves this temp dir."""
        key = self.tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cbtest", "-f", str(key)], check=True)
        self.pubkey = (self.tmp / "id_ed25519.pub").read_text().strip()
        self.agent_sock = str(self.tmp / "agent.sock")
        out = subprocess.run(["ssh-agent", "-a", self.agent_sock], capture_output=True, text=True, check=True).stdout
        self.ssh_agent_pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": self.agent_sock},
                       check=True, capture_output=True)

    def ip(self, ctr: str) -> str:
        fmt = "{{json .NetworkSettings.Networks}}"
        return json.loads(docker("inspect", "--format", fmt, ctr).stdout)[self.network]["IPAddress"]

    def close(self):
        if self.containers:
            docker("rm", "--force", *self.containers, check=False)
        docker("network", "rm", self.network, check=False)
        remove_state_volumes(self.tmp)
        if self.ssh_agent_pid:
            try:
                os.kill(self.ssh_agent_pid, 15)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- Projects and runs ----

    def project(self, config: str) -> Path:
        """A project directory of the user running the tests (and the agent), holding `config` as claude-bottle.toml."""
        path = Path(tempfile.mkdtemp(prefix="cbtest-project-", dir=self.tmp))
        (path / "claude-bottle.toml").write_text(config)
        return agent_writable(path)

    def config(self, **bottle) -> str:
        """An `e2e` agent on the test image in an `e2e` bottle whose egress is our outside network."""
        lines = ["[bottles.e2e]", f'egress_network = "{self.network}"']
        bottle.setdefault("allow", ["web", "notrusted", "*.example.test", "git"])
        bottle.setdefault("trusted", ["web", "git", "sub.example.test"])
        for key, value in bottle.items():
            if key != "ssh":
                lines.append(f"{key} = {json.dumps(value)}")
        for entry in bottle.get("ssh", [{"Host": "gitserver", "Hostname": "git", "User": "git"}]):
            lines.append("[[bottles.e2e.ssh]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
        lines += ["[agents.e2e]", 'bottle = "e2e"', f'image = "{self.debian}"', 'env = ["CBTEST_TOKEN"]']
        return "\n".join(lines) + "\n"

    def env(self, **extra) -> dict:
        # The image probe's cache goes to the world's temp dir, not the home of the user running the tests.
        extra.setdefault("XDG_CACHE_HOME", str(self.tmp / "cache"))
        return cli_env(self.pipelock, **extra)

    def start(self, project: Path, script: str, *args, agent="e2e", env=None, timeout=180, cli=None):
        """Run a start to its end; its output as a CompletedProcess."""
        proc = self.popen(project, script, *args, agent=agent, env=env, cli=cli)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, project: Path, script: str, *args, agent="e2e", env=None, cli=None) -> subprocess.Popen:
        """A start in the background. Whatever becomes of the test, its session is removed afterwards (see reap)."""
        argv = [*(cli or [sys.executable, str(CLI)]), "start", agent, "--yes", *args, "--", "sh", "-c", script]
        proc = subprocess.Popen(argv, cwd=project, env=env or self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        STARTED[proc.pid] = cb.process_start(proc.pid) or ""
        return proc

    def reap(self) -> None:
        """After each test: stop the starts it left running (SIGTERM, so they tear down themselves; SIGKILL after a
        minute), then remove whatever a session of theirs still has, found by its owner label. A failing test
        therefore never leaves its bottles to the next one."""
        procs, self.started = self.started, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
            remove_owned_by(proc.pid)


# The sshd git server: our key authorised for `git`, a bare repository with one commit.
GIT_SERVER = r"""
set -e
ssh-keygen -A >/dev/null
useradd --create-home --shell /bin/bash git
usermod -p '*' git
install -d -o git -g git -m 0700 /home/git/.ssh
echo "$PUBKEY" > /home/git/.ssh/authorized_keys
chown git:git /home/git/.ssh/authorized_keys && chmod 0600 /home/git/.ssh/authorized_keys
mkdir -p /srv/git /tmp/seed
git init -q --bare -b main /srv/git/repo.git
cd /tmp/seed && git init -q -b main && echo seed > README && git add README
git -c user.name=seed -c user.email=seed@example.test commit -qm seed && git push -q /srv/git/repo.git main
chown -R git:git /srv/git
mkdir -p /run/sshd
touch /tmp/ready
exec /usr/sbin/sshd -D -e
"""


class E2ETest(unittest.TestCase):
    """Gives each test the module's World and checks that no session is left behind."""

    world: World = None

    def setUp(self):
        # Cleanups run after tearDown: a failed test's sessions are removed once its leftovers were reported.
        self.addCleanup(self.world.reap)

    def tearDown(self):
        left = leftovers()
        self.assertEqual(left, [], "claude-bottle left containers or networks behind")
        owners = [owned_by(pid) for pid in sorted(STARTED)] if SHARED else [["--filter", "label=claude-bottle.session"]]
        fresh = [v for owner in owners for v in docker("volume", "ls", "--format", "{{.Name}}", *owner).stdout.split()]
        self.assertEqual(fresh, [], "claude-bottle left a session's own volume behind")

    def assertNoLeftovers(self, session: str):
        self.assertEqual(leftovers(session), [])
        self.assertEqual(docker("network", "inspect", self.world.network, check=False).returncode, 0,
                         "the user's egress_network must survive the session")


def module_fixtures(namespace: dict):
    """unittest's setUpModule and tearDownModule for a test module: one World, as its global `world`.

        setUpModule, tearDownModule = module_fixtures(globals())
    """
    def set_up():
        namespace["world"] = E2ETest.world = World(require_engine())

    def tear_down():
        if namespace.get("world"):
            namespace["world"].close()

    return set_up, tear_down


# An agent prints READY when its command runs; the command line in the preflight summary shows
# READY_ECHO, which differs, so the summary is never mistaken for it.
READY, READY_ECHO = "AGENT-READY", "AGENT''-READY"


def wait_ready(proc):
    for line in proc.stdout:
        if line.strip() == READY:
            return
    raise AssertionError(f"the agent never started: {proc.stderr.read()}")
