#!/usr/bin/env python3
"""claude-bottle: run a coding agent in a Docker container whose only way out is an egress proxy.

A *bottle* is an agent container on a per-session `--internal` network plus a pipelock sidecar that
sits on that network and on an egress bridge. The agent reaches only the hosts its bottle allows,
git over SSH tunnels through the same proxy, and every container and network the session created is
removed when it ends, fails or is interrupted.

    python3 claude_bottle.py start implementer            # preflight, y/N, run Claude Code
    python3 claude_bottle.py start --dry-run              # print the plan and docker commands
    python3 claude_bottle.py start --yes -- bash -lc 'curl -sI https://api.anthropic.com'
    python3 claude_bottle.py check                        # validate every agent (pre-commit)

One stdlib-only file (Python >= 3.11) that shells out to the `docker` CLI; copy it anywhere and run it.
Exit status: the agent command's own status; 2 usage or config error; 1 runtime failure;
128+N when interrupted by signal N (130 for Ctrl-C); 3 an unexpected bug.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # Until main() notes signals itself, one ends the program as the signal would: nothing exists yet to undo.
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_signum, signal.SIG_DFL)

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
import tomllib
from collections import namedtuple
from pathlib import Path

# A dry run (a pre-commit hook) never runs an engine: subprocess is imported where one is run.
__version__ = "0.1.0"

# ---- Constants ----

# Always allowed in every bottle: what Claude Code needs to log in and talk to the API.
DEFAULT_HOSTS = (
    "api.anthropic.com",
    "api.openai.com",
    "claude.ai",
    "claude.com",
    "console.anthropic.com",
    "platform.claude.com",
)
# claude.ai's MCP connectors (the mail, drive and other accounts a user connected to claude.ai) go through this host:
# whatever holds the account's login reaches them there. Only a bottle with `connectors = true` allows it.
CONNECTORS_HOST = "mcp-proxy.anthropic.com"
# What `claude-bottle login` lets `claude setup-token` reach: the API and Anthropic's login and token hosts.
LOGIN_HOSTS = ("api.anthropic.com", "claude.ai", "claude.com", "console.anthropic.com", "platform.claude.com")

# Named groups of hosts for what agents install from: `@name` in a bottle's allow, `--allow` and `allow`. Each is
# the hosts that registry's own client contacts by default, from the registry's documentation (the comment).
PRESETS = {
    # https://docs.npmjs.com/cli/v10/using-npm/registry (metadata and tarballs from the one registry)
    "npm": ("registry.npmjs.org",),
    # https://docs.pypi.org/api/ (index at pypi.org/simple; files at files.pythonhosted.org)
    "pypi": ("files.pythonhosted.org", "pypi.org"),
    # https://doc.rust-lang.org/cargo/reference/registry-index.html (sparse index index.crates.io; config.json
    # sends downloads to static.crates.io; the web API is crates.io)
    "crates": ("crates.io", "index.crates.io", "static.crates.io"),
    # https://docs.github.com/en/get-started/using-github/troubleshooting-connectivity-problems (git, API,
    # archives, raw files, release assets)
    "github": ("api.github.com", "codeload.github.com", "github.com", "objects.githubusercontent.com",
               "raw.githubusercontent.com", "release-assets.githubusercontent.com"),
    # https://guides.rubygems.org/rubygems-org-compact-index-api/ (compact index; gems from rubygems.org)
    "rubygems": ("index.rubygems.org", "rubygems.org"),
    # https://wiki.debian.org/DebianGeoMirror and https://www.debian.org/security/ (apt's default sources)
    "debian": ("deb.debian.org", "security.debian.org"),
    # https://go.dev/ref/mod#module-proxy and https://go.dev/ref/mod#checksum-database (GOPROXY, GOSUMDB defaults)
    "go": ("proxy.golang.org", "sum.golang.org"),
}

# The official pipelock image. Pinned to a release tag: pin a digest here once it is verified
# against the registry (`docker buildx imagetools inspect`), or override per run.
PIPELOCK_IMAGE = "ghcr.io/luckypipewrench/pipelock:2.3.0"
PIPELOCK_IMAGE_ENV = "CLAUDE_BOTTLE_PIPELOCK_IMAGE"
PROXY_PORT = 8888
PIPELOCK_CONFIG_DIR = "/etc/pipelock"
# The official image runs as root unless told otherwise; nobody:nogroup is enough for it.
SIDECAR_USER = "65534:65534"
HEALTH_TIMEOUT = 30.0

# Tunnel lifetimes written into pipelock's config. pipelock's defaults (300 s absolute, 120 s idle)
# cut a long `git clone`; four hours and thirty quiet minutes cover a large clone or install.
MAX_TUNNEL_SECONDS = 4 * 3600
IDLE_TIMEOUT_SECONDS = 1800
# pipelock's default is 60 requests a minute per domain; a package install makes hundreds.
MAX_REQUESTS_PER_MINUTE = 6000
# pipelock buffers and scans each plain-HTTP response (about 1-4 CPU-seconds per MiB at 2.3.0; see PRD 0007), and
# by default cuts it at 10 MiB and gives up after 30 s. These let a plain-HTTP download finish instead (with
# plain_http = "scan"); HTTPS, and plain HTTP by default, go through CONNECT tunnels at wire speed, unaffected.
FETCH_TIMEOUT_SECONDS = 300
MAX_RESPONSE_MB = 64

# git reads this file in a .git dir to find the directory holding the config and hooks: written by the
# agent into the writable .git, it would send git on the host around the read-only .git/config and hooks.
GIT_COMMONDIR = os.path.join(".git", "commondir")

# Each session's networks get a /28 of their own from this range (CLAUDE_BOTTLE_SUBNETS, comma-separated), outside
# Docker's default address pools, so that sessions never use those up. A /28 holds the gateway, the sidecar, the agent.
SUBNETS_ENV = "CLAUDE_BOTTLE_SUBNETS"
DEFAULT_SUBNETS = "10.213.0.0/16"
SUBNET_BITS = 28
SUBNET_TRIES = 16

# The built-in image's user. The agent itself runs as the user who ran claude-bottle (PRD 0003).
AGENT_UID = 1000
AGENT_HOME = "/home/claude"
AGENT_WORKDIR = "/workspace"
AGENT_SSH_AUTH_SOCK = "/run/claude-bottle/ssh-agent.sock"
# Claude Code's state (CLAUDE_CONFIG_DIR): a fixed path outside any home, so that it does not depend on the image's
# users, and a mount of its own, so that nothing else the agent writes lands in the volume.
AGENT_STATE_DIR = "/var/lib/claude-bottle/state"
AGENT_PIDS_LIMIT = 4096
SIDECAR_PIDS_LIMIT = 512
# Resource limits (PRD 0010), each a key of a bottle (and the agent's three of an agent too). The agent's memory has
# no swap on top (a hog is stopped, not paged to death), its tmpfs mounts (home, /tmp) a size each, charged to that
# memory; the sidecar's limits keep a flood of requests from starving the host. A default above what the engine has
# is lowered to it; a value set in the config above it is refused.
MiB, GiB = 1 << 20, 1 << 30
AGENT_MEMORY = 4 * GiB
AGENT_CPUS = 2.0
AGENT_TMPFS_SIZE = 1 * GiB
SIDECAR_MEMORY = 512 * MiB
SIDECAR_CPUS = 1.0
# Variables passed raw into the agent when an agent names none. Claude Code's own credentials are brokered instead
# (see the credential broker): the agent gets a placeholder and the broker's address, never the value.
DEFAULT_ENV = ()
# Where the broker's sockets appear in the agent, and the first of the loopback ports their forwarders serve.
AGENT_BROKER_DIR = "/run/claude-bottle"
BROKER_FIRST_PORT = 41800
# How the agent's plain-HTTP requests leave (a bottle's `plain_http`). "tunnel": its http_proxy is a forwarder on
# this loopback port in the agent's container, which sends each request through a CONNECT tunnel of the sidecar:
# wire speed, with pipelock's allowlist, SSRF and trusted checks on the tunnel, but no DLP on the request and one
# log line per tunnel (no URL). "scan": http_proxy is pipelock itself, which scans every request (DLP, URL in the
# log) and buffers every response (seconds per MiB). See PRD 0007.
PLAIN_HTTP_TUNNEL, PLAIN_HTTP_SCAN = "tunnel", "scan"
PLAIN_HTTP_MODES = (PLAIN_HTTP_TUNNEL, PLAIN_HTTP_SCAN)
PLAIN_HTTP_PORT = 41799

LABEL = "claude-bottle"
SESSION_LABEL = f"{LABEL}.session"
STATE_LABEL = f"{LABEL}.state"
CONFIG_NAME = "claude-bottle.toml"
DEFAULT_BOTTLE = "default"
DEFAULT_AGENT = "claude"

CLAUDE_CODE_VERSION = "2.1.114"
# The built-in image's build arguments, each overridable from claude-bottle's own environment (a mirror of the
# installer, a base image from a registry of your own). A non-default value is part of the image's tag.
INSTALLER_URL = "https://claude.ai/install.sh"
INSTALLER_URL_ENV = "CLAUDE_BOTTLE_INSTALLER_URL"
BASE_IMAGE = "debian:bookworm-slim"
BASE_IMAGE_ENV = "CLAUDE_BOTTLE_BASE_IMAGE"
# The installer's file name in the build: a failed build names it, which is how a start tells that failure apart.
INSTALLER_FILE = "claude-bottle-install.sh"
AGENT_DOCKERFILE = f"""\
# claude-bottle built-in agent image. Its tag is a hash of this text: an unchanged image is never rebuilt.
ARG BASE_IMAGE={BASE_IMAGE}
FROM ${{BASE_IMAGE}} AS base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \\
 && apt-get install -y --no-install-recommends \\
      bash ca-certificates curl git jq less openssh-client procps socat \\
 && rm -rf /var/lib/apt/lists/*
# apt in the bottle (`claude-bottle install`). Over https its downloads go through a CONNECT tunnel at wire speed;
# over http pipelock scans them at seconds per MiB. The update above ran at build time, outside any bottle, before
# ca-certificates was there to check https, so the sources turn to https only now.
# The agent container drops every capability, so root there cannot switch to apt's `_apt` sandbox user
# (setgroups fails) nor chown the download directory to it: apt stays root, in a directory root owns.
RUN find /etc/apt -name '*.list' -o -name '*.sources' \\
  | xargs -r sed -i 's#http://deb.debian.org#https://deb.debian.org#g' \\
 && echo 'APT::Sandbox::User "root";' > /etc/apt/apt.conf.d/99claude-bottle \\
 && install -d -o root -g root -m 0755 /var/cache/apt/archives/partial
RUN (id -u claude >/dev/null 2>&1 || useradd --create-home --uid {AGENT_UID} --user-group --shell /bin/bash claude) \\
 && install -d -o claude -g claude -m 0755 {AGENT_WORKDIR} \\
 && install -d -o claude -g claude -m 0700 {AGENT_HOME}/.ssh

FROM base AS claude
ARG CLAUDE_CODE_VERSION={CLAUDE_CODE_VERSION}
ARG CLAUDE_INSTALLER_URL={INSTALLER_URL}
# A failing command anywhere in a pipe fails the build: no image without Claude Code in it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER claude
# The native installer scans the working directory; never run it from /.
WORKDIR {AGENT_HOME}
# Downloaded to a file first: `curl | bash` would run half a script, and succeed on none at all.
RUN curl -fsSL --retry 2 --connect-timeout 30 -o /tmp/{INSTALLER_FILE} "${{CLAUDE_INSTALLER_URL}}" \\
 && bash /tmp/{INSTALLER_FILE} "${{CLAUDE_CODE_VERSION}}" \\
 && rm -f /tmp/{INSTALLER_FILE} \\
 && {AGENT_HOME}/.local/bin/claude --version \\
 && printf '{{"hasCompletedOnboarding": true}}\\n' > {AGENT_HOME}/.claude.json
ENV PATH={AGENT_HOME}/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    DISABLE_AUTOUPDATER=1 \\
    DISABLE_UPDATES=1 \\
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
WORKDIR {AGENT_WORKDIR}
CMD ["claude"]
"""


def _sha256(text: str) -> str:
    # hashlib loads OpenSSL, a few milliseconds at every start; the built-in module is enough here.
    try:
        from _sha2 import sha256  # Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(text.encode()).hexdigest()


def agent_image_tag(build_args=()) -> str:
    """The built-in image's tag: a hash of the Dockerfile and of any build argument that is not its default, so
    an image built from another installer or base never poses as the one built from the defaults."""
    text = AGENT_DOCKERFILE + "".join(f"--build-arg {k}={v}\n" for k, v in build_args)
    return "claude-bottle/agent:" + _sha256(text)[:12]


AGENT_IMAGE = agent_image_tag()


# ---- Errors ----

class BottleError(Exception):
    """An expected failure: its message is shown as one line, and `status` is the exit status."""

    status = 1


class ConfigError(BottleError):
    """Bad input (command line, config file, environment): exit 2, nothing created."""

    status = 2


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind so teardown runs, then exit 128+signum."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# ---- Validation: everything that reaches YAML, ssh_config or argv passes through here ----

_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SSH_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SSH_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_DOCKER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,255}")
# Words ssh_config reads as directives; refused as aliases and users so a value can never read as one.
_SSH_KEYWORDS = frozenset(k.lower() for k in (
    "Host", "Match", "Include", "HostName", "User", "Port", "ProxyCommand", "ProxyJump", "LocalCommand",
    "PermitLocalCommand", "RemoteCommand", "IdentityFile", "IdentityAgent", "CertificateFile",
    "ForwardAgent", "LocalForward", "RemoteForward", "DynamicForward", "SendEnv", "SetEnv",
    "KnownHostsCommand", "UserKnownHostsFile", "StrictHostKeyChecking", "ControlPath", "ControlMaster",
    "PKCS11Provider", "SecurityKeyProvider", "Tunnel", "TunnelDevice",
))
# Set by claude-bottle itself; passing the host's value through would undo the proxy settings.
RESERVED_ENV = frozenset((
    "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
    "all_proxy", "NODE_USE_ENV_PROXY", "CLAUDE_CODE_PROXY_RESOLVES_HOSTS", "SSH_AUTH_SOCK", "HOME",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER", "DISABLE_UPDATES", "CLAUDE_BOTTLE_SESSION",
))


def _printable(value: str) -> str:
    """The value as a safe, single-line Python literal for an error message."""
    return repr(value)[:80]


def _visible(text: str) -> str:
    """`text` with unprintable characters (newlines, terminal escapes, bidi overrides) escaped: one honest line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def check_host(value, field: str, *, wildcard: bool) -> str:
    """Return the lower-cased host pattern, or raise ConfigError naming `field`.

    Accepted: a DNS name (`github.com`, `web`), `*.domain` when `wildcard`, or a dotted IPv4 address.
    Everything pipelock would silently never match (`host:port`, a URL, `*`, `a.*.com`) is refused.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a hostname string, got {type(value).__name__}")
    # Non-ASCII first: str.lower() folds some look-alikes (the Kelvin sign) into ASCII letters.
    if not value.isascii():
        raise ConfigError(f"{field}: {_printable(value)} has non-ASCII characters; write the "
                          f"punycode form (xn--...)")
    host = value.lower()
    fix = "write a bare hostname like 'github.com'" + (" or '*.github.com'" if wildcard else "")
    if host.startswith("*."):
        if not wildcard:
            raise ConfigError(f"{field}: {_printable(value)} is a wildcard; name one host here")
        rest = host[2:]
        if _HOST_RE.fullmatch(rest) and "." not in rest:
            raise ConfigError(f"{field}: {_printable(value)} covers a whole top-level domain; "
                              f"name a domain like '*.example.com'")
        if _HOST_RE.fullmatch(rest) and all(p.isdigit() for p in rest.split(".")):
            raise ConfigError(f"{field}: {_printable(value)} puts a wildcard on an IP address; {fix}")
    else:
        rest = host
    if len(value) > 253 or not _HOST_RE.fullmatch(rest):
        if "://" in value or "/" in value:
            hint = "drop the scheme and path"
        elif ":" in value:
            hint = "drop the port (pipelock allows a host on every port)"
        elif "*" in value:
            hint = "a wildcard may only be a leading '*.'"
        else:
            hint = fix
        raise ConfigError(f"{field}: {_printable(value)} is not a hostname; {hint}")
    labels = rest.split(".")
    if all(p.isdigit() for p in labels):
        if len(labels) != 4 or any(int(p) > 255 or (len(p) > 1 and p[0] == "0") for p in labels):
            raise ConfigError(f"{field}: {_printable(value)} is neither a hostname nor an IPv4 address")
    elif labels[-1].isdigit():
        raise ConfigError(f"{field}: {_printable(value)} is not a hostname (its last label is a number)")
    return host


def host_matches(pattern: str, host: str) -> bool:
    """pipelock's rule: `host` matches itself; `*.domain` matches the domain and every subdomain."""
    if pattern.startswith("*."):
        return host == pattern[2:] or host.endswith(pattern[1:])
    return host == pattern


def check_slug(value, field: str) -> str:
    if not isinstance(value, str) or not value.isascii() or not _SLUG_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(value)} is not a safe name; use letters, digits, '-' "
                          f"and '_' (at most 64, starting with a letter or digit)")
    return value


def check_env_name(value, field: str) -> str:
    if not isinstance(value, str) or not _ENV_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(value)} is not an environment variable name; "
                          f"use letters, digits and '_'")
    if value in RESERVED_ENV:
        raise ConfigError(f"{field}: {value} is set by claude-bottle itself; remove it from env")
    return value


def check_image(value, field: str) -> str:
    if not isinstance(value, str) or not _IMAGE_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(value)} is not an image reference; "
                          f"write one like 'registry.example/team/agent:1.2'")
    return value


_URL_RE = re.compile(r"https?://[A-Za-z0-9._~:/?#@!$&()*+,;=%-]{1,2000}")


def check_url(value, field: str) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(str(value))!r} is not an http(s) URL; write e.g. "
                          f"https://mirror.example.com/install.sh")
    return value


def check_ssh_alias(value, field: str) -> str:
    if not isinstance(value, str) or not _SSH_ALIAS_RE.fullmatch(value) or value.lower() in _SSH_KEYWORDS:
        raise ConfigError(f"{field}: {_printable(value)} is not a usable SSH alias; use letters, digits, "
                          f"'.', '-' and '_' (no patterns, spaces or ssh_config keywords)")
    return value


def check_ssh_user(value, field: str) -> str:
    if not isinstance(value, str) or not _SSH_USER_RE.fullmatch(value) or value.lower() in _SSH_KEYWORDS:
        raise ConfigError(f"{field}: {_printable(value)} is not a user name; write one like 'git'")
    return value


# A Debian package name (policy 5.6.1), optionally `=VERSION` (an upstream version starts with a digit; an epoch
# too). Nothing apt could read as an option, a file, a regex or a release.
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[0-9][A-Za-z0-9.+~:-]*)?")


def check_package(value, field: str = "PACKAGE") -> str:
    if not isinstance(value, str) or not _PACKAGE_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(str(value))} is not a Debian package name (lowercase letters, "
                          f"digits, + - .; optionally =VERSION): e.g. `jq` or `jq=1.6-2.1`")
    return value


def check_int(value, field: str, low: int, high: int) -> int:
    # TOML booleans are Python bools, which are ints; refuse them explicitly.
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{field}: {_printable(value)} is not a whole number from {low} to {high}")
    return value


_SIZE_RE = re.compile(r"([0-9]+)([kmg]?)", re.IGNORECASE)


def check_size(value, field: str, low: int) -> int:
    """A size like "4g", "512m", "64k" (or a whole number of bytes), in bytes, at least `low`."""
    m = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    if type(value) is int:
        size = value
    elif m:
        size = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    else:
        raise ConfigError(f"{field}: {_printable(value)} is not a size; write a number with k, m or g, like \"4g\"")
    if size < low:
        raise ConfigError(f"{field}: {_printable(value)} is too small; give it at least {human_size(low)}, "
                          f"like \"{low >> 20}m\"")
    if size > 1 << 50:
        raise ConfigError(f"{field}: {_printable(value)} is more than any engine has; write e.g. \"4g\"")
    return size


def check_cpus(value, field: str) -> float:
    if type(value) not in (int, float) or not 0.01 <= value <= 1024:
        raise ConfigError(f"{field}: {_printable(value)} is not a number of CPUs; write e.g. 2 or 0.5")
    return float(value)


def human_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            n = size / (1 << shift)
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
    return f"{size} bytes"


def human_cpus(cpus: float) -> str:
    return f"{cpus:g} CPU" + ("" if cpus == 1 else "s")


def _ipv4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def _dotted(n: int) -> str:
    return ".".join(str(b) for b in n.to_bytes(4, "big"))


def check_subnet_pool(value: str, field: str) -> tuple:
    """`10.213.0.0/16,10.214.0.0/20`: IPv4 ranges in CIDR form, each holding at least one /28."""
    pool = []
    for item in value.split(","):
        addr, _, bits = item.strip().partition("/")
        base = _ipv4(addr)
        if base is None or not bits.isdigit() or not 8 <= int(bits) <= SUBNET_BITS or \
                base & ((1 << (32 - int(bits))) - 1):
            raise ConfigError(f"{field}: {_printable(item.strip())} is not an IPv4 range like 10.213.0.0/16 "
                              f"(a network address, /8 to /{SUBNET_BITS}); set it to free private ranges, "
                              f"comma-separated")
        pool.append(f"{addr}/{int(bits)}")
    return tuple(pool)


def subnet_candidate(pool, seed: str, attempt: int) -> str:
    """The `attempt`-th /28 to try for a network: spread over the whole pool by a hash of `seed`."""
    ranges = [(_ipv4(c.split("/")[0]), 1 << (SUBNET_BITS - int(c.split("/")[1]))) for c in pool]
    index = int(_sha256(f"{seed}/{attempt}")[:12], 16) % sum(n for _, n in ranges)
    for base, count in ranges:
        if index < count:
            return f"{_dotted(base + (index << (32 - SUBNET_BITS)))}/{SUBNET_BITS}"
        index -= count
    raise AssertionError("unreachable")


def subnet_address(cidr: str, n: int) -> str:
    """The n-th address of a subnet: 1 is the gateway Docker picks, 2 the sidecar's."""
    return _dotted(_ipv4(cidr.split("/")[0]) + n)


def _overlaps(a: str, b: str) -> bool:
    (x, xb), (y, yb) = ((_ipv4(c.split("/")[0]), int(c.split("/")[1])) for c in (a, b))
    bits = min(xb, yb)
    return x >> (32 - bits) == y >> (32 - bits) if bits else True


# ---- Configuration: claude-bottle.toml ----

# Plain immutable records. Named tuples, not dataclasses: they cost nothing to import or to define,
# which keeps `start --dry-run` (a pre-commit hook) fast.

class SshHost(namedtuple("SshHost", "alias hostname user port", defaults=(None, 22))):
    """One `[[bottles.NAME.ssh]]` entry: alias (Host), hostname, user or None, port."""

    __slots__ = ()


class Bottle(namedtuple("Bottle", "name allow trusted ssh egress_network max_tunnel_seconds idle_timeout_seconds "
                                  "credentials limits connectors plain_http",
                        defaults=((), (), (), None, MAX_TUNNEL_SECONDS, IDLE_TIMEOUT_SECONDS, (), (), False,
                                  PLAIN_HTTP_TUNNEL))):
    """A `[bottles.NAME]` table: extra hosts, trusted hosts, SshHost entries, egress network, lifetimes, the
    Credential entries the broker holds for it, the resource limits it sets ((key, value) pairs), whether
    claude.ai's connectors are reachable, and how plain HTTP leaves (PLAIN_HTTP_MODES)."""

    __slots__ = ()


class AgentSpec(namedtuple("AgentSpec", "name bottle image env command workspace source clone limits",
                           defaults=(DEFAULT_BOTTLE, None, DEFAULT_ENV, None, None, "built-in", False, ()))):
    """An `[agents.NAME]` table (or an agent file, or the built-in agent) and where it came from."""

    __slots__ = ()


class Config(namedtuple("Config", "path bottles agents")):
    """A validated config file: its path (None: built-in defaults), bottles and agents by name."""

    __slots__ = ()

    def __new__(cls, path: str | None = None, bottles: dict | None = None, agents: dict | None = None):
        bottles = {DEFAULT_BOTTLE: Bottle(DEFAULT_BOTTLE)} if bottles is None else bottles
        return super().__new__(cls, path, bottles, {} if agents is None else agents)


# Resource limits: the agent's (in an agent's table or a bottle's; the agent's wins) and the sidecar's (a bottle's).
AGENT_LIMIT_KEYS = ("memory", "cpus", "tmpfs_size")
SIDECAR_LIMIT_KEYS = ("sidecar_memory", "sidecar_cpus", "sidecar_pids")
BOTTLE_KEYS = ("allow", "trusted", "ssh", "egress_network", "max_tunnel_seconds", "idle_timeout_seconds",
               "credentials", "connectors", "plain_http", *AGENT_LIMIT_KEYS, *SIDECAR_LIMIT_KEYS)
SSH_KEYS = ("Host", "Hostname", "User", "Port")
AGENT_KEYS = ("bottle", "image", "env", "command", "workspace", "clone", *AGENT_LIMIT_KEYS)


def _parse_limits(table: dict, where: str, keys) -> tuple:
    """The limits a table sets, as (key, value) pairs: sizes in bytes, CPUs as a float, pids a whole number."""
    found = []
    for key in keys:
        if key not in table:
            continue
        value, field = table[key], f"{where} {key}"
        if key in ("memory", "sidecar_memory"):
            found.append((key, check_size(value, field, 16 * MiB)))
        elif key == "tmpfs_size":
            found.append((key, check_size(value, field, 1 * MiB)))
        elif key.endswith("cpus"):
            found.append((key, check_cpus(value, field)))
        else:
            found.append((key, check_int(value, field, 16, 1 << 22)))
    return tuple(found)


def _check_keys(where: str, table: dict, allowed) -> None:
    for key in table:
        if key not in allowed:
            import difflib
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key {_printable(key)}; {hint}")


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}; "
                          f"write it like [\"a\", \"b\"]")
    return value


def check_allow_entry(value, field: str) -> str:
    """A host pattern (check_host), or `@preset` naming one of PRESETS (an error lists the known ones)."""
    if isinstance(value, str) and value.startswith("@"):
        expand_allow([value], PRESETS, field)
        return value
    return check_host(value, field, wildcard=True)


def _parse_bottle(name: str, table, origin: str) -> Bottle:
    where = f"{origin}: [bottles.{name}]"
    check_slug(name, f"{origin}: bottle name")
    table = _table(table, where)
    _check_keys(where, table, BOTTLE_KEYS)
    # Presets stay as written (the report writes allow lines back); resolve_plan expands them.
    allow = tuple(check_allow_entry(h, f"{where} allow") for h in _list(table.get("allow", []), f"{where} allow"))
    trusted = tuple(check_host(h, f"{where} trusted", wildcard=True)
                    for h in _list(table.get("trusted", []), f"{where} trusted"))
    ssh, aliases = [], set()
    for i, entry in enumerate(_list(table.get("ssh", []), f"{where} ssh"), 1):
        at = f"{origin}: [[bottles.{name}.ssh]] #{i}"
        entry = _table(entry, at)
        _check_keys(at, entry, SSH_KEYS)
        for key in ("Host", "Hostname"):
            if key not in entry:
                raise ConfigError(f"{at}: missing {key}; every ssh entry needs Host and Hostname")
        alias = check_ssh_alias(entry["Host"], f"{at} Host")
        if alias in aliases:
            raise ConfigError(f"{at} Host: alias {alias!r} is defined twice; give each entry its own Host")
        aliases.add(alias)
        ssh.append(SshHost(
            alias=alias,
            hostname=check_host(entry["Hostname"], f"{at} Hostname", wildcard=False),
            user=check_ssh_user(entry["User"], f"{at} User") if "User" in entry else None,
            port=check_int(entry.get("Port", 22), f"{at} Port", 1, 65535),
        ))
    egress = table.get("egress_network")
    if egress is not None and (not isinstance(egress, str) or not _DOCKER_NAME_RE.fullmatch(egress)):
        raise ConfigError(f"{where} egress_network: {_printable(egress)} is not a docker network name")
    if egress in ("host", "none"):
        raise ConfigError(f"{where} egress_network: {egress!r} is one of docker's special networks; name a bridge "
                          f"network, or remove egress_network to get one per session")
    connectors = table.get("connectors", False)
    if not isinstance(connectors, bool):
        raise ConfigError(f"{where} connectors: {_printable(connectors)} is not true or false (true lets the agent "
                          f"reach the accounts you connected to claude.ai, through {CONNECTORS_HOST})")
    plain_http = table.get("plain_http", PLAIN_HTTP_TUNNEL)
    if plain_http not in PLAIN_HTTP_MODES:
        raise ConfigError(f"{where} plain_http: {_printable(plain_http)} is not a mode; write plain_http = "
                          f"\"{PLAIN_HTTP_TUNNEL}\" (the default: wire speed, checked per tunnel) or plain_http = "
                          f"\"{PLAIN_HTTP_SCAN}\" (pipelock's DLP on every request, slow downloads)")
    return Bottle(
        name=name, allow=allow, trusted=trusted, ssh=tuple(ssh), egress_network=egress,
        max_tunnel_seconds=check_int(table.get("max_tunnel_seconds", MAX_TUNNEL_SECONDS),
                                     f"{where} max_tunnel_seconds", 1, 7 * 86400),
        idle_timeout_seconds=check_int(table.get("idle_timeout_seconds", IDLE_TIMEOUT_SECONDS),
                                       f"{where} idle_timeout_seconds", 1, 7 * 86400),
        credentials=parse_credentials(table.get("credentials", []), f"{origin}: [[bottles.{name}.credentials]]",
                                      Path(origin).parent),
        limits=_parse_limits(table, where, AGENT_LIMIT_KEYS + SIDECAR_LIMIT_KEYS),
        connectors=connectors,
        plain_http=plain_http,
    )


def _parse_agent(name: str, table, origin: str, bottles: dict) -> AgentSpec:
    where = f"{origin}: [agents.{name}]"
    check_slug(name, f"{origin}: agent name")
    table = _table(table, where)
    _check_keys(where, table, AGENT_KEYS)
    bottle = check_slug(table.get("bottle", DEFAULT_BOTTLE), f"{where} bottle")
    if bottle not in bottles:
        raise ConfigError(f"{where} bottle: no bottle named {bottle!r}; define [bottles.{bottle}] "
                          f"or use one of: {', '.join(sorted(bottles))}")
    command = table.get("command")
    if command is not None:
        command = _list(command, f"{where} command")
        if not command or not all(isinstance(c, str) and "\0" not in c for c in command):
            raise ConfigError(f"{where} command: expected a non-empty list of strings like [\"claude\", \"-p\"]")
        command = tuple(command)
    workspace = table.get("workspace")
    if workspace is not None and (not isinstance(workspace, str) or not workspace or "\n" in workspace
                                  or "\0" in workspace):
        raise ConfigError(f"{where} workspace: expected a directory path")
    clone = table.get("clone", False)
    if not isinstance(clone, bool):
        raise ConfigError(f"{where} clone: expected true (the agent works in a copy of the repository) or false")
    return AgentSpec(
        name=name,
        bottle=bottle,
        image=check_image(table["image"], f"{where} image") if "image" in table else None,
        env=tuple(dict.fromkeys(check_env_name(e, f"{where} env")
                                for e in _list(table.get("env", list(DEFAULT_ENV)), f"{where} env"))),
        command=command,
        workspace=workspace,
        source=f"{origin} [agents.{name}]",
        clone=clone,
        limits=_parse_limits(table, where, AGENT_LIMIT_KEYS),
    )


def parse_config(data: dict, origin: str = CONFIG_NAME) -> Config:
    """Validate a parsed TOML document into a Config; every mistake names `origin` and the key."""
    _check_keys(origin, data, ("bottles", "agents"))
    bottles = {DEFAULT_BOTTLE: Bottle(DEFAULT_BOTTLE)}
    for name, table in _table(data.get("bottles", {}), f"{origin}: [bottles]").items():
        bottles[name] = _parse_bottle(name, table, origin)
    agents = {}
    for name, table in _table(data.get("agents", {}), f"{origin}: [agents]").items():
        agents[name] = _parse_agent(name, table, origin, bottles)
    return Config(path=origin, bottles=bottles, agents=agents)


def load_config(path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}; fix the syntax") from None
    return parse_config(data, str(path))


def find_project(cwd: Path) -> Path:
    """The repository root above `cwd` (the directory holding `.git`), else `cwd` itself."""
    for d in (cwd, *cwd.parents):
        if (d / ".git").exists():
            return d
    return cwd


def _owned(path: Path) -> Path:
    """A config decides what the agent may reach: refuse one that another user could have planted."""
    uid = path.stat().st_uid
    if hasattr(os, "geteuid") and uid not in (os.geteuid(), 0):
        raise ConfigError(f"{path}: owned by uid {uid}, not by you; claude-bottle will not use a config another "
                          f"user controls (chown it, or pass --config to use it anyway)")
    return path


def find_config(cwd: Path, explicit: str | None, environ) -> Path | None:
    """`--config`, else claude-bottle.toml from `cwd` up to the repository root, else the user's."""
    if explicit is not None:
        p = Path(explicit)
        if not explicit or not p.is_file():
            raise ConfigError(f"--config: no such file: {explicit!r}")
        return p
    # Outside a repository only cwd itself: a parent such as /tmp may hold anyone's file.
    project = find_project(cwd)
    for d in (cwd, *cwd.parents):
        if (d / CONFIG_NAME).is_file():
            return _owned(d / CONFIG_NAME)
        if d == project:
            break
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "~"), ".config")
    user = Path(base).expanduser() / "claude-bottle" / "config.toml"
    return _owned(user) if user.is_file() else None


# ---- Editing claude-bottle.toml and proposing allowlists ----

# A line scanner that knows just enough TOML to find a table's `allow = [...]` exactly: table headers, keys,
# the four kinds of string, comments, arrays and inline tables. It is no parser: every edit is checked by
# parsing the old and new text with tomllib, and anything the scanner or that check doubts is refused.

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# An unquoted value: a number, boolean, date or time. A date and a time may be joined by one space.
_TOML_SCALAR_RE = re.compile(r"[^\s#,\[\]{}]+")
_TOML_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PRESET_RE = re.compile(r"@[a-z0-9-]+")


class _TomlLayout(Exception):
    """The scanner met text it does not understand; the edit is refused."""


class _TomlStatement(namedtuple("_TomlStatement", "kind header key line value")):
    """A table header (kind "table" or "array_table"; `header` is its path) or a key line (kind "key";
    `key` is the dotted key under `header`). `line` is the offset where its line starts; a key's `value` is
    (start, end, items, trailing_comma, comment): its span, an array's item spans (None for other values),
    whether the last item is followed by a comma, and whether a comment sits inside it."""

    __slots__ = ()


def _toml_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _toml_eol(text: str, i: int) -> int:
    """The offset of the newline ending the line that holds offset `i` (len(text) on the last line)."""
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _toml_blank(text: str, i: int) -> tuple:
    """Skip blanks, newlines and comments between array items: the next offset, and whether a comment was seen."""
    comment = False
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
        elif text[i] == "#":
            comment, i = True, _toml_eol(text, i)
        else:
            break
    return i, comment


def _toml_string_end(text: str, i: int) -> int:
    """The offset just past the string that starts at `i`: basic, literal, or either of them multi-line."""
    q = text[i]
    if text.startswith(q * 3, i):
        j = i + 3
        while j < len(text):
            if q == '"' and text[j] == "\\":
                j += 2
            elif text.startswith(q * 3, j):
                end = j + 3
                # Up to two more quotes belong to the content: """a""""" is 'a""'.
                while end < len(text) and text[end] == q and end - j < 5:
                    end += 1
                return end
            else:
                j += 1
        raise _TomlLayout("an unterminated multi-line string")
    j = i + 1
    while j < len(text) and text[j] not in (q, "\n"):
        j += 2 if q == '"' and text[j] == "\\" else 1
    if j >= len(text) or text[j] != q:
        raise _TomlLayout("an unterminated string")
    return j + 1


def _toml_key(text: str, i: int) -> tuple:
    """A dotted key at `i` (bare or quoted parts): its parts as a tuple, and the offset after it."""
    parts = []
    while True:
        i = _toml_ws(text, i)
        if text[i:i + 1] in ('"', "'") and not text.startswith(text[i] * 3, i):
            end = _toml_string_end(text, i)
            # A quoted key means what tomllib says it means (escapes included).
            parts.append(tomllib.loads("k = " + text[i:end])["k"])
            i = end
        else:
            m = _BARE_KEY_RE.match(text, i)
            if not m:
                raise _TomlLayout(f"no key at offset {i}")
            parts.append(m.group())
            i = m.end()
        i = _toml_ws(text, i)
        if text[i:i + 1] != ".":
            return tuple(parts), i
        i += 1


def _toml_value(text: str, i: int) -> tuple:
    """The value at `i`: (end, items, trailing_comma, comment) as in _TomlStatement.value, without the start."""
    c = text[i:i + 1]
    if c in ('"', "'"):
        return _toml_string_end(text, i), None, False, False
    if c == "[":
        items, comma, comment = [], False, False
        i += 1
        while True:
            i, seen = _toml_blank(text, i)
            comment |= seen
            if text[i:i + 1] == "]":
                return i + 1, items, comma, comment
            end, _, _, seen = _toml_value(text, i)
            items.append((i, end))
            i, seen2 = _toml_blank(text, end)
            comment |= seen or seen2
            comma = text[i:i + 1] == ","
            if comma:
                i += 1
            elif text[i:i + 1] != "]":
                raise _TomlLayout(f"an array item not followed by ',' or ']' at offset {i}")
    if c == "{":
        comment = False
        i = _toml_ws(text, i + 1)
        while text[i:i + 1] != "}":
            _, i = _toml_key(text, i)
            if text[i:i + 1] != "=":
                raise _TomlLayout(f"no '=' in an inline table at offset {i}")
            i, _, _, seen = _toml_value(text, _toml_ws(text, i + 1))
            comment |= seen
            i = _toml_ws(text, i)
            if text[i:i + 1] == ",":
                i = _toml_ws(text, i + 1)
            elif text[i:i + 1] != "}":
                raise _TomlLayout(f"an inline table entry not followed by ',' or '}}' at offset {i}")
        return i + 1, None, False, comment
    m = _TOML_SCALAR_RE.match(text, i)
    if not m:
        raise _TomlLayout(f"no value at offset {i}")
    end = m.end()
    if _TOML_DATE_RE.fullmatch(m.group()) and re.match(r" \d\d:", text[end:end + 4]):
        end = _TOML_SCALAR_RE.match(text, end + 1).end()
    return end, None, False, False


def _toml_statements(text: str) -> list:
    """Every table header and key line of a valid TOML document, in order, as _TomlStatement."""
    statements, header, i = [], (), 0
    while i < len(text):
        line = i
        i = _toml_ws(text, i)
        if text.startswith("\r\n", i) or text[i:i + 1] == "\n":
            i = _toml_eol(text, i) + 1
            continue
        if text[i:i + 1] == "#":
            i = _toml_eol(text, i) + 1
            continue
        if i >= len(text):
            break
        if text[i] == "[":
            array = text.startswith("[[", i)
            header, i = _toml_key(text, i + 1 + array)
            close = "]]" if array else "]"
            if not text.startswith(close, i):
                raise _TomlLayout(f"a table header not closed by {close!r} at offset {i}")
            i += len(close)
            statements.append(_TomlStatement("array_table" if array else "table", header, (), line, None))
        else:
            key, i = _toml_key(text, i)
            if text[i:i + 1] != "=":
                raise _TomlLayout(f"no '=' after a key at offset {i}")
            start = _toml_ws(text, i + 1)
            i, items, comma, comment = _toml_value(text, start)
            statements.append(_TomlStatement("key", header, key, line, (start, i, items, comma, comment)))
        i = _toml_ws(text, i)
        if text[i:i + 1] == "#":
            i = _toml_eol(text, i)
        if text.startswith("\r\n", i):
            i += 2
        elif text[i:i + 1] == "\n":
            i += 1
        elif i < len(text):
            raise _TomlLayout(f"more text after a value at offset {i}")
    return statements


def _allow_array(text: str, value: tuple, hosts: list, indent: str, nl: str) -> str:
    """`hosts` as a TOML array laid out like the array `value` it replaces.

    A one-line array (or no hosts) becomes one line. A multi-line one gets one item per line: indented like its
    first item (on the line after '[', or aligned after '[' when the first item follows it), with a trailing
    comma when the last item had one, and ']' on a line of its own (indented as it was) when it was on one.
    """
    start, end, items, comma, _ = value
    if not hosts or "\n" not in text[start:end]:
        return _toml_list(hosts)
    close_bol = text.rfind("\n", 0, end - 1) + 1
    close_indent = re.match(r"[ \t]*", text[close_bol:end - 1]).group()
    if not items:
        lead, item_indent, comma, close = nl + indent + "    ", indent + "    ", True, nl + close_indent + "]"
    else:
        first_bol = text.rfind("\n", 0, items[0][0]) + 1
        if first_bol > start:
            item_indent = text[first_bol:items[0][0]]
            lead = nl + item_indent
        else:
            item_indent = re.sub(r"[^\t]", " ", text[first_bol:items[0][0]])
            lead = ""
        close = nl + close_indent + "]" if close_bol > items[-1][1] else "]"
    body = ("," + nl + item_indent).join(json.dumps(h) for h in hosts)
    return "[" + lead + body + ("," if comma else "") + close


def edit_bottle_allow(text: str, bottle: str, hosts: list[str], origin: str) -> str:
    """`text` (a claude-bottle.toml) with `[bottles.<bottle>]`'s allow set to `hosts`; every other byte kept.

    - `allow = [...]` present: only the array is rewritten (the key's spelling, spacing and any comment after
      the array stay); see _allow_array for the layout. An array with a comment inside is refused, since the
      edit would lose the comment.
    - the table present without allow: `allow = [...]` is inserted on the line right after the header (indented
      like the table's first key), so comments below the header stay with the key they describe.
    - no such table: `[bottles.<bottle>]` and allow are appended at the end, after a blank line. This is also
      where it goes when the bottle exists only through its sub-tables (`[[bottles.<bottle>.ssh]]`).
    New lines use the file's line ending (that of its first line). `hosts` are already validated strings.

    Refused with a ConfigError naming `origin` and giving the line to write by hand, whenever the edit cannot be
    made safely: the text is not valid TOML; the bottle (or `bottles`) is an inline table or written with dotted
    keys; allow is written twice, as a table or with dotted keys, is not an array, or holds a comment; the
    scanner doubts the layout; or tomllib, reading the result, finds anything changed besides this allow.
    """
    new_value = _toml_list(hosts)
    name = bottle if _BARE_KEY_RE.fullmatch(bottle) else json.dumps(bottle)

    def refused(why: str) -> ConfigError:
        return ConfigError(f"{origin}: cannot edit allow in [bottles.{name}]: {why}; "
                           f"edit it by hand: allow = {new_value}")

    # Floats as their text: an exact comparison, and `nan` equals itself.
    try:
        before = tomllib.loads(text, parse_float=str)
    except tomllib.TOMLDecodeError as e:
        raise refused(f"it is not valid TOML ({e})") from None
    bottles = before.get("bottles", {})
    if not isinstance(bottles, dict) or not isinstance(bottles.get(bottle, {}), dict):
        raise refused(f"bottles or bottles.{name} is not a table")
    try:
        statements = _toml_statements(text)
    except _TomlLayout as e:
        raise refused(f"its layout is not one this editor can follow ({e})") from None
    target = ("bottles", bottle)
    table, first_key, allow = None, None, []
    for s in statements:
        path = s.header + s.key
        if s.kind != "key":
            # Not [[bottles.NAME]]: tomllib found a table there.
            if path == target:
                table = s
            elif path[:3] == (*target, "allow"):
                raise refused("allow is written as a table")
        elif path == target[:len(path)]:
            raise refused(f"{'.'.join(path)} is written as an inline table")
        elif path[:2] == target and s.header[:2] != target:
            raise refused(f"it is written with dotted keys ({'.'.join(path)})")
        elif s.header == target:
            first_key = first_key or s
            if s.key[0] == "allow":
                if len(s.key) > 1:
                    raise refused("allow is written with dotted keys")
                allow.append(s)
    first = text.find("\n")
    nl = "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"
    if len(allow) > 1:
        raise refused("allow is written twice")
    if allow:
        start, end, items, _, comment = allow[0].value
        if items is None:
            raise refused("allow is not an array")
        if comment:
            raise refused("the allow array has comments inside it, which an edit would lose")
        indent = re.match(r"[ \t]*", text[allow[0].line:]).group()
        new = text[:start] + _allow_array(text, allow[0].value, hosts, indent, nl) + text[end:]
    elif table is not None:
        indent = re.match(r"[ \t]*", text[first_key.line:]).group() if first_key else ""
        line = f"{indent}allow = {new_value}"
        eol = _toml_eol(text, table.line)
        new = text + nl + line if eol == len(text) else text[:eol + 1] + line + nl + text[eol + 1:]
    else:
        block = f"[bottles.{name}]{nl}allow = {new_value}{nl}"
        if not text:
            new = block
        elif not text.endswith("\n"):
            new = text + nl + nl + block
        elif not text[:-1].rsplit("\n", 1)[-1].strip():
            new = text + block
        else:
            new = text + nl + block
    expected = {**before, "bottles": {**bottles, bottle: {**bottles.get(bottle, {}), "allow": list(hosts)}}}
    try:
        after = tomllib.loads(new, parse_float=str)
    except tomllib.TOMLDecodeError as e:
        raise refused(f"the edited text would not be valid TOML ({e})") from None
    if after != expected:
        raise refused("the edit would change more than this allow list")
    return new


def expand_allow(entries, presets: dict[str, tuple[str, ...]], field: str) -> tuple:
    """Allow entries with each `@name` replaced by the hosts of preset `name`: order kept, duplicates dropped.

    Host entries pass through as they are (check them with check_host afterwards); an unknown or malformed
    preset is a ConfigError naming `field` and listing the known presets.
    """
    hosts = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"{field}: expected a hostname or @preset string, got {type(entry).__name__}")
        if not entry.startswith("@"):
            hosts[entry] = None
            continue
        if not _PRESET_RE.fullmatch(entry) or entry[1:] not in presets:
            known = ", ".join("@" + name for name in sorted(presets)) or "none"
            raise ConfigError(f"{field}: unknown preset {_printable(entry)}; known presets: {known}")
        hosts.update(dict.fromkeys(presets[entry[1:]]))
    return tuple(hosts)


def propose_allow(used_hosts: list[str], defaults: tuple[str, ...],
                  presets: dict[str, tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """The allow entries that cover what a session reached: (["@preset", ...], ["host", ...]), both sorted.

    The rule: a used host that a default covers needs nothing. For the rest, presets are chosen one at a time:
    the preset that covers the most hosts not yet covered (ties: the one with fewer entries, then the first by
    name), until no preset covers a host that is still uncovered; so every proposed preset covers at least one
    used host that no other proposed preset covers first, and no preset is proposed for nothing. The hosts left
    are proposed as they are, never widened to a wildcard. Entries that are not valid hostnames (check_host)
    are skipped: no allow entry could match them. `[*presets, *hosts]` is the allow list to write.
    """
    needed = set()
    for host in used_hosts:
        try:
            host = check_host(host, "host", wildcard=False)
        except ConfigError:
            continue
        if not any(host_matches(p, host) for p in defaults):
            needed.add(host)
    chosen = []
    while True:
        candidates = []
        for name, patterns in presets.items():
            covers = {h for h in needed if any(host_matches(p, h) for p in patterns)}
            if covers:
                candidates.append((-len(covers), len(patterns), name, covers))
        if not candidates:
            break
        _, _, name, covers = min(candidates, key=lambda c: c[:3])
        chosen.append("@" + name)
        needed -= covers
    return sorted(chosen), sorted(needed)


def reload_event_for(lines, config_hash: str) -> dict | None:
    """The first of pipelock's stdout `lines` (only those after the config write) that settles its reload.

    That is a `config_reload` event with status "success" and `config_hash` (the sha256 of the bytes written)
    equal to ours; a success for another hash (an earlier write) is skipped. Or an `error` event whose method
    is CONFIG_RELOAD: it carries no hash, so the first one after the write counts as the refusal of ours.
    Lines that are not JSON objects are skipped; None when no line settles it.
    """
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if (event.get("event") == "config_reload" and event.get("status") == "success"
                and str(event.get("config_hash", "")).lower() == config_hash.lower()):
            return event
        if event.get("event") == "error" and event.get("method") == "CONFIG_RELOAD":
            return event
    return None


class ReloadWait:
    """The wait for pipelock to reload a config we wrote: "waiting" until fed the event that settles it, then
    "applied" or "refused" for good (`event` is that event; `reason` pipelock's error text when refused).

    Feed pipelock's stdout as it arrives, in chunks of any size: a line split across chunks is joined first.
    """

    def __init__(self, config_hash: str):
        self.config_hash, self.state, self.event, self.reason, self._partial = config_hash, "waiting", None, "", ""

    def feed(self, chunk: str) -> str:
        if self.state != "waiting":
            return self.state
        *lines, self._partial = (self._partial + chunk).split("\n")
        # The last line may be whole but not yet terminated; if so it is read again once its newline comes.
        event = reload_event_for([*lines, self._partial], self.config_hash)
        if event is not None:
            self.event = event
            self.state = "applied" if event.get("event") == "config_reload" else "refused"
            self.reason = "" if self.state == "applied" else str(event.get("error", ""))
        return self.state


# ---- The agent's identity: the host user who ran claude-bottle, as a user of the image ----

# What the probe looks for: a shell, what SSH hosts need, and the clients the self-test can use.
PROBE_TOOLS = ("ssh", "socat", "git", "curl", "wget", "python3", "nc", "node", "perl", "tar")
CLONE_TOOLS = ("git", "tar")
SSH_TOOLS = ("ssh", "socat", "git")
SELF_TEST_CLIENTS = ("curl", "wget", "python3", "nc")
FALLBACK_USER = "claude"
PROBE_VERSION = 2
# Run as root in the image, with no network and no capability: what the image holds, never what it does.
PROBE_SCRIPT = f"""\\
echo '# passwd'; cat /etc/passwd 2>/dev/null
echo '# group'; cat /etc/group 2>/dev/null
echo '# tools'
for t in {' '.join(PROBE_TOOLS)}; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done
echo '# dirs'
{{ echo /tmp; echo {AGENT_HOME}
  while IFS=: read -r n p u g c h s || [ -n "$n" ]; do echo "$h"; done < /etc/passwd; }} 2>/dev/null |
while read -r d; do printf '%s\\t%s\\n' "$d" "$(ls -ldn -- "$d" 2>/dev/null)"; done
"""
# The built-in image is ours: what a probe of it finds is known from its Dockerfile.
BUILTIN_PROBE = {
    "passwd": ["root:x:0:0:root:/root:/bin/bash", f"claude:x:{AGENT_UID}:{AGENT_UID}::{AGENT_HOME}:/bin/bash"],
    "group": ["root:x:0:", f"claude:x:{AGENT_UID}:"],
    "tools": ["ssh", "socat", "git", "curl", "tar"],
    "dirs": {"/tmp": ["drwxrwxrwt", 0], "/root": ["drwx------", 0], AGENT_HOME: ["drwxr-xr-x", AGENT_UID]},
}


class Identity(namedtuple("Identity", "uid gid user home why passwd group home_tmpfs tmp_tmpfs tools")):
    """Who the agent runs as: the host user's uid and gid, a name and a writable home in the image.

    passwd, group: the files to mount over the image's, or "" when the image's own serve as they are.
    home_tmpfs: the home is a private tmpfs, owned by the uid; tmp_tmpfs: so is /tmp (missing or not writable).
    tools: what the image has of PROBE_TOOLS. user is None until the image has been probed.
    """

    __slots__ = ()


def host_identity(uid: int, gid: int) -> Identity:
    """Before the probe: only the uid and gid are known."""
    return Identity(uid, gid, None, None, "", "", "", False, False, ())


def parse_probe(text: str) -> dict:
    """PROBE_SCRIPT's output as {"passwd": [line], "group": [line], "tools": [name], "dirs": {path: [mode, uid]}}."""
    probe, part = {"passwd": [], "group": [], "tools": [], "dirs": {}}, None
    for line in text.splitlines():
        if line.startswith("# ") and line[2:] in probe:
            part = line[2:]
        elif part == "dirs":
            path, _, listing = line.partition("\t")
            fields = listing.split()
            if len(fields) >= 3 and fields[2].isdigit():
                probe["dirs"][path] = [fields[0], int(fields[2])]
        elif part in ("passwd", "group") and line.strip():
            probe[part].append(line)
        elif part == "tools" and line in PROBE_TOOLS:
            probe["tools"].append(line)
    return probe


def _usable_dir(probe: dict, path: str, uid: int) -> bool:
    """`path` is a directory in the image that `uid` owns and may write, with no capability."""
    mode, owner = probe["dirs"].get(path) or ("", -1)
    return mode[:1] == "d" and owner == uid and mode[2:3] == "w"


_HOME_RE = re.compile(r"/[A-Za-z0-9._/-]{0,200}")


def _free_name(name: str, taken, suffix: int) -> str:
    return name if name not in taken else f"{name}-{suffix}"


def agent_identity(probe: dict, uid: int, gid: int) -> Identity:
    """The agent's passwd and group entries and home in an image, from its probe: a pure function.

    An image user for the uid with a home it owns is kept as it is (node's /home/node). One whose home is
    missing keeps its name and gets that home as a private tmpfs. Otherwise the uid gets an entry of its
    own, `claude` unless the image uses that name, with a private tmpfs home in /home.
    """
    users = [u.split(":") for u in probe["passwd"] if u.count(":") == 6]
    entry = next((u for u in users if u[2] == str(uid)), None)
    if entry and not (_SSH_USER_RE.fullmatch(entry[0]) and _HOME_RE.fullmatch(entry[5])):
        # A name or home that would not survive a path, a mount option or a line of ours: not used.
        users, entry = [u for u in users if u is not entry], None
    passwd, home_tmpfs = "", False
    if entry and entry[5].startswith("/") and entry[5] != "/" and _usable_dir(probe, entry[5], uid):
        name, home, why = entry[0], entry[5], f"the image's own user for uid {uid}"
    elif entry and entry[5].startswith("/") and entry[5] != "/" and entry[5] not in probe["dirs"]:
        name, home, home_tmpfs = entry[0], entry[5], True
        why = f"the image's own user for uid {uid}; its home is missing in the image, so a private one"
    else:
        name = entry[0] if entry else _free_name(FALLBACK_USER, {u[0] for u in users}, uid)
        home, home_tmpfs = f"/home/{name}", True
        line = f"{name}:x:{uid}:{gid}:claude-bottle agent:{home}:/bin/sh"
        lines = [line if u is entry else ":".join(u) for u in users] + ([] if entry else [line])
        passwd = "\n".join(lines) + "\n"
        why = (f"the image's user for uid {uid}, whose home is not its own, with a private home" if entry else
               f"the image has no user for uid {uid}; an entry of claude-bottle's with a private home")
    groups = [g.split(":") for g in probe["group"] if g.count(":") == 3]
    group = ""
    if not any(g[2] == str(gid) for g in groups):
        gname = _free_name(name, {g[0] for g in groups}, gid)
        group = "\n".join([*(":".join(g) for g in groups), f"{gname}:x:{gid}:"]) + "\n"
    mode, owner = probe["dirs"].get("/tmp") or ("", -1)
    tmp_ok = mode[:1] == "d" and (mode[8:9] == "w" or (owner == uid and mode[2:3] == "w"))
    return Identity(uid, gid, name, home, why, passwd, group, home_tmpfs, not tmp_ok, tuple(probe["tools"]))


def identity_problem(plan) -> str:
    """Why this image cannot run this bottle, as one line, or "": checked before anything is created."""
    ident, where = plan.identity, f"the image {plan.image}"
    if plan.ssh:
        missing = [t for t in SSH_TOOLS if t not in ident.tools]
        if missing:
            return (f"{where} has no {' and no '.join(missing)}, which the bottle's SSH hosts need "
                    f"({', '.join(s.alias for s in plan.ssh)}); install {' and '.join(missing)} in the image, or use "
                    f"a bottle without ssh")
    missing = [t for t in CLONE_TOOLS if t not in ident.tools]
    if plan.clone and missing:
        return (f"{where} has no {' and no '.join(missing)}, which a clone session needs to copy the repository in "
                f"and the agent's work out; install {' and '.join(missing)} in the image, or start without --clone")
    if plan.self_test and not any(t in ident.tools for t in SELF_TEST_CLIENTS):
        return (f"{where} has none of {', '.join(SELF_TEST_CLIENTS[:-1])} or {SELF_TEST_CLIENTS[-1]} to run the "
                f"isolation self-test; install one of them (busybox's wget will do) in the image, or pass "
                f"--no-self-test")
    return ""


# ---- The plan: plain data, resolved before anything is created ----

PLAN_FIELDS = (
    "session agent agent_source bottle image build_image pipelock_image workspace git_dir read_only env "
    "env_unset hosts bottle_allow trusted ssh ssh_agent egress_network command tty self_test "
    "max_tunnel_seconds idle_timeout_seconds config_path owner owner_start owner_proof private_dir subnet_pool "
    "brokered identity extra_allow learn build_args state_volume fresh clone repo discard limits login connectors mcp "
    "plain_http"
)


def workspace_volume_name(session: str) -> str:
    """Clone mode: the volume holding the session's copy of the repository (a start's, and gc's, one spelling)."""
    return f"{LABEL}-{session}-workspace"


class Plan(namedtuple("Plan", PLAN_FIELDS)):
    """Everything a start does, resolved before anything is created; names derive from `session`."""

    __slots__ = ()

    @property
    def agent_container(self) -> str:
        return f"{LABEL}-{self.session}"

    @property
    def sidecar(self) -> str:
        return f"{LABEL}-{self.session}-pipelock"

    @property
    def internal_network(self) -> str:
        return f"{LABEL}-{self.session}-internal"

    @property
    def egress(self) -> str:
        """The network the sidecar reaches out on: the bottle's own, or one made for this session."""
        return self.egress_network or f"{LABEL}-{self.session}-egress"

    @property
    def created_networks(self) -> tuple:
        """(name, internal) for each network this session creates, in creation order."""
        own = () if self.egress_network else ((self.egress, False),)
        return ((self.internal_network, True), *own)

    def subnet(self, name: str) -> str:
        """The first subnet a start tries for network `name` (another one when it is taken)."""
        return subnet_candidate(self.subnet_pool, f"{self.session}/{name}", 0)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.sidecar}:{PROXY_PORT}"

    @property
    def workspace_volume(self) -> str:
        """Clone mode: the volume holding the agent's copy of the repository, the session's own."""
        return workspace_volume_name(self.session)

    @property
    def clone_branch(self) -> str:
        """Clone mode: the branch the agent works on in its copy, and that brings its work back."""
        return f"{LABEL}/{self.session}"

    @property
    def workdir(self) -> str:
        """The agent's working directory: the workspace, or in a clone of a parent repository its place there."""
        sub = self.repo.subdir if self.clone and self.repo else ""
        return f"{AGENT_WORKDIR}/{sub}" if sub else AGENT_WORKDIR

    @property
    def fresh_volume(self) -> str:
        """The session's own empty state volume (`start --fresh`, or when another session holds the state)."""
        return f"{LABEL}-{self.session}-state"

    @property
    def state_init(self) -> str:
        return f"{LABEL}-{self.session}-state-init"


class Limits(namedtuple("Limits", "memory cpus tmpfs_size sidecar_memory sidecar_cpus sidecar_pids set_by",
                        defaults=(AGENT_MEMORY, AGENT_CPUS, AGENT_TMPFS_SIZE, SIDECAR_MEMORY, SIDECAR_CPUS,
                                  SIDECAR_PIDS_LIMIT, ()))):
    """A session's resource limits: memory and tmpfs sizes in bytes, CPUs as a float. set_by: (key, where) for each
    one the config set (the rest are defaults), for the messages that name where to change one."""

    __slots__ = ()

    def where(self, key: str) -> str | None:
        return dict(self.set_by).get(key)


def resolve_limits(config: Config, spec: AgentSpec, bottle: Bottle) -> Limits:
    """Defaults, then the bottle's, then the agent's own."""
    values, set_by = {}, {}
    origin = config.path or CONFIG_NAME
    for pairs, table in ((bottle.limits, f"[bottles.{bottle.name}]"), (spec.limits, f"[agents.{spec.name}]")):
        for key, value in pairs:
            values[key], set_by[key] = value, f"{origin}: {table}"
    return Limits(**values, set_by=tuple(set_by.items()))


def limit_fix(plan: Plan, key: str, value: str) -> str:
    """Where and how to change limit `key`: the table that set it, else the agent's (or, for the sidecar's, the
    bottle's)."""
    where = plan.limits.where(key)
    if where is None:
        table = f"[bottles.{plan.bottle}]" if key.startswith("sidecar_") else f"[agents.{plan.agent}]"
        where = f"{plan.config_path or CONFIG_NAME}: {table}"
    return f"set {key} = {value} in {where}"


def fit_limits(plan: Plan, capacity) -> Plan:
    """The limits checked against what the engine has, `capacity` (CPUs, bytes of memory; None: unknown). A default
    above it is lowered to it (and said); a limit the config set above it is refused."""
    if capacity is None:
        return plan
    ncpu, memory = capacity
    limits = plan.limits
    for key, cap, show, fix in (("memory", memory, human_size, f'"{memory >> 20}m"'),
                                ("sidecar_memory", memory, human_size, f'"{memory >> 20}m"'),
                                ("cpus", ncpu, human_cpus, f"{ncpu}"), ("sidecar_cpus", ncpu, human_cpus, f"{ncpu}")):
        value = getattr(limits, key)
        if value <= cap:
            continue
        if limits.where(key):
            raise ConfigError(f"{limits.where(key)} {key}: {show(value)} is more than the engine has "
                              f"({show(cap)}); set it to {fix} or less")
        say(f"claude-bottle: the engine has {show(cap)}, less than the default {key} of {show(value)}; the "
            f"bottle gets {show(cap)}")
        limits = limits._replace(**{key: type(value)(cap)})
    return plan._replace(limits=limits)


def state_volume_name(workspace: str, agent: str) -> str:
    """The persistent state volume of `agent` in the project at `workspace`: the same name at every start."""
    return f"{LABEL}-state-{agent}-{_sha256(workspace)[:12]}"


def image_build_args(environ) -> tuple:
    """(name, value) of each build argument of the built-in image set in claude-bottle's environment."""
    args = []
    base = environ.get(BASE_IMAGE_ENV)
    if base and base != BASE_IMAGE:
        args.append(("BASE_IMAGE", check_image(base, BASE_IMAGE_ENV)))
    url = environ.get(INSTALLER_URL_ENV)
    if url and url != INSTALLER_URL:
        args.append(("CLAUDE_INSTALLER_URL", check_url(url, INSTALLER_URL_ENV)))
    return tuple(args)


def session_id(agent: str, suffix: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", agent.lower()).strip("-")[:24].strip("-") or "agent"
    return f"{slug}-{suffix}"


def known_agents(config: Config, project: Path) -> list:
    names = set(config.agents)
    agents_dir = project / ".claude" / "agents"
    if agents_dir.is_dir():
        names.update(p.stem for p in agents_dir.glob("*.md") if _SLUG_RE.fullmatch(p.stem))
    return sorted(names)


def resolve_agent(config: Config, name: str | None, project: Path) -> AgentSpec:
    """`[agents.NAME]`, else `.claude/agents/NAME.md` (run as `claude --agent NAME`), else an error."""
    agent_file = None
    if name is not None:
        check_slug(name, "agent")
        agent_file = project / ".claude" / "agents" / f"{name}.md"
    if name is None:
        spec = config.agents.get(DEFAULT_AGENT, AgentSpec(DEFAULT_AGENT))
    elif name in config.agents:
        spec = config.agents[name]
    elif agent_file.is_file():
        spec = AgentSpec(name, source=f".claude/agents/{name}.md")
    elif name == DEFAULT_AGENT:
        spec = AgentSpec(DEFAULT_AGENT)
    else:
        known = ", ".join(sorted({DEFAULT_AGENT, *known_agents(config, project)}))
        raise ConfigError(f"agent: no agent named {name!r} (known agents: {known}); define [agents.{name}] "
                          f"in {CONFIG_NAME} or add .claude/agents/{name}.md")
    if spec.command is None:
        uses_file = agent_file is not None and agent_file.is_file()
        spec = spec._replace(command=("claude", "--agent", name) if uses_file else ("claude",))
    return spec


def resolve_workspace(path: str, base: Path, environ) -> Path:
    ws = (base / Path(path).expanduser()).resolve()
    if not ws.is_dir():
        raise ConfigError(f"workspace: {ws} does not exist or is not a directory; "
                          f"pass --workspace with a project directory")
    home = environ.get("HOME")
    if ws == Path(ws.anchor) or (home and Path(home).resolve().is_relative_to(ws)):
        raise ConfigError(f"workspace: {ws} would give the agent your whole home directory; "
                          f"run from a project directory or pass --workspace")
    if "\n" in str(ws) or "\0" in str(ws):
        raise ConfigError("workspace: the path contains a newline; rename the directory")
    return ws


def project_mcp_servers(workspace: Path) -> tuple:
    """The MCP servers of the project's `.mcp.json` as (name, type, host): type "stdio" (runs in the bottle), "http"
    or "sse" (host: where it connects), or "?" with the reason in host when the file or entry cannot be read."""
    path = workspace / ".mcp.json"
    if not path.is_file():
        return ()
    try:
        servers = json.loads(path.read_text(encoding="utf-8")).get("mcpServers", {})
        if not isinstance(servers, dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        return (("(.mcp.json)", "?", "not readable as JSON with an mcpServers table"),)
    found = []
    for name, entry in servers.items():
        entry = entry if isinstance(entry, dict) else {}
        kind = entry.get("type") or ("stdio" if "command" in entry else "http" if "url" in entry else "?")
        if kind in ("http", "sse"):
            from urllib.parse import urlsplit
            try:
                host = urlsplit(str(entry.get("url", ""))).hostname or ""
            except ValueError:
                host = ""
            found.append((str(name), kind, host or "no url"))
        else:
            found.append((str(name), "stdio" if kind == "stdio" else "?", ""))
    return tuple(found)


def _trust_covered(trusted: str, hosts) -> bool:
    if trusted.startswith("*."):
        return any(p == trusted or (p.startswith("*.") and host_matches(p, trusted[2:])) for p in hosts)
    return any(host_matches(p, trusted) for p in hosts)


def resolve_plan(config: Config, agent_name: str | None, *, cwd: Path, environ, suffix: str,
                 tty: bool = False, command=None, workspace: str | None = None,
                 extra_allow=(), owner: str = "", owner_start: str = "", owner_proof: str = "",
                 private_dir: str = "", self_test: bool = True, uid: int | None = None,
                 gid: int | None = None, learn: bool = False,
                 fresh: bool = False, clone: bool | None = None, discard: bool = False,
                 login: tuple = ()) -> Plan:
    """Resolve agent -> bottle -> image, hosts, SSH hosts, mounts and env names. Reads no docker state.

    The agent runs as `uid`:`gid`, the user running claude-bottle unless given; its name and home in an
    image of the user's come from a probe of the image (`identify`), in the built-in image they are known.
    `login`, (path, token) of the subscription login `claude-bottle login` keeps, is brokered as
    CLAUDE_CODE_OAUTH_TOKEN unless the environment has Claude Code credentials of its own; the token itself never
    enters the plan.
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    project = find_project(cwd)
    spec = resolve_agent(config, agent_name, project)
    bottle = config.bottles[spec.bottle]
    if workspace is not None:
        ws = resolve_workspace(workspace, cwd, environ)
    elif spec.workspace is not None:
        base = Path(config.path).parent.resolve() if config.path else cwd
        ws = resolve_workspace(spec.workspace, base, environ)
        # A config travels with a repository: it may choose a directory of its own, nothing else.
        if not ws.is_relative_to(base):
            raise ConfigError(f"{config.path}: [agents.{spec.name}] workspace: {ws} is outside {base}; "
                              f"name a directory inside it, or pass --workspace")
    else:
        ws = resolve_workspace(str(project), cwd, environ)
    extra = tuple(check_host(h, "--allow", wildcard=True) for h in expand_allow(extra_allow, PRESETS, "--allow"))
    own = expand_allow(bottle.allow, PRESETS, f"{config.path}: [bottles.{bottle.name}] allow")
    connectors = (CONNECTORS_HOST,) if bottle.connectors else ()
    hosts = tuple(sorted({*DEFAULT_HOSTS, *connectors, *own, *extra, *(s.hostname for s in bottle.ssh)}))
    # A trusted host need not be allowed: pipelock refuses new trusted_domains on a live reload, so a bottle
    # trusts a private host ahead of time and `claude-bottle allow` lets the agent reach it when needed.
    for i, c in enumerate(bottle.credentials, 1):
        # The broker's requests pass through pipelock like the agent's: its upstream must be allowed.
        if not any(host_matches(p, c.upstream[0]) for p in hosts):
            field = "upstream" if c.upstream[0] != c.host else "host"
            raise ConfigError(f"{config.path}: [[bottles.{bottle.name}.credentials]] #{i} {field}: "
                              f"{c.upstream[0]!r} is not allowed by the bottle; add it to allow as well")
    subnet_pool = check_subnet_pool(environ.get(SUBNETS_ENV) or DEFAULT_SUBNETS, SUBNETS_ENV)
    build_args = image_build_args(environ) if spec.image is None else ()
    image_override = environ.get(PIPELOCK_IMAGE_ENV)
    pipelock_image = check_image(image_override, PIPELOCK_IMAGE_ENV) if image_override else PIPELOCK_IMAGE
    # None: bind, the default, which a start may turn into a clone when another session edits the tree in place.
    clone = (True if spec.clone else None) if clone is None else clone
    if discard and not clone:
        raise ConfigError("--discard: only in clone mode (a bind-mounted workspace is your own tree); add --clone")
    # Read-only inside the read-write workspace: what would run on the host later, or change the bottle. A clone
    # is the agent's own: nothing of it is mounted from the host.
    git_dir = (ws / ".git").is_dir() and not clone
    read_only = ()
    if git_dir:
        if os.path.lexists(ws / GIT_COMMONDIR):
            raise ConfigError(f"workspace: {ws / GIT_COMMONDIR} exists; it sends git to another directory's "
                              f"config and hooks, and a repository's own .git never has one (an agent may have "
                              f"written it): look at it, remove it and start again")
        read_only = (".git/hooks",) + ((".git/config",) if (ws / ".git" / "config").is_file() else ())
    elif (ws / ".git").is_file() and not clone:
        # A linked worktree or a submodule: `.git` names the git dir, which is not mounted. Pointed at a git
        # dir the agent made in the workspace, it would run the agent's hooks and fsmonitor on the host.
        read_only = (".git",)
    if config.path and Path(config.path).resolve().is_relative_to(ws) and not clone:
        read_only += (str(Path(config.path).resolve().relative_to(ws)),)
    # The kept login stands in for CLAUDE_CODE_OAUTH_TOKEN; what the environment sets wins, as in Claude Code.
    brokered = plan_endpoints(bottle.credentials, spec.env, with_login(environ, login))
    return Plan(
        session=session_id(spec.name, suffix),
        agent=spec.name,
        agent_source=spec.source,
        bottle=bottle.name,
        image=spec.image or agent_image_tag(build_args),
        build_image=spec.image is None,
        pipelock_image=pipelock_image,
        workspace=str(ws),
        git_dir=git_dir,
        read_only=read_only,
        env=tuple(n for n in spec.env if n in environ),
        env_unset=tuple(n for n in spec.env if n not in environ),
        hosts=hosts,
        bottle_allow=bottle.allow,
        trusted=tuple(sorted(set(bottle.trusted))),
        ssh=bottle.ssh,
        ssh_agent=(environ.get("SSH_AUTH_SOCK") or None) if bottle.ssh else None,
        egress_network=bottle.egress_network,
        command=tuple(command) if command else spec.command,
        tty=tty,
        self_test=self_test,
        max_tunnel_seconds=bottle.max_tunnel_seconds,
        idle_timeout_seconds=bottle.idle_timeout_seconds,
        config_path=config.path,
        owner=owner,
        owner_start=owner_start,
        owner_proof=owner_proof,
        private_dir=private_dir,
        subnet_pool=subnet_pool,
        brokered=brokered,
        identity=host_identity(uid, gid) if spec.image else agent_identity(BUILTIN_PROBE, uid, gid),
        extra_allow=tuple(extra_allow),
        learn=learn,
        build_args=build_args,
        state_volume=state_volume_name(str(ws), spec.name),
        fresh=fresh,
        clone=clone,
        repo=None,
        discard=discard,
        limits=resolve_limits(config, spec, bottle),
        login=login_line(brokered, spec.env, environ, login[0] if login else ""),
        connectors=bottle.connectors,
        mcp=project_mcp_servers(ws),
        plain_http=bottle.plain_http,
    )


def plan_endpoints(credentials, raw_env, environ) -> tuple:
    """The brokered endpoints of a session. A variable the agent names in `env` is passed raw, as asked, and
    is not brokered, nor is any credential sharing its base URL variable (naming that variable takes it
    over too): one variable cannot hold both the secret and the placeholder."""
    raw = set(raw_env)
    every = (*builtin_credentials(), *credentials)
    taken = {c.base_url_env for c in every if c.env in raw or c.base_url_env in raw}
    shadowed = {c.env for c in every if c.base_url_env in taken}
    return tuple(brokered_endpoints(credentials, {k: v for k, v in environ.items() if k not in shadowed}))


# ---- Renderers: pure functions from the plan to text and argv ----

def egress_line(hosts) -> str:
    """`9 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +6 more)`"""
    shown = ", ".join(hosts[:3])
    more = len(hosts) - min(len(hosts), 3)
    return f"{len(hosts)} host{'' if len(hosts) == 1 else 's'} allowed ({shown}{f', +{more} more' if more else ''})"


def ssh_line(ssh) -> str:
    return ", ".join(f"{s.alias} -> {s.hostname}:{s.port}" for s in ssh) or "none"


def render_pipelock_yaml(plan: Plan) -> str:
    return pipelock_yaml(plan.session, plan.hosts, plan.trusted, plan.max_tunnel_seconds, plan.idle_timeout_seconds,
                         enforce=not plan.learn)


def pipelock_yaml(session: str, hosts, trusted, max_tunnel_seconds: int, idle_timeout_seconds: int, *,
                  enforce: bool = True, change: int = 0) -> str:
    """The sidecar's config. `change` numbers a live change: each write then has bytes (and a hash) of its own,
    so the reload event for this write can never be confused with one for an earlier, identical list."""
    # json.dumps gives a double-quoted scalar that YAML reads back verbatim, whatever the text.
    q = json.dumps
    lines = [
        f"# pipelock config for claude-bottle session {session}; generated, hostnames only.",
        *([f"# live change {int(change)}"] if change else []),
        "version: 1",
        "mode: strict",
        # Learn mode: pipelock logs what it would block (an `anomaly` event) and lets it through.
        *([] if enforce else ["enforce: false"]),
        "api_allowlist:",
        *(f"  - {q(h)}" for h in hosts),
    ]
    if trusted:
        lines += ["trusted_domains:", *(f"  - {q(h)}" for h in trusted)]
    lines += [
        "fetch_proxy:",
        f"  listen: {q(f'0.0.0.0:{PROXY_PORT}')}",
        f"  timeout_seconds: {FETCH_TIMEOUT_SECONDS}",
        f"  max_response_mb: {MAX_RESPONSE_MB}",
        "  monitoring:",
        f"    max_requests_per_minute: {MAX_REQUESTS_PER_MINUTE}",
        "forward_proxy:",
        "  enabled: true",
        f"  max_tunnel_seconds: {int(max_tunnel_seconds)}",
        f"  idle_timeout_seconds: {int(idle_timeout_seconds)}",
        # Prompt-injection scanning of plain-HTTP responses only ever warned (its default action); off, it no
        # longer costs the CPU time of a second pass over every download.
        "response_scanning:",
        "  enabled: false",
        # DLP on what leaves the bottle over plain HTTP: a secret in any header or in the body is refused (403),
        # not just logged; core DLP refuses one in the URL whatever this says.
        "request_body_scanning:",
        "  enabled: true",
        "  action: block",
        "  scan_headers: true",
        "  header_mode: all",
    ]
    return "\n".join(lines) + "\n"


def render_ssh_config(plan: Plan) -> str:
    lines = [f"# SSH config for claude-bottle session {plan.session}: every host tunnels through pipelock."]
    for s in plan.ssh:
        lines += ["", f"Host {s.alias}", f"  HostName {s.hostname}"]
        if s.user:
            lines.append(f"  User {s.user}")
        lines += [
            f"  Port {int(s.port)}",
            f"  ProxyCommand socat - PROXY:{plan.sidecar}:%h:%p,proxyport={PROXY_PORT}",
            # The bottle starts with no known_hosts; pin on first use for the session's lifetime.
            "  StrictHostKeyChecking accept-new",
        ]
    return "\n".join(lines) + "\n"


def user_line(ident: Identity) -> str:
    """`node uid 1000, home /home/node (the image's own user for uid 1000)`"""
    if ident.user is None:
        return (f"uid {ident.uid} gid {ident.gid} (yours); name and home from the image, probed before "
                f"anything is created")
    home = f"{ident.home}" + (" (private tmpfs)" if ident.home_tmpfs else "")
    return f"{_visible(ident.user)} uid {ident.uid} gid {ident.gid}, home {_visible(home)} ({ident.why})"


def limits_line(limits: Limits) -> str:
    return (f"agent {human_size(limits.memory)} memory (no swap), {human_cpus(limits.cpus)}, {AGENT_PIDS_LIMIT} "
            f"pids, {human_size(limits.tmpfs_size)} per tmpfs; pipelock {human_size(limits.sidecar_memory)}, "
            f"{human_cpus(limits.sidecar_cpus)}, {limits.sidecar_pids} pids")


def size_text(size: int) -> str:
    """A size as docker's flags and mount(8)'s tmpfs size= take it: "4g", "512m", "64k", or bytes."""
    for suffix, shift in (("g", 30), ("m", 20), ("k", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def render_summary(plan: Plan) -> list:
    env = f"{', '.join(plan.env)} (visible to the agent)" if plan.env else "none"
    if plan.env_unset:
        env += f"; not set here, so not passed: {', '.join(plan.env_unset)}"
    ro = plan.read_only
    git = f"; {', '.join(ro[:-1])}{' and ' if len(ro) > 1 else ''}{ro[-1]} read-only" if ro else ""
    image = plan.image + (" (built-in; built if missing)" if plan.build_image else "")
    nets = [f"{name} ({'internal' if internal else 'egress bridge'})" for name, internal in plan.created_networks]
    not_yet = [t for t in plan.trusted if not _trust_covered(t, plan.hosts)]
    later = f"; not allowed yet: {', '.join(not_yet)} (`claude-bottle allow` while it runs)" if not_yet else ""
    egress_note = f"; egress via existing network {plan.egress_network}" if plan.egress_network else ""
    return [
        f"claude-bottle {__version__}: session {plan.session}",
        f"  agent:      {plan.agent} ({_visible(plan.agent_source)})",
        f"  bottle:     {plan.bottle}" + (f" ({_visible(plan.config_path)})" if plan.config_path else " (built-in)"),
        f"  image:      {image}",
        f"  command:    {_visible(shlex.join(plan.command))}",
        f"  user:       {user_line(plan.identity)}",
        f"  workspace:  {clone_line(plan)}" if plan.clone else
        f"  workspace:  {_visible(plan.workspace)} -> {AGENT_WORKDIR} (read-write{git})",
        *(f"  clone:      {_visible(note)}" for note in (plan.repo.notes if plan.clone and plan.repo else ())),
        f"  state:      {state_line(plan)}",
        f"  env:        {env}",
        f"  brokered:   {brokered_line(plan.brokered)}",
        f"  login:      {plan.login}",
        f"  egress:     {egress_line(plan.hosts)}",
        f"  connectors: {connectors_line(plan)}",
        *(f"  mcp:        {line}" for line in mcp_lines(plan)),
        f"  plain http: {PLAIN_HTTP_LINES[plan.plain_http]}",
        *(f"  preset:     {p} = {', '.join(PRESETS[p[1:]])}" for p in presets_used(plan)),
        f"  trusted:    {', '.join(plan.trusted) or 'none'} (may resolve to private addresses){later}",
        f"  ssh:        {ssh_line(plan.ssh)}" + (" (host ssh-agent forwarded)" if plan.ssh_agent else ""),
        f"  pipelock:   {plan.pipelock_image}",
        f"  limits:     {limits_line(plan.limits)}",
        f"  containers: {plan.agent_container} (agent), {plan.sidecar} (pipelock sidecar)",
        f"  networks:   {', '.join(nets)}{egress_note}",
        *([LEARN_WARNING] if plan.learn else []),
    ]


def connectors_line(plan: Plan) -> str:
    if plan.connectors:
        return (f"ON: {CONNECTORS_HOST} allowed; with the login, the agent reaches the accounts you connected to "
                f"claude.ai (mail, drive, ...)")
    return f"off (claude.ai connectors; `connectors = true` in [bottles.{plan.bottle}] allows {CONNECTORS_HOST})"


def mcp_lines(plan: Plan) -> list:
    """One line per MCP server of the project's .mcp.json: what it needs of the bottle, and the fix."""
    lines = []
    for name, kind, host in plan.mcp:
        if kind == "stdio":
            lines.append(f"{_visible(name)} (stdio: runs inside the bottle, its traffic through pipelock)")
        elif kind in ("http", "sse") and host != "no url":
            if any(host_matches(p, host) for p in plan.hosts):
                lines.append(f"{_visible(name)} ({kind} {_visible(host)}: allowed)")
            else:
                lines.append(f"{_visible(name)} ({kind} {_visible(host)}: NOT allowed, it will fail; add "
                             f"allow = [{json.dumps(host)}] to [bottles.{plan.bottle}] or pass --allow {host})")
        else:
            lines.append(f"{_visible(name)} ({_visible(host) or 'type not known'})")
    return lines


PLAIN_HTTP_LINES = {
    PLAIN_HTTP_TUNNEL: "tunnel: wire speed through CONNECT (allowlist, SSRF; logged per tunnel, no URL, no DLP); "
                       "plain_http = \"scan\" adds DLP and URLs, at seconds per MiB",
    PLAIN_HTTP_SCAN: "scan: pipelock's DLP on each request, URLs logged, seconds per MiB of response; "
                     "plain_http = \"tunnel\" is wire speed without them",
}


def brokered_text(ep) -> str:
    """`ANTHROPIC_API_KEY -> api.anthropic.com (brokered)`: a name and a host, never a value."""
    return f"{ep.env} -> {ep.host} (brokered)"


def brokered_line(endpoints) -> str:
    return ", ".join(map(brokered_text, endpoints)) or "none"


# Learn mode's line in the preflight: nothing may read it as a safe default.
LEARN_WARNING = ("  LEARN MODE: THE ALLOWLIST IS OFF. The agent can reach ANY public host and send it anything; "
                 "pipelock only logs what it would block (private addresses stay refused unless trusted), and the "
                 "report at the end proposes an allow list.")


def presets_used(plan: Plan) -> list:
    """The `@preset` entries of the bottle and of --allow, in order, each once."""
    return list(dict.fromkeys(e for e in (*plan.bottle_allow, *plan.extra_allow) if e.startswith("@")))


def state_line(plan: Plan) -> str:
    if plan.fresh:
        return f"fresh (an empty {AGENT_STATE_DIR}, thrown away at the end)"
    return f"{plan.state_volume} -> {AGENT_STATE_DIR} (kept for this agent and project)"


def session_labels(plan: Plan, role: str) -> dict:
    """The labels of everything a session creates: whose it is, and what `ls`, `gc` and `stop` read back."""
    return {SESSION_LABEL: plan.session, f"{LABEL}.role": role, f"{LABEL}.agent": plan.agent,
            f"{LABEL}.bottle": plan.bottle, f"{LABEL}.owner": plan.owner, f"{LABEL}.owner-start": plan.owner_start,
            f"{LABEL}.owner-proof": plan.owner_proof, f"{LABEL}.owner-dir": plan.private_dir}


def plain_http_url(plan: Plan) -> str:
    """The agent's http_proxy: the plain-HTTP forwarder in its own container, or pipelock (PLAIN_HTTP_MODES)."""
    return f"http://127.0.0.1:{PLAIN_HTTP_PORT}" if plan.plain_http == PLAIN_HTTP_TUNNEL else plan.proxy_url


def proxy_env(plan: Plan) -> list:
    url, plain = plan.proxy_url, plain_http_url(plan)
    return [
        ("HTTPS_PROXY", url), ("HTTP_PROXY", plain), ("https_proxy", url), ("http_proxy", plain),
        ("NO_PROXY", "localhost,127.0.0.1,::1"), ("no_proxy", "localhost,127.0.0.1,::1"),
        # Node's fetch ignores the proxy variables without this; Claude Code is a Node program.
        ("NODE_USE_ENV_PROXY", "1"),
        # The agent has no DNS to the outside: let the proxy resolve names.
        ("CLAUDE_CODE_PROXY_RESOLVES_HOSTS", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_UPDATES", "1"),
        ("CLAUDE_BOTTLE_SESSION", plan.session),
    ]


# ---- Specs: what each container, network and volume of a session is, as plain data ----

class Mount(namedtuple("Mount", "kind source target readonly options", defaults=(False, ""))):
    """A filesystem a container sees at `target`: kind "bind" (`source` a path on this machine: a workspace, a
    socket), "volume" (`source` a volume's name) or "tmpfs" (`options` as mount(8) takes them)."""

    __slots__ = ()


class Files(namedtuple("Files", "kind source target readonly uid gid", defaults=(True, 0, 0))):
    """Files claude-bottle wrote for a container: `source`, a file (kind "file") or a directory ("dir") in the
    session's private dir, seen at `target`. Read-only ones belong to root in the container; writable ones to
    uid:gid. The engine decides how they get there: a bind mount where it shares this machine's files, a copy
    through the engine otherwise."""

    __slots__ = ()


class ContainerSpec(namedtuple("ContainerSpec", "name role image command entrypoint user network ip no_outside_dns "
                                                "cap_add read_only pids_limit init interactive tty workdir mounts "
                                                "env labels remove memory cpus no_logs",
                               defaults=("", "", "", (), None, "", None, None, False, (), False, None, False, False,
                                         False, None, (), (), None, False, None, None, False))):
    """One container: every capability is dropped and no-new-privileges is set, always; `cap_add` names the few a
    container gets back. network None: no network. env: (name, value) pairs, value None for a variable passed by
    name from claude-bottle's own environment (never in argv). mounts: Mount and Files records. remove: a one-off
    container removed when it exits. memory: a limit in bytes with no swap beyond it; cpus: a share of CPUs.
    no_logs: the engine keeps none of its output (it passes a secret)."""

    __slots__ = ()


class NetworkSpec(namedtuple("NetworkSpec", "name internal subnet labels")):
    """A session's network: `internal` ones have no route out and no address of the host on them."""

    __slots__ = ()


class VolumeSpec(namedtuple("VolumeSpec", "name labels")):
    __slots__ = ()


def state_labels(plan: Plan) -> dict:
    """The persistent volume's labels: what `state ls` shows. No session label: no session's teardown or gc owns it."""
    return {STATE_LABEL: "1", f"{LABEL}.project": plan.workspace, f"{LABEL}.agent": plan.agent}


def probe_spec(image: str) -> ContainerSpec:
    """Read the image, never change it: a throwaway container with no network and no capability."""
    return ContainerSpec(role="probe", image=image, entrypoint="/bin/sh", command=("-c", PROBE_SCRIPT), user="0:0",
                         remove=True)


def state_volume_spec(plan: Plan, volume: str) -> VolumeSpec:
    if volume == plan.fresh_volume:
        return VolumeSpec(volume, {**session_labels(plan, "state"), STATE_LABEL: "fresh"})
    return VolumeSpec(volume, state_labels(plan))


def state_init_spec(plan: Plan, volume: str) -> ContainerSpec:
    """Make a new state volume the agent's own, with the image's own sh (a busybox one will do), as root with
    only the capabilities that takes, and seed Claude Code's onboarding flag as the built-in image does.

    Idempotent: two first starts at once both run it, the second on a volume that is the agent's already (0700,
    hence DAC_OVERRIDE to enter it).
    """
    uid, gid = plan.identity.uid, plan.identity.gid
    script = (f"set -e; cd {AGENT_STATE_DIR}; "
              f"[ -e .claude.json ] || printf '{{\"hasCompletedOnboarding\": true}}\\n' > .claude.json; "
              f"chown {uid}:{gid} . .claude.json; chmod 0700 .")
    return ContainerSpec(name=plan.state_init, role="state-init", image=plan.image, entrypoint="/bin/sh",
                         command=("-c", script), user="0:0", cap_add=("CHOWN", "DAC_OVERRIDE", "FOWNER"),
                         pids_limit=64, mounts=(Mount("volume", volume, AGENT_STATE_DIR),),
                         labels=session_labels(plan, "state-init"), remove=True)


def network_spec(plan: Plan, name: str, internal: bool, subnet: str) -> NetworkSpec:
    return NetworkSpec(name, internal, subnet, session_labels(plan, "internal" if internal else "egress"))


def sidecar_spec(plan: Plan, ip: str | None = None) -> ContainerSpec:
    # The directory, not the file: pipelock watches it and reloads a replaced config.
    config = Files("dir", os.path.join(plan.private_dir, "pipelock"), PIPELOCK_CONFIG_DIR)
    return ContainerSpec(name=plan.sidecar, role="pipelock", image=plan.pipelock_image,
                         command=("run", "--config", f"{PIPELOCK_CONFIG_DIR}/pipelock.yaml", "--listen",
                                  f"0.0.0.0:{PROXY_PORT}"),
                         user=SIDECAR_USER, network=plan.egress, ip=ip, read_only=True,
                         pids_limit=plan.limits.sidecar_pids, memory=plan.limits.sidecar_memory,
                         cpus=plan.limits.sidecar_cpus, mounts=(config,), labels=session_labels(plan, "pipelock"))


def planned_identity(plan: Plan) -> Identity:
    """The identity a start uses; before the probe (a dry run), the one an image without users would give."""
    if plan.identity.user is not None:
        return plan.identity
    return agent_identity({"passwd": [], "group": [], "tools": [], "dirs": {}}, plan.identity.uid, plan.identity.gid)


def identity_mounts(plan: Plan, ident: Identity) -> list:
    """The agent's passwd and group entries, home, /tmp and SSH config, as mounts."""
    mounts = [Files("file", os.path.join(plan.private_dir, name), f"/etc/{name}") for name in ("passwd", "group")
              if getattr(ident, name)]
    # tmpfs options as mount(8) takes them: a home of the uid's own, exec for tools installed into it.
    # Each sized: a tmpfs is memory, and without a size it may grow to half the engine's.
    size = f"size={size_text(plan.limits.tmpfs_size)}"
    if ident.home_tmpfs:
        mounts.append(Mount("tmpfs", "", ident.home,
                            options=f"uid={ident.uid},gid={ident.gid},mode=0700,exec,{size}"))
    if ident.tmp_tmpfs:
        mounts.append(Mount("tmpfs", "", "/tmp", options=f"mode=1777,exec,{size}"))
    if plan.ssh:
        # The session's ssh dir, the uid's own: ssh reads config there and writes known_hosts beside it.
        mounts.append(Files("dir", os.path.join(plan.private_dir, "ssh"), f"{ident.home}/.ssh", readonly=False,
                            uid=ident.uid, gid=ident.gid))
    return mounts


def workspace_mounts(plan: Plan) -> list:
    if plan.clone:
        return [Mount("volume", plan.workspace_volume, AGENT_WORKDIR)]
    mounts = [Mount("bind", plan.workspace, AGENT_WORKDIR)]
    if plan.git_dir:
        # .git as a mount point of its own: the agent cannot rename it away and plant a new one.
        mounts.append(Mount("bind", os.path.join(plan.workspace, ".git"), f"{AGENT_WORKDIR}/.git"))
    for rel in plan.read_only:
        mounts.append(Mount("bind", os.path.join(plan.workspace, rel), f"{AGENT_WORKDIR}/{rel}", readonly=True))
    return mounts


def agent_spec(plan: Plan, ip: str | None = None, state: str | None = None) -> ContainerSpec:
    ident = planned_identity(plan)
    mounts = [*workspace_mounts(plan), *identity_mounts(plan, ident)]
    env = [("HOME", ident.home)]
    if plan.ssh_agent:
        mounts.append(Mount("bind", os.path.join(plan.private_dir, "ssh-agent.sock"), AGENT_SSH_AUTH_SOCK))
        env.append(("SSH_AUTH_SOCK", AGENT_SSH_AUTH_SOCK))
    for ep in plan.brokered:
        mounts.append(Mount("bind", os.path.join(plan.private_dir, broker_socket_name(ep)), agent_broker_socket(ep)))
    mounts.append(Mount("volume", state or (plan.fresh_volume if plan.fresh else plan.state_volume), AGENT_STATE_DIR))
    env.append(("CLAUDE_CONFIG_DIR", AGENT_STATE_DIR))
    if any(ep.base_url_env == ANTHROPIC_BASE_URL_ENV for ep in plan.brokered):
        # Claude Code turns MCP tool search off when ANTHROPIC_BASE_URL is not first-party; the broker forwards
        # bodies unchanged (tool_reference blocks too), so it stays on. A value the agent names in env wins.
        env.append(("ENABLE_TOOL_SEARCH", "true"))
    # The brokered credentials' placeholders and the broker's addresses: no secret, so by value. Then the variables
    # the agent names, by name only: the engine reads the value from its own environment, so it never shows in argv.
    env += [*proxy_env(plan), *agent_env_for(plan.brokered, broker_ports(plan)), *((n, None) for n in plan.env)]
    # The bottle runs its command itself; an image's ENTRYPOINT is never used. The broker's forwarders and the
    # plain-HTTP forwarder start first, so the command never runs without them.
    forward = render_forwarders(plan) + render_plain_http_forwarder(plan)
    if plan.self_test:
        entrypoint, command = "/bin/sh", ("-c", forward + GATE, "claude-bottle-gate", *plan.command)
    elif forward:
        entrypoint, command = "/bin/sh", ("-c", forward + 'exec "$@"', "claude-bottle-broker", *plan.command)
    else:
        entrypoint, command = plan.command[0], plan.command[1:]
    return ContainerSpec(
        name=plan.agent_container, role="agent", image=plan.image, command=command, entrypoint=entrypoint,
        user=f"{ident.uid}:{ident.gid}", network=plan.internal_network, ip=ip,
        # No DNS path out, whatever the engine version: only the names the engine itself answers (the sidecar's).
        no_outside_dns=True, pids_limit=AGENT_PIDS_LIMIT, memory=plan.limits.memory, cpus=plan.limits.cpus,
        init=True, interactive=True, tty=plan.tty,
        workdir=plan.workdir, mounts=tuple(mounts), env=tuple(env),
        labels={**session_labels(plan, "agent"), f"{LABEL}.workspace": plan.workspace,
                f"{LABEL}.mode": "clone" if plan.clone else "bind"})


def agent_broker_socket(ep) -> str:
    """Where the broker's socket for `ep` appears in the agent's container."""
    return f"{AGENT_BROKER_DIR}/{broker_socket_name(ep)}"


def broker_ports(plan: Plan) -> dict:
    """{endpoint index: the loopback port its forwarder serves in the bottle}; fixed, so argv stays pure."""
    return {ep.index: BROKER_FIRST_PORT + ep.index for ep in plan.brokered}


BROKER_NO_TOOL = ("claude-bottle: the agent image has none of socat, python3, node or perl to reach the credential "
                  "broker; install one of them in the image")


def render_forwarders(plan: Plan) -> str:
    """POSIX sh, run before the agent's command: serve each broker socket on its loopback port with the first tool
    of FORWARDER_TOOLS the image has, and wait until every port answers; "" when nothing is brokered."""
    if not plan.brokered:
        return ""
    ports = broker_ports(plan)
    pairs = [(ports[ep.index], agent_broker_socket(ep)) for ep in plan.brokered]
    lines = []
    for i, tool in enumerate(FORWARDER_TOOLS):
        # Not indented: the scripts hold quoted programs whose lines must stay as they are.
        lines += [f"{'elif' if i else 'if'} command -v {tool} >/dev/null 2>&1; then",
                  forwarder_script(tool, pairs).rstrip("\n")]
    lines += ["else", f"  echo {shlex.quote(BROKER_NO_TOOL)} >&2; exit 1", "fi"]
    return "\n".join(lines) + "\n"


# The self-test's verdicts: pipelock never answered; how long silence must last to count as "unreachable".
PROXY_SILENT = "the pipelock sidecar does not answer the agent"
SILENCE = 0.1
# The agent's command waits behind this gate until the self-test, run inside the same container,
# opens it; a failed self-test tears the bottle down before the command ever runs. /tmp is writable
# in every bottle: a private tmpfs where the image's is missing or not the agent's to write.
GATE_FILE = "/tmp/.claude-bottle-self-test-passed"
GATE = f'while [ ! -e {GATE_FILE} ]; do sleep 0.02; done; exec "$@"'
# Printed just before the gate opens: a short command may end the container, and the exec with it (exit 137),
# while the passed self-test is still returning.
SELF_TEST_PASSED = "claude-bottle-self-test: passed"
NO_CLIENT = "the agent image has none of curl, wget, python3 or nc to run the isolation self-test"


def render_self_test(plan: Plan, outside_ip: str, host_ip: str = "") -> str:
    """A POSIX sh script, run as the agent inside its container: the proxy answers, nothing else does.

    `outside_ip` is the sidecar's address on the egress side: pipelock listens there too, so an answer
    means the agent has a route out. `host_ip` is the internal network's gateway, the host itself.
    Unreachable means silence: an internal network drops what leaves it, so a connection that is
    refused (or accepted) within the timeout proves a path. A local TCP handshake is answered by the
    kernel within the connect() call itself, in well under a millisecond even on a loaded machine, so
    SILENCE seconds without an answer is a wide margin. The client is curl, else wget (busybox's too),
    else python3, else nc; whatever is not clearly silence counts as a path, so an unknown answer fails.
    """
    q = shlex.quote
    checks = [("proxy", f"proxy {q(f'http://{plan.sidecar}:{PROXY_PORT}/health')}"),
              ("outside", f"probe {q(f'http://{outside_ip}:{PROXY_PORT}/health')} {SILENCE}")]
    if host_ip:
        checks.append(("host", f"probe {q(f'http://{host_ip}:{PROXY_PORT}/')} {SILENCE}"))
    run = "\n".join(f'{call} > "$t/{name}" &' for name, call in checks)
    host_check = (f'read code rc < "$t/host"\n'
                  f'[ "$rc" = 28 ] || fail "the agent reached the host at {host_ip} without the proxy"\n'
                  if host_ip else "")
    return f"""\
fail() {{ echo "$*" >&2; rm -rf "$t"; exit 1; }}
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY
t=/tmp/.claude-bottle-self-test.$$
mkdir -m 0700 "$t" || fail "the agent cannot write to /tmp"
# bounded SECONDS COMMAND...: runs COMMAND, stopped after SECONDS (exit 143 then)
bounded() {{
  exec 3<&0
  s=$1; shift
  "$@" <&3 & p=$!
  (sleep "$s"; kill $p) >/dev/null 2>&1 & k=$!
  wait $p; r=$?
  kill $k 2>/dev/null
  return $r
}}
silent_if() {{ if [ "$1" = 143 ]; then echo "000 28"; else echo "000 7"; fi; }}
# probe URL TIMEOUT: prints the HTTP status (000: none) and an exit status (28: silence, 127: no client)
probe() {{
  if command -v curl >/dev/null 2>&1; then
    code=$(curl --noproxy '*' -s -o /dev/null -w '%{{http_code}}' --connect-timeout "$2" --max-time 3 "$1")
    echo "$code $?"
  elif command -v wget >/dev/null 2>&1; then
    # No -T and no -q: busybox's static wget crashes with either (Debian 1.35); the time limit is ours.
    if err=$(bounded "$2" wget -O /dev/null -t 1 "$1" 2>&1); then echo "200 0"; else silent_if $?; fi
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket, sys, urllib.request as u
try: print(u.build_opener(u.ProxyHandler({{}})).open(sys.argv[1], timeout=float(sys.argv[2])).status, 0)
except u.HTTPError as e: print(e.code, 0)
except Exception as e: print("000", 28 if isinstance(getattr(e, "reason", e), TimeoutError) else 7)' "$1" "$2"
  elif command -v nc >/dev/null 2>&1; then
    hp=${{1#http://}}; path=/${{hp#*/}}; hp=${{hp%%/*}}
    req=$(printf 'GET %s HTTP/1.0\\r\\n\\r' "$path")
    out=$(bounded "$2" nc "${{hp%:*}}" "${{hp##*:}}" 2>&1 <<EOF
$req
EOF
)
    rc=$?
    case $rc:$out in 143:*) echo "000 28" ;; *:"HTTP/"*) set -- $out; echo "$2 0" ;; *) echo "000 7" ;; esac
  else
    echo "000 127"
  fi
}}
# proxy URL: pipelock's health check, from the agent's side: poll until it answers (at most {HEALTH_TIMEOUT:.0f} s)
proxy() {{
  i=0
  while :; do
    set -- $(probe "$1" 2) "$1"
    if [ "$1" = 200 ] || [ "$2" = 127 ] || [ $i -ge {int(HEALTH_TIMEOUT / 0.05)} ]; then echo "$1 $2"; return; fi
    i=$((i + 1)); sleep 0.05; shift 2
  done
}}
{run}
wait
read code rc < "$t/proxy"
[ "$rc" != 127 ] || fail "{NO_CLIENT}"
[ "$code" = 200 ] || fail "{PROXY_SILENT}: no answer from {plan.sidecar} (HTTP $code)"
read code rc < "$t/outside"
[ "$rc" = 28 ] || fail "the agent reached {outside_ip} directly, without the proxy: it has a route out"
{host_check}rm -rf "$t"
echo "{SELF_TEST_PASSED}"
touch {GATE_FILE}
"""


# apt-get in a running session, as root in the agent's container (the agent itself never is): "$@" are packages
# that passed check_package. 127 when the image has no apt-get.
INSTALL_SCRIPT = ('command -v apt-get >/dev/null 2>&1 || exit 127\n'
                  'apt-get update -q && exec apt-get install -y -q --no-install-recommends "$@"\n')


def planned_commands(plan: Plan) -> list:
    """(argv, note) of every engine command a start runs, its teardown included: the real steps of a start, run
    against an engine that records each command instead of running it (RecordingEngine)."""
    return record_start(plan).calls


def plan_json(plan: Plan) -> dict:
    data = plan._asdict()
    data["ssh"] = [s._asdict() for s in plan.ssh]
    data["brokered"] = [{**ep._asdict(), "line": brokered_text(ep)} for ep in plan.brokered]
    data["identity"] = plan.identity._asdict()
    data["limits"] = {**plan.limits._asdict(), "set_by": dict(plan.limits.set_by), "agent_pids": AGENT_PIDS_LIMIT}
    data.update(
        version=__version__,
        containers={"agent": plan.agent_container, "pipelock": plan.sidecar},
        networks={"internal": plan.internal_network, "egress": plan.egress,
                  "created": [n for n, _ in plan.created_networks]},
        egress_line=egress_line(plan.hosts),
        files={"pipelock/pipelock.yaml": render_pipelock_yaml(plan), "ssh_config": render_ssh_config(plan)},
        docker_commands=[{"argv": ["docker", *argv], "note": note} for argv, note in planned_commands(plan)],
    )
    return data


# Events of pipelock's DLP: a request refused (or, with action warn, let through) because a secret was in it.
DLP_EVENTS = ("header_dlp", "body_dlp")
DLP_SCANNERS = ("dlp", "core_dlp")
WITHHELD = "[withheld]"


def _is_dlp(event: dict) -> bool:
    return event.get("event") in DLP_EVENTS or (event.get("event") == "blocked"
                                                 and event.get("scanner") in DLP_SCANNERS)


def _withhold_url(url: str) -> str:
    """`http://web:8000/[withheld]`: scheme, host and port, never the path, query or user info that held the
    secret."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return WITHHELD
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/{WITHHELD}" if parts.scheme and host else WITHHELD


def parse_events(text: str) -> list:
    """pipelock's audit log: JSON lines on stdout; anything else (banners) is skipped. pipelock 2.3.0 logs a URL
    its core DLP refused as it came, secret included: that URL is cut down here, before anything can print it."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                if _is_dlp(event) and isinstance(event.get("url"), str):
                    event["url"] = _withhold_url(event["url"])
                events.append(event)
    return events


def blocked_by(event: dict) -> tuple | None:
    """(scanner, reason) of a refused request, else None. DLP refusals all count as scanner `dlp`."""
    kind = event.get("event")
    if kind == "blocked":
        scanner = str(event.get("scanner", ""))
        return ("dlp" if scanner in DLP_SCANNERS else scanner), str(event.get("reason", ""))
    error = str(event.get("error", ""))
    if kind == "error" and "SSRF blocked: " in error:
        # pipelock's dialer refuses an internal address of an untrusted host whatever `enforce` says: in learn mode
        # this request error, after an `anomaly`, is the refusal.
        return "ssrf", error[error.index("SSRF blocked: "):]
    if kind in DLP_EVENTS and event.get("action") == "block":
        patterns = event.get("patterns")
        found = ", ".join(map(str, patterns)) if isinstance(patterns, list) and patterns else "a secret"
        where = f"request header {event.get('header', '')}".rstrip() if kind == "header_dlp" else "request body"
        return "dlp", f"secret in the {where}: {found}"
    return None


def event_host(event: dict) -> str | None:
    if event.get("target"):
        return str(event["target"]).rsplit(":", 1)[0].strip("[]").lower() or None
    if event.get("url"):
        from urllib.parse import urlsplit
        try:
            return urlsplit(str(event["url"])).hostname
        except ValueError:
            return None
    return None


def unresolved(reason: str) -> bool:
    """pipelock's SSRF check also refuses a name that does not resolve (same scanner); only its reason tells."""
    return "DNS resolution error" in reason


def egress_report(events) -> dict:
    """Hosts reached (with counts), requests blocked (host, scanner, reason, count), and in learn mode the
    requests pipelock let through that it would have blocked (its `anomaly` events for a request)."""
    reached, blocked, would = {}, {}, {}
    for event in events:
        host = event_host(event)
        if host is None:
            continue
        refused = blocked_by(event)
        if event["event"] in ("tunnel_open", "forward_http"):
            reached[host] = reached.get(host, 0) + 1
        elif refused:
            key = (host, *refused)
            blocked[key] = blocked.get(key, 0) + 1
        elif event["event"] == "anomaly":
            key = (host, str(event.get("scanner", "")), str(event.get("reason", "")))
            would[key] = would.get(key, 0) + 1
    report = {
        "reached": [{"host": h, "count": n} for h, n in sorted(reached.items())],
        "blocked": [{"host": h, "scanner": sc, "reason": r, "count": n} for (h, sc, r), n in sorted(blocked.items())],
    }
    if would:
        report["would_block"] = [{"host": h, "scanner": sc, "reason": r, "count": n}
                                 for (h, sc, r), n in sorted(would.items())]
    return report


def learned_trusted(report: dict) -> list:
    """Learn mode: the hosts the session tried that pipelock refused, or would have, as private addresses."""
    return sorted({w["host"] for w in (*report.get("would_block", []), *report["blocked"])
                   if w["scanner"] == "ssrf" and not unresolved(w["reason"])})


def learned_allow(report: dict) -> list:
    """Learn mode's proposal: the allow entries (presets first) that cover every host the session tried: reached,
    let through against the allowlist, or refused as a private address (which the allowlist cannot fix alone)."""
    used = [*(r["host"] for r in report["reached"]), *(w["host"] for w in report.get("would_block", [])),
            *(b["host"] for b in report["blocked"] if b["scanner"] == "ssrf")]
    presets, hosts = propose_allow(list(dict.fromkeys(used)), DEFAULT_HOSTS, PRESETS)
    return [*presets, *hosts]


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


# What the report and `logs` say of plain HTTP in "tunnel" mode: pipelock sees a CONNECT, never the request.
PLAIN_HTTP_PER_TUNNEL = ('plain HTTP (plain_http = "tunnel") is counted per CONNECT tunnel, one a request, '
                         'without its URL')


def render_report(plan: Plan, report: dict) -> list:
    """The egress report; `report["live"]` (when present) holds the hosts allowed and denied while it ran."""
    lines = [f"claude-bottle: egress report for session {plan.session}"]
    reached = ", ".join(f"{r['host']} ({r['count']})" for r in report["reached"])
    lines.append(f"  reached: {reached or 'nothing'}")
    if reached and plan.plain_http == PLAIN_HTTP_TUNNEL:
        lines.append(f"  {PLAIN_HTTP_PER_TUNNEL}")
    for b in report.get("brokered", ()):
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(b["status"].items()))
        lines.append(f"  brokered: {b['env']} -> {b['host']}: {b['requests']} request"
                     f"{'' if b['requests'] == 1 else 's'}" + (f" ({codes})" if codes else ""))
    where = f"{plan.config_path or CONFIG_NAME}, under [bottles.{plan.bottle}]"
    live = report.get("live") or {}
    added, removed = live.get("added", []), live.get("denied", [])
    allow_now = [*(e for e in plan.bottle_allow if e not in removed), *added]
    hosts_now = live.get("hosts") or plan.hosts
    if added or removed:
        lines.append(f"  changed live: allowed {', '.join(added) or 'nothing'}; "
                     f"denied {', '.join(removed) or 'nothing'}")
        lines.append(f"  to keep these changes, set in {where}:")
        lines.append(f"    allow = {_toml_list(allow_now)}")
    if plan.learn:
        scanners = {}
        for w in report.get("would_block", []):
            scanners.setdefault(w["host"], []).append(w["scanner"])
        would = ", ".join(f"{h} ({', '.join(sorted(set(sc)))})" for h, sc in scanners.items())
        lines.append(f"  learn mode: the allowlist refused nothing; it would have refused: {would or 'nothing'}")
        lines.append(f"  the allow list this session needed (defaults need no entry), set in {where}:")
        lines.append(f"    allow = {_toml_list(report.get('proposed', learned_allow(report)))}")
        private = [h for h in learned_trusted(report) if h not in plan.trusted]
        if private:
            lines.append(f"  {', '.join(private)} resolved to private addresses; to reach them, also set:")
            lines.append(f"    trusted = {_toml_list([*plan.trusted, *private])}")
    if not report["blocked"]:
        lines.append("  blocked: nothing")
        return lines
    for i, b in enumerate(report["blocked"]):
        head = "blocked: " if i == 0 else " " * 9
        lines.append(f"  {head}{b['host']} ({b['count']}) {b['scanner']}: {b['reason']}")
    # WARNING: no `trusted` for these: it would weaken the bottle and fix nothing, the name did not resolve at all.
    unknown = sorted({b["host"] for b in report["blocked"] if b["scanner"] == "ssrf" and unresolved(b["reason"])})
    if unknown:
        lines.append(f"  {', '.join(unknown)} did not resolve (offline, a typo, or no such name): "
                     "no config change fixes that")
    if plan.learn:
        return lines  # the learn-mode lines above already say what to allow and trust
    valid = []
    for b in report["blocked"]:
        try:
            host = check_host(b["host"], "blocked host", wildcard=False)
        except ConfigError:
            continue
        valid.append((host, "dns" if b["scanner"] == "ssrf" and unresolved(b["reason"]) else b["scanner"]))
    # Only the allowlist and the SSRF check have a fix in the config; a DLP refusal or a rate limit has none.
    denied = sorted({h for h, _ in valid if not any(host_matches(p, h) for p in hosts_now)})
    untrusted = sorted({h for h, sc in valid if sc == "ssrf" and h not in denied
                        and not any(host_matches(t, h) for t in plan.trusted)})
    if denied:
        lines.append(f"  to allow {', '.join(denied)}, set in {where}:")
        lines.append(f"    allow = {_toml_list([*allow_now, *denied])}")
    if untrusted:
        lines.append(f"  to let {', '.join(untrusted)} resolve to private addresses, set in {where}:")
        lines.append(f"    trusted = {_toml_list([*plan.trusted, *untrusted])}")
    if (denied or untrusted) and plan.bottle == DEFAULT_BOTTLE and plan.config_path is None:
        lines.append(f"  (no config file yet: create {CONFIG_NAME} with that table)")
    return lines


# ---- Output and the runtime context ----

def say(text: str, file=None) -> None:
    """Print a line; a closed or full stream (`| head`, a full disk) never stops the caller."""
    try:
        print(text, file=file or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def warn(message: str) -> None:
    say(f"claude-bottle: warning: {message}")


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a setup call still running when a signal arrives may go on before it is killed.
SIGNAL_GRACE = 10.0


def _seconds(environ, name: str, default: float) -> float:
    text = environ.get(name) or ""
    try:
        value = float(text) if text else default
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400 * 7:
        raise ConfigError(f"{name}: {_printable(text)} is not a number of seconds; set it to e.g. {default:g}, "
                          f"or unset it")
    return value


class Context:
    """The state of one run of the CLI, made in `main`: verbosity, the signal that arrived (the handler only notes
    the first one; the code that waits acts on it), and the time limits read from the environment."""

    def __init__(self, environ=None, verbose: bool = False):
        environ = os.environ if environ is None else environ
        self.verbose = verbose
        self.started = time.monotonic()
        self.signalled, self.signalled_at = 0, 0.0
        # How long one teardown call may take before claude-bottle stops waiting for an engine that does not
        # answer. An engine tearing down 64 sessions at once on 2 CPUs took up to 40 s for one `network rm`: busy is
        # not hung.
        self.teardown_timeout = _seconds(environ, "CLAUDE_BOTTLE_TEARDOWN_TIMEOUT", 120.0)
        # How long `allow` and `deny` wait for pipelock to confirm a reload (it debounces its directory watch by
        # 100 ms).
        self.reload_timeout = _seconds(environ, "CLAUDE_BOTTLE_RELOAD_TIMEOUT", 10.0)
        self.signal_grace = SIGNAL_GRACE

    def note_signal(self, signum, frame=None) -> None:
        if not self.signalled:
            self.signalled, self.signalled_at = signum, time.monotonic()

    def check_signal(self) -> None:
        """Unwind (teardown runs on the way out) once SIGINT, SIGTERM or SIGHUP has arrived."""
        if self.signalled:
            raise Interrupted(self.signalled)

    def pause(self, seconds: float) -> None:
        """Sleep, but stop at once when a signal has arrived."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_signal()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def log(self, message: str) -> None:
        if self.verbose:
            say(f"claude-bottle: [{time.monotonic() - self.started:6.2f}s] {message}")


# ---- The engine seam: the only code that knows an engine's commands, output and error text ----

class EngineUnavailable(BottleError):
    """No engine CLI, or no engine answering it."""


class EngineTimeout(BottleError):
    """An engine command did not finish in time (a hung engine), and was killed."""

    def __init__(self, command, seconds: float):
        self.command = command
        super().__init__(f"`{shlex.join(command)}` did not finish within {seconds:.0f} s; the engine may be hung")


class EngineError(BottleError):
    """The engine refused or failed an operation. `kind` is all the code outside the seam reads: "gone" (no such
    container, network or volume), "not_running", "subnet_taken", "no_program" (the image has no such program as
    the one to run) or "failed". The message shows the command, its exit status and the engine's own words."""

    def __init__(self, kind: str, command, returncode: int, stderr: str):
        self.kind, self.command, self.returncode, self.stderr = kind, command, returncode, stderr
        detail = "; ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
        super().__init__(f"`{shlex.join(command)}` failed (exit {returncode}): {detail or 'no output'}")


# The labels `ls`, `gc` and `stop` read.
SESSION_KEYS = ("session", "role", "agent", "bottle", "owner", "owner-start", "owner-proof", "owner-dir",
                "workspace", "mode")


class Completed(namedtuple("Completed", "status stdout stderr")):
    """A command's exit status and output, as text."""

    __slots__ = ()


class Resource(namedtuple("Resource", "kind name state labels created")):
    """A container or network of a session: kind "container" or "network", its state ("running", "exited", ...;
    "" for a network), its labels and when it was created (POSIX time, or None)."""

    __slots__ = ()


class ContainerState(namedtuple("ContainerState", "status exit_code oom_killed")):
    """A container's state: "running", "exited", ...; its exit status; whether the kernel killed a process of it
    for memory (at its limit)."""

    __slots__ = ()


class Engine:
    """What a session needs of a container engine. Code outside the engine speaks in specs (ContainerSpec,
    NetworkSpec, VolumeSpec), names and records, and reads errors by EngineError.kind; only an engine knows its
    CLI, its output formats and its error text. DockerEngine is the one in use; RecordingEngine is DockerEngine
    recording instead of running, for the dry run.

    Reads:  version, capacity, image_id, network_exists, volume_exists, volume_holders, resources, volumes, address,
            container_state, watch, logs, follow_logs, routes.
    Writes: pull, build, create_network, create_volume, run (a one-off container, to its end), run_detached,
            create, start_attached, connect, exec, copy_in, update_files, remove.
    """

    name = "engine"
    # True for an engine that runs nothing (a dry run): the host-side writes of a start are skipped with it.
    dry_run = False
    # The step the engine is working for, for the dry run's notes and -v.
    note = ""


class DockerEngine(Engine):
    """The Docker CLI. `shares_files`: the engine sees this machine's files (a local engine), so the Files a
    container needs are bind mounts of the private dir; otherwise each is copied in through the engine, into a
    volume of the session's own (a directory) or the container's own filesystem (a file)."""

    name = "docker"

    def __init__(self, ctx: Context, shares_files: bool = True, program: str = "docker"):
        self.ctx, self.shares_files, self.program = ctx, shares_files, program
        # Whether any command has got through; until one has, nothing can have been created.
        self.answered = False

    # -- Running the CLI: every docker command goes through `call` or `popen` --

    def call(self, argv, *, input: bytes | None = None, capture: bool = True, timeout: float | None = None,
             check: bool = True, input_stream=None, binary: bool = False) -> Completed:
        """Run `docker ARGV`: raise EngineError on failure when `check`. Output is text when captured (bytes with
        `binary`). `input_stream(file)` writes stdin as it goes (a tar of any size), from a thread of its own.

        The call runs in a session of its own, so a Ctrl-C at the terminal never kills it half-way: the CLI
        decides. It ends after `timeout` seconds, or SIGNAL_GRACE seconds after a signal when it has no timeout of
        its own, with EngineTimeout; what it was creating may then exist or not.
        """
        import subprocess
        command = [self.program, *argv]
        self.ctx.log(f"+ {shlex.join(command)}")
        try:
            # Not captured: its output goes to the terminal as it comes, stderr too (BuildKit's progress), and stderr
            # is also kept for the error.
            proc = subprocess.Popen(command, stdin=subprocess.PIPE if input is not None or input_stream else
                                    subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if capture else sys.stderr,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise EngineUnavailable(self.missing()) from None
        kept, streamed = None, None
        if input_stream is not None:
            # stdin from one thread, stdout and stderr read by two more: a pipe never fills up and stops the rest.
            streamed = ([], [])
            threads = [threading.Thread(target=_feed, args=(input_stream, proc.stdin), daemon=True)]
            threads += [threading.Thread(target=lambda s=stream, k=sink: k.append(s.read()), daemon=True)
                        for stream, sink in zip((proc.stdout, proc.stderr), streamed)]
            for t in threads:
                t.start()
        elif not capture:
            kept = []
            reader = threading.Thread(target=_tee, args=(proc.stderr, kept), daemon=True)
            reader.start()
            if input is not None:
                try:
                    proc.stdin.write(input)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                input = None
        started, ctx = time.monotonic(), self.ctx
        while True:
            try:
                if kept is None and streamed is None:
                    out, err = proc.communicate(input, timeout=0.1)
                else:
                    proc.wait(timeout=0.1)
                    out, err = b"", None
                break
            except subprocess.TimeoutExpired:
                input = None  # sent already; communicate() goes on from where it stopped
                now = time.monotonic()
                late = timeout is None and ctx.signalled and now - ctx.signalled_at > ctx.signal_grace
                if late or (timeout is not None and now - started > timeout):
                    proc.kill()
                    if kept is None and streamed is None:
                        proc.communicate()
                    else:
                        proc.wait()
                    raise EngineTimeout(command, now - started) from None
        if kept is not None:
            reader.join(timeout=5)
            err = b"".join(kept)
        if streamed is not None:
            for t in threads:
                t.join(timeout=5)
            out, err = b"".join(streamed[0]), b"".join(streamed[1])
        err = (err or b"").decode(errors="replace")
        if "Cannot connect to the Docker daemon" in err:
            raise EngineUnavailable(f"docker: the daemon does not answer ({err.strip().splitlines()[-1]}); start "
                                    f"Docker and try again")
        self.answered = True
        if check and proc.returncode != 0:
            raise self.error(command, proc.returncode, err)
        return Completed(proc.returncode, (out or b"") if binary else (out or b"").decode(errors="replace"), err)

    def popen(self, argv, **kwargs):
        """Start `docker ARGV` without waiting, in this terminal's session: attached agents and followed logs."""
        import subprocess
        command = [self.program, *argv]
        self.ctx.log(f"+ {shlex.join(command)}")
        try:
            return subprocess.Popen(command, **kwargs)
        except FileNotFoundError:
            raise EngineUnavailable(self.missing()) from None

    def missing(self) -> str:
        return (f"{self.program}: command not found; install Docker (https://docs.docker.com/engine/install/) and "
                f"make sure `{self.program}` is on PATH")

    @staticmethod
    def error(command, status: int, stderr: str) -> EngineError:
        """The engine's failure, sorted by its words into an EngineError kind."""
        if stderr.strip() and _only_missing(stderr):
            kind = "gone"
        elif "is not running" in stderr:
            kind = "not_running"
        elif "overlap" in stderr:
            kind = "subnet_taken"
        else:
            kind = "failed"
        return EngineError(kind, command, status, stderr)

    # -- Argv: pure functions of the specs --

    @staticmethod
    def mount_value(kind: str, source: str, target: str, readonly: bool = False) -> str:
        """A `--mount` value; docker reads it as CSV, so quote fields holding a comma or a quote."""
        fields = [f"type={kind}", f"source={source}", f"target={target}"] + (["readonly"] if readonly else [])
        return ",".join(f'"{f.replace(chr(34), chr(34) * 2)}"' if ("," in f or '"' in f) else f for f in fields)

    def files_volume(self, spec: ContainerSpec, files: Files) -> str:
        """The volume a directory of Files is copied into, where the engine does not share this machine's files."""
        return f"{spec.name}-{os.path.basename(files.source)}"

    def mount_args(self, spec: ContainerSpec, m) -> list:
        if isinstance(m, Files):
            if self.shares_files:
                return ["--mount", self.mount_value("bind", m.source, m.target, m.readonly)]
            if m.kind == "dir":
                # Writable by the container's root only where it is meant to be: the files' owners say the rest.
                return ["--mount", self.mount_value("volume", self.files_volume(spec, m), m.target)]
            return []  # copied into the container's own filesystem once it exists
        if m.kind == "tmpfs":
            return ["--tmpfs", f"{m.target}:{m.options}" if m.options else m.target]
        return ["--mount", self.mount_value(m.kind, m.source, m.target, m.readonly)]

    def container_args(self, spec: ContainerSpec) -> list:
        argv = ["--name", spec.name] if spec.name else []
        argv += [a for k, v in spec.labels.items() for a in ("--label", f"{k}={v}")] if spec.labels else []
        argv += ["--network", spec.network or "none", *(["--ip", spec.ip] if spec.ip else [])]
        if spec.no_outside_dns:
            # The embedded resolver may forward only to the container's own loopback, where nothing listens: no DNS
            # path out whatever the engine version (CVE-2024-29018). The names docker itself knows still resolve.
            argv += ["--dns", "127.0.0.1", "--dns-option", "timeout:1", "--dns-option", "attempts:1"]
        argv += ["--user", spec.user] if spec.user else []
        argv += ["--read-only"] if spec.read_only else []
        argv += ["--log-driver", "none"] if spec.no_logs else []
        argv += ["--cap-drop", "ALL", *(a for c in spec.cap_add for a in ("--cap-add", c))]
        argv += ["--security-opt", "no-new-privileges"]
        argv += ["--pids-limit", str(spec.pids_limit)] if spec.pids_limit else []
        # The same for --memory-swap: no swap on top of the limit.
        argv += ["--memory", size_text(spec.memory), "--memory-swap", size_text(spec.memory)] if spec.memory else []
        argv += ["--cpus", f"{spec.cpus:g}"] if spec.cpus else []
        argv += ["--init"] if spec.init else []
        argv += ["--interactive"] if spec.interactive else []
        argv += ["--tty"] if spec.tty else []
        argv += ["--workdir", spec.workdir] if spec.workdir else []
        argv += [a for m in spec.mounts for a in self.mount_args(spec, m)]
        argv += [a for name, value in spec.env for a in ("--env", name if value is None else f"{name}={value}")]
        argv += ["--entrypoint", spec.entrypoint] if spec.entrypoint else []
        return [*argv, spec.image, *spec.command]

    def run_argv(self, spec: ContainerSpec) -> list:
        return ["run", *(["--rm"] if spec.remove else []), *self.container_args(spec)]

    def run_detached_argv(self, spec: ContainerSpec) -> list:
        return ["run", "--detach", *self.container_args(spec)]

    def create_argv(self, spec: ContainerSpec) -> list:
        return ["create", *self.container_args(spec)]

    def network_create_argv(self, spec: NetworkSpec) -> list:
        labels = [a for k, v in spec.labels.items() for a in ("--label", f"{k}={v}")]
        if not spec.internal:
            return ["network", "create", "--subnet", spec.subnet, *labels, spec.name]
        # WARNING: an internal network still puts its gateway address on a host bridge, and the agent can
        # reach every host service listening on 0.0.0.0 through it. No address on the bridge, no host.
        return ["network", "create", "--internal", "--opt", "com.docker.network.bridge.inhibit_ipv4=true",
                "--subnet", spec.subnet, *labels, spec.name]

    def build_argv(self, tag: str, build_args=(), labels=None) -> list:
        args = [a for k, v in build_args for a in ("--build-arg", f"{k}={v}")]
        labels = [a for k, v in (labels or {}).items() for a in ("--label", f"{k}={v}")]
        # --force-rm: a step that fails (an installer that cannot be fetched) leaves no stopped container behind.
        return ["build", *args, "--force-rm", "--tag", tag, *labels, "-"]

    def remove_argv(self, kind: str, names) -> list:
        return {"container": ["rm", "--force"], "network": ["network", "rm"], "volume": ["volume", "rm"]}[kind] + \
            list(names)

    def exec_argv(self, container: str, argv, user: str | None = None, workdir: str | None = None, env=()) -> list:
        opts = [*(["--user", user] if user else []), *(["--workdir", workdir] if workdir else [])]
        opts += [a for name, value in env for a in ("--env", f"{name}={value}")]
        return ["exec", *opts, container, *argv]

    # The labels `ls`, `gc` and `stop` read, each one asked for by name. Only the fields needed: `{{json .}}` would
    # make `docker ps` compute every container's size, which takes seconds on some storage drivers.
    @staticmethod
    def _listing(name: str, state: str) -> str:
        labels = ",".join(f'"{k}":{{{{json (.Label "{LABEL}.{k}")}}}}' for k in SESSION_KEYS)
        return f'{{"name":{{{{json .{name}}}}},"state":{state},{labels},"created":{{{{json .CreatedAt}}}}}}'

    def resources_argvs(self, session: str | None = None) -> list:
        flt = ["--filter", f"label={SESSION_LABEL}" + (f"={session}" if session else "")]
        return [["ps", "--all", "--format", self._listing("Names", "{{json .State}}"), *flt],
                ["network", "ls", "--format", self._listing("Name", '""'), *flt]]

    # -- Reads --

    def version(self) -> str:
        """The engine's version; EngineUnavailable when it does not answer."""
        r = self.call(["version", "--format", "{{.Server.Version}}"], check=False)
        if r.status != 0 or not r.stdout.strip():
            raise EngineUnavailable(f"does not answer: {r.stderr.strip()[-200:]}; start it, or check DOCKER_HOST")
        return r.stdout.strip()

    @staticmethod
    def leaks_dns(version: str) -> bool:
        """Engines before 25.0.5 forwarded DNS for internal networks (CVE-2024-29018)."""
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
        return parts < (25, 0, 5)

    def checks(self) -> list:
        """`doctor`'s checks of the engine itself: (ok, what, detail), stopping at the first that fails."""
        import shutil
        path = shutil.which(self.program)
        checks = [(bool(path), "docker CLI", path or "not found; install Docker")]
        if not path:
            return checks
        try:
            version = self.version()
        except EngineUnavailable as e:
            return [*checks, (False, "docker daemon", str(e))]
        return [*checks, (True, "docker daemon", f"answers (engine {version})"),
                (True, "engine DNS", "internal networks forward outside DNS on this engine (CVE-2024-29018); the "
                 "agent's --dns 127.0.0.1 keeps it off that path" if self.leaks_dns(version) else
                 "internal networks do not forward outside DNS")]

    def capacity(self) -> tuple | None:
        """(CPUs, bytes of memory) the engine has; None when it does not say."""
        r = self.call(["info", "--format", "{{json .NCPU}} {{json .MemTotal}}"], check=False)
        try:
            ncpu, memory = (int(v) for v in r.stdout.split())
        except ValueError:
            return None
        return (ncpu, memory) if ncpu > 0 and memory > 0 else None

    def container_state(self, container: str) -> ContainerState | None:
        """The container's state, or None when it is gone."""
        argv = ["container", "inspect", "--format", "{{json .State}}", container]
        r = self.call(argv, check=False)
        if r.status != 0:
            if _only_missing(r.stderr):
                return None
            raise self.error([self.program, *argv], r.status, r.stderr)
        try:
            state = json.loads(r.stdout)
        except ValueError:
            return None
        if not isinstance(state, dict):
            return None
        return ContainerState(str(state.get("Status", "")), int(state.get("ExitCode") or 0),
                              state.get("OOMKilled") is True)

    def watch(self, container: str):
        """A process that ends when the container stops (or the engine stops answering); the caller kills it."""
        import subprocess
        return self.popen(["wait", container], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)

    def image_id(self, image: str) -> str | None:
        r = self.call(["image", "inspect", "--format", "{{.Id}}", image], check=False)
        return r.stdout.strip() if r.status == 0 else None

    def network_exists(self, name: str) -> bool:
        return self.call(["network", "inspect", "--format", "{{.Name}}", name], check=False).status == 0

    def volume_exists(self, name: str) -> bool:
        return self.call(["volume", "inspect", "--format", "{{.Name}}", name], check=False).status == 0

    def volume_holders(self, volume: str) -> list:
        """The containers of a session that is starting or running which mount `volume`."""
        # Same-key filters are alternatives.
        states = [a for st in ("created", "running", "paused", "restarting") for a in ("--filter", f"status={st}")]
        argv = ["ps", "--all", "--filter", f"volume={volume}", *states, "--format", "{{.Names}}"]
        return self.call(argv).stdout.split()

    def resources(self, session: str | None = None) -> list:
        """Every container and network labelled with a session (or with the one named), as Resource records."""
        found = []
        for kind, argv in zip(("container", "network"), self.resources_argvs(session)):
            for line in self.call(argv).stdout.splitlines():
                item = json.loads(line)
                labels = {f"{LABEL}.{k}": item.get(k) or "" for k in SESSION_KEYS}
                found.append(Resource(kind, item["name"], item["state"], labels, _created(item["created"])))
        return found

    def volumes(self, label: str, value: str | None = None, keys=()) -> list:
        """Volumes labelled `label` (=`value`), each as {"name": ..., key: that label's value} for `keys`."""
        flt = ["--filter", f"label={label}" + (f"={value}" if value is not None else "")]
        if not keys:
            return [{"name": n} for n in self.call(["volume", "ls", "--quiet", *flt]).stdout.split()]
        fields = ",".join(f'"{k}":{{{{json (.Label "{LABEL}.{k}")}}}}' for k in keys)
        argv = ["volume", "ls", *flt, "--format", f'{{"name":{{{{json .Name}}}},{fields}}}']
        return [json.loads(line) for line in self.call(argv).stdout.splitlines()]

    def address(self, container: str, network: str) -> str | None:
        """The container's address on `network`; None when it has none (it has exited)."""
        r = self.call(["inspect", "--format", "{{json .NetworkSettings.Networks}}", container])
        return (json.loads(r.stdout or "{}").get(network) or {}).get("IPAddress") or None

    def logs(self, container: str, tail: int | None = None, timeout: float | None = None) -> Completed:
        argv = ["logs", *(["--tail", str(tail)] if tail else []), container]
        return self.call(argv, check=False, timeout=timeout)

    def follow_logs(self, container: str, since: str | None = None, follow: bool = True):
        """A process whose stdout is the container's log from `since` (a POSIX time as text), kept open when
        `follow`; the caller kills it."""
        import subprocess
        argv = ["logs", *(["--follow"] if follow else []), *(["--since", since] if since else []), container]
        return self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def routes(self) -> list:
        """Networks this machine routes to, which a session's subnet must not hide (the engine runs here)."""
        return host_routes()

    # -- Writes --

    def pull(self, image: str) -> None:
        self.call(["pull", image], capture=False)

    def build(self, tag: str, dockerfile: str, build_args=(), labels=None) -> None:
        self.call(self.build_argv(tag, build_args, labels), input=dockerfile.encode(), capture=False)

    def create_network(self, spec: NetworkSpec) -> None:
        """EngineError "subnet_taken" when another network has that subnet (the engine checks atomically)."""
        self.call(self.network_create_argv(spec))

    def create_volume(self, spec: VolumeSpec) -> None:
        labels = [a for k, v in spec.labels.items() for a in ("--label", f"{k}={v}")]
        self.call(["volume", "create", *labels, spec.name])

    def file_volumes(self, spec: ContainerSpec) -> list:
        """The volumes `create` makes for a container's directories of Files (none where files are shared)."""
        if self.shares_files:
            return []
        return [self.files_volume(spec, m) for m in spec.mounts if isinstance(m, Files) and m.kind == "dir"]

    def run(self, spec: ContainerSpec, timeout: float | None = None, input_stream=None,
            binary: bool = False) -> Completed:
        """A one-off container, to its end: its exit status and output (bytes with `binary`); `input_stream(file)`
        writes its stdin. EngineError "no_program" when the image has no such program as its entrypoint."""
        r = self.call(self.run_argv(spec), check=False, timeout=timeout, input_stream=input_stream, binary=binary)
        if r.status in (126, 127) or (r.status and spec.entrypoint and f'"{spec.entrypoint}"' in r.stderr):
            raise EngineError("no_program", [self.program, *self.run_argv(spec)], r.status, r.stderr)
        return r

    def create(self, spec: ContainerSpec) -> None:
        for volume in self.file_volumes(spec):
            self.create_volume(VolumeSpec(volume, spec.labels))
        self.call(self.create_argv(spec))
        self.deliver(spec)

    def run_detached(self, spec: ContainerSpec) -> None:
        if self.shares_files:
            self.call(self.run_detached_argv(spec))
            return
        self.create(spec)
        self.call(["start", spec.name])

    def start_attached(self, container: str, capture: bool = False):
        """Start a created container attached to this terminal; the process handle's status is the container's.
        With `capture`, its output comes to a pipe (`.stdout`) instead."""
        import subprocess
        return self.popen(["start", "--attach", "--interactive", container],
                          **({"stdout": subprocess.PIPE} if capture else {}))

    def connect(self, container: str, network: str, ip: str | None = None) -> None:
        self.call(["network", "connect", *(["--ip", ip] if ip else []), network, container])

    def exec(self, container: str, argv, user: str | None = None, workdir: str | None = None, env=(),
             capture: bool = True, timeout: float | None = None) -> Completed:
        """Run `argv` in a running container: its exit status and output. EngineError "gone" or "not_running"
        when the container is not there to run it."""
        command = self.exec_argv(container, argv, user, workdir, env)
        r = self.call(command, check=False, capture=capture, timeout=timeout)
        if r.status and ("is not running" in r.stderr or "No such container" in r.stderr):
            raise self.error([self.program, *command], r.status, r.stderr)
        return r

    def copy_in(self, container: str, path: str, tar: bytes) -> None:
        """Unpack a tar archive at `path` in a container (created or running), owners and modes as the tar says."""
        self.call(["cp", "-", f"{container}:{path}"], input=tar)

    def deliver(self, spec: ContainerSpec) -> None:
        """Copy a created container's Files in, where the engine does not share this machine's files."""
        if self.shares_files:
            return
        for m in spec.mounts:
            if isinstance(m, Files):
                self.copy_in(spec.name, m.target if m.kind == "dir" else os.path.dirname(m.target), files_tar(m))

    def update_files(self, container: str, files: Files) -> None:
        """Files changed on this machine reach the container: at once through a bind mount, else a copy."""
        if not self.shares_files:
            self.copy_in(container, files.target if files.kind == "dir" else os.path.dirname(files.target),
                         files_tar(files))

    def remove(self, kind: str, names, timeout: float | None = None) -> None:
        """Remove containers (running or not), networks or volumes; one that is gone already counts as removed."""
        if names:
            r = self.call(self.remove_argv(kind, names), check=False, timeout=timeout)
            if r.status != 0 and not _only_missing(r.stderr):
                raise EngineError("failed", [self.program, *self.remove_argv(kind, names)], r.status, r.stderr)


def files_tar(files: Files) -> bytes:
    """Files as a tar archive, owners and modes as the container must see them: read-only ones root's (0755 dirs,
    0644 files), writable ones uid:gid's alone (0700, 0600). A directory's own entry is "." (its owner and mode)."""
    import io
    import tarfile
    uid, gid, dmode, fmode = (0, 0, 0o755, 0o644) if files.readonly else (files.uid, files.gid, 0o700, 0o600)
    if files.kind == "dir":
        entries = [(".", None), *((n, os.path.join(files.source, n)) for n in sorted(os.listdir(files.source))
                                  if os.path.isfile(os.path.join(files.source, n)))]
    else:
        entries = [(os.path.basename(files.target), files.source)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mtime = uid, gid, int(time.time())
            if path is None:
                info.type, info.mode = tarfile.DIRTYPE, dmode
                tar.addfile(info)
                continue
            data = Path(path).read_bytes()
            info.size, info.mode = len(data), fmode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _feed(write, stdin) -> None:
    """Write a command's stdin with `write(file)`; a command that stops reading ends it quietly."""
    try:
        write(stdin)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            stdin.close()
        except (BrokenPipeError, OSError):
            pass


def _tee(stream, kept: list) -> None:
    """Copy `stream` to our stderr line by line as it comes, keeping what passed."""
    for line in iter(stream.readline, b""):
        kept.append(line)
        try:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
    stream.close()


def _only_missing(stderr: str) -> bool:
    """True when every complaint in `stderr` is that the thing to remove is already gone.

    `docker network rm A B` with one of them gone says so, and (CLI 28 against an older engine) ends with an
    `exit status 1` line of its own: that line is no complaint.
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not re.fullmatch(r"exit status \d+", ln.strip())]
    return all(re.search(r"no such (container|network|volume)|not found", ln, re.I) for ln in lines)


def _created(text: str) -> float | None:
    """docker's CreatedAt, e.g. `2026-11-27 08:04:44.123456 +0000 UTC`, as a POSIX time."""
    from datetime import datetime
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ([+-]\d{4})", text or "")
    return datetime.strptime(" ".join(m.groups()), "%Y-%m-%d %H:%M:%S %z").timestamp() if m else None


class _Exited:
    """The handle of an agent a dry run never started: it has already exited, with status 0."""

    returncode = 0

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0

    def kill(self):
        pass


class RecordingEngine(DockerEngine):
    """The dry run's engine: each operation records the docker command DockerEngine would run for it, with the
    note of the step it serves, and runs nothing. Reads answer as the plan expects a new session's engine to:
    every image there but `missing_images` (a build is planned), no session, no state volume yet, and a self-test
    that passes."""

    dry_run = True

    def __init__(self, ctx: Context | None = None, missing_images=()):
        super().__init__(ctx or Context({}))
        self.missing_images = frozenset(missing_images)
        self.calls = []

    def call(self, argv, *, input=None, capture=True, timeout=None, check=True, input_stream=None,
             binary=False) -> Completed:
        self.calls.append((list(argv), self.note))
        return Completed(0, b"" if binary else "", "")

    def popen(self, argv, **kwargs):
        self.calls.append((list(argv), self.note))
        return _Exited()

    def image_id(self, image: str) -> str | None:
        super().image_id(image)
        return None if image in self.missing_images else "sha256:(dry run)"

    def volume_exists(self, name: str) -> bool:
        super().volume_exists(name)
        return False

    def address(self, container: str, network: str) -> str | None:
        super().address(container, network)
        return "<sidecar egress address>"

    def exec(self, container, argv, user=None, workdir=None, env=(), capture=True, timeout=None) -> Completed:
        super().exec(container, argv, user, workdir, env, capture, timeout)
        return Completed(0, f"{SELF_TEST_PASSED}\n", "")

    def run(self, spec: ContainerSpec, timeout: float | None = None, input_stream=None,
            binary: bool = False) -> Completed:
        super().run(spec, timeout, binary=binary)
        if binary:
            return Completed(0, b"", "")
        # An image probe finds every tool and no user: the identity a dry run plans with (planned_identity).
        return Completed(0, "# tools\n" + "\n".join(PROBE_TOOLS) + "\n" if spec.role == "probe" else "", "")


# ---- Teardown: an undo stack that always finishes ----

def unwind(entries: list):
    """Pop teardown entries from the end: ("call", fn, args) as they are, and each run of removals of one
    kind as (kind, sorted names), so that one docker call removes them all."""
    while entries:
        kind, *arg = entries.pop()
        if kind == "call":
            yield (kind, *arg)
            continue
        names = [arg[0]]
        while entries and entries[-1][0] == kind:
            names.append(entries.pop()[1])
        yield kind, sorted(names)


class Teardown:
    """A stack of undo steps, popped in reverse on every exit path: report, agent and sidecar, networks, files.

    Entries are data: ("container", name), ("network", name), ("volume", name) or ("call", fn, args). Removals
    of the same kind that end up next to each other run as one engine call. A failing step is reported and the
    rest still run; a missing resource counts as removed. Signals are only noted while it runs (see
    Context.note_signal), so no Ctrl-C can stop it half-way, and output errors are swallowed by `say`. Each
    engine call has the context's teardown_timeout: once one expires the engine is taken as hung, the remaining
    removals are listed as possibly left, and the local steps still run.
    """

    NOTES = {"volume": "teardown: the session's own volumes"}

    def __init__(self, engine: Engine):
        self.engine = engine
        self.steps = []
        self.procs = []
        self.left = []
        # Set when the engine went away under the session: nothing is asked of it, `gc` removes the rest later.
        self.lost = False
        # Set when a create was killed before the engine answered: it may still appear, so look again at the end.
        self.uncertain = None

    def push(self, entry: tuple) -> None:
        self.steps.append(entry)

    def container(self, name: str) -> None:
        self.push(("container", name))

    def network(self, name: str) -> None:
        self.push(("network", name))

    def volume(self, name: str) -> None:
        self.push(("volume", name))

    def callback(self, fn, *args) -> None:
        self.push(("call", fn, args))

    def keep(self, kind: str, name: str) -> None:
        """Take a removal off the stack (in place: the unwind under way pops from this same list)."""
        self.steps[:] = [e for e in self.steps if tuple(e[:2]) != (kind, name)]

    def adopt(self, proc) -> None:
        """Wait for `proc` after the containers are gone (the attached agent)."""
        self.procs.append(proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.run()
        return False

    def _remove(self, kind: str, names: list) -> None:
        if not names:
            return
        if self.left or self.lost:
            self.left += names
            return
        self.engine.note = self.NOTES.get(kind, "teardown")
        try:
            self.engine.remove(kind, names, timeout=self.engine.ctx.teardown_timeout)
        except EngineTimeout:
            self.left += names
        except EngineError as e:
            warn(f"could not remove {kind} {', '.join(names)}: {e.stderr.strip()}")
        except BottleError as e:
            if self.engine.answered or not isinstance(e, EngineUnavailable):
                warn(f"could not remove {kind} {', '.join(names)}: {e}")

    def run(self) -> None:
        for kind, *arg in unwind(self.steps):
            if kind != "call":
                self._remove(kind, arg[0])
                continue
            fn, args = arg
            try:
                fn(*args)
            except EngineTimeout as e:
                self.left.append(f"(the engine did not answer: {e})")
            except Exception as e:
                warn(f"teardown step {getattr(fn, '__name__', fn)} failed: {e}")
        if self.uncertain and not self.left and not self.lost:
            self._sweep(self.uncertain)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()
        if self.left and not self.lost:
            warn(f"the engine did not answer within {self.engine.ctx.teardown_timeout:.0f} s, so these may be left: "
                 f"{', '.join(n for n in self.left if not n.startswith('('))}; once this CLI has exited, "
                 f"`claude-bottle gc` removes them")

    def _sweep(self, session: str) -> None:
        """A create was killed mid-call: remove whatever of `session` the engine finished after all."""
        try:
            for s in find_sessions(self.engine, session):
                self._remove("container", [c["name"] for c in s["containers"]])
                self._remove("network", [n["name"] for n in s["networks"]])
        except BottleError as e:
            warn(f"could not look for what is left of session {session}: {e}")


# ---- Session lifecycle: private files, steps, the runner, the session ----

def share_with(path: str, uid: int, private_mode: int, open_mode: int) -> None:
    """Let the container user `uid` read `path`, a bind-mount source inside the 0700 private dir.

    As root, hand it to `uid` and keep it private. As `uid` itself, keep it private. Otherwise it must be
    readable by others; the 0700 parent still keeps every other host user out, and the container sees it
    only through its bind mount.
    """
    euid = os.geteuid()
    if euid == 0:
        os.chown(path, uid, uid)
        os.chmod(path, private_mode)
    elif euid == uid:
        os.chmod(path, private_mode)
    else:
        os.chmod(path, open_mode)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def runtime_base() -> Path:
    """This user's directory of session dirs: `$TMPDIR/claude-bottle-<uid>`, 0700, refused when not ours."""
    base = Path(tempfile.gettempdir()) / f"{LABEL}-{os.getuid()}"
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise BottleError(f"cannot make {base} ({e.strerror}); free some space there, or set TMPDIR to a "
                          f"directory of your own with room") from None
    st = os.lstat(base)
    import stat
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise BottleError(f"{base} is not a private directory of yours (a symlink, another owner, or open to "
                          f"others); remove it, or set TMPDIR to a directory of your own")
    return base


def make_private_dir(path: str) -> None:
    """The session's own 0700 dir; it exists only while the session does."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise BottleError(f"{path} exists already: another session has this id; start again") from None


# The session's allowlist as `allow` and `deny` change it, in the private dir (never mounted into a container).
LIVE_STATE = "live.json"


def live_state(plan: Plan) -> dict:
    """What a live change needs to render the sidecar's config again, and what it has changed so far."""
    return {
        "session": plan.session, "bottle": plan.bottle, "config_path": plan.config_path,
        "bottle_allow": list(plan.bottle_allow), "base": list(plan.hosts), "hosts": list(plan.hosts),
        "trusted": list(plan.trusted), "max_tunnel_seconds": plan.max_tunnel_seconds,
        "idle_timeout_seconds": plan.idle_timeout_seconds, "learn": plan.learn, "change": 0,
        "added": [], "denied": [],
    }


def read_live(private_dir: str) -> dict | None:
    """The session's live state, or None when it has none (an older claude-bottle) or it cannot be read."""
    try:
        with open(os.path.join(private_dir, LIVE_STATE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_private_files(plan: Plan, secret: str = "") -> None:
    """pipelock/pipelock.yaml for the sidecar (uid 65534), ssh_config, ssh/config, passwd and group for the
    agent (the user's own uid), live.json, and the owner's proof."""
    pipelock_dir = os.path.join(plan.private_dir, "pipelock")
    os.mkdir(pipelock_dir, 0o700)
    config = os.path.join(pipelock_dir, "pipelock.yaml")
    _write_private(config, render_pipelock_yaml(plan))
    sidecar_uid = int(SIDECAR_USER.split(":")[0])
    share_with(config, sidecar_uid, 0o600, 0o644)
    share_with(pipelock_dir, sidecar_uid, 0o700, 0o755)
    _write_private(os.path.join(plan.private_dir, "ssh_config"), render_ssh_config(plan))
    ident = planned_identity(plan)
    for name in ("passwd", "group"):
        if getattr(ident, name):
            _write_private(os.path.join(plan.private_dir, name), getattr(ident, name))
    if plan.ssh:
        # Mounted as the agent's ~/.ssh: the uid's own (the user's), so ssh trusts it and can add known_hosts.
        os.mkdir(os.path.join(plan.private_dir, "ssh"), 0o700)
        _write_private(os.path.join(plan.private_dir, "ssh", "config"), render_ssh_config(plan))
    _write_private(os.path.join(plan.private_dir, LIVE_STATE), json.dumps(live_state(plan), indent=1) + "\n")
    if secret:
        _write_private(os.path.join(plan.private_dir, OWNER_SECRET), secret)


def private_files_failed(plan: Plan, e: OSError) -> BottleError:
    """A private dir that cannot be written (a full disk, a read-only TMPDIR): one line, before anything exists."""
    return BottleError(f"the session's private files could not be written in {os.path.dirname(plan.private_dir)} "
                       f"({e.strerror}); nothing was started: free some space there, or set TMPDIR to a directory "
                       f"with room")


def remove_private_dir(path: str) -> None:
    """Remove a session's private dir, unless it holds the record of work not yet brought back (WORK_KEPT)."""
    import shutil
    if not os.path.exists(os.path.join(path, WORK_KEPT)):
        shutil.rmtree(path, ignore_errors=True)


class SshAgentRelay:
    """Serves the host's ssh-agent to the bottle through a socket in the private dir.

    ssh-agent refuses a client whose uid differs from its own; the relay connects as the user, whatever
    uid the agent runs as. It passes only what ssh needs to authenticate (list
    keys, sign, extensions), so the bottle can use the keys but never add, remove, lock or export them.
    """

    ALLOWED = frozenset((11, 13, 27))  # REQUEST_IDENTITIES, SIGN_REQUEST, EXTENSION
    FAILURE = b"\0\0\0\1\5"
    MAX_MESSAGE = 256 * 1024

    def __init__(self, upstream: str, path: str, uid: int = AGENT_UID):
        import socket
        self.upstream, self.path = upstream, path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        share_with(path, uid, 0o600, 0o666)
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="ssh-agent-relay")
        self._thread.start()

    def close(self) -> None:
        import socket
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    @classmethod
    def _read_message(cls, sock) -> bytes | None:
        head = cls._read_exact(sock, 4)
        if head is None:
            return None
        size = int.from_bytes(head, "big")
        if not 0 < size <= cls.MAX_MESSAGE:
            return None
        body = cls._read_exact(sock, size)
        return None if body is None else head + body

    @staticmethod
    def _read_exact(sock, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _relay(self, conn) -> None:
        import socket
        try:
            with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.connect(self.upstream)
                while (request := self._read_message(conn)) is not None:
                    if request[4] not in self.ALLOWED:
                        conn.sendall(self.FAILURE)
                        continue
                    up.sendall(request)
                    reply = self._read_message(up)
                    if reply is None:
                        return
                    conn.sendall(reply)
        except OSError:
            return


def quarantine_commondir(plan: Plan) -> None:
    """Move a `.git/commondir` the agent wrote out of git's way, before git on the host can read it."""
    path = os.path.join(plan.workspace, GIT_COMMONDIR)
    if os.path.lexists(path):
        aside = f"{path}.claude-bottle-{plan.session}"
        os.replace(path, aside)
        warn(f"the agent wrote {path}, which sends git to another config and hooks; moved it to {aside} "
             f"(review it, and the directory it names, before deleting it)")


# ---- The workspace as a clone: a snapshot in, the agent's work back as a branch ----

# Clone mode: the agent works in a copy of the repository inside a volume of the session's own, and the user's tree is
# never written. In: the repository's objects and refs, and a commit of the working tree as it is (tracked changes
# and untracked files that are not ignored) on top of HEAD, made with a private index. Out: the agent's commits, and
# at the end a commit of what it left uncommitted, fetched from a git bundle into the branch claude-bottle/SESSION.

# git on this machine, for the user's repository: no optional lock (never a refresh of the user's index), no
# automatic maintenance after a fetch.
GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
GIT_QUIET = ("-c", "maintenance.auto=false", "-c", "gc.auto=0")
# The files of a clone session's own, in its private dir.
CLONE_STATE = "clone.json"
READY_MARK = ".git/claude-bottle-ready"


class CloneSource(namedtuple("CloneSource", "toplevel git_dir objects head branch subdir notes size")):
    """The repository a clone session copies: its top level, git dir and object store, HEAD (a commit id, or ""
    before the first commit) and its branch ("" when detached), where the workspace is in it, the notes the preflight
    shows (a rebase under way, submodules, LFS, a shallow history) and the object store's size in bytes."""

    __slots__ = ()


def git(args, cwd: str, env=None, check: bool = True, input: bytes | None = None):
    """Run git on this machine (the user's repository); a missing git is a one-line error."""
    import subprocess
    try:
        r = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV, **(env or {})}, input=input,
                           capture_output=True, timeout=600)
    except FileNotFoundError:
        raise ConfigError("--clone: git is not installed on this machine; install it, or start without --clone")
    if check and r.returncode != 0:
        raise BottleError(f"`git {' '.join(args[:3])}` failed in {cwd}: "
                          f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:] or ['no output']}"[:400])
    return r


def _git_text(args, cwd: str) -> str:
    return git(args, cwd).stdout.decode(errors="replace").strip()


def inspect_clone(plan: Plan, why: str = "") -> Plan:
    """Clone mode: what the copy will hold, read before anything is created; bad input is refused in one line.
    `why` is the first note, when the start chose clone mode itself."""
    if not plan.clone:
        return plan
    ws = plan.workspace
    r = git(["rev-parse", "--is-bare-repository", "--is-inside-work-tree"], ws, check=False)
    if r.returncode != 0:
        raise ConfigError(f"--clone: {ws} is not in a git repository, and a clone session copies one; run "
                          f"`git init` there (and commit what the agent should start from), or start without --clone")
    bare, inside = r.stdout.decode().split()
    if bare == "true" or inside != "true":
        raise ConfigError(f"--clone: {ws} is a bare repository (no working tree to copy); start from a clone of it")
    toplevel = _git_text(["rev-parse", "--show-toplevel"], ws)
    git_dir = os.path.realpath(os.path.join(ws, _git_text(["rev-parse", "--git-dir"], ws)))
    objects = os.path.realpath(os.path.join(ws, _git_text(["rev-parse", "--git-path", "objects"], ws)))
    if os.path.exists(os.path.join(objects, "info", "alternates")):
        raise ConfigError(f"--clone: the repository at {toplevel} borrows objects from another one "
                          f"(objects/info/alternates), which a copy would not have; run `git repack -a -d` there "
                          f"first, or start without --clone")
    head = git(["rev-parse", "-q", "--verify", "HEAD^{commit}"], ws, check=False).stdout.decode().strip()
    branch = git(["symbolic-ref", "-q", "--short", "HEAD"], ws, check=False).stdout.decode().strip()
    if git(["rev-parse", "-q", "--verify", f"refs/heads/{plan.clone_branch}"], ws, check=False).returncode == 0:
        raise ConfigError(f"--clone: the branch {plan.clone_branch} exists already in {toplevel}; rename or delete "
                          f"it, then start again")
    notes = [why] if why else []
    for name, what in (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase"), ("MERGE_HEAD", "a merge"),
                       ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert")):
        if os.path.exists(os.path.join(git_dir, name)):
            notes.append(f"{what} is under way in your repository: the copy starts from HEAD with your working "
                         f"tree as it is, conflicts included; your {what[2:]} stays yours to finish")
            break
    if not branch:
        notes.append(f"HEAD is detached at {head[:12] or 'nothing'}: the work still arrives as branch "
                     f"{plan.clone_branch}")
    if not head:
        notes.append("the repository has no commit yet: the copy starts from a first commit of your files")
    if os.path.exists(os.path.join(git_dir, "shallow")) or os.path.exists(os.path.join(objects, "..", "shallow")):
        notes.append("a shallow clone: the copy has the same (cut) history")
    if os.path.exists(os.path.join(toplevel, ".gitmodules")):
        notes.append("submodules are not copied: their commits are recorded, their files are not there")
    try:
        attributes = Path(toplevel, ".gitattributes").read_text(errors="replace")
    except OSError:
        attributes = ""
    if "filter=lfs" in attributes:
        notes.append("Git LFS files arrive as their pointers (no LFS objects are copied)")
    size = 0
    for root, _, files in os.walk(objects):
        for f in files:
            try:
                size += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    subdir = os.path.relpath(ws, toplevel)
    repo = CloneSource(toplevel, git_dir, objects, head, branch, "" if subdir == "." else subdir, tuple(notes), size)
    return plan._replace(repo=repo)


def clone_line(plan: Plan) -> str:
    size = plan.repo.size if plan.repo else 0
    size = f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    return (f"{_visible(plan.repo.toplevel if plan.repo else plan.workspace)} copied into a volume ({size} of "
            f"history) -> {AGENT_WORKDIR}; edits arrive as branch {plan.clone_branch}"
            + ("; thrown away at the end (--discard)" if plan.discard else "") + "; your working tree is not touched")


def make_snapshot(plan: Plan) -> str:
    """A commit of the working tree as it is, on top of HEAD, made with a private copy of the index: the user's
    index, working tree and refs are never written (the commit's objects go into the object store, as `git stash`
    does). HEAD itself when nothing is uncommitted."""
    repo, work = plan.repo, plan.repo.toplevel
    index = os.path.join(plan.private_dir, "snapshot.index")
    try:
        import shutil
        shutil.copyfile(os.path.join(repo.git_dir, "index"), index)
    except OSError:
        pass  # no index yet: `add` makes one
    env = {"GIT_INDEX_FILE": index}
    git(["add", "--all"], work, env)
    tree = git(["write-tree"], work, env).stdout.decode().strip()
    if repo.head and _git_text(["rev-parse", f"{repo.head}^{{tree}}"], work) == tree:
        return repo.head
    who = {"GIT_AUTHOR_NAME": "claude-bottle", "GIT_AUTHOR_EMAIL": "claude-bottle@localhost",
           "GIT_COMMITTER_NAME": "claude-bottle", "GIT_COMMITTER_EMAIL": "claude-bottle@localhost"}
    message = (f"claude-bottle: the working tree at the start of session {plan.session}\n\nUncommitted changes and "
               f"untracked files, as they were when the agent's copy was made.\n")
    parent = ["-p", repo.head] if repo.head else []
    return git(["commit-tree", tree, *parent], work, who, input=message.encode()).stdout.decode().strip()


def clone_config(repo: CloneSource) -> str:
    """The copy's .git/config: a plain repository, the user's name for commits, the remotes' names and URLs (never
    a password in one), and nothing else of the user's config."""
    lines = ["[core]", "\trepositoryformatversion = 0", "\tfilemode = true", "\tbare = false"]
    r = git(["config", "--get-regexp", r"^(user\.(name|email)|remote\.[^.]+\.(url|fetch))$"], repo.toplevel,
            check=False)
    values = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if "\n" in value or '"' in value or "\\" in value:
            continue
        if key.endswith(".url"):
            value = re.sub(r"^([a-z+]+://)[^/@]*@", r"\1", value)  # no user:password@ in a URL
        section, _, name = key.rpartition(".")
        values.setdefault(section, []).append((name, value))
    for section, items in values.items():
        head, _, sub = section.partition(".")
        lines.append(f'[{head} "{sub}"]' if sub else f"[{head}]")
        lines += [f"\t{name} = {json.dumps(value)}" for name, value in items]
    return "\n".join(lines) + "\n"


def write_clone_tar(plan: Plan, snapshot: str, out) -> None:
    """The copy as a tar stream, written to `out`: the object store, the refs (the user's branches, tags and remote
    branches, and the clone's own branch at the snapshot, checked out), a config of its own, the shallow list."""
    import tarfile
    repo = plan.repo
    refs = git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags", "refs/remotes"],
               repo.toplevel).stdout.decode(errors="replace")
    uid, gid = plan.identity.uid, plan.identity.gid
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            import io
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, int(time.time())
            tar.addfile(info, io.BytesIO(data))

        def directory(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, uid, gid, int(time.time())
            tar.addfile(info)

        directory(".git")
        add(".git/HEAD", f"ref: refs/heads/{plan.clone_branch}\n".encode())
        add(".git/config", clone_config(repo).encode())
        add(".git/packed-refs", "".join(f"{line}\n" for line in refs.splitlines()
                                        if not line.endswith(f" refs/heads/{plan.clone_branch}")).encode())
        for d in (".git/refs", ".git/refs/heads", ".git/refs/heads/claude-bottle", ".git/refs/tags", ".git/info"):
            directory(d)
        add(f".git/refs/heads/{plan.clone_branch}", f"{snapshot}\n".encode())
        for shallow in (os.path.join(repo.git_dir, "shallow"), os.path.join(repo.objects, "..", "shallow")):
            if os.path.isfile(shallow):
                add(".git/shallow", Path(shallow).read_bytes())
                break
        base = repo.objects
        for root, dirs, files in os.walk(base):
            rel = os.path.relpath(root, base)
            directory(".git/objects" if rel == "." else f".git/objects/{rel}")
            for f in sorted(files):
                if rel == "info" and f == "alternates":
                    continue
                path = os.path.join(root, f)
                try:
                    info = tar.gettarinfo(path, arcname=f".git/objects/{f}" if rel == "." else
                                          f".git/objects/{rel}/{f}")
                    if not info.isreg():
                        continue
                    info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                except (FileNotFoundError, tarfile.TarError):
                    continue  # a pack repacked away meanwhile: its objects are in the new one


# In the workspace volume, as root with the capabilities that takes: unpack the copy from stdin, check the snapshot
# out, and hand everything to the agent's uid. "$1" uid:gid.
WORKSPACE_INIT = f"""\
set -e
cd {AGENT_WORKDIR}
tar -x -f -
git -c safe.directory='*' -c core.hooksPath=/dev/null reset -q --hard
touch {READY_MARK}
chown -R "$1" .
"""

# Bring the agent's work out of its copy as a git bundle on stdout, as the agent's uid with no network: "$1" final
# (first commit what is left uncommitted) or pull, "$2" the snapshot commit, "$3" the session. Exit 3: the copy was
# never made; 4: the agent removed its repository; 5: it has no commit; stdout empty: nothing new.
HARVEST = f"""\
cd {AGENT_WORKDIR} 2>/dev/null || exit 3
[ -d .git ] || exit 4
[ -e {READY_MARK} ] || exit 3
export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0
g() {{ git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='*' "$@"; }}
if [ "$1" = final ]; then
  rm -f .git/index.lock
  g add --all >&2 || exit 6
  g diff --cached --quiet || g -c user.name=claude-bottle -c user.email=claude-bottle@localhost \\
    commit -q --no-verify -m "claude-bottle: what the agent left uncommitted at the end of session $3" >&2 || exit 6
fi
head=$(g rev-parse -q --verify 'HEAD^{{commit}}') || exit 5
[ "$head" = "$2" ] && exit 0
if g cat-file -e "$2^{{commit}}" 2>/dev/null && g merge-base --is-ancestor "$2" HEAD; then
  exec git bundle create --quiet - HEAD "^$2"
fi
exec git bundle create --quiet - HEAD
"""


def workspace_init_spec(plan: Plan) -> ContainerSpec:
    ident = planned_identity(plan)
    return ContainerSpec(name=f"{LABEL}-{plan.session}-workspace-init", role="workspace-init", image=plan.image,
                         entrypoint="/bin/sh", command=("-c", WORKSPACE_INIT, "claude-bottle-workspace",
                                                        f"{ident.uid}:{ident.gid}"),
                         user="0:0", cap_add=("CHOWN", "DAC_OVERRIDE", "FOWNER"), pids_limit=256, interactive=True,
                         mounts=(Mount("volume", plan.workspace_volume, AGENT_WORKDIR),),
                         labels=session_labels(plan, "workspace-init"), remove=True)


class CloneState(namedtuple("CloneState", "session repo snapshot branch image user volume labels")):
    """What brings a clone session's work back, kept in its private dir (clone.json) for `pull`: the session, the
    user's repository, the snapshot commit, the branch, and the image, user, volume and labels of the container
    that reads the copy."""

    __slots__ = ()


def clone_state(plan: Plan, snapshot: str) -> CloneState:
    ident = planned_identity(plan)
    return CloneState(plan.session, plan.repo.toplevel if plan.repo else plan.workspace, snapshot, plan.clone_branch,
                      plan.image, f"{ident.uid}:{ident.gid}", plan.workspace_volume,
                      session_labels(plan, "harvest"))


def read_clone_state(private_dir: str) -> CloneState | None:
    try:
        data = json.loads(Path(private_dir, CLONE_STATE).read_text(encoding="utf-8"))
        return CloneState(**{k: data[k] for k in CloneState._fields})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def harvest_spec(state: CloneState, final: bool, name: str) -> ContainerSpec:
    return ContainerSpec(name=name, role="harvest", image=state.image, entrypoint="/bin/sh",
                         command=("-c", HARVEST, "claude-bottle-harvest", "final" if final else "pull",
                                  state.snapshot, state.session),
                         user=state.user, pids_limit=256, mounts=(Mount("volume", state.volume, AGENT_WORKDIR),),
                         labels=state.labels, remove=True)


def prepare_workspace(run) -> str:
    """Clone mode's step: the snapshot, then the copy unpacked and checked out in the session's workspace volume.
    Returns the snapshot commit."""
    plan, engine = run.plan, run.engine
    snapshot = "<snapshot>" if engine.dry_run else make_snapshot(plan)
    state = clone_state(plan, snapshot)
    if not engine.dry_run:
        atomic_write(os.path.join(plan.private_dir, CLONE_STATE), json.dumps(state._asdict(), indent=1) + "\n")
    engine.create_volume(VolumeSpec(plan.workspace_volume, session_labels(plan, "workspace")))
    r = engine.run(workspace_init_spec(plan), input_stream=lambda out: write_clone_tar(plan, snapshot, out))
    if r.status != 0:
        raise BottleError(f"the repository could not be copied into the session's volume (exit {r.status}): "
                          f"{(r.stderr.strip() or 'no output').splitlines()[-1][-300:]}")
    if not plan.discard:
        run.td.callback(bring_back_or_keep, run.td, engine, plan.private_dir, state)
    return snapshot


def harvest(engine, state: CloneState, private_dir: str, final: bool) -> str:
    """Fetch the agent's work from its copy into the branch claude-bottle/SESSION of the user's repository (the
    next free claude-bottle/SESSION-N when that branch moved meanwhile); returns the line that says what came."""
    name = f"{LABEL}-{state.session}-{'harvest' if final else 'pull-' + os.urandom(3).hex()}"
    engine.note = "teardown: the agent's work back as a branch, in a container of its own with no network"
    r = engine.run(harvest_spec(state, final, name), binary=True, timeout=engine.ctx.teardown_timeout)
    if engine.dry_run:
        return ""
    why = {3: "its copy was never made", 4: "the agent removed its repository (.git)",
           5: "its repository has no commit", 6: "git could not commit what it left"}
    if r.status in why:
        return f"nothing brought back from session {state.session}: {why[r.status]}; your repository is as it was"
    if r.status != 0:
        raise BottleError(f"the work of session {state.session} could not be read from its copy (exit {r.status}): "
                          f"{(r.stderr.strip() or 'no output').splitlines()[-1][-300:]}")
    if not r.stdout:
        return f"no new work in session {state.session} (its copy is at the snapshot); your repository is as it was"
    bundle = os.path.join(private_dir, f"harvest-{os.urandom(3).hex()}.bundle")
    with open(bundle, "wb") as f:
        f.write(r.stdout)
    work, snapshot = state.repo, state.snapshot
    try:
        fetch = [*GIT_QUIET, "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true", "fetch",
                 "--quiet", "--no-write-fetch-head", bundle]
        for n in range(1, 100):
            branch = state.branch if n == 1 else f"{state.branch}-{n}"
            if git([*fetch, f"HEAD:refs/heads/{branch}"], work, check=False).returncode == 0:
                break
        else:
            raise BottleError(f"the work of session {state.session} could not be fetched into {work}")
    finally:
        os.unlink(bundle)
    based = git(["merge-base", "--is-ancestor", snapshot, branch], work, check=False).returncode == 0
    count = _git_text(["rev-list", "--count", f"{snapshot}..{branch}" if based else branch], work)
    stat = _git_text(["diff", "--shortstat", snapshot, branch], work) if based else ""
    moved = "" if branch == state.branch else f" ({state.branch} had moved)"
    return (f"the work of session {state.session} is in branch {branch}{moved}: {count} commit"
            f"{'' if count == '1' else 's'} on top of {snapshot[:12]} (your working tree at the start)"
            + (f", {stat}" if stat else "" if based else "; it does not build on that snapshot"))


# In a private dir: its session's work is still in its copy, so the dir (and its clone record) stays for `gc`.
WORK_KEPT = "work-kept"


def bring_back_or_keep(td: "Teardown", engine, private_dir: str, state: CloneState) -> None:
    """Teardown's step in clone mode: the work into the branch; when the engine is gone or the fetch fails, the copy
    and the private dir stay, and `gc` brings the work back once the engine answers (teardown_session)."""
    try:
        if td.lost or td.left:
            raise BottleError("the engine did not answer")
        bring_back(engine, private_dir, state)
    except BottleError as e:
        td.keep("volume", state.volume)
        Path(private_dir, WORK_KEPT).touch()
        warn(f"the work of session {state.session} could not be brought back yet ({e}); it stays in its copy "
             f"({state.volume}), and `claude-bottle gc` brings it to branch {state.branch} once the engine answers")


def bring_back(engine, private_dir: str, state: CloneState, final: bool = True) -> str:
    """Teardown's step in clone mode once the agent is gone (and `pull`'s, while it runs): its work into the
    branch, whatever ended the session. One at a time per session."""
    import fcntl
    with open(os.path.join(private_dir, "clone.lock") if not engine.dry_run else os.devnull, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        line = harvest(engine, state, private_dir, final)
    if line and final:
        say(f"claude-bottle: {line}")
    return line


class Step(namedtuple("Step", "name note after undo action then background", defaults=("", (), (), None, (), False))):
    """One step of a start, as data: the real start runs these, against the real engine or (a dry run) one that
    records instead.

    name: the name of its result in Results, and what later steps name in `after`, the steps it waits for.
    undo: teardown entries pushed just before it runs: the names are the session's own and a missing
          resource counts as removed, so an interrupted create can never strand one.
    action: `fn(run)` doing the step and returning its result.
    then: teardown entries pushed once it has succeeded.
    background: nothing waits for it; teardown does, at the very end.
    """

    __slots__ = ()


class Results:
    """What the steps of a start found or made, each as an attribute named after its step (`network_internal`,
    `state`, `start`, ...); `done` holds the names of the steps that have finished."""

    def __init__(self):
        self.done = set()

    def put(self, name: str, value) -> None:
        setattr(self, name, value)
        self.done.add(name)


class Cancelled(BottleError):
    """Another step failed, or a signal arrived: a repeating step stops trying."""


class Run:
    """What the steps of one start share: the plan, the engine, the results so far, the teardown stack, a stop
    flag."""

    def __init__(self, plan: Plan, td: Teardown, broker=None):
        self.plan, self.td, self.broker = plan, td, broker
        self.engine, self.ctx = td.engine, td.engine.ctx
        self.results = Results()
        self.cancel = threading.Event()

    def pause(self, seconds: float) -> None:
        """Wait between tries of a repeating step; stop when the start is being abandoned."""
        if self.cancel.wait(seconds) or self.ctx.signalled:
            raise Cancelled("cancelled")


def _execute(step: Step, run: Run):
    run.engine.note = step.note
    return step.action(run)


def _join(future, timeout: float) -> None:
    try:
        future.result(timeout=timeout)
    except Exception as e:
        warn(f"a background step did not finish cleanly: {e}")


def run_steps(steps, run: Run, workers: int = 8) -> Results:
    """Run `steps` as soon as the steps they name in `after` are done, as many at once as `workers` allows.

    Ready steps start in list order, so the undo stack's order falls out of the list (with one worker, the order
    is the list's: the dry run). On a failure or a signal nothing new starts, repeating steps stop, and every step
    already running is waited for (its engine call finishes, or is killed SIGNAL_GRACE seconds after a signal)
    before the error goes on to teardown: nothing the session creates can appear after its teardown.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    ctx, results = run.ctx, run.results
    names = {s.name for s in steps} | results.done
    assert all(a in names for s in steps for a in s.after), "a step waits for a step that is not there"
    pending = [s for s in steps if s.name not in results.done]
    running, failure = {}, None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step")
    try:
        while pending or running:
            if failure is None and ctx.signalled:
                failure = Interrupted(ctx.signalled)
            if failure is not None:
                pending = []
                run.cancel.set()
            for step in [s for s in pending if all(a in results.done for a in s.after)]:
                if len(running) >= workers:
                    break
                pending.remove(step)
                for entry in step.undo:
                    run.td.push(entry)
                future = pool.submit(_execute, step, run)
                if step.background:
                    run.td.callback(_join, future, ctx.teardown_timeout)
                    results.put(step.name, future)
                else:
                    running[future] = step
            if not running:
                if pending:
                    raise AssertionError(f"steps can never start: {[s.name for s in pending]}")
                break
            done, _ = wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                try:
                    results.put(step.name, future.result())
                except BaseException as e:
                    if isinstance(e, EngineTimeout):
                        run.td.uncertain = run.plan.session
                    failure = failure or e
                    continue
                for entry in step.then:
                    run.td.push(entry)
    finally:
        pool.shutdown(wait=False)
    if ctx.signalled:
        raise Interrupted(ctx.signalled) from failure
    if failure is not None:
        raise failure
    return results


def require_network(run: Run) -> None:
    name = run.plan.egress_network
    if not run.engine.network_exists(name):
        raise ConfigError(f"egress_network: network {name!r} does not exist on the engine; create it "
                          f"(docker network create {name}) or remove egress_network from the bottle")


def image_present(run: Run) -> bool:
    return run.engine.image_id(run.plan.image) is not None


def probe_cache_file(image_id: str, environ) -> Path | None:
    """`$XDG_CACHE_HOME/claude-bottle/probe-<image id>.json`, else under `~/.cache`; None: no cache."""
    digest = image_id.removeprefix("sha256:")
    base = environ.get("XDG_CACHE_HOME") or (os.path.join(environ["HOME"], ".cache") if environ.get("HOME") else "")
    if not re.fullmatch(r"[0-9a-f]{64}", digest) or not os.path.isabs(base):
        return None
    return Path(base) / LABEL / f"probe-{digest}.json"


def _probe_shaped(probe) -> bool:
    lists = ("passwd", "group", "tools")
    return (isinstance(probe, dict) and isinstance(probe.get("dirs"), dict)
            and all(isinstance(probe.get(k), list) and all(isinstance(x, str) for x in probe[k]) for k in lists)
            and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)
                    for v in probe["dirs"].values()))


def read_probe_cache(path: Path) -> dict | None:
    """A cached probe, trusted only from a regular file of this user's that no one else may write."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        try:
            data = json.loads(f.read(1 << 20))
        except ValueError:
            return None
    if not isinstance(data, dict) or data.get("version") != PROBE_VERSION or not _probe_shaped(data.get("probe")):
        return None
    return data["probe"]


def write_probe_cache(path: Path, probe: dict) -> str:
    """Write atomically (a private temp file renamed over it); a cache that cannot be written is no error: the
    reason is returned instead ("" once written)."""
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        atomic_write(str(path), json.dumps({"version": PROBE_VERSION, "probe": probe}))
    except OSError as e:
        return f"could not cache the image probe in {path}: {e.strerror}"
    return ""


def probe_image(engine: Engine, image: str, environ) -> dict:
    """What the image holds (users, homes, tools), from the cache by image id or from one probe run."""
    image_id = engine.image_id(image)
    if image_id is None:
        say(f"claude-bottle: the image {image} is not on this engine; pulling it")
        engine.pull(image)
        image_id = engine.image_id(image) or ""
    cache = probe_cache_file(image_id, environ)
    probe = read_probe_cache(cache) if cache else None
    if probe is not None:
        engine.ctx.log(f"the probe of {image} ({image_id[:19]}) from {cache}")
        return probe
    started = time.monotonic()
    try:
        r = engine.run(probe_spec(image_id if cache else image))
    except EngineError as e:
        if e.kind != "no_program":
            raise
        r = None
    if r is None or r.status != 0:
        if r is None:
            raise BottleError(f"the image {image} has no /bin/sh, and claude-bottle needs a POSIX sh in the agent's "
                              f"image; use an image with one (e.g. add busybox), or remove `image =` for the built-in")
        raise BottleError(f"the probe of the image {image} failed (exit {r.status}): "
                          f"{(r.stderr.strip() or 'no output').splitlines()[-1][-300:]}")
    probe = parse_probe(r.stdout)
    engine.ctx.log(f"probed {image} in {time.monotonic() - started:.2f} s")
    if cache:
        engine.ctx.log(write_probe_cache(cache, probe) or f"cached the probe in {cache}")
    return probe


def identify(plan: Plan, engine: Engine, environ) -> Plan:
    """Settle who the agent is in its image (probed once per image id) and refuse an image that cannot work.

    Runs before anything is created; the probe's own container is gone when it returns.
    """
    if plan.identity.user is None:
        probe = probe_image(engine, plan.image, environ)
        plan = plan._replace(identity=agent_identity(probe, plan.identity.uid, plan.identity.gid))
    problem = identity_problem(plan)
    if problem:
        raise BottleError(problem)
    return plan


def build_image(run: Run) -> None:
    """Build the built-in image unless its tag (a hash of the Dockerfile and build arguments) already exists.

    The engine tags an image only once every step succeeded, so a failed build leaves no tag to be reused.
    """
    if run.results.image:
        return
    plan = run.plan
    if not run.engine.dry_run:
        say(f"claude-bottle: building the agent image {plan.image} (once; later starts reuse it)")
    try:
        run.engine.build(plan.image, AGENT_DOCKERFILE, plan.build_args, {f"{LABEL}.image": "agent"})
    except EngineError as e:
        raise BottleError(build_failure(plan, e.stderr)) from None


def build_failure(plan: Plan, stderr: str) -> str:
    """One line: why the built-in image could not be built, and what to do."""
    url = dict(plan.build_args).get("CLAUDE_INSTALLER_URL", INSTALLER_URL)
    if INSTALLER_FILE in stderr:
        return (f"the built-in agent image was not built: Claude Code's installer {url} could not be fetched or did "
                f"not install a working `claude` (see the build output above); let `docker build` reach it (docker's "
                f"proxy settings, or {INSTALLER_URL_ENV} for a mirror), or set `image =` for the agent in "
                f"{CONFIG_NAME} to an image that has Claude Code")
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    return (f"the built-in agent image was not built ({last[-300:]}); fix what the build output above names, or "
            f"set `image =` for the agent in {CONFIG_NAME} to an image that has Claude Code")


def claim_workspace(plan: Plan, engine: Engine) -> tuple:
    """After the answer, before anything is created: the sessions on the engine (one listing, whose orphans the
    start then reaps), and the workspace's mode. Returns the plan, settled, and the sessions.

    Two agents must never edit one working tree in place: when another live session has this workspace
    bind-mounted, a start that was not told --bind works on a copy instead (a git repository's) and says so; told
    --bind, or outside a repository, it refuses."""
    sessions = find_sessions(engine)
    engine.note = "the engine's CPUs and memory: a limit above them is refused"
    plan = fit_limits(plan, engine.capacity())
    engine.note = ""
    if plan.clone:
        return plan, sessions
    other = next((s for s in sessions if s.get("workspace") == plan.workspace and s.get("mode") == "bind"
                  and s["owner_state"] != "gone" and s["session"] != plan.session), None)
    if other is None:
        return plan, sessions
    fix = f"stop it first (claude-bottle stop {other['session']})"
    if plan.clone is False:
        raise BottleError(f"workspace: session {other['session']} is editing {plan.workspace} in place, and two "
                          f"agents in one working tree overwrite each other's work; {fix}, or start this one on a "
                          f"copy: claude-bottle start {plan.agent} --clone")
    if git(["rev-parse", "--is-inside-work-tree"], plan.workspace, check=False).returncode != 0:
        raise BottleError(f"workspace: session {other['session']} is editing {plan.workspace} in place, and two "
                          f"agents in one working tree overwrite each other's work; {fix} (a copy needs a git "
                          f"repository, which {plan.workspace} is not)")
    plan = identify(inspect_clone(plan._replace(clone=True, git_dir=False, read_only=()),
                                  f"session {other['session']} is editing this working tree in place, so this one "
                                  f"works on a copy (--bind to refuse instead)"), engine, os.environ)
    say(f"claude-bottle: session {other['session']} is editing {plan.workspace} in place, so this one works on a "
        f"copy: {clone_line(plan)}")
    return plan, sessions


def watch_sidecar(run: Run):
    """Watch the sidecar while the session runs: the agent's only way out must not go without a word."""
    proc = run.engine.watch(run.plan.sidecar)
    # It ends once teardown has removed the sidecar (or is killed 10 s later: an engine that does not answer).
    run.td.adopt(proc)
    return proc


def sidecar_stopped(engine: Engine, plan: Plan) -> BottleError:
    """Why the session ends when its sidecar stopped under a running agent, as one line."""
    engine.note = "the sidecar stopped: how"
    try:
        state = engine.container_state(plan.sidecar)
    except BottleError as e:
        return engine_lost(e)
    if state is None:
        why = "was removed"
    elif state.oom_killed:
        fix = limit_fix(plan, "sidecar_memory", f'"{size_text(plan.limits.sidecar_memory * 2)}"')
        why = f"was killed for memory at its limit of {human_size(plan.limits.sidecar_memory)} (to give it more, {fix})"
    elif state.status == "running":
        why = "stopped being watched"
    else:
        why = f"stopped (exit status {state.exit_code})"
    return BottleError(f"the pipelock sidecar {plan.sidecar} {why} while the agent ran; it was the agent's only way "
                       f"out, so the session was ended and torn down; start it again: claude-bottle start "
                       f"{plan.agent}")


class EngineLost(BottleError):
    """The engine stopped answering under a running session: teardown leaves the rest to `gc`."""


def engine_lost(e: BottleError) -> BottleError:
    return EngineLost(f"the engine stopped answering while the agent ran (restarted or stopped?), so the session "
                       f"was ended ({str(e)[-200:]}); run `claude-bottle gc` once it answers again, which removes what "
                       f"is left (the agent's state volume stays)")


def oom_line(engine: Engine, plan: Plan, status: int) -> str:
    """After the agent's end, before its container is removed: a line when the kernel killed the agent (or a
    process of it) for memory at its limit, with how to raise it; else "". An engine that does not answer (it
    restarted under the session, which is what ended the agent) is an error saying so."""
    engine.note = "teardown: was the agent killed for memory?"
    try:
        state = engine.container_state(plan.agent_container)
    except BottleError as e:
        raise engine_lost(e) from None
    if state is None or not state.oom_killed:
        return ""
    fix = limit_fix(plan, "memory", f'"{size_text(plan.limits.memory * 2)}"')
    if status == 137:
        return (f"claude-bottle: the agent was killed for memory: it reached its limit of "
                f"{human_size(plan.limits.memory)} (exit status 137); to give it more, {fix}")
    return (f"claude-bottle: a process in the agent was killed for memory at the agent's limit of "
            f"{human_size(plan.limits.memory)}; to give it more, {fix}")


def launch_agent(run: Run):
    proc = run.engine.start_attached(run.plan.agent_container)
    run.td.adopt(proc)
    return proc


def unhealthy(run: Run, why: str) -> BottleError:
    logs = run.engine.logs(run.plan.sidecar, tail=5, timeout=run.ctx.teardown_timeout)
    tail = " | ".join(ln.strip() for ln in (logs.stdout + logs.stderr).splitlines() if ln.strip())[-400:]
    return BottleError(f"the pipelock sidecar {run.plan.sidecar} did not become healthy ({why[-200:]}); "
                       f"its log: {tail or 'empty'}")


def wait_healthy(run: Run, timeout: float = HEALTH_TIMEOUT) -> None:
    """Poll pipelock's own health check with a short backoff until it answers; no fixed sleeps."""
    plan = run.plan
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            r = run.engine.exec(plan.sidecar, ["/pipelock", "healthcheck"])
        except EngineError as e:
            # It exited (or is gone): that does not get better by waiting.
            raise unhealthy(run, e.stderr.strip() or e.kind) from None
        if r.status == 0:
            return
        # 126/127: no /pipelock in the image; that does not get better by waiting either.
        if r.status in (126, 127) or time.monotonic() >= deadline:
            break
        run.pause(delay)
        delay = min(delay * 2, 0.25)
    raise unhealthy(run, r.stderr.strip() or "no answer")


def host_routes(path: str = "/proc/net/route") -> list:
    """The host's IPv4 routes (Linux), so that a session's subnet never hides a network the host reaches."""
    try:
        rows = [line.split() for line in Path(path).read_text().splitlines()[1:]]
    except OSError:
        return []
    routes = []
    for row in rows:
        if len(row) >= 8:
            dest, mask = (int.from_bytes(bytes.fromhex(x), "little") for x in (row[1], row[7]))
            if mask:
                routes.append(f"{_dotted(dest)}/{bin(mask).count('1')}")
    return routes


def create_network(run: Run, name: str, internal: bool) -> str:
    """Create `name` on a /28 of the session's own choosing; another one when the engine says it is taken.

    The engine refuses a subnet that overlaps any of its networks, atomically, so two starts choosing at
    once can never share one: the second simply tries its next candidate. Returns the subnet.
    """
    plan = run.plan
    routes = run.engine.routes()
    for attempt in range(SUBNET_TRIES):
        subnet = subnet_candidate(plan.subnet_pool, f"{plan.session}/{name}", attempt)
        if any(_overlaps(subnet, route) for route in routes):
            continue
        try:
            run.engine.create_network(network_spec(plan, name, internal, subnet))
            return subnet
        except EngineError as e:
            if e.kind != "subnet_taken":
                raise
    raise BottleError(f"no free /{SUBNET_BITS} for network {name} in {SUBNETS_ENV}={','.join(plan.subnet_pool)} "
                      f"after {SUBNET_TRIES} tries; set {SUBNETS_ENV} to a larger or another free private range "
                      f"(e.g. 10.214.0.0/16), or remove what other sessions left (claude-bottle gc)")


def run_sidecar(run: Run) -> None:
    ip = None if run.plan.egress_network else subnet_address(run.results.network_egress, 2)
    run.engine.run_detached(sidecar_spec(run.plan, ip))


def create_agent(run: Run) -> None:
    # Its own fixed address: left to the engine, it could take the one the sidecar is about to be given.
    run.engine.create(agent_spec(run.plan, subnet_address(run.results.network_internal, 3), run.results.state))


def prepare_state(run: Run) -> str:
    """The state volume the agent gets: its persistent one, made the agent's own when new; or, with --fresh or when
    another session of the agent holds it, one of the session's own, removed at teardown. Returns its name.

    With --fresh the step's own undo entries cover the volume and the init container; otherwise they are pushed
    here, before what they undo, since only here is it known whether there is anything to undo.
    """
    plan, engine = run.plan, run.engine
    volume = plan.fresh_volume if plan.fresh else plan.state_volume
    if not plan.fresh:
        holders = engine.volume_holders(volume)
        if holders:
            # WARNING: two Claude Codes writing one .claude.json lose each other's writes; the second gets its own.
            say(f"claude-bottle: the state {volume} is in use by {', '.join(holders)}; this session starts with a "
                f"fresh state, thrown away at the end")
            volume = plan.fresh_volume
            run.td.volume(volume)
        elif engine.volume_exists(volume):
            run.results.put("state_kept", True)
            return volume
        run.td.container(plan.state_init)
    engine.create_volume(state_volume_spec(plan, volume))
    try:
        r = engine.run(state_init_spec(plan, volume))
        if r.status != 0:
            raise BottleError(f"the new state volume {volume} could not be made the agent's (exit {r.status}): "
                              f"{(r.stderr.strip() or 'no output').splitlines()[-1][-300:]}")
    except BottleError:
        if volume == plan.state_volume:
            # Not left half made: the next start would take a volume the agent cannot write for a ready one.
            try:
                engine.remove("volume", [volume], timeout=run.ctx.teardown_timeout)
            except BottleError as e:
                warn(f"could not remove the half-made state volume {volume}: {e}")
        raise
    return volume


def check_state_login(run: Run) -> bool:
    """Warn when the kept state holds Claude Code's own stored login, which the agent can read (and a hijacked one
    take away): a login made inside an earlier bottle. True when it does."""
    volume = run.results.state
    if volume != run.plan.state_volume or "state_kept" not in run.results.done:
        return False  # a volume made by this start holds nothing yet
    spec = state_check_spec(run.plan, volume)
    run.td.container(spec.name)
    try:
        found = run.engine.run(spec).status == 0 and not run.engine.dry_run
    except EngineError as e:
        warn(f"could not look for a Claude Code login in {volume}: {e.kind}")
        return False
    if found:
        say(state_login_warning(volume, run.plan.agent))
    return found


def connect_sidecar(run: Run) -> None:
    run.engine.connect(run.plan.sidecar, run.plan.internal_network,
                       subnet_address(run.results.network_internal, 2))


def self_test_addresses(run: Run) -> tuple:
    """The sidecar's egress-side address and the internal network's gateway, from the session's own subnets."""
    if "addresses" in run.results.done:
        return run.results.addresses
    return subnet_address(run.results.network_egress, 2), subnet_address(run.results.network_internal, 1)


def sidecar_addresses(run: Run) -> tuple:
    """On an egress_network of the user's: the sidecar's address there (asked), and the internal gateway."""
    plan = run.plan
    address = run.engine.address(plan.sidecar, plan.egress)
    if not address:
        # A container that has exited keeps no address: pipelock stopped straight after its start.
        raise unhealthy(run, f"it has no address on {plan.egress}; it exited")
    return address, subnet_address(run.results.network_internal, 1)


def point_broker(run: Run) -> None:
    """Send the credential broker's upstream connections through the sidecar, at its egress-side address."""
    if run.broker is not None:
        run.broker.set_proxy((self_test_addresses(run)[0], PROXY_PORT))


def run_self_test(run: Run, timeout: float = 30.0) -> None:
    """Check isolation from inside the agent container, whose command waits behind the gate.

    It is also the sidecar's health check: the script polls pipelock's /health, as `pipelock
    healthcheck` does, but from the agent's side of the internal network, the path the agent will use.
    """
    plan, attached = run.plan, run.results.start
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            r = run.engine.exec(plan.agent_container, ["sh", "-c", render_self_test(plan, *self_test_addresses(run))])
        except EngineError as e:
            # Not running yet (`start` is still on its way), or already stopped.
            r = Completed(e.returncode, "", e.stderr)
            starting = True
        else:
            # The marker too: a short command can end the container (exit 137) just after the gate opened.
            if r.status == 0 or SELF_TEST_PASSED in r.stdout.splitlines():
                return
            starting = False
        if not starting or attached.poll() is not None or time.monotonic() >= deadline:
            break
        run.pause(delay)
        delay = min(delay * 2, 0.2)
    reason = (r.stderr.strip() or r.stdout.strip() or f"exit {r.status}").splitlines()[-1]
    if reason.startswith(PROXY_SILENT):
        raise unhealthy(run, reason)
    if reason.startswith(NO_CLIENT):
        raise BottleError(f"{reason}; install one of them in the image, or pass --no-self-test")
    if attached.poll() is not None:
        reason = f"the agent container stopped (exit {attached.returncode}) before it could be checked"
    raise BottleError(f"isolation self-test failed, so the agent was not started and the bottle is torn "
                      f"down: {reason}")


def report_egress(engine: Engine, plan: Plan, report_json: str | None, quiet: bool, broker=None,
                  save_learned: bool = False) -> None:
    """Summarise pipelock's decisions (and the broker's requests) for the session; runs before the sidecar is
    removed."""
    engine.note = "teardown: pipelock's decisions, for the egress report"
    r = engine.logs(plan.sidecar, timeout=engine.ctx.teardown_timeout)
    if engine.dry_run:
        return
    report = egress_report(parse_events(r.stdout))
    if broker is not None:
        report["brokered"] = broker.stats()
    state = read_live(plan.private_dir) if plan.private_dir else None
    if state and (state.get("added") or state.get("denied")):
        report["live"] = {k: state.get(k, []) for k in ("added", "denied", "hosts")}
    if plan.learn:
        report["proposed"] = learned_allow(report)
        report["proposed_trusted"] = learned_trusted(report)
    if report_json:
        try:
            with open(report_json, "w", encoding="utf-8") as f:
                json.dump({"session": plan.session, **report}, f, indent=2)
        except OSError as e:
            warn(f"could not write the egress report to {report_json}: {e.strerror}")
    if not quiet or report["blocked"] or plan.learn:
        say("\n".join(render_report(plan, report)))
    if plan.learn and save_learned:
        try:
            # Added to what the bottle allows already: hosts this session did not use stay.
            path = save_allow({"config_path": plan.config_path, "bottle": plan.bottle}, add=report["proposed"])
            say(f"claude-bottle: saved the proposed allow list in {path}, [bottles.{plan.bottle}] allow"
                + (" (trusted is not edited: add the trusted line above by hand)" if report["proposed_trusted"]
                   else ""))
        except BottleError as e:
            warn(f"the proposed allow list was not saved: {e}")


def start_steps(plan: Plan, engine: Engine, report_json: str | None = None, quiet: bool = False, broker=None,
                save_learned: bool = False, sessions=()) -> list:
    """Every engine step of a start, in an order that respects `after`; teardown is their undo entries.

    `broker`, the session's CredentialBroker (None in a dry run), only feeds the egress report; `sessions`, what
    the preflight found on the engine, has its orphans reaped in the background."""
    agent, sidecar = plan.agent_container, plan.sidecar
    steps = []
    ready = ()
    if plan.egress_network:
        steps.append(Step("egress_network", "the bottle's egress_network must exist", action=require_network))
        ready = ("egress_network",)
    if plan.build_image:
        steps += [Step("image", "reuse the agent image when it exists", after=ready, action=image_present),
                  Step("build", "only when it is missing; the embedded Dockerfile on stdin", after=("image",),
                       action=build_image)]
        ready = ("build",)
    steps.append(Step("orphans", "in the background: tear down the sessions the preflight found orphaned (their "
                      "CLI is gone)", after=ready, action=lambda run: reap_orphans(run.engine, sessions),
                      background=True))
    for name, internal in plan.created_networks:
        steps.append(Step(f"network_{'internal' if internal else 'egress'}",
                          f"a /{SUBNET_BITS} of its own from {SUBNETS_ENV}; the next candidate when it is taken",
                          after=ready, undo=(("network", name),),
                          action=lambda run, name=name, internal=internal: create_network(run, name, internal)))
    nets = tuple(s.name for s in steps if s.name.startswith("network_"))
    if plan.fresh:
        steps.append(Step("state", "an empty state of the session's own, made the agent's", after=ready,
                          undo=(("volume", plan.fresh_volume), ("container", plan.state_init)), action=prepare_state))
    else:
        steps.append(Step("state", "kept across sessions; created and made the agent's only when missing (a fresh "
                          "one, removed at teardown, when another session holds it)", after=ready,
                          action=prepare_state))
    if not plan.fresh:
        steps.append(Step("state_login", "is Claude Code's own login stored in the kept state, where the agent reads "
                          "it? (a kept one only; read-only, no network)", after=("state",),
                          action=check_state_login))
    if plan.clone:
        steps.append(Step("workspace", "a copy of the repository as it is now (history, uncommitted and untracked "
                          "files) in a volume of the session's own; your working tree is only read", after=ready,
                          undo=(("volume", plan.workspace_volume),
                                ("container", workspace_init_spec(plan).name)), action=prepare_workspace))
    report = (("call", report_egress, (engine, plan, report_json, quiet, broker, save_learned)),)
    # The volumes of the sidecar's and the agent's Files (where the engine copies them): undone after the container.
    sidecar_files = tuple(("volume", v) for v in engine.file_volumes(sidecar_spec(plan)))
    agent_files = tuple(("volume", v) for v in engine.file_volumes(agent_spec(plan)))
    steps += [
        Step("sidecar", after=ready + nets, undo=(*sidecar_files, ("container", sidecar)), action=run_sidecar),
        Step("watch", "the sidecar, while the session runs: when it stops, the session ends and says why",
             after=("sidecar",), action=watch_sidecar),
        Step("connect", after=("sidecar",), action=connect_sidecar),
        Step("agent", "at the same time as the sidecar",
             after=ready + nets + ("state",) + (("workspace",) if plan.clone else ()),
             undo=(*agent_files, ("container", agent)), action=create_agent),
    ]
    if plan.egress_network and (plan.self_test or plan.brokered):
        steps.append(Step("addresses", "its address on the egress_network, for the self-test and the credential "
                          "broker", after=("connect",), action=sidecar_addresses))
    if plan.brokered:
        # No engine command: the broker runs in this process and starts before every step.
        steps.append(Step("broker", after=("addresses" if plan.egress_network else "sidecar",),
                          action=point_broker))
    # The agent's command runs once the self-test opens its gate (or at its start): by then the broker has its proxy.
    broker_ready = ("broker",) if plan.brokered else ()
    if plan.self_test:
        steps += [
            Step("start", "attached to your terminal; the command waits behind the self-test's gate",
                 after=("agent",), action=launch_agent),
            Step("self_test", "isolation self-test inside the agent, which also waits for pipelock's /health; opens "
                 "the gate", after=("addresses" if plan.egress_network else "connect", "start", *broker_ready,
                                    *(() if plan.fresh else ("state_login",))),
                 action=run_self_test, then=report),
        ]
    else:
        steps += [
            Step("health", "repeated until healthy", after=("connect",), action=wait_healthy),
            Step("start", "attached to your terminal", after=("agent", "health", *broker_ready,
                                                              *(() if plan.fresh else ("state_login",))),
                 action=launch_agent, then=report),
        ]
    return steps


def wait_agent(proc, ctx: Context, watch=None, stopped=None) -> int:
    """The agent's exit status; a signal ends the wait (teardown then stops the agent), and so does the end of
    `watch` (the sidecar stopped): then the error `stopped()` makes is raised."""
    import subprocess
    while True:
        ctx.check_signal()
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if watch is not None and watch.poll() is not None:
            raise stopped()


def record_start(plan: Plan, ctx: Context | None = None) -> RecordingEngine:
    """A start's steps and teardown run against a RecordingEngine, one step at a time: what the dry run prints.
    The host side of a start (the private dir, the broker, the ssh-agent relay, the workspace's guards) is not
    part of it."""
    engine = RecordingEngine(ctx, missing_images={plan.image} if plan.build_image else ())
    engine.note = "before anything is created"
    plan = identify(inspect_clone(plan), engine, os.environ)
    plan, sessions = claim_workspace(plan, engine)
    with Teardown(engine) as td:
        results = run_steps(start_steps(plan, engine, quiet=True, sessions=sessions), Run(plan, td), workers=1)
        oom_line(engine, plan, wait_agent(results.start, engine.ctx))
    return engine


def run_session(plan: Plan, engine: Engine, secret: str, report_json: str | None = None, quiet: bool = False,
                save_learned: bool = False, sessions=()) -> int:
    """Create the bottle, run the agent attached to this terminal, and always tear everything down.

    The host-side setup (private files, the ssh-agent relay, the workspace's guards) comes first; then
    the steps of `start_steps` run, as many at once as their order allows. Whatever happens, the
    teardown stack unwinds: the egress report, agent and sidecar, networks, the private dir.
    """
    with Teardown(engine) as td:
        try:
            make_private_dir(plan.private_dir)
            td.callback(remove_private_dir, plan.private_dir)
            write_private_files(plan, secret)
        except OSError as e:
            raise private_files_failed(plan, e) from None
        if plan.ssh_agent:
            sock = os.path.join(plan.private_dir, "ssh-agent.sock")
            relay = SshAgentRelay(plan.ssh_agent, sock, plan.identity.uid)
            td.callback(relay.close)
        broker = None
        if plan.brokered:
            # Before the agent's container is created: its sockets are bind-mount sources. The secrets go to
            # the broker alone, read from this process's environment now, never into the plan.
            broker = CredentialBroker(plan.brokered, broker_secrets(plan.brokered, credential_environ(os.environ)),
                                      plan.private_dir,
                                      log=engine.ctx.log)
            td.callback(broker.close)
            broker.start()
        if plan.git_dir:
            # Mount over a hooks dir that exists, or the agent could create one and plant hooks in it.
            os.makedirs(os.path.join(plan.workspace, ".git", "hooks"), exist_ok=True)
            # Runs after the agent's container is gone, so it cannot write another.
            td.callback(quarantine_commondir, plan)
        steps = start_steps(plan, engine, report_json, quiet, broker, save_learned, sessions)
        results = run_steps(steps, Run(plan, td, broker))
        try:
            status = wait_agent(results.start, engine.ctx, results.watch, lambda: sidecar_stopped(engine, plan))
            if results.watch.poll() is not None:
                # The sidecar ended with the agent: an engine restart stops both.
                raise sidecar_stopped(engine, plan)
            oom = oom_line(engine, plan, status)
        except EngineLost:
            td.lost = True
            raise
    if oom:
        say(oom)
    if td.left:
        raise BottleError("teardown did not finish: the engine stopped answering (see the warning above); "
                          "run `claude-bottle gc` once it answers again")
    return status


# ---- Credential broker: secrets stay on the host; the bottle gets a placeholder and a local address ----

# The broker runs in this process. For each brokered endpoint it listens on a Unix socket in the private dir;
# the bottle reaches it at http://127.0.0.1:PORT through a small forwarder, with a placeholder in the secret's
# variable. The broker sets the real header on the way to the endpoint's one upstream, always over verified
# HTTPS and always through pipelock's CONNECT, so the allowlist and the audit log see its traffic too.

CREDENTIAL_KEYS = ("env", "host", "header", "format", "base_url_env", "upstream", "ca_file", "git")
BROKER_PLACEHOLDER = "brokered-by-claude-bottle"
ANTHROPIC_API_HOST = "api.anthropic.com"
ANTHROPIC_BASE_URL_ENV = "ANTHROPIC_BASE_URL"
OAUTH_ENV = "CLAUDE_CODE_OAUTH_TOKEN"
OAUTH_BETA = "oauth-2025-04-20"
BROKER_MAX_BODY = 64 * 1024 * 1024
BROKER_CONNECT_TIMEOUT = 30.0
# Between two reads, not for a whole response: a streamed answer may take many minutes.
BROKER_READ_TIMEOUT = 600.0
BROKER_CHUNK = 64 * 1024
BROKER_MAX_LINE = 64 * 1024
BROKER_MAX_HEADERS = 100
# TRACE and TRACK would echo the request, secret included, back to the bottle.
BROKER_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
FORWARDER_TOOLS = ("socat", "python3", "node", "perl")

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"))
# Headers the broker writes itself: a credential may not name them.
_MANAGED_HEADERS = _HOP_BY_HOP | {"host", "content-length", "expect"}
# Variables a base URL or placeholder must never land in: they steer the shell, the loader, node or git.
_UNSAFE_ENV = frozenset(("PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "SHELL", "USER",
                         "NODE_OPTIONS", "NODE_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB",
                         "GIT_CONFIG_COUNT", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM"))


class Credential(namedtuple("Credential", "env host header format base_url_env upstream ca_file git",
                            defaults=("{}", None, None, None, False))):
    """One `[[bottles.NAME.credentials]]` entry: the host variable holding the secret (never its value), the
    host it belongs to, the header and its format, the variable that gets the broker's address, the upstream
    as (host, port) (None: the host on 443), an extra CA file and whether git's https://HOST/ goes through it."""

    __slots__ = ()


class Endpoint(namedtuple("Endpoint", "index host upstream header format strip beta base_url_env env "
                                      "placeholder git ca_file")):
    """One address the broker serves for a session: no secret in it, so plans and dry runs may print it.

    upstream is ("https", host, port); strip the lower-cased headers dropped from the agent's request before
    `header` is set to `format` around the secret; beta an anthropic-beta token the request must carry (or
    None); placeholder the value the agent gets in `env`."""

    __slots__ = ()


def builtin_credentials() -> tuple:
    """Claude Code's own: an API key (x-api-key) or a subscription token (Authorization: Bearer), one endpoint."""
    upstream = (ANTHROPIC_API_HOST, 443)
    return (
        Credential("ANTHROPIC_API_KEY", ANTHROPIC_API_HOST, "x-api-key", "{}", "ANTHROPIC_BASE_URL", upstream),
        Credential("CLAUDE_CODE_OAUTH_TOKEN", ANTHROPIC_API_HOST, "Authorization", "Bearer {}", "ANTHROPIC_BASE_URL",
                   upstream),
    )


def _check_var(value, field: str) -> str:
    if not isinstance(value, str) or not _ENV_RE.fullmatch(value):
        raise ConfigError(f"{field}: {_printable(value)} is not an environment variable name; "
                          f"use letters, digits and '_'")
    if value in RESERVED_ENV or value in _UNSAFE_ENV or value.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")):
        raise ConfigError(f"{field}: {value} is set by claude-bottle or steers a program in the bottle; "
                          f"name a variable of your own")
    return value


def _check_upstream(value, field: str) -> tuple:
    """`https://host[:port][/]` as (host, port); nothing else, so a secret only ever goes where it says."""
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a URL string like 'https://mirror.example:8443', "
                          f"got {type(value).__name__}")
    if not value.startswith("https://"):
        raise ConfigError(f"{field}: {_printable(value)} is not an https:// URL; the broker sends secrets "
                          f"over verified HTTPS only")
    rest = value[len("https://"):]
    for char, what in (("@", "user info"), ("?", "a query"), ("#", "a fragment"), ("\\", "a backslash")):
        if char in rest:
            raise ConfigError(f"{field}: {_printable(value)} has {what}; write only https://host[:port]")
    authority, _, path = rest.partition("/")
    if path:
        raise ConfigError(f"{field}: {_printable(value)} has a path; write only https://host[:port] "
                          f"(the agent's request supplies the path)")
    if authority.startswith("["):
        raise ConfigError(f"{field}: {_printable(value)} is an IPv6 address; use a hostname or an IPv4 address")
    host, colon, port_text = authority.partition(":")
    port = 443
    if colon:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{field}: {_printable(value)} has no valid port; use 1 to 65535")
        port = int(port_text)
    return check_host(host, field, wildcard=False), port


def _check_ca_file(value, field: str, base_dir: Path) -> str:
    if not isinstance(value, str) or not value or "\0" in value or "\n" in value:
        raise ConfigError(f"{field}: expected the path of a PEM file of CA certificates")
    path = (base_dir / os.path.expanduser(value)).resolve()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{field}: {_visible(str(path))} {what}; give a PEM file of CA certificates "
                          f"(relative paths start at the config file's directory)")
    try:
        with open(path, "rb") as f:
            head = f.read(1024 * 1024)
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {_visible(str(path))}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"{field}: {_visible(str(path))} holds no PEM certificate "
                          f"(-----BEGIN CERTIFICATE-----); convert it with `openssl x509 -outform PEM`")
    return str(path)


def _parse_credential(entry, at: str, base_dir: Path) -> Credential:
    entry = _table(entry, at)
    _check_keys(at, entry, CREDENTIAL_KEYS)
    for key in ("env", "host", "header", "base_url_env"):
        if key not in entry:
            raise ConfigError(f"{at}: missing {key}; every credential needs env, host, header and base_url_env")
    env = _check_var(entry["env"], f"{at} env")
    host = check_host(entry["host"], f"{at} host", wildcard=False)
    header = entry["header"]
    if not isinstance(header, str) or not _TOKEN_RE.fullmatch(header):
        raise ConfigError(f"{at} header: {_printable(header)} is not a header name; write one like "
                          f"'Authorization' or 'x-api-key'")
    if header.lower() in _MANAGED_HEADERS or header.lower().startswith("proxy-"):
        raise ConfigError(f"{at} header: {header} is managed by the broker; name the header the service "
                          f"reads the secret from")
    fmt = entry.get("format", "{}")
    if not isinstance(fmt, str) or not all(" " <= c <= "~" for c in fmt):
        raise ConfigError(f"{at} format: {_printable(fmt)} must be printable ASCII (no CR, LF, NUL or "
                          f"other control characters)")
    if fmt.count("{}") != 1:
        raise ConfigError(f"{at} format: {_printable(fmt)} must hold exactly one {{}} where the secret goes, "
                          f"like 'Bearer {{}}'")
    base_url_env = _check_var(entry["base_url_env"], f"{at} base_url_env")
    if base_url_env == env:
        raise ConfigError(f"{at} base_url_env: {base_url_env} is also env; the agent gets a placeholder in env "
                          f"and the broker's address in base_url_env, so name two variables")
    upstream = (_check_upstream(entry["upstream"], f"{at} upstream") if "upstream" in entry else (host, 443))
    ca_file = _check_ca_file(entry["ca_file"], f"{at} ca_file", base_dir) if "ca_file" in entry else None
    git = entry.get("git", False)
    if not isinstance(git, bool):
        raise ConfigError(f"{at} git: {_printable(git)} is not true or false")
    return Credential(env, host, header, fmt, base_url_env, upstream, ca_file, git)


def parse_credentials(entries, where: str, base_dir: Path) -> tuple:
    """Validate a bottle's `[[bottles.NAME.credentials]]` array; `where` names it in messages, e.g.
    "claude-bottle.toml: [[bottles.web.credentials]]"; a relative ca_file starts at `base_dir`."""
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected an array of tables, got {type(entries).__name__}; write "
                          f"each credential under its own [[...credentials]] header")
    builtin = builtin_credentials()
    builtin_env = {c.env for c in builtin}
    builtin_base = {c.base_url_env for c in builtin}
    credentials, names, git_hosts = [], {}, set()
    for i, entry in enumerate(entries, 1):
        at = f"{where} #{i}"
        c = _parse_credential(entry, at, base_dir)
        for key, name in (("env", c.env), ("base_url_env", c.base_url_env)):
            if name in names:
                raise ConfigError(f"{at} {key}: {name} is already used by {names[name]}; give each credential "
                                  f"its own variables")
            names[name] = f"#{i} {key}"
        if c.env == "CLAUDE_CODE_OAUTH_TOKEN" and (c.host != ANTHROPIC_API_HOST or c.upstream != (c.host, 443)):
            # A subscription token is for Anthropic's own API; a gateway or mirror must never receive it.
            raise ConfigError(f"{at} host: a Claude subscription token is only ever sent to "
                              f"{ANTHROPIC_API_HOST}; remove host and upstream or this entry")
        if c.env in builtin_base:
            raise ConfigError(f"{at} env: {c.env} is where the built-in Anthropic credentials put the "
                              f"broker's address; name the variable that holds your secret")
        if c.base_url_env in builtin_env:
            raise ConfigError(f"{at} base_url_env: {c.base_url_env} is a built-in credential's variable; "
                              f"name another")
        if c.base_url_env in builtin_base and c.env not in builtin_env:
            raise ConfigError(f"{at} base_url_env: {c.base_url_env} belongs to the built-in Anthropic "
                              f"credentials; to replace one, set env to {' or '.join(sorted(builtin_env))}")
        if c.env in builtin_env and c.base_url_env not in builtin_base:
            # One endpoint per base URL: it must drop the placeholder header of either built-in.
            raise ConfigError(f"{at} base_url_env: a replacement for the built-in {c.env} keeps "
                              f"base_url_env = {' or '.join(sorted(builtin_base))}")
        if c.git:
            if c.host in git_hosts:
                raise ConfigError(f"{at} git: another credential already takes git's https://{c.host}/; "
                                  f"set git on one of them")
            git_hosts.add(c.host)
        credentials.append(c)
    return tuple(credentials)


def credential_env_names(credentials) -> frozenset:
    """Every variable that may hold a secret (built-in and `credentials`): the bottle must never get the host's
    value of one; it gets a placeholder from agent_env_for() or nothing."""
    return frozenset(c.env for c in (*builtin_credentials(), *credentials))


def brokered_endpoints(credentials, environ) -> list:
    """The endpoints of a session: built-in credentials, each replaced by a user credential with the same env,
    then the user's; only those whose variable is set (non-empty) on the host. Credentials sharing a
    base_url_env make one endpoint, whose secret is the first one set (the API key before the OAuth token,
    Claude Code's own order), and which drops every header those credentials could send."""
    slots = list(builtin_credentials())
    for c in credentials:
        same = [i for i, b in enumerate(slots) if b.env == c.env]
        if same:
            slots[same[0]] = c
        else:
            slots.append(c)
    chosen, strip = {}, {}
    for c in slots:
        strip.setdefault(c.base_url_env, set()).add(c.header.lower())
        if environ.get(c.env) and c.base_url_env not in chosen:
            value = environ[c.env]
            if not all(" " <= ch <= "~" for ch in value):
                raise ConfigError(f"{c.env}: its value holds a newline, a control or a non-ASCII character, so "
                                  f"it cannot be sent in a header; fix the variable on the host")
            chosen[c.base_url_env] = c
    return [
        Endpoint(index=i, host=c.host, upstream=("https", *(c.upstream or (c.host, 443))), header=c.header,
                 format=c.format,
                 strip=tuple(sorted(strip[c.base_url_env])),
                 beta=OAUTH_BETA if c.env == "CLAUDE_CODE_OAUTH_TOKEN" else None,
                 base_url_env=c.base_url_env, env=c.env, placeholder=BROKER_PLACEHOLDER, git=c.git,
                 ca_file=c.ca_file)
        for i, c in enumerate(chosen.values())
    ]


def broker_secrets(endpoints, environ) -> dict:
    """{env: value} for the endpoints: handed to the broker only, never part of a plan."""
    return {ep.env: environ[ep.env] for ep in endpoints}


def describe_endpoint(ep: Endpoint) -> str:
    """One line for the summary and the dry run (no secret is known here)."""
    _, host, port = ep.upstream
    target = host if port == 443 else f"{host}:{port}"
    git = f", git https://{ep.host}/" if ep.git else ""
    return f"{ep.env} as {ep.header} to https://{target} ({ep.base_url_env}{git})"


def broker_socket_name(endpoint: Endpoint) -> str:
    return f"broker-{endpoint.index}.sock"


def broker_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def agent_env_for(endpoints, ports) -> list:
    """The bottle's variables for the endpoints (`ports[ep.index]` is the forwarder's port for each): the
    placeholder, the base URL, and git's url.<broker>.insteadOf https://<host>/ as GIT_CONFIG_* variables."""
    env, git = [], []
    for ep in endpoints:
        url = broker_url(ports[ep.index])
        env += [(ep.env, ep.placeholder), (ep.base_url_env, url)]
        if ep.git:
            git.append((f"url.{url}/.insteadOf", f"https://{ep.host}/"))
    if git:
        env.append(("GIT_CONFIG_COUNT", str(len(git))))
        for i, (key, value) in enumerate(git):
            env += [(f"GIT_CONFIG_KEY_{i}", key), (f"GIT_CONFIG_VALUE_{i}", value)]
    return env


def _without_hop_by_hop(headers) -> list:
    """`headers` without hop-by-hop ones: the fixed set, Proxy-*, and whatever Connection names."""
    named = {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}
    return [(n, v) for n, v in headers
            if n.lower() not in _HOP_BY_HOP and not n.lower().startswith("proxy-") and n.lower() not in named]


def inject_headers(headers: list, endpoint: Endpoint, secret: str) -> list:
    """The agent's headers with every header it could carry a placeholder in dropped and the real one set;
    for a subscription token, `anthropic-beta` carries the OAuth beta exactly once."""
    out = [(n, v) for n, v in headers if n.lower() not in endpoint.strip]
    if endpoint.beta:
        betas = [i for i, (n, _) in enumerate(out) if n.lower() == "anthropic-beta"]
        tokens = {t.strip() for i in betas for t in out[i][1].split(",")}
        if not betas:
            out.append(("anthropic-beta", endpoint.beta))
        elif endpoint.beta not in tokens:
            name, value = out[betas[-1]]
            out[betas[-1]] = (name, f"{value},{endpoint.beta}" if value.strip() else endpoint.beta)
    out.append((endpoint.header, endpoint.format.replace("{}", secret, 1)))
    return out


def upstream_headers(headers: list, endpoint: Endpoint, secret: str, body_length: int | None) -> list:
    """What goes upstream: Host for the upstream, the agent's end-to-end headers, the credential, and the
    length of the body the broker read (None: the request had none)."""
    _, host, port = endpoint.upstream
    kept = [(n, v) for n, v in _without_hop_by_hop(headers)
            if n.lower() not in ("host", "content-length", "expect")]
    out = [("Host", host if port == 443 else f"{host}:{port}"), *inject_headers(kept, endpoint, secret)]
    if body_length is not None:
        out.append(("Content-Length", str(body_length)))
    return out


class _Refusal(Exception):
    """A request the broker answers itself, then closes the connection."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def _read_head(rfile):
    """(method, target, version, headers) of the next request, or None at a clean end of the connection."""
    line = rfile.readline(BROKER_MAX_LINE + 1)
    if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: one empty line before a request is tolerated
        line = rfile.readline(BROKER_MAX_LINE + 1)
    if not line:
        return None
    if len(line) > BROKER_MAX_LINE:
        raise _Refusal(414, "request line too long")
    parts = line.rstrip(b"\r\n").decode("latin-1").split(" ")
    if not line.endswith(b"\n") or len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]):
        raise _Refusal(400, "malformed request line")
    if parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refusal(505, "the broker speaks HTTP/1.1")
    headers = []
    while True:
        line = rfile.readline(BROKER_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return parts[0], parts[1], parts[2], headers
        if len(line) > BROKER_MAX_LINE or len(headers) >= BROKER_MAX_HEADERS:
            raise _Refusal(431, "request headers too large")
        if not line.endswith(b"\n") or line[:1] in (b" ", b"\t"):
            raise _Refusal(400, "malformed header (or obsolete line folding)")
        name, colon, value = line.rstrip(b"\r\n").decode("latin-1").partition(":")
        value = value.strip(" \t")
        if not colon or not _TOKEN_RE.fullmatch(name) or _HEADER_VALUE_BAD.search(value):
            raise _Refusal(400, "malformed header")
        headers.append((name, value))


def _read_chunked(rfile, cap: int) -> bytes:
    body = bytearray()
    while True:
        line = rfile.readline(BROKER_MAX_LINE + 1)
        size = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
            raise _Refusal(400, "malformed chunked body")
        size = int(size, 16)
        if size == 0:
            break
        if len(body) + size > cap:
            raise _Refusal(413, f"request body over {cap} bytes")
        data = rfile.read(size)
        if len(data) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _Refusal(400, "malformed chunked body")
        body += data
    for _ in range(BROKER_MAX_HEADERS):  # trailers: read and dropped
        line = rfile.readline(BROKER_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return bytes(body)
        if not line.endswith(b"\n"):
            break
    raise _Refusal(400, "malformed chunked trailer")


def _read_body(rfile, headers, cap: int = BROKER_MAX_BODY) -> bytes | None:
    """The request body (chunked decoded), or None when the request has none."""
    te = [v for n, v in headers if n.lower() == "transfer-encoding"]
    cl = [v for n, v in headers if n.lower() == "content-length"]
    if te and cl:
        raise _Refusal(400, "both Transfer-Encoding and Content-Length")
    if te:
        if [c.strip().lower() for v in te for c in v.split(",") if c.strip()] != ["chunked"]:
            raise _Refusal(501, "only the chunked transfer coding is supported")
        return _read_chunked(rfile, cap)
    if not cl:
        return None
    lengths = {v.strip() for v in ",".join(cl).split(",")}
    if len(lengths) != 1 or not re.fullmatch(r"[0-9]{1,18}", next(iter(lengths))):
        raise _Refusal(400, "malformed Content-Length")
    length = int(lengths.pop())
    if length > cap:
        raise _Refusal(413, f"request body over {cap} bytes")
    body = rfile.read(length)
    if len(body) != length:
        raise _Refusal(400, "request body shorter than its Content-Length")
    return body


def _has_token(headers, name: str, token: str) -> bool:
    return any(t.strip().lower() == token for n, v in headers if n.lower() == name for t in v.split(","))


def _tls_context(ca_file: str | None):
    """Verified TLS for an upstream: the system's CAs (SSL_CERT_FILE honoured) plus `ca_file`."""
    import ssl
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _stale(sock) -> bool:
    """A kept connection with something to read between responses has been closed (or broken) by the far end."""
    import select
    if getattr(sock, "pending", lambda: 0)():
        return True
    return bool(select.select([sock], [], [], 0)[0])


class _Tunnel:
    """One agent connection's kept HTTPS connection to its endpoint's upstream, through the proxy's CONNECT."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.proxy = self.context = self.conn = None

    def _connect(self):
        import http.client
        _, host, port = self.endpoint.upstream
        conn = http.client.HTTPSConnection(self.proxy[0], self.proxy[1], timeout=BROKER_CONNECT_TIMEOUT,
                                           context=self.context)
        conn.set_tunnel(host, port)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        conn.sock.settimeout(BROKER_READ_TIMEOUT)
        return conn

    def send(self, method: str, target: str, headers: list, body: bytes | None):
        """The upstream's response to the request. A kept connection the far end has closed is replaced; one
        that fails before any answer is retried once on a new connection (the body is in memory)."""
        import ssl
        for attempt in (1, 2):
            fresh = self.conn is None or self.conn.sock is None or _stale(self.conn.sock)
            if fresh:
                self.close()
                self.conn = self._connect()
            try:
                self.conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    self.conn.putheader(name, value)
                self.conn.endheaders(body)
                return self.conn.getresponse()
            except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                self.close()
                if fresh or attempt == 2:
                    raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _reason(error: BaseException) -> str:
    return _visible(str(error) or type(error).__name__)[:300]


class CredentialBroker:
    """Adds each endpoint's secret to the requests that arrive on its Unix socket, on their way to its upstream.

    The upstream comes from the socket alone, never from the request: the broker takes paths only and sets Host
    itself, so nothing the bottle sends can point a secret at another host or at plain HTTP. Redirects come back
    unchanged and are never followed. Responses stream back as they arrive (server-sent events stay live).

        broker = CredentialBroker(endpoints, broker_secrets(endpoints, os.environ), private_dir)
        td.callback(broker.close)
        paths = broker.start()          # one socket per endpoint, broker_socket_name(ep) in private_dir
        broker.set_proxy((sidecar_ip, PROXY_PORT))  # before the bottle's first request
    """

    def __init__(self, endpoints, secrets: dict, socket_dir: str, log=lambda message: None):
        self.endpoints = list(endpoints)
        missing = [ep.env for ep in self.endpoints if not secrets.get(ep.env)]
        if missing:
            raise BottleError(f"credential broker: no value for {', '.join(missing)}")
        self._secrets = {ep.env: secrets[ep.env] for ep in self.endpoints}
        self.paths = [os.path.join(socket_dir, broker_socket_name(ep)) for ep in self.endpoints]
        self._log = log
        self._proxy = None
        self._lock = threading.Lock()
        self._counts = [{"requests": 0, "status": {}} for _ in self.endpoints]
        self._contexts, self._tls_lock = {}, threading.Lock()
        self._listeners, self._bound, self._conns = [], [], set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<CredentialBroker {', '.join(ep.host for ep in self.endpoints) or 'no endpoints'}>"

    def start(self) -> list:
        """Bind and serve each endpoint's socket (0600, or shared with the bottle's user); return the paths.

        Cheap: the trust store (a few hundred ms) is loaded at the first request, not on the way to the bottle."""
        import socket
        for ep, path in zip(self.endpoints, self.paths):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listeners.append(sock)
            sock.bind(path)
            self._bound.append(path)
            # The agent runs as the user who runs claude-bottle (PRD 0003): private to that uid.
            share_with(path, os.getuid(), 0o600, 0o666)
            sock.listen(64)
            threading.Thread(target=self._accept, args=(sock, ep), daemon=True, name=f"broker-{ep.index}").start()
        return list(self.paths)

    def set_proxy(self, address: tuple) -> None:
        """The CONNECT proxy (pipelock's address as the host reaches it) every upstream connection goes through."""
        host, port = address
        self._proxy = (str(host), int(port))

    def close(self) -> None:
        """Stop listening and end every open connection; safe to call at any point, and twice."""
        import socket
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        for sock in [*self._listeners, *conns]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._listeners = []
        for path in self._bound:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._bound = []

    def stats(self) -> list:
        """Per endpoint: {"host", "env", "requests", "status": {code: count}}; no secret anywhere."""
        with self._lock:
            return [{"host": ep.host, "env": ep.env, "requests": c["requests"], "status": dict(c["status"])}
                    for ep, c in zip(self.endpoints, self._counts)]

    def _context(self, ca_file: str | None):
        with self._tls_lock:
            if ca_file not in self._contexts:
                self._contexts[ca_file] = _tls_context(ca_file)
            return self._contexts[ca_file]

    def _record(self, ep: Endpoint, method: str, target: str, status: int) -> None:
        with self._lock:
            counts = self._counts[ep.index]
            counts["requests"] += 1
            counts["status"][status] = counts["status"].get(status, 0) + 1
        self._log(f"broker: {method} {ep.host} {_visible(target)[:200]} {status}")

    def _accept(self, sock, ep: Endpoint) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, ep), daemon=True, name=f"broker-{ep.index}-conn").start()

    def _serve(self, conn, ep: Endpoint) -> None:
        import http.client
        tunnel = _Tunnel(ep)
        rfile = conn.makefile("rb")
        try:
            conn.settimeout(BROKER_READ_TIMEOUT)
            while True:
                head = None
                try:
                    head = _read_head(rfile)
                    if head is None:
                        return
                    method, target, version, headers = head
                    self._check(method, target)
                    if version == "HTTP/1.1" and _has_token(headers, "expect", "100-continue"):
                        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body = _read_body(rfile, headers)
                except _Refusal as r:
                    method, target = head[:2] if head else ("-", "-")
                    self._answer(conn, ep, method, target, r.status, r.text, keep=False)
                    return
                keep = version == "HTTP/1.1" and not _has_token(headers, "connection", "close")
                if not self._exchange(conn, ep, tunnel, method, target, version, headers, body, keep):
                    return
        except (OSError, http.client.HTTPException):
            return  # the bottle went away, a read timed out, or the upstream broke off mid-answer
        except Exception as e:  # a bug: say so without a message, which might quote a header
            self._log(f"broker: {ep.host}: internal error ({type(e).__name__}); connection closed")
        finally:
            tunnel.close()
            rfile.close()
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _exchange(self, conn, ep: Endpoint, tunnel: _Tunnel, method: str, target: str, version: str,
                  headers: list, body: bytes | None, keep: bool) -> bool:
        """One request upstream and its answer back; True when the agent's connection may carry another."""
        import http.client
        if self._proxy is None:
            self._answer(conn, ep, method, target, 503, "the broker has no proxy yet; try again", keep)
            return keep
        secret = self._secrets[ep.env]
        tunnel.proxy = self._proxy
        try:
            tunnel.context = self._context(ep.ca_file)
            resp = tunnel.send(method, target, upstream_headers(headers, ep, secret, None if body is None
                                                                else len(body)), body)
        except (OSError, http.client.HTTPException) as e:
            tunnel.close()
            _, host, port = ep.upstream
            reason = _reason(e).replace(secret, "[secret]")
            self._answer(conn, ep, method, target, 502,
                         f"cannot reach https://{host}:{port} through the proxy: {reason}", keep)
            return keep
        if resp.status < 200:
            # http.client reads past 100 Continue only; after another 1xx the real answer is still on the wire.
            tunnel.close()
            self._answer(conn, ep, method, target, 502, f"{ep.host} sent an informational {resp.status}, "
                         f"which the broker does not relay", keep)
            return keep
        return self._relay(conn, ep, method, target, version, resp, keep, tunnel)

    @staticmethod
    def _check(method: str, target: str) -> None:
        if method == "CONNECT":
            raise _Refusal(405, "the broker takes no CONNECT; send requests with a path to its address")
        if method not in BROKER_METHODS:
            raise _Refusal(405, f"the broker forwards {', '.join(BROKER_METHODS)} only")
        if not target.startswith("/"):
            raise _Refusal(400, "the broker takes paths only")
        if not all("!" <= c <= "~" for c in target):
            raise _Refusal(400, "the request target must be ASCII without spaces or control characters")

    def _answer(self, conn, ep: Endpoint, method: str, target: str, status: int, text: str, keep: bool) -> None:
        import http.client
        body = f"claude-bottle broker: {text}\n".encode()
        head = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}",
                "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
        if not keep:
            head.append("Connection: close")
        self._record(ep, method, target, status)
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _relay(self, conn, ep: Endpoint, method: str, target: str, version: str, resp, keep: bool,
               tunnel: _Tunnel) -> bool:
        """Send the upstream's response back as it arrives; True when the agent's connection may carry another."""
        headers = [(n, v.replace("\r", " ").replace("\n", " ")) for n, v in _without_hop_by_hop(resp.getheaders())
                   if _TOKEN_RE.fullmatch(n)]
        if method == "HEAD" or resp.status in (204, 304):
            framing = "none"
        elif resp.length is not None and not resp.chunked:
            framing = "length"
        else:
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            framing = "chunked" if version == "HTTP/1.1" else "close"
            if framing == "chunked":
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                keep = False
        if not keep:
            headers.append(("Connection", "close"))
        reason = "".join(c for c in resp.reason if " " <= c <= "~")
        head = [f"HTTP/1.1 {resp.status} {reason}", *(f"{n}: {v}" for n, v in headers)]
        # Counted before the agent can see it: the report (and a test) read the counts once the answers are in.
        self._record(ep, method, target, resp.status)
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if framing == "none":
            resp.read()
            return keep
        expected, sent = resp.length, 0
        while data := resp.read1(BROKER_CHUNK):
            sent += len(data)
            conn.sendall(b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" else data)
        if framing == "chunked":
            conn.sendall(b"0\r\n\r\n")
        if framing == "length" and sent != expected:
            tunnel.close()  # the upstream ended early: the agent must see a short body, not a framing error later
            return False
        resp.close()
        return keep


# The forwarders: accept on 127.0.0.1:argv[1], connect each to the Unix socket argv[2], copy both ways, and pass
# a half-close on (a client that has sent its request may still read the answer).
_FORWARD_PY = """\
import socket, sys, threading
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        u.connect(sys.argv[2])
    except OSError:
        c.close()
        return
    t = threading.Thread(target=pipe, args=(u, c), daemon=True)
    t.start()
    pipe(c, u)
    t.join()
    c.close()
    u.close()
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
_FORWARD_JS = """\
const net = require("net");
const [port, path] = process.argv.slice(-2);
net.createServer({allowHalfOpen: true}, (c) => {
  const u = net.connect({path: path, allowHalfOpen: true});
  c.pipe(u); u.pipe(c);
  c.on("error", () => u.destroy()); u.on("error", () => c.destroy());
  c.on("close", () => u.destroy()); u.on("close", () => c.destroy());
}).listen(Number(port), "127.0.0.1");
"""
_FORWARD_PL = """\
use strict; use IO::Socket::INET; use IO::Socket::UNIX; use IO::Select; use Socket;
my ($port, $path) = @ARGV;
my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port, Listen => 64, ReuseAddr => 1)
  or die "listen: $!";
$SIG{CHLD} = "IGNORE";
while (1) {
  my $c = $l->accept or next;
  if (fork) { close $c; next }
  close $l;
  my $u = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or exit 1;
  my %peer = ($c => $u, $u => $c);
  my $sel = IO::Select->new($c, $u);
  while ($sel->count) {
    for my $h ($sel->can_read) {
      my $n = sysread($h, my $buf, 65536);
      if (!$n) { shutdown($peer{$h}, 1); $sel->remove($h); next }
      for (my $o = 0; $o < $n;) { my $w = syswrite($peer{$h}, $buf, $n - $o, $o); exit 0 unless defined $w; $o += $w }
    }
  }
  exit 0;
}
"""
# The waits: argv is the seconds to wait, then the ports; each must accept a connection in time.
_WAIT_PY = """\
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
for port in sys.argv[2:]:
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(port)), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("claude-bottle: the broker forwarder on 127.0.0.1:%s did not start" % port)
            time.sleep(0.02)
"""
_WAIT_JS = """\
const net = require("net");
const args = process.argv.slice(1), deadline = Date.now() + 1000 * Number(args[0]);
function probe(i) {
  if (i >= args.length) return;
  const s = net.connect(Number(args[i]), "127.0.0.1");
  s.on("connect", () => { s.destroy(); probe(i + 1); });
  s.on("error", () => {
    if (Date.now() > deadline) {
      console.error("claude-bottle: the broker forwarder on 127.0.0.1:" + args[i] + " did not start");
      process.exit(1);
    }
    setTimeout(() => probe(i), 20);
  });
}
probe(1);
"""
# Plain perl-base has no Time::HiRes: count 20 ms pauses instead of reading a clock.
_WAIT_PL = """\
use strict; use IO::Socket::INET;
my ($wait, @ports) = @ARGV;
my $tries = int($wait / 0.02) + 1;
for my $port (@ports) {
  until (IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $port, Timeout => 1)) {
    if (--$tries < 0) {
      print STDERR "claude-bottle: the broker forwarder on 127.0.0.1:$port did not start\n"; exit 1;
    }
    select(undef, undef, undef, 0.02);
  }
}
"""


def forwarder_script(tool: str, pairs: list, wait: float = 5.0) -> str:
    """POSIX sh that serves each (port, unix_socket) on 127.0.0.1:port in the background with `tool` (one of
    FORWARDER_TOOLS), then returns once every port accepts connections; exit 1 when one does not within `wait`
    seconds. Run it with `sh -c` before the agent's command; the forwarders outlive it."""
    if tool not in FORWARDER_TOOLS:
        raise ValueError(f"unknown forwarder tool {tool!r}; use one of {', '.join(FORWARDER_TOOLS)}")
    flag = "-c" if tool == "python3" else "-e"
    ports = [str(int(port)) for port, _ in pairs]
    lines = []
    for port, (_, path) in zip(ports, pairs):
        if tool == "socat":
            lines.append(f"socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr "
                         f"{shlex.quote('UNIX-CONNECT:' + path)} >/dev/null 2>&1 &")
        else:
            program = {"python3": _FORWARD_PY, "node": _FORWARD_JS, "perl": _FORWARD_PL}[tool]
            lines.append(f"{tool} {flag} {shlex.quote(program)} {port} {shlex.quote(path)} >/dev/null 2>&1 &")
    if tool != "socat":
        # One waiting process for every port: starting an interpreter per attempt would be the slow part.
        program = {"python3": _WAIT_PY, "node": _WAIT_JS, "perl": _WAIT_PL}[tool]
        lines.append(f"{tool} {flag} {shlex.quote(program)} {wait:g} {' '.join(ports)} || exit 1")
        return "\n".join(lines) + "\n"
    for port in ports:
        lines += [
            "i=0",
            f"until socat -u /dev/null TCP:127.0.0.1:{port} >/dev/null 2>&1; do",
            f'  i=$((i + 1)); if [ "$i" -gt {max(1, int(wait / 0.05))} ]; then',
            f"    echo 'claude-bottle: the broker forwarder on 127.0.0.1:{port} did not start' >&2; exit 1",
            "  fi; sleep 0.05",
            "done",
        ]
    return "\n".join(lines) + "\n"


# ---- The subscription login: kept on the host, brokered into every session ----

# `claude-bottle login` runs Claude Code's own `claude setup-token` in a throwaway bottle (no workspace, no state,
# egress only to LOGIN_HOSTS) and keeps the one-year token it prints here, never in a bottle or on the engine.
LOGIN_FILE = "oauth-token"
OAUTH_TOKEN_PREFIX = "sk-ant-oat01-"
OAUTH_TOKEN_RE = re.compile(r"sk-ant-oat01-[A-Za-z0-9_-]{20,512}")
# Where the token was in the login's output, as the terminal shows it.
TOKEN_SHOWN = "[the subscription token: kept by claude-bottle, not shown]"
# Claude Code's stored login on Linux, in CLAUDE_CONFIG_DIR: in a bottle, the agent's to read.
CREDENTIALS_FILE = ".credentials.json"
LOGIN_NONE = ("none: Claude Code will ask you to log in inside the bottle, and that login will be readable by the "
              "agent; run `claude-bottle login`")
# Wide enough that Claude Code's screen never wraps the token it prints (a pty starts with no size).
LOGIN_COMMAND = ("sh", "-c", "stty cols 1000 2>/dev/null; exec claude setup-token")


def kept_login(environ) -> tuple:
    """(path, token) of the login `claude-bottle login` keeps, or () when there is none."""
    path = login_file(environ)
    token = read_login(path)
    return (str(path), token) if token else ()


def with_login(environ, login: tuple):
    """`environ` with the kept login's token as CLAUDE_CODE_OAUTH_TOKEN, unless it sets Claude Code credentials of
    its own (they win, as they would in Claude Code)."""
    if login and not any(environ.get(c.env) for c in builtin_credentials()):
        return {**environ, OAUTH_ENV: login[1]}
    return environ


def credential_environ(environ):
    """The secrets a session's broker gets: the environment's, and the kept login (read again, never planned)."""
    return with_login(environ, kept_login(environ))


def login_file(environ) -> Path | None:
    """`$XDG_CONFIG_HOME/claude-bottle/oauth-token`, else under `~/.config`; None when neither is known."""
    base = environ.get("XDG_CONFIG_HOME") or (os.path.join(environ["HOME"], ".config") if environ.get("HOME")
                                               else "")
    return Path(base) / LABEL / LOGIN_FILE if os.path.isabs(base) else None


def check_oauth_token(text: str, where: str) -> str:
    token = text.strip()
    if not OAUTH_TOKEN_RE.fullmatch(token):
        raise ConfigError(f"{where}: not a Claude subscription token ({OAUTH_TOKEN_PREFIX}... of letters, digits, "
                          f"'-' and '_'); run `claude-bottle login` again")
    return token


def read_login(path: Path | None) -> str | None:
    """The kept token, or None when there is none. A file another user owns, others may read or write, that is not
    a regular file or holds no token is refused: its token may have been read, or planted."""
    import stat
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}; remove it (`claude-bottle logout`) and run `claude-bottle login`")
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise ConfigError(f"{path}: not a regular file of yours; remove it (`claude-bottle logout`) and run "
                              f"`claude-bottle login`")
        if st.st_mode & 0o077:
            raise ConfigError(f"{path}: mode {st.st_mode & 0o777:04o} lets others read it, so the token may be "
                              f"known; `claude-bottle logout`, then `claude-bottle login` (or chmod 600 it)")
        return check_oauth_token(f.read(4096), str(path))


def write_login(path: Path, token: str) -> None:
    """Keep `token` in `path`, 0600 in a 0700 directory, atomically: a failed write leaves the old one."""
    token = check_oauth_token(token, "the token")
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    atomic_write(str(path), token + "\n", 0o600)


def login_line(brokered, raw_env, environ, path: str) -> str:
    """Where Claude Code's login comes from in a session: the preflight's `login:` line."""
    ep = next((e for e in brokered if e.base_url_env == ANTHROPIC_BASE_URL_ENV), None)
    if ep is not None:
        if ep.env == OAUTH_ENV and path and not environ.get(OAUTH_ENV):
            return f"brokered: your subscription login from `claude-bottle login` ({_visible(path)})"
        return f"brokered: {ep.env} from your environment"
    raw = [n for n in raw_env if n in (*(c.env for c in builtin_credentials()), "ANTHROPIC_AUTH_TOKEN")
           and environ.get(n)]
    if raw:
        return f"{', '.join(raw)} passed raw (visible to the agent)"
    return LOGIN_NONE


def login_plan(plan: Plan) -> Plan:
    """A start's plan made into the login's: Claude Code's setup-token in the agent's image, egress only to
    Anthropic's login hosts, nothing of the user's in it (no workspace, state, SSH, credential or variable)."""
    return plan._replace(hosts=LOGIN_HOSTS, bottle_allow=(), extra_allow=(), trusted=(), ssh=(), ssh_agent=None,
                         env=(), env_unset=(), brokered=(), command=LOGIN_COMMAND, self_test=True, learn=False,
                         clone=False, fresh=True, read_only=(), git_dir=False, connectors=False, mcp=(),
                         login="")


def login_spec(plan: Plan, ip: str | None = None) -> ContainerSpec:
    """The login's container: the agent's image and user, a tmpfs for Claude Code's state, no workspace, and no log
    on the engine (the token passes through its output)."""
    ident = planned_identity(plan)
    mounts = [*identity_mounts(plan, ident),
              Mount("tmpfs", "", AGENT_STATE_DIR, options=f"uid={ident.uid},gid={ident.gid},mode=0700")]
    env = [("HOME", ident.home), ("CLAUDE_CONFIG_DIR", AGENT_STATE_DIR), *proxy_env(plan)]
    return ContainerSpec(
        name=plan.agent_container, role="login", image=plan.image,
        command=("-c", GATE, "claude-bottle-gate", *plan.command), entrypoint="/bin/sh",
        user=f"{ident.uid}:{ident.gid}", network=plan.internal_network, ip=ip, no_outside_dns=True,
        pids_limit=AGENT_PIDS_LIMIT, init=True, interactive=True, tty=plan.tty, workdir=ident.home,
        mounts=tuple(mounts), env=tuple(env), labels=session_labels(plan, "agent"), no_logs=True)


def launch_login(run: Run):
    """Start the login's container attached, its output to this process (which shows it, the token withheld)."""
    proc = run.engine.start_attached(run.plan.agent_container, capture=True)
    run.td.adopt(proc)
    return proc


def login_steps(plan: Plan, engine: Engine) -> list:
    """The login's bottle: the steps of a start without state, workspace, broker or report."""
    agent, sidecar = plan.agent_container, plan.sidecar
    steps, ready = [], ()
    if plan.egress_network:
        steps.append(Step("egress_network", "the bottle's egress_network must exist", action=require_network))
        ready = ("egress_network",)
    if plan.build_image:
        steps += [Step("image", "reuse the agent image when it exists", after=ready, action=image_present),
                  Step("build", "only when it is missing", after=("image",), action=build_image)]
        ready = ("build",)
    for name, internal in plan.created_networks:
        steps.append(Step(f"network_{'internal' if internal else 'egress'}", after=ready, undo=(("network", name),),
                          action=lambda run, name=name, internal=internal: create_network(run, name, internal)))
    nets = tuple(s.name for s in steps if s.name.startswith("network_"))
    sidecar_files = tuple(("volume", v) for v in engine.file_volumes(sidecar_spec(plan)))
    agent_files = tuple(("volume", v) for v in engine.file_volumes(login_spec(plan)))
    steps += [
        Step("sidecar", "egress only to Anthropic's login hosts", after=ready + nets,
             undo=(*sidecar_files, ("container", sidecar)), action=run_sidecar),
        Step("connect", after=("sidecar",), action=connect_sidecar),
        Step("agent", "claude setup-token: no workspace, no state volume, no log", after=ready + nets,
             undo=(*agent_files, ("container", agent)),
             action=lambda run: run.engine.create(login_spec(run.plan, subnet_address(run.results.network_internal,
                                                                                       3)))),
    ]
    if plan.egress_network:
        steps.append(Step("addresses", after=("connect",), action=sidecar_addresses))
    steps += [
        Step("start", "its output comes to claude-bottle, which withholds the token", after=("agent",),
             action=launch_login),
        Step("self_test", "isolation self-test; opens the gate", after=("addresses" if plan.egress_network
                                                                         else "connect", "start"),
             action=run_self_test),
    ]
    return steps


class TokenFilter:
    """Passes a login's output on with every subscription token in it replaced by TOKEN_SHOWN; keeps the last one.

    Text that may be the start of a token is held back until it is known not to be one, so no part of a token is
    ever shown, however the output is cut into reads."""

    def __init__(self):
        import codecs
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.token = None
        self.malformed = False

    def _take(self, match) -> str:
        self.token = match.group(0)
        return TOKEN_SHOWN

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._held + self._decode.decode(data, final=final)
        cut = len(text)
        if not final:
            start = text.rfind(OAUTH_TOKEN_PREFIX)
            if start >= 0 and re.fullmatch(r"[A-Za-z0-9_-]*", text[start + len(OAUTH_TOKEN_PREFIX):]):
                cut = start
            else:
                for k in range(len(OAUTH_TOKEN_PREFIX) - 1, 0, -1):
                    if text.endswith(OAUTH_TOKEN_PREFIX[:k]):
                        cut = len(text) - k
                        break
        shown, self._held = text[:cut], text[cut:]
        shown = OAUTH_TOKEN_RE.sub(self._take, shown)
        if OAUTH_TOKEN_PREFIX in shown:
            # The prefix with too little after it: not a token; nothing of it is kept, nor shown.
            self.malformed = True
            shown = re.sub(r"sk-ant-oat01-[A-Za-z0-9_-]*", TOKEN_SHOWN, shown)
        return shown


def pump_login(proc, ctx: Context, out=None) -> tuple:
    """Show the login's output as it comes, the token withheld; (exit status, token or None, malformed)."""
    import select
    out = out or sys.stdout
    filt = TokenFilter()
    fd = proc.stdout.fileno()
    while True:
        ctx.check_signal()
        if not select.select([fd], [], [], 0.1)[0]:
            continue
        chunk = os.read(fd, 65536)
        out.write(filt.feed(chunk, final=not chunk))
        out.flush()
        if not chunk:
            break
    return wait_agent(proc, ctx), filt.token, filt.malformed


def run_login(plan: Plan, engine: Engine) -> str:
    """Run the login's bottle to its end and return the token it printed; everything it made is removed, whatever
    happens, before this returns or raises."""
    with Teardown(engine) as td:
        make_private_dir(plan.private_dir)
        td.callback(remove_private_dir, plan.private_dir)
        write_private_files(plan)
        results = run_steps(login_steps(plan, engine), Run(plan, td))
        status, token, malformed = pump_login(results.start, engine.ctx)
    if td.left:
        raise BottleError("teardown did not finish: the engine stopped answering (see the warning above); "
                          "run `claude-bottle gc` once it answers again")
    if status != 0:
        raise BottleError(f"login: `claude setup-token` failed (exit {status}); nothing was stored")
    if malformed and token is None:
        raise BottleError("login: Claude Code printed a malformed subscription token; nothing was stored")
    if token is None:
        raise BottleError(f"login: Claude Code printed no subscription token ({OAUTH_TOKEN_PREFIX}...); nothing "
                          f"was stored")
    return token


def state_check_spec(plan: Plan, volume: str) -> ContainerSpec:
    """Look for Claude Code's stored login in a state volume, read-only, as the agent's user, with no network."""
    ident = plan.identity
    return ContainerSpec(name=f"{LABEL}-{plan.session}-state-check", role="state-check", image=plan.image,
                         entrypoint="/bin/sh", command=("-c", f"test -e {AGENT_STATE_DIR}/{CREDENTIALS_FILE}"),
                         user=f"{ident.uid}:{ident.gid}", pids_limit=64,
                         mounts=(Mount("volume", volume, AGENT_STATE_DIR, readonly=True),),
                         labels=session_labels(plan, "state-check"), remove=True)


def state_login_warning(volume: str, agent: str) -> str:
    return (f"claude-bottle: warning: the state {volume} holds a Claude Code login ({CREDENTIALS_FILE}, with its "
            f"refresh token) that the agent can read; run `claude-bottle login` for one kept outside the bottle, "
            f"then `claude-bottle logout --state {agent}` to remove it from the volume")


# ---- The plain-HTTP forwarder: plain HTTP through a CONNECT tunnel of the sidecar ----

# Each program: listen on 127.0.0.1:argv[1], then go to the background (the foreground process exits 0 once the
# port accepts connections, so the sh before the agent's command waits exactly as long as the start takes, with
# no poll and no clock). For each client: a proxy request for http://HOST[:PORT]/PATH becomes a CONNECT HOST:PORT
# to pipelock (argv[2]:argv[3], the only address it ever connects to), then the request in origin form with
# `Connection: close` through the tunnel, and the answer copied back. pipelock's refusal of the CONNECT (403 and its
# reason) is the client's answer. A CONNECT from the client goes to pipelock as it came.
_HTTP_FORWARD_PY = """\
import os, socket, sys, threading
PROXY = (sys.argv[2], int(sys.argv[3]))
DROP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")
def head(s, buf):
    while b"\\r\\n\\r\\n" not in buf:
        data = s.recv(65536) if len(buf) < 65536 else b""
        if not data:
            raise EOFError
        buf += data
    return buf.partition(b"\\r\\n\\r\\n")[::2]
def answer(c, status, body):
    c.sendall(b"HTTP/1.1 %s\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nContent-Length: %d\\r\\n"
              b"Connection: close\\r\\n\\r\\n%s" % (status, len(body), body))
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    u = None
    try:
        h, rest = head(c, b"")
        line, _, fields = h.partition(b"\\r\\n")
        method, target, version = line.split(b" ")
        try:
            u = socket.create_connection(PROXY)
        except OSError:
            return answer(c, b"502 Bad Gateway", b"claude-bottle: the plain-HTTP forwarder cannot reach pipelock\\n")
        if method == b"CONNECT":
            u.sendall(h + b"\\r\\n\\r\\n" + rest)
        elif target[:7].lower() != b"http://":
            return answer(c, b"400 Bad Request", b"claude-bottle: the plain-HTTP forwarder takes http:// URLs\\n")
        else:
            auth, _, path = target[7:].partition(b"/")
            auth = auth.rpartition(b"@")[2]
            if b":" not in auth.rpartition(b"]")[2]:
                auth += b":80"
            u.sendall(b"CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (auth, auth))
            ph, extra = head(u, b"")
            status = ph.partition(b"\\r\\n")[0].split(b" ", 1)[1]
            if not status.startswith(b"200"):
                length = 0
                for f in ph.split(b"\\r\\n")[1:]:
                    k, _, v = f.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(extra) < length:
                    data = u.recv(65536)
                    if not data:
                        break
                    extra += data
                return answer(c, status, extra[:length])
            kept = [f for f in fields.split(b"\\r\\n") if f and f.partition(b":")[0].strip().lower() not in DROP]
            u.sendall(b"\\r\\n".join([b"%s /%s %s" % (method, path.partition(b"#")[0], version), *kept,
                                    b"Connection: close", b"", b""]) + rest)
        t = threading.Thread(target=pipe, args=(u, c), daemon=True)
        t.start()
        pipe(c, u)
        t.join()
    except (OSError, ValueError, EOFError, IndexError):
        pass
    finally:
        c.close()
        if u:
            u.close()
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
if os.fork():
    os._exit(0)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
# node cannot fork: it starts itself again, detached, and waits for the child's word that it listens.
_HTTP_FORWARD_JS = """\
const net = require("net");
const [port, phost, pport] = process.argv.slice(-3);
if (process.env.CLAUDE_BOTTLE_FORWARDER !== "serve") {
  const child = require("child_process").spawn(process.execPath, [...process.execArgv, port, phost, pport],
    {detached: true, stdio: ["ignore", "pipe", "ignore"], env: {...process.env, CLAUDE_BOTTLE_FORWARDER: "serve"}});
  child.stdout.on("data", () => process.exit(0));
  child.on("exit", () => process.exit(1));
} else {
const DROP = /^(proxy-connection|proxy-authorization|connection|keep-alive)\\s*:/i;
function head(s, done) {
  let buf = Buffer.alloc(0);
  const more = (d) => {
    buf = Buffer.concat([buf, d]);
    const i = buf.indexOf("\\r\\n\\r\\n");
    if (i >= 0) {
      s.removeListener("data", more); s.pause();
      done(buf.subarray(0, i).toString("latin1"), buf.subarray(i + 4));
    } else if (buf.length > 65536) s.destroy();
  };
  s.on("data", more);
}
function answer(c, status, body) {
  c.end(Buffer.concat([Buffer.from("HTTP/1.1 " + status + "\\r\\nContent-Type: text/plain; charset=utf-8\\r\\n" +
    "Content-Length: " + body.length + "\\r\\nConnection: close\\r\\n\\r\\n", "latin1"), body]));
}
net.createServer({allowHalfOpen: true}, (c) => {
  c.on("error", () => c.destroy());
  head(c, (h, rest) => {
    const lines = h.split("\\r\\n"), [method, target, version] = lines[0].split(" ");
    let relaying = false;
    const u = net.connect({host: phost, port: Number(pport), allowHalfOpen: true});
    u.on("error", () => relaying ? c.destroy() :
      answer(c, "502 Bad Gateway", Buffer.from("claude-bottle: the plain-HTTP forwarder cannot reach pipelock\\n")));
    c.on("close", () => u.destroy());
    const relay = (first) => { relaying = true; u.write(first); c.pipe(u); u.pipe(c); };
    if (method === "CONNECT") return relay(Buffer.concat([Buffer.from(h + "\\r\\n\\r\\n", "latin1"), rest]));
    const m = /^http:\\/\\/([^\\/]*)(\\/.*)?$/i.exec(target || "");
    if (!m || !version) {
      u.destroy();
      return answer(c, "400 Bad Request", Buffer.from("claude-bottle: the plain-HTTP forwarder takes http:// URLs\\n"));
    }
    let auth = m[1].replace(/^.*@/, "");
    if (!auth.replace(/^\\[.*\\]/, "").includes(":")) auth += ":80";
    const path = (m[2] || "/").replace(/#.*/s, "");
    u.write("CONNECT " + auth + " HTTP/1.1\\r\\nHost: " + auth + "\\r\\n\\r\\n");
    head(u, (ph, extra) => {
      const status = ph.split("\\r\\n")[0].split(" ").slice(1).join(" ");
      if (!status.startsWith("200")) {
        const n = Number((/\\r\\ncontent-length:\\s*(\\d+)/i.exec(ph) || [0, 0])[1]);
        let body = extra, sent = false;
        const done = () => { if (!sent) { sent = true; u.destroy(); answer(c, status, body.subarray(0, n)); } };
        if (body.length >= n) return done();
        u.on("data", (d) => { body = Buffer.concat([body, d]); if (body.length >= n) done(); });
        u.on("end", done); u.resume();
        return;
      }
      const kept = lines.slice(1).filter((f) => f && !DROP.test(f));
      relay(Buffer.concat([Buffer.from([method + " " + path + " " + version, ...kept, "Connection: close", "", ""]
        .join("\\r\\n"), "latin1"), rest]));
    });
  });
}).listen(Number(port), "127.0.0.1", () => process.stdout.write("up\\n"));
}
"""
_HTTP_FORWARD_PL = """\
use strict; use IO::Socket::INET; use IO::Select;
my ($port, $phost, $pport) = @ARGV;
my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port, Listen => 128, ReuseAddr => 1)
  or die "listen: $!";
exit 0 if fork;
$SIG{CHLD} = "IGNORE";
sub head {
  my ($s, $buf) = @_;
  until ($buf =~ /\\r\\n\\r\\n/) {
    return () if length($buf) > 65536;
    my $n = sysread($s, my $d, 65536);
    return () unless $n;
    $buf .= $d;
  }
  my $i = index($buf, "\\r\\n\\r\\n");
  return (substr($buf, 0, $i), substr($buf, $i + 4));
}
sub put {
  my ($h, $buf) = @_;
  for (my $o = 0; $o < length $buf;) {
    my $w = syswrite($h, $buf, length($buf) - $o, $o); exit 0 unless defined $w; $o += $w;
  }
}
sub answer {
  my ($c, $status, $body) = @_;
  put($c, "HTTP/1.1 $status\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nContent-Length: " . length($body)
    . "\\r\\nConnection: close\\r\\n\\r\\n$body");
  exit 0;
}
while (1) {
  my $c = $l->accept or next;
  if (fork) { close $c; next }
  close $l;
  my ($h, $rest) = head($c, "") or exit 0;
  my ($line, @fields) = split /\\r\\n/, $h;
  my ($method, $target, $version) = split / /, $line;
  my $u = IO::Socket::INET->new(PeerAddr => $phost, PeerPort => $pport, Proto => "tcp")
    or answer($c, "502 Bad Gateway", "claude-bottle: the plain-HTTP forwarder cannot reach pipelock\\n");
  if ($method eq "CONNECT") {
    put($u, "$h\\r\\n\\r\\n$rest");
  } else {
    $target =~ m{^http://([^/]*)(/.*)?$}is && defined $version
      or answer($c, "400 Bad Request", "claude-bottle: the plain-HTTP forwarder takes http:// URLs\\n");
    my ($auth, $path) = ($1, defined $2 ? $2 : "/");
    $auth =~ s/^.*@//s;
    (my $tail = $auth) =~ s/^\\[.*\\]//s;
    $auth .= ":80" unless $tail =~ /:/;
    $path =~ s/#.*//s;
    put($u, "CONNECT $auth HTTP/1.1\\r\\nHost: $auth\\r\\n\\r\\n");
    my ($ph, $extra) = head($u, "") or exit 0;
    my ($status) = $ph =~ m{^\\S+ ([^\\r\\n]*)};
    if ($status !~ /^200/) {
      my ($n) = $ph =~ /\\r\\ncontent-length:\\s*(\\d+)/i;
      $n = 0 unless defined $n;
      while (length($extra) < $n) { my $r = sysread($u, my $d, 65536); last unless $r; $extra .= $d }
      answer($c, $status, substr($extra, 0, $n));
    }
    my @kept = grep { length && !/^(proxy-connection|proxy-authorization|connection|keep-alive)\\s*:/i } @fields;
    put($u, join("\\r\\n", "$method $path $version", @kept, "Connection: close", "", "") . $rest);
  }
  my %peer = ($c => $u, $u => $c);
  my $sel = IO::Select->new($c, $u);
  while ($sel->count) {
    for my $h ($sel->can_read) {
      my $n = sysread($h, my $buf, 65536);
      if (!$n) { shutdown($peer{$h}, 1); $sel->remove($h); next }
      put($peer{$h}, $buf);
    }
  }
  exit 0;
}
"""
HTTP_FORWARDER_TOOLS = ("python3", "node", "perl")
HTTP_FORWARDER_FAILED = "claude-bottle: the plain-HTTP forwarder did not start"
# An image with none of HTTP_FORWARDER_TOOLS: its command still runs, with plain HTTP through pipelock's own proxy.
HTTP_FORWARDER_NONE = ("claude-bottle: the agent image has none of python3, node or perl for the plain-HTTP "
                       "forwarder; plain HTTP goes through pipelock's scanning proxy instead (slow for big downloads)")


def render_plain_http_forwarder(plan: Plan) -> str:
    """POSIX sh, run before the agent's command: start the plain-HTTP forwarder on 127.0.0.1:PLAIN_HTTP_PORT with
    the first of HTTP_FORWARDER_TOOLS the image has, returning once it listens; "" unless plain_http is "tunnel".
    Without any of them the command's http_proxy goes back to pipelock."""
    if plan.plain_http != PLAIN_HTTP_TUNNEL:
        return ""
    args = f"{PLAIN_HTTP_PORT} {shlex.quote(plan.sidecar)} {PROXY_PORT}"
    lines = []
    for i, tool in enumerate(HTTP_FORWARDER_TOOLS):
        program = {"python3": _HTTP_FORWARD_PY, "node": _HTTP_FORWARD_JS, "perl": _HTTP_FORWARD_PL}[tool]
        lines += [f"{'elif' if i else 'if'} command -v {tool} >/dev/null 2>&1; then",
                  f"{tool} {'-c' if tool == 'python3' else '-e'} {shlex.quote(program)} {args} </dev/null >/dev/null "
                  f"2>&1 || {{ echo {shlex.quote(HTTP_FORWARDER_FAILED)} >&2; exit 1; }}"]
    url = shlex.quote(plan.proxy_url)
    lines += ["else", f"  export http_proxy={url} HTTP_PROXY={url}", f"  echo {shlex.quote(HTTP_FORWARDER_NONE)} >&2",
              "fi"]
    return "\n".join(lines) + "\n"


# ---- Operating bottles: finding sessions, stopping them, reaping orphans ----

def hostname() -> str:
    return os.uname().nodename


def split_owner(owner: str) -> tuple:
    """The `claude-bottle.owner` label, `host:pid`, as (host, pid); an empty host or a None pid when unreadable."""
    host, _, pid = (owner or "").rpartition(":")
    return host, int(pid) if pid.isdigit() else None


def process_start(pid: int, proc: str = "/proc") -> str | None:
    """A token that changes when `pid` is reused: the boot and the process's start time.

    None: there is no such process. "": it cannot be told (then the owner is "unknown", never alive or gone).
    """
    try:
        stat = Path(proc, str(pid), "stat").read_text()
        boot = Path(proc, "sys/kernel/random/boot_id").read_text().strip()
        # The 22nd field, counted after the command name in parentheses (which may hold spaces).
        return f"{boot}/{stat.rpartition(')')[2].split()[19]}"
    except FileNotFoundError:
        if os.path.isdir(os.path.join(proc, "self")):
            return None
    except (OSError, IndexError):
        return ""
    # No /proc (macOS, BSD): ps gives the start time to the second, which pid reuse cannot repeat in time.
    import subprocess
    try:
        r = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"ps/{' '.join(r.stdout.split())}" if r.stdout.strip() else None


OWNER_SECRET = "owner"


def proof_of(secret: str) -> str:
    return _sha256(secret)[:32]


def owner_state(session: dict) -> str:
    """"alive", "gone" or "unknown": whether the CLI that owns a session still runs.

    Alive only when everything matches: this host, a process with the recorded pid and start time
    (so a reused pid is gone), and the secret in the owner's private dir that hashes to the recorded
    proof. Gone only on proof of death: no such process, or one that started at another time. Anything
    else (another host, another user's process, an older claude-bottle's labels, unreadable files) is
    unknown, which gc and the reaper leave alone.
    """
    host, pid = split_owner(session["owner"])
    if host != hostname() or pid is None or not session.get("owner-start"):
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except OSError:
        return "unknown"
    start = process_start(pid)
    if start is None or (start and start != session["owner-start"]):
        return "gone"
    if not start:
        return "unknown"
    try:
        secret = Path(session.get("owner-dir") or "/nonexistent", OWNER_SECRET).read_text()
    except OSError:
        return "unknown"
    return "alive" if proof_of(secret) == session.get("owner-proof") else "unknown"


def signal_owner(session: dict, signum: int = signal.SIGTERM) -> bool:
    """Send `signum` to the session's owner, only when it is the proven owner; True when sent."""
    pid = split_owner(session["owner"])[1]
    fd = None
    try:
        # Opened first: a pidfd names that very process, so a pid reused after the check cannot be hit.
        fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except OSError:
        pass
    try:
        if owner_state(session) != "alive":
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, signum)
        else:
            os.kill(pid, signum)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def find_sessions(engine: Engine, session: str | None = None) -> list:
    """Every session (or the one named) with a container or network labelled claude-bottle.session, oldest first."""
    found = {}
    for r in engine.resources(session):
        label = {k: r.labels.get(f"{LABEL}.{k}") or "" for k in SESSION_KEYS}
        s = found.setdefault(label["session"], {
            "session": label["session"], "agent": label["agent"] or "?", "bottle": label["bottle"] or "?",
            **{k: label[k] for k in SESSION_KEYS if k.startswith("owner")},
            "containers": [], "networks": [], "created": None,
        })
        for key in ("workspace", "mode"):
            s[key] = s.get(key) or label[key]
        entry = {"name": r.name, "role": label["role"]}
        if r.kind == "container":
            entry["state"] = r.state
        s[f"{r.kind}s"].append(entry)
        if r.created and (s["created"] is None or r.created < s["created"]):
            s["created"] = r.created
    sessions = sorted(found.values(), key=lambda s: s["created"] or 0)
    for s in sessions:
        agent = member(s, "agent")
        s["state"] = agent["state"] if agent else ("starting" if s["containers"] else "networks only")
        s["owner_state"] = owner_state(s)
        s["owner_alive"] = {"alive": True, "gone": False}.get(s["owner_state"])
    return sessions


def member(session: dict, role: str) -> dict | None:
    """The session's container of that role ("agent", "pipelock"), or None."""
    return next((c for c in session["containers"] if c["role"] == role), None)


def is_orphan(session: dict) -> bool:
    """Left behind by a CLI that is provably gone; a session whose owner is unknown is never an orphan."""
    return session["owner_state"] == "gone"


def teardown_session(engine: Engine, session: dict) -> None:
    """The same ordered teardown as a session's own exit: agent and sidecar, then its networks, the agent's work
    brought back (clone mode; its copy goes only then), then its own volumes."""
    sid = session["session"]
    workspace = workspace_volume_name(sid)
    with Teardown(engine) as td:
        try:
            # Only a session's own volumes carry its label; a persistent state volume never does.
            for v in engine.volumes(SESSION_LABEL, sid):
                if v["name"] == workspace:
                    td.callback(rescue_work, engine, session, workspace)
                else:
                    td.volume(v["name"])
        except BottleError as e:
            warn(f"could not look for the volumes of session {sid}: {e}")
        for n in session["networks"]:
            td.network(n["name"])
        for c in session["containers"]:
            td.container(c["name"])


def rescue_work(engine: Engine, session: dict, workspace: str) -> None:
    """A clone session that ended without its CLI (kill -9, an engine restart): its copy is the only place the
    agent's work is, so it comes back as the branch, from the clone record its private dir still holds, and only
    then does the copy go. When it cannot, the copy stays and the user is told where it is."""
    sid = session["session"]
    private = session.get("owner-dir") or ""
    state = read_clone_state(private) if private and Path(private).parent == runtime_base() else None
    try:
        if state is None:
            raise BottleError("its clone record is not on this machine")
        bring_back(engine, private, state, final=True)
    except BottleError as e:
        warn(f"the work of session {sid} could not be brought back ({e}); its copy is kept in the volume "
             f"{workspace}: the repository is at {AGENT_WORKDIR} in it")
        return
    engine.remove("volume", [workspace], timeout=engine.ctx.teardown_timeout)
    Path(private, WORK_KEPT).unlink(missing_ok=True)
    remove_private_dir(private)


def reap_orphans(engine: Engine, sessions=None) -> list:
    """Tear down every orphaned session (of `sessions`, or of all on the engine); never fails a start."""
    try:
        orphans = [s for s in (find_sessions(engine) if sessions is None else sessions) if is_orphan(s)]
        for s in orphans:
            engine.ctx.log(f"reaping orphaned session {s['session']} (owner {s['owner'] or 'unknown'} is gone)")
            teardown_session(engine, s)
        return orphans
    except BottleError as e:
        warn(f"could not look for orphaned sessions: {e}")
        return []


def select_sessions(sessions: list, wanted: str | None, every: bool) -> list:
    if every:
        return sessions
    exact = [s for s in sessions if s["session"] == wanted]
    matches = exact or [s for s in sessions if s["session"].startswith(wanted or "\0")]
    if len(matches) != 1:
        known = ", ".join(s["session"] for s in sessions) or "none"
        what = "matches several sessions" if matches else "matches no session"
        raise ConfigError(f"session: {wanted!r} {what} (sessions: {known}); see `claude-bottle ls`")
    return matches


def _age(created: float | None) -> str:
    if created is None:
        return "?"
    seconds = max(0, int(time.time() - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_event(event: dict) -> str:
    """One of pipelock's audit events as a line a person reads.

    Start-up and reloads read as what they are: the `anomaly` pipelock logs at every start for listening on a
    non-loopback address is expected (the agent reaches it over the bottle's internal network), not a problem.
    """
    t = str(event.get("time", ""))[11:19] or "--:--:--"
    what = event.get("target") or event.get("url") or ""
    kind = event.get("event")
    refused = blocked_by(event)
    if refused:
        return f"{t} blocked  {event.get('method', '')} {what}  ({refused[0]}: {refused[1]})"
    if kind in DLP_EVENTS:
        return f"{t} warned   {event.get('method', '')} {what}  (dlp: {event.get('patterns', '')}, let through)"
    if kind == "startup":
        return (f"{t} started  pipelock {event.get('version', '?')}, mode {event.get('mode', '?')}, listening on "
                f"{event.get('listen', '?')}")
    if kind == "anomaly" and event.get("method") == "STARTUP":
        return f"{t} note     listening on {event.get('resource', '?')} for the bottle's networks (expected)"
    if kind == "anomaly" and what:
        return (f"{t} learned  {event.get('method', '')} {what}  (would be blocked: {event.get('scanner', '')}: "
                f"{event.get('reason', '')})")
    if kind == "config_reload":
        return f"{t} reloaded config {str(event.get('config_hash', ''))[:12]} ({event.get('status', '?')})"
    if kind == "error" and event.get("method") == "CONFIG_RELOAD":
        return f"{t} refused  a config reload: {event.get('error', '')} (the previous config stays in force)"
    if kind == "tunnel_open":
        return f"{t} allowed  CONNECT {what}"
    if kind == "tunnel_close":
        return f"{t} closed   {what} ({event.get('total_bytes', '?')} bytes, {event.get('duration_ms', '?')} ms)"
    if kind == "forward_http":
        return f"{t} allowed  {event.get('method', '')} {what} -> {event.get('status_code', '?')}"
    return f"{t} {kind}  {event.get('message', '')}"


# ---- Changing a running bottle: allow and deny live ----

def staged_write(path: str, text: str, mode: int = 0o600, share_uid: int | None = None) -> str:
    """`text` in a temp file beside `path`, written out and synced: `os.replace` of it puts it in force in one step,
    and needs no space (a full disk fails here, before anything changed). Returns the temp file's path."""
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if share_uid is not None:
            share_with(tmp, share_uid, 0o600, 0o644)
    except BaseException:
        discard_staged(tmp)
        raise
    return tmp


def discard_staged(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write(path: str, text: str, mode: int = 0o600, share_uid: int | None = None) -> None:
    """Replace `path` with `text` in one step: a temp file in the same directory, then a rename.

    pipelock watches its config directory; it must never read half a file, and a failed write leaves the old one.
    """
    tmp = staged_write(path, text, mode, share_uid)
    try:
        os.replace(tmp, path)
    except BaseException:
        discard_staged(tmp)
        raise


def change_hosts(state: dict, add=(), remove=(), force: bool = False) -> dict:
    """The live state after allowing `add` and denying `remove` (validated host patterns). Pure.

    `deny` removes a host allowed live or by the bottle; a built-in default only with `force`; a host allowed
    only through a wildcard cannot be denied on its own. `added`/`denied` are always the difference from the
    start: allowing a denied host again undoes the denial.
    """
    session = state["session"]
    hosts = set(state["hosts"])
    for host in remove:
        if host in DEFAULT_HOSTS and not force:
            raise ConfigError(f"deny: {host} is a built-in default Claude Code needs to log in and reach the API; "
                              f"pass --force to deny it anyway")
        if host not in hosts:
            wide = sorted(p for p in hosts if host_matches(p, host))
            why = (f"it is allowed through {', '.join(wide)}; deny that instead" if wide else
                   "it is not allowed in this session")
            raise ConfigError(f"deny: {host}: {why} (see `claude-bottle allow {session}` for the list)")
    new = sorted((hosts | set(add)) - set(remove))
    if not new:
        raise ConfigError("deny: that would leave no host allowed, which pipelock's strict mode refuses; keep one")
    base = set(state["base"])
    return {**state, "hosts": new, "added": sorted(set(new) - base), "denied": sorted(base - set(new))}


def wait_reload(engine: Engine, sidecar: str, config_hash: str, since: str) -> ReloadWait:
    """Follow the sidecar's log from `since` until pipelock applies or refuses the config whose sha256 is
    `config_hash`, or the context's reload_timeout passes (the wait's state is then still "waiting")."""
    import select
    wait = ReloadWait(config_hash)
    proc = engine.follow_logs(sidecar, since=since)
    deadline = time.monotonic() + engine.ctx.reload_timeout
    try:
        while wait.state == "waiting" and time.monotonic() < deadline:
            engine.ctx.check_signal()
            if not select.select([proc.stdout], [], [], 0.05)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            wait.feed(chunk.decode(errors="replace"))
    finally:
        proc.kill()
        proc.wait()
    return wait


def live_dir(session: dict) -> str:
    """The private dir of a session this user's claude-bottle runs, or a BottleError saying why not."""
    name = session["session"]
    d = session.get("owner-dir") or ""
    if not d:
        raise BottleError(f"session {name} was started by a claude-bottle without live changes (it records no "
                          f"private dir); stop it and start it again to change what it may reach")
    if Path(d).parent != runtime_base() or session["owner_state"] != "alive":
        host = split_owner(session["owner"])[0]
        if host and host != hostname():
            raise BottleError(f"session {name} is owned by {session['owner']} on another host; change it there")
        if session["owner_state"] == "gone":
            raise BottleError(f"session {name}: the claude-bottle that ran it is gone; `claude-bottle gc` "
                              f"removes it")
        raise BottleError(f"session {name} is not yours (its owner {session['owner'] or '?'} is not a "
                          f"claude-bottle of this user that still runs); only its owner may change it")
    if not os.path.isfile(os.path.join(d, LIVE_STATE)):
        raise BottleError(f"session {name} was started by a claude-bottle without live changes; stop it and "
                          f"start it again to change what it may reach")
    return d


def restart_hint(session: dict, state: dict) -> str:
    where = f"{state.get('config_path') or CONFIG_NAME}, under [bottles.{state['bottle']}]"
    return (f"add it to trusted in {where}, then restart the session: claude-bottle stop {session['session']} && "
            f"claude-bottle start {session['agent']}")


def save_allow(state: dict, add=(), remove=()) -> str:
    """Write the change into the bottle's allow in its config file; returns the file. Keeps every other byte."""
    path = state.get("config_path")
    bottle = state["bottle"]
    if not path:
        raise ConfigError(f"--save: the session used the built-in defaults, so there is no file to save into; "
                          f"create {CONFIG_NAME} with [bottles.{bottle}] and allow = {_toml_list(sorted(add))}")
    _owned(Path(path))
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--save: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        current = list(tomllib.loads(text).get("bottles", {}).get(bottle, {}).get("allow", []))
    except (tomllib.TOMLDecodeError, AttributeError):
        current = []
    # The file as it is now (it may have changed since the start): drop what is denied, append what is added.
    entries = [e for e in current if e not in remove]
    entries += [h for h in add if h not in entries]
    if entries != current:
        new = edit_bottle_allow(text, bottle, entries, path)
        atomic_write(path, new, mode=os.stat(path).st_mode & 0o7777)
    return path


def change_session(args, engine: Engine, add: bool) -> int:
    """`allow` (add=True) and `deny`: change a running session's allowlist and wait until pipelock applies it."""
    # Bad input is refused before the engine is asked anything.
    hosts = tuple(dict.fromkeys(check_host(h, "HOST", wildcard=True)
                                for h in expand_allow(args.hosts or (), PRESETS, "HOST")))
    # As written in a config: presets stay presets.
    entries = [h if h.startswith("@") else check_host(h, "HOST", wildcard=True) for h in args.hosts or ()]
    session = select_sessions(find_sessions(engine), args.session, False)[0]
    private = live_dir(session)
    sidecar = member(session, "pipelock")
    if sidecar is None:
        raise BottleError(f"session {session['session']} has no pipelock sidecar (any more)")
    import fcntl
    with open(os.path.join(private, "live.lock"), "w") as lock:
        # One change at a time: each waits for its own reload before the next one writes.
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_live(private)
        if state is None:
            raise BottleError(f"session {session['session']}: cannot read {LIVE_STATE} in its private dir")
        if not hosts:
            print(f"session {session['session']} allows: {', '.join(state['hosts'])}")
            return 0
        if add and getattr(args, "trusted", False):
            raise ConfigError(f"allow --trusted: pipelock (strict mode) refuses new trusted_domains on a live "
                              f"reload, since they turn off its private-address check; nothing was changed. To "
                              f"trust {', '.join(hosts)}, {restart_hint(session, state)}")
        new = change_hosts(state, add=hosts if add else (), remove=() if add else hosts, force=args.force)
        if new["hosts"] == state["hosts"]:
            print(f"nothing to change: {', '.join(hosts)} {'already allowed' if add else 'not allowed'}")
        else:
            new["change"] = int(state.get("change", 0)) + 1
            text = pipelock_yaml(new["session"], new["hosts"], new["trusted"], new["max_tunnel_seconds"],
                                 new["idle_timeout_seconds"], enforce=not new.get("learn"), change=new["change"])
            # Written before the change and put in force (a rename) once pipelock applied it: a full disk stops the
            # change here, before anything changed.
            try:
                live = staged_write(os.path.join(private, LIVE_STATE), json.dumps(new, indent=1) + "\n")
            except OSError as e:
                raise no_room(e, session["session"]) from None
            try:
                wait = write_sidecar_config(engine, private, sidecar["name"], text)
            except BaseException:
                discard_staged(live)
                raise
            if wait.state != "applied":
                discard_staged(live)
                if wait.state == "refused":
                    raise BottleError(f"pipelock refused the change ({_visible(wait.reason)}); session "
                                      f"{session['session']} allows what it did before")
                raise BottleError(f"pipelock did not confirm the change within {engine.ctx.reload_timeout:g} s; the "
                                  f"previous config is back in place and session {session['session']} allows what "
                                  f"it did before")
            os.replace(live, os.path.join(private, LIVE_STATE))
            state = new
            print(f"{'allowed' if add else 'denied'} {', '.join(hosts)} in session {session['session']} (pipelock "
                  f"reloaded its config)")
        print(f"now allowed: {', '.join(state['hosts'])}")
    if args.save:
        path = save_allow(state, add=entries if add else (), remove=() if add else entries)
        print(f"saved in {path}, [bottles.{state['bottle']}] allow")
    return 0


def no_room(e: OSError, session: str) -> BottleError:
    where = f" in {os.path.dirname(e.filename)}" if e.filename else ""
    return BottleError(f"the new config could not be written{where} ({e.strerror}); nothing was changed and session "
                       f"{session} allows what it did before; free some space there and try again")


def write_sidecar_config(engine: Engine, private: str, sidecar: str, text: str) -> ReloadWait:
    """Put `text` in force as the sidecar's config and wait for pipelock's word on it. Unless pipelock applied it,
    the old config goes back (pipelock keeps the config it had), so the file and pipelock never disagree; the
    same when the wait is interrupted or the engine fails, since whether pipelock took it is then unknown.

    Both files are written out before either is put in force (a rename, which needs no space): a full disk stops
    the change before the file changes, and cannot stop the old config from coming back."""
    config = os.path.join(private, "pipelock", "pipelock.yaml")
    files = Files("dir", os.path.dirname(config), PIPELOCK_CONFIG_DIR)
    sidecar_uid = int(SIDECAR_USER.split(":")[0])
    old_text = Path(config).read_text(encoding="utf-8")
    ns = time.time_ns()
    since = f"{ns // 10**9}.{ns % 10**9:09d}"
    staged = []
    try:
        staged.append(staged_write(config, old_text, share_uid=sidecar_uid))
        staged.append(staged_write(config, text, share_uid=sidecar_uid))
    except OSError as e:
        for tmp in staged:
            discard_staged(tmp)
        raise no_room(e, os.path.basename(private)) from None
    old, new = staged
    os.replace(new, config)
    try:
        engine.update_files(sidecar, files)
        wait = wait_reload(engine, sidecar, _sha256(text), since)
    except BaseException:
        os.replace(old, config)
        engine.update_files(sidecar, files)
        raise
    if wait.state != "applied":
        os.replace(old, config)
        engine.update_files(sidecar, files)
    else:
        discard_staged(old)
    return wait


def cmd_allow(args, command, ctx: Context) -> int:
    return change_session(args, engine_for(ctx), add=True)


def cmd_deny(args, command, ctx: Context) -> int:
    return change_session(args, engine_for(ctx), add=False)


def cmd_presets(args, command, ctx: Context) -> int:
    if args.json:
        print(json.dumps({name: list(hosts) for name, hosts in PRESETS.items()}, indent=2))
        return 0
    width = max(len(name) for name in PRESETS) + 1
    for name, hosts in PRESETS.items():
        print(f"@{name:<{width}} {', '.join(hosts)}")
    return 0


# ---- Commands ----

def _load(args) -> Config:
    path = find_config(Path.cwd(), args.config, os.environ)
    return load_config(path) if path else Config()


def _plan(args, config: Config, agent: str | None, command=None, secret: str = "") -> Plan:
    suffix = os.urandom(3).hex()
    plan = resolve_plan(
        config, agent, cwd=Path.cwd(), environ=os.environ, suffix=suffix,
        tty=sys.stdin.isatty() and sys.stdout.isatty(), command=command,
        workspace=getattr(args, "workspace", None), extra_allow=getattr(args, "allow", None) or (),
        owner=f"{hostname()}:{os.getpid()}", owner_start=process_start(os.getpid()) or "",
        owner_proof=proof_of(secret) if secret else "", self_test=not getattr(args, "no_self_test", False),
        learn=getattr(args, "learn", False),
        fresh=getattr(args, "fresh", False),
        clone=True if getattr(args, "clone", False) else False if getattr(args, "bind", False) else None,
        discard=getattr(args, "discard", False),
        login=kept_login(os.environ),
    )
    return plan._replace(private_dir=str(Path(tempfile.gettempdir(), f"{LABEL}-{os.getuid()}", plan.session)))


FILES_ENV = "CLAUDE_BOTTLE_FILES"


def engine_for(ctx: Context, environ=None) -> Engine:
    """The engine this run uses: the Docker CLI. The files a session writes for its containers reach them as bind
    mounts of its private dir, or, with CLAUDE_BOTTLE_FILES=copy, are copied in through the engine (what an engine
    that shares no files with this machine needs)."""
    mode = (os.environ if environ is None else environ).get(FILES_ENV) or "bind"
    if mode not in ("bind", "copy"):
        raise ConfigError(f"{FILES_ENV}: {_printable(mode)} is neither bind nor copy; unset it, or set it to copy")
    return DockerEngine(ctx, shares_files=mode == "bind")


def confirm(ctx: Context, prompt: str = "Start this bottle? [y/N] ") -> bool:
    """Ask on the terminal; a signal while waiting for the answer ends the wait (nothing exists yet)."""
    if not sys.stdin.isatty():
        raise ConfigError("stdin is not a terminal, so claude-bottle cannot ask before starting; "
                          "pass --yes to start without asking")
    import select
    print(prompt, end="", flush=True)
    while not select.select([sys.stdin], [], [], 0.05)[0]:
        ctx.check_signal()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def dry_run(plan: Plan, as_json: bool, ctx: Context) -> int:
    """The preflight and every engine command of a start, from the real steps run against a RecordingEngine."""
    plan = inspect_clone(plan)
    runtime_base()
    try:
        make_private_dir(plan.private_dir)
    except OSError as e:
        raise private_files_failed(plan, e) from None
    try:
        # The same write as a real start, so a dry run proves the files can be made.
        try:
            write_private_files(plan)
        except OSError as e:
            raise private_files_failed(plan, e) from None
        if as_json:
            print(json.dumps(plan_json(plan), indent=2))
            return 0
        print("\n".join(render_summary(plan)))
        print("\ndocker commands a start runs, in order (dry run: none was run):")
        for argv, note in record_start(plan, ctx).calls:
            print(f"  {_visible(shlex.join(['docker', *argv]))}" + (f"  # {note}" if note else ""))
        return 0
    finally:
        remove_private_dir(plan.private_dir)


def cmd_start(args, command, ctx: Context) -> int:
    secret = os.urandom(16).hex()
    plan = _plan(args, _load(args), args.agent, command, secret)
    if args.dry_run:
        return dry_run(plan, args.json, ctx)
    if args.json:
        raise ConfigError("--json: only with --dry-run; add --dry-run to print the plan as JSON")
    for flag, given in (("--yes-learn", args.yes_learn), ("--save", args.save)):
        if given and not args.learn:
            raise ConfigError(f"{flag}: only with --learn; add --learn, or drop {flag}")
    engine = engine_for(ctx)
    plan = identify(inspect_clone(plan), engine, os.environ)
    if not args.quiet or plan.learn:
        print("\n".join(render_summary(plan)), flush=True)
    if plan.learn and not args.yes_learn:
        # Its own question, --yes or not: a learn session is an open door.
        if not sys.stdin.isatty():
            raise ConfigError("--learn: stdin is not a terminal, so claude-bottle cannot ask whether to start a "
                              "bottle that blocks nothing; pass --yes-learn as well to start it anyway")
        if not confirm(ctx, "Learn mode blocks NOTHING. Start it anyway? [y/N] "):
            print("Not started.", file=sys.stderr)
            return 1
    elif not args.yes and not confirm(ctx):
        print("Not started.", file=sys.stderr)
        return 1
    runtime_base()
    plan, sessions = claim_workspace(plan, engine)
    return run_session(plan, engine, secret, args.report_json, args.quiet, args.save, sessions)


def every_plan(args, config: Config) -> list:
    """The plan of the default agent and of every agent the project knows, as `start --dry-run` makes it."""
    names = [None, *(n for n in known_agents(config, find_project(Path.cwd())) if n != DEFAULT_AGENT)]
    return [_plan(args, config, name) for name in names]


def cmd_check(args, command, ctx: Context) -> int:
    """Resolve the plan of every agent the project knows, as `start --dry-run` would, all at once."""
    config = _load(args)
    results = every_plan(args, config)
    for plan in results:
        render_pipelock_yaml(plan), render_ssh_config(plan)
    if args.json:
        print(json.dumps([{"agent": p.agent, "bottle": p.bottle, "hosts": list(p.hosts),
                           "ssh": [s._asdict() for s in p.ssh]} for p in results], indent=2))
        return 0
    where = config.path or "no config file; built-in defaults"
    print(f"claude-bottle: {len(results)} agent{'s' if len(results) != 1 else ''} ok ({where})")
    for p in results:
        print(f"  {p.agent:<20} bottle={p.bottle:<12} {egress_line(p.hosts)}; ssh: {ssh_line(p.ssh)}")
    return 0


def cmd_ls(args, command, ctx: Context) -> int:
    sessions = find_sessions(engine_for(ctx))
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    if not sessions:
        print("no claude-bottle sessions")
        return 0
    rows = [("SESSION", "AGENT", "BOTTLE", "STATE", "AGE", "OWNER")]
    for s in sessions:
        rows.append((s["session"], s["agent"], s["bottle"], s["state"], _age(s["created"]),
                     f"{s['owner'] or '?'} ({s['owner_state']})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_stop(args, command, ctx: Context) -> int:
    if not args.session and not args.all:
        raise ConfigError("stop: name a SESSION (see `claude-bottle ls`) or pass --all")
    engine = engine_for(ctx)
    for s in select_sessions(find_sessions(engine), args.session, args.all):
        # The proven owner tears down itself, as on Ctrl-C: the same path, egress report included. Any other
        # process is never signalled; the session is then torn down from here.
        if signal_owner(s):
            deadline = time.monotonic() + 15
            while engine.resources(s["session"]) and time.monotonic() < deadline:
                ctx.pause(0.1)
        teardown_session(engine, s)
        print(f"stopped {s['session']}")
    return 0


def _skip_reason(session: dict) -> str:
    host = split_owner(session["owner"])[0]
    if host and host != hostname():
        return f"owned by {session['owner']} on another host; run gc there"
    return (f"cannot tell whether its owner {session['owner'] or '(none recorded)'} still runs; "
            f"`claude-bottle stop {session['session']}` removes it")


def cmd_gc(args, command, ctx: Context) -> int:
    engine = engine_for(ctx)
    sessions = find_sessions(engine)
    orphans = [s for s in sessions if is_orphan(s)]
    for s in sessions:
        if s["owner_state"] == "unknown":
            print(f"skipped {s['session']}: {_skip_reason(s)}")
    for s in orphans:
        ctx.check_signal()
        names = [c["name"] for c in s["containers"]] + [n["name"] for n in s["networks"]]
        if args.dry_run:
            print(f"would remove {s['session']}: {', '.join(names)}")
        else:
            teardown_session(engine, s)
            print(f"removed {s['session']}: {', '.join(names)}")
    if not orphans:
        print("nothing to remove")
    return 0


def block_fix(event: dict, session: dict) -> str | None:
    """For a request pipelock blocked, the exact command (while the session runs) or config line that fixes it."""
    host = event_host(event) if event.get("event") == "blocked" else None
    try:
        host = check_host(host, "host", wildcard=False) if host else None
    except ConfigError:
        return None
    scanner = event.get("scanner")
    if host is None or scanner not in ("allowlist", "ssrf"):
        return None
    where = f"under [bottles.{session['bottle']}] in {CONFIG_NAME}"
    if scanner == "ssrf" and unresolved(str(event.get("reason", ""))):
        return "none in the config: the name did not resolve (offline, a typo, or no such name)"
    if scanner == "ssrf":
        return f"it resolves to a private address: add {json.dumps(host)} to trusted {where} and start again"
    if session.get("state") == "running":
        return f"claude-bottle allow {session['session']} {host}"
    return f"add {json.dumps(host)} to allow {where}"


def project_states(engine: Engine, project: Path) -> list:
    """The persistent state volumes of the project at `project` (of workspaces in it), by agent then name."""
    found = []
    for item in engine.volumes(STATE_LABEL, "1", keys=("project", "agent")):
        path = item.get("project") or ""
        if path and Path(path).is_relative_to(project):
            found.append(item)
    return sorted(found, key=lambda v: (v["agent"] or "", v["name"]))


def cmd_state(args, command, ctx: Context) -> int:
    engine = engine_for(ctx)
    project = find_project(Path.cwd())
    volumes = project_states(engine, project)
    if args.state_cmd == "ls":
        if args.json:
            print(json.dumps(volumes, indent=2))
        elif not volumes:
            print(f"no Claude Code state kept for {project}")
        else:
            rows = [("AGENT", "VOLUME", "WORKSPACE")] + [(v["agent"] or "?", v["name"], v["project"]) for v in volumes]
            widths = [max(len(r[i]) for r in rows) for i in range(3)]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return 0
    if bool(args.agent) == args.all:
        raise ConfigError("state rm: name an AGENT (see `claude-bottle state ls`) or pass --all, not both")
    chosen = volumes if args.all else [v for v in volumes if v["agent"] == args.agent]
    if not chosen:
        raise ConfigError(f"state rm: no state kept for agent {args.agent!r} in {project} "
                          f"(see `claude-bottle state ls`)")
    for v in chosen:
        holders = engine.volume_holders(v["name"])
        if holders:
            raise BottleError(f"state rm: {v['name']} is in use by {', '.join(holders)}; stop that session "
                              f"first (`claude-bottle stop`)")
    for v in chosen:
        try:
            engine.remove("volume", [v["name"]])
        except EngineError as e:
            raise BottleError(f"state rm: could not remove {v['name']}: {e.stderr.strip()}; a stopped container "
                              f"of a crashed session may hold it (`claude-bottle gc`)") from None
        print(f"removed {v['name']} ({v['agent']})")
    return 0


def cmd_logs(args, command, ctx: Context) -> int:
    engine = engine_for(ctx)
    session = select_sessions(find_sessions(engine), args.session, False)[0]
    sidecar = member(session, "pipelock")
    if sidecar is None:
        raise BottleError(f"session {session['session']} has no pipelock sidecar (any more)")
    import select
    proc = engine.follow_logs(sidecar["name"], follow=args.follow)
    if not args.json:
        say(f"claude-bottle: {PLAIN_HTTP_PER_TUNNEL} (with plain_http = \"scan\", per request with its URL)")
    try:
        buffered = b""
        while True:
            ctx.check_signal()
            if not select.select([proc.stdout], [], [], 0.1)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            *lines, buffered = (buffered + chunk).split(b"\n")
            for event in parse_events(b"\n".join(lines).decode(errors="replace")):
                print(json.dumps(event) if args.json else render_event(event), flush=True)
                fix = None if args.json else block_fix(event, session)
                if fix:
                    print(f"         fix: {fix}", flush=True)
    finally:
        proc.kill()
        proc.wait()
    return 0


def cmd_pull(args, command, ctx: Context) -> int:
    """Bring a running clone session's commits so far into its branch, as its end will (uncommitted work stays)."""
    engine = engine_for(ctx)
    session = select_sessions(find_sessions(engine), args.session, False)[0]
    private = live_dir(session)
    state = read_clone_state(private)
    if state is None:
        raise BottleError(f"pull: session {session['session']} does not work on a copy (its workspace is "
                          f"bind-mounted, so its edits are in your working tree already)")
    print(bring_back(engine, private, state, final=False))
    return 0


def cmd_install(args, command, ctx: Context) -> int:
    packages = [check_package(p) for p in args.packages]
    engine = engine_for(ctx)
    session = select_sessions(find_sessions(engine), args.session, False)[0]
    sid = session["session"]
    # Only into a session this user started here and still runs: root in someone else's bottle is not ours to use.
    if session["owner_state"] != "alive":
        raise ConfigError(f"session: {sid} is not a running session of yours (its owner "
                          f"{session['owner'] or '(none recorded)'} is {session['owner_state']}); install only "
                          f"into a session you started on this machine")
    agent = member(session, "agent")
    if agent is None or agent["state"] != "running":
        raise BottleError(f"install: session {sid} has no running agent container")
    try:
        status = engine.exec(agent["name"], ["sh", "-c", INSTALL_SCRIPT, "claude-bottle-install", *packages],
                             user="0:0", workdir="/", env=(("DEBIAN_FRONTEND", "noninteractive"),),
                             capture=False).status
    except EngineError as e:
        raise BottleError(f"install: session {sid} has no running agent container ({e.kind})") from None
    if status == 127:
        raise BottleError(f"install: the image of session {sid} has no apt-get; add the packages to the image "
                          f"instead")
    if status:
        raise BottleError(f"install: apt-get failed (exit {status}); if the bottle refused the downloads, allow "
                          f"the Debian mirrors: `claude-bottle allow {sid} @debian`, then try again")
    say(f"claude-bottle: installed {' '.join(packages)} in session {sid}")
    return 0


def cmd_login(args, command, ctx: Context) -> int:
    path = login_file(os.environ)
    if path is None:
        raise ConfigError("login: neither XDG_CONFIG_HOME nor HOME is set, so there is nowhere to keep the login; "
                          "set HOME")
    if args.status:
        plan = _plan(args, _load(args), args.agent)
        print(f"login: {plan.login}")
        return 0 if plan.login.startswith("brokered") else 1
    plan = login_plan(_plan(args, _load(args), args.agent))
    plan = plan._replace(tty=sys.stdin.isatty())
    engine = engine_for(ctx)
    plan = identify(plan, engine, os.environ)
    say(f"claude-bottle login: Claude Code's `claude setup-token` in a throwaway bottle (image {plan.image}; "
        f"egress only to {', '.join(LOGIN_HOSTS)}; no workspace, no state). Open the URL it prints, log in, paste "
        f"the code back here. The token is kept in {path}, never in a bottle.")
    runtime_base()
    token = run_login(plan, engine)
    write_login(path, token)
    own = [c.env for c in builtin_credentials() if os.environ.get(c.env)]
    say(f"claude-bottle: logged in; the token is kept in {path} (0600) and every session brokers it as {OAUTH_ENV}"
        + (f" (your environment's {', '.join(own)} wins while it is set)" if own else ""))
    return 0


def cmd_logout(args, command, ctx: Context) -> int:
    if args.state:
        return remove_state_login(args, engine_for(ctx))
    path = login_file(os.environ)
    if path is None or not os.path.lexists(path):
        print("claude-bottle: no login kept; nothing to remove")
        return 0
    os.unlink(path)
    print(f"claude-bottle: removed the login kept in {path} (the token itself stays valid until it expires; revoke "
          f"it at claude.ai if it may have been seen)")
    return 0


def remove_state_login(args, engine: Engine) -> int:
    """Remove Claude Code's stored login from an agent's kept state volume in this project."""
    project = find_project(Path.cwd())
    volumes = [v for v in project_states(engine, project) if v["agent"] == args.state]
    if not volumes:
        raise ConfigError(f"logout --state: no state kept for agent {args.state!r} in {project} "
                          f"(see `claude-bottle state ls`)")
    plan = _plan(args, _load(args), None)
    for v in volumes:
        holders = engine.volume_holders(v["name"])
        if holders:
            raise BottleError(f"logout --state: {v['name']} is in use by {', '.join(holders)}; stop that session "
                              f"first (`claude-bottle stop`)")
        spec = ContainerSpec(role="state-logout", image=plan.image, entrypoint="/bin/sh",
                             command=("-c", f"rm -f {AGENT_STATE_DIR}/{CREDENTIALS_FILE}"), user="0:0",
                             cap_add=("DAC_OVERRIDE",), pids_limit=64,
                             mounts=(Mount("volume", v["name"], AGENT_STATE_DIR),), remove=True)
        r = engine.run(spec)
        if r.status != 0:
            raise BottleError(f"logout --state: could not remove {CREDENTIALS_FILE} from {v['name']} (exit "
                              f"{r.status}): {(r.stderr.strip() or 'no output').splitlines()[-1][-300:]}")
        print(f"removed Claude Code's stored login from {v['name']} ({v['agent']})")
    return 0


def doctor_checks(args, engine: Engine) -> list:
    """(ok, what, detail) for each check, in order; later checks need the earlier ones."""
    import socket
    checks = engine.checks()
    if not all(ok for ok, _, _ in checks):
        return checks
    try:
        config = _load(args)
        plans = every_plan(args, config)
        checks.append((True, "config", f"{config.path or 'none; built-in defaults'}: {len(plans)} agent(s) ok"))
    except BottleError as e:
        checks.append((False, "config", str(e)))
        return checks
    image = plans[0].pipelock_image
    have = engine.image_id(image) is not None
    checks.append((have, "pipelock image", f"{image} present" if have else
                   f"{image} missing; `docker pull {image}`, or set {PIPELOCK_IMAGE_ENV}"))
    for agent_image in dict.fromkeys(p.image for p in plans):
        have = engine.image_id(agent_image) is not None
        fix = ("built by the first `claude-bottle start` (needs Docker Hub, Debian's mirror and claude.ai)"
               if agent_image == AGENT_IMAGE else f"`docker pull {agent_image}`")
        checks.append((have, "agent image", f"{agent_image} present" if have else f"{agent_image} missing; {fix}"))
        if have and any(p.ssh for p in plans if p.image == agent_image):
            try:
                tools = probe_image(engine, agent_image, os.environ)["tools"]
                missing = [t for t in SSH_TOOLS if t not in tools]
                detail = ("found" if not missing else f"no {' and no '.join(missing)}; SSH hosts tunnel through "
                          f"`socat` inside the bottle, with ssh and git")
            except BottleError as e:
                missing, detail = ["?"], str(e)
            checks.append((not missing, "ssh, socat and git in the agent image", f"{agent_image}: {detail}"))
    checks.append((plans[0].login != LOGIN_NONE, "login", plans[0].login))
    if any(p.ssh for p in plans):
        sock = os.environ.get("SSH_AUTH_SOCK", "")
        try:
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(sock)
            ok, detail = True, f"answers at {sock}"
        except OSError:
            ok, detail = False, "no ssh-agent (SSH_AUTH_SOCK); start one and `ssh-add` your key for SSH hosts"
        checks.append((ok, "ssh-agent", detail))
    return checks


def cmd_doctor(args, command, ctx: Context) -> int:
    checks = doctor_checks(args, engine_for(ctx))
    for ok, what, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {what}: {detail}")
    failed = sum(not ok for ok, _, _ in checks)
    print(f"claude-bottle doctor: {'all checks pass' if not failed else f'{failed} check(s) failed'}")
    return 0 if not failed else 1


# ---- Command line ----

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


EXAMPLES = """\
examples:
  claude_bottle.py start                         Claude Code in this project, default bottle
  claude_bottle.py start implementer             the agent [agents.implementer] or .claude/agents/implementer.md
  claude_bottle.py start implementer --dry-run   show the plan and every docker command; run nothing
  claude_bottle.py start --yes -- bash           a shell in the bottle instead of Claude Code
  claude_bottle.py check                         validate every agent in claude-bottle.toml (pre-commit)
  claude_bottle.py ls                            running sessions; `stop SESSION`, `logs SESSION -f`
  claude_bottle.py gc                            remove what a killed session left behind
  claude_bottle.py install SESSION jq            apt-get install jq in a running session, as root
  claude_bottle.py state ls                      Claude Code state kept per agent; `state rm AGENT`
  claude_bottle.py doctor                        check docker, images and config
  claude_bottle.py login                         log in with your Claude subscription, kept outside the bottle
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="claude-bottle", description="Run a coding agent in a Docker bottle whose only "
                     "way out is a pipelock egress proxy.", epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"claude-bottle {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", help=f"config file (default: {CONFIG_NAME} from here up "
                        "to the repository root, else ~/.config/claude-bottle/config.toml)")
    common.add_argument("-v", "--verbose", action="store_true", help="log every docker command")

    start = sub.add_parser("start", parents=[common], help="run an agent in a bottle",
                           description="Run AGENT (default: plain Claude Code) in a bottle. "
                           "Put `-- COMMAND ...` last to run that command instead.",
                           epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    start.add_argument("agent", nargs="?", metavar="AGENT")
    start.add_argument("--dry-run", action="store_true", help="print the plan and docker commands; run nothing")
    start.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    start.add_argument("-y", "--yes", action="store_true", help="start without asking")
    start.add_argument("-q", "--quiet", action="store_true", help="print neither the preflight summary nor an "
                       "egress report without blocks")
    start.add_argument("--workspace", metavar="DIR", help="directory mounted at /workspace "
                       "(default: the repository root)")
    start.add_argument("--allow", action="append", metavar="HOST", help="also allow HOST (or @preset, see "
                       "`claude-bottle presets`) for this session")
    start.add_argument("--learn", action="store_true", help="learn mode: block nothing, log everything, and "
                       "propose an allow list at the end; asks its own y/N, even with --yes")
    start.add_argument("--save", action="store_true", help="with --learn: add the proposed allow list to the "
                       "bottle's allow in its config file at the end")
    start.add_argument("--yes-learn", action="store_true", help="with --learn: start without that question "
                       "(needed when stdin is not a terminal)")
    start.add_argument("--no-self-test", action="store_true", help="skip the isolation check inside the "
                       "agent container before its command runs")
    start.add_argument("--report-json", metavar="PATH", help="write the egress report as JSON to PATH")
    start.add_argument("--fresh", action="store_true", help="run with an empty Claude Code state, thrown away at "
                       "the end, instead of the one kept for this agent and project")
    mode = start.add_mutually_exclusive_group()
    mode.add_argument("--clone", action="store_true", help="let the agent work on a copy of the repository (your "
                      "uncommitted files included); its work comes back as the branch claude-bottle/SESSION and "
                      "your working tree is never written")
    mode.add_argument("--bind", action="store_true", help="mount the workspace itself, read-write, even when the "
                      "agent's config says clone = true")
    start.add_argument("--discard", action="store_true", help="with --clone: bring nothing back; the copy is "
                       "thrown away at the end")
    start.set_defaults(func=cmd_start)

    check = sub.add_parser("check", parents=[common], help="validate the config and every agent's plan",
                           description="Resolve every agent's plan as `start --dry-run` would; "
                           "exit 2 on any error. Meant for pre-commit.")
    check.add_argument("--json", action="store_true", help="print the agents as JSON")
    check.set_defaults(func=cmd_check)

    ls = sub.add_parser("ls", aliases=["ps"], parents=[common], help="list running sessions",
                        description="Sessions found by their claude-bottle.session label, with the state of "
                        "their agent and whether the CLI that owns them is still alive.")
    ls.add_argument("--json", action="store_true", help="print the sessions as JSON")
    ls.set_defaults(func=cmd_ls)

    stop = sub.add_parser("stop", parents=[common], help="tear a session down from another terminal")
    stop.add_argument("session", nargs="?", metavar="SESSION", help="a session id (or a unique prefix)")
    stop.add_argument("--all", action="store_true", help="stop every session")
    stop.set_defaults(func=cmd_stop)

    gc = sub.add_parser("gc", parents=[common], help="remove what crashed or killed sessions left behind",
                        description="Remove sessions whose CLI is gone (kill -9, a crash). Touches nothing "
                        "without the claude-bottle.session label.")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    gc.set_defaults(func=cmd_gc)

    doctor = sub.add_parser("doctor", parents=[common], help="check this machine and the config",
                            description="Check docker, the engine, the images, SSH prerequisites and the "
                            "config; exit 0 only when every check passes.")
    doctor.set_defaults(func=cmd_doctor)

    for verb, what in (("allow", "let a running session reach more hosts"),
                       ("deny", "take hosts back from a running session")):
        live = sub.add_parser(verb, parents=[common], help=what, description=f"{what[0].upper()}{what[1:]}, at once "
                              "and without a restart: claude-bottle rewrites the session's pipelock config and "
                              "waits until pipelock has reloaded it. With no HOST, print what the session allows.")
        live.add_argument("session", metavar="SESSION", help="a session id (or a unique prefix)")
        live.add_argument("hosts", nargs="*", metavar="HOST", help="a hostname, *.domain, or @preset")
        live.add_argument("--save", action="store_true", help="also write the change into the bottle's allow in "
                          "its config file (comments and layout kept)")
        if verb == "allow":
            live.add_argument("--trusted", action="store_true", help="also trust HOST (refused: pipelock takes "
                              "new trusted hosts only at start)")
            live.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
        else:
            live.add_argument("--force", action="store_true", help="deny a built-in default host too")
        live.set_defaults(func=cmd_allow if verb == "allow" else cmd_deny)

    presets = sub.add_parser("presets", parents=[common], help="list the @presets and their hosts")
    presets.add_argument("--json", action="store_true", help="print the presets as JSON")
    presets.set_defaults(func=cmd_presets)

    state = sub.add_parser("state", parents=[common], help="list or remove the Claude Code state kept per agent",
                           description="Each agent keeps Claude Code's state (login, sessions, settings) in a "
                           "docker volume per project; `gc` never removes one.")
    state_sub = state.add_subparsers(dest="state_cmd", metavar="ACTION", parser_class=_Parser)
    state_sub.required = True
    state_ls = state_sub.add_parser("ls", parents=[common], help="this project's state volumes")
    state_ls.add_argument("--json", action="store_true", help="print them as JSON")
    state_rm = state_sub.add_parser("rm", parents=[common], help="remove an agent's state (or every one's)")
    state_rm.add_argument("agent", nargs="?", metavar="AGENT")
    state_rm.add_argument("--all", action="store_true", help="every agent's state in this project")
    state.set_defaults(func=cmd_state)

    login = sub.add_parser("login", parents=[common], help="log in with your Claude subscription, kept outside "
                           "every bottle", description="Run Claude Code's own `claude setup-token` in a throwaway "
                           "bottle of the agent's image (egress only to Anthropic's login hosts; no workspace, no "
                           "state) and keep the one-year token it prints in ~/.config/claude-bottle/oauth-token "
                           "(0600). Every session then brokers it as CLAUDE_CODE_OAUTH_TOKEN: the agent never sees it.")
    login.add_argument("agent", nargs="?", metavar="AGENT", help="whose image runs the login (default: claude)")
    login.add_argument("--status", action="store_true", help="say where a session's login comes from; exit 0 when "
                       "it is brokered")
    login.set_defaults(func=cmd_login)
    logout = sub.add_parser("logout", parents=[common], help="remove the login `claude-bottle login` keeps")
    logout.add_argument("--state", metavar="AGENT", help="instead, remove Claude Code's own stored login "
                        f"({CREDENTIALS_FILE}) from AGENT's kept state volume in this project")
    logout.set_defaults(func=cmd_logout)

    logs = sub.add_parser("logs", parents=[common], help="show pipelock's decisions for a session")
    logs.add_argument("session", metavar="SESSION", help="a session id (or a unique prefix)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new decisions")
    logs.add_argument("--json", action="store_true", help="print pipelock's JSON events")
    logs.set_defaults(func=cmd_logs)

    pull = sub.add_parser("pull", parents=[common], help="bring a clone session's commits so far into its branch",
                          description="Fetch the commits the agent of SESSION has made so far (in its copy of the "
                          "repository) into the branch claude-bottle/SESSION of your repository. Only for a "
                          "session of yours that runs; its uncommitted work comes back when it ends.")
    pull.add_argument("session", metavar="SESSION", help="a session id (or a unique prefix)")
    pull.set_defaults(func=cmd_pull)

    install = sub.add_parser("install", parents=[common], help="install Debian packages into a running session",
                             description="Run apt-get update and apt-get install PACKAGE... as root in the agent "
                             "container of SESSION (the agent itself never gets root). The downloads go through "
                             "the session's pipelock like any other traffic.")
    install.add_argument("session", metavar="SESSION", help="a session id (or a unique prefix)")
    install.add_argument("packages", nargs="+", metavar="PACKAGE", help="a Debian package name, or NAME=VERSION")
    install.set_defaults(func=cmd_install)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    ctx = None
    old = {s: signal.getsignal(s) for s in HANDLED_SIGNALS}
    try:
        ctx = Context()
        for s in HANDLED_SIGNALS:
            signal.signal(s, ctx.note_signal)
        args = build_parser().parse_args(argv)
        ctx.verbose = args.verbose
        if command is not None and args.cmd != "start":
            raise ConfigError("-- COMMAND: only `start` runs a command; remove it")
        if command == []:
            raise ConfigError("-- COMMAND: nothing after --; write e.g. `-- bash`")
        status = args.func(args, command, ctx)
        ctx.check_signal()
        return status
    except BottleError as e:
        say(f"claude-bottle: error: {e}")
        return e.status
    except Interrupted as e:
        say(f"claude-bottle: interrupted by {signal.Signals(e.signum).name}")
        return 128 + e.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly.
        return 128 + signal.SIGPIPE
    except Exception:
        import traceback
        traceback.print_exc()
        say("claude-bottle: unexpected error (a bug); please report it with the lines above")
        return 3
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        # A stream whose reader is gone keeps what it could not write, and Python's own flush at exit would fail
        # with status 120 in place of ours: flush here, and point a failed one at /dev/null (Python's docs on
        # SIGPIPE). PYTHONUNBUFFERED=1 hides this; a fresh machine has buffered streams.
        for stream in filter(None, (sys.stdout, sys.stderr)):
            try:
                stream.flush()
            except (OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
