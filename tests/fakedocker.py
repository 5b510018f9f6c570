"""A fake `docker` for unit tests: put first on PATH, it records every call and answers from rules.

Each call appends one JSON line to $FAKE_DOCKER_LOG: argv (without "docker"), the number of stdin
bytes, and the values of the variables named by `--env NAME` as docker would read them. Rules in
$FAKE_DOCKER_RULES (JSON list) pick the answer for the first argv prefix that matches:
    {"match": ["exec"], "rc": 1, "stderr": "...", "stdout": "...", "times": 2, "contains": "text"}
`times` limits how often a rule fires; `contains` makes it fire only when the joined argv holds the
text. `start` without a rule blocks until the agent container is removed (`rm --force` records it),
as `docker start --attach` does, or, once the self-test opened a gated agent's gate (or without a
gate), exits with $FAKE_DOCKER_START_RC.
`wait` blocks until the container is removed; `container inspect` of `.State` answers "exited", 0, not
OOM-killed. `inspect` answers with an address on every network it saw created or named with `run --network`.
`run --rm` of the image probe answers as a Debian-like image would (PROBE), unless a rule answers.
A rule's `delay` makes the call take that many seconds; every call logs a second line, {"end": argv,
"t": time}, when it is about to exit, so a test can tell what was still running when.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = r'''
import json, os, sys, time
GATE_FILE = "/tmp/.claude-bottle-self-test-passed"
PROBE = """# passwd
root:x:0:0:root:/root:/bin/bash
claude:x:1000:1000::/home/claude:/bin/bash
# group
root:x:0:
claude:x:1000:
# tools
ssh
socat
git
curl
# dirs
/tmp\tdrwxrwxrwt 2 0 0 4096 Dec  2 00:00 /tmp
/home/claude\tdrwxr-xr-x 2 1000 1000 4096 Dec  2 00:00 /home/claude
/root\tdrwx------ 2 0 0 4096 Dec  2 00:00 /root"""
argv = sys.argv[1:]
state = os.environ["FAKE_DOCKER_STATE"]
stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
passed = {}
for i, a in enumerate(argv[:-1]):
    if a == "--env" and "=" not in argv[i + 1]:
        passed[argv[i + 1]] = os.environ.get(argv[i + 1])
def log(record):
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
log({"argv": argv, "stdin": len(stdin), "env": passed, "t": time.time()})
real_exit = sys.exit
def end(code=0):
    log({"end": argv, "t": time.time()})
    real_exit(code)
sys.exit = end
if argv[:2] == ["rm", "--force"]:
    for name in argv[2:]:
        open(os.path.join(state, "removed-" + name), "w").close()
networks = os.path.join(state, "networks")
seen = [argv[-1]] if argv[:2] == ["network", "create"] else []
seen += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--network" and argv[0] == "run"]
if seen:
    with open(networks, "a") as f:
        f.write("".join(n + "\n" for n in seen))
rules = json.loads(os.environ.get("FAKE_DOCKER_RULES", "[]"))
for n, rule in enumerate(rules):
    if argv[:len(rule["match"])] != rule["match"] or rule.get("contains", "") not in " ".join(argv):
        continue
    if "times" in rule:
        counter = os.path.join(state, "rule-%d" % n)
        used = int(open(counter).read()) if os.path.exists(counter) else 0
        if used >= rule["times"]:
            continue
        open(counter, "w").write(str(used + 1))
    time.sleep(rule.get("delay", 0))
    if argv[:1] == ["exec"] and "claude-bottle-self-test: passed" in rule.get("stdout", ""):
        open(os.path.join(state, "opened-" + argv[1]), "w").close()
    sys.stdout.write(rule.get("stdout", ""))
    sys.stderr.write(rule.get("stderr", ""))
    sys.exit(rule.get("rc", 0))
if argv[:1] == ["create"] and "claude-bottle-gate" in argv:
    open(os.path.join(state, "gated-" + argv[argv.index("--name") + 1]), "w").close()
if argv[:1] == ["exec"] and GATE_FILE in argv[-1]:
    open(os.path.join(state, "opened-" + argv[1]), "w").close()
if argv[:1] == ["start"]:
    # Like the real gate: a gated command runs once the self-test opened the gate.
    removed, opened = (os.path.join(state, m + argv[-1]) for m in ("removed-", "opened-"))
    gated = os.path.exists(os.path.join(state, "gated-" + argv[-1]))
    rc = os.environ.get("FAKE_DOCKER_START_RC")
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(removed):
        if rc is not None and (not gated or os.path.exists(opened)):
            sys.exit(int(rc))
        time.sleep(0.02)
    sys.exit(137)
if argv[:1] == ["wait"]:
    # Like `docker wait`: blocks until the container is removed (or ends: a rule answers for that).
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(os.path.join(state, "removed-" + argv[-1])):
        time.sleep(0.05)
    print(137)
    sys.exit(0)
if argv[:2] == ["container", "inspect"] and "{{json .State}}" in argv:
    print(json.dumps({"Status": "exited", "ExitCode": 0, "OOMKilled": False}))
    sys.exit(0)
if argv[:2] == ["run", "--rm"] and "# passwd" in argv[-1]:
    # The image probe: a Debian-like image with a uid-1000 user and every tool, unless a rule answers.
    print(PROBE)
    sys.exit(0)
if argv[:2] == ["run", "--rm"] and ".credentials.json" in argv[-1]:
    # A kept state with no Claude Code login stored in it, unless a rule answers.
    sys.exit(1)
if argv[:1] == ["run"]:
    print("0123456789ab")
if argv[:1] == ["inspect"]:
    names = open(networks).read().split() if os.path.exists(networks) else []
    print(json.dumps({n: {"IPAddress": "172.30.0.%d" % (i + 2), "Gateway": "172.30.%d.1" % i}
                      for i, n in enumerate(names)}))
sys.exit(0)
'''


class FakeDocker:
    """A temp dir with a fake `docker` and its log; `env()` gives the environment to run the CLI in."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-docker-")
        root = Path(self._tmp.name)
        self.bin = root / "bin"
        self.state = root / "state"
        self.log = root / "calls.jsonl"
        self.tmpdir = root / "tmp"
        for d in (self.bin, self.state, self.tmpdir):
            d.mkdir()
        exe = self.bin / "docker"
        exe.write_text(f"#!{sys.executable}\n{SCRIPT}")
        exe.chmod(0o755)
        self.log.touch()

    def close(self):
        self._tmp.cleanup()

    def env(self, rules=(), start_rc=None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE_BOTTLE_", "FAKE_DOCKER_"))}
        env.update(
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            # A guard: should anything reach a real docker, it finds no daemon.
            DOCKER_HOST="unix:///nonexistent/claude-bottle-unit-test.sock",
            FAKE_DOCKER_LOG=str(self.log),
            FAKE_DOCKER_STATE=str(self.state),
            FAKE_DOCKER_RULES=json.dumps(list(rules)),
            TMPDIR=str(self.tmpdir),
        )
        env.pop("SSH_AUTH_SOCK", None)
        if start_rc is not None:
            env["FAKE_DOCKER_START_RC"] = str(start_rc)
        env.update(extra)
        return env

    def records(self) -> list:
        lines = self.log.read_text().splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                # A call logging a long argv right now (more than one write): its line is not whole yet.
                if i != len(lines) - 1:
                    raise
        return records

    def calls(self) -> list:
        return [r for r in self.records() if "argv" in r]

    def argvs(self) -> list:
        return [c["argv"] for c in self.calls()]

    def wait_for_end(self, prefix, timeout=20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r["end"][:len(prefix)] == prefix for r in self.records() if "end" in r):
                return True
            time.sleep(0.02)
        return False

    def wait_for_call(self, prefix, timeout=20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(a[:len(prefix)] == prefix for a in self.argvs()):
                return True
            time.sleep(0.02)
        return False
