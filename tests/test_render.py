"""Renderers against golden files, and the docker argv builders: the pure core, no docker.

Golden files live in fixtures/golden/<config>.{pipelock.yaml,ssh_config,summary.txt}, rendered from
fixtures/configs/<config>.toml with a fixed session suffix, owner, workspace and environment. To regenerate
them after an intended change: `UPDATE_GOLDEN=1 python3 -m unittest tests.test_render`, then review the diff.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

try:
    import yaml
except ImportError:  # CI may not have PyYAML; only the parse-back assertions need it.
    yaml = None

FIXTURES = ROOT / "fixtures"
CONFIGS = FIXTURES / "configs"
GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

SUFFIX = "0a1b2c"
OWNER = "host:1"
WORKSPACE = "/work/project"
PRIVATE_DIR = "/tmp/claude-bottle-private"
SECRET = "sk-test-not-a-secret"
# Which agent each golden config runs.
GOLDEN_AGENTS = {"defaults": "reviewer", "two-hosts": "implementer", "ssh": "pusher",
                 "brokered": "tester"}
# Constants that change for reasons unrelated to rendering (a Dockerfile edit, a release) are normalized.
NORMALIZE = ((cb.AGENT_IMAGE, "claude-bottle/agent:<dockerfile-hash>"), (f"claude-bottle {cb.__version__}:",
                                                                         "claude-bottle <version>:"))




def values_after(argv, flag) -> list:
    """Every value that follows `flag` in argv (`--env A --env B` -> ["A", "B"])."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def has_pair(argv, flag, value) -> bool:
    return any(a == flag and b == value for a, b in zip(argv, argv[1:]))


class Base(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-render-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name).resolve()
        self.home = self.root / "home"
        self.home.mkdir()
        self.project = self.root / "project"
        (self.project / ".git" / "hooks").mkdir(parents=True)
        (self.project / ".git" / "config").write_text("[core]\n")
        self.environ = {"HOME": str(self.home), "ANTHROPIC_API_KEY": SECRET}

    def plan_from(self, name: str, **kw) -> cb.Plan:
        """The golden plan of fixtures/configs/<name>.toml, with machine-specific fields fixed."""
        path = CONFIGS / f"{name}.toml"
        shown = f"fixtures/configs/{name}.toml"
        kw.setdefault("environ", self.environ)
        kw.setdefault("uid", 1000)
        kw.setdefault("gid", 1000)
        plan = cb.resolve_plan(cb.load_config(path), GOLDEN_AGENTS.get(name), cwd=self.project, suffix=SUFFIX,
                               tty=False, owner=OWNER, private_dir=PRIVATE_DIR, **kw)
        return plan._replace(workspace=WORKSPACE, config_path=shown,
                             state_volume=cb.state_volume_name(WORKSPACE, plan.agent),
                                   agent_source=plan.agent_source.replace(str(path), shown))

    def plan_with(self, toml: str, agent=None, where=None, **kw) -> cb.Plan:
        path = (where or self.root) / "claude-bottle.toml"
        path.write_text(toml)
        kw.setdefault("environ", self.environ)
        kw.setdefault("uid", 1000)
        kw.setdefault("gid", 1000)
        return cb.resolve_plan(cb.load_config(path), agent, cwd=self.project, suffix=SUFFIX, owner=OWNER,
                               private_dir=PRIVATE_DIR, **kw)


# ---- Golden files ----

class GoldenTest(Base):
    def check_golden(self, filename: str, text: str) -> None:
        for real, placeholder in NORMALIZE:
            text = text.replace(real, placeholder)
        path = GOLDEN / filename
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        self.assertTrue(path.is_file(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it")
        self.assertEqual(text, path.read_text(encoding="utf-8"),
                         f"{filename} differs from its golden file; if intended, regenerate with UPDATE_GOLDEN=1")

    def test_golden_outputs(self):
        for name in GOLDEN_AGENTS:
            with self.subTest(config=name):
                plan = self.plan_from(name)
                self.check_golden(f"{name}.pipelock.yaml", cb.render_pipelock_yaml(plan))
                self.check_golden(f"{name}.ssh_config", cb.render_ssh_config(plan))
                self.check_golden(f"{name}.summary.txt", "\n".join(cb.render_summary(plan)) + "\n")

    def test_every_golden_file_is_used(self):
        expected = {f"{n}.{kind}" for n in GOLDEN_AGENTS for kind in ("pipelock.yaml", "ssh_config", "summary.txt")}
        self.assertEqual({p.name for p in GOLDEN.iterdir()}, expected)

    def test_broken_fixtures_are_config_errors(self):
        cases = {
            "broken-typo": ("[bottles.web]", "'alow'", "did you mean 'allow'?"),
            "broken-type": ("[bottles.web] allow", "expected a list, got str"),
            "broken-bottle": ("[agents.implementer] bottle", "'wbe'", "default, web"),
            "broken-syntax": ("invalid TOML", "line 1"),
            "broken-host": ("[bottles.web] allow", "'https://github.com/x'", "drop the scheme and path"),
        }
        for name, needles in cases.items():
            with self.subTest(config=name):
                path = CONFIGS / f"{name}.toml"
                with self.assertRaises(cb.ConfigError) as cm:
                    cb.load_config(path)
                msg = str(cm.exception)
                self.assertEqual(cm.exception.status, 2)
                self.assertNotIn("\n", msg)
                for needle in (str(path), *needles):
                    self.assertIn(needle, msg)

    @unittest.skipUnless(shutil.which("ssh"), "no ssh client here")
    def test_ssh_reads_the_golden_config_as_intended(self):
        """`ssh -G` (no network) resolves each alias to its host, user, port and the proxy command."""
        plan = self.plan_from("ssh")
        path = self.root / "ssh_config"
        path.write_text(cb.render_ssh_config(plan))
        proxy = f"socat - PROXY:{plan.sidecar}:%h:%p,proxyport=8888"
        for s in plan.ssh:
            with self.subTest(alias=s.alias):
                out = subprocess.run(["ssh", "-G", "-F", str(path), s.alias], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL, env={"HOME": str(self.home), "PATH": os.defpath},
                                     timeout=10)
                self.assertEqual(out.returncode, 0, out.stderr)
                got = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
                self.assertEqual(got["hostname"], s.hostname)
                self.assertEqual(got["port"], str(s.port))
                self.assertEqual(got["proxycommand"], proxy)
                self.assertEqual(got["stricthostkeychecking"], "accept-new")
                if s.user:
                    self.assertEqual(got["user"], s.user)


# ---- The egress line and summary ----

class SummaryTest(Base):
    def test_egress_line_defaults(self):
        plan = self.plan_from("defaults")
        self.assertEqual(cb.egress_line(plan.hosts),
                         "6 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +3 more)")

    def test_egress_line_two_hosts(self):
        plan = self.plan_from("two-hosts")
        self.assertEqual(cb.egress_line(plan.hosts),
                         "8 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +5 more)")

    def test_egress_line_small(self):
        self.assertEqual(cb.egress_line(("a.example",)), "1 host allowed (a.example)")
        self.assertEqual(cb.egress_line(("a.example", "b.example", "c.example")),
                         "3 hosts allowed (a.example, b.example, c.example)")
        self.assertEqual(cb.egress_line(("a.example", "b.example", "c.example", "d.example")),
                         "4 hosts allowed (a.example, b.example, c.example, +1 more)")
        self.assertEqual(cb.egress_line(["a.example", "b.example"]), "2 hosts allowed (a.example, b.example)")

    def test_ssh_line(self):
        self.assertEqual(cb.ssh_line(()), "none")
        self.assertEqual(cb.ssh_line(self.plan_from("ssh").ssh),
                         "github -> github.com:22, corp -> git.corp.example:2222")

    def test_summary_lines_are_single_lines(self):
        for name in GOLDEN_AGENTS:
            with self.subTest(config=name):
                for line in cb.render_summary(self.plan_from(name)):
                    self.assertNotIn("\n", line)
                    self.assertTrue(line.isprintable(), repr(line))

    def test_summary_names_env_but_not_values(self):
        text = "\n".join(cb.render_summary(self.plan_from("two-hosts")))
        self.assertIn("env:        ANTHROPIC_API_KEY (visible to the agent); not set here, so not passed: NPM_TOKEN",
                      text)
        self.assertNotIn(SECRET, text)

    def test_summary_mentions_what_matters(self):
        environ = {**self.environ, "SSH_AUTH_SOCK": "/run/agent.sock"}
        lines = cb.render_summary(self.plan_from("ssh", environ=environ))
        text = "\n".join(lines)
        self.assertIn("(host ssh-agent forwarded)", text)
        self.assertNotIn("/run/agent.sock", text)
        self.assertIn("trusted:    git.corp.example (may resolve to private addresses)", text)
        self.assertIn(f"workspace:  {WORKSPACE} -> /workspace (read-write; .git/hooks and .git/config read-only)",
                      text)

    def test_summary_with_egress_network(self):
        plan = self.plan_with('[bottles.b]\negress_network = "corp-egress"\n[agents.a]\nbottle = "b"\n', "a")
        line = cb.render_summary(plan)[-1]
        self.assertEqual(line, f"  networks:   {plan.internal_network} (internal); egress via existing network "
                               f"corp-egress")


# ---- pipelock YAML ----

PIPELOCK_KEYS = {"version", "mode", "api_allowlist", "fetch_proxy", "forward_proxy", "response_scanning",
                 "request_body_scanning"}


def tiny_yaml_keys(text: str) -> dict:
    """Without PyYAML: top-level keys and the keys of each nested mapping, by indentation (this renderer only)."""
    tree, path = {}, []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line.lstrip().startswith("- "):
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        key = line.strip().split(":", 1)[0]
        path = path[:indent] + [key]
        node = tree
        for part in path:
            node = node.setdefault(part, {})
    return tree


class PipelockYamlTest(Base):
    def test_strict_forward_proxy_and_limits(self):
        text = cb.render_pipelock_yaml(self.plan_from("defaults"))
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("# pipelock config for claude-bottle session reviewer-0a1b2c"))
        for line in ("version: 1", "mode: strict", "api_allowlist:", "fetch_proxy:", '  listen: "0.0.0.0:8888"',
                     "  monitoring:", f"    max_requests_per_minute: {cb.MAX_REQUESTS_PER_MINUTE}",
                     "forward_proxy:", "  enabled: true", f"  max_tunnel_seconds: {cb.MAX_TUNNEL_SECONDS}",
                     f"  idle_timeout_seconds: {cb.IDLE_TIMEOUT_SECONDS}"):
            self.assertIn(line, lines)
        self.assertNotIn("trusted_domains:", text)
        self.assertTrue(text.endswith("\n"))
        self.assertEqual(text.count("---"), 0)  # a second YAML document is a hard error in pipelock

    def test_bottle_lifetimes(self):
        text = cb.render_pipelock_yaml(self.plan_from("ssh"))
        self.assertIn("  max_tunnel_seconds: 28800\n", text)
        self.assertIn("  idle_timeout_seconds: 900\n", text)

    def test_key_set(self):
        for name in GOLDEN_AGENTS:
            with self.subTest(config=name):
                plan = self.plan_from(name)
                tree = tiny_yaml_keys(cb.render_pipelock_yaml(plan))
                expected = PIPELOCK_KEYS | ({"trusted_domains"} if plan.trusted else set())
                self.assertEqual(set(tree), expected)
                self.assertEqual(set(tree["fetch_proxy"]),
                                 {"listen", "timeout_seconds", "max_response_mb", "monitoring"})
                self.assertEqual(set(tree["fetch_proxy"]["monitoring"]), {"max_requests_per_minute"})
                self.assertEqual(set(tree["forward_proxy"]), {"enabled", "max_tunnel_seconds", "idle_timeout_seconds"})
                self.assertEqual(set(tree["response_scanning"]), {"enabled"})
                self.assertEqual(set(tree["request_body_scanning"]),
                                 {"enabled", "action", "scan_headers", "header_mode"})

    @unittest.skipIf(yaml is None, "PyYAML is not installed; the line-based key check above still runs")
    def test_parses_back_to_exactly_the_plan(self):
        for name in GOLDEN_AGENTS:
            with self.subTest(config=name):
                plan = self.plan_from(name)
                docs = list(yaml.safe_load_all(cb.render_pipelock_yaml(plan)))
                self.assertEqual(len(docs), 1)
                expected = {
                    "version": 1,
                    "mode": "strict",
                    "api_allowlist": list(plan.hosts),
                    "fetch_proxy": {"listen": "0.0.0.0:8888", "timeout_seconds": 300, "max_response_mb": 64,
                                    "monitoring": {"max_requests_per_minute": cb.MAX_REQUESTS_PER_MINUTE}},
                    "forward_proxy": {"enabled": True, "max_tunnel_seconds": plan.max_tunnel_seconds,
                                      "idle_timeout_seconds": plan.idle_timeout_seconds},
                    # Verified against pipelock 2.3.0: a GitHub token in a header, the body or the URL of a
                    # plain-HTTP request is refused with 403 (PRD 0007).
                    "response_scanning": {"enabled": False},
                    "request_body_scanning": {"enabled": True, "action": "block", "scan_headers": True,
                                              "header_mode": "all"},
                }
                if plan.trusted:
                    expected["trusted_domains"] = list(plan.trusted)
                self.assertEqual(docs[0], expected)


# ---- SSH config ----

class SshConfigTest(Base):
    def test_one_block_per_entry(self):
        plan = self.plan_from("ssh")
        text = cb.render_ssh_config(plan)
        blocks = text.split("\n\n")
        self.assertTrue(blocks[0].startswith("# SSH config for claude-bottle session pusher-0a1b2c"))
        self.assertEqual(len(blocks), 1 + len(plan.ssh))
        proxy = "  ProxyCommand socat - PROXY:claude-bottle-pusher-0a1b2c-pipelock:%h:%p,proxyport=8888"
        self.assertEqual(blocks[1].splitlines(), [
            "Host github", "  HostName github.com", "  Port 22", proxy, "  StrictHostKeyChecking accept-new"])
        self.assertEqual(blocks[2].rstrip("\n").splitlines(), [
            "Host corp", "  HostName git.corp.example", "  User gitlab", "  Port 2222", proxy,
            "  StrictHostKeyChecking accept-new"])

    def test_no_ssh_hosts(self):
        text = cb.render_ssh_config(self.plan_from("defaults"))
        self.assertEqual(text.count("\n"), 1)
        self.assertNotIn("Host ", text)

    def test_ssh_hostnames_are_allowed(self):
        plan = self.plan_from("ssh")
        for s in plan.ssh:
            self.assertIn(s.hostname, plan.hosts)


# ---- Secrets never leave by value ----

class SecretTest(Base):
    def test_env_values_appear_nowhere(self):
        sentinel = "sentinel-VALUE-9f8e7d"
        environ = {**self.environ, "ANTHROPIC_API_KEY": sentinel, "NPM_TOKEN": sentinel + "-npm",
                   "GITHUB_TOKEN": sentinel + "-gh", "SSH_AUTH_SOCK": "/run/agent.sock"}
        for name in GOLDEN_AGENTS:
            with self.subTest(config=name):
                plan = self.plan_from(name, environ=environ)
                # Passed raw by name (named in env) or brokered (the default): never by value.
                self.assertIn("ANTHROPIC_API_KEY", [*plan.env, *(ep.env for ep in plan.brokered)])
                outputs = [cb.render_pipelock_yaml(plan), cb.render_ssh_config(plan),
                           "\n".join(cb.render_summary(plan)), json.dumps(cb.plan_json(plan))]
                outputs += [json.dumps(argv) for argv, _ in cb.planned_commands(plan)]
                for out in outputs:
                    self.assertNotIn(sentinel, out)


# ---- docker argv ----

class ArgvTest(Base):
    def test_agent_create_argv(self):
        plan = self.plan_from("two-hosts", environ={**self.environ, "NPM_TOKEN": "x"})
        argv = guard.agent_create_argv(plan)
        self.assertEqual(argv[:3], ["create", "--name", plan.agent_container])
        self.assertEqual(values_after(argv, "--network"), [plan.internal_network])
        self.assertTrue(has_pair(argv, "--dns", "127.0.0.1"))
        self.assertEqual(values_after(argv, "--dns"), ["127.0.0.1"])
        self.assertTrue(has_pair(argv, "--user", "1000:1000"))
        self.assertTrue(has_pair(argv, "--cap-drop", "ALL"))
        self.assertTrue(has_pair(argv, "--security-opt", "no-new-privileges"))
        self.assertTrue(has_pair(argv, "--workdir", "/workspace"))
        self.assertNotIn("--privileged", argv)
        self.assertNotIn("--tty", argv)
        envs = values_after(argv, "--env")
        # Passed-through names carry no value; docker reads it from its own environment.
        self.assertIn("ANTHROPIC_API_KEY", envs)
        self.assertIn("NPM_TOKEN", envs)
        for name in plan.env:
            self.assertFalse(any(e.startswith(f"{name}=") for e in envs), name)
        proxy = dict(e.split("=", 1) for e in envs if "=" in e)
        for key in ("HTTPS_PROXY", "https_proxy"):
            self.assertEqual(proxy[key], plan.proxy_url)
        # Plain HTTP goes to the forwarder in the agent's own container, which sends it through pipelock's CONNECT.
        for key in ("HTTP_PROXY", "http_proxy"):
            self.assertEqual(proxy[key], f"http://127.0.0.1:{cb.PLAIN_HTTP_PORT}")
        self.assertEqual(proxy["CLAUDE_BOTTLE_SESSION"], plan.session)
        mounts = values_after(argv, "--mount")
        self.assertEqual(mounts[0], f"type=bind,source={WORKSPACE},target=/workspace")
        self.assertIn(f"type=bind,source={WORKSPACE}/.git/hooks,target=/workspace/.git/hooks,readonly", mounts)
        self.assertIn(f"type=bind,source={WORKSPACE}/.git/config,target=/workspace/.git/config,readonly", mounts)
        self.assertEqual(plan.image, cb.AGENT_IMAGE)
        # The command waits behind the self-test's gate; the image's own ENTRYPOINT is never used.
        self.assertTrue(plan.self_test)
        self.assertEqual(argv[-9:], ["--entrypoint", "/bin/sh", plan.image, "-c",
                                     cb.render_plain_http_forwarder(plan) + cb.GATE, "claude-bottle-gate",
                                     "claude", "-p", "run the tests"])

    def test_agent_command_without_self_test(self):
        plan = self.plan_from("two-hosts")._replace(self_test=False)
        argv = guard.agent_create_argv(plan)
        # The plain-HTTP forwarder still starts first.
        self.assertEqual(argv[-9:], ["--entrypoint", "/bin/sh", plan.image, "-c",
                                     cb.render_plain_http_forwarder(plan) + 'exec "$@"', "claude-bottle-broker",
                                     "claude", "-p", "run the tests"])
        argv = guard.agent_create_argv(plan._replace(plain_http="scan"))
        self.assertEqual(argv[-5:], ["--entrypoint", "claude", plan.image, "-p", "run the tests"])

    def test_agent_tty_and_ssh_agent(self):
        environ = {**self.environ, "SSH_AUTH_SOCK": "/run/agent.sock"}
        plan = self.plan_from("ssh", environ=environ)._replace(tty=True)
        argv = guard.agent_create_argv(plan)
        self.assertIn("--tty", argv)
        self.assertIn(f"type=bind,source={PRIVATE_DIR}/ssh-agent.sock,target={cb.AGENT_SSH_AUTH_SOCK}",
                      values_after(argv, "--mount"))
        self.assertIn(f"SSH_AUTH_SOCK={cb.AGENT_SSH_AUTH_SOCK}", values_after(argv, "--env"))
        self.assertNotIn("/run/agent.sock", " ".join(argv))

    # Fixed bug: claude-bottle.toml usually sits at the repository root, inside the workspace the agent mounts
    # read-write: the agent can rewrite its own bottle for the next session (more hosts, another image, a
    # `workspace` such as ~/.ssh), and a start with --yes never shows it. Mount the config read-only, as
    # .git/config is.
    def test_config_inside_the_workspace_is_read_only(self):
        plan = self.plan_with("[agents.a]\n", "a", where=self.project)
        self.assertEqual(plan.workspace, str(self.project))
        mounts = values_after(guard.agent_create_argv(plan), "--mount")
        self.assertIn(f"type=bind,source={self.project}/claude-bottle.toml,target=/workspace/claude-bottle.toml,"
                      f"readonly", mounts)

    def test_sidecar_run_argv(self):
        plan = self.plan_from("ssh")
        argv = guard.sidecar_run_argv(plan)
        self.assertEqual(argv[:4], ["run", "--detach", "--name", plan.sidecar])
        joined = " ".join(argv)
        self.assertIn("--user 65534:65534 --read-only --cap-drop ALL", joined)
        self.assertTrue(has_pair(argv, "--security-opt", "no-new-privileges"))
        self.assertEqual(values_after(argv, "--network"), [plan.egress])
        self.assertEqual(values_after(argv, "--mount"),
                         [f"type=bind,source={PRIVATE_DIR}/pipelock,target=/etc/pipelock,readonly"])
        # Never the agent's secrets, nor any environment at all.
        self.assertNotIn("--env", argv)
        self.assertNotIn("-e", argv)
        i = argv.index(plan.pipelock_image)
        self.assertEqual(argv[i + 1:], ["run", "--config", "/etc/pipelock/pipelock.yaml", "--listen", "0.0.0.0:8888"])

    def test_labels(self):
        plan = self.plan_from("defaults")
        for argv, role in ((guard.sidecar_run_argv(plan), "pipelock"),
                           (guard.agent_create_argv(plan), "agent"),
                           (guard.network_create_argv(plan, plan.internal_network, True, "10.213.0.16/28"),
                            "internal")):
            labels = values_after(argv, "--label")
            # The agent also says which workspace it has and how: a second session must not edit it in place too.
            mode = [f"claude-bottle.workspace={plan.workspace}", "claude-bottle.mode=bind"] if role == "agent" else []
            self.assertEqual(labels, [f"claude-bottle.session={plan.session}", f"claude-bottle.role={role}",
                                      "claude-bottle.agent=reviewer", "claude-bottle.bottle=default",
                                      f"claude-bottle.owner={OWNER}", "claude-bottle.owner-start=",
                                      "claude-bottle.owner-proof=", f"claude-bottle.owner-dir={PRIVATE_DIR}", *mode])

    def test_internal_network_has_no_host_address(self):
        """An internal network still puts its gateway on a host bridge, and every host service on 0.0.0.0 would be
        in the agent's reach through it; inhibit_ipv4 leaves the bridge without an address."""
        plan = self.plan_from("defaults")
        argv = guard.network_create_argv(plan, plan.internal_network, True, "10.213.0.16/28")
        self.assertEqual(argv[:3], ["network", "create", "--internal"])
        self.assertTrue(has_pair(argv, "--opt", "com.docker.network.bridge.inhibit_ipv4=true"))
        internal = next(a for a, _ in cb.planned_commands(plan) if a[:3] == ["network", "create", "--internal"])
        self.assertTrue(has_pair(internal, "--opt", "com.docker.network.bridge.inhibit_ipv4=true"))

    def test_small_argv_builders(self):
        plan = self.plan_from("defaults")
        self.assertEqual(guard.network_create_argv(plan, "n", True, "10.213.0.16/28")[-1], "n")
        self.assertIn("--internal", guard.network_create_argv(plan, "n", True, "10.213.0.16/28"))
        self.assertNotIn("--internal", guard.network_create_argv(plan, "n", False, "10.213.0.16/28"))
        for internal in (True, False):
            self.assertTrue(has_pair(guard.network_create_argv(plan, "n", internal, "10.213.0.16/28"), "--subnet",
                                     "10.213.0.16/28"))
        shown = [a for a, _ in cb.planned_commands(plan._replace(self_test=False))]
        internal = cb.subnet_address(plan.subnet(plan.internal_network), 2)
        self.assertIn(["network", "connect", "--ip", internal, plan.internal_network, plan.sidecar], shown)
        self.assertIn(["exec", plan.sidecar, "/pipelock", "healthcheck"], shown)
        self.assertIn(["start", "--attach", "--interactive", plan.agent_container], shown)
        self.assertEqual(guard.DOCKER.remove_argv("container", ["a", "b"]), ["rm", "--force", "a", "b"])
        self.assertEqual(guard.DOCKER.remove_argv("network", ["a", "b"]), ["network", "rm", "a", "b"])
        self.assertEqual(guard.DOCKER.remove_argv("volume", ["a", "b"]), ["volume", "rm", "a", "b"])

    def test_mount_arg_quoting(self):
        cases = [
            ("/plain/path", "type=bind,source=/plain/path,target=/t"),
            ("/a,b", 'type=bind,"source=/a,b",target=/t'),
            ('/a"b', 'type=bind,"source=/a""b",target=/t'),
            ('/a,"b",c', 'type=bind,"source=/a,""b"",c",target=/t'),
            ("/a=b c", "type=bind,source=/a=b c,target=/t"),
        ]
        for source, expected in cases:
            with self.subTest(source=source):
                value = guard.mount_arg(source, "/t")
                self.assertEqual(value, expected)
                # docker reads the value with Go's encoding/csv; Python's csv agrees on these.
                self.assertEqual(next(csv.reader([value])), ["type=bind", f"source={source}", "target=/t"])
        self.assertEqual(next(csv.reader([guard.mount_arg("/a,b", "/t", readonly=True)]))[-1], "readonly")

    def test_ssh_config_is_the_agents_own_dot_ssh(self):
        ssh = '[[bottles.default.ssh]]\nHost = "gh"\nHostname = "github.com"\n'
        for uid, home in ((1000, "/home/claude"), (0, "/root"), (1234, "/home/claude-1234")):
            with self.subTest(uid=uid):
                plan = self.plan_with(ssh, uid=uid, gid=uid)
                self.assertEqual(plan.identity.home, home)
                self.assertIn(f"type=bind,source={PRIVATE_DIR}/ssh,target={home}/.ssh",
                              values_after(guard.agent_create_argv(plan), "--mount"))
        self.assertFalse(any(".ssh" in m for m in values_after(guard.agent_create_argv(self.plan_from("defaults")),
                                                                "--mount")))


# ---- The ordered command list ----

def kind(argv) -> str:
    """A short name for a docker command: the subcommand(s) before the first option."""
    words = []
    for a in argv:
        if a.startswith("-") or len(words) == 2:
            break
        words.append(a)
    if words[0] not in ("network", "image", "volume", "container"):
        words = words[:1]
    return " ".join(words)


class PlannedCommandsTest(Base):
    def kinds(self, plan) -> list:
        return [kind(argv) for argv, _ in cb.planned_commands(plan)]

    def test_order_built_in_image(self):
        plan = self.plan_from("defaults")
        cmds = cb.planned_commands(plan)
        self.assertEqual([kind(a) for a, _ in cmds], [
            "ps", "network ls",  # the sessions: a workspace edited in place by another one, orphans to reap
            "info",  # the engine's CPUs and memory, for the limits
            "image inspect", "build",
            "network create", "network create",
            "ps", "volume inspect", "volume create", "run",  # the state volume: made only when missing
            "run", "wait", "network connect", "create",  # the sidecar, watched while the session runs
            "start", "exec",  # the agent starts gated; the self-test (also the health wait) opens the gate
            "container inspect",  # the agent's end: killed for memory?
            "logs", "rm", "network rm"])
        self.assertEqual(cmds[5][0][-1], plan.internal_network)
        self.assertIn("--internal", cmds[5][0])
        self.assertEqual(cmds[6][0][-1], plan.egress)
        self.assertNotIn("--internal", cmds[6][0])
        self.assertIn("label=claude-bottle.session", cmds[0][0])
        self.assertEqual(cmds[12][0], ["wait", plan.sidecar])
        self.assertEqual(cmds[16][0][:4], ["exec", plan.agent_container, "sh", "-c"])
        self.assertIn("/health", cmds[16][0][-1], "the self-test waits for pipelock's health from the agent")
        # The self-test probes the sidecar's egress-side address and the internal gateway, both of the session's
        # own subnets, so no inspect is needed to learn them.
        egress, internal = plan.subnet(plan.egress), plan.subnet(plan.internal_network)
        self.assertTrue(has_pair(cmds[11][0], "--ip", cb.subnet_address(egress, 2)))
        self.assertIn(f"http://{cb.subnet_address(egress, 2)}:8888/health", cmds[16][0][-1])
        self.assertIn(f"http://{cb.subnet_address(internal, 1)}:8888/", cmds[16][0][-1])
        # The state's init container too: it is the session's, and a start that stops half-way may leave it.
        self.assertEqual(cmds[-2][0], ["rm", "--force", plan.agent_container, plan.sidecar, plan.state_init])
        # Networks go in reverse: the egress bridge, then the internal one.
        self.assertEqual(cmds[-1][0], ["network", "rm", plan.egress, plan.internal_network])

    def test_order_with_image_and_ssh(self):
        plan = self.plan_from("ssh")
        self.assertEqual(self.kinds(plan), [
            "image inspect", "run",  # the image probe, before the y/N
            "ps", "network ls", "info", "network create", "network create", "ps", "volume inspect", "volume create",
            "run", "run", "wait", "network connect", "create", "start", "exec", "container inspect", "logs", "rm",
            "network rm"])

    def test_order_without_self_test(self):
        plan = self.plan_from("ssh")._replace(self_test=False)
        self.assertEqual(self.kinds(plan), [
            "image inspect", "run", "ps", "network ls", "info", "network create", "network create", "ps",
            "volume inspect", "volume create", "run", "run", "wait", "network connect", "create", "exec", "start",
            "container inspect", "logs", "rm", "network rm"])

    def test_egress_network_is_inspected_not_created_or_removed(self):
        plan = self.plan_with('[bottles.b]\negress_network = "corp-egress"\n[agents.a]\nbottle = "b"\n'
                              'image = "registry.example/a:1"\n', "a")
        cmds = cb.planned_commands(plan)
        self.assertEqual([kind(a) for a, _ in cmds], [
            "image inspect", "run", "ps", "network ls", "info", "network inspect", "network create", "ps",
            "volume inspect", "volume create", "run", "run", "wait", "network connect", "create", "inspect", "start",
            "exec", "container inspect", "logs", "rm", "network rm"])
        self.assertEqual(cmds[5][0][-1], "corp-egress")
        self.assertEqual(cmds[6][0][:3], ["network", "create", "--internal"])
        self.assertEqual(cmds[6][0][-1], plan.internal_network)
        self.assertEqual(cmds[-1][0], ["network", "rm", plan.internal_network])
        creates = [a for a, _ in cmds if a[:2] == ["network", "create"]]
        self.assertEqual(len(creates), 1)
        self.assertEqual(values_after(guard.sidecar_run_argv(plan), "--network"), ["corp-egress"])
        self.assertNotIn("--ip", guard.sidecar_run_argv(plan), "an address on the user's network is docker's to give")
        self.assertNotIn("corp-egress", " ".join(" ".join(a) for a, _ in cmds[6:]
                                                 if kind(a) in ("network create", "network rm")))

    def test_plan_json_agrees_with_its_own_commands(self):
        """What `--dry-run --json` says a start makes is what its command list makes and removes, and the pipelock
        config it shows allows exactly the hosts it lists: a tool reading the JSON can trust either part."""
        plan = self.plan_from("ssh")
        data = json.loads(json.dumps(cb.plan_json(plan)))
        argvs = [c["argv"][1:] for c in data["docker_commands"]]
        made = {a[a.index("--name") + 1] for a in argvs if a[0] == "create" or a[:2] == ["run", "--detach"]}
        self.assertEqual(made, set(data["containers"].values()))
        networks = [a[-1] for a in argvs if a[:2] == ["network", "create"]]
        self.assertEqual(networks, data["networks"]["created"])
        removed = {n for a in argvs if a[:2] in (["rm", "--force"], ["network", "rm"]) for n in a[2:]}
        self.assertLessEqual(made | set(networks), removed, "everything the plan makes, its teardown removes")
        yaml = data["files"]["pipelock/pipelock.yaml"]
        after = yaml.split("api_allowlist:\n")[1].splitlines()
        items = after[:next(i for i, ln in enumerate(after) if not ln.startswith("  - "))]
        allowed = json.loads("[" + ",".join(ln[4:] for ln in items) + "]")
        self.assertEqual(allowed, data["hosts"])
        self.assertIn(f"ProxyCommand socat - PROXY:{data['containers']['pipelock']}:%h:%p", data["files"]["ssh_config"])


if __name__ == "__main__":
    unittest.main()
