"""Changing a running bottle: allow and deny (validation, the atomic write, the wait for pipelock's reload by hash,
a reload pipelock refuses, --save), presets, learn mode, and the real pipelock 2.3.0 lines through every parser."""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from tests import guard
from tests.guard import cb

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = (ROOT / "fixtures" / "pipelock-2.3.0-events.jsonl").read_text().splitlines()
REFUSED = next(line for line in FIXTURE if '"CONFIG_RELOAD"' in line)
RELOADED = next(line for line in FIXTURE if '"config_reload"' in line)


def fixture_event(kind: str, **match) -> dict:
    for line in FIXTURE:
        event = json.loads(line)
        if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event
    raise LookupError(kind)


class Session:
    """A running session as `allow` finds it: a real private dir (files written as a start writes them) under a
    temp runtime base, its live.json, and a fake pipelock whose log answers each write as told."""

    def __init__(self, test: unittest.TestCase, config_text: str | None = None, answer: str = "apply",
                 reload_timeout: str = "10"):
        # An answer comes at once; the wait is long only for a loaded machine, short where none must come.
        tmp = tempfile.TemporaryDirectory(prefix="cb-live-")
        test.addCleanup(tmp.cleanup)
        self.base = Path(tmp.name)
        project = self.base / "project"
        (project / ".git").mkdir(parents=True)
        config = cb.Config()
        if config_text is not None:
            self.config_path = project / "claude-bottle.toml"
            self.config_path.write_text(config_text)
            config = cb.load_config(self.config_path)
        plan = cb.resolve_plan(config, "a" if config_text else None, cwd=project,
                               environ={"HOME": str(self.base / "home")}, suffix="0a1b2c")
        self.private = self.base / plan.session
        plan = plan._replace(private_dir=str(self.private))
        self.plan = plan
        cb.make_private_dir(plan.private_dir)
        cb.write_private_files(plan, "secret")
        self.yaml = self.private / "pipelock" / "pipelock.yaml"
        self.answer, self.popen_argvs = answer, []
        self.dict = {"session": plan.session, "agent": plan.agent, "bottle": plan.bottle, "owner": f"{cb.hostname()}:1",
                     "owner-dir": str(self.private), "owner_state": "alive", "state": "running", "networks": [],
                     "containers": [{"name": plan.sidecar, "role": "pipelock", "state": "running"}]}
        for target, value in (("find_sessions", lambda engine, session=None: [self.dict]),
                              ("runtime_base", lambda: self.base)):
            patcher = mock.patch.object(cb, target, value)
            patcher.start()
            test.addCleanup(patcher.stop)
        for patcher in (mock.patch.object(cb.DockerEngine, "popen", lambda engine, argv, **kw: self.popen(*argv, **kw)),
                        mock.patch.dict(os.environ, {"CLAUDE_BOTTLE_RELOAD_TIMEOUT": reload_timeout})):
            patcher.start()
            test.addCleanup(patcher.stop)

    def popen(self, *argv, **kw):
        """`docker logs --follow --since T SIDECAR`: pipelock's answer to the file as it is now."""
        self.popen_argvs.append(argv)
        digest = cb._sha256(self.yaml.read_text())
        lines = {"apply": [RELOADED.replace("941429f4de349145f4e21433c6541b32404ca2fca70faaf4e6b038aabf4196cb",
                                            digest)],
                 "refuse": [REFUSED, REFUSED],
                 "other-hash": [RELOADED],
                 "silent": []}[self.answer]
        # Start-up lines first, as a log that began earlier would hold them; the wait must skip them.
        text = "\n".join([*FIXTURE[:2], *lines]) + "\n"
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write(sys.argv[1])", text], **kw)

    def live(self) -> dict:
        return json.loads((self.private / cb.LIVE_STATE).read_text())


def run(*argv) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cb.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class AllowDenyTest(unittest.TestCase):
    def test_allow_writes_waits_for_its_hash_and_remembers(self):
        s = Session(self)
        status, out, err = run("allow", s.plan.session, "Example.ORG", "@npm")
        self.assertEqual(status, 0, err)
        text = s.yaml.read_text()
        for host in ("example.org", "registry.npmjs.org", *cb.DEFAULT_HOSTS):
            self.assertIn(f'  - "{host}"\n', text)
        self.assertIn("now allowed: ", out)
        self.assertEqual(s.live()["added"], ["example.org", "registry.npmjs.org"])
        self.assertEqual(s.live()["change"], 1)
        [argv] = s.popen_argvs
        self.assertEqual(argv[:3], ("logs", "--follow", "--since"))
        self.assertRegex(argv[3], r"^\d{10}\.\d{9}$")
        self.assertEqual(argv[4], s.plan.sidecar)
        self.assertEqual([p.name for p in (s.private / "pipelock").iterdir()], ["pipelock.yaml"], "no temp file left")

    def test_each_change_has_a_hash_of_its_own(self):
        # allow X, deny X, allow X: the same list twice, never the same bytes, so an old event cannot settle it.
        s = Session(self)
        hashes = []
        for verb in ("allow", "deny", "allow"):
            self.assertEqual(run(verb, s.plan.session, "example.org")[0], 0)
            hashes.append(cb._sha256(s.yaml.read_text()))
        self.assertEqual(len(set(hashes)), 3)
        self.assertEqual(s.live()["added"], ["example.org"])

    def test_a_reload_pipelock_refuses_restores_the_file(self):
        s = Session(self, answer="refuse")
        before, live = s.yaml.read_bytes(), s.live()
        status, out, err = run("allow", s.plan.session, "example.org")
        self.assertEqual(status, 1)
        self.assertIn("pipelock refused the change (rejected: security downgrade from strict mode)", err)
        self.assertIn("allows what it did before", err)
        self.assertEqual(s.yaml.read_bytes(), before)
        self.assertEqual(s.live(), live)

    def test_no_confirmation_is_a_timeout_and_restores_the_file(self):
        for answer in ("silent", "other-hash"):
            with self.subTest(answer=answer):
                s = Session(self, answer=answer, reload_timeout="0.5")
                before = s.yaml.read_bytes()
                status, out, err = run("allow", s.plan.session, "example.org")
                self.assertEqual(status, 1)
                self.assertIn("did not confirm the change within", err)
                self.assertEqual(s.yaml.read_bytes(), before)
                self.assertEqual(s.live()["added"], [])

    def test_interrupted_wait_restores_the_file(self):
        s = Session(self)
        before = s.yaml.read_bytes()
        with mock.patch.object(cb, "wait_reload", side_effect=cb.Interrupted(2)):
            with self.assertRaises(cb.Interrupted):
                cb.change_session(cb.build_parser().parse_args(["allow", s.plan.session, "example.org"]),
                                  cb.DockerEngine(cb.Context()), True)
        self.assertEqual(s.yaml.read_bytes(), before)
        self.assertEqual(s.live()["added"], [])

    def test_hosts_are_validated_like_the_config(self):
        s = Session(self)
        before = s.yaml.read_bytes()
        for bad, needle in (("https://example.org", "drop the scheme"), ("example.org:443", "drop the port"),
                            ("*", "not a hostname"), ("@nope", "known presets: @crates"),
                            ("exämple.org", "punycode")):
            with self.subTest(bad=bad):
                status, out, err = run("allow", s.plan.session, bad)
                self.assertEqual(status, 2)
                self.assertIn(needle, err)
                self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertEqual(s.yaml.read_bytes(), before)
        self.assertEqual(s.popen_argvs, [], "nothing written, nothing waited for")

    def test_trusted_is_refused_with_the_restart_command(self):
        s = Session(self)
        before = s.yaml.read_bytes()
        status, out, err = run("allow", s.plan.session, "git.corp.example", "--trusted")
        self.assertEqual(status, 2)
        self.assertIn("refuses new trusted_domains", err)
        self.assertIn(f"claude-bottle stop {s.plan.session} && claude-bottle start claude", err)
        self.assertEqual(s.yaml.read_bytes(), before)

    def test_deny(self):
        s = Session(self, '[bottles.b]\nallow = ["web", "*.corp.example"]\n[agents.a]\nbottle = "b"\n')
        for host, needle in (("api.anthropic.com", "pass --force"), ("git.corp.example", "through *.corp.example"),
                             ("nowhere.example", "not allowed in this session")):
            with self.subTest(host=host):
                status, _, err = run("deny", s.plan.session, host)
                self.assertEqual(status, 2)
                self.assertIn(needle, err)
        self.assertEqual(run("deny", s.plan.session, "web")[0], 0)
        self.assertNotIn('"web"', s.yaml.read_text())
        self.assertEqual(s.live()["denied"], ["web"])
        self.assertEqual(run("deny", s.plan.session, "api.anthropic.com", "--force")[0], 0)
        self.assertNotIn('"api.anthropic.com"', s.yaml.read_text())

    def test_save_keeps_comments_and_layout(self):
        text = ('# my bottles\n[bottles.b]\n# what the agent may reach\nallow = ["web"]  # keep this\n'
                'trusted = ["web"]\n\n[agents.a]\nbottle = "b"\n')
        s = Session(self, text)
        self.assertEqual(run("allow", s.plan.session, "example.org", "@pypi", "--save")[0], 0)
        self.assertEqual(s.config_path.read_text(), text.replace('allow = ["web"]',
                                                                 'allow = ["web", "example.org", "@pypi"]'))
        self.assertEqual(run("deny", s.plan.session, "web", "--save")[0], 0)
        self.assertIn('allow = ["example.org", "@pypi"]  # keep this\n', s.config_path.read_text())
        self.assertEqual(cb.load_config(s.config_path).bottles["b"].allow, ("example.org", "@pypi"))

    def test_save_refused_when_the_array_holds_a_comment(self):
        text = '[bottles.b]\nallow = [\n  "web", # why\n]\n[agents.a]\nbottle = "b"\n'
        s = Session(self, text)
        status, out, err = run("allow", s.plan.session, "example.org", "--save")
        self.assertEqual(status, 2)
        self.assertIn("edit it by hand", err)
        self.assertEqual(s.config_path.read_text(), text)

    def test_sessions_it_cannot_change(self):
        s = Session(self)
        for change, needle in (({"owner-dir": ""}, "without live changes"),
                               ({"owner_state": "unknown"}, "is not yours"),
                               ({"owner-dir": "/tmp/claude-bottle-99999/x"}, "is not yours"),
                               ({"owner_state": "gone"}, "gc"),
                               ({"owner": "elsewhere:12"}, "another host")):
            with self.subTest(change=change):
                saved = dict(s.dict)
                s.dict.update(change)
                if change.get("owner") == "elsewhere:12":
                    s.dict["owner_state"] = "unknown"
                try:
                    status, out, err = run("allow", s.plan.session, "example.org")
                finally:
                    s.dict.clear()
                    s.dict.update(saved)
                self.assertEqual(status, 1, err)
                self.assertIn(needle, err)
        (s.private / cb.LIVE_STATE).unlink()
        status, out, err = run("allow", s.plan.session, "example.org")
        self.assertIn("without live changes", err)

    def test_list_without_hosts(self):
        s = Session(self)
        status, out, err = run("allow", s.plan.session)
        self.assertEqual(status, 0)
        self.assertIn("api.anthropic.com", out)
        self.assertEqual(s.popen_argvs, [])


class AtomicWriteTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.path = self.dir / "pipelock.yaml"
        self.path.write_text("old\n")

    def test_replaces_in_one_step(self):
        inode = self.path.stat().st_ino
        cb.atomic_write(str(self.path), "new\n", mode=0o640)
        self.assertEqual(self.path.read_text(), "new\n")
        self.assertNotEqual(self.path.stat().st_ino, inode, "a new file renamed over the old, not rewritten")
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o640)
        self.assertEqual(os.listdir(self.dir), ["pipelock.yaml"])

    def test_a_failed_write_leaves_the_old_file_and_no_temp(self):
        with mock.patch.object(cb.os, "replace", side_effect=OSError(28, "No space left on device")):
            with self.assertRaises(OSError):
                cb.atomic_write(str(self.path), "new\n")
        self.assertEqual(self.path.read_text(), "old\n")
        self.assertEqual(os.listdir(self.dir), ["pipelock.yaml"])


class ChangeHostsTest(unittest.TestCase):
    STATE = {"session": "s", "base": ["a.example", *cb.DEFAULT_HOSTS], "hosts": ["a.example", *cb.DEFAULT_HOSTS],
             "added": [], "denied": []}

    def test_added_and_denied_are_the_difference_from_the_start(self):
        state = cb.change_hosts(self.STATE, add=("b.example",))
        state = cb.change_hosts(state, remove=("a.example",))
        self.assertEqual((state["added"], state["denied"]), (["b.example"], ["a.example"]))
        state = cb.change_hosts(state, add=("a.example",), remove=("b.example",))
        self.assertEqual((state["added"], state["denied"]), ([], []))

    def test_never_empty(self):
        state = {**self.STATE, "base": ["a.example"], "hosts": ["a.example"]}
        with self.assertRaisesRegex(cb.ConfigError, "no host allowed"):
            cb.change_hosts(state, remove=("a.example",))


class PresetTest(unittest.TestCase):
    def test_every_preset_host_is_a_valid_host(self):
        for name, hosts in cb.PRESETS.items():
            self.assertRegex(name, r"^[a-z0-9-]+$")
            self.assertEqual(tuple(sorted(set(hosts))), hosts, name)
            for host in hosts:
                self.assertEqual(cb.check_host(host, name, wildcard=False), host)
                self.assertNotIn(host, cb.DEFAULT_HOSTS)

    def test_registries_asked_for(self):
        for name in ("npm", "pypi", "crates", "github", "rubygems"):
            self.assertIn(name, cb.PRESETS)

    def test_sources_are_written_next_to_each_preset(self):
        source = (ROOT / "claude_bottle.py").read_text()
        block = source[source.index("PRESETS = {"):source.index("\n}\n", source.index("PRESETS = {"))]
        for name in cb.PRESETS:
            above = block[:block.index(f'    "{name}":')].rstrip().splitlines()
            comments = []
            while above and above[-1].strip().startswith("#"):
                comments.insert(0, above.pop())
            self.assertRegex(comments[0] if comments else "", r"^    # https://", name)

    def test_presets_in_the_config_and_on_the_command_line(self):
        config = cb.parse_config({"bottles": {"b": {"allow": ["@npm", "web"]}}, "agents": {"a": {"bottle": "b"}}})
        self.assertEqual(config.bottles["b"].allow, ("@npm", "web"), "kept as written")
        with tempfile.TemporaryDirectory() as d:
            plan = cb.resolve_plan(config, "a", cwd=Path(d), environ={"HOME": "/nonexistent"}, suffix="x",
                                   extra_allow=["@pypi"])
        for host in ("registry.npmjs.org", "web", "pypi.org", "files.pythonhosted.org"):
            self.assertIn(host, plan.hosts)
        summary = "\n".join(cb.render_summary(plan))
        self.assertIn("preset:     @npm = registry.npmjs.org", summary)
        self.assertIn("preset:     @pypi = files.pythonhosted.org, pypi.org", summary)
        with self.assertRaisesRegex(cb.ConfigError, r"\[bottles.b\] allow: unknown preset '@nope'; known presets: "):
            cb.parse_config({"bottles": {"b": {"allow": ["@nope"]}}}, "cfg.toml")

    def test_presets_command(self):
        status, out, _ = run("presets")
        self.assertEqual(status, 0)
        self.assertIn("@npm", out)
        self.assertIn("registry.npmjs.org", out)
        status, out, _ = run("presets", "--json")
        self.assertEqual(json.loads(out), {k: list(v) for k, v in cb.PRESETS.items()})


class LearnTest(unittest.TestCase):
    def plan(self, **kw):
        with tempfile.TemporaryDirectory() as d:
            return cb.resolve_plan(cb.Config(), None, cwd=Path(d), environ={"HOME": "/nonexistent"}, suffix="x", **kw)

    def test_learn_turns_enforcement_off_and_only_then(self):
        self.assertIn("\nenforce: false\n", cb.render_pipelock_yaml(self.plan(learn=True)))
        self.assertNotIn("enforce", cb.render_pipelock_yaml(self.plan()))
        self.assertIn(cb.LEARN_WARNING, cb.render_summary(self.plan(learn=True)))
        self.assertNotIn(cb.LEARN_WARNING, cb.render_summary(self.plan()))

    def test_report_proposes_the_allow_list(self):
        plan = self.plan(learn=True)
        events = [
            {"event": "tunnel_open", "target": "registry.npmjs.org:443"},
            {"event": "tunnel_open", "target": "api.anthropic.com:443"},
            {"event": "anomaly", "method": "CONNECT", "target": "registry.npmjs.org:443", "scanner": "allowlist",
             "reason": "domain not in allowlist: registry.npmjs.org"},
            {"event": "forward_http", "url": "http://git.corp.example/x", "status_code": 200},
            {"event": "anomaly", "method": "GET", "url": "http://git.corp.example/x", "scanner": "ssrf",
             "reason": "SSRF blocked: git.corp.example resolves to internal IP 10.0.0.2"},
            fixture_event("anomaly", method="STARTUP"),
            # pipelock 2.3.0 with enforce: false, an untrusted host on a private address (verbatim but the names):
            # the allowlist's anomaly, then its dialer refuses the connection whatever enforce says.
            {"level": "warn", "component": "pipelock", "event": "anomaly", "method": "GET",
             "url": "http://db.internal:8000/", "client_ip": "172.26.0.4", "request_id": "req-1",
             "agent": "anonymous", "scanner": "allowlist", "mitre_technique": "T1071.001",
             "reason": "domain not in allowlist: db.internal", "score": 1, "time": "2026-12-02T02:38:42Z",
             "message": "anomaly detected"},
            {"level": "error", "component": "pipelock", "event": "error", "method": "GET",
             "url": "http://db.internal:8000/", "client_ip": "172.26.0.4", "request_id": "req-1",
             "agent": "anonymous",
             "error": "Get \"http://db.internal:8000/\": "
                      "SSRF blocked: db.internal resolves to internal IP 172.26.0.2",
             "time": "2026-12-02T02:38:42Z", "message": "request error"},
        ]
        report = cb.egress_report(events)
        refusal = "SSRF blocked: db.internal resolves to internal IP 172.26.0.2"
        self.assertEqual(report["blocked"], [{"host": "db.internal", "scanner": "ssrf", "reason": refusal, "count": 1}])
        self.assertEqual(cb.learned_allow(report), ["@npm", "db.internal", "git.corp.example"])
        self.assertEqual(cb.learned_trusted(report), ["db.internal", "git.corp.example"])
        text = "\n".join(cb.render_report(plan, report))
        self.assertIn('    allow = ["@npm", "db.internal", "git.corp.example"]', text)
        self.assertIn('    trusted = ["db.internal", "git.corp.example"]', text)
        self.assertIn("would have refused: db.internal (allowlist), git.corp.example (ssrf), "
                      "registry.npmjs.org (allowlist)", text)
        self.assertIn("blocked: db.internal (1) ssrf: SSRF blocked", text)
        self.assertEqual(text.count("trusted = "), 1, "one trusted line, the learn mode's")

    def test_learn_asks_its_own_question(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / ".git").mkdir()
            env = {**os.environ, "PATH": "/nonexistent", "HOME": "/nonexistent-home"}
            for args in (["--learn", "--yes"], ["--learn"]):
                r = subprocess.run([sys.executable, str(ROOT / "claude_bottle.py"), "start", *args, "--", "true"],
                                   cwd=d, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("--yes-learn", r.stderr)
                self.assertIn("LEARN MODE", r.stdout)
            r = subprocess.run([sys.executable, str(ROOT / "claude_bottle.py"), "start", "--yes-learn", "--yes",
                                "--", "true"], cwd=d, env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--yes-learn: only with --learn", r.stderr)
            r = subprocess.run([sys.executable, str(ROOT / "claude_bottle.py"), "start", "--save", "--yes",
                                "--", "true"], cwd=d, env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--save: only with --learn", r.stderr)


class RealPipelockLinesTest(unittest.TestCase):
    """fixtures/pipelock-2.3.0-events.jsonl, verbatim from the real pipelock 2.3.0, through every parser."""

    def test_logs(self):
        events = cb.parse_events("\n".join(FIXTURE))
        self.assertEqual(len(events), len(FIXTURE))
        lines = [cb.render_event(e) for e in events]
        text = "\n".join(lines)
        self.assertIn("allowed  GET http://web:8000/ -> 200", text)
        self.assertNotIn("-> ?", text)
        self.assertIn("18:55:49 started  pipelock 2.3.0, mode strict, listening on 0.0.0.0:8888", text)
        startup_note = lines[0]
        self.assertIn("(expected)", startup_note)
        self.assertNotIn("anomaly", startup_note)
        self.assertIn("reloaded config 941429f4de34", text)
        self.assertIn("refused  a config reload: rejected: security downgrade from strict mode", text)
        self.assertIn("blocked  CONNECT other:8000", text)

    def test_logs_fix_hints(self):
        session = {"session": "s-1", "bottle": "b", "state": "running"}
        blocked = fixture_event("blocked", scanner="allowlist", method="GET")
        self.assertEqual(cb.block_fix(blocked, session), "claude-bottle allow s-1 other")
        self.assertEqual(cb.block_fix(blocked, {**session, "state": "exited"}),
                         'add "other" to allow under [bottles.b] in claude-bottle.toml')
        ssrf = fixture_event("blocked", scanner="ssrf", url="http://notrusted:8000/")
        self.assertIn('add "notrusted" to trusted', cb.block_fix(ssrf, session))
        # The same scanner refuses a name that did not resolve: no config change, above all no `trusted`.
        for method in ("GET", "CONNECT"):
            unresolved = fixture_event("blocked", scanner="ssrf", method=method, client_ip="10.213.0.3")
            self.assertIn("DNS resolution error", unresolved["reason"])
            self.assertEqual(cb.block_fix(unresolved, session),
                             "none in the config: the name did not resolve (offline, a typo, or no such name)")
        self.assertIsNone(cb.block_fix(fixture_event("blocked", scanner="ratelimit"), session))
        self.assertIsNone(cb.block_fix(fixture_event("startup"), session))

    def test_egress_report(self):
        report = cb.egress_report(cb.parse_events("\n".join(FIXTURE)))
        self.assertEqual(report["reached"], [{"host": "web", "count": 2}])
        self.assertEqual({(b["host"], b["scanner"]) for b in report["blocked"]},
                         {("other", "allowlist"), ("notrusted", "ssrf"), ("nothing-here.example.test", "ssrf"),
                          ("web", "ratelimit"), ("web", "dlp")})
        self.assertNotIn("would_block", report, "the start-up anomaly names no request")

    def test_live_allow_wait(self):
        wait = cb.ReloadWait("941429f4de349145f4e21433c6541b32404ca2fca70faaf4e6b038aabf4196cb")
        for line in FIXTURE:
            if '"config_reload"' in line:
                break
            self.assertEqual(wait.feed(line + "\n"), "waiting")
        self.assertEqual(wait.feed(RELOADED[:40]), "waiting")
        self.assertEqual(wait.feed(RELOADED[40:] + "\n"), "applied")
        refused = cb.ReloadWait("0" * 64)
        self.assertEqual(refused.feed("\n".join(FIXTURE) + "\n"), "refused")
        self.assertEqual(refused.reason, "rejected: security downgrade from strict mode")


class ReportTest(unittest.TestCase):
    def test_live_changes_in_the_report(self):
        with tempfile.TemporaryDirectory() as d:
            plan = cb.resolve_plan(cb.parse_config({"bottles": {"b": {"allow": ["web", "@npm"]}},
                                                    "agents": {"a": {"bottle": "b"}}}, "c.toml"), "a",
                                   cwd=Path(d), environ={"HOME": "/nonexistent"}, suffix="x")
        report = cb.egress_report([{"event": "blocked", "url": "http://late.example/", "scanner": "allowlist",
                                    "reason": "domain not in allowlist: late.example"}])
        report["live"] = {"added": ["extra.example"], "denied": ["web"],
                          "hosts": sorted({*plan.hosts, "extra.example"} - {"web"})}
        text = "\n".join(cb.render_report(plan, report))
        self.assertIn("changed live: allowed extra.example; denied web", text)
        self.assertIn('    allow = ["@npm", "extra.example"]\n', text + "\n")
        self.assertIn('    allow = ["@npm", "extra.example", "late.example"]', text)


if __name__ == "__main__":
    unittest.main()
