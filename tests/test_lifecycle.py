"""The lifecycle's parts on their own, in this process: Teardown, the step runner, signals, the owner check,
the ssh-agent relay and the `.git/commondir` guards. No docker: each test's engine is a DockerEngine that records
the commands it would run (Recorder) and answers them from a table.
"""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from tests import guard

cb = guard.cb
setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule


class Recorder(cb.DockerEngine):
    """A DockerEngine that records argv instead of running docker, and answers from `answers` (argv prefix ->
    (rc, stderr) or an exception)."""

    def __init__(self, answers=()):
        super().__init__(cb.Context({}))
        self.calls, self.answers = [], list(answers)
        self.answered = True

    def call(self, argv, *, check=True, input=None, capture=True, timeout=None, input_stream=None, binary=False):
        self.calls.append(list(argv))
        for prefix, answer in self.answers:
            if list(argv[:len(prefix)]) == prefix:
                if isinstance(answer, BaseException):
                    raise answer
                rc, err = answer
                if check and rc:
                    raise self.error(["docker", *argv], rc, err)
                return cb.Completed(rc, "", err)
        return cb.Completed(0, "", "")

    def popen(self, argv, **kwargs):
        self.calls.append(list(argv))
        return cb._Exited()


class SeamTest(unittest.TestCase):
    def use(self, recorder: Recorder) -> Recorder:
        self.engine = recorder
        return recorder


def timeout_error(*argv):
    return cb.EngineTimeout(["docker", *argv], 30)


# ---- Teardown ----

class TeardownTest(SeamTest):
    def test_reverse_order_one_call_per_kind(self):
        docker = self.use(Recorder())
        order = []
        with cb.Teardown(docker) as td:
            td.callback(order.append, "files")
            td.network("n-internal")
            td.network("n-egress")
            td.container("c-sidecar")
            td.container("c-agent")
            td.callback(lambda: order.append(("report", list(docker.calls))))
        self.assertEqual(order, [("report", []), "files"], "the report runs first, the files go last")
        self.assertEqual(docker.calls, [["rm", "--force", "c-agent", "c-sidecar"],
                                        ["network", "rm", "n-egress", "n-internal"]])

    def test_a_failing_step_never_skips_the_rest(self):
        docker = self.use(Recorder([(["rm"], (1, "Error response from daemon: boom")),
                                    (["network", "rm"], (1, "Error: network x not found"))]))
        done = []

        def broken():
            raise OSError("disk full")

        stderr = io.StringIO()
        with mock.patch.object(sys, "stderr", stderr):
            with cb.Teardown(docker) as td:
                td.callback(done.append, "last")
                td.network("n")
                td.container("c")
                td.callback(broken)
        self.assertEqual([c[:2] for c in docker.calls], [["rm", "--force"], ["network", "rm"]])
        self.assertEqual(done, ["last"])
        self.assertIn("could not remove container c: Error response from daemon: boom", stderr.getvalue())
        self.assertIn("teardown step broken failed: disk full", stderr.getvalue())
        self.assertNotIn("network", stderr.getvalue(), "a network already gone counts as removed")

    def test_closed_stderr_never_skips_an_undo_step(self):
        class Closed(io.StringIO):
            def write(self, text):
                raise BrokenPipeError(32, "Broken pipe")

        docker = self.use(Recorder([(["rm"], (1, "Error response from daemon: boom"))]))
        done = []
        docker.ctx.verbose = True
        with mock.patch.object(sys, "stderr", Closed()):
            with cb.Teardown(docker) as td:
                td.callback(done.append, "files")
                td.network("n")
                td.container("c")
                td.callback(cb.warn, "a print in the report")
        self.assertEqual([c[:2] for c in docker.calls], [["rm", "--force"], ["network", "rm"]])
        self.assertEqual(done, ["files"])

    def test_removing_what_a_failed_create_never_made_is_quiet(self):
        """The `network ... not found` seen with 20 starts at once: a network create failed (address pools used up),
        and teardown's `docker network rm A B` said B was not found, plus the CLI's own `exit status 1` line."""
        verbatim = ("Error response from daemon: network claude-bottle-f-4d41bf-internal not found\n"
                    "exit status 1\n")
        self.assertTrue(cb._only_missing(verbatim))
        self.assertTrue(cb._only_missing("Error response from daemon: No such container: c1\n"))
        self.assertFalse(cb._only_missing(verbatim + "Error response from daemon: error while removing network: "
                                                     "network n has active endpoints\n"))
        docker = self.use(Recorder([(["network", "rm"], (1, verbatim))]))
        stderr = io.StringIO()
        with mock.patch.object(sys, "stderr", stderr):
            with cb.Teardown(docker) as td:
                td.network("claude-bottle-f-4d41bf-internal")
                td.network("claude-bottle-f-4d41bf-egress")
        self.assertEqual(stderr.getvalue(), "")

    def test_a_hung_engine_ends_teardown_with_what_may_be_left(self):
        docker = self.use(Recorder([(["rm"], timeout_error("rm"))]))
        done = []
        stderr = io.StringIO()
        with mock.patch.object(sys, "stderr", stderr):
            with cb.Teardown(docker) as td:
                td.callback(done.append, "files")
                td.network("n1")
                td.container("c1")
        self.assertEqual(docker.calls, [["rm", "--force", "c1"]], "no more calls to an engine that does not answer")
        self.assertEqual(done, ["files"], "local steps still run")
        self.assertEqual(td.left, ["c1", "n1"])
        self.assertIn("may be left: c1, n1", stderr.getvalue())
        self.assertIn("`claude-bottle gc` removes them", stderr.getvalue())

    def test_signals_during_teardown_are_only_noted(self):
        """Ctrl-C three times while teardown runs: every step still runs (the handler raises nothing)."""
        docker = self.use(Recorder())
        old = signal.signal(signal.SIGINT, docker.ctx.note_signal)
        self.addCleanup(signal.signal, signal.SIGINT, old)
        done = []

        def interrupted_step(name):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, in this (the main) thread
            done.append(name)

        with cb.Teardown(docker) as td:
            td.callback(interrupted_step, "third")
            td.callback(interrupted_step, "second")
            td.callback(interrupted_step, "first")
        self.assertEqual(done, ["first", "second", "third"])
        self.assertEqual(docker.ctx.signalled, signal.SIGINT, "the first signal is kept for the exit status")

    def test_uncertain_create_is_swept_by_label(self):
        found = [{"session": "s1", "containers": [{"name": "late-sidecar"}], "networks": [{"name": "late-net"}]}]
        docker = self.use(Recorder())
        with mock.patch.object(cb, "find_sessions", lambda engine, session: found if session == "s1" else []):
            with cb.Teardown(docker) as td:
                td.uncertain = "s1"
        self.assertEqual(docker.calls, [["rm", "--force", "late-sidecar"], ["network", "rm", "late-net"]])


# ---- The step runner ----

def step(name, fn, after=(), **kw):
    return cb.Step(name, after=after, action=lambda run: fn(run), **kw)


class RunnerTest(SeamTest):
    def new_run(self):
        td = cb.Teardown(self.use(Recorder()))
        plan = mock.Mock(session="s1")
        return cb.Run(plan, td), td

    def test_results_are_values_and_after_is_respected(self):
        run, td = self.new_run()
        results = cb.run_steps([
            step("a", lambda r: 1),
            step("b", lambda r: r.results.a + 1, after=("a",)),
            step("c", lambda r: r.results.a + r.results.b, after=("a", "b")),
        ], run)
        self.assertEqual((results.a, results.b, results.c), (1, 2, 3))

    def test_undo_is_pushed_before_the_step_runs(self):
        run, td = self.new_run()
        seen = []
        cb.run_steps([step("x", lambda r: seen.append(list(r.td.steps)), undo=(("container", "ctr"),))], run)
        self.assertEqual(seen, [[("container", "ctr")]])

    def test_a_failure_starts_nothing_new_and_waits_for_what_runs(self):
        run, td = self.new_run()
        finished = {}

        def slow(r):
            time.sleep(0.5)
            finished["slow"] = time.monotonic()

        def fail(r):
            raise cb.BottleError("create failed")

        never = []
        with self.assertRaises(cb.BottleError):
            cb.run_steps([step("slow", slow), step("fail", fail), step("later", never.append, after=("fail",)),
                          step("after-slow", never.append, after=("slow",))], run)
        raised = time.monotonic()
        self.assertIn("slow", finished, "run_steps returned while a step was still running")
        self.assertLess(finished["slow"], raised)
        self.assertEqual(never, [], "nothing starts after a failure")

    def test_a_signal_waits_for_the_running_call_then_unwinds(self):
        run, td = self.new_run()
        log = []

        def slow_create(r):
            r.ctx.note_signal(signal.SIGTERM, None)  # arrives while the create is in flight
            time.sleep(0.3)
            log.append("created")

        with self.assertRaises(cb.Interrupted) as caught:
            cb.run_steps([step("create", slow_create, undo=(("container", "c"),)),
                          step("next", lambda r: log.append("next"), after=("create",))], run)
        self.assertEqual(caught.exception.signum, signal.SIGTERM)
        self.assertEqual(log, ["created"], "the create in flight finished; nothing after it started")
        self.assertEqual(td.steps, [("container", "c")], "its undo is on the stack for teardown")

    def test_repeating_steps_stop_when_the_start_is_abandoned(self):
        run, td = self.new_run()
        tries = []

        def poll(r):
            while True:
                tries.append(1)
                r.pause(0.02)

        def fail(r):
            time.sleep(0.1)
            raise cb.BottleError("sidecar failed")

        with self.assertRaisesRegex(cb.BottleError, "sidecar failed"):
            cb.run_steps([step("poll", poll), step("fail", fail)], run)
        # run_steps returns only once every running step has ended: the poll stopped trying, it did not time out.
        self.assertTrue(tries)
        stopped = len(tries)
        time.sleep(0.1)
        self.assertEqual(len(tries), stopped, "the repeating step goes on after the start was abandoned")

    def test_a_timed_out_create_asks_teardown_to_look_again(self):
        run, td = self.new_run()

        def hung(r):
            raise timeout_error("run")

        with self.assertRaises(cb.EngineTimeout):
            cb.run_steps([step("sidecar", hung)], run)
        self.assertEqual(td.uncertain, "s1")

    def test_background_steps_are_joined_by_teardown(self):
        run, td = self.new_run()
        done = threading.Event()

        def background(r):
            time.sleep(0.2)
            done.set()

        cb.run_steps([step("bg", background, background=True), step("quick", lambda r: None)], run)
        self.assertFalse(done.is_set(), "the runner does not wait for a background step")
        td.run()
        self.assertTrue(done.is_set(), "teardown does")

    def test_the_dry_run_is_the_steps_run_against_a_recording_engine(self):
        """What the dry run prints is what the steps and the teardown ask of the engine, one step at a time in the
        list's order, answered as a new session's engine answers: nothing is written beside them."""
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        plan = cb.resolve_plan(cb.Config(), None, cwd=root, environ={"HOME": "/nonexistent"}, suffix="abcdef",
                               private_dir="/p")
        engine = self.use(Recorder([(["image", "inspect"], (1, "Error: No such image")),
                                    (["volume", "inspect"], (1, "Error: No such volume"))]))
        plan, sessions = cb.claim_workspace(plan, engine)
        with mock.patch.object(sys, "stderr", io.StringIO()), cb.Teardown(engine) as td:
            results = cb.run_steps(cb.start_steps(plan, engine, quiet=True, sessions=sessions), cb.Run(plan, td),
                                   workers=1)
            cb.oom_line(engine, plan, cb.wait_agent(results.start, engine.ctx))
        shown = [argv for argv, _ in cb.planned_commands(plan)]
        self.assertEqual(shown, engine.calls)
        self.assertEqual(shown[-4:], [["container", "inspect", "--format", "{{json .State}}", plan.agent_container],
                                      ["logs", plan.sidecar],
                                      ["rm", "--force", plan.agent_container, plan.sidecar, plan.state_init],
                                      ["network", "rm", plan.egress, plan.internal_network]])


# ---- The owner check ----

class OwnerTest(unittest.TestCase):
    def record(self, pid, secret="s3cret", start=None, host=None):
        d = tempfile.mkdtemp(prefix="cb-owner-")
        self.addCleanup(shutil.rmtree, d, True)
        Path(d, cb.OWNER_SECRET).write_text(secret)
        return {"owner": f"{host or cb.hostname()}:{pid}",
                "owner-start": cb.process_start(pid) if start is None else start,
                "owner-proof": cb.proof_of(secret), "owner-dir": d}

    def process(self, argv=("sleep", "60")) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv))
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def test_alive_needs_pid_start_time_and_secret(self):
        # A renamed program: nothing in its command line says claude.
        proc = self.process(("sleep", "60"))
        self.assertEqual(cb.owner_state(self.record(proc.pid)), "alive")
        self.assertEqual(cb.owner_state(self.record(os.getpid())), "alive")

    def test_gone(self):
        dead = subprocess.Popen(["true"])
        dead.wait()
        self.assertEqual(cb.owner_state(self.record(dead.pid, start="boot/1")), "gone")

    def test_a_reused_pid_is_gone(self):
        # The recorded start time is another process's: the pid now belongs to someone else.
        proc = self.process()
        self.assertEqual(cb.owner_state(self.record(proc.pid, start="boot/1")), "gone")
        real = cb.process_start(proc.pid)
        self.assertEqual(cb.owner_state(self.record(proc.pid, start=real.replace("/", "/9"))), "gone")

    def test_unknown_is_never_alive_nor_gone(self):
        proc = self.process()
        cases = {
            "another host": self.record(proc.pid, host="elsewhere.example"),
            "no start time recorded (an older claude-bottle)": {**self.record(proc.pid), "owner-start": ""},
            "no secret": {**self.record(proc.pid), "owner-dir": "/nonexistent"},
            "a wrong secret": {**self.record(proc.pid), "owner-proof": cb.proof_of("other")},
            "no owner label": {"owner": "", "owner-start": "", "owner-proof": "", "owner-dir": ""},
        }
        for why, record in cases.items():
            with self.subTest(why=why):
                self.assertEqual(cb.owner_state(record), "unknown")
        with mock.patch.object(cb, "process_start", lambda pid: ""):
            self.assertEqual(cb.owner_state(self.record(proc.pid, start="x/1")), "unknown",
                             "a start time that cannot be read is unknown")

    @unittest.skipUnless(shutil.which("ps"), "no ps here (apt-get install procps)")
    def test_start_time_without_proc(self):
        """No /proc (macOS, BSD): `ps -o lstart=` tells the start; no ps either: unknown, not gone."""
        proc = self.process()
        token = cb.process_start(proc.pid, proc="/nonexistent")
        self.assertTrue(token.startswith("ps/"), token)
        self.assertEqual(token, cb.process_start(proc.pid, proc="/nonexistent"))
        dead = subprocess.Popen(["true"])
        dead.wait()
        self.assertIsNone(cb.process_start(dead.pid, proc="/nonexistent"))
        with mock.patch.dict(os.environ, {"PATH": "/nonexistent"}):
            self.assertEqual(cb.process_start(proc.pid, proc="/nonexistent"), "")

    def test_start_tokens_tell_processes_apart(self):
        a, b = self.process(), self.process()
        self.assertNotEqual(cb.process_start(a.pid), cb.process_start(b.pid) + "x")
        self.assertEqual(cb.process_start(a.pid), cb.process_start(a.pid))

    def test_signal_owner_only_signals_the_proven_owner(self):
        bystander = self.process()
        self.assertFalse(cb.signal_owner(self.record(bystander.pid, start="boot/1")))
        self.assertFalse(cb.signal_owner({**self.record(bystander.pid), "owner-proof": "0" * 32}))
        self.assertIsNone(bystander.poll())
        owner = self.process()
        self.assertTrue(cb.signal_owner(self.record(owner.pid)))
        self.assertEqual(owner.wait(timeout=10), -signal.SIGTERM)


# ---- The ssh-agent relay ----

class FakeAgent:
    """An ssh-agent that answers every message with SSH_AGENT_SUCCESS and remembers the types it saw."""

    def __init__(self, path):
        self.seen = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while True:
                    head = conn.recv(4)
                    if len(head) < 4:
                        break
                    body = conn.recv(int.from_bytes(head, "big"))
                    self.seen.append(body[0])
                    conn.sendall(b"\0\0\0\1\6")


class RelayTest(unittest.TestCase):
    def test_passes_list_and_sign_refuses_everything_else(self):
        d = tempfile.mkdtemp(prefix="cb-relay-")
        self.addCleanup(shutil.rmtree, d, True)
        agent = FakeAgent(os.path.join(d, "upstream.sock"))
        self.addCleanup(agent.sock.close)
        relay = cb.SshAgentRelay(os.path.join(d, "upstream.sock"), os.path.join(d, "relay.sock"))
        self.addCleanup(relay.close)
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(os.path.join(d, "relay.sock"))
            answers = {}
            # 11 list, 13 sign, 27 extension; 17/25 add, 18 remove, 19 remove all, 22 lock, 23 unlock,
            # 20/21 smartcard keys. The agent protocol has no way to export a private key.
            for kind in (11, 13, 27, 17, 25, 18, 19, 22, 23, 20, 21):
                c.sendall(b"\0\0\0\2" + bytes([kind, 0]))
                answers[kind] = c.recv(5)
        self.assertEqual(agent.seen, [11, 13, 27])
        for kind in (11, 13, 27):
            self.assertEqual(answers[kind], b"\0\0\0\1\6", kind)
        for kind in (17, 25, 18, 19, 22, 23, 20, 21):
            self.assertEqual(answers[kind], b"\0\0\0\1\5", f"message {kind} must be refused (SSH_AGENT_FAILURE)")


# ---- .git/commondir ----

class CommondirTest(unittest.TestCase):
    def setUp(self):
        self.ws = Path(tempfile.mkdtemp(prefix="cb-ws-")).resolve()
        self.addCleanup(shutil.rmtree, self.ws, True)
        (self.ws / ".git" / "hooks").mkdir(parents=True)

    def test_start_refuses_an_existing_commondir(self):
        (self.ws / ".git" / "commondir").write_text("/elsewhere\n")
        with self.assertRaisesRegex(cb.ConfigError, r"\.git/commondir exists"):
            cb.resolve_plan(cb.Config(), None, cwd=self.ws, environ={"HOME": "/nonexistent"}, suffix="abcdef")

    def test_teardown_moves_one_the_agent_wrote_out_of_the_way(self):
        plan = cb.resolve_plan(cb.Config(), None, cwd=self.ws, environ={"HOME": "/nonexistent"}, suffix="abcdef")
        (self.ws / ".git" / "commondir").write_text("/elsewhere\n")
        with mock.patch.object(sys, "stderr", io.StringIO()):
            cb.quarantine_commondir(plan)
        self.assertFalse(os.path.lexists(self.ws / ".git" / "commondir"))
        self.assertEqual((self.ws / ".git" / f"commondir.claude-bottle-{plan.session}").read_text(), "/elsewhere\n")


if __name__ == "__main__":
    unittest.main()


# ---- Subnets of the session's own ----

class SubnetTest(SeamTest):
    def plan(self, **environ):
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        return cb.resolve_plan(cb.Config(), None, cwd=root, environ={"HOME": "/nonexistent", **environ},
                               suffix="abcdef")

    def test_pool_validation(self):
        self.assertEqual(self.plan().subnet_pool, ("10.213.0.0/16",))
        self.assertEqual(self.plan(CLAUDE_BOTTLE_SUBNETS="10.9.0.0/20, 172.16.4.0/24").subnet_pool,
                         ("10.9.0.0/20", "172.16.4.0/24"))
        for bad in ("10.213.0.1/16", "10.213.0.0/29", "10.213.0.0", "300.1.1.0/24", "10.0.0.0/7", "abc",
                    "10.213.0.0/16,", "10.213.0.0/-1", "1e1.0.0.0/16", " /16"):
            with self.subTest(bad=bad), self.assertRaises(cb.ConfigError) as caught:
                self.plan(CLAUDE_BOTTLE_SUBNETS=bad)
            self.assertIn("CLAUDE_BOTTLE_SUBNETS", str(caught.exception))
            self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_candidates_are_aligned_28s_spread_over_the_pool(self):
        pool = ("10.9.0.0/20", "172.16.4.0/24")
        seen = set()
        for i in range(400):
            cidr = cb.subnet_candidate(pool, f"session-{i}/net", 0)
            addr, bits = cidr.split("/")
            self.assertEqual(bits, "28")
            n = cb._ipv4(addr)
            self.assertEqual(n % 16, 0, cidr)
            self.assertTrue(any(cb._overlaps(cidr, p) for p in pool), cidr)
            seen.add(cidr)
        self.assertGreater(len(seen), 200, "400 sessions must not crowd into a few subnets")
        self.assertIn(True, [c.startswith("172.16.4.") for c in seen], "every range of the pool is used")
        tries = {cb.subnet_candidate(pool, "s/n", a) for a in range(cb.SUBNET_TRIES)}
        self.assertGreater(len(tries), cb.SUBNET_TRIES // 2, "each retry tries another subnet")

    def test_overlap(self):
        self.assertTrue(cb._overlaps("10.213.0.16/28", "10.213.0.0/16"))
        self.assertTrue(cb._overlaps("10.213.0.0/16", "10.213.0.16/28"))
        self.assertFalse(cb._overlaps("10.213.0.16/28", "10.213.0.32/28"))
        self.assertTrue(cb._overlaps("10.213.0.16/28", "0.0.0.0/0"))

    def test_host_routes(self):
        table = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                 "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                 "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
                 "tun0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n")
        path = Path(tempfile.mkdtemp()) / "route"
        self.addCleanup(shutil.rmtree, path.parent)
        path.write_text(table)
        self.assertEqual(cb.host_routes(str(path)), ["192.0.2.0/24", "10.213.0.0/16"], "the default route is not one")
        self.assertEqual(cb.host_routes("/nonexistent"), [])

    def run_for(self, plan):
        return cb.Run(plan, cb.Teardown(self.engine))

    def test_create_network_tries_the_next_subnet_when_one_is_taken(self):
        plan = self.plan()
        taken = (1, "Error response from daemon: Pool overlaps with other one on this address space")
        docker = self.use(Recorder([(["network", "create"], taken)]))
        docker.answers = [(["network", "create", "--internal", "--opt", "com.docker.network.bridge.inhibit_ipv4=true",
                            "--subnet", cb.subnet_candidate(plan.subnet_pool, f"{plan.session}/n", a)], taken)
                          for a in (0, 1)]
        with mock.patch.object(cb, "host_routes", lambda: []):
            subnet = cb.create_network(self.run_for(plan), "n", True)
        self.assertEqual(subnet, cb.subnet_candidate(plan.subnet_pool, f"{plan.session}/n", 2))
        self.assertEqual(len(docker.calls), 3)

    def test_create_network_skips_subnets_the_host_routes(self):
        plan = self.plan()
        first = cb.subnet_candidate(plan.subnet_pool, f"{plan.session}/n", 0)
        docker = self.use(Recorder())
        with mock.patch.object(cb, "host_routes", lambda: [first]):
            subnet = cb.create_network(self.run_for(plan), "n", False)
        self.assertNotEqual(subnet, first)
        self.assertNotIn(first, [c[c.index("--subnet") + 1] for c in docker.calls])

    def test_no_free_subnet_says_why_and_what_to_do(self):
        plan = self.plan(CLAUDE_BOTTLE_SUBNETS="10.9.9.0/28")
        docker = self.use(Recorder([(["network", "create"], (1, "Error response from daemon: Pool overlaps with "
                                                                 "other one on this address space"))]))
        with mock.patch.object(cb, "host_routes", lambda: []), self.assertRaises(cb.BottleError) as caught:
            cb.create_network(self.run_for(plan), "n", True)
        message = str(caught.exception)
        for needle in ("no free /28", "CLAUDE_BOTTLE_SUBNETS=10.9.9.0/28", "claude-bottle gc"):
            self.assertIn(needle, message)
        self.assertEqual(len(docker.calls), cb.SUBNET_TRIES)

    def test_other_errors_are_not_retried(self):
        plan = self.plan()
        docker = self.use(Recorder([(["network", "create"], (1, "Error response from daemon: something else"))]))
        with mock.patch.object(cb, "host_routes", lambda: []), self.assertRaises(cb.EngineError):
            cb.create_network(self.run_for(plan), "n", True)
        self.assertEqual(len(docker.calls), 1)
