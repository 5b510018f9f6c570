"""Config discovery, parsing and validation, agent resolution and plan resolution: the pure core.

No docker and no network: every test builds its own directories under a temp dir and passes `environ`
explicitly (HOME always points into the temp dir), so the real environment never leaks in.
"""

import os
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

FULL_CONFIG = """\
[bottles.web]
allow = ["github.com", "*.githubusercontent.com", "*.corp.example"]
trusted = ["git.corp.example"]
egress_network = "corp-egress"
max_tunnel_seconds = 14400
idle_timeout_seconds = 1800

[[bottles.web.ssh]]
Host = "github"
Hostname = "github.com"
User = "git"
Port = 22

[[bottles.web.ssh]]
Host = "corp"
Hostname = "git.corp.example"
Port = 2222

[agents.implementer]
bottle = "web"
image = "registry.example/team/agent:1.2"
env = ["ANTHROPIC_API_KEY", "GH_TOKEN"]
command = ["claude", "-p", "hi"]
workspace = "sub/dir"
"""




class Base(unittest.TestCase):
    """A temp root holding `home/` (HOME) and `repo/` (a repository: `repo/.git/`)."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-config-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name).resolve()
        self.home = self.root / "home"
        self.home.mkdir()
        self.repo = self.root / "repo"
        (self.repo / ".git").mkdir(parents=True)
        self.environ = {"HOME": str(self.home)}

    def write(self, rel, text="", base=None) -> Path:
        path = (base or self.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def load(self, text, rel="repo/claude-bottle.toml") -> cb.Config:
        return cb.load_config(self.write(rel, text))

    def plan(self, config=None, agent=None, cwd=None, environ=None, **kw) -> cb.Plan:
        return cb.resolve_plan(config or cb.Config(), agent, cwd=cwd or self.repo,
                               environ=self.environ if environ is None else environ, suffix="0a1b2c", **kw)

    def assertConfigError(self, fn, *needles) -> str:
        """`fn()` raises a ConfigError: exit 2, one printable line, naming every needle."""
        with self.assertRaises(cb.ConfigError) as cm:
            fn()
        msg = str(cm.exception)
        self.assertEqual(cm.exception.status, 2)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.isprintable(), repr(msg))
        for needle in needles:
            self.assertIn(needle, msg)
        return msg


# ---- Discovery ----

class FindConfigTest(Base):
    def find(self, cwd, explicit=None, environ=None):
        return cb.find_config(cwd, explicit, self.environ if environ is None else environ)

    def test_explicit_path_wins(self):
        explicit = self.write("elsewhere/mine.toml")
        self.write("repo/claude-bottle.toml")
        self.assertEqual(self.find(self.repo, str(explicit)), explicit)

    def test_explicit_missing_file_is_a_config_error(self):
        self.assertConfigError(lambda: self.find(self.repo, str(self.root / "nope.toml")),
                               "--config", "nope.toml")

    def test_explicit_directory_is_a_config_error(self):
        self.assertConfigError(lambda: self.find(self.repo, str(self.root)), "--config")

    # Fixed bug: `--config ""` (e.g. `--config "$CFG"` with CFG unset) is ignored: `if explicit:` is false for "",
    # so discovery silently picks another config. It should fail like any missing file.
    def test_explicit_empty_string_is_a_config_error(self):
        self.write("repo/claude-bottle.toml")
        self.assertConfigError(lambda: self.find(self.repo, ""), "--config")

    def test_in_cwd(self):
        path = self.write("repo/claude-bottle.toml")
        self.assertEqual(self.find(self.repo), path)

    def test_walks_up_to_the_repository_root(self):
        path = self.write("repo/claude-bottle.toml")
        cwd = self.repo / "a" / "b"
        cwd.mkdir(parents=True)
        self.assertEqual(self.find(cwd), path)

    def test_nearest_wins(self):
        self.write("repo/claude-bottle.toml")
        near = self.write("repo/a/claude-bottle.toml")
        cwd = self.repo / "a" / "b"
        cwd.mkdir(parents=True)
        self.assertEqual(self.find(cwd), near)

    def test_stops_at_the_repository_root(self):
        self.write("claude-bottle.toml")  # above repo/: not this project's
        self.assertIsNone(self.find(self.repo))

    def test_a_git_file_also_marks_the_root(self):
        # A worktree or submodule: `.git` is a file.
        inner = self.repo / "sub"
        self.write("repo/sub/.git", "gitdir: ../.git/worktrees/sub\n")
        self.write("repo/claude-bottle.toml")
        self.assertIsNone(self.find(inner))

    def test_a_directory_named_like_the_config_is_ignored(self):
        (self.repo / "claude-bottle.toml").mkdir()
        self.assertIsNone(self.find(self.repo))

    def test_xdg_config_home(self):
        xdg = self.root / "xdg"
        path = self.write("xdg/claude-bottle/config.toml")
        self.write("home/.config/claude-bottle/config.toml")
        self.assertEqual(self.find(self.repo, environ={**self.environ, "XDG_CONFIG_HOME": str(xdg)}), path)

    def test_home_dot_config_without_xdg(self):
        path = self.write("home/.config/claude-bottle/config.toml")
        self.assertEqual(self.find(self.repo), path)

    def test_empty_xdg_falls_back_to_home(self):
        path = self.write("home/.config/claude-bottle/config.toml")
        self.assertEqual(self.find(self.repo, environ={**self.environ, "XDG_CONFIG_HOME": ""}), path)

    def test_project_config_beats_user_config(self):
        project = self.write("repo/claude-bottle.toml")
        self.write("home/.config/claude-bottle/config.toml")
        self.assertEqual(self.find(self.repo), project)

    def test_nothing_found(self):
        self.assertIsNone(self.find(self.repo))

    # Fixed bug: outside any repository the walk goes all the way to `/`, so a claude-bottle.toml that another
    # user planted in a shared parent (/tmp/claude-bottle.toml) configures the bottle: its allowlist, image
    # and workspace. The walk should stop at cwd when no `.git` is found ("up to the repository root").
    def test_without_a_repository_parents_are_not_searched(self):
        self.write("claude-bottle.toml")  # in the shared parent
        cwd = self.root / "scratch" / "project"
        cwd.mkdir(parents=True)
        self.assertIsNone(self.find(cwd))

    # Fixed bug: a config (or `.git`) owned by another user is trusted like the user's own (cf. git's
    # safe.directory, CVE-2022-24765): with /tmp/.git and /tmp/claude-bottle.toml planted, a start from
    # /tmp/x takes the stranger's config and mounts all of /tmp. Refuse a config not owned by the euid or root.
    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root to chown")
    def test_config_owned_by_another_user_is_refused(self):
        path = self.write("repo/claude-bottle.toml", "")
        os.chown(path, 54321, 54321)
        self.assertConfigError(lambda: self.find(self.repo), "claude-bottle.toml")


# ---- Parsing the documented shape ----

class ParseConfigTest(Base):
    def test_full_documented_shape(self):
        config = self.load(FULL_CONFIG)
        self.assertEqual(config.path, str(self.repo / "claude-bottle.toml"))
        self.assertEqual(set(config.bottles), {"default", "web"})
        self.assertEqual(config.bottles["web"], cb.Bottle(
            name="web",
            allow=("github.com", "*.githubusercontent.com", "*.corp.example"),
            trusted=("git.corp.example",),
            ssh=(cb.SshHost("github", "github.com", "git", 22), cb.SshHost("corp", "git.corp.example", None, 2222)),
            egress_network="corp-egress",
            max_tunnel_seconds=14400,
            idle_timeout_seconds=1800,
        ))
        agent = config.agents["implementer"]
        self.assertEqual((agent.name, agent.bottle, agent.image, agent.env, agent.command, agent.workspace),
                         ("implementer", "web", "registry.example/team/agent:1.2",
                          ("ANTHROPIC_API_KEY", "GH_TOKEN"), ("claude", "-p", "hi"), "sub/dir"))
        self.assertIn("claude-bottle.toml", agent.source)
        self.assertIn("[agents.implementer]", agent.source)

    def test_empty_file_is_the_default_bottle(self):
        config = self.load("")
        self.assertEqual(config.bottles, {"default": cb.Bottle("default")})
        self.assertEqual(config.agents, {})

    def test_built_in_config(self):
        config = cb.Config()
        self.assertIsNone(config.path)
        self.assertEqual(config.bottles, {"default": cb.Bottle("default")})

    def test_bottle_defaults(self):
        bottle = self.load("[bottles.b]\n").bottles["b"]
        self.assertEqual((bottle.allow, bottle.trusted, bottle.ssh, bottle.egress_network),
                         ((), (), (), None))
        self.assertEqual(bottle.max_tunnel_seconds, cb.MAX_TUNNEL_SECONDS)
        self.assertEqual(bottle.idle_timeout_seconds, cb.IDLE_TIMEOUT_SECONDS)

    def test_agent_defaults(self):
        agent = self.load("[agents.a]\n").agents["a"]
        self.assertEqual((agent.bottle, agent.image, agent.env, agent.command, agent.workspace),
                         ("default", None, cb.DEFAULT_ENV, None, None))

    def test_hosts_are_lower_cased(self):
        bottle = self.load('[bottles.b]\nallow = ["GitHub.COM", "*.Example.org"]\n').bottles["b"]
        self.assertEqual(bottle.allow, ("github.com", "*.example.org"))

    def test_ssh_defaults(self):
        bottle = self.load('[[bottles.b.ssh]]\nHost = "gh"\nHostname = "GitHub.com"\n').bottles["b"]
        self.assertEqual(bottle.ssh, (cb.SshHost("gh", "github.com", None, 22),))

    def test_env_is_deduplicated_in_order(self):
        agent = self.load('[agents.a]\nenv = ["B", "A", "B"]\n').agents["a"]
        self.assertEqual(agent.env, ("B", "A"))

    def test_empty_lists(self):
        config = self.load('[bottles.b]\nallow = []\ntrusted = []\nssh = []\n[agents.a]\nbottle = "b"\nenv = []\n')
        self.assertEqual(config.agents["a"].env, ())
        self.assertEqual(config.bottles["b"].allow, ())

    def test_the_default_bottle_can_be_redefined(self):
        config = self.load('[bottles.default]\nallow = ["pypi.org"]\n[agents.a]\n')
        self.assertEqual(config.bottles["default"].allow, ("pypi.org",))

    def test_agent_may_name_a_bottle_defined_after_it(self):
        config = self.load('[agents.a]\nbottle = "late"\n[bottles.late]\n')
        self.assertEqual(config.agents["a"].bottle, "late")

    def test_ipv4_address_is_a_host(self):
        bottle = self.load('[bottles.b]\nallow = ["10.0.0.1"]\n').bottles["b"]
        self.assertEqual(bottle.allow, ("10.0.0.1",))

    def test_parse_config_without_a_file(self):
        config = cb.parse_config({"bottles": {"b": {"allow": ["pypi.org"]}}})
        self.assertEqual(config.path, cb.CONFIG_NAME)
        self.assertEqual(config.bottles["b"].allow, ("pypi.org",))


class ConfigErrorTest(Base):
    """Each mistake: a ConfigError (exit 2), one line, naming the file and the field."""

    def error(self, text, *needles) -> str:
        path = self.write("repo/claude-bottle.toml", text)
        return self.assertConfigError(lambda: cb.load_config(path), str(path), *needles)

    def test_unknown_bottle_key_suggests(self):
        msg = self.error('[bottles.web]\nalow = ["github.com"]\n', "[bottles.web]", "'alow'")
        self.assertIn("did you mean 'allow'?", msg)

    def test_unknown_top_level_key_suggests(self):
        self.error('[bottle.web]\nallow = []\n', "'bottle'", "did you mean 'bottles'?")

    def test_unknown_agent_key_suggests(self):
        self.error('[agents.a]\ncomand = ["bash"]\n', "[agents.a]", "did you mean 'command'?")

    def test_unknown_ssh_key_suggests(self):
        self.error('[[bottles.b.ssh]]\nHost = "gh"\nHostName = "github.com"\n',
                   "[[bottles.b.ssh]] #1", "did you mean 'Hostname'?")

    def test_unknown_key_without_a_near_match_lists_the_keys(self):
        msg = self.error('[bottles.web]\nzzz = 1\n', "'zzz'", "expected one of:")
        for key in cb.BOTTLE_KEYS:
            self.assertIn(key, msg)

    def test_wrong_types(self):
        cases = [
            ('[bottles.web]\nallow = "github.com"\n', "allow", "expected a list, got str"),
            ('[bottles.web]\nallow = [1]\n', "allow", "expected a hostname string, got int"),
            ('[bottles.web]\ntrusted = "x.example"\n', "trusted", "expected a list"),
            ('[bottles.web]\nssh = {Host = "a"}\n', "ssh", "expected a list"),
            ('[bottles.web]\nssh = ["github"]\n', "#1", "expected a table"),
            ('[[bottles.web.ssh]]\nHost = "a"\nHostname = "a.example"\nPort = "22"\n', "Port", "whole number"),
            ('[bottles.web]\nmax_tunnel_seconds = "10"\n', "max_tunnel_seconds", "whole number"),
            ('[bottles.web]\nidle_timeout_seconds = 1.5\n', "idle_timeout_seconds", "whole number"),
            ('[bottles.web]\negress_network = 1\n', "egress_network", "docker network name"),
            ('bottles = 1\n', "[bottles]", "expected a table"),
            ('bottles = {web = 1}\n', "[bottles.web]", "expected a table"),
            ('agents = []\n', "[agents]", "expected a table"),
            ('[agents]\na = "x"\n', "[agents.a]", "expected a table"),
            ('[agents.a]\ncommand = "bash"\n', "command", "expected a list"),
            ('[agents.a]\ncommand = []\n', "command", "non-empty list"),
            ('[agents.a]\nenv = "ANTHROPIC_API_KEY"\n', "env", "expected a list"),
            ('[agents.a]\nimage = 1\n', "image", "image reference"),
            ('[agents.a]\nworkspace = 1\n', "workspace", "directory path"),
            ('[agents.a]\nworkspace = ""\n', "workspace", "directory path"),
            ('[agents.a]\nbottle = 1\n', "bottle", "safe name"),
        ]
        for text, field, what in cases:
            with self.subTest(text=text):
                self.error(text, field, what)

    def test_ssh_entry_needs_host_and_hostname(self):
        self.error('[[bottles.b.ssh]]\nHostname = "github.com"\n', "#1", "missing Host")
        self.error('[[bottles.b.ssh]]\nHost = "gh"\n', "#1", "missing Hostname")

    def test_duplicate_ssh_alias(self):
        self.error('[[bottles.b.ssh]]\nHost = "gh"\nHostname = "github.com"\n'
                   '[[bottles.b.ssh]]\nHost = "gh"\nHostname = "gitlab.com"\n', "#2 Host", "defined twice")

    def test_unknown_bottle_name(self):
        msg = self.error('[bottles.web]\n[agents.a]\nbottle = "wbe"\n', "[agents.a] bottle", "'wbe'")
        self.assertIn("default, web", msg)

    def test_malformed_toml(self):
        self.error('[bottles.web\nallow = []\n', "invalid TOML", "line 1")

    def test_duplicate_toml_key_is_malformed(self):
        self.error('[bottles.web]\nallow = []\nallow = []\n', "invalid TOML")

    def test_not_utf8(self):
        self.error(b'[bottles.web]\nallow = ["caf\xe9.example"]\n', "not UTF-8")

    def test_unreadable(self):
        path = self.root / "missing.toml"
        self.assertConfigError(lambda: cb.load_config(path), str(path), "cannot read config")
        self.assertConfigError(lambda: cb.load_config(self.root), str(self.root), "cannot read config")

    def test_bad_host_names_the_field(self):
        self.error('[bottles.web]\nallow = ["https://github.com/x"]\n', "[bottles.web] allow",
                   "drop the scheme and path")
        self.error('[bottles.web]\ntrusted = ["github.com:443"]\n', "[bottles.web] trusted", "drop the port")
        self.error('[[bottles.web.ssh]]\nHost = "gh"\nHostname = "*.github.com"\n', "Hostname", "wildcard")


# ---- Agents ----

class ResolveAgentTest(Base):
    def test_built_in_claude_when_no_agent_is_named(self):
        spec = cb.resolve_agent(cb.Config(), None, self.repo)
        self.assertEqual((spec.name, spec.bottle, spec.command, spec.env, spec.source),
                         ("claude", "default", ("claude",), cb.DEFAULT_ENV, "built-in"))

    def test_config_can_define_the_default_agent(self):
        config = self.load('[bottles.b]\n[agents.claude]\nbottle = "b"\n')
        spec = cb.resolve_agent(config, None, self.repo)
        self.assertEqual((spec.name, spec.bottle, spec.command), ("claude", "b", ("claude",)))

    def test_config_agent(self):
        config = self.load(FULL_CONFIG)
        spec = cb.resolve_agent(config, "implementer", self.repo)
        self.assertEqual((spec.bottle, spec.command), ("web", ("claude", "-p", "hi")))

    def test_config_agent_without_command_runs_claude(self):
        spec = cb.resolve_agent(self.load("[agents.a]\n"), "a", self.repo)
        self.assertEqual(spec.command, ("claude",))

    def test_agent_file(self):
        self.write("repo/.claude/agents/reviewer.md", "---\nname: reviewer\n---\n")
        spec = cb.resolve_agent(cb.Config(), "reviewer", self.repo)
        self.assertEqual((spec.name, spec.bottle, spec.command, spec.env, spec.source),
                         ("reviewer", "default", ("claude", "--agent", "reviewer"), cb.DEFAULT_ENV,
                          ".claude/agents/reviewer.md"))

    def test_config_agent_wins_over_file_and_keeps_its_settings(self):
        self.write("repo/.claude/agents/reviewer.md")
        config = self.load('[bottles.b]\n[agents.reviewer]\nbottle = "b"\n')
        spec = cb.resolve_agent(config, "reviewer", self.repo)
        self.assertEqual(spec.bottle, "b")
        # No command of its own: the agent file's definition is used.
        self.assertEqual(spec.command, ("claude", "--agent", "reviewer"))

    def test_unknown_agent_lists_known_ones(self):
        self.write("repo/.claude/agents/reviewer.md")
        self.write("repo/.claude/agents/not a slug.md")
        self.write("repo/.claude/agents/notes.txt")
        config = self.load('[agents.implementer]\n')
        msg = self.assertConfigError(lambda: cb.resolve_agent(config, "nope", self.repo),
                                     "agent", "'nope'", "known agents: claude, implementer, reviewer)")
        self.assertNotIn("not a slug", msg)
        self.assertNotIn("notes", msg)

    def test_unknown_agent_without_any(self):
        # The built-in agent is always known.
        self.assertConfigError(lambda: cb.resolve_agent(cb.Config(), "nope", self.repo), "known agents: claude)")

    def test_claude_by_name_is_the_built_in_agent(self):
        spec = cb.resolve_agent(cb.Config(), "claude", self.repo)
        self.assertEqual((spec.name, spec.bottle, spec.command), ("claude", "default", ("claude",)))

    def test_known_agents(self):
        self.write("repo/.claude/agents/b.md")
        self.write("repo/.claude/agents/a.md")
        self.assertEqual(cb.known_agents(self.load("[agents.c]\n[agents.a]\n"), self.repo), ["a", "b", "c"])

    def test_unsafe_agent_name(self):
        self.write("x.md")  # ../../x.md from .claude/agents
        for name in ("../../x", "a/b", "", "-a", "a b"):
            with self.subTest(name=name):
                self.assertConfigError(lambda: cb.resolve_agent(cb.Config(), name, self.repo), "agent:")


# ---- The plan ----

class ResolvePlanTest(Base):
    def test_default_plan(self):
        plan = self.plan(owner="host:1")
        self.assertEqual(plan.session, "claude-0a1b2c")
        self.assertEqual((plan.agent, plan.agent_source, plan.bottle), ("claude", "built-in", "default"))
        self.assertEqual(plan.hosts, tuple(sorted(cb.DEFAULT_HOSTS)))
        self.assertEqual(len(plan.hosts), 6)
        self.assertNotIn(cb.CONNECTORS_HOST, plan.hosts, "claude.ai connectors are opt-in")
        self.assertEqual((plan.image, plan.build_image), (cb.AGENT_IMAGE, True))
        self.assertEqual(plan.pipelock_image, cb.PIPELOCK_IMAGE)
        self.assertEqual(plan.workspace, str(self.repo))
        self.assertEqual(plan.command, ("claude",))
        self.assertEqual((plan.trusted, plan.ssh, plan.ssh_agent, plan.egress_network), ((), (), None, None))
        self.assertEqual((plan.max_tunnel_seconds, plan.idle_timeout_seconds),
                         (cb.MAX_TUNNEL_SECONDS, cb.IDLE_TIMEOUT_SECONDS))
        self.assertEqual((plan.config_path, plan.owner, plan.tty), (None, "host:1", False))

    def test_hosts_are_defaults_allow_and_ssh_deduplicated_and_sorted(self):
        config = self.load('[bottles.b]\nallow = ["pypi.org", "claude.ai", "GitHub.com", "*.example.org"]\n'
                           '[[bottles.b.ssh]]\nHost = "gh"\nHostname = "github.com"\n'
                           '[[bottles.b.ssh]]\nHost = "gl"\nHostname = "gitlab.com"\n'
                           '[agents.a]\nbottle = "b"\n')
        plan = self.plan(config, "a")
        expected = sorted({*cb.DEFAULT_HOSTS, "pypi.org", "github.com", "gitlab.com", "*.example.org"})
        self.assertEqual(plan.hosts, tuple(expected))
        self.assertEqual(len(plan.hosts), 10)

    def test_extra_allow(self):
        plan = self.plan(extra_allow=["PyPI.org", "*.npmjs.org", "claude.ai"])
        self.assertEqual(plan.hosts, tuple(sorted({*cb.DEFAULT_HOSTS, "pypi.org", "*.npmjs.org"})))

    def test_extra_allow_is_validated(self):
        for bad in ("https://pypi.org", "pypi.org:443", "*", "a.*.org"):
            with self.subTest(bad=bad):
                self.assertConfigError(lambda: self.plan(extra_allow=[bad]), "--allow")

    def test_trusted_ahead_of_time_need_not_be_allowed(self):
        # pipelock refuses new trusted_domains on a live reload: a bottle trusts a private host ahead of time,
        # and it stays blocked (not in api_allowlist) until `claude-bottle allow` adds it.
        config = self.load('[bottles.b]\nallow = ["github.com"]\ntrusted = ["git.corp.example", "*.corp.example"]\n'
                           '[agents.a]\nbottle = "b"\n')
        plan = self.plan(config, "a")
        self.assertEqual(plan.trusted, ("*.corp.example", "git.corp.example"))
        self.assertNotIn("git.corp.example", plan.hosts)
        yaml = cb.render_pipelock_yaml(plan)
        self.assertIn('trusted_domains:\n  - "*.corp.example"\n  - "git.corp.example"\n', yaml)
        self.assertNotIn('  - "git.corp.example"\nfetch_proxy', yaml.split("trusted_domains")[0])
        self.assertIn("not allowed yet: *.corp.example, git.corp.example", "\n".join(cb.render_summary(plan)))

    def test_trusted_covered_by_a_wildcard_an_ssh_host_or_extra_allow(self):
        cases = [
            ('allow = ["*.corp.example"]\ntrusted = ["git.corp.example", "corp.example"]\n', ()),
            ('allow = ["*.example.org"]\ntrusted = ["*.corp.example.org"]\n', ()),
            ('trusted = ["git.corp.example"]\n[[bottles.b.ssh]]\nHost = "c"\nHostname = "git.corp.example"\n', ()),
            ('trusted = ["git.corp.example"]\n', ("git.corp.example",)),
        ]
        for body, extra in cases:
            with self.subTest(body=body):
                config = self.load(f"[agents.a]\nbottle = \"b\"\n[bottles.b]\n{body}")
                plan = self.plan(config, "a", extra_allow=extra)
                self.assertTrue(plan.trusted)

    def test_trusted_sorted_and_deduplicated(self):
        config = self.load('[bottles.b]\nallow = ["*.example.org"]\n'
                           'trusted = ["b.example.org", "a.example.org", "B.example.org"]\n'
                           '[agents.a]\nbottle = "b"\n')
        self.assertEqual(self.plan(config, "a").trusted, ("a.example.org", "b.example.org"))

    # ---- workspace ----

    def test_workspace_is_the_repository_root_from_a_subdirectory(self):
        cwd = self.repo / "src" / "pkg"
        cwd.mkdir(parents=True)
        self.assertEqual(self.plan(cwd=cwd).workspace, str(self.repo))

    def test_workspace_without_a_repository_is_cwd(self):
        cwd = self.root / "plain"
        cwd.mkdir()
        self.assertEqual(self.plan(cwd=cwd).workspace, str(cwd))

    def test_workspace_option_is_relative_to_cwd(self):
        (self.repo / "sub").mkdir()
        self.assertEqual(self.plan(workspace="sub").workspace, str(self.repo / "sub"))

    def test_agent_workspace_is_relative_to_the_config_file(self):
        (self.repo / "sub" / "dir").mkdir(parents=True)
        config = self.load(FULL_CONFIG)
        cwd = self.repo / "elsewhere"
        cwd.mkdir()
        plan = self.plan(config, "implementer", cwd=cwd)
        self.assertEqual(plan.workspace, str(self.repo / "sub" / "dir"))

    def test_workspace_option_beats_the_agent_workspace(self):
        (self.repo / "sub" / "dir").mkdir(parents=True)
        (self.repo / "other").mkdir()
        plan = self.plan(self.load(FULL_CONFIG), "implementer", workspace="other")
        self.assertEqual(plan.workspace, str(self.repo / "other"))

    def test_workspace_must_exist_and_be_a_directory(self):
        self.write("repo/file.txt")
        self.assertConfigError(lambda: self.plan(workspace="missing"), "workspace:", "does not exist")
        self.assertConfigError(lambda: self.plan(workspace="file.txt"), "workspace:", "not a directory")
        config = self.load(FULL_CONFIG)  # sub/dir does not exist
        self.assertConfigError(lambda: self.plan(config, "implementer"), "workspace:")

    def test_workspace_may_not_be_root_home_or_an_ancestor_of_home(self):
        for ws in ("/", str(self.home), str(self.root), str(self.home / "..")):
            with self.subTest(ws=ws):
                self.assertConfigError(lambda: self.plan(workspace=ws), "workspace:", "home directory")

    def test_workspace_below_home_is_fine(self):
        project = self.home / "src" / "project"
        project.mkdir(parents=True)
        self.assertEqual(self.plan(workspace=str(project)).workspace, str(project))

    # Fixed bug: a NUL in an agent's `workspace` (TOML allows "\u0000") reaches Path.resolve(), which raises
    # ValueError ("embedded null byte"): exit 3 "unexpected bug" instead of a config error.
    def test_workspace_with_nul_is_a_config_error(self):
        self.assertConfigError(lambda: self.plan(self.load('[agents.a]\nworkspace = "sub\\u0000dir"\n'), "a"),
                               "workspace")

    # ---- env, images, git protection, session ----

    def test_env_names_split_by_environ(self):
        config = self.load('[agents.a]\nenv = ["ANTHROPIC_API_KEY", "GH_TOKEN", "NPM_TOKEN"]\n')
        environ = {**self.environ, "ANTHROPIC_API_KEY": "sk-test", "NPM_TOKEN": ""}
        plan = self.plan(config, "a", environ=environ)
        # Present (even when empty) is passed; unset is reported.
        self.assertEqual(plan.env, ("ANTHROPIC_API_KEY", "NPM_TOKEN"))
        self.assertEqual(plan.env_unset, ("GH_TOKEN",))

    def test_default_env_passes_nothing_raw_and_brokers_claude_codes_credentials(self):
        plan = self.plan(environ={**self.environ, "CLAUDE_CODE_OAUTH_TOKEN": "x"})
        self.assertEqual((plan.env, plan.env_unset), ((), ()))
        self.assertEqual([(ep.env, ep.host) for ep in plan.brokered],
                         [("CLAUDE_CODE_OAUTH_TOKEN", "api.anthropic.com")])

    def test_configured_image_is_not_built(self):
        (self.repo / "sub" / "dir").mkdir(parents=True)
        plan = self.plan(self.load(FULL_CONFIG), "implementer")
        self.assertEqual((plan.image, plan.build_image), ("registry.example/team/agent:1.2", False))

    def test_pipelock_image_override(self):
        environ = {**self.environ, cb.PIPELOCK_IMAGE_ENV: "registry.example/pipelock@sha256:" + "a" * 64}
        self.assertEqual(self.plan(environ=environ).pipelock_image, environ[cb.PIPELOCK_IMAGE_ENV])
        self.assertEqual(self.plan(environ={**self.environ, cb.PIPELOCK_IMAGE_ENV: ""}).pipelock_image,
                         cb.PIPELOCK_IMAGE)
        for bad in ("--privileged", "img name", "img\n", "-"):
            with self.subTest(bad=bad):
                self.assertConfigError(lambda: self.plan(environ={**self.environ, cb.PIPELOCK_IMAGE_ENV: bad}),
                                       cb.PIPELOCK_IMAGE_ENV)

    def test_git_protection(self):
        self.assertEqual(self.plan().read_only, (".git/hooks",))
        self.write("repo/.git/config", "[core]\n")
        self.assertEqual(self.plan().read_only, (".git/hooks", ".git/config"))

    def test_no_git_protection_without_a_git_directory(self):
        plain = self.root / "plain"
        plain.mkdir()
        self.assertEqual(self.plan(cwd=plain).read_only, ())
        self.write("wt/.git", "gitdir: /elsewhere\n")  # a worktree: the pointer is read-only
        self.assertEqual(self.plan(cwd=self.root / "wt").read_only, (".git",))

    def test_session_id(self):
        self.assertEqual(cb.session_id("implementer", "0a1b2c"), "implementer-0a1b2c")
        self.assertEqual(cb.session_id("My_Agent", "0a1b2c"), "my-agent-0a1b2c")
        self.assertEqual(cb.session_id("a" * 64, "0a1b2c"), "a" * 24 + "-0a1b2c")
        self.assertEqual(cb.session_id("_", "0a1b2c"), "agent-0a1b2c")

    def test_names_derive_from_the_session(self):
        plan = self.plan()
        self.assertEqual(plan.agent_container, "claude-bottle-claude-0a1b2c")
        self.assertEqual(plan.sidecar, "claude-bottle-claude-0a1b2c-pipelock")
        self.assertEqual(plan.internal_network, "claude-bottle-claude-0a1b2c-internal")
        self.assertEqual(plan.egress, "claude-bottle-claude-0a1b2c-egress")
        self.assertEqual(plan.created_networks, (("claude-bottle-claude-0a1b2c-internal", True),
                                                 ("claude-bottle-claude-0a1b2c-egress", False)))
        self.assertEqual(plan.proxy_url, "http://claude-bottle-claude-0a1b2c-pipelock:8888")

    def test_egress_network_means_only_the_internal_network_is_created(self):
        (self.repo / "sub" / "dir").mkdir(parents=True)
        plan = self.plan(self.load(FULL_CONFIG), "implementer")
        self.assertEqual(plan.egress, "corp-egress")
        self.assertEqual(plan.created_networks, ((plan.internal_network, True),))

    def test_command_override_tty_and_owner_reach_the_agent(self):
        (self.repo / ".claude" / "agents").mkdir(parents=True)
        (self.repo / ".claude" / "agents" / "reviewer.md").write_text("---\nname: reviewer\ndescription: r\n---\n")
        self.assertEqual(self.plan(agent="reviewer").command, ("claude", "--agent", "reviewer"))
        spec = cb.agent_spec(self.plan(agent="reviewer", command=["bash", "-lc", "true"], tty=True, owner="h:1"))
        # `-- COMMAND` replaces the agent's own command, after the gate; a terminal gets a TTY; the owner is labelled.
        self.assertEqual(spec.command[-3:], ("bash", "-lc", "true"))
        self.assertNotIn("--agent", spec.command)
        self.assertTrue(spec.tty)
        self.assertEqual(spec.labels["claude-bottle.owner"], "h:1")
        self.assertFalse(cb.agent_spec(self.plan()).tty)

    def test_ssh_agent_only_for_a_bottle_with_ssh(self):
        environ = {**self.environ, "SSH_AUTH_SOCK": "/run/user/1000/agent.sock"}
        self.assertIsNone(self.plan(environ=environ).ssh_agent)
        (self.repo / "sub" / "dir").mkdir(parents=True)
        config = self.load(FULL_CONFIG)
        self.assertEqual(self.plan(config, "implementer", environ=environ).ssh_agent, "/run/user/1000/agent.sock")
        self.assertIsNone(self.plan(config, "implementer").ssh_agent)


if __name__ == "__main__":
    unittest.main()
