"""When parts fail (PRD 0010): resource limits (config, argv, the engine's capacity), an agent killed for memory, a
sidecar that stops under a running agent, and a disk with no room for the private files or a live change."""

import errno
import io
import json
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from tests import guard
from tests.guard import cb
from tests.test_cli import CliTest

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule


def plan_with(toml: str = "", agent=None, **kw) -> "cb.Plan":
    root = Path(tempfile.mkdtemp(prefix="cb-faults-"))
    config = cb.parse_config(cb.tomllib.loads(toml), str(root / "claude-bottle.toml")) if toml else cb.Config()
    kw.setdefault("private_dir", str(root / "private"))
    plan = cb.resolve_plan(config, agent, cwd=root, environ={"HOME": "/nonexistent"}, suffix="abcdef", **kw)
    shutil.rmtree(root)
    return plan


def values_after(argv, flag) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


class LimitsConfig(unittest.TestCase):
    def test_defaults_in_the_plan_and_the_argv(self):
        plan = plan_with()
        self.assertEqual(plan.limits, cb.Limits(4 << 30, 2.0, 1 << 30, 512 << 20, 1.0, 512, ()))
        engine = cb.DockerEngine(cb.Context({}))
        agent = engine.create_argv(cb.agent_spec(plan))
        self.assertEqual(values_after(agent, "--memory"), ["4g"])
        self.assertEqual(values_after(agent, "--memory-swap"), ["4g"], "no swap beyond the limit")
        self.assertEqual(values_after(agent, "--cpus"), ["2"])
        self.assertEqual(values_after(agent, "--pids-limit"), ["4096"])
        sidecar = engine.run_detached_argv(cb.sidecar_spec(plan))
        self.assertEqual(values_after(sidecar, "--memory"), ["512m"])
        self.assertEqual(values_after(sidecar, "--memory-swap"), ["512m"])
        self.assertEqual(values_after(sidecar, "--cpus"), ["1"])
        self.assertEqual(values_after(sidecar, "--pids-limit"), ["512"])
        self.assertIn("limits:     agent 4 GiB memory (no swap), 2 CPUs, 4096 pids, 1 GiB per tmpfs; pipelock "
                      "512 MiB, 1 CPU, 512 pids", "\n".join(cb.render_summary(plan)))

    def test_the_json_plan_has_them(self):
        plan = plan_with('[agents.a]\nimage = "x:1"\nmemory = "1g"\n', "a")
        limits = json.loads(json.dumps(cb.plan_json(plan)))["limits"]
        self.assertEqual((limits["memory"], limits["cpus"], limits["sidecar_pids"], limits["agent_pids"]),
                         (1 << 30, 2.0, 512, 4096))
        self.assertEqual(list(limits["set_by"]), ["memory"])

    def test_every_tmpfs_is_sized(self):
        plan = plan_with('[agents.a]\nimage = "x:1"\ntmpfs_size = "64m"\n', "a", uid=1234, gid=1235)
        ident = cb.agent_identity({"passwd": [], "group": [], "tools": [], "dirs": {}}, 1234, 1235)
        mounts = [m for m in cb.identity_mounts(plan, ident) if isinstance(m, cb.Mount) and m.kind == "tmpfs"]
        self.assertEqual(len(mounts), 2)
        for m in mounts:
            self.assertIn("size=64m", m.options.split(","))

    def test_agent_over_bottle_over_default(self):
        plan = plan_with('[bottles.b]\nmemory = "2g"\ncpus = 1.5\nsidecar_memory = "256m"\nsidecar_pids = 100\n'
                         '[agents.a]\nbottle = "b"\nmemory = "1g"\n', "a")
        self.assertEqual((plan.limits.memory, plan.limits.cpus, plan.limits.sidecar_memory, plan.limits.sidecar_pids,
                          plan.limits.tmpfs_size), (1 << 30, 1.5, 256 << 20, 100, 1 << 30))
        self.assertTrue(plan.limits.where("memory").endswith("[agents.a]"))
        self.assertTrue(plan.limits.where("cpus").endswith("[bottles.b]"))
        self.assertIsNone(plan.limits.where("tmpfs_size"))

    def test_bad_values_name_the_field_and_the_fix(self):
        for table, fragment in (
                ('[agents.a]\nmemory = "4q"\n', "memory: '4q' is not a size; write a number with k, m or g"),
                ('[agents.a]\nmemory = "1m"\n', "memory: '1m' is too small; give it at least 16 MiB"),
                ('[agents.a]\ncpus = 0\n', "cpus: 0 is not a number of CPUs; write e.g. 2 or 0.5"),
                ('[agents.a]\ncpus = "2"\n', "cpus: '2' is not a number of CPUs"),
                ('[agents.a]\ntmpfs_size = true\n', "tmpfs_size: True is not a size"),
                ('[bottles.default]\nsidecar_pids = 2\n', "sidecar_pids: 2 is not a whole number from 16"),
                ('[agents.a]\nsidecar_memory = "1g"\n', "unknown key 'sidecar_memory'"),
        ):
            with self.subTest(table=table), self.assertRaises(cb.ConfigError) as cm:
                cb.parse_config(cb.tomllib.loads(table), "claude-bottle.toml")
            self.assertIn(fragment, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_a_limit_above_the_engine_is_refused_a_default_lowered(self):
        plan = plan_with('[agents.a]\nimage = "x:1"\nmemory = "8g"\n', "a")
        with self.assertRaises(cb.ConfigError) as cm:
            cb.fit_limits(plan, (4, 6 << 30))
        self.assertRegex(str(cm.exception), r"\[agents\.a\] memory: 8 GiB is more than the engine has \(6 GiB\); "
                                            r'set it to "6144m" or less')
        plan = plan_with()
        with mock.patch.object(sys, "stderr", io.StringIO()) as err:
            fitted = cb.fit_limits(plan, (1, 3 << 30))
        self.assertEqual((fitted.limits.memory, fitted.limits.cpus, fitted.limits.sidecar_memory),
                         (3 << 30, 1.0, 512 << 20))
        self.assertIn("less than the default memory of 4 GiB; the bottle gets 3 GiB", err.getvalue())
        self.assertIs(cb.fit_limits(plan, None), plan, "an engine that does not say: the limits as they are")
        self.assertEqual(cb.fit_limits(plan, (2, 4 << 30)).limits, plan.limits, "exactly the engine's: fine")


class CliFaults(CliTest):
    def test_bad_limit_exits_2_before_any_docker_call(self):
        self.write_config('[agents.claude]\nmemory = "lots"\n')
        proc = self.cli("start", "--yes", "--", "true")
        self.assertOneLineError(proc, 2, "[agents.claude] memory", '"4g"')
        self.assertEqual(self.fake.calls(), [])

    def test_limit_above_the_engine_refused_nothing_created(self):
        self.write_config('[agents.claude]\nmemory = "2g"\n')
        rules = [{"match": ["info"], "stdout": f"2 {1 << 30}\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertOneLineError(proc, 2, "[agents.claude] memory: 2 GiB is more than the engine has (1 GiB)")
        self.assertEqual([a[0] for a in self.fake.argvs() if a[0] in ("create", "run") or a[:2] == ["network",
                                                                                                   "create"]], [])
        self.assertNoPrivateDir()

    def test_oom_killed_agent_one_line_exit_137_nothing_left(self):
        rules = [{"match": ["container", "inspect"], "contains": "{{json .State}}",
                  "stdout": json.dumps({"Status": "exited", "ExitCode": 137, "OOMKilled": True})}]
        proc = self.cli("start", "--yes", "--quiet", "--", "true", env=self.env(rules, start_rc=137))
        self.assertEqual(proc.returncode, 137, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        self.assertEqual(last, 'claude-bottle: the agent was killed for memory: it reached its limit of 4 GiB (exit '
                               'status 137); to give it more, set memory = "8g" in claude-bottle.toml: '
                               '[agents.claude]')
        sid = self.sid()
        inspect = self.fake.argvs().index(["container", "inspect", "--format", "{{json .State}}",
                                           f"claude-bottle-{sid}"])
        # The agent and its sidecar go in one call (with the state check's container when one was run).
        rm = next(i for i, a in enumerate(self.fake.argvs())
                  if a[:4] == ["rm", "--force", f"claude-bottle-{sid}", f"claude-bottle-{sid}-pipelock"])
        self.assertLess(inspect, rm, "asked before the container is removed")
        self.assertEqual(self.fake.argvs()[-1][:2], ["network", "rm"])
        self.assertNoPrivateDir()

    def test_137_without_oom_says_nothing_of_memory(self):
        proc = self.cli("start", "--yes", "--quiet", "--", "true", env=self.env(start_rc=137))
        self.assertEqual(proc.returncode, 137, proc.stderr)
        self.assertNotIn("memory", proc.stderr)

    def test_sidecar_stopping_ends_the_session_with_one_line(self):
        rules = [{"match": ["wait"], "stdout": "137\n", "delay": 1},
                 {"match": ["container", "inspect"], "contains": "-pipelock",
                  "stdout": json.dumps({"Status": "exited", "ExitCode": 137, "OOMKilled": False})}]
        # The agent runs until it is removed (no start_rc): only the sidecar's end can end this session.
        proc = self.cli("start", "--yes", "--quiet", "--", "sleep", "infinity", env=self.env(rules))
        sid = self.sid()
        self.assertOneLineError(proc, 1, f"the pipelock sidecar claude-bottle-{sid}-pipelock stopped (exit status "
                                         f"137) while the agent ran", "the session was ended",
                                "claude-bottle start claude")
        calls = self.fake.argvs()
        self.assertIn(["rm", "--force", f"claude-bottle-{sid}", f"claude-bottle-{sid}-pipelock"],
                      [a[:4] for a in calls])
        self.assertEqual(calls[-1][:2], ["network", "rm"])
        self.assertNoPrivateDir()

    def test_sidecar_killed_for_memory_names_its_limit(self):
        rules = [{"match": ["wait"], "stdout": "137\n", "delay": 1},
                 {"match": ["container", "inspect"], "contains": "-pipelock",
                  "stdout": json.dumps({"Status": "exited", "ExitCode": 137, "OOMKilled": True})}]
        proc = self.cli("start", "--yes", "--quiet", "--", "sleep", "infinity", env=self.env(rules))
        self.assertOneLineError(proc, 1, "was killed for memory at its limit of 512 MiB (to give it more, set "
                                         'sidecar_memory = "1g" in claude-bottle.toml: [bottles.default])')


    def test_an_engine_gone_under_the_agent_ends_with_one_line_and_asks_it_nothing_more(self):
        rules = [{"match": ["container", "inspect"], "rc": 1,
                  "stderr": 'error during connect: Get "http://127.0.0.1:1/v1.50/containers/x/json": EOF\n'}]
        proc = self.cli("start", "--yes", "--quiet", "--", "true", env=self.env(rules, start_rc=143))
        self.assertOneLineError(proc, 1, "the engine stopped answering while the agent ran (restarted or stopped?)",
                                "run `claude-bottle gc` once it answers again")
        calls = self.fake.argvs()
        after = calls[calls.index(next(c for c in calls if c[:2] == ["container", "inspect"])) + 1:]
        self.assertEqual([c for c in after if c[0] == "rm" or c[:2] == ["network", "rm"]], [],
                         "teardown leaves the rest to gc")
        self.assertNoPrivateDir()

    def test_a_sidecar_that_ended_with_the_agent_is_the_reason(self):
        # An engine restart stops both: the agent's end is not the agent's own.
        rules = [{"match": ["wait"], "stdout": "0\n"},
                 {"match": ["container", "inspect"], "contains": "-pipelock",
                  "stdout": json.dumps({"Status": "exited", "ExitCode": 0, "OOMKilled": False})}]
        proc = self.cli("start", "--yes", "--quiet", "--", "true", env=self.env(rules, start_rc=143))
        self.assertOneLineError(proc, 1, "stopped (exit status 0) while the agent ran")


class FullDisk(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cb-disk-"))
        self.addCleanup(shutil.rmtree, self.dir)

    def test_start_with_no_room_for_the_private_files(self):
        plan = plan_with(private_dir=str(self.dir / "claude-abcdef"))
        engine = cb.RecordingEngine()
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with mock.patch.object(cb, "write_private_files", side_effect=full), \
                self.assertRaises(cb.BottleError) as cm:
            cb.run_session(plan, engine, "secret")
        self.assertEqual(str(cm.exception), f"the session's private files could not be written in {self.dir} (No "
                                            f"space left on device); nothing was started: free some space there, or "
                                            f"set TMPDIR to a directory with room")
        self.assertEqual(engine.calls, [])
        self.assertEqual(list(self.dir.iterdir()), [], "the private dir is removed")

    def live_session(self):
        private = self.dir / "claude-abcdef"
        (private / "pipelock").mkdir(parents=True)
        config = private / "pipelock" / "pipelock.yaml"
        config.write_text("old config\n")
        return private, config

    def test_a_live_change_with_no_room_changes_nothing(self):
        private, config = self.live_session()
        engine = cb.RecordingEngine()
        real = cb.staged_write
        for fail_at in (1, 2):
            calls = []

            def staged(path, text, *a, **kw):
                calls.append(path)
                if len(calls) == fail_at:
                    # What a full disk does: the temp file exists, half written, when the write fails.
                    Path(path).with_name(".half.tmp").write_text(text[:3])
                    os.unlink(Path(path).with_name(".half.tmp"))
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return real(path, text, *a, **kw)

            with self.subTest(fail_at=fail_at), mock.patch.object(cb, "staged_write", staged):
                with self.assertRaises(cb.BottleError) as cm:
                    cb.write_sidecar_config(engine, str(private), "claude-bottle-claude-abcdef-pipelock", "new\n")
                self.assertIn("the new config could not be written in", str(cm.exception))
                self.assertIn("(No space left on device); nothing was changed and session claude-abcdef allows "
                              "what it did before", str(cm.exception))
                self.assertEqual(config.read_text(), "old config\n")
                self.assertEqual(sorted(p.name for p in config.parent.iterdir()), ["pipelock.yaml"],
                                 "no temp file left beside it")
                self.assertEqual(engine.calls, [], "pipelock was never told")

    def test_the_old_config_comes_back_by_rename_when_pipelock_does_not_apply(self):
        private, config = self.live_session()
        engine = cb.RecordingEngine()
        seen = []
        refused = cb.ReloadWait("hash")
        refused.state = "refused"
        with mock.patch.object(cb, "wait_reload", lambda *a: seen.append(config.read_text()) or refused):
            wait = cb.write_sidecar_config(engine, str(private), "sidecar", "new\n")
        self.assertEqual((wait.state, seen, config.read_text()), ("refused", ["new\n"], "old config\n"))
        self.assertEqual(sorted(p.name for p in config.parent.iterdir()), ["pipelock.yaml"])


if __name__ == "__main__":
    unittest.main()
