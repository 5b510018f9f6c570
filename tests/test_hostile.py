"""Hostile input: everything that reaches pipelock's YAML, the SSH config or docker argv is validated first.

Two parts:
- a table of hostile values, each placed into one field of a small TOML document (or passed where the
  command line or environment would pass it); every one must be a one-line ConfigError (exit 2) that names
  the field;
- a seeded fuzz: random strings as allow/trusted hosts, ssh Host/Hostname/User. Whatever validates is
  rendered, and the output must keep its exact structure: no extra line, key or ssh directive.

`python3 tests/test_hostile.py counts` prints the number of table cases per class.
"""

import dataclasses
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
import tomllib
import unittest
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

try:
    import yaml
except ImportError:  # CI may not have PyYAML; the line-structure checks still run.
    yaml = None
# The pure-Python loader takes about a millisecond a document: without libyaml, parse back a sample only.
YAML_LOADER = getattr(yaml, "CSafeLoader", None) or getattr(yaml, "SafeLoader", None)
YAML_FAST = yaml is not None and hasattr(yaml, "CSafeLoader")

ORIGIN = "/cfg/claude-bottle.toml"
FUZZ_SEED = 20240611
FUZZ_COUNT = 2500




# ---- Writing TOML ----

def toml_str(s: str) -> str:
    """A TOML basic string holding exactly `s` (control and other unprintable characters escaped)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def table(header: str, fields: dict) -> str:
    return f"[{header}]\n" + "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in fields.items())


def bottle_doc(**fields) -> str:
    return table("bottles.web", fields) + '[agents.a]\nbottle = "web"\n'


def ssh_doc(*entries) -> str:
    doc = "[bottles.web]\n"
    for e in entries:
        doc += "[[bottles.web.ssh]]\n" + "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in e.items())
    return doc


def agent_doc(**fields) -> str:
    return "[bottles.web]\n" + table("agents.a", {"bottle": "web", **fields})


# ---- The table ----

@dataclasses.dataclass(frozen=True)
class Case:
    cls: str
    label: str
    needle: str            # must appear in the message: the field
    doc: str | None = None  # a TOML document, parsed as ORIGIN
    call: object = None     # or: a function of the test's temp project that must raise


HOSTS = [
    # (class, value)
    ("scheme/path", "https://github.com"),
    ("scheme/path", "http://github.com/"),
    ("scheme/path", "github.com/org/repo"),
    ("scheme/path", "//github.com"),
    ("scheme/path", "github.com?x=1"),
    ("port", "github.com:443"),
    ("port", "github.com:22"),
    ("port", "github.com:"),
    ("port", "10.0.0.1:22"),
    ("ipv6", "::1"),
    ("ipv6", "[::1]"),
    ("ipv6", "fe80::1%eth0"),
    ("ipv6", "[2001:db8::1]:443"),
    ("whitespace", "github .com"),
    ("whitespace", " github.com"),
    ("whitespace", "github.com "),
    ("whitespace", "github.com\t"),
    ("whitespace", ""),
    ("empty label", "a..b"),
    ("empty label", ".github.com"),
    ("empty label", "github.com."),
    ("wildcard", "*"),
    ("wildcard", "a.*.com"),
    ("wildcard", "*.com"),
    ("wildcard", "**.github.com"),
    ("wildcard", "*github.com"),
    ("wildcard", "github.*"),
    ("wildcard", "*.*.github.com"),
    ("wildcard", "*.10.0.0.1"),
    ("ip", "256.1.1.1"),
    ("ip", "01.2.3.4"),
    ("ip", "1.2.3"),
    ("ip", "1.2.3.4.5"),
    ("ip", "10.0.0.0/8"),
    ("ip", "github.123"),
    ("control", "github.com\nmode: balanced"),
    ("control", "github.com\r"),
    ("control", "github.com\x00"),
    ("control", "git\x1bhub.com"),
    ("control", "github.com\u2028x"),
    ("unicode", "ｇｉｔｈｕｂ.com"),                # fullwidth
    ("unicode", "gith\u0443b.com"),               # Cyrillic у
    ("unicode", "\u0430pi.anthropic.com"),        # Cyrillic а
    ("unicode", "\u212aubernetes.io"),            # Kelvin sign (lower() folds it to 'k')
    ("unicode", "g\u0131thub.com"),               # dotless i
    ("unicode", "git\u200bhub.com"),              # zero-width space
    ("unicode", "github.com\u202e"),              # right-to-left override
    ("punctuation", "github.com%0a"),
    ("punctuation", "'github.com'"),
    ("punctuation", '"github.com"'),
    ("punctuation", "github.com#x"),
    ("punctuation", "#github.com"),
    ("punctuation", "github.com;rm -rf"),
    ("punctuation", "git_hub.com"),
    ("punctuation", "user@github.com"),
    ("punctuation", "github.com,evil.com"),
    ("punctuation", "$(evil).com"),
    ("yaml special", "&anchor"),
    ("yaml special", "*alias"),
    ("yaml special", "!tag"),
    ("yaml special", "{a: b}"),
    ("yaml special", "[x]"),
    ("yaml special", "- x"),
    ("yaml special", "? x"),
    ("yaml special", "|"),
    ("yaml special", ">"),
    ("yaml special", "github.com\n---\nmode: balanced"),
    ("label shape", "-github.com"),
    ("label shape", "github-.com"),
    ("label shape", "a" * 64 + ".com"),
    ("label shape", ("a" * 50 + ".") * 5 + "com"),  # 258 characters > 253
]
NON_STRING_HOSTS = [1, True, 1.5, ["github.com"], {"host": "github.com"}]

SSH_ALIASES = [
    "git hub", "%h", "gh%", "a=b", "'gh'", '"gh"', "*", "git*", "gi?", "!github", "gh,gl",
    "ProxyCommand", "proxycommand", "Match", "Host", "Include", "LocalCommand",
    "-oProxyCommand=evil", "", "a" * 129, "gh\n  ProxyCommand sh -c evil", "gh\x00", "gh\r",
    "ｇｈ", "g\u0456thub", "#gh", "gh#", "gh/x", "$(x)",
]
SSH_USERS = [
    "git user", "%u", "git%", "a=b", "'git'", '"git"', "*", "g?t", "ProxyCommand", "Match",
    "-oProxyCommand=evil", "", "a" * 33, "git\nHost *", "git\x00", "root@host", "git:x", "ｇit",
    "$(id)", "0git",
]
SSH_PORTS = [0, 65536, -1, "22", True, 22.5, [22], 2 ** 40]
NAMES = ["../x", "..", "a/b", "a;b", "$(x)", "a b", "\u0430gent", "ｘ", "", "a" * 65, "-x", ".x", "_x", "x\n",
         "x\x00", "x.y", "x:y"]
ENV_NAMES = ["A=B", "A-B", "A B", "1ABC", "", "\u00c4BC", "A\nB", "$A", "A.B", "HTTPS_PROXY", "http_proxy",
             "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSH_AUTH_SOCK", "HOME", "NODE_USE_ENV_PROXY",
             "CLAUDE_CODE_PROXY_RESOLVES_HOSTS", "A" * 129]
IMAGES = ["--privileged", "-v", "-", "img with space", " img", "img\n", "img\x00", "", "img;rm", "$(x)", "ｉｍｇ",
          "a" * 300, "img\t:1"]
EGRESS = ["corp net", "-d", "--network=host", "", "x\n", "a/b", "ｘ", "x;y", "a" * 129]
INTS = [0, -1, "10", True, 1.5, 7 * 86400 + 1, [1]]
COMMANDS = [[], "bash", [1], ["bash", 1], [["bash"]], ["a\x00b"], {"a": "b"}, [True]]
WORKSPACES = ["", 1, "a\nb", ["a"], True]


def build_cases() -> list:
    cases = []
    add = cases.append
    for cls, value in HOSTS:
        add(Case(f"host: {cls}", f"allow {value!r}", "[bottles.web] allow:", bottle_doc(allow=[value])))
        add(Case(f"host: {cls}", f"trusted {value!r}", "[bottles.web] trusted:",
                 bottle_doc(allow=["github.com"], trusted=[value])))
        add(Case(f"host: {cls}", f"ssh Hostname {value!r}", " Hostname:",
                 ssh_doc({"Host": "gh", "Hostname": value})))
    for value in NON_STRING_HOSTS:
        add(Case("host: not a string", f"allow {value!r}", "[bottles.web] allow", bottle_doc(allow=[value])))
        add(Case("host: not a string", f"Hostname {value!r}", " Hostname:", ssh_doc({"Host": "gh", "Hostname": value})))
    add(Case("host: not a list", "allow = string", "[bottles.web] allow:", bottle_doc(allow="github.com")))
    add(Case("host: not a list", "trusted = string", "[bottles.web] trusted:", bottle_doc(trusted="github.com")))
    for value in ("*.github.com", "*.corp.example"):
        add(Case("host: wildcard", f"ssh Hostname {value!r}", " Hostname:", ssh_doc({"Host": "gh", "Hostname": value})))
    # The ssh_config injection from the brief, spelled as the TOML a user would write.
    add(Case("ssh injection", "Hostname with newline + ProxyCommand", " Hostname:",
             '[bottles.web]\n[[bottles.web.ssh]]\nHost = "gh"\nHostname = "x\\n  ProxyCommand sh -c evil"\n'))
    add(Case("ssh injection", "Host with newline + ProxyCommand", " Host:",
             '[bottles.web]\n[[bottles.web.ssh]]\nHost = "x\\n  ProxyCommand sh -c evil"\nHostname = "github.com"\n'))
    add(Case("ssh injection", "User with newline + Match", " User:",
             '[bottles.web]\n[[bottles.web.ssh]]\nHost = "gh"\nHostname = "github.com"\n'
             'User = "git\\nMatch exec evil"\n'))
    for key in ("ProxyCommand", "LocalCommand", "IdentityFile", "HostName", "Match", "RemoteCommand"):
        add(Case("ssh injection", f"ssh key {key}", f"'{key}'",
                 ssh_doc({"Host": "gh", "Hostname": "github.com", key: "sh -c evil"})))
    for value in SSH_ALIASES:
        add(Case("ssh Host", repr(value), " Host:", ssh_doc({"Host": value, "Hostname": "github.com"})))
    add(Case("ssh Host", "Host = 1", " Host:", ssh_doc({"Host": 1, "Hostname": "github.com"})))
    for value in SSH_USERS:
        add(Case("ssh User", repr(value), " User:", ssh_doc({"Host": "gh", "Hostname": "github.com", "User": value})))
    add(Case("ssh User", "User = 1", " User:", ssh_doc({"Host": "gh", "Hostname": "github.com", "User": 1})))
    for value in SSH_PORTS:
        add(Case("ssh Port", repr(value), " Port:", ssh_doc({"Host": "gh", "Hostname": "github.com", "Port": value})))
    add(Case("ssh structure", "duplicate alias", "#2 Host:",
             ssh_doc({"Host": "gh", "Hostname": "github.com"}, {"Host": "gh", "Hostname": "evil.example"})))
    add(Case("ssh structure", "missing Hostname", "missing Hostname", ssh_doc({"Host": "gh"})))
    add(Case("ssh structure", "missing Host", "missing Host", ssh_doc({"Hostname": "github.com"})))
    add(Case("ssh structure", "ssh is a table", "ssh:", bottle_doc(ssh={"Host": "gh"})))
    add(Case("ssh structure", "ssh entry is a string", "#1", bottle_doc(ssh=["gh"])))
    for value in NAMES:
        add(Case("name: bottle", f"bottle {value!r}", "bottle name:",
                 f"[bottles.{toml_str(value)}]\n"))
        add(Case("name: agent", f"agent {value!r}", "agent name:", f"[agents.{toml_str(value)}]\n"))
        add(Case("name: agent's bottle", f"bottle = {value!r}", "[agents.a] bottle:", agent_doc(bottle=value)))
        add(Case("name: command line agent", f"start {value!r}", "agent:",
                 call=lambda t, v=value: cb.resolve_agent(cb.Config(), v, t)))
    add(Case("name: agent's bottle", "missing bottle", "[agents.a] bottle:", agent_doc(bottle="nope")))
    for value in ENV_NAMES:
        add(Case("env name", repr(value), "[agents.a] env:", agent_doc(env=[value])))
    add(Case("env name", "env = 1 in list", "[agents.a] env:", agent_doc(env=[1])))
    add(Case("env name", "env = string", "[agents.a] env:", agent_doc(env="ANTHROPIC_API_KEY")))
    for value in IMAGES:
        add(Case("image", repr(value), "[agents.a] image:", agent_doc(image=value)))
        if value:  # an empty override means "not set"
            add(Case("image", f"{cb.PIPELOCK_IMAGE_ENV}={value!r}", cb.PIPELOCK_IMAGE_ENV,
                     call=lambda t, v=value: resolve(t, environ={cb.PIPELOCK_IMAGE_ENV: v})))
    add(Case("image", "image = 1", "[agents.a] image:", agent_doc(image=1)))
    for value in EGRESS + [1, True]:
        add(Case("egress_network", repr(value), "egress_network:", bottle_doc(egress_network=value)))
    for key in ("max_tunnel_seconds", "idle_timeout_seconds"):
        for value in INTS:
            add(Case("integer", f"{key} {value!r}", f"{key}:", bottle_doc(**{key: value})))
    for value in COMMANDS:
        add(Case("command", repr(value), "[agents.a] command:", agent_doc(command=value)))
    for value in WORKSPACES:
        add(Case("workspace", repr(value), "[agents.a] workspace:", agent_doc(workspace=value)))
    for key, doc in (("alow", bottle_doc(alow=["x.example"])), ("mode", 'mode = "balanced"\n'),
                     ("privileged", agent_doc(privileged=True)), ("volumes", agent_doc(volumes=["/:/host"])),
                     ("network", agent_doc(network="host")), ("trusted_domains", 'trusted_domains = ["x"]\n'),
                     ("cap_add", agent_doc(cap_add=["SYS_ADMIN"])), ("Allow", bottle_doc(Allow=["x.example"]))):
        add(Case("unknown key", key, f"unknown key '{key}'", doc))
    for value in ("https://pypi.org", "pypi.org:443", "*", "a.*.org", "pypi.org\n", "*.org", "ｐypi.org"):
        add(Case("command line --allow", repr(value), "--allow:",
                 call=lambda t, v=value: resolve(t, extra_allow=[v])))
    return cases


def resolve(project: Path, *, config=None, agent=None, environ=None, extra_allow=()):
    return cb.resolve_plan(config or cb.Config(), agent, cwd=project,
                           environ={"HOME": str(project.parent / "home"), **(environ or {})},
                           suffix="0a1b2c", extra_allow=extra_allow)


CASES = build_cases()
COUNTS = Counter(c.cls for c in CASES)


class Base(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-hostile-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name).resolve()
        (self.root / "home").mkdir()
        self.project = self.root / "project"
        (self.project / ".git").mkdir(parents=True)

    def assertOneLineConfigError(self, fn, needle: str, origin: str | None = None) -> str:
        try:
            fn()
        except cb.ConfigError as e:
            msg, status = str(e), e.status
        else:
            self.fail("accepted")
        self.assertEqual(status, 2)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.isprintable(), repr(msg))
        self.assertIn(needle, msg)
        if origin:
            self.assertIn(origin, msg)
        return msg


class HostileTableTest(Base):
    def test_table_is_large_enough(self):
        self.assertGreaterEqual(len(CASES), 40)
        for cls in ("host: scheme/path", "host: port", "host: unicode", "host: yaml special", "host: control",
                    "ssh injection", "ssh Host", "ssh User", "ssh Port", "name: agent", "name: bottle",
                    "env name", "image", "egress_network", "integer", "command"):
            self.assertGreater(COUNTS[cls], 0, cls)

    def test_every_hostile_input_is_a_one_line_config_error_naming_the_field(self):
        for case in CASES:
            with self.subTest(cls=case.cls, case=case.label):
                if case.doc is not None:
                    data = tomllib.loads(case.doc)  # the hostility is in the value, not in TOML syntax
                    self.assertOneLineConfigError(lambda: cb.parse_config(data, ORIGIN), case.needle, ORIGIN)
                else:
                    self.assertOneLineConfigError(lambda: case.call(self.project), case.needle)

    def test_the_same_documents_through_load_config(self):
        # A sample through the file path too: the message names the file as written.
        for case in [c for c in CASES if c.doc is not None][::17]:
            with self.subTest(case=case.label):
                path = self.root / "claude-bottle.toml"
                path.write_text(case.doc, encoding="utf-8")
                self.assertOneLineConfigError(lambda: cb.load_config(path), case.needle, str(path))

    def test_hostile_toml_syntax(self):
        for doc in ('[bottles.web]\nallow = ["github.com"\n', 'allow = "x\ny"\n', "[bottles.web]\nallow = [\x00]\n",
                    '[bottles.web]\nallow = ["a"]\n[bottles.web]\n', '[bottles.web]\x1b[2K\n', "\ufeff[bottles]\n"):
            with self.subTest(doc=doc):
                path = self.root / "claude-bottle.toml"
                path.write_text(doc, encoding="utf-8")
                self.assertOneLineConfigError(lambda: cb.load_config(path), "invalid TOML", str(path))

    # ---- Found while writing the table: not refused today ----

    # Fixed bug: egress_network = "host" (or "none") passes validation. The sidecar then runs with --network host,
    # where `docker network connect` must fail (exit 1, after containers were created) and, had it worked,
    # pipelock would sit in the host's network namespace. Refuse docker's special networks up front.
    def test_egress_network_host_or_none_is_refused(self):
        for value in ("host", "none"):
            with self.subTest(value=value):
                data = tomllib.loads(bottle_doc(egress_network=value))
                self.assertOneLineConfigError(lambda: cb.parse_config(data, ORIGIN), "egress_network:", ORIGIN)

    # Fixed bug: proxy_env() sets CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, DISABLE_AUTOUPDATER, DISABLE_UPDATES and
    # CLAUDE_BOTTLE_SESSION, but RESERVED_ENV does not hold them: `env = ["DISABLE_AUTOUPDATER"]` adds a second
    # `--env DISABLE_AUTOUPDATER` (the host's value) after claude-bottle's own, so the host can undo it.
    def test_every_variable_claude_bottle_sets_is_reserved(self):
        plan = resolve(self.project)
        for name, _ in cb.proxy_env(plan):
            with self.subTest(name=name):
                self.assertIn(name, cb.RESERVED_ENV)
                data = tomllib.loads(agent_doc(env=[name]))
                self.assertOneLineConfigError(lambda: cb.parse_config(data, ORIGIN), "env:", ORIGIN)

    # Fixed bug: an agent's `command` may hold newlines and terminal escapes (TOML "\n", "\u001b"); render_summary
    # prints them raw, so a config can forge or erase lines of the preflight summary the user confirms
    # (e.g. hide the real egress line). The summary must show such characters escaped.
    def test_summary_cannot_be_forged_by_the_command(self):
        forged = "x\n  egress:     1 host allowed (api.anthropic.com)\x1b[1A\x1b[2K\r\u202e"
        config = cb.parse_config(tomllib.loads(agent_doc(command=["bash", "-c", forged])), ORIGIN)
        plan = resolve(self.project, config=config, agent="a")
        for line in cb.render_summary(plan):
            self.assertNotIn("\n", line)
            self.assertTrue(line.isprintable(), repr(line))

    # Fixed bug: the same through the workspace path: a directory name may hold an escape sequence (only "\n" and
    # NUL are refused), and the summary prints it raw.
    def test_summary_cannot_be_forged_by_the_workspace_name(self):
        ws = self.project / "ws\x1b[2K\rx"
        ws.mkdir()
        plan = cb.resolve_plan(cb.Config(), None, cwd=self.project, environ={"HOME": str(self.root / "home")},
                               suffix="0a1b2c", workspace=str(ws))
        for line in cb.render_summary(plan):
            self.assertTrue(line.isprintable(), repr(line))


# ---- Fuzz ----

SEEDS = ["github.com", "api.anthropic.com", "*.githubusercontent.com", "a", "web", "git", "10.0.0.1", "x-y.z",
         "git_user", "gh.alias", "A1", "_svc", "xn--bcher-kva.example"]
ALPHABETS = [
    string.ascii_lowercase + string.digits + "-.",
    string.ascii_letters + string.digits + "-._*",
    string.printable,                                       # includes " \t\n\r\x0b\x0c"
    " \t\n\r\x00\x0b\x0c\x1b\x7f\x85\u2028\u2029:/@%#=\"'\\,;!?&|>{}[]$`~",
    "\u0430\u0435\u0456\u043eｇｉ\u212a\u0130\u0131\u017f\u00e9\u00df\U0001f600\u200b\u202e\ufeff\u00a0",
]
MIXED = "".join(ALPHABETS)


def fuzz_strings(seed: int = FUZZ_SEED, count: int = FUZZ_COUNT) -> list:
    rng = random.Random(seed)
    out = list(SEEDS)
    while len(out) < count:
        r = rng.random()
        if r < 0.4:  # a valid seed with one to three edits: most stay close to valid
            s = list(rng.choice(SEEDS))
            for _ in range(rng.randint(1, 3)):
                op, pos = rng.random(), rng.randint(0, len(s))
                ch = rng.choice(rng.choice(ALPHABETS))
                if op < 0.5:
                    s.insert(pos, ch)
                elif op < 0.8 and s:
                    s[min(pos, len(s) - 1)] = ch
                elif s:
                    del s[min(pos, len(s) - 1)]
            out.append("".join(s))
        elif r < 0.6:
            alphabet = rng.choice(ALPHABETS[:2])
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))))
        else:
            out.append("".join(rng.choice(MIXED) for _ in range(rng.randint(0, 40))))
    return out


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
STRICT_HOST = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*", re.ASCII)
STRICT_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
STRICT_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", re.ASCII)
STRICT_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
STRICT_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
STRICT_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,255}", re.ASCII)

YAML_LINES = [re.compile(p) for p in (
    r"# pipelock config for claude-bottle session [a-z0-9-]+; generated, hostnames only\.",
    r"version: 1", r"mode: strict", r"api_allowlist:", r"trusted_domains:",
    r'  - "(?:\*\.)?[a-z0-9.-]+"',
    r"fetch_proxy:", r'  listen: "0\.0\.0\.0:8888"', r"  monitoring:", r"    max_requests_per_minute: [0-9]+",
    r"forward_proxy:", r"  enabled: true", r"  max_tunnel_seconds: [0-9]+", r"  idle_timeout_seconds: [0-9]+",
    r"  timeout_seconds: 300", r"  max_response_mb: 64", r"response_scanning:", r"  enabled: false",
    r"request_body_scanning:", r"  action: block", r"  scan_headers: true", r"  header_mode: all",
)]
SSH_LINES = {
    "comment": re.compile(r"# SSH config for claude-bottle session [a-z0-9-]+: every host tunnels through pipelock\."),
    "": re.compile(r""),
    "Host": re.compile(r"Host [A-Za-z0-9][A-Za-z0-9._-]*"),
    "HostName": re.compile(r"  HostName [a-z0-9][a-z0-9.-]*"),
    "User": re.compile(r"  User [A-Za-z_][A-Za-z0-9_.-]*"),
    "Port": re.compile(r"  Port [1-9][0-9]{0,4}"),
    "ProxyCommand": re.compile(r"  ProxyCommand socat - PROXY:claude-bottle-[a-z0-9-]+-pipelock:%h:%p,proxyport=8888"),
    "StrictHostKeyChecking": re.compile(r"  StrictHostKeyChecking accept-new"),
}


def fuzz_configs(s: str) -> dict:
    """Each place a fuzzed string can go, as a parsed-TOML dict with one agent `a` in bottle `b`."""
    agent = {"a": {"bottle": "b"}}
    return {
        "allow": {"bottles": {"b": {"allow": [s]}}, "agents": agent},
        "trusted": {"bottles": {"b": {"allow": [s], "trusted": [s]}}, "agents": agent},
        "Host": {"bottles": {"b": {"ssh": [{"Host": s, "Hostname": "github.com"}]}}, "agents": agent},
        "Hostname": {"bottles": {"b": {"ssh": [{"Host": "h", "Hostname": s, "User": "git"}]}}, "agents": agent},
        "User": {"bottles": {"b": {"ssh": [{"Host": "h", "Hostname": "github.com", "User": s, "Port": 2222}]}},
                 "agents": agent},
    }


class FuzzTest(Base):
    def setUp(self):
        super().setUp()
        self.strings = fuzz_strings()
        self.environ = {"HOME": str(self.root / "home")}
        self.yaml_seen = set()

    def assertRefusedCleanly(self, fn, what):
        try:
            fn()
        except cb.ConfigError as e:
            msg = str(e)
            self.assertTrue("\n" not in msg and msg.isprintable(), f"{what}: {msg!r}")
            return False
        return True

    def test_validators_accept_only_strict_values(self):
        accepted = Counter()
        for s in self.strings:
            for wildcard in (True, False):
                try:
                    host = cb.check_host(s, "f", wildcard=wildcard)
                except cb.ConfigError as e:
                    self.assertTrue("\n" not in str(e) and str(e).isprintable(), repr(str(e)))
                    continue
                accepted[f"host wildcard={wildcard}"] += 1
                self.assertTrue(s.isascii() and len(s) <= 253, repr(s))
                self.assertEqual(host, s.lower())
                self.assertTrue(STRICT_HOST.fullmatch(host), repr(s))
                if not wildcard:
                    self.assertNotIn("*", host)
                rest = host[2:] if host.startswith("*.") else host
                if host.startswith("*."):
                    self.assertIn(".", rest, repr(s))
                labels = rest.split(".")
                if labels[-1].isdigit():  # only a dotted quad may end in a number
                    self.assertEqual(len(labels), 4, repr(s))
                    self.assertFalse(host.startswith("*."), repr(s))
                    self.assertTrue(all(p.isdigit() and int(p) <= 255 for p in labels), repr(s))
            for name, check, strict in (("alias", cb.check_ssh_alias, STRICT_ALIAS),
                                        ("user", cb.check_ssh_user, STRICT_USER),
                                        ("slug", cb.check_slug, STRICT_SLUG),
                                        ("env", cb.check_env_name, STRICT_ENV),
                                        ("image", cb.check_image, STRICT_IMAGE)):
                if self.assertRefusedCleanly(lambda: check(s, "f"), name):
                    accepted[name] += 1
                    self.assertTrue(strict.fullmatch(s), f"{name}: {s!r}")
                    if name in ("alias", "user"):
                        self.assertNotIn(s.lower(), ("host", "match", "include", "proxycommand"))
                    if name == "env":
                        self.assertNotIn(s, ("HTTPS_PROXY", "SSH_AUTH_SOCK", "HOME"))
        # The fuzz is worth something only when a good share of values gets through.
        for key in ("host wildcard=True", "host wildcard=False", "alias", "user"):
            self.assertGreater(accepted[key], len(self.strings) // 10, (key, accepted))

    def test_validators_refuse_non_strings(self):
        for value in (None, 1, 1.5, True, b"github.com", ["github.com"], {"a": 1}):
            for fn in (lambda v: cb.check_host(v, "f", wildcard=True), lambda v: cb.check_ssh_alias(v, "f"),
                       lambda v: cb.check_ssh_user(v, "f"), lambda v: cb.check_slug(v, "f"),
                       lambda v: cb.check_env_name(v, "f"), lambda v: cb.check_image(v, "f")):
                with self.subTest(value=value):
                    self.assertOneLineConfigError(lambda: fn(value), "f:")

    def test_whatever_validates_renders_with_exact_structure(self):
        rendered = Counter()
        for s in self.strings:
            for field, data in fuzz_configs(s).items():
                if not self.assertRefusedCleanly(lambda: cb.parse_config(data, ORIGIN), f"{field} {s!r}"):
                    continue
                plan = cb.resolve_plan(cb.parse_config(data, ORIGIN), "a", cwd=self.project, environ=self.environ,
                                       suffix="0a1b2c")
                self.check_yaml(plan, f"{field} {s!r}")
                self.check_ssh_config(plan, f"{field} {s!r}")
                for line in cb.render_summary(plan):
                    self.assertTrue(line.isprintable(), f"{field} {s!r}: {line!r}")
                rendered[field] += 1
        for field in ("allow", "trusted", "Host", "Hostname", "User"):
            self.assertGreater(rendered[field], len(self.strings) // 10, (field, rendered))

    def check_yaml(self, plan, what):
        text = cb.render_pipelock_yaml(plan)
        expected = 1 + 3 + len(plan.hosts) + (1 + len(plan.trusted) if plan.trusted else 0) + 6 + 4 + 2 + 5
        self.assertEqual(text.count("\n"), expected, what)
        lines = text.splitlines()  # splits on every Unicode line break, not just "\n"
        self.assertEqual(len(lines), expected, what)
        for line in lines:
            self.assertTrue(any(p.fullmatch(line) for p in YAML_LINES), f"{what}: {line!r}")
        if yaml is not None and text not in self.yaml_seen and (YAML_FAST or len(self.yaml_seen) < 400):
            self.yaml_seen.add(text)
            docs = list(yaml.load_all(text, Loader=YAML_LOADER))
            self.assertEqual(len(docs), 1, what)
            doc = docs[0]
            self.assertEqual(set(doc), {"version", "mode", "api_allowlist", "fetch_proxy", "forward_proxy",
                                        "response_scanning", "request_body_scanning"}
                             | ({"trusted_domains"} if plan.trusted else set()), what)
            self.assertEqual(doc["mode"], "strict")
            self.assertEqual(doc["api_allowlist"], list(plan.hosts), what)
            self.assertEqual(doc.get("trusted_domains", []), list(plan.trusted), what)
            self.assertEqual(set(doc["fetch_proxy"]), {"listen", "timeout_seconds", "max_response_mb", "monitoring"})
            # Hostile names never loosen DLP: a secret leaving over plain HTTP is refused.
            self.assertEqual(doc["request_body_scanning"], {"enabled": True, "action": "block", "scan_headers": True,
                                                            "header_mode": "all"}, what)
            self.assertEqual(set(doc["forward_proxy"]), {"enabled", "max_tunnel_seconds", "idle_timeout_seconds"})

    def check_ssh_config(self, plan, what):
        text = cb.render_ssh_config(plan)
        lines = text.splitlines()
        self.assertEqual(len(lines), text.count("\n"), what)
        blocks, current = [], None
        for i, line in enumerate(lines):
            if i == 0:
                key = "comment"
            else:
                key = line.split()[0] if line.strip() else line
            self.assertIn(key, SSH_LINES, f"{what}: {line!r}")
            self.assertTrue(SSH_LINES[key].fullmatch(line), f"{what}: {line!r}")
            # ssh splits a line into keyword and arguments on whitespace or "="; exactly one argument each,
            # except the ProxyCommand, which takes the rest of the line.
            if key == "Host":
                current = [line.split()[1]]
                blocks.append(current)
            elif key not in ("comment", ""):
                current.append(key)
                if key != "ProxyCommand":
                    self.assertEqual(len(re.split(r"[\s=]+", line.strip())), 2, f"{what}: {line!r}")
        self.assertEqual(len(blocks), len(plan.ssh), what)
        for block, s in zip(blocks, plan.ssh):
            self.assertEqual(block[0], s.alias, what)
            self.assertEqual(block[1:], ["HostName", *(["User"] if s.user else []), "Port", "ProxyCommand",
                                         "StrictHostKeyChecking"], what)

    @unittest.skipUnless(shutil.which("ssh"), "no ssh client here")
    def test_ssh_reads_fuzzed_configs_as_intended(self):
        """A sample of accepted fuzz values through `ssh -G` (parses the config; no network)."""
        samples = []
        for s in self.strings:
            for field in ("Host", "Hostname", "User"):
                data = fuzz_configs(s)[field]
                try:
                    config = cb.parse_config(data, ORIGIN)
                except cb.ConfigError:
                    continue
                if s not in SEEDS:
                    samples.append(config)
            if len(samples) >= 9:
                break
        path = self.root / "ssh_config"
        for config in samples:
            plan = cb.resolve_plan(config, "a", cwd=self.project, environ=self.environ, suffix="0a1b2c")
            path.write_text(cb.render_ssh_config(plan))
            (s,) = plan.ssh
            with self.subTest(alias=s.alias, hostname=s.hostname, user=s.user):
                out = subprocess.run(["ssh", "-G", "-F", str(path), s.alias], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL,
                                     env={"HOME": str(self.root / "home"), "PATH": os.defpath}, timeout=10)
                self.assertEqual(out.returncode, 0, out.stderr)
                got = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
                self.assertEqual(got["hostname"], s.hostname)
                self.assertEqual(got["port"], str(s.port))
                self.assertEqual(got["proxycommand"], f"socat - PROXY:{plan.sidecar}:%h:%p,proxyport=8888")
                if s.user:
                    self.assertEqual(got["user"], s.user)
                self.assertNotIn("localcommand", {k for k, v in got.items() if v != "none"})


if __name__ == "__main__":
    if sys.argv[1:] == ["counts"]:
        for cls, n in sorted(COUNTS.items()):
            print(f"{n:4d}  {cls}")
        print(f"{len(CASES):4d}  total")
    else:
        unittest.main()
