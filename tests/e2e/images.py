#!/usr/bin/env python3
"""Build the local Docker images that claude-bottle's end-to-end tests run.

The machine has no container registry, so every image is made here from Debian's mirror:

- ``claude-bottle-test/debian:<hash>``: a ``debootstrap --variant=minbase`` bookworm root with python3, git,
  ssh, socat and curl, a user ``claude`` (1000:1000) and ``/workspace``; imported with ``docker import``. It is the
  agent image and the "outside" hosts (HTTP servers, an sshd git server).
- ``claude-bottle-test/pipelock:<hash>``: the pipelock stand-in (``standin/pipelock``) at ``/pipelock`` on top of
  the debian image, laid out like the official image. Set ``CLAUDE_BOTTLE_E2E_PIPELOCK_IMAGE`` to test against
  another pipelock image (e.g. the official one) instead.
- ``claude-bottle-test/busybox:<hash>``: a busybox-only image: ``FROM scratch``, Debian's static busybox (the host's
  ``/bin/busybox`` from busybox-static) at ``/bin/busybox`` and its applets as symlinks in ``/bin``; nothing else (no
  ``/etc/passwd``, no ``/tmp``, no ``/home``).
- ``claude-bottle-test/nouser:<hash>``: the debian image without a uid-1000 user: user and group ``claude``,
  ``/home/claude`` and ``/workspace`` removed.
- ``claude-bottle-test/node:<hash>``: nouser plus ``node`` (1000:1000, home ``/home/node``, 0755, shell bash), made
  the way the official node images make it.
- ``claude-bottle-test/agent-base:<hash>``: the ``base`` stage of claude_bottle.py's built-in Dockerfile, built
  ``FROM`` the debian image through its ``BASE_IMAGE`` build argument (its own base cannot be pulled here).

``<hash>`` is the first 12 hex digits of a sha256 over everything that made the image, so a tag that exists is
up to date and its build is skipped.

Usage: ``python3 tests/e2e/images.py [-q]`` prints ``name=tag`` lines; ``ensure_images()`` from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

# ---- Inputs ----

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
PACKAGES = (
    "python3", "python3-yaml", "git", "openssh-client", "openssh-server", "socat", "curl", "ca-certificates",
    "iproute2", "netcat-openbsd", "procps",
)
DEBIAN_REPO = "claude-bottle-test/debian"
PIPELOCK_REPO = "claude-bottle-test/pipelock"
BUSYBOX_REPO = "claude-bottle-test/busybox"
NOUSER_REPO = "claude-bottle-test/nouser"
NODE_REPO = "claude-bottle-test/node"
AGENT_BASE_REPO = "claude-bottle-test/agent-base"
PIPELOCK_IMAGE_ENV = "CLAUDE_BOTTLE_E2E_PIPELOCK_IMAGE"
LABEL = "claude-bottle-test=1"
STANDIN = Path(__file__).resolve().parent / "standin" / "pipelock"
# Debian's busybox-static; the dynamically linked busybox package would not run in an image without libc.
BUSYBOX = Path("/bin/busybox")

# Runs inside the fresh root (chroot). Host keys go because every test generates its own at run time: keys baked
# into a shared image would be the same for every test host.
SETUP_SCRIPT = """\
set -eu
groupadd --gid 1000 claude
useradd --uid 1000 --gid 1000 --home-dir /home/claude --create-home --shell /bin/bash claude
install -d -o 1000 -g 1000 -m 0755 /workspace
rm -f /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*
"""

# No LABEL: the parent's label is inherited, and each metadata step of the legacy builder costs ~4 s here.
PIPELOCK_DOCKERFILE = """\
FROM {parent}
COPY pipelock /pipelock
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/pipelock"]
CMD ["run", "--listen", "0.0.0.0:8888"]
"""

# Exec form: the image has no shell until busybox has installed its applets.
BUSYBOX_DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
LABEL {LABEL}
CMD ["sh"]
"""

# A base image with no user for uid 1000, as many are; /workspace goes too, it was made for claude.
NOUSER_DOCKERFILE = """\
FROM {parent}
RUN userdel --remove claude \\
 && if getent group claude >/dev/null; then groupdel claude; fi \\
 && rm -rf /home/claude /workspace \\
 && ! getent passwd 1000 && ! getent group 1000
"""

# The same commands as the official node images (docker-library/node), on the nouser image.
NODE_DOCKERFILE = """\
FROM {parent}
RUN groupadd --gid 1000 node \\
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \\
 && chmod 0755 /home/node
"""


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says why and what to do."""


# ---- Helpers ----

_verbose = False
_t0 = time.monotonic()


def _progress(message: str) -> None:
    if _verbose:
        print(f"images: [{time.monotonic() - _t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed so that moving bytes between two parts changes the hash.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:12]


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    _progress("$ " + shlex.join(argv).replace("\n", " ")[:160])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise ImageBuildError(f"{argv[0]} not found on PATH") from None
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def image_exists(tag: str) -> bool:
    """True when the local engine has `tag`."""
    try:
        proc = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    except FileNotFoundError:
        raise ImageBuildError("docker not found on PATH") from None
    return proc.returncode == 0


def debian_tag() -> str:
    inputs = json.dumps({"suite": SUITE, "variant": VARIANT, "mirror": MIRROR, "packages": PACKAGES,
                         "setup": SETUP_SCRIPT}, sort_keys=True)
    return f"{DEBIAN_REPO}:{_digest(inputs)}"


def pipelock_tag(parent: str) -> str:
    return f"{PIPELOCK_REPO}:{_digest(STANDIN.read_bytes(), parent, PIPELOCK_DOCKERFILE)}"


def busybox_tag() -> str:
    return f"{BUSYBOX_REPO}:{_digest(_busybox_bytes(), BUSYBOX_DOCKERFILE)}"


def nouser_tag(parent: str) -> str:
    return f"{NOUSER_REPO}:{_digest(parent, NOUSER_DOCKERFILE)}"


def node_tag(parent: str) -> str:
    return f"{NODE_REPO}:{_digest(parent, NODE_DOCKERFILE)}"


def agent_base_tag(parent: str) -> str:
    return f"{AGENT_BASE_REPO}:{_digest(parent, _agent_dockerfile())}"


def _agent_dockerfile() -> str:
    """claude_bottle.py's built-in Dockerfile, read from the file (this module runs without it on sys.path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_cb", Path(__file__).resolve().parents[2] / "claude_bottle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AGENT_DOCKERFILE


def _is_dynamic_elf(data: bytes) -> bool:
    """True when the ELF executable `data` names a program interpreter (PT_INTERP): it is dynamically linked."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64, order = data[4] == 2, "little" if data[5] == 1 else "big"
    phoff, size, count = (0x20, 0x36, 0x38) if is64 else (0x1C, 0x2A, 0x2C)
    start = int.from_bytes(data[phoff:phoff + (8 if is64 else 4)], order)
    entsize = int.from_bytes(data[size:size + 2], order)
    for n in range(int.from_bytes(data[count:count + 2], order)):
        offset = start + n * entsize
        if int.from_bytes(data[offset:offset + 4], order) == 3:  # PT_INTERP
            return True
    return False


def _busybox_bytes() -> bytes:
    try:
        data = BUSYBOX.read_bytes()
    except FileNotFoundError:
        raise ImageBuildError(f"{BUSYBOX} not found; install it with: apt-get install busybox-static") from None
    try:
        dynamic = _is_dynamic_elf(data)
    except (ValueError, IndexError):
        raise ImageBuildError(f"{BUSYBOX} is not an ELF executable") from None
    if dynamic:
        raise ImageBuildError(f"{BUSYBOX} is linked dynamically; install the static one: "
                              "apt-get install busybox-static")
    return data


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    # Two test runs starting together would otherwise both debootstrap the same image. Locking this very file
    # leaves nothing behind.
    with open(__file__, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(root: str) -> list[str]:
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, reverse=True)


def _remove_root(root: str) -> None:
    # WARNING: a failed debootstrap can leave /proc or /dev binds mounted inside the root; deleting through them
    # would reach the host's files, so unmount first and refuse to delete while anything is still mounted.
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = _mounts_under(root)
    if left:
        print(f"images: not removing {root}: still mounted: {', '.join(left)}", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


# ---- Builds ----

def build_root(tag: str, packages, setup: str, cmd: str = '["/bin/bash"]') -> None:
    """debootstrap a `VARIANT` `SUITE` root with `packages`, run `setup` in it (chroot, sh) and `docker import` it
    as `tag`, labelled `LABEL`, with `cmd` (JSON exec form) as its CMD. Needs root and debootstrap."""
    if os.geteuid() != 0:
        raise ImageBuildError(f"building {tag} needs root (debootstrap); run the e2e tests as root")
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap not found; install it with: apt-get install debootstrap")
    root = tempfile.mkdtemp(prefix="claude-bottle-test-rootfs-")
    try:
        started = time.monotonic()
        _run(["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(packages), SUITE, root, MIRROR])
        _progress(f"debootstrap took {time.monotonic() - started:.1f}s")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        _run(["chroot", root, "/bin/sh", "-c", setup], env=env)
        started = time.monotonic()
        # Device nodes stay out: Docker gives every container its own /dev.
        tar = subprocess.Popen(["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                                "--exclude=./sys/*", "-C", root, "-c", "."],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _run(["docker", "import", "--change", f"LABEL {LABEL}", "--change", f"CMD {cmd}", "-", tag],
                 stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar_err = tar.stderr.read().decode(errors="replace")
            tar.stderr.close()
            if tar.wait() != 0:
                raise ImageBuildError(f"tar of {root} failed: {tar_err.strip()}")
        _progress(f"docker import took {time.monotonic() - started:.1f}s")
    finally:
        _remove_root(root)


def build_debian(tag: str) -> None:
    build_root(tag, PACKAGES, SETUP_SCRIPT)


def _docker_build(tag: str, dockerfile: str, files: dict[str, bytes]) -> None:
    """Build `dockerfile` with `files` (name -> bytes, made executable) as its context; tag the result `tag`."""
    context = tempfile.mkdtemp(prefix="claude-bottle-test-context-")
    try:
        for name, data in files.items():
            path = os.path.join(context, name)
            with open(path, "wb") as fh:
                fh.write(data)
            os.chmod(path, 0o755)
        # The legacy builder: this engine has no buildx, and it uses the local parent image without pulling.
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        started = time.monotonic()
        _run(["docker", "build", "--quiet", "--tag", tag, "--file", "-", context], input=dockerfile, env=env)
        _progress(f"docker build took {time.monotonic() - started:.1f}s")
    finally:
        shutil.rmtree(context, ignore_errors=True)


def build_pipelock(tag: str, parent: str) -> None:
    _docker_build(tag, PIPELOCK_DOCKERFILE.format(parent=parent), {"pipelock": STANDIN.read_bytes()})


def build_busybox(tag: str) -> None:
    _docker_build(tag, BUSYBOX_DOCKERFILE, {"busybox": _busybox_bytes()})


def build_nouser(tag: str, parent: str) -> None:
    _docker_build(tag, NOUSER_DOCKERFILE.format(parent=parent), {})


def build_node(tag: str, parent: str) -> None:
    _docker_build(tag, NODE_DOCKERFILE.format(parent=parent), {})


def build_agent_base(tag: str, parent: str) -> None:
    """The built-in Dockerfile's `base` stage on our Debian root (its own base image cannot be pulled here)."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    started = time.monotonic()
    _run(["docker", "build", "--quiet", "--force-rm", "--target", "base", "--build-arg", f"BASE_IMAGE={parent}",
          "--tag", tag, "-"], input=_agent_dockerfile(), env=env)
    _progress(f"docker build took {time.monotonic() - started:.1f}s")


def _ensure(tag: str, build, *args) -> str:
    if image_exists(tag):
        _progress(f"{tag} exists, skipping")
    else:
        _progress(f"building {tag}")
        build(tag, *args)
    return tag


def ensure_images(verbose: bool = False) -> dict[str, str]:
    """Build whatever test image is missing; return {"debian", "pipelock", "busybox", "nouser", "node",
    "agent-base": tag}."""
    global _verbose
    _verbose = verbose
    images = {}
    with build_lock():
        debian = images["debian"] = _ensure(debian_tag(), build_debian)
        override = os.environ.get(PIPELOCK_IMAGE_ENV)
        if override:
            _progress(f"pipelock image from {PIPELOCK_IMAGE_ENV}: {override}")
            images["pipelock"] = override
        else:
            images["pipelock"] = _ensure(pipelock_tag(debian), build_pipelock, debian)
        images["busybox"] = _ensure(busybox_tag(), build_busybox)
        nouser = images["nouser"] = _ensure(nouser_tag(debian), build_nouser, debian)
        images["node"] = _ensure(node_tag(nouser), build_node, nouser)
        images["agent-base"] = _ensure(agent_base_tag(debian), build_agent_base, debian)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local Docker images for the end-to-end tests.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        images = ensure_images(verbose=not args.quiet)
    except ImageBuildError as exc:
        print(f"images: error: {exc}", file=sys.stderr)
        return 1
    for name, tag in images.items():
        print(f"{name}={tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
