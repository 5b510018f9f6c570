"""Clone mode on this machine, with real git and no engine: what a copy holds, that making it never writes the
user's index, working tree or refs, and that the agent's work comes back as a branch, whatever the agent did to its
copy. The container's side (the tar unpacked, the harvest script) runs here in a temp dir standing in for the
workspace volume, by a LocalEngine that runs each one-off container's script with /bin/sh."""

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from tests import guard

cb = guard.cb
setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule
HAVE_GIT = shutil.which("git") is not None
WHO = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.test", "GIT_COMMITTER_NAME": "u",
       "GIT_COMMITTER_EMAIL": "u@example.test"}


def sh(cwd, *argv, check=True) -> str:
    r = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, env={**os.environ, **WHO})
    if check and r.returncode:
        raise AssertionError(f"{argv} failed: {r.stderr}")
    return r.stdout


def fingerprint(repo: Path) -> dict:
    """Everything of a repository the user could lose: every file's bytes and mode outside .git, the index, HEAD,
    every ref, and the set of objects reachable from them."""
    files = {}
    for p in sorted(repo.rglob("*")):
        if ".git" in p.relative_to(repo).parts[:1] or not p.is_file():
            continue
        files[str(p.relative_to(repo))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    index = repo / ".git" / "index"
    return {"files": files, "index": index.read_bytes() if index.exists() else b"",
            "head": (repo / ".git" / "HEAD").read_text(),
            "refs": sh(repo, "git", "for-each-ref", "--format=%(objectname) %(refname)"),
            "reachable": sh(repo, "git", "rev-list", "--objects", "--all", check=False)}


class LocalEngine(cb.RecordingEngine):
    """An engine whose one-off containers run here: the workspace volume is a temp dir, `/workspace` in a script
    is that dir, and the container's stdin and stdout are real."""

    dry_run = False

    def __init__(self, volume: Path):
        super().__init__()
        self.volume = volume

    def run(self, spec, timeout=None, input_stream=None, binary=False):
        self.calls.append((spec.role, list(spec.command)))
        script = spec.command[1].replace(cb.AGENT_WORKDIR, str(self.volume))
        if spec.role == "workspace-init":
            script = script.replace('chown -R "$1" .', "true")
        buf = io.BytesIO()
        if input_stream:
            input_stream(buf)
        r = subprocess.run(["/bin/sh", "-c", script, *spec.command[2:]], input=buf.getvalue(),
                           capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
        return cb.Completed(r.returncode, r.stdout if binary else r.stdout.decode(), r.stderr.decode())


@unittest.skipUnless(HAVE_GIT, "git is not installed")
class CloneTest(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp(prefix="cb-clone-")).resolve()
        self.addCleanup(shutil.rmtree, self.root, True)
        self.repo = self.root / "repo"
        self.repo.mkdir()
        sh(self.repo, "git", "init", "-q", "-b", "main")
        (self.repo / "a.txt").write_text("one\n")
        (self.repo / ".gitignore").write_text("*.log\n")
        sh(self.repo, "git", "add", "-A")
        sh(self.repo, "git", "commit", "-qm", "first")
        self.private = self.root / "private"
        self.private.mkdir()
        self.volume = self.root / "volume"
        self.volume.mkdir()

    def plan(self, **kw) -> cb.Plan:
        plan = cb.resolve_plan(cb.Config(), None, cwd=self.repo, environ={"HOME": "/nonexistent"}, suffix="abc123",
                               clone=True, private_dir=str(self.private), **kw)
        return cb.inspect_clone(plan)

    def dirty(self):
        """Uncommitted work of every kind: a change, a staged change, a new file, an ignored file."""
        (self.repo / "a.txt").write_text("one\nuncommitted\n")
        (self.repo / "staged.txt").write_text("staged\n")
        sh(self.repo, "git", "add", "staged.txt")
        (self.repo / "new.txt").write_text("untracked\n")
        (self.repo / "debug.log").write_text("ignored\n")

    def copy(self, plan) -> tuple:
        """Start's side of a clone: the snapshot, and the copy unpacked and checked out in the 'volume'."""
        engine = LocalEngine(self.volume)
        td = cb.Teardown(engine)
        run = cb.Run(plan, td)
        snapshot = cb.prepare_workspace(run)
        return engine, td, snapshot

    def harvest(self, engine, final=True) -> str:
        return cb.bring_back(engine, str(self.private), cb.read_clone_state(str(self.private)), final=final)

    def in_copy(self, *argv, check=True) -> str:
        return sh(self.volume, *argv, check=check)

    # ---- in ----

    def test_the_copy_holds_history_and_uncommitted_work_and_the_users_repository_is_untouched(self):
        self.dirty()
        before = fingerprint(self.repo)
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        self.assertEqual(fingerprint(self.repo), before, "making the copy wrote nothing of the user's")
        self.assertEqual(self.in_copy("git", "status", "--porcelain"), "", "the copy starts clean at the snapshot")
        self.assertEqual(self.in_copy("git", "rev-parse", "--abbrev-ref", "HEAD").strip(), plan.clone_branch)
        self.assertEqual((self.volume / "a.txt").read_text(), "one\nuncommitted\n")
        self.assertEqual((self.volume / "staged.txt").read_text(), "staged\n")
        self.assertEqual((self.volume / "new.txt").read_text(), "untracked\n")
        self.assertFalse((self.volume / "debug.log").exists(), "ignored files stay out")
        self.assertIn("first", self.in_copy("git", "log", "--format=%s"))
        self.assertEqual(self.in_copy("git", "rev-parse", "main").strip(),
                         sh(self.repo, "git", "rev-parse", "main").strip())
        self.assertEqual(list((self.volume / ".git" / "hooks").glob("*")) if (self.volume / ".git" / "hooks").exists()
                         else [], [], "no hook of the user's reaches the copy")

    def test_nothing_uncommitted_means_the_snapshot_is_head(self):
        plan = self.plan()
        self.assertEqual(cb.make_snapshot(plan), sh(self.repo, "git", "rev-parse", "HEAD").strip())

    def test_the_copys_config_has_no_password_and_nothing_else_of_the_users(self):
        sh(self.repo, "git", "config", "remote.origin.url", "https://user:s3cret@example.test/r.git")
        sh(self.repo, "git", "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")
        sh(self.repo, "git", "config", "user.name", "The User")
        sh(self.repo, "git", "config", "core.hooksPath", "/home/user/hooks")
        sh(self.repo, "git", "config", "credential.helper", "store")
        config = cb.clone_config(self.plan().repo)
        self.assertNotIn("s3cret", config)
        self.assertIn('url = "https://example.test/r.git"', config)
        self.assertIn('name = "The User"', config)
        for absent in ("hooksPath", "credential", "helper"):
            self.assertNotIn(absent, config)

    def test_bad_input_is_one_line_and_nothing_is_written(self):
        cases = []
        plain = self.root / "plain"
        plain.mkdir()
        cases.append((plain, "not in a git repository"))
        bare = self.root / "bare.git"
        sh(self.root, "git", "init", "-q", "--bare", str(bare))
        cases.append((bare, "bare repository"))
        borrowing = self.root / "borrowing"
        sh(self.root, "git", "clone", "-q", "--shared", str(self.repo), str(borrowing))
        cases.append((borrowing, "borrows objects"))
        for where, needle in cases:
            with self.subTest(where=where.name):
                plan = cb.resolve_plan(cb.Config(), None, cwd=where, environ={"HOME": "/nonexistent"},
                                       suffix="abc123", clone=True, workspace=str(where))
                with self.assertRaises(cb.ConfigError) as caught:
                    cb.inspect_clone(plan)
                self.assertIn(needle, str(caught.exception))
                self.assertEqual(len(str(caught.exception).splitlines()), 1)
        sh(self.repo, "git", "branch", "claude-bottle/claude-abc123")
        with self.assertRaisesRegex(cb.ConfigError, "exists already"):
            self.plan()

    def test_notes_for_what_a_copy_cannot_hold_as_it_is(self):
        (self.repo / ".gitmodules").write_text('[submodule "x"]\n\tpath = x\n\turl = ../x\n')
        (self.repo / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
        (self.repo / ".git" / "rebase-merge").mkdir()
        sh(self.repo, "git", "checkout", "-q", "--detach")
        notes = " | ".join(self.plan().repo.notes)
        for needle in ("a rebase is under way", "HEAD is detached", "submodules are not copied", "LFS"):
            self.assertIn(needle, notes)
        self.assertIn("your working tree is not touched", cb.clone_line(self.plan()))

    def test_a_symlink_out_of_the_workspace_is_copied_as_a_link_never_what_it_points_to(self):
        outside = self.root / "outside-secret"
        outside.write_text("the user's secret\n")
        (self.repo / "link").symlink_to(outside)
        engine, td, snapshot = self.copy(self.plan())
        self.assertTrue((self.volume / "link").is_symlink())
        self.assertEqual(os.readlink(self.volume / "link"), str(outside))
        tar = io.BytesIO()
        cb.write_clone_tar(self.plan(), snapshot, tar)
        self.assertNotIn(b"the user's secret", tar.getvalue())

    def test_a_shallow_clone_stays_shallow(self):
        shallow = self.root / "shallow"
        sh(self.repo, "git", "commit", "-q", "--allow-empty", "-m", "second")
        sh(self.root, "git", "clone", "-q", "--depth", "1", f"file://{self.repo}", str(shallow))
        plan = cb.inspect_clone(cb.resolve_plan(cb.Config(), None, cwd=shallow, environ={"HOME": "/no"},
                                                suffix="abc123", clone=True, private_dir=str(self.private)))
        self.assertIn("shallow", " ".join(plan.repo.notes))
        engine, td, snapshot = self.copy(plan)
        self.assertEqual(self.in_copy("git", "log", "--format=%s").splitlines(), ["second"])
        self.assertEqual(self.in_copy("git", "rev-parse", "--is-shallow-repository").strip(), "true")

    def test_a_workspace_below_the_top_works_there(self):
        (self.repo / "sub").mkdir()
        (self.repo / "sub" / "x").write_text("x\n")
        plan = cb.inspect_clone(cb.resolve_plan(cb.Config(), None, cwd=self.repo / "sub", environ={"HOME": "/no"},
                                                suffix="abc123", clone=True, workspace=str(self.repo / "sub")))
        self.assertEqual(plan.repo.toplevel, str(self.repo))
        self.assertEqual(plan.workdir, f"{cb.AGENT_WORKDIR}/sub")
        self.assertEqual(cb.agent_spec(plan).workdir, f"{cb.AGENT_WORKDIR}/sub")

    # ---- out ----

    def test_commits_and_leftovers_come_back_as_a_branch_and_nothing_else_changes(self):
        self.dirty()
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        before = fingerprint(self.repo)
        (self.volume / "a.txt").write_text("agent\n")
        self.in_copy("git", "commit", "-qam", "agent work")
        (self.volume / "left.txt").write_text("not committed\n")
        line = self.harvest(engine)
        self.assertIn(f"branch {plan.clone_branch}", line)
        self.assertIn("2 commits", line)
        after = fingerprint(self.repo)
        self.assertEqual(after["files"], before["files"])
        self.assertEqual(after["index"], before["index"])
        self.assertEqual(after["head"], before["head"])
        log = sh(self.repo, "git", "log", "--format=%s", f"{snapshot}..{plan.clone_branch}").splitlines()
        self.assertEqual(log, [f"claude-bottle: what the agent left uncommitted at the end of session {plan.session}",
                               "agent work"])
        self.assertEqual(sh(self.repo, "git", "show", f"{plan.clone_branch}:left.txt"), "not committed\n")
        self.assertEqual(sh(self.repo, "git", "show", f"{snapshot}:a.txt"), "one\nuncommitted\n")
        self.assertEqual(sh(self.repo, "git", "rev-parse", f"{snapshot}^").strip(),
                         sh(self.repo, "git", "rev-parse", "HEAD").strip(), "the snapshot is on top of HEAD")

    def gc(self, plan, engine) -> list:
        """`gc` of the session, its CLI killed: the private dir it left is where a start makes them."""
        session = {"session": plan.session, "owner-dir": str(self.private), "networks": [], "containers": []}
        engine.volumes = lambda label, value=None, keys=(): [{"name": plan.workspace_volume}]
        engine.calls.clear()
        with mock.patch.object(cb, "runtime_base", lambda: self.root):
            cb.teardown_session(engine, session)
        return [argv for argv, _ in engine.calls if "volume" in argv and plan.workspace_volume in argv]

    def test_gc_of_a_session_whose_cli_was_killed_brings_its_work_back_before_its_copy_goes(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        (self.volume / "a.txt").write_text("agent\n")
        self.in_copy("git", "commit", "-qam", "agent work")
        removed = self.gc(plan, engine)
        self.assertIn("agent work", sh(self.repo, "git", "log", "--format=%s", plan.clone_branch))
        self.assertEqual(len(removed), 1, "the copy goes once its work is in the branch")

    def test_gc_keeps_the_copy_when_its_work_cannot_be_brought_back(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        self.in_copy("git", "commit", "--allow-empty", "-qm", "agent work")
        (self.private / cb.CLONE_STATE).unlink()
        with mock.patch.object(cb, "warn") as warned:
            removed = self.gc(plan, engine)
        self.assertEqual(removed, [], "the only copy of the agent's work stays")
        self.assertIn(plan.workspace_volume, str(warned.call_args))

    def test_work_not_brought_back_at_the_end_keeps_its_copy_and_record_until_gc_brings_it(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        td.steps.insert(0, ("volume", plan.workspace_volume))  # the workspace step's own undo, under its callback
        self.in_copy("git", "commit", "--allow-empty", "-qm", "agent work")
        real_run = engine.run
        engine.run = lambda spec, **kw: (cb.Completed(1, b"", "the engine went away\n") if spec.role == "harvest"
                                         else real_run(spec, **kw))
        engine.calls.clear()
        with mock.patch.object(cb, "warn") as warned:
            td.run()
        self.assertEqual([a for a, _ in engine.calls if a[:2] == ["volume", "rm"]], [], "the copy is not removed")
        self.assertIn("claude-bottle gc", str(warned.call_args))
        cb.remove_private_dir(str(self.private))
        self.assertTrue((self.private / cb.CLONE_STATE).exists(), "the record stays for gc")
        engine.run = real_run
        self.assertEqual(len(self.gc(plan, engine)), 1, "gc removes the copy once the work is in the branch")
        self.assertIn("agent work", sh(self.repo, "git", "log", "--format=%s", plan.clone_branch))
        self.assertFalse(self.private.exists(), "and then the private dir")

    def test_a_pull_brings_the_commits_so_far_and_leaves_the_agents_work_alone(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        (self.volume / "a.txt").write_text("agent\n")
        self.in_copy("git", "commit", "-qam", "agent one")
        (self.volume / "wip.txt").write_text("work in progress\n")
        line = self.harvest(engine, final=False)
        self.assertIn("1 commit ", line)
        self.assertEqual(sh(self.repo, "git", "log", "-1", "--format=%s", plan.clone_branch).strip(), "agent one")
        self.assertEqual(self.in_copy("git", "status", "--porcelain"), "?? wip.txt\n", "the agent's tree is as it was")
        self.in_copy("git", "commit", "-qam", "agent two", "--allow-empty")
        self.assertIn("2 commits", self.harvest(engine, final=False), "a later pull moves the branch on")

    def test_whatever_the_agent_does_to_its_copy_the_users_repository_stays(self):
        self.dirty()
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        before = fingerprint(self.repo)
        for argv in (("git", "reset", "-q", "--hard", "HEAD~1"), ("git", "clean", "-qfdx"),
                     ("git", "gc", "-q", "--prune=now")):
            self.in_copy(*argv)
        shutil.rmtree(self.volume / ".git")
        line = self.harvest(engine)
        self.assertIn("nothing brought back", line)
        self.assertIn("removed its repository", line)
        self.assertEqual(fingerprint(self.repo), before)
        self.assertEqual(sh(self.repo, "git", "branch", "--list", "claude-bottle/*"), "")

    def test_no_new_work_makes_no_branch(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        self.assertIn("no new work", self.harvest(engine))
        self.assertEqual(sh(self.repo, "git", "branch", "--list", "claude-bottle/*"), "")

    def test_a_branch_that_moved_meanwhile_is_never_overwritten(self):
        plan = self.plan()
        engine, td, snapshot = self.copy(plan)
        self.in_copy("git", "commit", "-q", "--allow-empty", "-m", "agent")
        self.harvest(engine, final=False)
        # The user builds on the branch; the agent rewrites its history.
        sh(self.repo, "git", "commit-tree", "-m", "users", "-p", plan.clone_branch, f"{plan.clone_branch}^{{tree}}")
        users = sh(self.repo, "git", "commit-tree", "-m", "users", "-p", plan.clone_branch,
                   f"{plan.clone_branch}^{{tree}}").strip()
        sh(self.repo, "git", "update-ref", f"refs/heads/{plan.clone_branch}", users)
        self.in_copy("git", "commit", "-q", "--amend", "--allow-empty", "-m", "rewritten")
        line = self.harvest(engine)
        self.assertIn(f"{plan.clone_branch}-2", line)
        self.assertEqual(sh(self.repo, "git", "rev-parse", plan.clone_branch).strip(), users)

    def test_discard_brings_nothing_back(self):
        plan = self.plan(discard=True)
        engine, td, snapshot = self.copy(plan)
        self.assertFalse(any(e[0] == "call" and e[1] is cb.bring_back for e in td.steps))

    def test_the_dry_run_makes_no_snapshot(self):
        self.dirty()
        before = fingerprint(self.repo)
        objects = sorted(str(p) for p in (self.repo / ".git" / "objects").rglob("*"))
        shown = cb.planned_commands(self.plan())
        self.assertEqual(fingerprint(self.repo), before)
        self.assertEqual(sorted(str(p) for p in (self.repo / ".git" / "objects").rglob("*")), objects)
        roles = [a[a.index("--label") + 3] for a, _ in shown if "--label" in a and a[0] in ("run", "create")]
        self.assertIn("claude-bottle.role=workspace-init", roles)
        self.assertIn("claude-bottle.role=harvest", roles)
        teardown = [a for a, note in shown if note.startswith("teardown")]
        self.assertLess(next(i for i, a in enumerate(teardown) if a[:2] == ["rm", "--force"]),
                        next(i for i, a in enumerate(teardown) if "claude-bottle.role=harvest" in a),
                        "the agent is gone before its work is read")
        self.assertIn(["volume", "rm", f"claude-bottle-{self.plan().session}-workspace"], teardown)


@unittest.skipUnless(HAVE_GIT, "git is not installed")
class ModeTest(unittest.TestCase):
    """Which mode a start runs, and the agent's mounts in each."""

    def setUp(self):
        self.root = Path(tempfile.mkdtemp(prefix="cb-mode-")).resolve()
        self.addCleanup(shutil.rmtree, self.root, True)
        sh(self.root, "git", "init", "-q")

    def plan(self, **kw):
        return cb.resolve_plan(cb.Config(), None, cwd=self.root, environ={"HOME": "/nonexistent"}, suffix="abc123",
                               **kw)

    def test_a_clone_mounts_nothing_of_the_users_tree(self):
        spec = cb.agent_spec(self.plan(clone=True))
        binds = [m for m in spec.mounts if isinstance(m, cb.Mount) and m.kind == "bind"]
        self.assertFalse([m for m in binds if m.source.startswith(str(self.root))], binds)
        self.assertIn(cb.Mount("volume", "claude-bottle-claude-abc123-workspace", cb.AGENT_WORKDIR), spec.mounts)
        self.assertEqual(spec.labels["claude-bottle.mode"], "clone")

    def test_a_bind_session_on_a_tree_another_one_edits_works_on_a_copy_or_is_refused(self):
        other = {"session": "other-1", "workspace": str(self.root), "mode": "bind", "owner_state": "alive"}
        engine = cb.RecordingEngine()
        with mock.patch.object(cb, "find_sessions", lambda engine: [other]):
            plan, _ = cb.claim_workspace(self.plan(), engine)
            self.assertTrue(plan.clone)
            self.assertIn("session other-1 is editing this working tree in place", plan.repo.notes[0])
            with self.assertRaisesRegex(cb.BottleError, "other-1 is editing .* claude-bottle start claude --clone"):
                cb.claim_workspace(self.plan(clone=False), engine)
            gone = dict(other, owner_state="gone")
            with mock.patch.object(cb, "find_sessions", lambda engine: [gone]):
                self.assertFalse(cb.claim_workspace(self.plan(), engine)[0].clone)
        plain = Path(tempfile.mkdtemp(prefix="cb-plain-")).resolve()
        self.addCleanup(shutil.rmtree, plain, True)
        with mock.patch.object(cb, "find_sessions", lambda engine: [dict(other, workspace=str(plain))]):
            with self.assertRaisesRegex(cb.BottleError, "a copy needs a git repository"):
                cb.claim_workspace(cb.resolve_plan(cb.Config(), None, cwd=plain, environ={"HOME": "/no"},
                                                   suffix="abc123"), engine)

    def test_discard_without_clone_is_bad_input(self):
        with self.assertRaisesRegex(cb.ConfigError, "--discard: only in clone mode"):
            self.plan(discard=True)

    def test_clone_key_is_validated(self):
        with self.assertRaisesRegex(cb.ConfigError, r"\[agents.a\] clone: expected true"):
            cb.parse_config({"agents": {"a": {"clone": "yes"}}}, "x.toml")
        self.assertTrue(cb.parse_config({"agents": {"a": {"clone": True}}}, "x.toml").agents["a"].clone)


if __name__ == "__main__":
    unittest.main()
