"""The subscription login (PRD 0009): the kept token, the login's bottle, where a session's login comes from, what a
bottle keeps on (tool search), claude.ai connectors off by default, and the project's MCP servers in the preflight.

No docker: pure functions, the RecordingEngine, and the CLI with the fake `docker` of tests/fakedocker.py. The real
login and the session that brokers it: tests/e2e/test_login.py.
"""

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard, test_cli  # noqa: E402
from tests.test_broker_wiring import PRIVATE_DIR, envs_of, mounts_of  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

TOKEN = "sk-ant-oat01-UNIT-" + "aB3_-" * 18 + "Zz"


class TokenFilterTest(unittest.TestCase):
    OUTPUT = (f"Visit https://claude.ai/oauth/authorize?code=true&x=1\nPaste code here > \n\nYour OAuth token (valid "
              f"for 1 year):\n\n{TOKEN}\n\nStore this token securely.\n").encode()

    def run_filter(self, chunks):
        f = cb.TokenFilter()
        shown = "".join(f.feed(c) for c in chunks) + f.feed(b"", final=True)
        return f, shown

    def test_no_cut_of_the_output_shows_any_of_the_token(self):
        for cut in range(1, len(self.OUTPUT)):
            f, shown = self.run_filter([self.OUTPUT[:cut], self.OUTPUT[cut:]])
            self.assertEqual(f.token, TOKEN, cut)
            self.assertNotIn("sk-ant-oat01", shown, cut)
            self.assertNotIn(TOKEN[20:40], shown, cut)
            self.assertIn(cb.TOKEN_SHOWN, shown)
            self.assertIn("Paste code here > ", shown, "the prompt itself is shown")
        f, shown = self.run_filter([bytes([b]) for b in self.OUTPUT])
        self.assertEqual((f.token, f.malformed), (TOKEN, False))
        self.assertNotIn("oat01", shown)

    def test_a_prompt_is_shown_at_once_and_a_prefix_only_while_it_may_be_one(self):
        f = cb.TokenFilter()
        self.assertEqual(f.feed(b"Paste code here > "), "Paste code here > ")
        self.assertEqual(f.feed(b"ok sk-an"), "ok ")
        self.assertEqual(f.feed(b"other"), "sk-another")

    def test_a_malformed_token_is_flagged_and_not_shown(self):
        f, shown = self.run_filter([b"token: sk-ant-oat01-short\n"])
        self.assertIsNone(f.token)
        self.assertTrue(f.malformed)
        self.assertNotIn("short", shown)


class LoginFileTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-login-")
        self.addCleanup(tmp.cleanup)
        self.home = Path(tmp.name)
        self.path = cb.login_file({"HOME": str(self.home)})

    def test_where(self):
        self.assertEqual(self.path, self.home / ".config" / "claude-bottle" / "oauth-token")
        self.assertEqual(cb.login_file({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}), Path("/x/claude-bottle/oauth-token"))
        self.assertIsNone(cb.login_file({}))
        self.assertIsNone(cb.login_file({"HOME": "relative"}))

    def test_written_private_and_read_back(self):
        self.assertIsNone(cb.read_login(self.path))
        cb.write_login(self.path, TOKEN)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.path.parent).st_mode & 0o777, 0o700)
        self.assertEqual(cb.read_login(self.path), TOKEN)
        self.assertEqual(cb.kept_login({"HOME": str(self.home)}), (str(self.path), TOKEN))

    def test_a_malformed_token_is_never_written(self):
        for bad in ("", "sk-ant-oat01-short", "sk-ant-api03-" + "a" * 40, TOKEN + "\nX-Evil: 1"):
            with self.assertRaises(cb.ConfigError):
                cb.write_login(self.path, bad)
        self.assertFalse(self.path.exists())

    def test_refused_when_others_may_read_it_or_it_is_not_yours(self):
        cb.write_login(self.path, TOKEN)
        os.chmod(self.path, 0o644)
        with self.assertRaisesRegex(cb.ConfigError, "mode 0644 lets others read it"):
            cb.read_login(self.path)
        os.chmod(self.path, 0o600)
        link = self.path.with_name("link")
        link.symlink_to(self.path)
        with self.assertRaises(cb.ConfigError):
            cb.read_login(link)
        if os.getuid() == 0:
            os.chown(self.path, 4321, 4321)
            with self.assertRaisesRegex(cb.ConfigError, "not a regular file of yours"):
                cb.read_login(self.path)

    def test_refused_when_it_holds_no_token(self):
        self.path.parent.mkdir(parents=True)
        self.path.write_text("not a token\n")
        os.chmod(self.path, 0o600)
        with self.assertRaisesRegex(cb.ConfigError, "not a Claude subscription token"):
            cb.read_login(self.path)


class PlanTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-login-plan-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name).resolve()
        (self.root / "home").mkdir()
        self.project = self.root / "project"
        self.project.mkdir()

    def plan(self, toml="", environ=None, **kw) -> cb.Plan:
        path = self.project / "claude-bottle.toml"
        path.write_text(toml)
        environ = {"HOME": str(self.root / "home"), **(environ or {})}
        return cb.resolve_plan(cb.load_config(path), None, cwd=self.project, environ=environ, suffix="0a1b2c",
                               owner="host:1", private_dir=PRIVATE_DIR, **kw)

    def test_the_kept_login_is_brokered_as_the_subscription_token(self):
        plan = self.plan(login=("/home/u/.config/claude-bottle/oauth-token", TOKEN))
        (ep,) = plan.brokered
        self.assertEqual((ep.env, ep.header, ep.format, ep.beta, ep.upstream),
                         ("CLAUDE_CODE_OAUTH_TOKEN", "Authorization", "Bearer {}", cb.OAUTH_BETA,
                          ("https", "api.anthropic.com", 443)))
        self.assertEqual(plan.login, "brokered: your subscription login from `claude-bottle login` "
                         "(/home/u/.config/claude-bottle/oauth-token)")
        argv = guard.agent_create_argv(plan)
        values = dict(e.split("=", 1) for e in envs_of(argv) if "=" in e)
        self.assertEqual(values["CLAUDE_CODE_OAUTH_TOKEN"], cb.BROKER_PLACEHOLDER)
        self.assertNotIn("CLAUDE_CODE_OAUTH_TOKEN", envs_of(argv), "never by name")
        text = json.dumps([cb.render_summary(plan), cb.plan_json(plan), cb.planned_commands(plan)])
        self.assertNotIn(TOKEN, text)
        self.assertNotIn(TOKEN[13:], text)

    def test_the_environment_wins_over_the_kept_login(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": "sk-ant-api03-KEY"}, login=("/p", TOKEN))
        self.assertEqual([ep.env for ep in plan.brokered], ["ANTHROPIC_API_KEY"])
        self.assertEqual(plan.login, "brokered: ANTHROPIC_API_KEY from your environment")
        self.assertEqual(cb.with_login({"CLAUDE_CODE_OAUTH_TOKEN": "mine"}, ("/p", TOKEN)),
                         {"CLAUDE_CODE_OAUTH_TOKEN": "mine"})
        self.assertEqual(cb.with_login({}, ("/p", TOKEN)), {"CLAUDE_CODE_OAUTH_TOKEN": TOKEN})

    def test_no_login_says_where_claude_code_would_keep_one(self):
        plan = self.plan()
        self.assertEqual(plan.login, cb.LOGIN_NONE)
        self.assertIn(f"  login:      {cb.LOGIN_NONE}", cb.render_summary(plan))
        self.assertIn("readable by the agent", cb.LOGIN_NONE)
        raw = self.plan('[agents.claude]\nenv = ["ANTHROPIC_API_KEY"]\n', environ={"ANTHROPIC_API_KEY": "k"})
        self.assertEqual(raw.login, "ANTHROPIC_API_KEY passed raw (visible to the agent)")

    def test_tool_search_stays_on_when_the_broker_stands_in(self):
        values = lambda plan: dict(e.split("=", 1) for e in envs_of(guard.agent_create_argv(plan)) if "=" in e)
        self.assertEqual(values(self.plan(login=("/p", TOKEN)))["ENABLE_TOOL_SEARCH"], "true")
        self.assertEqual(values(self.plan(environ={"ANTHROPIC_API_KEY": "k"}))["ENABLE_TOOL_SEARCH"], "true")
        self.assertNotIn("ENABLE_TOOL_SEARCH", values(self.plan()), "no base URL of ours, nothing turned off")

    def test_connectors_are_opt_in(self):
        plan = self.plan()
        self.assertNotIn("mcp-proxy.anthropic.com", plan.hosts)
        self.assertNotIn('"mcp-proxy.anthropic.com"', cb.render_pipelock_yaml(plan))
        self.assertIn("  connectors: off", "\n".join(cb.render_summary(plan)))
        on = self.plan('[bottles.default]\nconnectors = true\n')
        self.assertIn("mcp-proxy.anthropic.com", on.hosts)
        self.assertIn('"mcp-proxy.anthropic.com"', cb.render_pipelock_yaml(on))
        self.assertIn("the accounts you connected to claude.ai", cb.connectors_line(on))
        with self.assertRaisesRegex(cb.ConfigError, r"\[bottles.default\] connectors: 'yes' is not true or false"):
            self.plan('[bottles.default]\nconnectors = "yes"\n')

    def test_the_projects_mcp_servers_are_listed_with_what_they_need(self):
        (self.project / ".mcp.json").write_text(json.dumps({"mcpServers": {
            "gh": {"type": "http", "url": "https://api.githubcopilot.com/mcp/"},
            "docs": {"type": "sse", "url": "https://api.anthropic.com/sse"},
            "local": {"command": "npx", "args": ["x"]},
        }}))
        lines = cb.mcp_lines(self.plan())
        self.assertEqual(lines[0], 'gh (http api.githubcopilot.com: NOT allowed, it will fail; add allow = '
                         '["api.githubcopilot.com"] to [bottles.default] or pass --allow api.githubcopilot.com)')
        self.assertEqual(lines[1], "docs (sse api.anthropic.com: allowed)")
        self.assertTrue(lines[2].startswith("local (stdio: runs inside the bottle"))
        allowed = self.plan('[bottles.default]\nallow = ["api.githubcopilot.com"]\n')
        self.assertEqual(cb.mcp_lines(allowed)[0], "gh (http api.githubcopilot.com: allowed)")
        self.assertIn("  mcp:        docs (sse api.anthropic.com: allowed)", cb.render_summary(allowed))
        (self.project / ".mcp.json").write_text("{not json")
        self.assertEqual(cb.mcp_lines(self.plan()), ["(.mcp.json) (not readable as JSON with an mcpServers table)"])


class LoginBottleTest(PlanTest):
    def recorded(self, plan):
        engine = cb.RecordingEngine(None)
        with cb.Teardown(engine) as td:
            cb.run_steps(cb.login_steps(plan, engine), cb.Run(plan, td), workers=1)
        return engine.calls

    def test_the_login_bottle_holds_nothing_of_the_user(self):
        (self.project / ".git").mkdir()
        plan = cb.login_plan(self.plan('[bottles.default]\nallow = ["github.com"]\nconnectors = true\n',
                                       environ={"ANTHROPIC_API_KEY": "sk-ant-api03-KEY", "GH": "x"},
                                       login=("/p", TOKEN)))
        self.assertEqual(plan.hosts, cb.LOGIN_HOSTS)
        self.assertEqual((plan.brokered, plan.env, plan.ssh, plan.trusted), ((), (), (), ()))
        yaml = cb.render_pipelock_yaml(plan)
        self.assertNotIn("github.com", yaml)
        self.assertNotIn("mcp-proxy", yaml)
        calls = [argv for argv, _ in self.recorded(plan)]
        text = json.dumps(calls)
        self.assertNotIn(str(self.project), text, "no workspace")
        self.assertNotIn("volume", [a[0] for a in calls], "no state volume")
        self.assertNotIn(plan.state_volume, text)
        self.assertNotIn("sk-ant-api03-KEY", text)
        self.assertNotIn(TOKEN, text)
        create = next(a for a in calls if a[0] == "create")
        self.assertTrue(any(a == "--log-driver" and b == "none" for a, b in zip(create, create[1:])),
                        "the engine keeps no log of the output the token passes through")
        self.assertIn(f"{cb.AGENT_STATE_DIR}:uid=", " ".join(create), "Claude Code's state in a tmpfs")
        self.assertEqual([m for m in mounts_of(create) if "type=volume" in m or "type=bind" in m and
                          str(self.project) in m], [])
        self.assertEqual(create[-3:], ["sh", "-c", "stty cols 1000 2>/dev/null; exec claude setup-token"])
        self.assertIn(["start", "--attach", "--interactive", plan.agent_container], calls)
        self.assertEqual(calls[-2][:2], ["rm", "--force"], "the container and the sidecar are removed")
        self.assertEqual(calls[-1][:2], ["network", "rm"])


class CliTest(test_cli.CliTest):
    def reset(self):
        self.fake.log.write_text("")
        for marker in self.fake.state.iterdir():
            marker.unlink()

    def token_file(self, mode=0o600) -> Path:
        path = self.home / ".config" / "claude-bottle" / "oauth-token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TOKEN + "\n")
        os.chmod(path, mode)
        return path

    def test_status_and_logout(self):
        proc = self.cli("login", "--status")
        self.assertEqual(proc.returncode, 1)
        self.assertIn(cb.LOGIN_NONE, proc.stdout)
        path = self.token_file()
        proc = self.cli("login", "--status")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("brokered: your subscription login from `claude-bottle login`", proc.stdout)
        self.assertNotIn(TOKEN[13:], proc.stdout + proc.stderr)
        proc = self.cli("logout")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(path.exists())
        self.assertEqual(self.fake.calls(), [], "no engine for either")

    def test_a_readable_token_file_is_refused_before_anything_is_created(self):
        self.token_file(0o644)
        proc = self.cli("start", "--dry-run")
        self.assertOneLineError(proc, 2, "oauth-token", "mode 0644")
        self.assertNotIn(TOKEN[13:], proc.stdout + proc.stderr)

    def test_a_kept_state_holding_a_login_is_reported(self):
        for rc, found in ((0, True), (1, False)):
            with self.subTest(found=found):
                self.reset()
                rules = [{"match": ["run", "--rm"], "contains": ".credentials.json", "rc": rc}]
                proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
                self.assertEqual(proc.returncode, 0, proc.stderr)
                out = proc.stdout + proc.stderr
                self.assertEqual("holds a Claude Code login (.credentials.json" in out, found, out)
                if found:
                    self.assertIn("`claude-bottle logout --state claude`", out)
                (check,) = [a for a in self.fake.argvs() if ".credentials.json" in a[-1]]
                self.assertEqual(check[check.index("--network") + 1], "none")
                self.assertTrue(any(m.endswith(f"target={cb.AGENT_STATE_DIR},readonly") for m in mounts_of(check)))

    def test_the_dry_run_shows_the_login_but_never_the_token(self):
        self.token_file()
        proc = self.cli("start", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("  login:      brokered: your subscription login", proc.stdout)
        self.assertIn("--env ENABLE_TOOL_SEARCH=true", proc.stdout)
        self.assertNotIn(TOKEN[13:], proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
