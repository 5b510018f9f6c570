"""The credential broker in a session: the config, the plan, the agent's argv and command, the steps, the report.

No docker: pure functions on plans, and the CLI with the fake `docker` of tests/fakedocker.py. The broker itself
(headers, redirects, streams) is tested in tests/test_broker.py; the real bottle in tests/e2e/test_broker.py.
"""

import json
import shlex
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard, test_cli  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

SECRET = "sk-ant-api03-WIRING-SECRET-0123456789"
GH_SECRET = "ghp_WIRING_SECRET_abcdef0123456789"
PRIVATE_DIR = "/tmp/claude-bottle-private"
GITHUB = """\
[bottles.api]
allow = ["api.github.com"]

[[bottles.api.credentials]]
env = "GITHUB_TOKEN"
host = "api.github.com"
header = "Authorization"
format = "Bearer {}"
base_url_env = "GITHUB_API_URL"
git = true

[agents.gh]
bottle = "api"
"""


def envs_of(argv) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--env"]


def mounts_of(argv) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--mount"]


class PlanTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-wiring-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name).resolve()
        self.home = self.root / "home"
        self.home.mkdir()
        self.project = self.root / "project"
        self.project.mkdir()

    def plan(self, toml="", agent=None, environ=None, **kw) -> cb.Plan:
        path = self.project / "claude-bottle.toml"
        path.write_text(toml)
        environ = {"HOME": str(self.home), **(environ or {})}
        return cb.resolve_plan(cb.load_config(path), agent, cwd=self.project, environ=environ, suffix="0a1b2c",
                               owner="host:1", private_dir=PRIVATE_DIR, **kw)

    def everything(self, plan) -> str:
        """Every text a start or a dry run shows or hands to docker, from the plan."""
        return json.dumps([cb.render_summary(plan), cb.plan_json(plan), cb.planned_commands(plan),
                           cb.render_forwarders(plan)])

    # ---- the defaults: Claude Code's credentials are brokered, never passed raw ----

    def test_the_api_key_on_the_host_is_brokered_by_default(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET})
        self.assertEqual(plan.env, ())
        self.assertEqual([(ep.env, ep.host, ep.upstream) for ep in plan.brokered],
                         [("ANTHROPIC_API_KEY", "api.anthropic.com", ("https", "api.anthropic.com", 443))])
        argv = guard.agent_create_argv(plan)
        envs = envs_of(argv)
        self.assertNotIn("ANTHROPIC_API_KEY", envs, "never by name: docker would read the real value")
        values = dict(e.split("=", 1) for e in envs if "=" in e)
        self.assertEqual(values["ANTHROPIC_API_KEY"], cb.BROKER_PLACEHOLDER)
        port = cb.broker_ports(plan)[0]
        self.assertEqual(values["ANTHROPIC_BASE_URL"], f"http://127.0.0.1:{port}")
        self.assertIn(guard.mount_arg(f"{PRIVATE_DIR}/broker-0.sock", "/run/claude-bottle/broker-0.sock"),
                      mounts_of(argv))
        self.assertNotIn(SECRET, self.everything(plan))
        self.assertIn("  brokered:   ANTHROPIC_API_KEY -> api.anthropic.com (brokered)", cb.render_summary(plan))
        self.assertIn("  env:        none", cb.render_summary(plan))

    def test_the_subscription_token_is_brokered_too(self):
        plan = self.plan(environ={"CLAUDE_CODE_OAUTH_TOKEN": SECRET})
        self.assertEqual([ep.env for ep in plan.brokered], ["CLAUDE_CODE_OAUTH_TOKEN"])
        self.assertNotIn(SECRET, self.everything(plan))

    def test_nothing_set_brokers_nothing_and_the_command_runs_as_before(self):
        plan = self.plan()
        self.assertEqual((plan.env, plan.brokered), ((), ()))
        argv = guard.agent_create_argv(plan)
        self.assertFalse([m for m in mounts_of(argv) if "broker" in m])
        self.assertEqual(argv[argv.index("-c") + 1], cb.render_plain_http_forwarder(plan) + cb.GATE)
        plan = plan._replace(self_test=False, plain_http="scan")
        argv = guard.agent_create_argv(plan)
        self.assertEqual(argv[argv.index("--entrypoint") + 1], "claude")
        self.assertEqual(cb.render_forwarders(plan), "")
        self.assertNotIn("broker", [s.name for s in cb.start_steps(plan, guard.DOCKER)])

    def test_naming_the_key_in_env_passes_it_raw_and_says_so(self):
        plan = self.plan('[agents.raw]\nenv = ["ANTHROPIC_API_KEY"]\n', "raw",
                         environ={"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": "oat-" + SECRET})
        self.assertEqual(plan.env, ("ANTHROPIC_API_KEY",))
        # The OAuth token shares ANTHROPIC_BASE_URL: brokering it would send the raw key to the broker.
        self.assertEqual(plan.brokered, ())
        envs = envs_of(guard.agent_create_argv(plan))
        self.assertIn("ANTHROPIC_API_KEY", envs)
        self.assertFalse([e for e in envs if e.startswith(("ANTHROPIC_BASE_URL=", "ANTHROPIC_API_KEY="))])
        self.assertIn("  env:        ANTHROPIC_API_KEY (visible to the agent)", cb.render_summary(plan))
        self.assertIn("  brokered:   none", cb.render_summary(plan))

    def test_naming_an_unrelated_variable_keeps_the_key_brokered(self):
        plan = self.plan('[agents.a]\nenv = ["NPM_TOKEN"]\n', "a",
                         environ={"ANTHROPIC_API_KEY": SECRET, "NPM_TOKEN": "npm"})
        self.assertEqual((plan.env, [ep.env for ep in plan.brokered]), (("NPM_TOKEN",), ["ANTHROPIC_API_KEY"]))
        self.assertIn("  env:        NPM_TOKEN (visible to the agent)", cb.render_summary(plan))

    # ---- credentials of the user's own ----

    def test_a_user_credential_with_git(self):
        plan = self.plan(GITHUB, "gh", environ={"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": GH_SECRET})
        self.assertEqual([(ep.index, ep.env) for ep in plan.brokered],
                         [(0, "ANTHROPIC_API_KEY"), (1, "GITHUB_TOKEN")])
        values = dict(e.split("=", 1) for e in envs_of(guard.agent_create_argv(plan)) if "=" in e)
        url = f"http://127.0.0.1:{cb.broker_ports(plan)[1]}"
        self.assertNotEqual(url, values["ANTHROPIC_BASE_URL"])
        self.assertEqual((values["GITHUB_TOKEN"], values["GITHUB_API_URL"]), (cb.BROKER_PLACEHOLDER, url))
        self.assertEqual((values["GIT_CONFIG_COUNT"], values["GIT_CONFIG_KEY_0"], values["GIT_CONFIG_VALUE_0"]),
                         ("1", f"url.{url}/.insteadOf", "https://api.github.com/"))
        text = self.everything(plan)
        self.assertNotIn(SECRET, text)
        self.assertNotIn(GH_SECRET, text)
        self.assertIn("GITHUB_TOKEN -> api.github.com (brokered)", "\n".join(cb.render_summary(plan)))
        self.assertEqual([b["line"] for b in cb.plan_json(plan)["brokered"]],
                         ["ANTHROPIC_API_KEY -> api.anthropic.com (brokered)",
                          "GITHUB_TOKEN -> api.github.com (brokered)"])

    def test_a_credential_whose_host_is_not_allowed_is_a_config_error(self):
        for toml, field in ((GITHUB.replace('allow = ["api.github.com"]', ""), "#1 host:"),
                            (GITHUB.replace("git = true", 'upstream = "https://mirror.corp.example:8443"'),
                             "#1 upstream:")):
            with self.subTest(field=field):
                with self.assertRaises(cb.ConfigError) as e:
                    self.plan(toml, "gh")
                self.assertIn(f"[[bottles.api.credentials]] {field}", str(e.exception))
                self.assertIn("add it to allow", str(e.exception))
        plan = self.plan(GITHUB.replace('"api.github.com"]', '"*.github.com", "mirror.corp.example"]')
                         .replace("git = true", 'upstream = "https://mirror.corp.example:8443"'), "gh",
                         environ={"GITHUB_TOKEN": GH_SECRET})
        self.assertEqual(plan.brokered[0].upstream, ("https", "mirror.corp.example", 8443))

    def test_credentials_in_the_config_are_validated_as_a_bottle_key(self):
        with self.assertRaises(cb.ConfigError) as e:
            self.plan(GITHUB.replace('format = "Bearer {}"', 'format = "Bearer"'), "gh")
        self.assertIn("[[bottles.api.credentials]] #1 format:", str(e.exception))
        with self.assertRaises(cb.ConfigError) as e:
            self.plan("[bottles.api]\ncredential = []\n")
        self.assertIn("did you mean 'credentials'?", str(e.exception))

    def test_a_relative_ca_file_starts_at_the_config_directory(self):
        (self.project / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        plan = self.plan(GITHUB.replace("git = true", 'ca_file = "ca.pem"'), "gh", environ={"GITHUB_TOKEN": "x"})
        self.assertEqual(plan.brokered[0].ca_file, str(self.project / "ca.pem"))

    # ---- the agent's command: forwarders first ----

    def test_the_forwarders_start_before_the_gate_and_before_the_command(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET}, command=["claude", "-p", "hi"])
        argv = guard.agent_create_argv(plan)
        script = argv[argv.index("-c") + 1]
        self.assertEqual(script, cb.render_forwarders(plan) + cb.render_plain_http_forwarder(plan) + cb.GATE)
        self.assertEqual(argv[argv.index("-c") + 2:], ["claude-bottle-gate", "claude", "-p", "hi"])
        argv = guard.agent_create_argv(plan._replace(self_test=False))
        self.assertEqual(argv[argv.index("--entrypoint") + 1], "/bin/sh")
        self.assertEqual(argv[argv.index("-c") + 1],
                         cb.render_forwarders(plan) + cb.render_plain_http_forwarder(plan) + 'exec "$@"')
        self.assertEqual(argv[argv.index("-c") + 2:], ["claude-bottle-broker", "claude", "-p", "hi"])

    def run_forwarders(self, plan, tools):
        """render_forwarders() under sh with a PATH of fake `tools` that log their argv and succeed."""
        bin_dir = Path(tempfile.mkdtemp(dir=self.root))
        log = bin_dir / "calls"
        for tool in tools:
            fake = bin_dir / tool
            # Builtins only (PATH holds the fakes alone); a program passed with -c is left out of the log.
            fake.write_text("#!/bin/sh\nline=$0\nfor a; do case $a in *'\n'*) ;; *) line=\"$line $a\";; esac; done\n"
                            f"echo \"$line\" >> {shlex.quote(str(log))}\n")
            fake.chmod(0o755)
        proc = subprocess.run(["/bin/sh", "-c", cb.render_forwarders(plan)], env={"PATH": str(bin_dir)},
                              capture_output=True, text=True, timeout=30)
        # The forwarders run in the background: give their (fake) lines a moment to land.
        deadline = time.monotonic() + 5
        while tools and time.monotonic() < deadline and not all(
                agent_socket in (log.read_text() if log.exists() else "")
                for agent_socket in map(cb.agent_broker_socket, plan.brokered)):
            time.sleep(0.02)
        return proc, log.read_text() if log.exists() else ""

    def test_the_first_tool_present_serves_each_socket(self):
        plan = self.plan(GITHUB, "gh", environ={"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": GH_SECRET})
        ports = cb.broker_ports(plan)
        for tools, chosen in ((("socat", "python3", "node", "perl"), "socat"), (("perl", "node", "python3"), "python3"),
                              (("perl", "node"), "node"), (("perl",), "perl")):
            with self.subTest(tools=tools):
                proc, calls = self.run_forwarders(plan, tools)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                used = {line.split()[0].rsplit("/", 1)[-1] for line in calls.split("\n") if line.strip()}
                self.assertEqual(used, {chosen})
                for ep in plan.brokered:
                    self.assertIn(f"/run/claude-bottle/broker-{ep.index}.sock", calls)
                    self.assertIn(str(ports[ep.index]), calls)

    def test_no_tool_at_all_stops_before_the_command_with_a_clear_message(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET})
        proc, calls = self.run_forwarders(plan, ())
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(proc.stderr.strip(), cb.BROKER_NO_TOOL)
        proc = subprocess.run(["/bin/sh", "-c", cb.render_forwarders(plan) + "echo the command ran"],
                              env={"PATH": "/nonexistent"}, capture_output=True, text=True, timeout=30)
        self.assertNotIn("the command ran", proc.stdout)

    # ---- the steps ----

    def test_the_broker_gets_the_sidecars_address_before_the_agents_command_runs(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET})
        steps = {s.name: s for s in cb.start_steps(plan, guard.DOCKER)}
        self.assertEqual(steps["broker"].after, ("sidecar",))
        self.assertIn("broker", steps["self_test"].after, "the gate opens only once the broker has its proxy")
        steps = {s.name: s for s in cb.start_steps(plan._replace(self_test=False), guard.DOCKER)}
        self.assertIn("broker", steps["start"].after)
        plan = plan._replace(egress_network="corp", self_test=False)
        steps = {s.name: s for s in cb.start_steps(plan, guard.DOCKER)}
        self.assertEqual(steps["broker"].after, ("addresses",), "on the user's network: asked, not derived")
        inspect = [a for a, note in cb.planned_commands(plan) if a[0] == "inspect"]
        self.assertEqual([a[-1] for a in inspect], [plan.sidecar])

    def test_point_broker_uses_the_sidecars_egress_address(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET})
        broker = mock.Mock()
        run = cb.Run(plan, cb.Teardown(guard.DOCKER), broker)
        run.results.put("network_egress", "10.213.4.16/28")
        run.results.put("network_internal", "10.213.9.32/28")
        cb.point_broker(run)
        broker.set_proxy.assert_called_once_with(("10.213.4.18", cb.PROXY_PORT))
        run.results.put("addresses", ("172.30.0.9", "10.213.9.33"))
        cb.point_broker(run)
        broker.set_proxy.assert_called_with(("172.30.0.9", cb.PROXY_PORT))

    # ---- the report ----

    def test_the_report_counts_each_credentials_requests_and_statuses(self):
        plan = self.plan(environ={"ANTHROPIC_API_KEY": SECRET})
        broker = mock.Mock()
        broker.stats.return_value = [{"host": "api.anthropic.com", "env": "ANTHROPIC_API_KEY", "requests": 3,
                                      "status": {200: 2, 429: 1}}]
        out = self.root / "report.json"
        engine = cb.DockerEngine(cb.Context({}))
        with mock.patch.object(engine, "logs", return_value=cb.Completed(0, "", "")), \
                mock.patch.object(cb, "say") as say:
            cb.report_egress(engine, plan, str(out), False, broker)
        report = json.loads(out.read_text())
        self.assertEqual(report["brokered"], [{"host": "api.anthropic.com", "env": "ANTHROPIC_API_KEY",
                                               "requests": 3, "status": {"200": 2, "429": 1}}])
        self.assertIn("  brokered: ANTHROPIC_API_KEY -> api.anthropic.com: 3 requests (200 x2, 429 x1)",
                      say.call_args[0][0].splitlines())
        steps = cb.start_steps(plan, engine, str(out), False, broker)
        self.assertEqual([e for s in steps for e in s.then], [("call", cb.report_egress, (engine, plan, str(out),
                                                                                          False, broker, False))])


class Cli(test_cli.CliTest):
    def test_a_start_mounts_the_socket_and_never_shows_the_key(self):
        proc = self.cli("start", "--yes", "-v", "--", "true", env=self.env(start_rc=0, ANTHROPIC_API_KEY=SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        create = next(c for c in self.fake.calls() if c["argv"][0] == "create")
        self.assertIn(f"ANTHROPIC_API_KEY={cb.BROKER_PLACEHOLDER}", create["argv"])
        self.assertTrue(any(m.endswith("broker-0.sock,target=/run/claude-bottle/broker-0.sock")
                            for m in mounts_of(create["argv"])), create["argv"])
        self.assertNotIn(SECRET, json.dumps(self.fake.calls()) + proc.stdout + proc.stderr)
        self.assertIn("ANTHROPIC_API_KEY -> api.anthropic.com (brokered)", proc.stdout)
        self.assertIn("brokered: ANTHROPIC_API_KEY -> api.anthropic.com: 0 requests", proc.stderr)
        self.assertEqual(list(Path(self.fake.tmpdir).glob("claude-bottle-*/*")), [], "the sockets are gone")

    def test_dry_run_shows_the_credential_and_never_its_value(self):
        self.write_config(GITHUB)
        proc = self.cli("start", "gh", "--dry-run", env=self.env(ANTHROPIC_API_KEY=SECRET, GITHUB_TOKEN=GH_SECRET))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("  brokered:   ANTHROPIC_API_KEY -> api.anthropic.com (brokered), "
                      "GITHUB_TOKEN -> api.github.com (brokered)\n", proc.stdout)
        self.assertIn("ANTHROPIC_BASE_URL=http://127.0.0.1:", proc.stdout)
        for secret in (SECRET, GH_SECRET):
            self.assertNotIn(secret, proc.stdout + proc.stderr)
        self.assertEqual(self.fake.calls(), [])

    def test_a_bad_credential_is_a_one_line_error_and_nothing_is_made(self):
        self.write_config(GITHUB.replace('header = "Authorization"', 'header = "Authorization:"'))
        proc = self.cli("start", "gh", "--yes", "--", "true", env=self.env(GITHUB_TOKEN=GH_SECRET))
        self.assertOneLineError(proc, 2, "[[bottles.api.credentials]] #1 header:")
        self.assertNotIn(GH_SECRET, proc.stderr)
        self.assertEqual(self.fake.calls(), [])


if __name__ == "__main__":
    unittest.main()
