#!/usr/bin/env python3
"""claude-bottle's benchmark: how long a bottle takes to start and go, against the same topology by hand.

    make bench                       # or: python3 bench/bench.py [--runs N] [--only SECTION ...]

Everything runs on the local engine with local images (the e2e test images, built when missing; nothing is
ever pulled) and prints one table: medians over --runs runs (default 5) after one warm-up run, with the
machine, the engine and the targets of the "Benchmark" issue. Measured:

1. start-to-ready: invocation to the agent command running, for `claude_bottle.py start`, the raw `docker`
   sequence that builds the same topology by hand, and `docker-compose up` of an equivalent compose file.
2. teardown: the agent command's exit to nothing left (and SIGINT to the CLI's exit, nothing left).
3. dry-run: `start --dry-run` and `check` on a config of 10 agents.
4. concurrency: 8 sessions started at once.

Plus one traced start: every docker call claude-bottle makes, with its duration.

Objects the bench creates itself are named `cbbench-*` and labelled `cbbench=<run tag>`, and are removed
however the bench ends. Exit status: 0 when every measurement ran and left nothing behind (targets missed
are reported, not failed: a benchmark prints numbers), 1 otherwise, 2 for a usage error.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "claude_bottle.py"
sys.path.insert(0, str(ROOT))
from tests.e2e import images  # noqa: E402  (needs ROOT on sys.path)
from tests.e2e.harness import agent_writable, cli_env  # noqa: E402

# ---- Constants ----

# Targets from the issue.
READY_VS_RAW = 1.15
TEARDOWN_MAX = 1.5
DRY_RUN_MAX = 0.100

AGENT = "bench"
CONCURRENT = 8
# The agent command of every start-to-ready variant: stamp when it runs, stamp when it is about to exit.
# `date +%s.%N` reads CLOCK_REALTIME, the same kernel clock as the host's time.time().
READY_CMD = ('date +%s.%N > /workspace/ready; echo "${CLAUDE_BOTTLE_SESSION:-}" > /workspace/session; '
             'date +%s.%N > /workspace/exit')
SLEEP_CMD = 'echo "${CLAUDE_BOTTLE_SESSION:-}" > /workspace/session; date +%s.%N > /workspace/ready; exec sleep 120'
CONCURRENT_CMD = 'date +%s.%N > "/workspace/ready-$CLAUDE_BOTTLE_SESSION"; echo "$CLAUDE_BOTTLE_SESSION"'

# What claude-bottle puts on its containers, repeated for the raw and compose variants so that they run the
# same containers: only the orchestration differs.
PROXY_PORT = 8888
SIDECAR_FLAGS = ["--user", "65534:65534", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "--pids-limit", "512"]
AGENT_FLAGS = ["--dns", "127.0.0.1", "--dns-option", "timeout:1", "--dns-option", "attempts:1",
               "--user", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
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


def leftovers(*filters: str) -> list:
    """Containers and networks matching every `label=...` filter."""
    flt = [a for f in filters for a in ("--filter", f)]
    names = docker("ps", "-a", "--format", "{{.Names}}", *flt).stdout.split()
    return names + docker("network", "ls", "--format", "{{.Name}}", *flt).stdout.split()


def cb_leftovers(session: str, pid: int) -> list:
    """What a claude-bottle session left: by its session label, and by its owner label (host:pid)."""
    by_session = leftovers(f"label=claude-bottle.session={session}") if session else []
    return sorted(set(by_session + leftovers(f"label=claude-bottle.owner={socket.gethostname()}:{pid}")))


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
    def __init__(self, runs: int, warmup: int):
        self.runs, self.warmup = runs, warmup
        self.tag = os.urandom(3).hex()
        self.label = f"cbbench={self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="cbbench-"))
        self.tmp.chmod(0o755)
        self.procs = []          # claude-bottle CLIs started, for the final sweep
        self.noise = []          # containers running on the engine before each measured run: others' work
        self.noise_cb = []       # claude-bottle containers present then (a start looks at every session)
        self.problems = []
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
        self.project = self.workspace("project", f'[agents.{AGENT}]\nimage = "{self.debian}"\nenv = []\n')
        self.pipelock_dir = self.tmp / "pipelock"
        self.pipelock_dir.mkdir(mode=0o755)
        # claude-bottle's own rendering of the config, exactly as a start would write it.
        plan = json.loads(run([sys.executable, str(CLI), "start", AGENT, "--dry-run", "--json", "--", "true"],
                              cwd=self.project, env=self.env()).stdout)
        config = self.pipelock_dir / "pipelock.yaml"
        config.write_text(plan["files"]["pipelock/pipelock.yaml"])
        config.chmod(0o644)

    def workspace(self, name: str, config: str | None = None) -> Path:
        """A directory the agent (uid 1000) can write to, mounted at /workspace."""
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
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stranded = []
        for proc in self.procs:
            stranded += leftovers(f"label=claude-bottle.owner={socket.gethostname()}:{proc.pid}")
        if stranded:
            self.problems.append(f"claude-bottle left {', '.join(sorted(set(stranded)))}; removed by the bench")
        mine = [f"label={self.label}"]
        containers = docker("ps", "-aq", "--filter", mine[0], check=False).stdout.split()
        containers += [n for n in stranded if not n.endswith(("-internal", "-egress"))]
        if containers:
            docker("rm", "--force", *containers, check=False)
        networks = docker("network", "ls", "-q", "--filter", mine[0], check=False).stdout.split()
        networks += [n for n in stranded if n.endswith(("-internal", "-egress"))]
        if networks:
            docker("network", "rm", *networks, check=False)
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


def raw_once(b: Bench, i) -> dict:
    """The topology by hand, one docker command after the other, then its removal."""
    ws = b.tmp / f"raw-{i}"
    if not ws.exists():
        ws = b.workspace(f"raw-{i}")
    name = f"cbbench-{b.tag}-raw{i}"
    internal, egress, sidecar, agent = f"{name}-internal", f"{name}-egress", f"{name}-pipelock", name
    labels = ["--label", b.label, "--label", f"cbbench.session={name}"]
    proxy = f"http://{sidecar}:{PROXY_PORT}"
    t0 = time.time()
    docker("network", "create", "--internal", "--opt", f"{INHIBIT_IPV4}=true", *labels, internal)
    docker("network", "create", *labels, egress)
    docker("run", "--detach", "--pull", "never", "--name", sidecar, *labels, "--network", egress, *SIDECAR_FLAGS,
           "--mount", f"type=bind,source={b.pipelock_dir},target=/etc/pipelock,readonly", b.pipelock, *PIPELOCK_ARGS)
    docker("network", "connect", internal, sidecar)
    docker("run", "--pull", "never", "--name", agent, *labels, "--network", internal, *AGENT_FLAGS,
           "--mount", f"type=bind,source={ws},target=/workspace",
           *[a for k, v in agent_env(proxy).items() for a in ("--env", f"{k}={v}")],
           b.debian, "sh", "-c", READY_CMD)
    t_down = time.time()
    docker("rm", "--force", agent, sidecar)
    docker("network", "rm", internal, egress)
    t_end = time.time()
    left = leftovers(f"label=cbbench.session={name}")
    if left:
        raise BenchError(f"the raw sequence left {left}")
    return {"ready": read_stamp(ws / "ready") - t0, "teardown": t_end - read_stamp(ws / "exit"),
            "down": t_end - t_down, "_ready_at": read_stamp(ws / "ready")}


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
                "dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"], "user": "1000:1000",
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


def rounds(b: Bench, what: str, variants: dict, runs: int | None = None, warmup: int | None = None,
           sample_noise: bool = True) -> dict:
    """Warm-up, then --runs rounds; each round runs every variant, starting with a different one each time,
    so that drift in the engine's load falls on all of them alike."""
    results = {name: {} for name in variants}
    names = list(variants)
    runs = b.runs if runs is None else runs
    warmup = b.warmup if warmup is None else warmup
    for r in range(warmup + runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if sample_noise:
                b.noise.append(others_running())
                b.noise_cb.append(len(docker("ps", "-aq", "--filter", "label=claude-bottle.session").stdout.split()))
            progress(f"{what}: {name} {'warm-up' if r < warmup else f'run {r - warmup + 1}/{runs}'}")
            out = variants[name](r)
            if r < warmup:
                continue
            for key, value in out.items():
                if isinstance(value, float) and not key.startswith("_"):
                    results[name].setdefault(key, Samples()).add(value)
    return results


def measure_start(b: Bench) -> dict:
    variants = {
        "claude-bottle": lambda r: claude_bottle_once(b, r),
        "claude-bottle --no-self-test": lambda r: claude_bottle_once(b, r, "--no-self-test"),
        "raw docker sequence": lambda r: raw_once(b, r),
    }
    if b.compose:
        variants["docker-compose"] = lambda r: compose_once(b, r)
    return rounds(b, "start", variants)


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
    return rounds(b, "dry-run", variants, runs=max(b.runs, 10), sample_noise=False), pythons


def concurrency_cb(b: Bench, r: int) -> dict:
    ws = b.workspace(f"concurrent-{r}", f'[agents.{AGENT}]\nimage = "{b.debian}"\nenv = []\n')
    logs = [b.tmp / f"concurrent-{r}-{k}.log" for k in range(CONCURRENT)]
    t0 = time.time()
    procs = [b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", CONCURRENT_CMD, cwd=ws, log=log)
             for log in logs]
    codes = [p.wait(timeout=300) for p in procs]
    total = time.time() - t0
    # Each command echoes its session id (the CLI prints nothing else with -q) and names its ready file by it.
    sessions = [(log.read_text().strip().splitlines() or [""])[-1] for log in logs]
    ready_files = {p.name[len("ready-"):]: read_stamp(p) - t0 for p in ws.glob("ready-*")}
    left = sorted({n for s, p in zip(sessions, procs) for n in cb_leftovers(s, p.pid)})
    if (codes != [0] * CONCURRENT or len(set(sessions)) != CONCURRENT or set(sessions) != set(ready_files)
            or left):
        raise BenchError(f"{CONCURRENT} sessions at once: exit codes {codes}, sessions {sessions}, "
                         f"ready files {sorted(ready_files)}, left {left}; first log: {logs[0].read_text()[-600:]}")
    readies = list(ready_files.values())
    return {"total": total, "slowest ready": max(readies), "median ready": statistics.median(readies),
            "_sessions": sessions}


def concurrency_raw(b: Bench, r: int) -> dict:
    """The same, for the raw sequence: CONCURRENT copies of it at once, each in a thread."""
    import threading
    results, errors = [None] * CONCURRENT, []

    def one(k):
        try:
            results[k] = raw_once(b, f"{r}c{k}")
        except BaseException as e:
            errors.append(e)

    t0 = time.time()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.time() - t0
    if errors:
        raise errors[0]
    readies = [res["_ready_at"] - t0 for res in results]
    return {"total": total, "slowest ready": max(readies), "median ready": statistics.median(readies)}


def measure_concurrency(b: Bench, warmup: int) -> tuple:
    seen = []

    def cb(r):
        out = concurrency_cb(b, r)
        if r >= warmup:
            seen.append(out["_sessions"])
        return out
    variants = {"claude-bottle": cb, "raw docker sequence": lambda r: concurrency_raw(b, r)}
    return rounds(b, "concurrency", variants, warmup=warmup), seen


TRACE_SHIM = """\
#!/bin/sh
# Logs when each docker call starts and ends, then passes its exit status on.
s=$(date +%s.%N)
"$CBBENCH_REAL_DOCKER" "$@"
rc=$?
printf '%s %s %s %s\\n' "$s" "$(date +%s.%N)" "$rc" "$(printf '%s ' "$@" | tr '\\n' ' ' | cut -c1-200)" \
  >> "$CBBENCH_TRACE"
exit $rc
"""


def measure_trace(b: Bench) -> list:
    """One start with a logging `docker` first on PATH: every docker call, when it ran and for how long."""
    shim_dir = b.tmp / "trace-bin"
    shim_dir.mkdir()
    (shim_dir / "docker").write_text(TRACE_SHIM)
    (shim_dir / "docker").chmod(0o755)
    trace = b.tmp / "trace.log"
    env = b.env(PATH=f"{shim_dir}:{os.environ['PATH']}", CBBENCH_REAL_DOCKER=shutil.which("docker"),
                CBBENCH_TRACE=str(trace))
    ws = b.project
    reset(ws)
    t0 = time.time()
    proc = b.cli("start", "--yes", "-q", AGENT, "--", "sh", "-c", READY_CMD, cwd=ws, log=b.tmp / "trace-cli.log",
                 env=env)
    rc = proc.wait()
    t_end = time.time()
    if rc != 0:
        raise BenchError(f"traced start exited {rc}: {(b.tmp / 'trace-cli.log').read_text()[-600:]}")
    session = (ws / "session").read_text().strip()
    events = []
    for line in trace.read_text().splitlines():
        start, end, code, args = line.split(" ", 3)
        short = args.replace(f"claude-bottle-{session}", "S").split(" --label")[0]
        events.append((float(start) - t0, float(end) - t0, int(code), short.strip()[:70]))
    events.sort()
    events.append((read_stamp(ws / "ready") - t0, None, None, "<- the agent command runs (ready stamp)"))
    events.append((read_stamp(ws / "exit") - t0, None, None, "<- the agent command exits (exit stamp)"))
    events.append((t_end - t0, None, None, "<- the CLI exits"))
    return sorted(events, key=lambda e: e[0])


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


def report(b: Bench, res: dict, wall: float, load: list) -> list:
    noise, noise_cb = b.noise or [0], b.noise_cb or [0]
    out = [f"claude-bottle bench: median of {b.runs} runs after {b.warmup} warm-up "
           f"(min .. max beside it), all measured in this run", *machine(),
           f"images:   agent {b.debian}; pipelock {b.pipelock}"
           + ("" if os.environ.get(images.PIPELOCK_IMAGE_ENV) else " (the stand-in)"),
           f"noise:    containers running on this engine before each run (none of them the bench's): "
           f"{min(noise)} .. {max(noise)}, median {statistics.median(noise):g}",
           f"          other sessions' claude-bottle containers present (a start inspects each): "
           f"{min(noise_cb)} .. {max(noise_cb)}, median {statistics.median(noise_cb):g}",
           f"          load average {load[0]:.2f} at the start, {load[1]:.2f} at the end",
           "", f"  {'':<44} {'median':>10}  {'min .. max':<22} {'target':<22}"]
    st = res.get("start")
    sigint = res.get("sigint", {}).get("claude-bottle", {}).get("sigint")
    if st:
        cb, raw = st["claude-bottle"]["ready"], st["raw docker sequence"]["ready"]
        out.append("1. start-to-ready: invocation -> the agent command runs")
        out += [row(name, st[name]["ready"]) for name in st]
        out.append(ratio_row("ratio claude-bottle / raw sequence", cb, raw, READY_VS_RAW))
        if "docker-compose" in st:
            out.append(ratio_row("ratio claude-bottle / docker-compose", cb, st["docker-compose"]["ready"], 1.0, True))
        out.append(ratio_row("ratio claude-bottle --no-self-test / raw", st["claude-bottle --no-self-test"]["ready"],
                             raw))
        out.append("")
    if st or sigint:
        out.append("2. teardown: the agent command exits -> nothing left")
    if st:
        for name in st:
            out.append(target_row(name, st[name]["teardown"], TEARDOWN_MAX) if name == "claude-bottle"
                       else row(name, st[name]["teardown"]))
    if sigint:
        out.append(target_row("claude-bottle: SIGINT -> CLI exit (130)", sigint, TEARDOWN_MAX))
    if st:
        out.append(row("raw: docker rm -f + network rm alone", st["raw docker sequence"]["down"]))
        if "docker-compose" in st:
            out.append(row("compose: up's exit -> down done", st["docker-compose"]["down"]))
    if "dry" in res:
        dry, pythons = res["dry"]
        runs = len(next(iter(dry.values()))["wall"].values)
        out += ["", f"3. dry-run: a config of 10 agents (start --dry-run of one of them; check of all); {runs} runs"]
        for name, samples in dry.items():
            out.append(target_row(name, samples["wall"], DRY_RUN_MAX) if "(sys.executable)" in name
                       else row(name, samples["wall"]))
        if "python3 on PATH" in pythons:
            out.append(f"  python3 on PATH: {pythons['python3 on PATH']}; sys.executable: {sys.executable}")
    if "concurrency" in res:
        conc, seen = res["concurrency"]
        out += ["", f"4. concurrency: {CONCURRENT} starts at once (the command echoes its session id and exits); "
                f"{len(seen)} runs"]
        for name in conc:
            out.append(row(f"{name}: all {CONCURRENT} done (total)", conc[name]["total"]))
            out.append(row(f"{name}: start-to-ready, slowest", conc[name]["slowest ready"]))
        out.append(ratio_row("ratio of totals claude-bottle / raw", conc["claude-bottle"]["total"],
                             conc["raw docker sequence"]["total"]))
        out.append(f"  no collision: every run had {CONCURRENT} distinct session ids, every exit status 0 and "
                   f"nothing left (by session and owner label)")
        if seen:
            out.append(f"  last run's sessions: {', '.join(seen[-1])}")
    if "trace" in res:
        out += ["", "5. one traced claude-bottle start: every docker call (a logging shim on PATH adds ~3 ms a call)",
                f"  {'start':>8} {'end':>8} {'took':>8}  docker call (S = claude-bottle-<session>)"]
        for start, end, code, what in res["trace"]:
            if end is None:
                out.append(f"  {start:8.3f} {'':>8} {'':>8}  {what}")
            else:
                status = f"  (exit {code})" if code else ""
                out.append(f"  {start:8.3f} {end:8.3f} {end - start:8.3f}  {what}{status}")
    out += ["", f"whole bench: {wall:.1f} s wall"]
    out += [f"PROBLEM: {p}" for p in b.problems]
    return out


SECTIONS = ("start", "sigint", "dry", "concurrency", "trace")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark claude-bottle against the raw docker sequence and "
                                     "docker-compose on the local engine.")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded warm-up runs (default 1)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="measure only these sections")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    if shutil.which("docker") is None or run(["docker", "info"], check=False).returncode != 0:
        print("bench: error: no working docker engine", file=sys.stderr)
        return 1
    started = time.monotonic()
    b = None
    res = {}
    try:
        b = Bench(args.runs, args.warmup)
        load = [os.getloadavg()[0], None]
        sections = args.only or SECTIONS
        if "start" in sections:
            res["start"] = measure_start(b)
        if "sigint" in sections:
            res["sigint"] = rounds(b, "sigint", {"claude-bottle": lambda r: sigint_once(b, r)})
        if "dry" in sections:
            res["dry"] = measure_dry_run(b)
        if "concurrency" in sections:
            # Eight sessions are a heavy warm-up: skip it when the start section has just warmed the engine.
            res["concurrency"] = measure_concurrency(b, 0 if "start" in sections else b.warmup)
        if "trace" in sections:
            res["trace"] = measure_trace(b)
        load[1] = os.getloadavg()[0]
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        if b is not None:
            b.close()
            for p in b.problems:
                print(f"bench: PROBLEM: {p}", file=sys.stderr)
    print("\n".join(report(b, res, time.monotonic() - started, load)))
    return 1 if b.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
