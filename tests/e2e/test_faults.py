"""End to end, when parts fail (PRD 0010): an agent past its memory limit is killed inside its bottle while another
session keeps answering; a sidecar killed under a running agent ends the session with one line; a full TMPDIR gives
one line and leaves nothing; an engine restart (the second engine of remote.py) ends the session with one line, and
`gc` then leaves only the agent's state volume. The numbers (latency, time to the CLI's word) are printed, never
asserted."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from tests.e2e import remote
from tests.e2e.harness import CLI, READY_ECHO, E2ETest, docker, leftovers, module_fixtures, session_of, wait_ready

world = None
setUpModule, tearDownModule = module_fixtures(globals())

# The peer agent's loop: one request to `web` through pipelock every 0.2 s, its time in ms on a line of its own.
PEER = (f"echo {READY_ECHO}; while :; do s=$(date +%s%N); curl -s -o /dev/null -w '%{{http_code}}' "
        f"http://web:8000/ > /tmp/code; e=$(date +%s%N); echo LAT $(( (e - s) / 1000000 )) $(cat /tmp/code); "
        f"sleep 0.2; done")


def summary(samples) -> str:
    if not samples:
        return "no samples"
    return f"{len(samples)} requests, median {statistics.median(samples):.0f} ms, max {max(samples):.0f} ms"


class Faults(E2ETest):
    def test_an_agent_past_its_memory_is_killed_while_another_session_answers(self):
        peer_project = world.project(world.config())
        peer = world.popen(peer_project, PEER)
        session_of(peer.stdout.readline())
        wait_ready(peer)
        samples, codes, lock = [], [], threading.Lock()

        def read():
            for line in peer.stdout:
                if line.startswith("LAT "):
                    _, ms, code = line.split()
                    with lock:
                        samples.append((time.monotonic(), int(ms)))
                        codes.append(code)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while len(samples) < 10:
            time.sleep(0.1)
        before = len(samples)
        # `tail` keeps a line that never ends: /dev/zero fills its buffer until the kernel stops it.
        hog_project = world.project(world.config(memory="64m"))
        started = time.monotonic()
        hog = world.start(hog_project, "tail /dev/zero", timeout=240)
        ended = time.monotonic()
        time.sleep(2)
        with lock:
            during = [ms for t, ms in samples if started <= t <= ended]
            after = len(samples)
            seen = list(codes)
        print(f"\n[faults] the peer session's requests before: {summary([ms for _, ms in samples[:before]])}; "
              f"while the 64 MiB agent ran and was killed ({ended - started:.1f} s): {summary(during)}")
        self.assertEqual(hog.returncode, 137, hog.stderr)
        last = hog.stderr.strip().splitlines()[-1]
        self.assertIn("claude-bottle: the agent was killed for memory: it reached its limit of 64 MiB (exit status "
                      "137); to give it more, set memory = \"128m\" in", last)
        self.assertNoLeftovers(session_of(hog.stdout))
        self.assertIsNone(peer.poll(), "the peer session still runs")
        self.assertGreater(after, before, "the peer session answered while the other agent was killed")
        self.assertEqual(set(seen), {"200"}, "every request of the peer went through")
        peer.terminate()
        self.assertEqual(peer.wait(timeout=60), 143)

    def test_a_killed_sidecar_ends_the_session_with_one_line(self):
        project = world.project(world.config())
        # The agent tries the outside directly all along: with its sidecar gone it must still reach nothing.
        script = (f"echo {READY_ECHO}; while :; do curl --noproxy '*' -s -m 1 -o /dev/null "
                  f"http://{world.web_ip}:8000/ && echo REACHED-DIRECTLY; sleep 0.1; done")
        proc = world.popen(project, script)
        session = session_of(proc.stdout.readline())
        wait_ready(proc)
        lines, err_at = [], []

        def read_err():
            for line in proc.stderr:
                lines.append(line)
                if "claude-bottle: error:" in line:
                    err_at.append(time.monotonic())

        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        killed = time.monotonic()
        docker("kill", f"claude-bottle-{session}-pipelock")
        out = proc.stdout.read()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        print(f"\n[faults] from `docker kill` of the sidecar to the CLI's word: {err_at[0] - killed:.2f} s "
              f"(its exit: {time.monotonic() - killed:.2f} s after)" if err_at else "\n[faults] no error line")
        self.assertEqual(proc.returncode, 1, "".join(lines))
        errors = [ln for ln in lines if ln.startswith("claude-bottle: error:")]
        self.assertEqual(len(errors), 1, "".join(lines))
        self.assertIn(f"the pipelock sidecar claude-bottle-{session}-pipelock stopped (exit status 137) while the "
                      f"agent ran; it was the agent's only way out, so the session was ended", errors[0])
        self.assertNotIn("REACHED-DIRECTLY", out)
        self.assertNoLeftovers(session)

    def test_a_full_tmpdir_gives_one_line_and_leaves_nothing(self):
        tmp = tempfile.mkdtemp(prefix="cbtest-full-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", tmp], check=True)
        self.addCleanup(os.rmdir, tmp)
        self.addCleanup(subprocess.run, ["umount", tmp], check=True)
        # One page left: Python's check that TMPDIR is writable passes, the session's files do not fit.
        with open(os.path.join(tmp, "fill"), "wb") as f:
            f.write(b"\0" * (60 << 10))
        project = world.project(world.config())
        proc = world.start(project, "echo AGENT''-RAN", env=world.env(TMPDIR=tmp))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn(f"claude-bottle: error: the session's private files could not be written in {tmp}/claude-bottle-"
                      f"{os.getuid()} (No space left on device); nothing was started", lines[0])
        self.assertNotIn("AGENT-RAN", proc.stdout)
        self.assertEqual(leftovers(session_of(proc.stdout)), [])
        self.assertEqual(os.listdir(os.path.join(tmp, f"claude-bottle-{os.getuid()}")), [])


class EngineRestart(unittest.TestCase):
    """On the second engine (tests/e2e/remote.py), which a test may restart: this machine's engine is shared."""

    def test_an_engine_restart_ends_the_session_with_one_line_and_gc_leaves_only_the_state(self):
        tags = remote.require_remote()
        with remote.start_or_skip() as engine:
            engine.load([tags["debian"], tags["pipelock"]])
            project = tempfile.mkdtemp(prefix="cbtest-restart-")
            self.addCleanup(shutil.rmtree, project, True)
            # Clone mode and copied files: nothing of this machine's is bind-mounted on the other engine.
            subprocess.run("git init -q && echo x > a && git add a && git -c user.name=t -c user.email=t@t.test "
                           "commit -qm x", shell=True, cwd=project, check=True)
            Path(project, "claude-bottle.toml").write_text(f'[agents.e2e]\nimage = "{tags["debian"]}"\n')
            env = {**engine.env_tcp(), "CLAUDE_BOTTLE_FILES": "copy", "CLAUDE_BOTTLE_PIPELOCK_IMAGE": tags["pipelock"],
                   "XDG_CACHE_HOME": os.path.join(project, ".cache")}
            proc = subprocess.Popen([sys.executable, str(CLI), "start", "e2e", "--yes", "--clone", "--", "sh", "-c",
                                     f"echo {READY_ECHO}; sleep 300"], cwd=project, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            try:
                session = session_of(proc.stdout.readline())
                wait_ready(proc)
                restarted = time.monotonic()
                engine.restart_engine()
                out, err = proc.communicate(timeout=120)
            finally:
                proc.kill()
            print(f"\n[faults] engine restart to the CLI's exit: {time.monotonic() - restarted:.1f} s")
            self.assertEqual(proc.returncode, 1, err)
            errors = [ln for ln in err.splitlines() if ln.startswith("claude-bottle: error:")]
            self.assertEqual(len(errors), 1, err)
            self.assertIn("the engine stopped answering while the agent ran (restarted or stopped?), so the session "
                          "was ended", errors[0])
            self.assertTrue(err.rstrip().endswith("(the agent's state volume stays)"), err)
            left = engine.docker("ps", "--all", "--quiet", "--filter", f"label=claude-bottle.session={session}")
            self.assertNotEqual(left.stdout.split(), [], "the restart left the session's containers to gc")
            gc = subprocess.run([sys.executable, str(CLI), "gc"], cwd=project, env=env, capture_output=True,
                                text=True, timeout=120)
            self.assertEqual(gc.returncode, 0, gc.stderr)
            self.assertIn(f"removed {session}", gc.stdout)
            for argv in (["ps", "--all"], ["network", "ls"], ["volume", "ls"]):
                names = engine.docker(*argv, "--format", "{{.Names}}" if argv[0] == "ps" else "{{.Name}}").stdout
                self.assertEqual([n for n in names.split() if session in n], [], f"{argv}: {names}")
            volumes = engine.docker("volume", "ls", "--format", "{{.Name}}").stdout.split()
            self.assertEqual(len([v for v in volumes if v.startswith("claude-bottle-state-e2e-")]), 1,
                             "the agent's state volume survives")
