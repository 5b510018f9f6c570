#!/usr/bin/env python3
"""claude-bottle's benchmark: how long a bottle takes to start and go, against the same topology by hand.

    make bench                       # or: python3 bench/bench.py [--runs N] [--only SECTION ...]

Everything runs on the local engine with local images (the e2e test images, built when missing; nothing is
ever pulled) and prints one table: medians over the runs of each section after one warm-up run, with the
machine, the engine and the targets of the issues. Measured:

1. start-to-ready: invocation to the agent command running, for `claude_bottle.py start`, the raw `docker`
   sequence that builds the same topology by hand, and `docker-compose up` of an equivalent compose file.
2. teardown: the agent command's exit to nothing left (and SIGINT to the CLI's exit, nothing left).
3. dry-run: `start --dry-run` and `check` on a config of 10 agents.
4. concurrency: 8, 16, 32 and 64 sessions started at once (--counts), running a short command or all up together,
   next to as many raw sequences at once; and the memory of one idle bottle.
5. throughput: direct, CONNECT and plain HTTP through the sidecar (plain_http = "tunnel", the default, and
   "scan"), and `git clone` over an SSH alias, from servers on a network of the bench's own.

Plus one traced start: every docker call claude-bottle makes, with its duration, and where the time goes.

Objects the bench creates itself are named `cbbench-*` and labelled `cbbench=<run tag>`, and are removed
however the bench ends. Exit status: 0 when every measurement ran and left nothing behind (targets missed
are reported, not failed: a benchmark prints numbers), 1 otherwise, 2 for a usage error.
"""

import argparse
import collections
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "claude_bottle.py"
sys.path.insert(0, str(ROOT))
from tests.e2e import images  # noqa: E402  (needs ROOT on sys.path)
from tests.e2e.harness import GIT_SERVER, agent_writable, cli_env  # noqa: E402
import claude_bottle as cb  # noqa: E402

# ---- Constants ----

# Targets from the issues.
READY_VS_RAW = 1.00       # start-to-ready median: claude-bottle / the raw sequence
TEARDOWN_VS_RAW = 1.00    # the command's exit -> nothing left: claude-bottle / the raw sequence's removal
SIGINT_MAX = 1.5
DRY_RUN_MAX = 0.100

# Measured runs per section when --runs is not given. A concurrency run already holds one sample per session.
RUNS = {"start": 5, "sigint": 5, "dry": 10, "concurrency": 1, "throughput": 3, "clone": 3}
# The clone section's repositories: this many MB of incompressible history each, and a change not yet committed.
CLONE_MB = (10, 500)
# Its agent command: stamps on stdout (a clone's /workspace is not this machine's), and one new file to bring back.
CLONE_CMD = 'echo "READY $(date +%s.%N)"; echo "SESSION $CLAUDE_BOTTLE_SESSION"; echo new > agent.txt; ' \
            'echo "EXIT $(date +%s.%N)"'
COUNTS = (8, 16, 32, 64)
SIZES_MB = (9, 50)
REPO_MB = 60
REPO_FILES = 5
TRANSFER_TIMEOUT = 300
# How long a bottle sits idle before `docker stats` samples its memory.
IDLE_SETTLE = 2.0

AGENT = "bench"
# The agent command of every start-to-ready variant: stamp when it runs, stamp when it is about to exit.
# `date +%s.%N` reads CLOCK_REALTIME, the same kernel clock as the host's time.time().
READY_CMD = ('date +%s.%N > /workspace/ready; echo "${CLAUDE_BOTTLE_SESSION:-}" > /workspace/session; '
             'date +%s.%N > /workspace/exit')
SLEEP_CMD = 'echo "${CLAUDE_BOTTLE_SESSION:-}" > /workspace/session; date +%s.%N > /workspace/ready; exec sleep 120'
# The concurrency section's commands, named by the session id (claude-bottle) or CBBENCH_ID (the raw sequence):
# stamp, then exit at once or, all up together, once the bench writes /workspace/go (every session is up).
_STAMP_ID = 'id=${CLAUDE_BOTTLE_SESSION:-$CBBENCH_ID}; date +%s.%N > "/workspace/ready-$id"; '
RUN_AND_EXIT_CMD = _STAMP_ID + 'echo "$id"'
UP_TOGETHER_CMD = _STAMP_ID + 'while [ ! -e /workspace/go ]; do sleep 0.1; done; echo "$id"'

# What claude-bottle puts on its containers, repeated for the raw and compose variants so that they run the
# same containers: only the orchestration differs.
PROXY_PORT = 8888
SIDECAR_FLAGS = ["--user", "65534:65534", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "--pids-limit", "512"]
AGENT_FLAGS = ["--dns", "127.0.0.1", "--dns-option", "timeout:1", "--dns-option", "attempts:1",
               # As claude-bottle runs its agent: as the user who runs it (the bench), who owns the workspaces.
               "--user", f"{os.getuid()}:{os.getgid()}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--pids-limit", "4096", "--init", "--workdir", "/workspace"]
PIPELOCK_ARGS = ["run", "--config", "/etc/pipelock/pipelock.yaml", "--listen", f"0.0.0.0:{PROXY_PORT}"]
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"

# ---- Helpers ----


class BenchError(Exception):
    """A measurement could not be taken or left something behind; the message says which."""


def run(argv, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)[:200]} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc


def docker(*args, check=True) -> subprocess.CompletedProcess:
    return run(["docker", *args], check=check)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def read_stamp(path: Path) -> float:
    return float(path.read_text().split()[0])


def wait_for_stamp(path: Path, proc: subprocess.Popen, timeout=60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n"):
            return float(text.split()[0])
        if proc.poll() is not None:
            raise BenchError(f"the CLI exited ({proc.returncode}) before its command ran")
        time.sleep(0.005)
    raise BenchError(f"{path} never appeared")


def listed(filters) -> tuple:
    """(containers, networks) matching every `label=...` filter."""
    flt = [a for f in filters for a in ("--filter", f)]
    return (docker("ps", "-a", "--format", "{{.Names}}", *flt, check=False).stdout.split(),
            docker("network", "ls", "--format", "{{.Name}}", *flt, check=False).stdout.split())


def leftovers(*filters: str) -> list:
    """Containers and networks matching every `label=...` filter."""
    containers, networks = listed(filters)
    return containers + networks


def cb_objects(sessions, pids) -> tuple:
    """The containers and the networks of these claude-bottle sessions: by their session label, or by their owner
    label (host:pid of the CLIs that started them). One listing of each kind, however many sessions."""
    sessions = set(sessions) - {""}
    owners = {f"{socket.gethostname()}:{pid}" for pid in pids}
    found = []
    for argv in (["ps", "-a", "--format", "{{.Names}}"], ["network", "ls", "--format", "{{.Name}}"]):
        argv[-1] += '\t{{.Label "claude-bottle.session"}}\t{{.Label "claude-bottle.owner"}}'
        rows = [line.split("\t") for line in docker(*argv, check=False).stdout.splitlines()]
        found.append(sorted(r[0] for r in rows if len(r) == 3 and (r[1] in sessions or r[2] in owners)))
    return tuple(found)


def cb_leftovers(session: str, pid: int) -> list:
    """What a claude-bottle session left, by its session label and by its owner label."""
    containers, networks = cb_objects([session], [pid])
    return containers + networks


def remove(containers: list, networks: list) -> list:
    """Remove these containers, then these networks; return their names."""
    if containers:
        docker("rm", "--force", *containers, check=False)
    if networks:
        docker("network", "rm", *networks, check=False)
    return containers + networks


def percentile(values: list, p: float) -> float:
    """The nearest-rank percentile: the smallest value that `p` per cent of the values are at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)] if ordered else float("nan")


def runs_text(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def finish(proc: subprocess.Popen, deadline: float) -> int:
    """Wait for `proc` until `deadline` (time.monotonic()); past it, stop it with SIGTERM. Its exit status."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


class Samples:
    def __init__(self):
        self.values = []

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


# ---- The bench context: images, project dirs, the pipelock config, cleanup ----


class Bench:
    def __init__(self, runs: int | None, warmup: int):
        self.runs_arg, self.warmup = runs, warmup
        self.tag = os.urandom(3).hex()
        self.label = f"cbbench={self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="cbbench-"))
        self.tmp.chmod(0o755)
        self.procs = []          # claude-bottle CLIs started, for the final sweep
        self.noise = []          # containers running on the engine before each measured run: others' work
        self.noise_cb = []       # claude-bottle containers present then (a start looks at every session)
        self.problems = []
        self.cleanups = []       # callables run by close(), last first: e.g. stopping the bench's ssh-agent
        self.closing = False     # set by close(): threads still starting raw sequences stop creating
        try:
            self._prepare()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _prepare(self) -> None:
        self.images = images.ensure_images(verbose=False)
        for name, tag in self.images.items():
            # A missing image would be pulled by `docker run` or compose: refuse instead.
            if docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).returncode != 0:
                raise BenchError(f"the {name} image {tag} is not on this engine, and the bench never pulls; "
                                 f"build it (make images) or unset {images.PIPELOCK_IMAGE_ENV}")
        self.debian, self.pipelock = self.images["debian"], self.images["pipelock"]
        self.compose = shutil.which("docker-compose")
        self.config = f'[agents.{AGENT}]\nimage = "{self.debian}"\nenv = []\n'
        self.project = self.workspace("project", self.config)
        self.pipelock_dir = self.tmp / "pipelock"
        self.pipelock_dir.mkdir(mode=0o755)
        # claude-bottle's own rendering of the config, exactly as a start would write it.
        plan = json.loads(run([sys.executable, str(CLI), "start", AGENT, "--dry-run", "--json", "--", "true"],
                              cwd=self.project, env=self.env()).stdout)
        config = self.pipelock_dir / "pipelock.yaml"
        config.write_text(plan["files"]["pipelock/pipelock.yaml"])
        config.chmod(0o644)

    def runs(self, section: str) -> int:
        """Measured runs of `section`: --runs, else the section's own default."""
        return self.runs_arg or RUNS[section]

    def workspace(self, name: str, config: str | None = None) -> Path:
        """A directory the agent (the user running the bench) can write to, mounted at /workspace."""
        path = self.tmp / name
        path.mkdir()
        if config is not None:
            (path / "claude-bottle.toml").write_text(config)
        return agent_writable(path)

    def env(self, **extra) -> dict:
        return cli_env(self.pipelock, **extra)

    def cli(self, *args, cwd: Path, log: Path, env=None) -> subprocess.Popen:
        # Output into a file, not a pipe: proc.wait() then returns at the very moment the CLI exits.
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, str(CLI), *args], cwd=cwd, env=env or self.env(),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop what is still running and remove everything the bench made, whatever happened."""
        self.closing = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stranded = remove(*cb_objects((), [proc.pid for proc in self.procs]))
        if stranded:
            self.problems.append(f"claude-bottle left {', '.join(stranded)}; removed by the bench")
        remove(*listed([f"label={self.label}"]))
        # The Claude Code state every session of a bench project kept (claude-bottle keeps it on purpose).
        fmt = '{"name":{{json .Name}},"project":{{json (.Label "claude-bottle.project")}}}'
        states = [json.loads(line) for line in docker("volume", "ls", "--filter", f"label={cb.STATE_LABEL}=1",
                                                      "--format", fmt, check=False).stdout.splitlines()]
        kept = [v["name"] for v in states if (v.get("project") or "").startswith(f"{self.tmp}/")]
        if kept:
            docker("volume", "rm", *kept, check=False)
        for cleanup in reversed(self.cleanups):
            cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- The three ways to build the bottle ----


def reset(ws: Path) -> None:
    for name in ("ready", "exit", "session"):
        (ws / name).unlink(missing_ok=True)


def claude_bottle_once(b: Bench, i: int, *extra) -> dict:
    """`start --yes -q bench -- sh -c READY_CMD`: ready = its first stamp; teardown = its exit to the CLI's."""
    ws = b.project
    reset(ws)
    log = b.tmp / f"cb-{i}{'-'.join(extra)}.log"
    t0 = time.time()
    proc = b.cli("start", "--yes", "-q", *extra, AGENT, "--", "sh", "-c", READY_CMD, cwd=ws, log=log)
    rc = proc.wait()
    t_end = time.time()
    if rc != 0:
        raise BenchError(f"claude-bottle start exited {rc}: {log.read_text()[-800:]}")
    session = (ws / "session").read_text().strip()
    left = cb_leftovers(session, proc.pid)
    if left:
        raise BenchError(f"claude-bottle session {session} left {left}")
    return {"ready": read_stamp(ws / "ready") - t0, "teardown": t_end - read_stamp(ws / "exit"),
            "session": session}


def raw_sequence(b: Bench, name: str, ws: Path, command: str, env: dict | None = None) -> dict:
    """The topology by hand, one docker command after the other, with `command` in the agent; then its removal.

    Whatever was created is removed, also when a step fails; "error" then names the step and docker's complaint.
    Times: "t0" before the first command, "t_exit" when the agent's `docker run` returned (or a step failed),
    "t_removed" when the removal commands returned; "left" is what still carries the sequence's label after it.
    """
    internal, egress, sidecar, agent = f"{name}-internal", f"{name}-egress", f"{name}-pipelock", name
    labels = ["--label", b.label, "--label", f"cbbench.session={name}"]
    proxy = f"http://{sidecar}:{PROXY_PORT}"
    env_args = [a for k, v in {**agent_env(proxy), **(env or {})}.items() for a in ("--env", f"{k}={v}")]
    steps = [  # (what, argv, (kind, name) it creates)
        ("network create --internal", ["network", "create", "--internal", "--opt", f"{INHIBIT_IPV4}=true", *labels,
                                       internal], ("network", internal)),
        ("network create", ["network", "create", *labels, egress], ("network", egress)),
        ("run the sidecar", ["run", "--detach", "--pull", "never", "--name", sidecar, *labels, "--network", egress,
                             *SIDECAR_FLAGS, "--mount", f"type=bind,source={b.pipelock_dir},target=/etc/pipelock,"
                             "readonly", b.pipelock, *PIPELOCK_ARGS], ("container", sidecar)),
        ("network connect", ["network", "connect", internal, sidecar], None),
        ("run the agent", ["run", "--pull", "never", "--name", agent, *labels, "--network", internal, *AGENT_FLAGS,
                           "--mount", f"type=bind,source={ws},target=/workspace", *env_args,
                           b.debian, "sh", "-c", command], ("container", agent)),
    ]
    made = {"container": [], "network": []}
    out = {"t0": time.time(), "error": None}
    for what, argv, creates in steps:
        if b.closing:
            out["error"] = "the bench is ending"
            break
        if creates:
            # Before the call: a `docker run` that fails may still have created its container.
            made[creates[0]].insert(0, creates[1])
        proc = docker(*argv, check=False)
        if proc.returncode != 0:
            # docker's complaint, not its "See 'docker run --help'." after it.
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()] or [f"exit {proc.returncode}"]
            out["error"] = f"{what}: {next((line for line in lines if 'rror' in line), lines[0])}"
            break
    out["t_exit"] = time.time()
    remove(made["container"], made["network"])
    out["t_removed"] = time.time()
    out["left"] = leftovers(f"label=cbbench.session={name}")
    return out


def raw_once(b: Bench, i) -> dict:
    """The raw sequence running READY_CMD: start-to-ready, and its teardown from the command's exit."""
    ws = b.tmp / f"raw-{i}"
    if not ws.exists():
        ws = b.workspace(f"raw-{i}")
    out = raw_sequence(b, f"cbbench-{b.tag}-raw{i}", ws, READY_CMD)
    if out["error"] or out["left"]:
        raise BenchError(f"the raw sequence failed ({out['error']}) or left {out['left']}")
    return {"ready": read_stamp(ws / "ready") - out["t0"], "teardown": out["t_removed"] - read_stamp(ws / "exit"),
            "down": out["t_removed"] - out["t_exit"]}


def agent_env(proxy: str) -> dict:
    # The variables claude-bottle sets in the agent (proxy_env), minus its session id.
    no_proxy = "localhost,127.0.0.1,::1"
    return {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "http_proxy": proxy,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy, "NODE_USE_ENV_PROXY": "1",
            "CLAUDE_CODE_PROXY_RESOLVES_HOSTS": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_UPDATES": "1"}


def compose_file(b: Bench, ws: Path) -> dict:
    """The same two containers and two networks as a compose file (JSON is YAML)."""
    labels = {"cbbench": b.tag}
    return {
        "version": "2.4",
        "services": {
            "pipelock": {
                "image": b.pipelock, "command": PIPELOCK_ARGS, "networks": ["egress", "internal"],
                "user": "65534:65534", "read_only": True, "cap_drop": ["ALL"],
                "security_opt": ["no-new-privileges"], "pids_limit": 512,
                "volumes": [f"{b.pipelock_dir}:/etc/pipelock:ro"], "labels": labels,
            },
            "agent": {
                "image": b.debian, "command": ["sh", "-c", READY_CMD.replace("$", "$$")],
                "depends_on": ["pipelock"], "networks": ["internal"],
                "dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"], "user": f"{os.getuid()}:{os.getgid()}",
                "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": 4096, "init": True,
                "working_dir": "/workspace", "volumes": [f"{ws}:/workspace"],
                "environment": agent_env(f"http://pipelock:{PROXY_PORT}"), "labels": labels,
            },
        },
        "networks": {
            "internal": {"internal": True, "driver_opts": {INHIBIT_IPV4: "true"}, "labels": labels},
            "egress": {"labels": labels},
        },
    }


def compose_once(b: Bench, i: int) -> dict:
    """`docker-compose up` until the agent exits (which stops the sidecar), then `docker-compose down`."""
    project = f"cbbench-{b.tag}-compose{i}"
    ws = b.tmp / project
    if not ws.exists():
        ws = b.workspace(project)
        (ws / "docker-compose.yml").write_text(json.dumps(compose_file(b, ws), indent=2))
    reset(ws)
    base = [b.compose, "-p", project, "-f", str(ws / "docker-compose.yml")]
    t0 = time.time()
    run([*base, "up", "--no-build", "--no-color", "--abort-on-container-exit", "--exit-code-from", "agent"])
    t_down = time.time()
    run([*base, "down"])
    t_end = time.time()
    left = leftovers(f"label=com.docker.compose.project={project}")
    if left:
        raise BenchError(f"docker-compose down left {left}")
    return {"ready": read_stamp(ws / "ready") - t0, "teardown": t_end - read_stamp(ws / "exit"),
            "down": t_end - t_down}


# ---- Measurements ----


def sample_noise(b: Bench) -> None:
    b.noise.append(others_running())
    b.noise_cb.append(len(docker("ps", "-aq", "--filter", "label=claude-bottle.session").stdout.split()))


def rounds(b: Bench, what: str, variants: dict, runs: int, warmup: int | None = None,
           noise: bool = True) -> dict:
    """Warm-up, then --runs rounds; each round runs every variant, starting with a different one each time,
    so that drift in the engine's load falls on all of them alike."""
    results = {name: {} for name in variants}
    names = list(variants)
    warmup = b.warmup if warmup is None else warmup
    for r in range(warmup + runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if noise:
                sample_noise(b)
            progress(f"{what}: {name} {'warm-up' if r < warmup else f'run {r - warmup + 1}/{runs}'}")
            out = variants[name](r)
            if r < warmup:
                continue
            for key, value in out.items():
                if isinstance(value, float) and not key.startswith("_"):
                    results[name].setdefault(key, Samples()).add(value)
    return results


def clone_repository(b: Bench, mb: int) -> Path:
    """A bench project that is a git repository of `mb` MB (random files, packed), with a file changed."""
    ws = b.workspace(f"clone-{mb}", b.config)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.test"]
    run([*git, "init", "-q"], cwd=ws)
    for i in range(max(1, mb // 10)):
        (ws / f"blob-{i}.bin").write_bytes(os.urandom(min(mb, 10) * 10**6))
    (ws / "notes.txt").write_text("one\n")
    run([*git, "add", "-A"], cwd=ws, timeout=1800)
    run([*git, "commit", "-qm", "bench"], cwd=ws, timeout=1800)
    run([*git, "repack", "-adq", "--window=0"], cwd=ws, timeout=1800)
    (ws / "notes.txt").write_text("one\ntwo\n")
    return ws


def clone_once(b: Bench, ws: Path, mode: str, i: int) -> dict:
    """`start --clone|--bind ... -- sh -c CLONE_CMD`: ready = its READY stamp; end = its EXIT stamp to the CLI's
    exit (for a clone: the agent's work fetched back as a branch, and the volume removed)."""
    (ws / "agent.txt").unlink(missing_ok=True)
    log = b.tmp / f"clone-{ws.name}-{mode}-{i}.log"
    t0 = time.time()
    proc = b.cli("start", "--yes", "-q", f"--{mode}", AGENT, "--", "sh", "-c", CLONE_CMD, cwd=ws, log=log)
    rc = proc.wait()
    t_end = time.time()
    text = log.read_text()
    if rc != 0:
        raise BenchError(f"claude-bottle start --{mode} exited {rc}: {text[-800:]}")
    stamp = dict(re.findall(r"^(READY|EXIT|SESSION) (\S+)$", text, re.M))
    left = cb_leftovers(stamp["SESSION"], proc.pid)
    if left:
        raise BenchError(f"claude-bottle session {stamp['SESSION']} left {left}")
    if mode == "clone" and "is in branch" not in text:
        raise BenchError(f"the clone session's work did not come back: {text[-400:]}")
    return {"ready": float(stamp["READY"]) - t0, "end": t_end - float(stamp["EXIT"])}


def measure_clone(b: Bench) -> dict:
    results = {}
    for mb in CLONE_MB:
        progress(f"clone: a repository of {mb} MB")
        ws = clone_repository(b, mb)
        results.update(rounds(b, "clone", {f"{mb} MB, {mode}": (lambda r, mode=mode, ws=ws: clone_once(b, ws, mode, r))
                                          for mode in ("bind", "clone")}, b.runs("clone")))
    return results


def report_clone(res: dict) -> list:
    out = ["", "6. clone mode: start-to-ready and the end (the agent's exit -> the CLI's, its work fetched back), "
           "beside a bind session of the same repository, same runs"]
    for mb in CLONE_MB:
        bind, clone = res.get(f"{mb} MB, bind"), res.get(f"{mb} MB, clone")
        if not bind or not clone:
            continue
        for what in ("ready", "end"):
            out.append(row(f"{mb} MB: {what}, bind", bind[what]))
            out.append(row(f"{mb} MB: {what}, clone", clone[what]))
            out.append(f"  {f'{mb} MB: {what}, clone adds':<44} {clone[what].median - bind[what].median:>9.3f}s")
    return out


def measure_start(b: Bench) -> dict:
    variants = {
        "claude-bottle": lambda r: claude_bottle_once(b, r),
        "claude-bottle --no-self-test": lambda r: claude_bottle_once(b, r, "--no-self-test"),
        "raw docker sequence": lambda r: raw_once(b, r),
    }
    if b.compose:
        variants["docker-compose"] = lambda r: compose_once(b, r)
    return rounds(b, "start", variants, b.runs("start"))


def sigint_once(b: Bench, r: int) -> dict:
    ws = b.project
    reset(ws)
    log = b.tmp / f"sigint-{r}.log"
    proc = b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", SLEEP_CMD, cwd=ws, log=log)
    wait_for_stamp(ws / "ready", proc)
    session = (ws / "session").read_text().strip()
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    elapsed = time.time() - t0
    if rc != 128 + signal.SIGINT:
        raise BenchError(f"after SIGINT claude-bottle exited {rc}, not 130: {log.read_text()[-800:]}")
    left = cb_leftovers(session, proc.pid)
    if left:
        raise BenchError(f"interrupted session {session} left {left}")
    return {"sigint": elapsed}


DRY_RUN_CONFIG = """\
[bottles.web]
allow = ["github.com", "*.githubusercontent.com", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"]
[[bottles.web.ssh]]
Host = "github.com"
Hostname = "github.com"
User = "git"

[bottles.corp]
allow = ["git.corp.example", "*.corp.example", "10.1.2.3"]
trusted = ["git.corp.example"]
max_tunnel_seconds = 7200
idle_timeout_seconds = 600
[[bottles.corp.ssh]]
Host = "corp"
Hostname = "git.corp.example"
Port = 2222
"""


def dry_run_project(b: Bench) -> Path:
    agents = []
    for n in range(10):
        lines = [f"[agents.agent{n}]", f'bottle = "{("default", "web", "corp")[n % 3]}"']
        if n % 2:
            lines.append(f'image = "registry.example/agent:{n}"')
        if n % 4 == 0:
            lines.append(f'command = ["claude", "-p", "task {n}"]')
        agents.append("\n".join(lines))
    return b.workspace("dryrun", DRY_RUN_CONFIG + "\n" + "\n\n".join(agents) + "\n")


def user_python3() -> str | None:
    """`python3` as the user's shell finds it. Under pyenv, `make bench` runs with pyenv's version directory put
    first on PATH by the shim itself, so look past that to the PATH the user has (where the shim is)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    pyenv_versions = os.path.join(os.environ.get("PYENV_ROOT", "/nonexistent"), "versions") + os.sep
    path = [d for d in path if not d.startswith(pyenv_versions)]
    return shutil.which("python3", path=os.pathsep.join(path))


def measure_dry_run(b: Bench) -> tuple:
    ws = dry_run_project(b)
    pythons = {"sys.executable": sys.executable}
    on_path = user_python3()
    if on_path and os.path.realpath(on_path) != os.path.realpath(sys.executable):
        pythons["python3 on PATH"] = on_path

    def timed(argv):
        def once(r):
            t0 = time.perf_counter()
            proc = run(argv, check=False, cwd=ws, env=b.env())
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise BenchError(f"{shlex.join(argv[1:3])} exited {proc.returncode}: {proc.stderr[-600:]}")
            return {"wall": elapsed}
        return once

    variants = {}
    for label, python in pythons.items():
        variants[f"start --dry-run ({label})"] = timed([python, str(CLI), "start", "agent4", "--dry-run"])
        variants[f"check ({label})"] = timed([python, str(CLI), "check"])
    # References, no target: the interpreter alone, with and without site.
    variants["reference: python -c pass"] = timed([sys.executable, "-c", "pass"])
    variants["reference: python -S -c pass (no site)"] = timed([sys.executable, "-S", "-c", "pass"])
    # The floor of any claude_bottle.py command: start-up, compiling the script (a __main__ is never cached),
    # its imports and module body, and --version's early exit.
    variants["reference: claude_bottle.py --version"] = timed([sys.executable, str(CLI), "--version"])
    # Cheap: at least 10 rounds, for steadier medians.
    return rounds(b, "dry-run", variants, max(b.runs("dry"), RUNS["dry"]), noise=False), pythons


# (what, all up together?) in the order of the first run and of the report.
CONCURRENCY_VARIANTS = (("claude-bottle", False), ("claude-bottle", True),
                        ("raw docker sequence", False), ("raw docker sequence", True))


def release_when_up(ws, n: int, finished, timeout: float = 600.0) -> None:
    """All up together: write /workspace/go once each of the `n` sessions is up (its ready file) or has ended.
    `ws`: the workspace they share, or a list of theirs."""
    wss = ws if isinstance(ws, list) else [ws]
    deadline = time.monotonic() + timeout
    while sum(len(list(w.glob("ready-*"))) for w in wss) + finished() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    for w in wss:
        (w / "go").touch()


def brief_error(text: str) -> str:
    """One failure as one line, the same for every session: session ids and the bench's names replaced, a quoted
    docker command cut to its first two words (what failed is in docker's complaint after it)."""
    text = text.removeprefix("claude-bottle: error: ")
    text = re.sub(r"`docker ([\w-]+(?: [\w-]+)?)[^`]*`", r"`docker \1 ...`", text)
    text = re.sub(r"\bbench-[0-9a-f]{6}\b", "<session>", text)
    return re.sub(r"\bcbbench-[0-9a-f]{6}-[\w-]+", "<name>", text)


def concurrency_cb(b: Bench, n: int, together: bool, tag: str) -> dict:
    """`n` claude-bottle starts at once, each a process of its own."""
    # A project each, as users run several agents: claude-bottle never lets two into one working tree in place.
    wss = [b.workspace(f"{tag}-{k}", b.config) for k in range(n)]
    command = UP_TOGETHER_CMD if together else RUN_AND_EXIT_CMD
    logs = [b.tmp / f"{tag}-{k}.log" for k in range(n)]
    launched, procs = [], []
    t0 = time.time()
    for ws, log in zip(wss, logs):
        launched.append(time.time())
        procs.append(b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", command, cwd=ws, log=log))
    if together:
        release_when_up(wss, n, lambda: sum(p.poll() is not None for p in procs))
    deadline = time.monotonic() + 900
    codes = [finish(p, deadline) for p in procs]
    total = time.time() - t0
    ready_at = {p.name[len("ready-"):]: read_stamp(p) for ws in wss for p in ws.glob("ready-*")}
    readies, errors, sessions = [], [], []
    for log, code, at in zip(logs, codes, launched):
        lines = log.read_text(errors="replace").strip().splitlines()
        # With -q the CLI prints only the command's output: the session id it echoes.
        session = next((line for line in lines if line in ready_at), "")
        if code == 0 and session:
            readies.append(ready_at[session] - at)
            sessions.append(session)
        else:
            said = [line for line in lines if line.startswith("claude-bottle: error:")]
            errors.append(brief_error(said[-1] if said else f"claude-bottle exited {code}: {' | '.join(lines)[-200:]}"))
    left = remove(*cb_objects(sessions, [p.pid for p in procs]))
    if left:
        b.problems.append(f"{n} sessions at once left {', '.join(left)}; removed by the bench")
    if len(set(sessions)) != len(sessions):
        b.problems.append(f"{n} sessions at once: session ids collided: {sorted(sessions)}")
    return {"readies": readies, "total": total, "errors": errors, "left": left}


def concurrency_raw(b: Bench, n: int, together: bool, tag: str) -> dict:
    """The same for the raw sequence: `n` copies of it at once, each in a thread."""
    ws = b.workspace(tag)
    command = UP_TOGETHER_CMD if together else RUN_AND_EXIT_CMD
    names = [f"cbbench-{b.tag}-{tag}-{k}" for k in range(n)]
    results = [None] * n

    def one(k):
        try:
            results[k] = raw_sequence(b, names[k], ws, command, env={"CBBENCH_ID": names[k]})
        except Exception as e:  # e.g. a docker call that hangs past run()'s timeout
            results[k] = {"error": f"{type(e).__name__}: {e}", "left": leftovers(f"label=cbbench.session={names[k]}")}

    # Daemon threads: an interrupted bench does not wait for them; close() stops them creating more.
    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    if together:
        release_when_up(ws, n, lambda: sum(not t.is_alive() for t in threads))
    for t in threads:
        t.join()
    total = time.time() - t0
    readies, errors, left = [], [], []
    for name, res in zip(names, results):
        ready = ws / f"ready-{name}"
        if res["error"] is None and ready.exists():
            readies.append(read_stamp(ready) - res["t0"])
        else:
            errors.append(brief_error(res["error"] or "the agent command never ran"))
        if res["left"]:
            left += remove(*listed([f"label=cbbench.session={name}"]))
    return {"readies": readies, "total": total, "errors": errors, "left": left}


def idle_memory(b: Bench, r: int) -> dict:
    """One bottle up and idle: what `docker stats --no-stream` says its sidecar and its agent use."""
    tag = f"memory-{r}"
    ws = b.workspace(tag, b.config)
    log = b.tmp / f"{tag}.log"
    proc = b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", UP_TOGETHER_CMD, cwd=ws, log=log)
    session = ""
    try:
        deadline = time.monotonic() + 120
        while not session and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"the idle bottle exited ({proc.returncode}): {log.read_text()[-600:]}")
            session = next((p.name[len("ready-"):] for p in ws.glob("ready-*")), "")
            time.sleep(0.05)
        if not session:
            raise BenchError("the idle bottle never became ready")
        time.sleep(IDLE_SETTLE)
        roles = dict(line.split("\t") for line in docker(
            "ps", "--filter", f"label=claude-bottle.session={session}",
            "--format", '{{.Names}}\t{{.Label "claude-bottle.role"}}').stdout.splitlines())
        stats = docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *roles).stdout
        usage = {roles[name]: mem_bytes(mem) for name, mem in (line.split("\t") for line in stats.splitlines())}
    finally:
        (ws / "go").touch()
    code = finish(proc, time.monotonic() + 60)
    left = cb_leftovers(session, proc.pid)
    if code != 0 or left:
        raise BenchError(f"the idle bottle exited {code} and left {left}: {log.read_text()[-600:]}")
    return usage


def mem_bytes(text: str) -> float:
    """`docker stats`' MemUsage, e.g. `31.2MiB / 23.54GiB`: the usage, in bytes."""
    m = re.match(r"\s*([\d.]+)\s*([KMGT]?i?B)", text, re.I)
    if not m:
        raise BenchError(f"cannot read docker stats' memory usage {text!r}")
    unit = m.group(2).upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    return float(m.group(1)) * (1024 if "I" in unit else 1000) ** power


def measure_concurrency(b: Bench, counts, warm: bool) -> dict:
    """For each count, each variant once a run (in a different order each run); then one idle bottle's memory."""
    if warm:
        for w in range(b.warmup):
            progress(f"concurrency: warm-up {w + 1}/{b.warmup} (one claude-bottle start and one raw sequence)")
            claude_bottle_once(b, f"warm{w}")
            raw_once(b, f"warm{w}")
    variants = CONCURRENCY_VARIANTS
    runs = b.runs("concurrency")
    results = {}
    for n in counts:
        for r in range(runs):
            for name, together in variants[r % len(variants):] + variants[:r % len(variants)]:
                sample_noise(b)
                progress(f"concurrency: {n} at once, {name}, {'all up together' if together else 'run and exit'}, "
                         f"run {r + 1}/{runs}")
                measure = concurrency_cb if name == "claude-bottle" else concurrency_raw
                tag = f"{'cb' if name == 'claude-bottle' else 'raw'}{n}{'up' if together else 'run'}{r}"
                results.setdefault((n, name, together), []).append(measure(b, n, together, tag))
    memory = []
    for r in range(runs):
        progress(f"concurrency: memory of one idle bottle, run {r + 1}/{runs}")
        memory.append(idle_memory(b, r))
    return {"counts": list(counts), "runs": runs, "results": results, "memory": memory}


# ---- Throughput: a web server and a git server on a network of the bench's own ----

# The web server: the files, then `python3 -m http.server`. Binary: random bytes. Text: Python's own library
# sources concatenated and repeated, the kind of text an agent fetches (pipelock may scan text bodies).
WEB_SERVER = r"""
set -e
mkdir -p /srv/www && cd /srv/www
for mb in $SIZES_MB; do head -c $((mb * 1000000)) /dev/urandom > bin-${mb}MB; done
python3 - $SIZES_MB <<'PY'
import pathlib, sys
text = b"".join(p.read_bytes() for p in sorted(pathlib.Path("/usr/lib").glob("python3*/**/*.py")))
for mb in sys.argv[1:]:
    n = int(mb) * 1000000
    pathlib.Path(f"text-{mb}MB").write_bytes((text * (n // len(text) + 1))[:n])
PY
touch /tmp/ready
exec python3 -m http.server 8000
"""

# Run as root in the git server (harness.GIT_SERVER) once it is up: FILES files of BYTES random bytes committed
# and pushed. Random bytes do not compress, so level 0 spares the CPU; the pushed pack is kept as it is (no
# unpacking into loose objects), so a clone sends it without recompressing anything. The repository is the git
# user's: root may use it here (safe.directory).
GIT_FILL = r"""
set -e
git config --system safe.directory '*'
git config --system core.compression 0
git -C /srv/git/repo.git config receive.unpackLimit 1
cd /tmp/seed
i=0
while [ $i -lt $FILES ]; do head -c $BYTES /dev/urandom > data-$i.bin; i=$((i + 1)); done
git add . && git -c user.name=bench -c user.email=bench@example.test commit -qm data
git push -q /srv/git/repo.git main
chown -R git:git /srv/git
"""

# Every transfer of a throughput run, timed where it happens (curl's own clock; `date` around git clone).
# One line each: run, way, file, exit status, HTTP status, seconds, bytes; git's complaints as "# " lines.
TRANSFERS = r"""
for r in $(seq 1 {rounds}); do
  for f in {files}; do
    for way in {ways}; do
      case $way in
        direct) set -- --noproxy '*' ;;
        CONNECT) set -- --proxytunnel --proxy "$HTTPS_PROXY" ;;
        plain|scan) set -- --proxy "$http_proxy" ;;
      esac
      w=$(curl -s -o /dev/null --max-time {timeout} -w '%{{http_code}} %{{time_total}} %{{size_download}}' \
          "$@" "http://web:8000/$f")
      echo "$r $way $f $? $w"
    done
  done
  [ -n "{git_url}" ] || continue
  rm -rf /tmp/cbbench-clone
  s=$(date +%s.%N)
  timeout {timeout} git clone -q {git_url} /tmp/cbbench-clone 2> /tmp/cbbench-clone.err
  rc=$?
  e=$(date +%s.%N)
  size=$(cat /tmp/cbbench-clone/.git/objects/pack/*.pack 2> /dev/null | wc -c)
  echo "$r git clone $rc 000 $(awk "BEGIN {{ print $e - $s }}") $size"
  [ $rc = 0 ] || tail -n 3 /tmp/cbbench-clone.err | sed 's/^/# /'
done
rm -rf /tmp/cbbench-clone
"""
DIRECT_SSH = ("ssh -i /cbbench-key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
              "-o LogLevel=ERROR")


def ssh_agent(b: Bench) -> tuple:
    """A fresh key in an ssh-agent of the bench's own, stopped by close(): (key file, public key, socket)."""
    key = b.tmp / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cbbench", "-f", str(key)])
    sock = str(b.tmp / "ssh-agent.sock")
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", run(["ssh-agent", "-a", sock]).stdout).group(1))

    def stop():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    b.cleanups.append(stop)
    run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": sock})
    return key, Path(f"{key}.pub").read_text().strip(), sock


def start_server(b: Bench, network: str, alias: str, script: str, env: dict, probe: str) -> str:
    """A server container on `network`, reachable as `alias`; returns once `probe` succeeds inside it."""
    name = f"cbbench-{b.tag}-{alias}"
    docker("run", "--detach", "--pull", "never", "--name", name, "--label", b.label, "--network", network,
           "--network-alias", alias, *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
           b.debian, "sh", "-c", script)
    deadline = time.monotonic() + 300
    while docker("exec", name, "sh", "-c", probe, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise BenchError(f"{name} never became ready: {docker('logs', name, check=False).stderr[-500:]}")
        time.sleep(0.2)
    return name


def throughput_config(b: Bench, network: str, plain_http: str = "tunnel") -> str:
    return (f'[bottles.tput]\negress_network = "{network}"\nallow = ["web", "git"]\ntrusted = ["web", "git"]\n'
            f'plain_http = "{plain_http}"\n'
            '[[bottles.tput.ssh]]\nHost = "gitserver"\nHostname = "git"\nUser = "git"\n'
            f'[agents.{AGENT}]\nbottle = "tput"\nimage = "{b.debian}"\nenv = []\n')


def parse_transfers(text: str, warmup: int) -> tuple:
    """The TRANSFERS lines of the measured runs, {(way, file): [(exit, http, seconds, bytes)]}; and other lines."""
    got, notes = {}, []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 7 and f[0].isdigit():
            if int(f[0]) > warmup:
                got.setdefault((f[1], f[2]), []).append((int(f[3]), f[4], float(f[5]), int(f[6])))
        elif line.strip():
            notes.append(line.removeprefix("# "))
    return got, notes


def measure_throughput(b: Bench, sizes, repo_mb: int, timeout: int) -> dict:
    runs = b.runs("throughput")
    rounds_ = b.warmup + runs
    files = [f"{kind}-{mb}MB" for mb in sizes for kind in ("bin", "text")]
    # Every transfer is bounded by `timeout`; this only stops a hung run.
    budget = rounds_ * (3 * len(files) + 1) * (timeout + 10) + 300
    network = f"cbbench-{b.tag}-outside"
    # Internal: the servers, the plain container and the sidecar reach each other and nothing else.
    docker("network", "create", "--internal", "--label", b.label, network)
    key, pubkey, sock = ssh_agent(b)
    progress(f"throughput: the web server makes its files ({', '.join(files)})")
    start_server(b, network, "web", WEB_SERVER, {"SIZES_MB": " ".join(map(str, sizes))},
                 "test -e /tmp/ready && curl -sf -o /dev/null http://127.0.0.1:8000/")
    progress(f"throughput: the git server makes its repository ({REPO_FILES} x {repo_mb / REPO_FILES:g} MB)")
    git = start_server(b, network, "git", GIT_SERVER, {"PUBKEY": pubkey}, "test -e /tmp/ready && nc -z 127.0.0.1 22")
    docker("exec", "--env", f"FILES={REPO_FILES}", "--env", f"BYTES={repo_mb * 1000000 // REPO_FILES}", git,
           "sh", "-c", GIT_FILL)

    def transfers(ways: str, git_url: str) -> str:
        return TRANSFERS.format(rounds=rounds_, files=" ".join(files), ways=ways, timeout=timeout, git_url=git_url)

    sample_noise(b)
    progress(f"throughput: direct, from a plain container on {network}: {runs_text(runs)} after {b.warmup} warm-up")
    # The key file goes into this plain container only; the bottle gets the key through the ssh-agent.
    direct = run(["docker", "run", "--rm", "--pull", "never", "--name", f"cbbench-{b.tag}-direct", "--label", b.label,
                  "--network", network, "--mount", f"type=bind,source={key},target=/cbbench-key,readonly",
                  "--env", f"GIT_SSH_COMMAND={DIRECT_SSH}", b.debian,
                  "sh", "-c", transfers("direct", "git@git:/srv/git/repo.git")], timeout=budget).stdout
    def bottle(name: str, plain_http: str, ways: str, git_url: str) -> str:
        ws = b.workspace(name, throughput_config(b, network, plain_http))
        sample_noise(b)
        script = ('echo "$CLAUDE_BOTTLE_SESSION" > /workspace/session; exec > /workspace/throughput.txt 2>&1\n'
                  + transfers(ways, git_url))
        log = b.tmp / f"{name}-cli.log"
        proc = b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", script, cwd=ws, log=log,
                     env=b.env(SSH_AUTH_SOCK=sock))
        code = finish(proc, time.monotonic() + budget)
        session = (ws / "session").read_text().strip() if (ws / "session").exists() else ""
        left = cb_leftovers(session, proc.pid)
        if code != 0 or left:
            raise BenchError(f"the {name} bottle exited {code} and left {left}: {log.read_text()[-800:]}")
        return (ws / "throughput.txt").read_text()

    progress(f"throughput: CONNECT, plain HTTP (plain_http = \"tunnel\") and git over the SSH alias, inside a "
             f"bottle: {runs_text(runs)} after {b.warmup} warm-up")
    inside = bottle("throughput", "tunnel", "CONNECT plain", "gitserver:/srv/git/repo.git")
    progress(f"throughput: plain HTTP in a bottle with plain_http = \"scan\": {runs_text(runs)} after {b.warmup} "
             f"warm-up (each transfer at most {timeout} s)")
    scanned = bottle("throughput-scan", "scan", "scan", "")
    got, notes = parse_transfers(direct, b.warmup)
    got_inside, notes_inside = parse_transfers(inside + scanned, b.warmup)
    return {"runs": runs, "sizes": list(sizes), "timeout": timeout, "direct": got, "bottle": got_inside,
            "notes": [f"direct: {n}" for n in notes] + [f"bottle: {n}" for n in notes_inside]}


TRACE_SHIM = """\
#!/bin/sh
# Logs when each docker call starts and ends and its arguments (each ended by a US character, newlines as spaces),
# in one write, then passes its exit status on.
s=$(date +%s.%N)
"$CBBENCH_REAL_DOCKER" "$@"
rc=$?
printf '%s %s %s %s\\n' "$s" "$(date +%s.%N)" "$rc" "$(printf '%s\\037' "$@" | tr '\\n' ' ')" >> "$CBBENCH_TRACE"
exit $rc
"""
# claude-bottle's -v lines: `claude-bottle: [  0.12s] message`, on its own clock (started as its module runs).
VERBOSE_LINE = re.compile(r"^claude-bottle: \[\s*([\d.]+)s\] (.*)$")


def measure_trace(b: Bench) -> dict:
    """One start with -v and a logging `docker` first on PATH: every docker call, when it ran and for how long."""
    shim_dir = b.tmp / "trace-bin"
    shim_dir.mkdir()
    (shim_dir / "docker").write_text(TRACE_SHIM)
    (shim_dir / "docker").chmod(0o755)
    trace = b.tmp / "trace.log"
    log = b.tmp / "trace-cli.log"
    env = b.env(PATH=f"{shim_dir}:{os.environ['PATH']}", CBBENCH_REAL_DOCKER=shutil.which("docker"),
                CBBENCH_TRACE=str(trace))
    ws = b.project
    reset(ws)
    t0 = time.time()
    proc = b.cli("start", "--yes", "-q", "-v", AGENT, "--", "sh", "-c", READY_CMD, cwd=ws, log=log, env=env)
    rc = proc.wait()
    t_end = time.time()
    if rc != 0:
        raise BenchError(f"traced start exited {rc}: {log.read_text()[-600:]}")
    calls = []
    for line in trace.read_text().splitlines():
        start, end, code, args = line.split(" ", 3)
        calls.append((float(start) - t0, float(end) - t0, int(code), args.split("\x1f")[:-1]))
    verbose = [(float(m.group(1)), m.group(2)) for m in map(VERBOSE_LINE.match, log.read_text().splitlines()) if m]
    return {"calls": sorted(calls), "verbose": verbose, "session": (ws / "session").read_text().strip(),
            "ready": read_stamp(ws / "ready") - t0, "exit": read_stamp(ws / "exit") - t0, "end": t_end - t0}


# ---- Report ----


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms" if seconds < 1 else f"{seconds:7.3f} s "


def row(name: str, s: Samples, target: str = "", ok=None) -> str:
    mark = "" if ok is None else ("PASS" if ok else "FAIL")
    spread = f"{fmt(min(s.values)).strip()} .. {fmt(max(s.values)).strip()}" if s.values else ""
    return f"  {name:<44} {fmt(s.median)}  {spread:<22} {target:<22} {mark}"


def machine() -> list:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " (" + line.split(":", 1)[1].strip() + ")"
                break
    except OSError:
        pass
    engine = docker("version", "--format", "{{.Server.Version}}", check=False).stdout.strip() or "unknown"
    compose = shutil.which("docker-compose")
    compose_v = run([compose, "version", "--short"], check=False).stdout.strip() if compose else "not installed"
    return [
        f"machine:  {os.cpu_count()} CPUs{model}, {platform.system()} {platform.release()}",
        f"engine:   Docker Engine {engine}; docker-compose {compose_v}",
        f"python:   {platform.python_version()} at {sys.executable}",
    ]


def others_running() -> int:
    """Containers running on the engine between two runs, when none of the bench's exist: others' work."""
    return len(docker("ps", "-q", check=False).stdout.split())


def ratio_row(name: str, num: Samples, den: Samples, limit: float | None = None, strict=False) -> str:
    ratio = num.median / den.median
    target = mark = ""
    if limit is not None:
        target = f"< {limit:.2f}x (faster)" if strict else f"<= {limit:.2f}x"
        mark = "PASS" if (ratio < limit if strict else ratio <= limit) else "FAIL"
    return f"  {name:<44} {ratio:8.2f}x  {'':<22} {target:<22} {mark}"


def target_row(name: str, s: Samples, limit: float) -> str:
    target = f"< {limit * 1000:.0f} ms" if limit < 1 else f"< {limit:g} s"
    return row(name, s, target, s.median < limit)


def report_concurrency(conc: dict) -> list:
    runs = conc["runs"]
    out = ["", f"4. concurrency: N sessions started at once; {runs_text(runs)} per count. "
           "start-to-ready is each session's own (launch -> its",
           "   command runs), over the sessions that ran; total: the first launch -> the last one gone; "
           "left: what remained, must be 0",
           f"  {'N':>3}  {'':<38} {'ok':>7} {'median':>10} {'p95':>10} {'total':>10} {'left':>5}"]
    for n in conc["counts"]:
        medians = {}
        for name, together in CONCURRENCY_VARIANTS:
            got = conc["results"].get((n, name, together))
            if not got:
                continue
            readies = [x for g in got for x in g["readies"]]
            errors = [e for g in got for e in g["errors"]]
            left = sum(len(g["left"]) for g in got)
            medians[(name, together)] = statistics.median(readies) if readies else None
            ready_cols = f"{fmt(statistics.median(readies))} {fmt(percentile(readies, 95))}" if readies \
                else f"{'-':>10} {'-':>10}"
            mark = ("PASS" if left == 0 else "FAIL") if name == "claude-bottle" else ""
            out.append(f"  {n:>3}  {name + (': all up together' if together else ': run and exit'):<38} "
                       f"{f'{len(readies)}/{n * len(got)}':>7} {ready_cols} "
                       f"{fmt(statistics.median(g['total'] for g in got))} {left:>5} {mark}")
            for error, count in collections.Counter(errors).most_common(3):
                out.append(f"  {'':>3}    {count} failed: {error[:140]}")
        ratios = []
        for together in (False, True):
            cb, raw = medians.get(("claude-bottle", together)), medians.get(("raw docker sequence", together))
            if cb and raw:
                ratios.append(f"{'all up together' if together else 'run and exit'} {cb / raw:.2f}x")
        if ratios:
            out.append(f"  {'':>3}  ratio of median start-to-ready, claude-bottle / raw: {', '.join(ratios)}")
    if conc["memory"]:
        mib = {role: statistics.median(m.get(role, 0.0) for m in conc["memory"]) / 2 ** 20
               for role in ("pipelock", "agent")}
        together = sum(mib.values())
        out.append(f"  memory of one idle bottle (docker stats --no-stream, median of {len(conc['memory'])}): "
                   f"sidecar {mib['pipelock']:.1f} MiB + agent {mib['agent']:.1f} MiB = {together:.1f} MiB; "
                   f"{max(conc['counts'])} of them: {together * max(conc['counts']):.0f} MiB")
    return out


def number(x: float) -> str:
    """Two decimals, or three significant digits below 0.1 (a crawl still shows)."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def transfer_rates(outcomes: list, expected: int | None) -> tuple:
    """MB/s and seconds of each good transfer, and why each other one failed."""
    rates, seconds, failures = [], [], []
    for code, http, took, size in outcomes:
        if code in (28, 124):
            failures.append("timeout")
        elif code != 0:
            failures.append(f"exit {code}")
        elif expected is not None and http != "200":
            failures.append(f"HTTP {http}")
        elif size == 0 or (expected is not None and size != expected) or took <= 0:
            failures.append(f"{size} bytes" + (f" of {expected}" if expected else ""))
        else:
            rates.append(size / 1e6 / took)
            seconds.append(took)
    return rates, seconds, failures


def report_throughput(tp: dict) -> list:
    out = ["", f"5. throughput: a web and a git server on the bench's own network; median of {runs_text(tp['runs'])}"
           "; MB = 10^6 bytes; per transfer at most",
           f"   {tp['timeout']} s. direct: from a plain container on that network; CONNECT (curl -p) and plain "
           "HTTP ($http_proxy): from inside a bottle;",
           "   tunnel: plain_http = \"tunnel\" (the forwarder, a CONNECT per request); scan: plain_http = \"scan\" "
           "(pipelock's forward proxy)",
           f"  {'':<46} {'time':>10} {'MB/s':>8}  {'min .. max MB/s':<18} {'ratio to direct':>15}"]

    def line(name, outcomes, expected, direct_rate=None):
        rates, seconds, failures = transfer_rates(outcomes or [], expected)
        if not rates:
            why = ", ".join(sorted(set(failures))) or "not measured"
            out.append(f"  {name:<46} {why} ({len(failures)} of {len(outcomes or [])} runs)")
            return None
        rate = statistics.median(rates)
        ratio = f"{number(rate / direct_rate)}x" if direct_rate else ""
        failed = f"  ({len(failures)} failed: {', '.join(sorted(set(failures)))})" if failures else ""
        out.append(f"  {name:<46} {fmt(statistics.median(seconds))} {number(rate):>8}  "
                   f"{f'{number(min(rates))} .. {number(max(rates))}':<18} {ratio:>15}{failed}")
        return rate

    for mb in tp["sizes"]:
        for kind, label in (("bin", "binary"), ("text", "text")):
            f = f"{kind}-{mb}MB"
            direct = line(f"{mb} MB {label}: direct", tp["direct"].get(("direct", f)), mb * 1000000)
            line(f"{mb} MB {label}: CONNECT through the sidecar", tp["bottle"].get(("CONNECT", f)), mb * 1000000,
                 direct)
            line(f"{mb} MB {label}: plain HTTP, tunnel (default)", tp["bottle"].get(("plain", f)), mb * 1000000,
                 direct)
            line(f"{mb} MB {label}: plain HTTP, scan (pipelock)", tp["bottle"].get(("scan", f)), mb * 1000000,
                 direct)
    clones = tp["direct"].get(("git", "clone"), []) + tp["bottle"].get(("git", "clone"), [])
    pack = max((size for *_, size in clones), default=0) / 1e6
    direct = line(f"git clone ({pack:.1f} MB pack): direct, ssh", tp["direct"].get(("git", "clone")), None)
    line("git clone: over the SSH alias (socat, CONNECT)", tp["bottle"].get(("git", "clone")), None, direct)
    out += [f"  {note}" for note in tp["notes"][:6]]
    return out


# What each docker call of a start is for, by its first arguments (the first match wins).
PURPOSES = (
    (("network", "inspect"), "egress_network exists?"),
    (("image", "inspect"), "agent image exists?"),
    (("build",), "build the agent image"),
    (("network", "create", "--internal"), "internal network"),
    (("network", "create"), "egress network"),
    (("ps", "--all", "--filter"), "state: in use?"),
    (("ps",), "reaper (background)"),
    (("network", "ls"), "reaper (background)"),
    (("volume", "inspect"), "state: exists?"),
    (("volume", "create"), "state: new volume"),
    (("volume", "rm"), "teardown: fresh state"),
    (("run", "--detach"), "sidecar: run"),
    (("run", "--rm", "--name"), "state: made the agent's"),
    (("run", "--rm", "--network", "none"), "image probe (once per image)"),
    (("network", "connect"), "sidecar: join internal"),
    (("create",), "agent: create"),
    (("inspect",), "sidecar: its addresses"),
    (("start",), "agent: start, attached"),
    (("exec",), "self-test in the agent"),
    (("logs",), "teardown: pipelock's log"),
    (("rm",), "teardown: containers"),
    (("network", "rm"), "teardown: networks"),
)
# Options left out of the trace's short form of a call: the same on every start, and long.
TRACE_QUIET_OPTIONS = {"--label", "--env", "--mount", "--dns", "--dns-option", "--user", "--cap-drop", "--security-opt",
                       "--pids-limit", "--workdir", "--opt", "--format", "--filter", "--entrypoint"}
TRACE_QUIET_FLAGS = {"--read-only", "--init", "--interactive", "--tty", "--all"}


def purpose(args: list) -> str:
    if args[:1] == ["exec"] and "healthcheck" in args:
        return "sidecar: health check"
    return next((what for first, what in PURPOSES if tuple(args[:len(first)]) == first), "?")


def short_call(args: list, names: dict) -> str:
    words, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in TRACE_QUIET_OPTIONS:
            skip = True
        elif a not in TRACE_QUIET_FLAGS:
            for long, short in names.items():
                a = a.replace(long, short)
            words.append(a if len(a) <= 40 else "<script>")
    return " ".join(words)


def report_trace(tr: dict, b: Bench) -> list:
    calls, end = tr["calls"], tr["end"]
    names = {f"claude-bottle-{tr['session']}": "S", b.pipelock: "PIPELOCK-IMAGE", b.debian: "AGENT-IMAGE"}
    steps = [c for c in calls if c[3][:1] != ["start"]]
    first = min((c[0] for c in calls), default=0.0)
    # Time with no docker call in flight between the first call and the command running (the attached
    # `docker start` left out: it lasts the whole session): Python and sleeps between the calls.
    busy, reach = 0.0, first
    for start, stop, *_ in sorted(c for c in steps if c[0] < tr["ready"]):
        busy += max(0.0, min(stop, tr["ready"]) - max(start, reach))
        reach = max(reach, min(stop, tr["ready"]))
    attached = next((c[1] for c in calls if c[3][:1] == ["start"]), None)
    after = [c for c in calls if c[0] >= tr["exit"]]
    out = ["", "6. one traced claude-bottle start, with -v and a logging `docker` first on PATH (~3 ms more a call): "
           "where the time goes", "  seconds after invoking the CLI:"]
    first_v = next((t for t, msg in tr["verbose"] if msg.startswith("+ docker")), None)
    if first_v is not None and calls:
        # The -v clock starts as claude_bottle.py's module runs: the first call, on both clocks, gives the offset.
        offset = max(0.0, first - first_v)
        out.append(f"  {0:7.3f} .. {offset:.3f}  python start-up and imports, until claude_bottle.py's clock starts "
                   f"(its -v log, to 10 ms)")
        out.append(f"  {offset:7.3f} .. {first:.3f}  claude-bottle: config, plan, private files, until its first "
                   f"docker call")
    else:
        offset = None
        out.append(f"  {0:7.3f} .. {first:.3f}  python start-up, config, plan, private files, until the first "
                   f"docker call")
    out.append(f"  {first:7.3f} .. {tr['ready']:.3f}  docker calls until the agent command runs: "
               f"{sum(1 for c in calls if c[0] < tr['ready'])} calls; no call in flight for "
               f"{tr['ready'] - first - busy:.3f} s")
    out.append(f"  {tr['ready']:7.3f} .. {tr['exit']:.3f}  the agent command itself (its ready and exit stamps)")
    if attached is not None:
        out.append(f"  {tr['exit']:7.3f} .. {attached:.3f}  until the attached `docker start` returns "
                   f"(the agent container has stopped)")
    last = max((c[1] for c in after), default=tr["exit"])
    out.append(f"  {max(attached or 0, tr['exit']):7.3f} .. {last:.3f}  teardown: "
               f"{', '.join('docker ' + ' '.join(c[3][:1 + (c[3][0] == 'network')]) for c in after) or 'nothing'}")
    out.append(f"  {last:7.3f} .. {end:.3f}  until the CLI exits")
    slowest = sorted(steps, key=lambda c: c[0] - c[1])[:3]
    out.append("  slowest calls: " + "; ".join(f"{purpose(c[3])} {c[1] - c[0]:.3f} s" for c in slowest))
    width = 32
    scale = width / end if end > 0 else 0.0

    def bar(start, stop):
        lo = min(width - 1, int(start * scale))
        hi = max(lo + 1, min(width, round(stop * scale)))
        return " " * lo + "#" * (hi - lo) + " " * (width - hi)

    out += ["", f"  {'start':>7} {'took':>7}  |{'0 s':<{width // 2}}{f'{end:.2f} s':>{width - width // 2}}|  "
            f"{'what for':<25} the call (S = claude-bottle-<session>)"]
    marks = [(tr["ready"], "the agent command runs (ready stamp)"),
             (tr["exit"], "the agent command exits (exit stamp)"), (end, "the CLI exits")]
    if offset is not None:
        marks += [(offset + t, f"-v: {msg}") for t, msg in tr["verbose"] if not msg.startswith("+ ")]
    rows = [(c[0], c) for c in calls] + [(t, msg) for t, msg in marks]
    for at, what in sorted(rows, key=lambda r: r[0]):
        if isinstance(what, str):
            out.append(f"  {at:7.3f} {'':>7}  |{bar(at, at).replace('#', '^')}|  <- {what}")
        else:
            start, stop, code, args = what
            status = f"  (exit {code})" if code else ""
            out.append(f"  {start:7.3f} {stop - start:7.3f}  |{bar(start, stop)}|  "
                       f"{purpose(args):<25} docker {short_call(args, names)[:50]}{status}")
    return out


def report(b: Bench, res: dict, wall: float, load: list) -> list:
    noise, noise_cb = b.noise or [0], b.noise_cb or [0]
    out = [f"claude-bottle bench: medians over each section's runs after {b.warmup} warm-up "
           f"(min .. max beside them), all measured in this run", *machine(),
           f"images:   agent {b.debian}; pipelock {b.pipelock}"
           + ("" if os.environ.get(images.PIPELOCK_IMAGE_ENV) else " (the stand-in)"),
           f"noise:    containers running on this engine before each run (none of them the bench's): "
           f"{min(noise)} .. {max(noise)}, median {statistics.median(noise):g}",
           f"          other sessions' claude-bottle containers present (a start inspects each): "
           f"{min(noise_cb)} .. {max(noise_cb)}, median {statistics.median(noise_cb):g}",
           f"          load average {load[0]:.2f} at the start, {load[1]:.2f} at the end"]
    if {"start", "sigint", "dry"} & set(res):
        out += ["", f"  {'':<44} {'median':>10}  {'min .. max':<22} {'target':<22}"]
    st = res.get("start")
    sigint = res.get("sigint", {}).get("claude-bottle", {}).get("sigint")
    if st:
        cb, raw = st["claude-bottle"]["ready"], st["raw docker sequence"]["ready"]
        out.append(f"1. start-to-ready: invocation -> the agent command runs; {runs_text(len(cb.values))}")
        out += [row(name, st[name]["ready"]) for name in st]
        out.append(ratio_row("ratio claude-bottle / raw sequence", cb, raw, READY_VS_RAW))
        if "docker-compose" in st:
            out.append(ratio_row("ratio claude-bottle / docker-compose", cb, st["docker-compose"]["ready"], 1.0, True))
        out.append(ratio_row("ratio claude-bottle --no-self-test / raw", st["claude-bottle --no-self-test"]["ready"],
                             raw))
        out.append("")
    if st or sigint:
        n = len((st["claude-bottle"]["teardown"] if st else sigint).values)
        out.append(f"2. teardown: the agent command exits -> nothing left; {runs_text(n)}")
    if st:
        out += [row(name, st[name]["teardown"]) for name in st]
        out.append(ratio_row("ratio claude-bottle / raw sequence", st["claude-bottle"]["teardown"],
                             st["raw docker sequence"]["teardown"], TEARDOWN_VS_RAW))
    if sigint:
        out.append(target_row("claude-bottle: SIGINT -> CLI exit (130)", sigint, SIGINT_MAX))
    if st:
        out.append(row("raw: docker rm -f + network rm alone", st["raw docker sequence"]["down"]))
        if "docker-compose" in st:
            out.append(row("compose: up's exit -> down done", st["docker-compose"]["down"]))
    if "dry" in res:
        dry, pythons = res["dry"]
        runs = len(next(iter(dry.values()))["wall"].values)
        out += ["", f"3. dry-run: a config of 10 agents (start --dry-run of one of them; check of all); "
                f"{runs_text(runs)}"]
        for name, samples in dry.items():
            out.append(target_row(name, samples["wall"], DRY_RUN_MAX) if "(sys.executable)" in name
                       else row(name, samples["wall"]))
        if "python3 on PATH" in pythons:
            out.append(f"  python3 on PATH: {pythons['python3 on PATH']}; sys.executable: {sys.executable}")
    if "concurrency" in res:
        out += report_concurrency(res["concurrency"])
    if "throughput" in res:
        out += report_throughput(res["throughput"])
    if "trace" in res:
        out += report_trace(res["trace"], b)
    if "clone" in res:
        out += report_clone(res["clone"])
    out += ["", f"whole bench: {wall:.1f} s wall"]
    out += [f"PROBLEM: {p}" for p in b.problems]
    return out


SECTIONS = ("start", "sigint", "dry", "concurrency", "throughput", "trace", "clone")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark claude-bottle against the raw docker sequence and "
                                     "docker-compose on the local engine.")
    parser.add_argument("--runs", type=positive, help="measured runs per measurement (default: start and sigint 5, "
                        "dry 10, concurrency 1 per count, throughput 3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded warm-up runs (default 1)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="measure only these sections")
    parser.add_argument("--counts", nargs="+", type=positive, default=list(COUNTS), metavar="N",
                        help="concurrency: sessions started at once (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", type=positive, default=list(SIZES_MB), metavar="MB",
                        help="throughput: file sizes in MB (10^6 bytes), each binary and text (default: %(default)s)")
    parser.add_argument("--repo-mb", type=positive, default=REPO_MB, metavar="MB",
                        help=f"throughput: size of the git repository in MB, {REPO_FILES} random files "
                        "(default: %(default)s)")
    parser.add_argument("--timeout", type=positive, default=TRANSFER_TIMEOUT, metavar="S",
                        help="throughput: at most this long per transfer, then reported as a timeout "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if shutil.which("docker") is None or run(["docker", "info"], check=False).returncode != 0:
        print("bench: error: no working docker engine", file=sys.stderr)
        return 1
    started = time.monotonic()
    b = None
    res = {}
    # SIGTERM and SIGHUP end the bench like Ctrl-C, so that close() removes what it made.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        b = Bench(args.runs, args.warmup)
        load = [os.getloadavg()[0], None]
        sections = args.only or SECTIONS
        if "start" in sections:
            res["start"] = measure_start(b)
        if "sigint" in sections:
            res["sigint"] = rounds(b, "sigint", {"claude-bottle": lambda r: sigint_once(b, r)}, b.runs("sigint"))
        if "dry" in sections:
            res["dry"] = measure_dry_run(b)
        if "concurrency" in sections:
            # The start section, just run, has warmed the engine up; alone, the section warms up itself.
            res["concurrency"] = measure_concurrency(b, args.counts, warm="start" not in sections)
        if "throughput" in sections:
            res["throughput"] = measure_throughput(b, args.sizes, args.repo_mb, args.timeout)
        if "trace" in sections:
            res["trace"] = measure_trace(b)
        if "clone" in sections:
            res["clone"] = measure_clone(b)
        load[1] = os.getloadavg()[0]
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; removing what it made", file=sys.stderr)
        return 130
    finally:
        if b is not None:
            b.close()
            for p in b.problems:
                print(f"bench: PROBLEM: {p}", file=sys.stderr)
    print("\n".join(line.rstrip() for line in report(b, res, time.monotonic() - started, load)))
    return 1 if b.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
