"""Servers for the end-to-end tests: containers of the debian test image, each on a network the test names.

Every server is a container named `cbtest-<random>-<role>` and labelled `claude-bottle-test=1`, started from the
locally built debian test image (never pulled: `--pull never`) with its program copied in by `docker cp`, and
returned once it answers (polled, no fixed sleeps) as a `Server`: `.name`, `.network`, `.ip` (on that network),
`.url`, `.close()` (idempotent; also a context manager), `.logs()`, and `.requests()` where the program keeps a
request log. The programs are in `programs/`.

    ca = make_ca(tmpdir, ["upstream"])              # CA: .ca_cert .ca_key .cert .key .names (Paths)
    up = https_upstream(net, ["upstream"], ca, token="t0k")
    mirror = apt_mirror(net, ["mirror"])            # then sources_line("mirror") in /etc/apt/sources.list
    inst = claude_installer()                       # default bridge: inst.url = http://<ip>:8080/install.sh
    proc = client(net, "curl -s --cacert /cbtest/ca.pem https://upstream/echo", files=[ca.ca_cert])

- `https_upstream`: `programs/https_upstream.py` on port 443 with `ca.cert`: `/echo`, `/stream`, `/redirect`,
  `/requests` and git smart HTTP for `/repo.git` (branch main, one commit, pushes allowed), which with `token`
  answers 401 unless the Authorization header is exactly `Bearer <token>`.
- `apt_mirror`: a flat Debian repository of `APT_PACKAGES` (downloaded on the host with `apt-get download`, indexed
  with `apt-ftparchive`, cached under ~/.cache/claude-bottle-test/) served by `python3 -m http.server` on port 80.
  Its packages depend on nothing the debian test image lacks.
- `claude_installer`: `programs/claude_installer.py` on port 8080, on the default bridge so that the RUN steps of
  `docker build` (legacy builder) reach it by IP. It stands in for Claude Code's native installer:

  What the real `https://claude.ai/install.sh` does, which the stand-in (`programs/install.sh`, `programs/claude`)
  mirrors. Sources: copies of the script kept in public repositories (found with the code search; one is headed
  "# Source: https://claude.ai/install.sh"); anthropics/claude-code issues #25165 and #50044 (`bash -s <version>`,
  the layout, `claude --version`); code.claude.com/docs/en/troubleshoot-install (the line
  `"$binary_path" install ${TARGET:+"$TARGET"}` in its output):
  - a bash script, run as `curl -fsSL https://claude.ai/install.sh | bash -s [stable|latest|VERSION]`; any other
    argument: `Usage: $0 [stable|latest|VERSION]` on stderr, exit 1; `set -e`; needs curl (or wget);
  - the platform, `linux-x64` or `linux-arm64` (`-musl` on musl libc; darwin too), comes from `uname`;
  - from the release bucket (`https://downloads.claude.ai/claude-code-releases`; older copies of the script use
    `https://storage.googleapis.com/claude-code-dist-.../claude-code-releases`, same layout) it reads `latest` (a
    version), then `<version>/manifest.json` (`platforms.<platform>.checksum`, sha256), downloads
    `<version>/<platform>/claude` to `~/.claude/downloads/claude-<version>-<platform>`, checks the sha256, prints
    `Setting up Claude Code...`, runs `"$binary_path" install ${TARGET:+"$TARGET"}`, deletes the download and
    prints `Installation complete!`;
  - `claude install` puts the binary at `~/.local/share/claude/versions/<version>`, points the symlink
    `~/.local/bin/claude` at it and reports `Claude Code successfully installed!`, `Version: <v>`,
    `Location: ~/.local/bin/claude`; PATH is left alone (the bottle's Dockerfile sets it);
  - `claude --version` prints `<version> (Claude Code)`, e.g. `2.1.114 (Claude Code)`.
  The stand-in differs: its bucket is this server's `/claude-code-releases/` (`latest` and `stable` are the
  `latest` argument; every well-formed version exists); it downloads TARGET itself instead of downloading `latest`
  and letting `claude install TARGET` fetch TARGET; no wget, musl or macOS; the "binary" is a shell script whose
  other commands only print their arguments; nothing is written to ~/.claude.json.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import claude_bottle
from tests.e2e import images
from tests.e2e.harness import TEST_LABEL, docker

PROGRAMS = Path(__file__).resolve().parent / "programs"
# In every server container: its program and files, copied in.
SRV = "/srv/cbtest"
# `hello` and `tree` depend on libc6 alone, which the debian test image has (and neither of them).
APT_PACKAGES = ("hello", "tree")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "claude-bottle-test"
# What the installer stand-in calls `latest`: the version the bottle's Dockerfile asks for.
CLAUDE_VERSION = claude_bottle.CLAUDE_CODE_VERSION


# ---- Handles ----

@dataclass
class Server:
    """A running server container: `name`, its `ip` on `network`, the `url` clients there use."""

    name: str
    network: str
    ip: str = ""
    url: str = ""
    _requests_argv: list = field(default_factory=list, repr=False)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            docker("rm", "--force", self.name, check=False)

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def requests(self) -> list:
        """The requests the server received, oldest first: method, path, status (and headers, upstream)."""
        if not self._requests_argv:
            raise NotImplementedError(f"{self.name} keeps no request log")
        return json.loads(docker("exec", self.name, *self._requests_argv).stdout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class CA:
    """A test CA and one server certificate it signed for `names` (files in the directory given to make_ca)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    names: tuple


# ---- Helpers ----

def _debian_image() -> str:
    tag = images.debian_tag()
    if not images.image_exists(tag):
        # Never let the engine look for it in a registry.
        raise RuntimeError(f"{tag} is not built; call harness.require_engine() or images.ensure_images() first")
    return tag


def _name(role: str) -> str:
    return f"cbtest-{os.urandom(3).hex()}-{role}"


def _ip(name: str, network: str) -> str:
    networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", name).stdout)
    return networks[network]["IPAddress"]


def _wait(server: Server, probe: list, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = docker("exec", server.name, *probe, check=False)
        if proc.returncode == 0:
            return
        if "is not running" in proc.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} never became ready ({shlex.join(probe)}: {proc.stderr.strip()}); "
                               f"its log:\n{server.logs()[-2000:]}")
        time.sleep(0.1)


def _start(role: str, network: str, aliases, files: dict, argv: list, probe: list, *, name=None, image=None,
           url=lambda ip: "", requests_argv=()) -> Server:
    """Create the container, copy `files` ({name in SRV: host path}) in, start it, wait until `probe` passes."""
    server = Server(name or _name(role), network, _requests_argv=list(requests_argv))
    create = ["create", "--pull", "never", "--name", server.name, "--label", TEST_LABEL, "--network", network]
    for alias in aliases:
        create += ["--network-alias", alias]
    docker(*create, image or _debian_image(), *argv)
    try:
        with tempfile.TemporaryDirectory(prefix="cbtest-srv-") as tmp:
            os.chmod(tmp, 0o755)
            for target, source in files.items():
                dest = Path(tmp, target)
                if Path(source).is_dir():
                    shutil.copytree(source, dest, symlinks=True)
                else:
                    shutil.copy2(source, dest)
            docker("cp", f"{tmp}/.", f"{server.name}:{SRV}")
        docker("start", server.name)
        server.ip = _ip(server.name, network)
        server.url = url(server.ip)
        _wait(server, probe)
    except BaseException:
        server.close()
        raise
    return server


def _openssl(*args, cwd) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _san(names) -> str:
    entries = []
    for name in names:
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


# ---- The servers ----

def make_ca(tmpdir, names) -> CA:
    """A test CA (ca.pem, ca.key) and a server certificate (server.pem, server.key) for `names` (DNS names or IP
    addresses, all in subjectAltName) signed by it, made with the host's openssl in `tmpdir`. EC P-256, 30 days."""
    tmp, names = Path(tmpdir), tuple(names)
    if not names:
        raise ValueError("make_ca needs at least one name")
    tag = os.urandom(4).hex()
    (tmp / "openssl.cnf").write_text(f"""\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {_san(names)}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-config", "openssl.cnf", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", f"/CN=cbtest CA {tag}", "-extensions", "ca", cwd=tmp)
    _openssl("req", "-config", "openssl.cnf", "-new", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={names[0]}", cwd=tmp)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", "30", "-extfile", "openssl.cnf",
             "-extensions", "server", "-out", "server.pem", cwd=tmp)
    return CA(tmp / "ca.pem", tmp / "ca.key", tmp / "server.pem", tmp / "server.key", names)


def https_upstream(network: str, aliases, ca: CA, token: str | None = None, *, name=None, image=None) -> Server:
    """The HTTPS upstream (programs/https_upstream.py) on port 443 of a container on `network` under `aliases`,
    serving `ca.cert`; git over HTTPS needs `Authorization: Bearer <token>` when `token` is given.
    `.url` is https://<first alias> (or the IP); `.requests()` its request log."""
    aliases = list(aliases)
    argv = ["python3", f"{SRV}/https_upstream.py", "--cert", f"{SRV}/server.pem", "--key", f"{SRV}/server.key"]
    if token is not None:
        argv += ["--token", token]
    files = {"https_upstream.py": PROGRAMS / "https_upstream.py", "server.pem": ca.cert, "server.key": ca.key}
    # Its own loopback, not a name in the certificate: -k is the readiness probe's only shortcut.
    requests_argv = ["curl", "-skf", "https://127.0.0.1/requests"]
    return _start("upstream", network, aliases, files, argv, requests_argv, name=name, image=image,
                  url=lambda ip: f"https://{aliases[0] if aliases else ip}", requests_argv=requests_argv)


def _apt_repository(packages) -> Path:
    """A flat repository of `packages` (.deb files, Packages, Packages.gz, Release), made once and cached."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    final = CACHE / f"apt-{images._digest(arch, *packages)}"
    if (final / "Release").exists():
        return final
    for tool, package in (("apt-get", "apt"), ("apt-ftparchive", "apt-utils")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found; install it with: apt-get install {package}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="apt-", dir=CACHE))
    try:
        proc = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *packages], cwd=tmp,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(packages)} failed ({proc.returncode}); "
                               f"is the host's package list current (apt-get update)? {proc.stderr.strip()}")
        index = subprocess.run(["apt-ftparchive", "packages", "."], cwd=tmp, capture_output=True, check=True).stdout
        (tmp / "Packages").write_bytes(index)
        (tmp / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
        release = subprocess.run(["apt-ftparchive", "release", "."], cwd=tmp, capture_output=True, check=True).stdout
        (tmp / "Release").write_bytes(release)
        tmp.chmod(0o755)
        # Atomic: a concurrent run either finds the whole repository or makes its own.
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "Release").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def sources_line(alias: str) -> str:
    """The apt sources.list line for an apt_mirror reached as `alias`."""
    return f"deb [trusted=yes] http://{alias}/ ./"


def apt_mirror(network: str, aliases, packages=APT_PACKAGES, *, name=None, image=None) -> Server:
    """A flat Debian repository of `packages` over plain HTTP on port 80 of a container on `network` under
    `aliases`; use it with `sources_line(alias)`. `.url` is http://<first alias>/."""
    aliases = list(aliases)
    argv = ["python3", "-m", "http.server", "--directory", f"{SRV}/apt", "80"]
    return _start("apt", network, aliases, {"apt": _apt_repository(tuple(packages))}, argv,
                  ["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1/Release"], name=name, image=image,
                  url=lambda ip: f"http://{aliases[0] if aliases else ip}/")


def claude_installer(network: str = "bridge", *, latest: str = CLAUDE_VERSION, port: int = 8080, name=None,
                     image=None) -> Server:
    """The stand-in for https://claude.ai/install.sh and Claude Code's releases (see the module docstring) on
    `network`, by default Docker's default bridge, where `docker build` RUN steps reach it by IP.
    `.url` is http://<ip>:<port>/install.sh; `.requests()` its request log."""
    files = {name_: PROGRAMS / name_ for name_ in ("claude_installer.py", "install.sh", "claude")}
    argv = ["python3", f"{SRV}/claude_installer.py", "--port", str(port), "--latest", latest]
    requests_argv = ["curl", "-sf", f"http://127.0.0.1:{port}/requests"]
    return _start("installer", network, (), files, argv, requests_argv, name=name, image=image,
                  url=lambda ip: f"http://{ip}:{port}/install.sh", requests_argv=requests_argv)


# ---- Clients ----

def client(network: str, script: str, *, files=(), user: str = "root", image=None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `sh -c script` once in a new container (default: the debian test image) on `network`, as `user`, with
    `files` (host paths) copied into /cbtest/; the container is removed afterwards. Returns the finished process
    (returncode, stdout, stderr)."""
    name = _name("client")
    docker("create", "--pull", "never", "--name", name, "--label", TEST_LABEL, "--network", network,
           "--user", user, image or _debian_image(), "sh", "-c", script)
    try:
        if files:
            with tempfile.TemporaryDirectory(prefix="cbtest-client-") as tmp:
                os.chmod(tmp, 0o755)
                for source in files:
                    shutil.copy2(source, tmp)
                    os.chmod(Path(tmp, Path(source).name), 0o644)
                docker("cp", f"{tmp}/.", f"{name}:/cbtest")
        return docker("start", "--attach", name, check=False, timeout=timeout)
    finally:
        docker("rm", "--force", name, check=False)
