#!/usr/bin/env python3
"""A second Docker engine for the end-to-end tests: dockerd in a container on this machine's engine.

A bottle on a remote engine (issue 22) and an engine restart under a session (issue 25) need an engine whose
filesystem, images and bridges are not this machine's, and that a test may restart. This module runs one: Debian's
``docker.io`` (20.10, the same as the engine here) in a container of the local engine, reached over
``tcp://127.0.0.1:PORT`` and over ``ssh://`` (sshd in the same container), both published on loopback only.

    from tests.e2e import remote

    tags = remote.require_remote()             # the e2e images and the engine's own, built when missing; or skip
    with remote.start_or_skip() as engine:     # a RemoteEngine, ready; removed with all it made on exit
        engine.load([tags["busybox"]])         # docker save | docker -H ... load, skipping what is there
        engine.docker("run", "--rm", "--pull", "never", tags["busybox"], "true")   # tcp:// (ssh=True: ssh://)
        subprocess.run(["docker", "ps"], env=engine.env_ssh())          # or env_tcp(); any docker client
        engine.restart_engine()                # stop dockerd inside and start it again, as systemctl would
        assert not engine.host_path_visible(tempfile.mkdtemp())          # it really is another machine

``remote_engine_image()``: builds the image when missing and returns its tag,
``claude-bottle-test/remote-engine:<hash>``: a ``debootstrap --variant=minbase`` bookworm root with
``ENGINE_PACKAGES``, no ssh host keys (each engine makes its own), loaded with ``docker import``. ``<hash>`` covers
every input, so an existing tag is current; it is built with tests/e2e/images.py's machinery, under its lock. Needs
root and debootstrap.

``RemoteEngine(image=None, *, live_restore=False)`` starts one engine (a context manager; ``close()`` is
idempotent). It makes, on the local engine, exactly three objects, all named ``cbtest-remote-<tag>[-docker]`` and
labelled ``claude-bottle-test=1``, ``claude-bottle-test.remote=<tag>`` and ``claude-bottle-test.owner=<host>:<pid>:
<start time>``: a bridge network, a volume for the inner ``/var/lib/docker`` (overlay2 needs ext4 underneath, not the
container's own root) and the container. Inside: containerd as a service of its own and dockerd using it (Debian's
systemd layout, so a dockerd restart leaves containerd and the shims running), dockerd with ``--tls=false`` (an
explicit choice, which spares the 15 s pause 20.10 makes for a plain TCP listener), its own ``--bip`` and address
pool, and its containers' cgroups under the container's own. The capabilities are every one this engine's API knows
but CAP_SYS_RESOURCE (``--privileged`` and ``--cap-add ALL`` are refused here: the host's bounding set lacks it).
It has no way out: new connections leaving its container (from its host or its containers) are refused, so nothing
on it pulls an image or reaches the internet; name images that exist there, and run them with ``--pull never``.
Attributes: ``tag``, ``name`` (its container, also its network), ``volume``, ``host`` (``tcp://127.0.0.1:PORT``),
``api_port``, ``ssh_port``, ``alias`` (its ssh Host name), ``tmp`` (its keys and ssh configs).

- ``env_tcp()`` / ``env_ssh(multiplex=False)``: ``os.environ`` with ``DOCKER_HOST`` pointing at the engine (and no
  ``DOCKER_CONTEXT``, ``DOCKER_TLS_VERIFY`` or ``DOCKER_CERT_PATH``). ``env_ssh`` also puts a directory first on
  ``PATH`` whose ``ssh`` runs ``/usr/bin/ssh -F <the engine's own config>``: a per-engine key, a known_hosts holding
  the engine's host key (strict checking), no agent, batch mode. OpenSSH reads ``~/.ssh/config`` from the passwd
  entry's home, not ``$HOME``, so only ``-F`` keeps the user's ``~/.ssh`` out; nothing there is read or written.
  ``multiplex=True`` adds ``ControlMaster auto`` / ``ControlPersist`` (one shared connection).
- ``docker(*args, ssh=False, check=True, input=None, timeout=120)``: the docker CLI against the engine, a
  ``CompletedProcess`` (text); ``check`` raises ``RemoteEngineError`` naming the command, status and stderr.
- ``load(tags) -> list``: ``docker save`` of the tags the engine lacks (compared by image id) into its ``docker
  load``; the tags loaded.
- ``stop_engine()`` / ``start_engine()`` / ``restart_engine()``: SIGTERM to dockerd and wait for its exit (as
  ``systemctl stop docker``), then start it and wait until it answers. ``set_live_restore(on)`` writes
  ``/etc/docker/daemon.json`` and reloads dockerd (SIGHUP), so the next stop keeps containers running or not.
- ``host_path_visible(path) -> bool``: whether the engine's bind mount of ``path`` shows what this machine has there
  (a file's bytes, a directory's names); a path that does not exist on the engine counts as not visible.
- ``exec(script, check=True)``: ``sh -c script`` in the engine's own container (its host), through the local
  engine. ``ssh_argv(multiplex=False)``: ``ssh -F <its config>``, to run ``[*argv, engine.alias, command]``.
- ``close()``: removes the container, the volume and the network, and the temporary directory of keys and configs;
  nothing else. It runs on ``with`` exit, at interpreter exit (an uncaught Ctrl-C), and on SIGTERM (turned into
  KeyboardInterrupt while an engine runs, when nothing else handles SIGTERM); SIGINT and SIGTERM wait while it runs.
  What a ``kill -9`` left is removed by the next ``RemoteEngine`` (``reap_stale()``: objects whose owner process on
  this host is gone), with its temporary directory.

``leftovers(tag=None)``: names of a rig's objects (or any rig's) still on the local engine. ``require_remote()``
and ``start_or_skip()`` turn "cannot build" or "cannot start" into ``unittest.SkipTest`` with a one-line reason, or
a ``RuntimeError`` when ``CI`` is set (as harness.require_engine does); ``CLAUDE_BOTTLE_E2E=0`` skips.

``python3 tests/e2e/remote.py`` prints the image tag (building it); ``python3 tests/e2e/remote.py up
[--live-restore]`` starts an engine and prints its ``DOCKER_HOST`` lines until Ctrl-C or SIGTERM.
tests/e2e/remote_bench.py measures the rig and checks the engine facts written down in tests/README.md ("The second
Docker engine").
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e import harness, images  # noqa: E402

# ---- Inputs ----

ENGINE_REPO = "claude-bottle-test/remote-engine"
# docker.io brings containerd, runc and tini; iptables for its bridges; the rest for sshd and for looking inside.
ENGINE_PACKAGES = ("docker.io", "iptables", "ca-certificates", "procps", "openssh-server", "iproute2")
ENGINE_SETUP = """\
set -eu
rm -f /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*
"""
LABEL = images.LABEL
REMOTE_LABEL = "claude-bottle-test.remote"
OWNER_LABEL = "claude-bottle-test.owner"
PREFIX = "cbtest-remote-"
# Every capability Docker 20.10's API knows but SYS_RESOURCE, which the host's bounding set lacks (so --privileged
# and --cap-add ALL are refused here). BPF, PERFMON and CHECKPOINT_RESTORE are unknown to this engine.
CAPS = (
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH",
    "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE",
    "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
    "SYSLOG", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE",
    "SYS_RAWIO", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
)
# The inner engine's bridges: not the local engine's pools, so nothing here looks like a local network.
BIP = "10.213.0.1/24"
ADDRESS_POOL = "base=10.214.0.0/16,size=24"
API_PORT, SSH_PORT = 2375, 22
READY_TIMEOUT = 120
SSH_BIN = "/usr/bin/ssh"

# `cbtest-engine start|stop`, in the engine's container: dockerd as `systemctl start|stop docker` runs it on
# Debian (containerd is a service of its own; stop is SIGTERM, then wait for the exit, SIGKILL after 120 s).
ENGINE_CTL = r"""#!/bin/sh
set -eu
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
case $1 in
start)
    i=0; until [ -S /run/containerd/containerd.sock ]; do
        i=$((i+1)); [ $i -lt 300 ] || { echo "containerd never came up" >&2; exit 1; }; sleep 0.1
    done
    parent=$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup)
    setsid dockerd --host unix:///var/run/docker.sock --host tcp://0.0.0.0:2375 --tls=false \
        --containerd /run/containerd/containerd.sock --storage-driver overlay2 \
        --bip "$BIP" --default-address-pool "$POOL" --cgroup-parent "${parent%/}/engine" \
        --pidfile /run/docker.pid >>/var/log/dockerd.log 2>&1 </dev/null &
    ;;
stop)
    pid=$(cat /run/docker.pid 2>/dev/null) || exit 0
    kill -TERM "$pid" 2>/dev/null || exit 0
    i=0; while alive "$pid"; do
        i=$((i+1)); if [ $i -ge 1200 ]; then kill -KILL "$pid"; fi; sleep 0.1
    done
    ;;
esac
"""

# The container's main process (under --init): a host key of its own (ed25519 only: an RSA key takes seconds to
# make on a busy machine), the rig's key authorised for root, sshd, no
# way out (new connections leaving by eth0 are refused, from the engine's host and from its containers: nothing on
# it pulls or reaches the internet; it answers on its published ports only), containerd, dockerd.
BOOT = """\
set -eu
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
install -d -m 0700 /root/.ssh
printf '%s\\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
mkdir -p /run/sshd /etc/docker
printf '{"live-restore": %s}\\n' "$LIVE_RESTORE" > /etc/docker/daemon.json
cat > /usr/local/sbin/cbtest-engine <<'EOF'
{ctl}EOF
chmod 0755 /usr/local/sbin/cbtest-engine
/usr/sbin/sshd -E /var/log/sshd.log -o HostKey=/etc/ssh/ssh_host_ed25519_key
iptables -A OUTPUT -o eth0 -m conntrack --ctstate NEW -j REJECT
iptables -N DOCKER-USER
iptables -A DOCKER-USER -o eth0 -m conntrack --ctstate NEW -j REJECT
containerd >/var/log/containerd.log 2>&1 &
cbtest-engine start
exec sleep infinity
""".replace("{ctl}", ENGINE_CTL)


class RemoteEngineError(RuntimeError):
    """The second engine could not be built, started or driven; the message says which step and why."""


# ---- Helpers ----

def _local(*args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    """The docker CLI against this machine's engine (never the remote one, whatever DOCKER_HOST says here)."""
    env = kw.pop("env", None) or _clean_env()
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    except FileNotFoundError:
        raise RemoteEngineError("docker not found on PATH") from None
    if check and proc.returncode != 0:
        raise RemoteEngineError(f"docker {shlex.join(args)[:200]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    env.update(extra)
    return env


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _owner() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{_start_time(os.getpid())}"


def _owner_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return False  # another machine's, or not ours to judge
    return _start_time(int(pid)) != started


def remote_engine_image(verbose: bool = False) -> str:
    """The engine's image tag, built (debootstrap, docker import) when missing. Raises images.ImageBuildError."""
    inputs = json.dumps({"suite": images.SUITE, "variant": images.VARIANT, "mirror": images.MIRROR,
                         "packages": ENGINE_PACKAGES, "setup": ENGINE_SETUP}, sort_keys=True)
    tag = f"{ENGINE_REPO}:{images._digest(inputs)}"
    images._verbose = images._verbose or verbose
    with images.build_lock():
        return images._ensure(tag, lambda t: images.build_root(t, ENGINE_PACKAGES, ENGINE_SETUP))


def leftovers(tag: str | None = None) -> list:
    """Names of the containers, volumes and networks of one rig (or of any) still on the local engine."""
    label = f"label={REMOTE_LABEL}={tag}" if tag else f"label={REMOTE_LABEL}"
    names = _local("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split()
    names += _local("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
    names += _local("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
    if tag:  # and by name, labelled or not
        for kind, fmt in (("ps", "{{.Names}}"), ("volume", "{{.Name}}"), ("network", "{{.Name}}")):
            args = ("ps", "-a") if kind == "ps" else (kind, "ls")
            names += [n for n in _local(*args, "--format", fmt).stdout.split() if n.startswith(PREFIX + tag)]
    return sorted(set(names))


def _remove_rig(tag: str) -> None:
    """Remove one rig's container, volume and network from the local engine, and its temporary directory of keys
    and configs; missing ones are fine."""
    name = PREFIX + tag
    _local("rm", "--force", "--volumes", name, check=False, timeout=180)
    _local("volume", "rm", "--force", f"{name}-docker", check=False)
    _local("network", "rm", name, check=False)
    for tmp in Path(tempfile.gettempdir()).glob(f"{name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def reap_stale() -> list:
    """Remove the rigs whose owner process on this host is gone (a kill -9, a crash); their tags."""
    fmt = f'{{{{.Label "{REMOTE_LABEL}"}}}} {{{{.Label "{OWNER_LABEL}"}}}}'
    found = set()
    for kind in (("ps", "-a"), ("volume", "ls"), ("network", "ls")):
        out = _local(*kind, "--filter", f"label={REMOTE_LABEL}", "--format", fmt, check=False).stdout
        for line in out.splitlines():
            tag, _, owner = line.partition(" ")
            if tag and _owner_gone(owner):
                found.add(tag)
    for tag in sorted(found):
        _remove_rig(tag)
    return sorted(found)


# ---- Interruption ----

_live: set = set()
_previous_term = None


def _on_term(signum, frame):
    # A Ctrl-C's path: unittest lets KeyboardInterrupt through, and atexit closes what is still running.
    raise KeyboardInterrupt(f"signal {signum}")


def _close_all() -> None:
    for engine in list(_live):
        engine.close()


atexit.register(_close_all)


def _track(engine) -> None:
    global _previous_term
    if not _live and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _previous_term = signal.signal(signal.SIGTERM, _on_term)
    _live.add(engine)


def _untrack(engine) -> None:
    global _previous_term
    _live.discard(engine)
    if not _live and _previous_term is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous_term)
        _previous_term = None


# ---- The engine ----

class RemoteEngine:
    """One second engine, ready when the constructor returns; see the module docstring."""

    def __init__(self, image: str | None = None, *, live_restore: bool = False,
                 ready_timeout: float = READY_TIMEOUT):
        self.image = image or remote_engine_image()
        self.tag = os.urandom(4).hex()
        self.name = PREFIX + self.tag
        self.volume = f"{self.name}-docker"
        self.network = self.name
        self.alias = self.name  # the ssh Host name, and the host key's alias
        self.ready_timeout = ready_timeout
        self.closed = False
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        _track(self)
        try:
            reap_stale()
            self._create(live_restore)
            self._wait_ready()
            self._ssh_setup()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- Start ----

    def _labels(self) -> list:
        return ["--label", LABEL, "--label", f"{REMOTE_LABEL}={self.tag}", "--label", f"{OWNER_LABEL}={_owner()}"]

    def _create(self, live_restore: bool) -> None:
        key = self.tmp / "id_ed25519"
        keygen = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", str(key)],
                                capture_output=True, text=True)
        if keygen.returncode != 0:
            raise RemoteEngineError(f"ssh-keygen failed: {keygen.stderr.strip()}")
        _local("network", "create", *self._labels(), self.network)
        _local("volume", "create", *self._labels(), self.volume)
        caps = [arg for cap in CAPS for arg in ("--cap-add", cap)]
        _local("run", "--detach", "--name", self.name, *self._labels(), "--hostname", "remote-engine",
               "--network", self.network, "--init", "--pull", "never", *caps,
               "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
               "--device", "/dev/fuse", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
               "--tmpfs", "/run", "--tmpfs", "/tmp", "--volume", f"{self.volume}:/var/lib/docker",
               "--publish", f"127.0.0.1::{API_PORT}", "--publish", f"127.0.0.1::{SSH_PORT}",
               "--env", f"AUTHORIZED_KEY={(self.tmp / 'id_ed25519.pub').read_text().strip()}",
               "--env", f"LIVE_RESTORE={'true' if live_restore else 'false'}",
               "--env", f"BIP={BIP}", "--env", f"POOL={ADDRESS_POOL}",
               self.image, "sh", "-c", BOOT)
        self.api_port = self._port(API_PORT)
        self.ssh_port = self._port(SSH_PORT)
        self.host = f"tcp://127.0.0.1:{self.api_port}"

    def _port(self, port: int) -> int:
        out = _local("port", self.name, f"{port}/tcp").stdout.split()
        return int(out[0].rpartition(":")[2])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            proc = _local("version", "--format", "{{.Server.Version}}", check=False, timeout=30,
                          env=_clean_env(DOCKER_HOST=self.host))
            if proc.returncode == 0 and proc.stdout.strip():
                return
            running = _local("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                log = self.exec("tail -n 5 /var/log/dockerd.log", check=False).stdout if running == "true" else \
                    _local("logs", "--tail", "5", self.name, check=False).stderr
                why = "its container stopped" if running != "true" else f"no answer in {self.ready_timeout:.0f} s"
                raise RemoteEngineError(f"the second engine did not come up ({why}): {' | '.join(log.splitlines())}")
            time.sleep(0.2)

    def _ssh_setup(self) -> None:
        host_key = self.exec("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        (self.tmp / "known_hosts").write_text(f"{self.alias} {host_key[0]} {host_key[1]}\n")
        for multiplex in (False, True):
            self._write_ssh_config(multiplex)
        deadline = time.monotonic() + 30
        while True:  # sshd was started before dockerd, but wait for its banner all the same
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RemoteEngineError("the second engine's sshd did not answer in 30 s")
            time.sleep(0.2)

    def _write_ssh_config(self, multiplex: bool) -> None:
        t = self.tmp
        suffix = "-mux" if multiplex else ""
        lines = [
            f"Host {self.alias}",
            "    HostName 127.0.0.1",
            f"    Port {self.ssh_port}",
            "    User root",
            f"    HostKeyAlias {self.alias}",
            "Host *",
            f"    IdentityFile {t / 'id_ed25519'}",
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            "    AddKeysToAgent no",
            "    ForwardAgent no",
            f"    UserKnownHostsFile {t / 'known_hosts'}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    UpdateHostKeys no",
            "    HostKeyAlgorithms ssh-ed25519",
            "    BatchMode yes",
            "    LogLevel ERROR",
        ]
        if multiplex:
            lines += ["    ControlMaster auto", f"    ControlPath {t / 'mux-%C'}", "    ControlPersist 120"]
        config = t / f"ssh_config{suffix}"
        config.write_text("\n".join(lines) + "\n")
        bindir = t / f"bin{suffix}"
        bindir.mkdir()
        wrapper = bindir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {SSH_BIN} -F {shlex.quote(str(config))} "$@"\n')
        wrapper.chmod(0o755)

    # ---- Clients ----

    def env_tcp(self) -> dict:
        """os.environ for a docker client talking to this engine over tcp://."""
        return _clean_env(DOCKER_HOST=self.host)

    def env_ssh(self, multiplex: bool = False) -> dict:
        """os.environ for a docker client talking to this engine over ssh://, with the rig's own ssh first on PATH."""
        bindir = self.tmp / ("bin-mux" if multiplex else "bin")
        return _clean_env(DOCKER_HOST=f"ssh://{self.alias}", PATH=f"{bindir}:{os.environ.get('PATH', '')}")

    def ssh_argv(self, multiplex: bool = False) -> list:
        """The ssh command line the wrappers run (for `ssh -G`, or a shell on the engine's host)."""
        return [SSH_BIN, "-F", str(self.tmp / ("ssh_config-mux" if multiplex else "ssh_config"))]

    def docker(self, *args, ssh: bool = False, multiplex: bool = False, check: bool = True, input=None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        """The docker CLI against this engine, over tcp:// (or ssh://)."""
        env = self.env_ssh(multiplex) if ssh else self.env_tcp()
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, input=input, timeout=timeout,
                              env=env)
        if check and proc.returncode != 0:
            via = "ssh" if ssh else "tcp"
            raise RemoteEngineError(f"docker ({via}) {shlex.join(args)[:200]} failed ({proc.returncode}): "
                                    f"{proc.stderr.strip()}")
        return proc

    def exec(self, script: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        """`sh -c script` on the engine's host (its container), through the local engine."""
        return _local("exec", self.name, "sh", "-c", script, check=check, timeout=timeout)

    # ---- Images ----

    def load(self, tags) -> list:
        """Bring `tags` from the local engine (docker save | docker load over tcp://); the ones it lacked."""
        missing = []
        for tag in tags:
            local_id = _local("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
            there = self.docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
            if there != local_id:
                missing.append(tag)
        if not missing:
            return []
        save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_clean_env())
        try:
            load = subprocess.run(["docker", "load", "--quiet"], stdin=save.stdout, capture_output=True,
                                  env=self.env_tcp(), timeout=900)
        finally:
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace")
            save.stderr.close()
            save_rc = save.wait()
        if save_rc != 0 or load.returncode != 0:
            raise RemoteEngineError(f"docker save {' '.join(missing)} | docker load failed: "
                                    f"{save_err.strip() or load.stderr.decode(errors='replace').strip()}")
        return missing

    # ---- The engine's life ----

    def stop_engine(self) -> None:
        """Stop dockerd as `systemctl stop docker` would (SIGTERM, wait for its exit); containerd keeps running."""
        self.exec("cbtest-engine stop", timeout=180)

    def start_engine(self) -> None:
        """Start dockerd again and wait until it answers."""
        self.exec("BIP=$BIP POOL=$POOL cbtest-engine start")
        self._wait_ready()

    def restart_engine(self) -> None:
        """`systemctl restart docker`: stop, then start, then wait until it answers."""
        self.stop_engine()
        self.start_engine()

    def set_live_restore(self, on: bool) -> None:
        """Write live-restore into daemon.json and reload dockerd (SIGHUP); returns once `docker info` says so."""
        value = "true" if on else "false"
        self.exec(f"printf '{{\"live-restore\": {value}}}\\n' > /etc/docker/daemon.json && "
                  "kill -HUP \"$(cat /run/docker.pid)\"")
        deadline = time.monotonic() + 30
        while self.docker("info", "--format", "{{.LiveRestoreEnabled}}").stdout.strip() != value:
            if time.monotonic() > deadline:
                raise RemoteEngineError(f"dockerd did not reload live-restore={value}")
            time.sleep(0.1)

    # ---- Remoteness ----

    def _probe_image(self) -> str:
        """An empty image on the engine, imported there (it never runs: a created container is enough for cp)."""
        tag = "claude-bottle-test/remote-probe:empty"
        if self.docker("image", "inspect", tag, check=False).returncode != 0:
            empty = subprocess.run(["tar", "-c", "-f", "-", "-T", "/dev/null"], capture_output=True,
                                   check=True).stdout
            proc = subprocess.run(["docker", "import", "-", tag], input=empty, capture_output=True,
                                  env=self.env_tcp())
            if proc.returncode != 0:
                raise RemoteEngineError(f"docker import on the second engine failed: {proc.stderr.decode().strip()}")
        return tag

    def host_path_visible(self, path) -> bool:
        """True when the engine's bind mount of `path` holds what this machine has there: the same bytes for a
        file, the same names for a directory. A path the engine's host lacks is refused there: False."""
        path = Path(path).resolve()
        create = self.docker("create", "--pull", "never", "--mount", f"type=bind,source={path},target=/probe,readonly",
                             self._probe_image(), "/none", check=False)
        if create.returncode != 0:
            return False
        ctr = create.stdout.strip()
        try:
            proc = subprocess.run(["docker", "cp", f"{ctr}:/probe", "-"], capture_output=True, env=self.env_tcp())
        finally:
            self.docker("rm", "--force", ctr, check=False)
        if proc.returncode != 0:
            return False
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            members = tar.getmembers()
            if path.is_dir():
                there = sorted(m.name.partition("/")[2] for m in members if m.name.count("/") == 1)
                return there == sorted(os.listdir(path))
            if not path.is_file() or len(members) != 1 or not members[0].isfile():
                return False
            return tar.extractfile(members[0]).read() == path.read_bytes()

    # ---- Teardown ----

    def close(self) -> None:
        """Remove what this engine made on the local engine, and its temporary directory. Idempotent."""
        if self.closed:
            return
        self.closed = True
        # A second Ctrl-C or SIGTERM must not cut the removal short: held until it is done.
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._teardown()
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def _teardown(self) -> None:
        try:
            mux = self.tmp / "ssh_config-mux"
            if any(self.tmp.glob("mux-*")):
                subprocess.run([SSH_BIN, "-F", str(mux), "-O", "exit", self.alias], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            _remove_rig(self.tag)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _untrack(self)


# ---- Skips ----

def _unavailable(reason: str):
    reason = " | ".join(line.strip() for line in reason.splitlines() if line.strip())[:400]
    if os.environ.get("CI"):
        return RuntimeError(f"e2e: {reason}, and CI is set: the end-to-end tests must run")
    return unittest.SkipTest(f"e2e: {reason}")


def require_remote() -> dict:
    """harness.require_engine()'s images plus "remote-engine": the engine's image; skip (or fail under CI) when
    the local engine or the image cannot be had."""
    tags = harness.require_engine()
    try:
        tags["remote-engine"] = remote_engine_image(verbose=True)
    except images.ImageBuildError as exc:
        raise _unavailable(f"no second engine: {exc}") from None
    return tags


def start_or_skip(**kw) -> RemoteEngine:
    """A RemoteEngine, or a skip (a failure under CI) with the reason in one line when it cannot start here."""
    if shutil.which("ssh-keygen") is None or not os.path.exists(SSH_BIN):
        raise _unavailable("no second engine: OpenSSH's ssh and ssh-keygen are needed (apt-get install openssh-client)")
    try:
        return RemoteEngine(**kw)
    except images.ImageBuildError as exc:
        raise _unavailable(f"no second engine: {exc}") from None
    except RemoteEngineError as exc:
        raise _unavailable(f"the second engine cannot start here: {exc}") from None


# ---- Command line ----

def _up(args) -> int:
    with RemoteEngine(live_restore=args.live_restore) as engine:
        print(f"export DOCKER_HOST={engine.host}")
        env = engine.env_ssh()
        print(f"# or: export DOCKER_HOST={env['DOCKER_HOST']} PATH={env['PATH'].partition(':')[0]}:$PATH")
        print(f"# its host: docker exec -it {engine.name} bash; Ctrl-C removes it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The e2e tests' second Docker engine (tests/e2e/remote.py).")
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("up", help="start an engine, print its DOCKER_HOST, remove it on Ctrl-C")
    up.add_argument("--live-restore", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        print(remote_engine_image(verbose=True))
    except (images.ImageBuildError, RemoteEngineError) as exc:
        print(f"remote: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
