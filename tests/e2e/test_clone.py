"""End to end, clone mode and files through the engine: agents on copies of one repository never write the user's
tree, their work comes back as branches, and a session runs with no host file bind-mounted at all."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import CLI, E2ETest, docker, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())


def git(repo, *argv) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.test", "GIT_COMMITTER_NAME": "u",
           "GIT_COMMITTER_EMAIL": "u@example.test"}
    return subprocess.run(["git", *argv], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


def fingerprint(repo: Path) -> dict:
    """What the user could lose: each file's bytes outside .git, the index, HEAD, the refs that are not ours, and
    every object reachable from them."""
    files = {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(repo.rglob("*"))
             if p.is_file() and p.relative_to(repo).parts[0] != ".git"}
    refs = [line for line in git(repo, "for-each-ref", "--format=%(objectname) %(refname)").splitlines()
            if "refs/heads/claude-bottle/" not in line]
    return {"files": files, "index": (repo / ".git" / "index").read_bytes(),
            "head": (repo / ".git" / "HEAD").read_text(),
            "refs": refs, "objects": git(repo, "rev-list", "--objects", "--exclude=refs/heads/claude-bottle/*",
                                         "--all")}


def read_until(proc, needle: str, timeout: float = 180) -> str:
    """The agent's stdout up to the line that is `needle` (the preflight's command line holds it too).

    A thread reads the lines: select() on the pipe would not see lines already in the file object's buffer, and
    then waits for the next output, which may be the session's end."""
    import queue
    import threading
    lines = proc.lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(proc.stdout.readline, "")] + [lines.put("")],
                     daemon=True).start()
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen += line
        if line.strip() == needle:
            return seen
    raise AssertionError(f"never saw {needle!r}: {seen}")


def read_rest(proc, timeout: float = 120) -> tuple:
    """After read_until: (the rest of stdout, stderr) once the CLI has ended."""
    err = proc.stderr.read()
    proc.wait(timeout=timeout)
    rest = ""
    for line in iter(lambda: proc.lines.get(timeout=timeout), ""):
        rest += line
    return rest, err


class Clone(E2ETest):
    def repository(self) -> Path:
        """A project that is a repository with history, a change not yet committed and a file not yet added."""
        project = world.project(world.config())
        git(project, "init", "-q", "-b", "main")
        (project / "shared.txt").write_text("base\n")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "base")
        (project / "shared.txt").write_text("base\nthe user's uncommitted line\n")
        (project / "notes.txt").write_text("untracked\n")
        return project

    def cli(self, project, *args, env=None):
        return subprocess.run([sys.executable, str(CLI), *args], cwd=project, env=env or world.env(),
                              capture_output=True, text=True, timeout=120)

    def test_three_agents_edit_one_file_and_each_brings_back_exactly_its_own_work(self):
        project = self.repository()
        before = fingerprint(project)
        procs = [world.popen(project, f"cd /workspace && grep -q \"uncommitted line\" shared.txt && echo 'agent {i}' "
                             f">> shared.txt && git -c user.name=a{i} -c user.email=a{i}@example.test commit -qam "
                             f"'agent {i}' && echo committed-{i}", "--clone") for i in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        for i, (out, err) in enumerate(outs):
            self.assertEqual(procs[i].returncode, 0, err)
            self.assertIn(f"committed-{i}", out, "the copy held the user's uncommitted line")
            sid = session_of(out)
            branch = f"claude-bottle/{sid}"
            self.assertIn(f"is in branch {branch}: 1 commit", err)
            self.assertNoLeftovers(sid)
            snapshot = git(project, "rev-parse", f"{branch}^").strip()
            self.assertEqual(git(project, "log", "--format=%s", f"{snapshot}..{branch}").splitlines(), [f"agent {i}"])
            changed = [ln for ln in git(project, "diff", snapshot, branch).splitlines()
                       if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            self.assertEqual(changed, [f"+agent {i}"], "exactly its agent's line, nothing of the others'")
            self.assertEqual(git(project, "show", f"{branch}:shared.txt"),
                             f"base\nthe user's uncommitted line\nagent {i}\n")
            self.assertEqual(git(project, "show", f"{snapshot}:notes.txt"), "untracked\n")
        self.assertEqual(fingerprint(project), before, "the user's tree, index, HEAD and refs are as they were")
        self.assertEqual(len(git(project, "branch", "--list", "claude-bottle/*").split()), 3)

    def test_an_agent_that_destroys_its_copy_changes_nothing_of_the_users(self):
        project = self.repository()
        before = fingerprint(project)
        proc = world.start(project, "cd /workspace && git reset -q --hard && git clean -qfdx && "
                           "git gc -q --prune=now && rm -rf .git && ls -a && echo destroyed", "--clone")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("destroyed", proc.stdout)
        self.assertIn("nothing brought back", proc.stderr)
        self.assertEqual(fingerprint(project), before)
        self.assertEqual(git(project, "branch", "--list", "claude-bottle/*"), "")
        self.assertNoLeftovers(session_of(proc.stdout))

    def test_pull_brings_the_commits_so_far_while_the_agent_runs(self):
        project = self.repository()
        proc = world.popen(project, "cd /workspace && echo pulled > pulled.txt && git add pulled.txt && "
                           "git -c user.name=a -c user.email=a@example.test commit -qm pulled && echo committed && "
                           "echo more > later.txt && sleep 300", "--clone")
        out = read_until(proc, "committed")
        sid = session_of(out)
        pull = self.cli(project, "pull", sid)
        self.assertEqual(pull.returncode, 0, pull.stderr)
        self.assertIn("1 commit", pull.stdout)
        branch = f"claude-bottle/{sid}"
        self.assertEqual(git(project, "log", "-1", "--format=%s", branch).strip(), "pulled")
        self.assertNotIn("later.txt", git(project, "ls-tree", "--name-only", branch), "uncommitted work waits")
        stop = self.cli(project, "stop", sid)
        self.assertEqual(stop.returncode, 0, stop.stderr)
        out, err = read_rest(proc)
        self.assertIn(f"is in branch {branch}: 2 commits", err, "what was left uncommitted came at the end")
        self.assertIn("later.txt", git(project, "ls-tree", "--name-only", branch))
        self.assertNoLeftovers(sid)


class FilesThroughTheEngine(E2ETest):
    def test_a_session_runs_with_no_host_file_mounted_and_a_live_allow_still_reloads(self):
        """CLAUDE_BOTTLE_FILES=copy, in clone mode: pipelock's config, passwd and group, the SSH config and the
        workspace reach the containers through the engine (volumes and copies); only the sockets of the ssh-agent
        relay (and the broker's) are bind mounts. A live allow reaches pipelock by a copy, confirmed by its hash."""
        project = world.project(world.config(allow=["web", "git"], trusted=["web", "git", "other"]))
        git(project, "init", "-q")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "config")
        env = world.env(CLAUDE_BOTTLE_FILES="copy", SSH_AUTH_SOCK=world.agent_sock)
        script = ("test -s ~/.ssh/config && git ls-remote gitserver:/srv/git/repo.git | grep -q refs/heads/main && "
                  "echo ssh-ok; echo ready; for i in $(seq 1 120); do code=$(curl -s -o /dev/null -w '%{http_code}' "
                  "http://other:8000/); [ \"$code\" = 200 ] && { echo reached-other; exit 0; }; sleep 0.5; done; "
                  "exit 1")
        proc = world.popen(project, script, "--clone", env=env)
        try:
            out = read_until(proc, "ready")
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1]) from None
        self.assertIn("ssh-ok", out)
        sid = session_of(out)
        for name in (f"claude-bottle-{sid}", f"claude-bottle-{sid}-pipelock"):
            inspect = docker("container", "inspect", "--format", "{{json .Mounts}}", name, check=False)
            if inspect.returncode:
                proc.kill()
                raise AssertionError(f"{name}: {inspect.stderr}; {out}{''.join(read_rest(proc))}")
            mounts = json.loads(inspect.stdout)
            binds = [m["Source"] for m in mounts if m["Type"] == "bind"]
            self.assertTrue(all(b.endswith(".sock") for b in binds), f"{name} bind-mounts host files: {binds}")
        allow = subprocess.run([sys.executable, str(CLI), "allow", sid, "other"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(allow.returncode, 0, allow.stderr)
        self.assertIn("pipelock reloaded its config", allow.stdout)
        out, err = read_rest(proc)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("reached-other", out)
        self.assertNoLeftovers(sid)
        self.assertEqual(docker("volume", "ls", "-q", "--filter", f"label=claude-bottle.session={sid}").stdout, "")
