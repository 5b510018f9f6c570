"""Operating bottles with a fake docker: ls, stop, gc, logs, doctor, and orphan reaping at start."""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from tests.test_cli import CLI, CliTest

from tests import guard

cb = guard.cb
HOST = socket.gethostname()


def dead_pid() -> int:
    """A pid that certainly belongs to no process: one that just exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def live_process(test, argv=None) -> subprocess.Popen:
    """A running process (by default, whose command line does not mention claude at all)."""
    proc = subprocess.Popen(argv or ["sleep", "60"])
    test.addCleanup(proc.wait)
    test.addCleanup(proc.kill)
    return proc


def proven(test, pid: int, secret="s3cret", start=None) -> dict:
    """Owner labels of a session started by `pid`, with its secret in a private dir, as a start records them."""
    d = tempfile.mkdtemp(prefix="cb-owner-")
    test.addCleanup(shutil.rmtree, d, True)
    Path(d, "owner").write_text(secret)
    return {"owner": f"{HOST}:{pid}", "owner-start": cb.process_start(pid) if start is None else start,
            "owner-proof": cb.proof_of(secret), "owner-dir": d}


def live_owner(test) -> dict:
    return proven(test, live_process(test).pid)


def gone_owner(test) -> dict:
    return proven(test, dead_pid(), start="boot/123")


def session_rules(sid: str, owner, state: str = "running", agent: str = "impl") -> list:
    """`docker ps` and `docker network ls` answers for one session, in claude-bottle's listing format.

    `owner` is a dict of owner labels, or a `host:pid` string alone (as an older claude-bottle recorded it).
    """
    owner = owner if isinstance(owner, dict) else {"owner": owner}

    def item(name, role, created, state=""):
        labels = {"session": sid, "role": role, "agent": agent, "bottle": "web", "owner": "",
                  "owner-start": "", "owner-proof": "", "owner-dir": "", **owner}
        return {"name": name, "state": state, **labels, "created": created}

    created = "2026-11-27 08:00:00 +0000 UTC"
    ps = [item(f"claude-bottle-{sid}", "agent", created, state),
          item(f"claude-bottle-{sid}-pipelock", "pipelock", created, "running")]
    nets = [item(f"claude-bottle-{sid}-internal", "internal", "2026-11-27 07:59:59.5 +0000 UTC"),
            item(f"claude-bottle-{sid}-egress", "egress", created)]
    return [lines("ps", ps), lines("network ls", nets)]


def lines(what: str, items: list) -> dict:
    return {"match": what.split(), "stdout": "".join(json.dumps(i) + "\n" for i in items)}


def merge(*rule_sets) -> list:
    """Several sessions' answers combined into one rule per command."""
    merged = {}
    for rules in rule_sets:
        for rule in rules:
            key = tuple(rule["match"])
            merged.setdefault(key, {"match": rule["match"], "stdout": ""})["stdout"] += rule["stdout"]
    return list(merged.values())


class Ls(CliTest):
    def test_lists_sessions_with_owner_liveness(self):
        rules = merge(session_rules("impl-aaaaaa", live_owner(self)),
                      session_rules("impl-bbbbbb", gone_owner(self), state="exited"),
                      session_rules("impl-cccccc", "elsewhere:42"))
        proc = self.cli("ls", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout.splitlines()
        self.assertEqual(out[0].split(), ["SESSION", "AGENT", "BOTTLE", "STATE", "AGE", "OWNER"])
        self.assertRegex(out[1], r"^impl-aaaaaa +impl +web +running +\S+ +\S+:\d+ \(alive\)$")
        self.assertIn("(gone)", next(line for line in out if "impl-bbbbbb" in line))
        self.assertIn("exited", next(line for line in out if "impl-bbbbbb" in line))
        self.assertIn("(unknown)", next(line for line in out if "impl-cccccc" in line))
        self.assertEqual([a[:2] for a in self.fake.argvs()], [["ps", "--all"], ["network", "ls"]])
        for argv in self.fake.argvs():
            self.assertIn("label=claude-bottle.session", argv)
            fmt = argv[argv.index("--format") + 1]
            self.assertNotIn("json .}}", fmt, "{{json .}} makes docker ps compute every container's size")

    def test_alias_ps_and_json(self):
        proc = self.cli("ps", "--json", env=self.env(session_rules("impl-aaaaaa", "elsewhere:1")))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        [session] = json.loads(proc.stdout)
        self.assertEqual(session["session"], "impl-aaaaaa")
        self.assertEqual(session["state"], "running")
        self.assertIsNone(session["owner_alive"])
        self.assertEqual(sorted(n["name"] for n in session["networks"]),
                         ["claude-bottle-impl-aaaaaa-egress", "claude-bottle-impl-aaaaaa-internal"])

    def test_empty(self):
        proc = self.cli("ls")
        self.assertEqual(proc.stdout, "no claude-bottle sessions\n")


class Gc(CliTest):
    def test_removes_only_sessions_whose_owner_is_gone(self):
        rules = merge(session_rules("impl-dead00", gone_owner(self)),
                      session_rules("impl-live00", live_owner(self)),
                      session_rules("impl-away00", "elsewhere:42"))
        proc = self.cli("gc", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("removed impl-dead00", proc.stdout)
        self.assertIn("skipped impl-away00: owned by elsewhere:42", proc.stdout)
        mutating = [a for a in self.fake.argvs() if a[0] == "rm" or a[:2] == ["network", "rm"]]
        # The same ordered teardown as a session's own exit: both containers, then both networks.
        self.assertEqual(mutating, [
            ["rm", "--force", "claude-bottle-impl-dead00", "claude-bottle-impl-dead00-pipelock"],
            ["network", "rm", "claude-bottle-impl-dead00-egress", "claude-bottle-impl-dead00-internal"]])

    def test_dry_run_removes_nothing(self):
        proc = self.cli("gc", "--dry-run", env=self.env(session_rules("impl-dead00", gone_owner(self))))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("would remove impl-dead00: claude-bottle-impl-dead00", proc.stdout)
        self.assertFalse([a for a in self.fake.argvs() if a[0] == "rm" or a[:2] == ["network", "rm"]])

    def test_never_prunes_globally(self):
        self.cli("gc", env=self.env(session_rules("impl-dead00", gone_owner(self))))
        for argv in self.fake.argvs():
            self.assertNotIn("prune", argv)
            if argv[0] in ("ps",) or argv[:2] == ["network", "ls"]:
                self.assertIn("label=claude-bottle.session", argv)

    def test_start_reaps_orphans(self):
        rules = session_rules("impl-dead00", gone_owner(self))
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        calls = self.fake.argvs()
        # In the background, off the start's critical path; done before the CLI exits.
        self.assertIn(["rm", "--force", "claude-bottle-impl-dead00", "claude-bottle-impl-dead00-pipelock"], calls)
        self.assertIn(["network", "rm", "claude-bottle-impl-dead00-egress", "claude-bottle-impl-dead00-internal"],
                      calls)


class Stop(CliTest):
    def test_stop_tears_down_a_session_whose_owner_is_gone(self):
        rules = session_rules("impl-aaaaaa", gone_owner(self))
        proc = self.cli("stop", "impl-a", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "stopped impl-aaaaaa\n")
        self.assertIn(["rm", "--force", "claude-bottle-impl-aaaaaa", "claude-bottle-impl-aaaaaa-pipelock"],
                      self.fake.argvs())

    def test_stop_signals_a_live_owner(self):
        owner = live_process(self)
        rules = session_rules("impl-aaaaaa", proven(self, owner.pid))
        proc = self.cli("stop", "impl-aaaaaa", env=self.env(rules + [{"match": ["ps", "--all", "--quiet"]}]))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(owner.wait(timeout=10), -15, "the owner gets SIGTERM, as on a normal interrupt")

    def test_stop_never_signals_a_process_it_cannot_prove_is_the_owner(self):
        for why, labels in (("a reused pid: another start time", lambda p: proven(self, p, start="boot/1")),
                            ("no secret in the owner's dir",
                             lambda p: {**proven(self, p), "owner-dir": "/nonexistent"}),
                            ("a wrong secret", lambda p: {**proven(self, p), "owner-proof": cb.proof_of("other")}),
                            ("an older claude-bottle's label, host:pid only", lambda p: f"{HOST}:{p}")):
            with self.subTest(why=why):
                bystander = live_process(self)
                rules = session_rules("impl-aaaaaa", labels(bystander.pid))
                proc = self.cli("stop", "impl-aaaaaa", env=self.env(rules))
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertIsNone(bystander.poll(), "a process that is not the proven owner is never signalled")
                self.assertIn(["rm", "--force", "claude-bottle-impl-aaaaaa", "claude-bottle-impl-aaaaaa-pipelock"],
                              self.fake.argvs(), "stop tears the session down itself instead")

    def test_unknown_or_missing_session(self):
        self.assertOneLineError(self.cli("stop", "nope"), 2, "matches no session")
        self.assertOneLineError(self.cli("stop"), 2, "--all")

    def test_stop_all(self):
        rules = merge(session_rules("impl-aaaaaa", gone_owner(self)),
                      session_rules("impl-bbbbbb", gone_owner(self)))
        proc = self.cli("stop", "--all", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(sorted(proc.stdout.splitlines()), ["stopped impl-aaaaaa", "stopped impl-bbbbbb"])


class Logs(CliTest):
    EVENTS = [
        {"level": "info", "event": "startup", "time": "2026-11-27T08:00:00Z", "message": "listening"},
        {"event": "tunnel_open", "target": "web:443", "time": "2026-11-27T08:00:01Z"},
        {"event": "blocked", "method": "CONNECT", "target": "evil.example:443", "scanner": "allowlist",
         "reason": "domain not in allowlist: evil.example", "time": "2026-11-27T08:00:02Z"},
    ]

    def test_renders_decisions(self):
        logs = {"match": ["logs"], "stdout": "banner\n" + "".join(json.dumps(e) + "\n" for e in self.EVENTS)}
        rules = session_rules("impl-aaaaaa", "elsewhere:1") + [logs]
        proc = self.cli("logs", "impl-aaaaaa", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("08:00:01 allowed  CONNECT web:443", proc.stdout)
        self.assertIn("08:00:02 blocked  CONNECT evil.example:443  (allowlist: domain not in allowlist: "
                      "evil.example)", proc.stdout)
        self.assertNotIn("banner", proc.stdout)
        self.assertIn(["logs", "claude-bottle-impl-aaaaaa-pipelock"], self.fake.argvs())
        proc = self.cli("logs", "impl-aaaaaa", "--json", "-f", env=self.env(rules))
        self.assertEqual([json.loads(line) for line in proc.stdout.splitlines()], self.EVENTS)
        self.assertIn(["logs", "--follow", "claude-bottle-impl-aaaaaa-pipelock"], self.fake.argvs())

    def test_a_dlp_refused_url_is_never_printed_whole(self):
        secret = "ghp_" + "0123456789abcdefghijklmnopqrstuvwxyZ"
        event = {"level": "warn", "event": "blocked", "method": "GET", "url": f"http://web:8000/p?k={secret}",
                 "scanner": "core_dlp", "reason": "core DLP match: GitHub Token (critical)",
                 "time": "2026-11-27T08:00:03Z"}
        rules = session_rules("impl-aaaaaa", "elsewhere:1") + [{"match": ["logs"], "stdout": json.dumps(event) + "\n"}]
        for args in ((), ("--json",)):
            with self.subTest(args=args):
                proc = self.cli("logs", "impl-aaaaaa", *args, env=self.env(rules))
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertNotIn(secret, proc.stdout)
                self.assertIn("http://web:8000/[withheld]", proc.stdout)


class Install(CliTest):
    def test_runs_apt_get_as_root_in_the_agent_container_of_an_own_session(self):
        rules = session_rules("impl-aaaaaa", live_owner(self))
        proc = self.cli("install", "impl-a", "jq", "hello=2.10-3", "libc6-dev", "g++", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("installed jq hello=2.10-3 libc6-dev g++ in session impl-aaaaaa", proc.stderr)
        [argv] = [a for a in self.fake.argvs() if a[0] == "exec"]
        self.assertEqual(argv[:8], ["exec", "--user", "0:0", "--workdir", "/", "--env",
                                    "DEBIAN_FRONTEND=noninteractive", "claude-bottle-impl-aaaaaa"])
        # The packages are arguments of the script, never part of its text.
        self.assertEqual(argv[8:10], ["sh", "-c"])
        self.assertNotIn("jq", argv[10])
        self.assertEqual(argv[11:], ["claude-bottle-install", "jq", "hello=2.10-3", "libc6-dev", "g++"])
        script = argv[10]
        out = subprocess.run(["sh", "-c", script.replace("apt-get", "echo"), "x", "a b", "c"], capture_output=True,
                             text=True, env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(out.stdout.splitlines()[-1], "install -y -q --no-install-recommends a b c")

    def test_refuses_what_is_no_package_name_before_any_docker_call(self):
        for bad in ("-oAPT::Get::Foo=1", "Jq", "jq;id", "jq bash", "../x.deb", "x", "jq=", "jq=abc", "jq/bookworm",
                    "jq=1.0 ", "*", "jq\nbash", "é"):
            with self.subTest(bad=bad):
                proc = self.cli("install", "impl-aaaaaa", bad)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertEqual(self.fake.argvs(), [])

    def test_only_into_a_session_of_ones_own(self):
        for why, owner in (("owner gone", gone_owner(self)), ("another host", "elsewhere:1"),
                           ("a wrong secret", {**live_owner(self), "owner-proof": cb.proof_of("other")})):
            with self.subTest(why=why):
                proc = self.cli("install", "impl-aaaaaa", "jq", env=self.env(session_rules("impl-aaaaaa", owner)))
                self.assertOneLineError(proc, 2, "not a running session of yours")
                self.assertFalse([a for a in self.fake.argvs() if a[0] == "exec"])

    def test_agent_not_running(self):
        rules = session_rules("impl-aaaaaa", live_owner(self), state="exited")
        self.assertOneLineError(self.cli("install", "impl-aaaaaa", "jq", env=self.env(rules)), 1,
                                "no running agent container")

    def test_no_apt_get_and_apt_get_failing(self):
        owner = live_owner(self)
        for rc, needle in ((127, "has no apt-get"), (100, "claude-bottle allow impl-aaaaaa @debian")):
            with self.subTest(rc=rc):
                rules = session_rules("impl-aaaaaa", owner) + [{"match": ["exec"], "rc": rc}]
                self.assertOneLineError(self.cli("install", "impl-aaaaaa", "jq", env=self.env(rules)), 1, needle)


class Doctor(CliTest):
    def test_all_pass(self):
        self.write_config('[agents.x]\nimage = "example.test/agent:1"\n'
                          '[bottles.default]\n[[bottles.default.ssh]]\nHost = "gh"\nHostname = "github.com"\n')
        rules = [{"match": ["version"], "stdout": "27.3.1\n"}]
        with socket.socket(socket.AF_UNIX) as agent:
            path = str(self.fake.tmpdir / "agent.sock")
            agent.bind(path)
            agent.listen(1)
            proc = self.cli("doctor", env=self.env(rules, SSH_AUTH_SOCK=path, ANTHROPIC_API_KEY="sk-ant-api03-DOCTOR"))
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("ok    login: brokered: ANTHROPIC_API_KEY from your environment", proc.stdout)
        self.assertIn("internal networks do not forward outside DNS", proc.stdout)
        self.assertIn("ok    ssh, socat and git in the agent image", proc.stdout)
        self.assertIn("all checks pass", proc.stdout)
        probe = next(a for a in self.fake.argvs() if a[0] == "run")
        self.assertEqual(probe[:4], ["run", "--rm", "--network", "none"], "the probe container has no network")

    def test_no_login_is_a_failure_that_names_the_fix(self):
        proc = self.cli("doctor", env=self.env([{"match": ["version"], "stdout": "27.3.1\n"}]))
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f"FAIL  login: {cb.LOGIN_NONE}", proc.stdout)

    def test_failures_exit_1_with_a_fix(self):
        rules = [{"match": ["version"], "stdout": "20.10.24\n"},
                 {"match": ["image", "inspect"], "rc": 1, "stderr": "Error: No such image\n"}]
        proc = self.cli("doctor", env=self.env(rules))
        self.assertEqual(proc.returncode, 1)
        self.assertIn("CVE-2024-29018", proc.stdout)
        self.assertRegex(proc.stdout, r"FAIL  pipelock image: \S+ missing; `docker pull ")
        self.assertRegex(proc.stdout.splitlines()[-1], r"^claude-bottle doctor: \d+ check\(s\) failed$")

    def test_no_daemon(self):
        rules = [{"match": ["version"], "rc": 1, "stderr": "Error response from daemon: nope\n"}]
        proc = self.cli("doctor", env=self.env(rules))
        self.assertEqual(proc.returncode, 1)
        self.assertIn("FAIL  docker daemon: does not answer", proc.stdout)

    def test_no_docker(self):
        env = self.env()
        env["PATH"] = str(self.project)
        proc = subprocess.run([sys.executable, str(CLI), "doctor"], cwd=self.project, env=env,
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("FAIL  docker CLI: not found", proc.stdout)


if __name__ == "__main__":
    unittest.main()
