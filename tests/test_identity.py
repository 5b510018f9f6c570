"""The agent's identity: who it runs as in any image, the image probe and its cache, the self-test's verdicts."""

import json
import os
import stat
import unittest
from pathlib import Path

import claude_bottle as cb
from tests import guard
from tests.test_cli import CliTest

DEBIAN_NO_USER = {
    "passwd": ["root:x:0:0:root:/root:/bin/bash", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"],
    "group": ["root:x:0:", "nogroup:x:65534:"],
    "tools": ["ssh", "socat", "git", "curl", "python3"],
    "dirs": {"/tmp": ["drwxrwxrwt", 0], "/root": ["drwx------", 0]},
}
NODE = {
    "passwd": DEBIAN_NO_USER["passwd"] + ["node:x:1000:1000::/home/node:/bin/bash"],
    "group": DEBIAN_NO_USER["group"] + ["node:x:1000:"],
    "tools": ["ssh", "socat", "git", "curl"],
    "dirs": {**DEBIAN_NO_USER["dirs"], "/home/node": ["drwxr-xr-x", 1000]},
}
BUSYBOX = {"passwd": [], "group": [], "tools": ["wget", "nc"], "dirs": {}}
IMAGE_ID = "sha256:" + "ab" * 32


class AgentIdentityTest(unittest.TestCase):
    def test_no_user_at_the_uid(self):
        ident = cb.agent_identity(DEBIAN_NO_USER, 1234, 1234)
        self.assertEqual((ident.user, ident.home, ident.home_tmpfs, ident.tmp_tmpfs), ("claude", "/home/claude",
                                                                                        True, False))
        self.assertIn("claude:x:1234:1234:claude-bottle agent:/home/claude:/bin/sh\n", ident.passwd)
        self.assertTrue(ident.passwd.startswith("root:x:0:0:root:/root:/bin/bash\n"), "the image's users stay")
        self.assertTrue(ident.group.endswith("claude:x:1234:\n"))

    def test_node_keeps_its_user_and_home(self):
        ident = cb.agent_identity(NODE, 1000, 1000)
        self.assertEqual((ident.user, ident.home, ident.home_tmpfs, ident.tmp_tmpfs), ("node", "/home/node",
                                                                                        False, False))
        self.assertEqual((ident.passwd, ident.group), ("", ""), "the image's own files serve as they are")
        self.assertIn("image's own user", ident.why)

    def test_a_home_of_another_uid_is_not_used(self):
        ident = cb.agent_identity({**NODE, "dirs": {**NODE["dirs"], "/home/node": ["drwxr-xr-x", 0]}}, 1000, 1000)
        self.assertEqual((ident.user, ident.home, ident.home_tmpfs), ("node", "/home/node", True))
        self.assertIn("node:x:1000:1000:claude-bottle agent:/home/node:/bin/sh\n", ident.passwd)

    def test_root_host_user(self):
        ident = cb.agent_identity(DEBIAN_NO_USER, 0, 0)
        self.assertEqual((ident.uid, ident.gid, ident.user, ident.home, ident.home_tmpfs), (0, 0, "root", "/root",
                                                                                           False))
        self.assertEqual((ident.passwd, ident.group), ("", ""))

    def test_busybox_without_passwd_tmp_or_home(self):
        for uid in (0, 1000):
            with self.subTest(uid=uid):
                ident = cb.agent_identity(BUSYBOX, uid, uid)
                self.assertEqual((ident.user, ident.home, ident.home_tmpfs, ident.tmp_tmpfs),
                                 ("claude", "/home/claude", True, True))
                self.assertEqual(ident.passwd, f"claude:x:{uid}:{uid}:claude-bottle agent:/home/claude:/bin/sh\n")
                self.assertEqual(ident.group, f"claude:x:{uid}:\n")

    def test_a_taken_name_gets_a_suffix(self):
        ident = cb.agent_identity(cb.BUILTIN_PROBE, 1001, 1001)
        self.assertEqual((ident.user, ident.home), ("claude-1001", "/home/claude-1001"))
        self.assertNotEqual(ident.home, cb.AGENT_HOME, "the built-in image's claude keeps its home untouched")

    def test_an_odd_name_or_home_is_replaced(self):
        for line in ("bad,name:x:1000:1000::/home/bad:/bin/sh", "ok:x:1000:1000::/home/a,uid=0:/bin/sh"):
            with self.subTest(line=line):
                ident = cb.agent_identity({**DEBIAN_NO_USER, "passwd": [line]}, 1000, 1000)
                self.assertEqual((ident.user, ident.home), ("claude", "/home/claude"))
                self.assertNotIn(line, ident.passwd)

    def test_tmp_not_writable_gets_a_tmpfs(self):
        probe = {**DEBIAN_NO_USER, "dirs": {**DEBIAN_NO_USER["dirs"], "/tmp": ["drwxr-xr-x", 0]}}
        self.assertTrue(cb.agent_identity(probe, 1000, 1000).tmp_tmpfs)
        self.assertFalse(cb.agent_identity(probe, 0, 0).tmp_tmpfs, "root owns it")

    def test_parse_probe(self):
        text = ("# passwd\nroot:x:0:0:root:/root:/bin/sh\n# group\nroot:x:0:\n# tools\nssh\nwget\nrm -rf\n"
                "# dirs\n/tmp\tdrwxrwxrwt    2 0        0   40 Dec  2 00:57 /tmp\n/home/claude\t\n")
        self.assertEqual(cb.parse_probe(text), {"passwd": ["root:x:0:0:root:/root:/bin/sh"], "group": ["root:x:0:"],
                                                "tools": ["ssh", "wget"], "dirs": {"/tmp": ["drwxrwxrwt", 0]}})

    def test_argv(self):
        plan = cb.resolve_plan(cb.Config(), None, cwd=Path(__file__).parent, environ={"HOME": "/nonexistent"},
                               suffix="abcdef", private_dir="/p", uid=1234, gid=1235)
        plan = plan._replace(identity=cb.agent_identity(BUSYBOX, 1234, 1235))
        argv = guard.agent_create_argv(plan)
        self.assertEqual(argv[argv.index("--user") + 1], "1234:1235")
        self.assertIn("HOME=/home/claude", argv)
        self.assertIn("/home/claude:uid=1234,gid=1235,mode=0700,exec,size=1g", argv)
        self.assertIn("/tmp:mode=1777,exec,size=1g", argv)
        self.assertIn("type=bind,source=/p/passwd,target=/etc/passwd,readonly", argv)
        self.assertIn("type=bind,source=/p/group,target=/etc/group,readonly", argv)
        node = guard.agent_create_argv(plan._replace(identity=cb.agent_identity(NODE, 1000, 1000)))
        self.assertIn("HOME=/home/node", node)
        self.assertFalse(any("/etc/" in a or a.startswith("/tmp:") for a in node), "nothing of the image replaced")
        self.assertNotIn("--tmpfs", node)

    def test_preflight_line(self):
        ident = cb.agent_identity(NODE, 1000, 1000)
        self.assertEqual(cb.user_line(ident), "node uid 1000 gid 1000, home /home/node (the image's own user for "
                                              "uid 1000)")
        self.assertIn("home /home/claude (private tmpfs)", cb.user_line(cb.agent_identity(BUSYBOX, 5, 5)))
        self.assertIn("uid 5 gid 6 (yours)", cb.user_line(cb.host_identity(5, 6)))


class ProbeCacheTest(unittest.TestCase):
    def setUp(self):
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="cb-cache-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)

    def test_where(self):
        self.assertEqual(cb.probe_cache_file(IMAGE_ID, {"XDG_CACHE_HOME": "/c", "HOME": "/h"}),
                         Path("/c/claude-bottle/probe-" + "ab" * 32 + ".json"))
        self.assertEqual(cb.probe_cache_file(IMAGE_ID, {"HOME": "/h"}).parent, Path("/h/.cache/claude-bottle"))
        self.assertIsNone(cb.probe_cache_file("../../etc/x", {"HOME": "/h"}))
        self.assertIsNone(cb.probe_cache_file(IMAGE_ID, {"HOME": "relative"}))

    def test_round_trip_and_distrust(self):
        path = self.root / "claude-bottle" / "probe.json"
        cb.write_probe_cache(path, NODE)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(cb.read_probe_cache(path), NODE)
        os.chmod(path, 0o666)
        self.assertIsNone(cb.read_probe_cache(path), "a file others may write is not trusted")
        os.chmod(path, 0o600)
        link = self.root / "link.json"
        link.symlink_to(path)
        self.assertIsNone(cb.read_probe_cache(link), "nor a symlink")
        path.write_text(json.dumps({"version": cb.PROBE_VERSION, "probe": {"passwd": "x"}}))
        self.assertIsNone(cb.read_probe_cache(path), "nor a file of the wrong shape")
        if os.geteuid() == 0:
            cb.write_probe_cache(path, NODE)
            os.chown(path, 4321, 4321)
            self.assertIsNone(cb.read_probe_cache(path), "nor another user's file")


class SelfTestScriptTest(unittest.TestCase):
    def test_marker_before_the_gate(self):
        plan = cb.resolve_plan(cb.Config(), None, cwd=Path(__file__).parent, environ={"HOME": "/nonexistent"},
                               suffix="abcdef")
        script = cb.render_self_test(plan, "10.0.0.2", "10.0.0.17")
        self.assertLess(script.index(cb.SELF_TEST_PASSED), script.index(f"touch {cb.GATE_FILE}"))
        for client in cb.SELF_TEST_CLIENTS:
            self.assertIn(f"command -v {client} ", script)


IMAGE_CONFIG = '[agents.x]\nimage = "example.test/agent:1"\n'
SSH_CONFIG = '[[bottles.default.ssh]]\nHost = "gh"\nHostname = "github.com"\n'


class StartTest(CliTest):
    def probe_rules(self, probe_stdout=None):
        rules = [{"match": ["image", "inspect"], "stdout": IMAGE_ID + "\n"}]
        if probe_stdout is not None:
            rules.append({"match": ["run", "--rm"], "stdout": probe_stdout})
        return rules

    def test_probe_once_per_image_id(self):
        self.write_config(IMAGE_CONFIG)
        env = self.env(self.probe_rules(), start_rc=0, XDG_CACHE_HOME=str(self.home / "cache"))
        for n in (1, 2):
            proc = self.cli("start", "x", "--yes", "--", "true", env=env)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            probes = [a for a in self.fake.argvs() if a[:2] == ["run", "--rm"] and "--name" not in a]
            self.assertEqual(len(probes), 1, f"start {n}: one probe in all")
        self.assertEqual(probes[0][:4], ["run", "--rm", "--network", "none"])
        self.assertEqual(probes[0][probes[0].index("--entrypoint") + 1], "/bin/sh")
        self.assertIn(IMAGE_ID, probes[0], "the probe runs the very image it caches for")
        self.assertRegex(proc.stdout, rf"\n  user: +\S+ uid {os.getuid()} gid {os.getgid()}, home ",
                      "the preflight shows the agent's user")
        cached = list((self.home / "cache" / "claude-bottle").iterdir())
        self.assertEqual([p.name for p in cached], ["probe-" + "ab" * 32 + ".json"])
        creates = [a for a in self.fake.argvs() if a[0] == "create"]
        self.assertEqual(creates[0][creates[0].index("--user") + 1], f"{os.getuid()}:{os.getgid()}")

    def assertNothingCreated(self):
        verbs = {a[0] if a[0] != "network" else " ".join(a[:2]) for a in self.fake.argvs()}
        self.assertFalse(verbs & {"create", "network create", "start", "exec", "build"}, verbs)
        self.assertFalse([a for a in self.fake.argvs() if a[0] == "run" and "--rm" not in a])
        self.assertNoPrivateDir()

    def test_missing_ssh_tool_refused_before_anything(self):
        self.write_config(IMAGE_CONFIG + SSH_CONFIG)
        probe = "# passwd\n# group\n# tools\nwget\nssh\n# dirs\n"
        proc = self.cli("start", "x", "--yes", "--", "true", env=self.env(self.probe_rules(probe)))
        self.assertOneLineError(proc, 1, "has no socat and no git", "gh", "install socat and git")
        self.assertNothingCreated()

    def test_no_shell_refused(self):
        self.write_config(IMAGE_CONFIG)
        rules = self.probe_rules() + [{"match": ["run", "--rm"], "rc": 127, "stderr": 'docker: Error response from '
                                       'daemon: OCI runtime create failed: exec: "/bin/sh": stat /bin/sh: no such '
                                       'file or directory: unknown.\n'}]
        proc = self.cli("start", "x", "--yes", "--", "true", env=self.env(rules))
        self.assertOneLineError(proc, 1, "has no /bin/sh")
        self.assertNothingCreated()

    def test_no_self_test_client_refused(self):
        self.write_config(IMAGE_CONFIG)
        proc = self.cli("start", "x", "--yes", "--", "true",
                        env=self.env(self.probe_rules("# passwd\n# tools\nssh\n# dirs\n")))
        self.assertOneLineError(proc, 1, "none of curl, wget, python3 or nc", "--no-self-test")
        self.assertNothingCreated()

    def test_dry_run_shows_the_probe_and_runs_nothing(self):
        self.write_config(IMAGE_CONFIG)
        proc = self.cli("start", "x", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.fake.calls(), [])
        self.assertIn("docker run --rm --network none", proc.stdout)
        self.assertIn("probed before anything is created", proc.stdout)


class SelfTestRaceTest(CliTest):
    """A very short command can end the container while the exec'd self-test returns: exit 137."""

    def test_137_with_the_marker_passes(self):
        rules = [{"match": ["exec"], "rc": 137, "stdout": cb.SELF_TEST_PASSED + "\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def test_137_without_the_marker_fails_and_tears_down(self):
        rules = [{"match": ["exec"], "rc": 137, "stdout": ""}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("isolation self-test failed", proc.stderr)
        # The attached start is a process of its own, whose fake logs its argv when it gets going: on a loaded
        # machine that is after the teardown's first calls, so its place in the log says nothing.
        calls = [a[:2] for a in self.fake.argvs()]
        self.assertIn(["start", "--attach"], calls)
        self.assertEqual([c for c in calls if c != ["start", "--attach"]][-2:], [["rm", "--force"], ["network", "rm"]])
        self.assertNoPrivateDir()


if __name__ == "__main__":
    unittest.main()
