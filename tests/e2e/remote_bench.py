#!/usr/bin/env python3
"""Timings of the second engine (tests/e2e/remote.py) and the engine facts issue 22 builds on, checked on it.

    python3 tests/e2e/remote_bench.py                    # ready load latency echo facts (a few minutes)
    python3 tests/e2e/remote_bench.py --only latency     # sections: cold ready load latency echo facts
    python3 tests/e2e/remote_bench.py --only cold        # the image built from scratch (debootstrap, minutes)

Prints numbers and observations; asserts no timing. Every figure is wall-clock, the median of --runs (or of 10
calls for latency, 20 echoes for echo) with the fastest and slowest beside it. Needs what the e2e tests need, as
root (the images are built when missing). Everything it makes is a RemoteEngine's (removed on exit), or on one.

- cold: `debootstrap` and `docker import` of the engine's image under a throwaway tag (removed after).
- ready: RemoteEngine() to an engine answering over tcp:// and ssh://, with the image cached.
- load: `docker save <debian test image> | docker -H tcp://... load` into an engine that lacks it.
- latency: one `docker version` call over this machine's socket, tcp://, ssh://, and ssh:// with a ControlMaster
  (ControlPersist) in the ssh config; and a bare `ssh HOST true` for comparison.
- connections: how many ssh connections one docker command opens over ssh:// (sshd's log).
- echo: `docker exec -i` and `docker run -i` of `cat` over tcp:// and ssh://: the time to the first byte back (the
  call's start included), the round trip of one byte, 1 MiB each way at once, and whether closing stdin ends it.
- facts: what the engine does with `docker cp`, stdin, and a dockerd restart (tests/README.md, "The second engine").
"""

from __future__ import annotations

import argparse
from functools import partial
import io
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e import images, remote  # noqa: E402

SECTIONS = ("cold", "ready", "load", "latency", "connections", "echo", "facts")
DEFAULT = ("ready", "load", "latency", "connections", "echo", "facts")


def timed(fn, *args) -> float:
    started = time.monotonic()
    fn(*args)
    return time.monotonic() - started


def stats(samples: list) -> str:
    if not samples:
        return "-"
    unit = (lambda s: f"{s * 1000:.1f} ms") if max(samples) < 1 else (lambda s: f"{s:.2f} s")
    if len(samples) == 1:
        return unit(samples[0])
    return f"{unit(statistics.median(samples))} (min {unit(min(samples))}, max {unit(max(samples))}, n={len(samples)})"


def row(name: str, value: str) -> None:
    print(f"  {name:<52} {value}", flush=True)


# ---- Sections ----

def bench_cold(args) -> None:
    tag = f"{remote.ENGINE_REPO}:bench-cold-{os.urandom(3).hex()}"
    try:
        row("image from scratch (debootstrap + docker import)",
            stats([timed(images.build_root, tag, remote.ENGINE_PACKAGES, remote.ENGINE_SETUP)]))
        size = remote._local("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
        row("image size", f"{int(size) / 1e6:.0f} MB")
    finally:
        remote._local("rmi", tag, check=False)


def bench_ready(args) -> None:
    samples = []
    for _ in range(args.runs):
        started = time.monotonic()
        engine = remote.RemoteEngine()
        samples.append(time.monotonic() - started)
        engine.close()
    row("RemoteEngine() to ready (image cached)", stats(samples))
    samples = []
    for _ in range(args.runs):
        engine = remote.RemoteEngine()
        samples.append(timed(engine.close))
    row("close() (docker rm -f, volume rm, network rm)", stats(samples))


def bench_load(args, engine, tags) -> None:
    debian = tags["debian"]
    size = remote._local("image", "inspect", "--format", "{{.Size}}", debian).stdout.strip()
    samples = []
    for _ in range(args.runs):
        engine.docker("rmi", "--force", debian, check=False)
        samples.append(timed(engine.load, [debian]))
    row(f"save | load of {debian} ({int(size) / 1e6:.0f} MB)", stats(samples))
    row("load() of an image already there", stats([timed(engine.load, [debian]) for _ in range(3)]))


def _call(env) -> float:
    started = time.monotonic()
    subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, check=True,
                   capture_output=True)
    return time.monotonic() - started


def bench_latency(args, engine, tags) -> None:
    local = remote._clean_env()
    for name, env in (("local socket (this machine's engine)", local), ("tcp://", engine.env_tcp()),
                      ("ssh://", engine.env_ssh())):
        _call(env)  # warm
        row(f"docker version over {name}", stats([_call(env) for _ in range(10)]))
    mux = engine.env_ssh(multiplex=True)
    row("docker version over ssh:// + ControlMaster: first", stats([_call(mux)]))
    row("docker version over ssh:// + ControlMaster: next", stats([_call(mux) for _ in range(10)]))
    for name, argv in (("ssh HOST true", engine.ssh_argv()), ("ssh HOST true + ControlMaster", engine.ssh_argv(True))):
        samples = []
        for _ in range(10):
            started = time.monotonic()
            subprocess.run([*argv, engine.alias, "true"], check=True, capture_output=True)
            samples.append(time.monotonic() - started)
        row(name, stats(samples))


def bench_connections(args, engine, tags) -> None:
    """How many ssh connections (sshd's "Accepted publickey" lines) one docker command opens over ssh://."""
    busybox = tags["busybox"]
    name = f"cbbench-conn-{os.urandom(3).hex()}"
    engine.docker("run", "--pull", "never", "--detach", "--name", name, busybox, "sleep", "3600")
    env = engine.env_ssh()
    try:
        for label, argv, stdin in (
                ("docker version", ["version"], None),
                ("docker ps", ["ps"], None),
                ("docker run --rm (attached)", ["run", "--pull", "never", "--rm", busybox, "true"], None),
                ("docker run --rm -i", ["run", "--pull", "never", "--rm", "-i", busybox, "cat"], b"x"),
                ("docker exec", ["exec", name, "true"], None),
                ("docker exec -i", ["exec", "-i", name, "cat"], b"x"),
                ("docker cp - (a tar in)", ["cp", "-", f"{name}:/"], _tar([("f", b"x", 0, 0, 0o644)])),
                ("docker create + start --attach -i", None, b"x")):
            before = _accepted(engine)
            if argv is None:
                ctr = engine.docker("create", "--pull", "never", "-i", busybox, "cat", ssh=True).stdout.strip()
                argv = ["start", "--attach", "--interactive", ctr]
            subprocess.run(["docker", *argv], input=stdin, env=env, capture_output=True, check=True, timeout=120)
            row(f"ssh connections for {label}", str(_accepted(engine) - before))
    finally:
        engine.docker("rm", "--force", name, check=False)


def _accepted(engine) -> int:
    time.sleep(1)  # sshd writes its log line as it accepts
    return int(engine.exec("grep -c 'Accepted publickey' /var/log/sshd.log || true").stdout.strip() or 0)


def echo(argv: list, env: dict, rounds: int = 20) -> dict:
    """`argv` runs `cat` with stdin attached: first byte back, one-byte round trips, 1 MiB both ways, EOF."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            bufsize=0)
    out = {}
    try:
        started = time.monotonic()
        proc.stdin.write(b"a")
        first = proc.stdout.read(1)
        out["first"] = time.monotonic() - started if first == b"a" else None
        trips = []
        for _ in range(rounds):
            started = time.monotonic()
            proc.stdin.write(b"x")
            if proc.stdout.read(1) != b"x":
                break
            trips.append(time.monotonic() - started)
        out["rtt"] = trips
        data = os.urandom(1 << 20)
        got = bytearray()

        def reader():
            while len(got) < len(data):
                chunk = proc.stdout.read(65536)
                if not chunk:
                    return
                got.extend(chunk)
        thread = threading.Thread(target=reader)
        started = time.monotonic()
        thread.start()
        proc.stdin.write(data)
        thread.join(120)
        out["bulk"] = time.monotonic() - started
        out["bulk_ok"] = bytes(got) == data
        started = time.monotonic()
        proc.stdin.close()
        out["rc"] = proc.wait(timeout=60)
        out["eof"] = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return out


def bench_echo(args, engine, tags) -> None:
    busybox = tags["busybox"]
    name = f"cbbench-echo-{os.urandom(3).hex()}"
    engine.docker("run", "--pull", "never", "--detach", "--name", name, busybox, "sleep", "3600")
    try:
        for via, env in (("tcp://", engine.env_tcp()), ("ssh://", engine.env_ssh())):
            for kind, argv in (("exec -i", ["docker", "exec", "-i", name, "cat"]),
                               ("run -i", ["docker", "run", "--pull", "never", "--rm", "-i", busybox, "cat"]),
                               ("start -ai", None)):
                if argv is None:
                    ctr = engine.docker("create", "--pull", "never", "-i", busybox, "cat").stdout.strip()
                    argv = ["docker", "start", "--attach", "--interactive", ctr]
                r = echo(argv, env)
                row(f"{kind} over {via}: first byte back (start included)", stats([r["first"]]))
                row(f"{kind} over {via}: one-byte round trip", stats(r["rtt"]))
                row(f"{kind} over {via}: 1 MiB each way at once", f"{stats([r['bulk']])}, intact: {r['bulk_ok']}")
                row(f"{kind} over {via}: stdin closed -> exit", f"status {r['rc']} after {stats([r['eof']])}")
    finally:
        engine.docker("rm", "--force", name, check=False)


# ---- Facts ----

def _tar(entries) -> bytes:
    """A tar of (name, data or None for a directory, uid, gid, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, uid, gid, mode in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, time.time()
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TREE = _tar([("home", None, 1000, 1000, 0o700), ("home/secret", b"s3cret\n", 1000, 1000, 0o600),
             ("tool", b"#!/bin/sh\n", 0, 0, 0o4755), ("odd", b"x", 1234, 4321, 0o640)])
TREE_LISTING = ["/data/home 1000:1000 700", "/data/home/secret 1000:1000 600", "/data/odd 1234:4321 640",
                "/data/tool 0:0 4755"]
LISTING = "find /data -mindepth 1 | sort | xargs stat -c '%n %u:%g %a'"


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def fact(question: str, answer: str) -> None:
    print(f"- {question}\n    {answer}", flush=True)


def _cp(engine, ctr, dest, data=TREE) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "cp", "-", f"{ctr}:{dest}"], input=data, capture_output=True,
                          env=engine.env_tcp())


def facts_cp(engine, tags) -> None:
    d = engine.docker
    run, create = (partial(d, verb, "--pull", "never") for verb in ("run", "create"))
    busybox, debian = tags["busybox"], tags["debian"]
    vol = f"cbfact-{os.urandom(3).hex()}"
    try:
        ctr = create("-v", f"{vol}:/data", busybox, "true").stdout.strip()
        cp = _cp(engine, ctr, "/data")
        seen = run("--rm", "-v", f"{vol}:/data", busybox, "sh", "-c", LISTING, check=False).stdout
        fact("docker cp (a tar on stdin) into a CREATED, never started container's named volume",
             f"cp exit {cp.returncode}; another container mounting the volume sees: {'; '.join(seen.splitlines())}")
        d("rm", ctr)
        fact("are the tar's owners and modes honoured (setuid included)?",
             "yes, all four" if seen.splitlines() == TREE_LISTING else f"no: the tar says {'; '.join(TREE_LISTING)}")
        d("volume", "rm", vol)
        ctr = create("--read-only", "-v", f"{vol}:/data", debian, "true").stdout.strip()
        into_vol = _cp(engine, ctr, "/data")
        into_root = _cp(engine, ctr, "/opt")
        seen = run("--rm", "-v", f"{vol}:/data", busybox, "sh", "-c", "ls /data | tr '\\n' ' '").stdout
        fact("docker cp into a --read-only container (created): its volume, and its root filesystem",
             f"volume: exit {into_vol.returncode}, the volume holds: {seen.strip()}; rootfs /opt: exit "
             f"{into_root.returncode}: {into_root.stderr.decode().strip()}")
        d("rm", ctr)
        ctr = create("--tmpfs", "/tmp", debian, "ls", "-A", "/tmp").stdout.strip()
        cp = _cp(engine, ctr, "/tmp")
        d("start", ctr)
        shown = d("wait", ctr).stdout.strip(), d("logs", ctr).stdout.split()
        fact("docker cp into a --tmpfs mount point of a created container",
             f"cp exit {cp.returncode}; once started the tmpfs shows {shown[1] or 'nothing'} (exit {shown[0]}): "
             "the files went under the mount point, hidden by it")
        d("rm", ctr)
        ctr = run("--detach", "--read-only", "-v", f"{vol}:/data", busybox, "sleep", "600").stdout.strip()
        cp = _cp(engine, ctr, "/data", _tar([("late", b"1", 0, 0, 0o644)]))
        seen = d("exec", ctr, "ls", "/data").stdout.split()
        fact("docker cp into a running --read-only container's volume", f"cp exit {cp.returncode}; late there: "
             f"{'late' in seen}")
        d("rm", "--force", ctr)
        missing = f"/nonexistent-{os.urandom(3).hex()}"
        bind = run("--rm", "--mount", f"type=bind,source={missing},target=/m", busybox, "true", check=False)
        dash_v = run("--rm", "-v", f"{missing}:/m", busybox, "ls", "-A", "/m", check=False)
        fact("a bind source that does not exist on the engine's host",
             f"--mount: exit {bind.returncode}: {one_line(bind.stderr.split('Run ')[0])}; "
             f"-v: exit {dash_v.returncode}, "
             f"an empty dir ({dash_v.stdout.strip() or 'empty'}), created on the engine's host: "
             f"{engine.exec(f'test -d {missing} && echo yes || echo no').stdout.strip()}")
    finally:
        engine.docker("volume", "rm", "--force", vol, check=False)


def _stream(engine, argv, env) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)


AGAIN = "again\n"
TICKER = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.5; done"
TERM_TRAP = "trap 'echo got-term; exit 3' TERM; while :; do sleep 0.1; done"


def facts_restart(engine, tags, live_restore: bool) -> None:
    d = engine.docker
    run, create = (partial(d, verb, "--pull", "never") for verb in ("run", "create"))
    busybox = tags["busybox"]
    engine.set_live_restore(live_restore)
    mode = "with --live-restore" if live_restore else "without live-restore"
    names = {k: f"cbfact-{k}-{os.urandom(2).hex()}" for k in ("sleep", "trap", "always", "tcp", "ssh", "stdin")}
    run("--detach", "--name", names["sleep"], busybox, "sleep", "3600")
    run("--detach", "--name", names["trap"], busybox, "sh", "-c", TERM_TRAP)
    run("--detach", "--name", names["always"], "--restart", "unless-stopped", busybox, "sleep", "3600")
    create("--interactive", "--name", names["tcp"], busybox, "sh", "-c", TICKER)
    create("--interactive", "--name", names["ssh"], busybox, "sh", "-c", TICKER)
    create("--interactive", "--name", names["stdin"], busybox, "sh", "-c", "cat; echo stdin-eof; sleep 3600")
    clients = {
        "tcp": _stream(engine, ["docker", "start", "--attach", "--interactive", names["tcp"]], engine.env_tcp()),
        "ssh": _stream(engine, ["docker", "start", "--attach", "--interactive", names["ssh"]], engine.env_ssh()),
        "stdin": _stream(engine, ["docker", "start", "--attach", "--interactive", names["stdin"]], engine.env_tcp()),
    }
    try:
        deadline = time.monotonic() + 60
        while not all(d("inspect", "--format", "{{.State.Running}}", names[k]).stdout.strip() == "true"
                      for k in clients):
            if time.monotonic() > deadline:
                raise remote.RemoteEngineError("the attached containers never ran")
            time.sleep(0.2)
        time.sleep(1.5)
        before = {k: d("inspect", "--format", "{{.State.StartedAt}} {{.State.Pid}}", n).stdout.strip()
                  for k, n in names.items()}
        stop = timed(engine.stop_engine)
        down = time.monotonic()
        ended = {}
        for k, proc in clients.items():
            try:
                proc.wait(timeout=5)
                ended[k] = (proc.returncode, proc.stderr.read().strip().splitlines()[-1:] or [""],
                            proc.stdout.read().splitlines()[-1:] or [""])
            except subprocess.TimeoutExpired:
                ended[k] = ("still running", [""], [""])
        time.sleep(max(0.0, 3 - (time.monotonic() - down)))  # the engine stays down 3 s
        engine.start_engine()
        time.sleep(2)
        after = {}
        for k, n in names.items():
            after[k] = d("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}} "
                         "{{.State.Pid}}", n).stdout.split()
        fact(f"dockerd restart {mode}: how long `systemctl stop docker` (SIGTERM, wait) took", f"{stop:.1f} s")
        for k, what in (("sleep", "a `sleep` container (PID 1 ignores SIGTERM)"),
                        ("trap", "a container that exits 3 on SIGTERM"),
                        ("always", "a `--restart unless-stopped` container")):
            status, code, started, pid = after[k]
            same = f"{started} {pid}" == before[k]
            fact(f"dockerd restart {mode}: {what}, after", f"{status}, exit code {code}, "
                 f"{'the same process' if same else 'a new process' if status == 'running' else 'not running'}")
        for k, via in (("tcp", "tcp://"), ("ssh", "ssh://")):
            rc, err, out = ended[k]
            fact(f"dockerd restart {mode}: the `docker start --attach --interactive` client over {via}",
                 f"exit {rc}; last stderr line: {err[0] or '(none)'}; last output: {out[0] or '(none)'}; "
                 f"the container after: {' '.join(after[k][:2])}")
        ticks = [int(line.split()[1]) for line in d("logs", names["tcp"]).stdout.splitlines()
                 if line.startswith("tick ")]
        gaps = [(a, b) for a, b in zip(ticks, ticks[1:]) if b != a + 1]
        if after["tcp"][0] == "running":
            fact(f"dockerd restart {mode}: the running container's log across the restart",
                 f"{len(ticks)} lines, {'gaps ' + str(gaps) if gaps else 'no line lost'}")
        if after["stdin"][0] == "running":
            stdin_log = d("logs", names["stdin"]).stdout.split()
            fact(f"dockerd restart {mode}: an attached container's stdin when the client is cut",
                 f"the container {'saw EOF' if 'stdin-eof' in stdin_log else 'saw no EOF, it still runs'}")
            attach = _stream(engine, ["docker", "attach", names["stdin"]], engine.env_tcp())
            line = []
            reader = threading.Thread(target=lambda: line.append(attach.stdout.readline()), daemon=True)
            reader.start()
            attach.stdin.write(AGAIN)
            attach.stdin.flush()
            reader.join(15)
            attach.stdin.close()
            time.sleep(2)
            state = d("inspect", "--format", "{{.State.Status}}", names["stdin"]).stdout.strip()
            attach.kill()
            attach.wait()
            attach.stdout.close()
            attach.stderr.close()
            fact(f"dockerd restart {mode}: `docker attach` to it afterwards: a line in, then stdin closed",
                 f"the line came back: {line == [AGAIN]}; after the close the container is {state}")
    finally:
        for proc in clients.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        d("rm", "--force", *names.values(), check=False)
        engine.set_live_restore(False)


def facts_cut_start(engine, tags) -> None:
    """What a docker call says while dockerd is stopped (a restart under a session)."""
    d = engine.docker
    name = f"cbfact-cut-{os.urandom(2).hex()}"
    d("create", "--pull", "never", "--name", name, tags["busybox"], "sleep", "3600")
    engine.stop_engine()
    try:
        for via in ("tcp://", "ssh://"):
            proc = d("start", name, ssh=via == "ssh://", check=False, timeout=60)
            fact(f"`docker start` while dockerd is stopped ({via})", f"exit {proc.returncode}: {one_line(proc.stderr)}")
    finally:
        engine.start_engine()
        d("rm", "--force", name, check=False)


def bench_facts(args, engine, tags) -> None:
    facts_cp(engine, tags)
    facts_restart(engine, tags, live_restore=False)
    facts_restart(engine, tags, live_restore=True)
    facts_cut_start(engine, tags)


# ---- Main ----

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=DEFAULT)
    parser.add_argument("--runs", type=int, default=3, help="runs of ready and load (default 3)")
    args = parser.parse_args(argv)
    tags = images.ensure_images()
    tags["remote-engine"] = remote.remote_engine_image()
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; engine image {tags['remote-engine']}")
    for section in ("cold", "ready"):
        if section in args.only:
            print(section, flush=True)
            {"cold": bench_cold, "ready": bench_ready}[section](args)
    rest = [s for s in SECTIONS[2:] if s in args.only]
    if rest:
        with remote.RemoteEngine() as engine:
            engine.load([tags["busybox"], tags["debian"]])
            for section in rest:
                print(section, flush=True)
                globals()[f"bench_{section}"](args, engine, tags)
    print(f"load at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
