"""Claude Code's state per agent and project, and the built-in image's build, with a fake docker.

The state volume: its argv, where its steps fall in a start, --fresh, a second session of the same agent, `state ls`
and `state rm`, and that gc never removes one. The built-in image: its build arguments and tag, and a failed build.
"""

import json
import tempfile
import unittest
from pathlib import Path

from tests import guard
from tests.test_cli import CliTest
from tests.test_ops import gone_owner, merge, session_rules

cb = guard.cb


def plan(environ=None, **kw) -> "cb.Plan":
    project = Path(tempfile.mkdtemp(prefix="cb-state-")).resolve()
    return cb.resolve_plan(cb.Config(), None, cwd=project, environ={"HOME": "/nonexistent", **(environ or {})},
                           suffix="0a1b2c", **kw)


def values_after(argv, flag) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# ---- The plan and its argv ----

class StatePlan(unittest.TestCase):
    def test_one_volume_per_agent_and_workspace(self):
        a, b = cb.state_volume_name("/p/one", "claude"), cb.state_volume_name("/p/two", "claude")
        self.assertNotEqual(a, b)
        self.assertNotEqual(a, cb.state_volume_name("/p/one", "reviewer"))
        self.assertEqual(a, cb.state_volume_name("/p/one", "claude"), "the same name at every start")
        self.assertRegex(a, r"^claude-bottle-state-claude-[0-9a-f]{12}$")

    def test_agent_mounts_the_state_volume_and_points_claude_at_it(self):
        p = plan()
        argv = guard.agent_create_argv(p)
        mounts = values_after(argv, "--mount")
        volumes = [m for m in mounts if m.startswith("type=volume")]
        self.assertEqual(volumes, [f"type=volume,source={p.state_volume},target={cb.AGENT_STATE_DIR}"])
        self.assertIn(f"CLAUDE_CONFIG_DIR={cb.AGENT_STATE_DIR}", values_after(argv, "--env"))
        for m in mounts:
            self.assertNotIn(".claude", m, "the host's ~/.claude is never mounted")

    def test_fresh_mounts_the_sessions_own_volume(self):
        p = plan(fresh=True)
        mounts = values_after(guard.agent_create_argv(p), "--mount")
        self.assertIn(f"type=volume,source={p.fresh_volume},target={cb.AGENT_STATE_DIR}", mounts)
        self.assertNotIn(p.state_volume, " ".join(mounts))
        self.assertIn(p.session, p.fresh_volume)

    def test_persistent_volume_has_no_session_label_and_fresh_one_has(self):
        p = plan()
        persistent = volume_create_argv(p, p.state_volume)
        labels = values_after(persistent, "--label")
        self.assertIn("claude-bottle.state=1", labels)
        self.assertIn(f"claude-bottle.project={p.workspace}", labels)
        self.assertIn("claude-bottle.agent=claude", labels)
        self.assertFalse([lb for lb in labels if lb.startswith("claude-bottle.session")],
                         "a session's teardown and gc find what they remove by the session label")
        fresh = values_after(volume_create_argv(p, p.fresh_volume), "--label")
        self.assertIn(f"claude-bottle.session={p.session}", fresh)
        self.assertNotIn("claude-bottle.state=1", fresh, "`state ls` lists only kept state")

    def test_init_runs_without_network_as_root_with_three_capabilities(self):
        p = plan()
        argv = guard.state_init_argv(p, p.state_volume)
        self.assertEqual(values_after(argv, "--network"), ["none"])
        self.assertEqual(values_after(argv, "--cap-drop"), ["ALL"])
        self.assertEqual(sorted(values_after(argv, "--cap-add")), ["CHOWN", "DAC_OVERRIDE", "FOWNER"])
        self.assertIn("no-new-privileges", values_after(argv, "--security-opt"))
        self.assertEqual(values_after(argv, "--entrypoint"), ["/bin/sh"], "any image with a POSIX sh")
        uid, gid = p.identity.uid, p.identity.gid
        self.assertIn(f"chown {uid}:{gid} .", argv[-1])
        self.assertIn("--rm", argv)

    def test_summary_shows_the_volume_or_fresh(self):
        p = plan()
        self.assertIn(f"  state:      {p.state_volume} -> {cb.AGENT_STATE_DIR}", "\n".join(cb.render_summary(p)))
        fresh = "\n".join(cb.render_summary(plan(fresh=True)))
        self.assertIn("  state:      fresh", fresh)

    def test_steps_state_before_agent_and_fresh_undone(self):
        p = plan()
        steps = {s.name: s for s in cb.start_steps(p, guard.DOCKER)}
        self.assertIn("state", steps["agent"].after)
        self.assertEqual(steps["state"].undo, (), "the kept state outlives the session")
        f = plan(fresh=True)
        steps = {s.name: s for s in cb.start_steps(f, guard.DOCKER)}
        self.assertIn(("volume", f.fresh_volume), steps["state"].undo)
        teardown = [argv for argv, note in cb.planned_commands(f) if note.startswith("teardown")]
        self.assertIn(["volume", "rm", f.fresh_volume], teardown)
        containers = next(i for i, a in enumerate(teardown) if a[:2] == ["rm", "--force"])
        self.assertLess(containers, teardown.index(["volume", "rm", f.fresh_volume]),
                        "a volume goes once the container using it is gone")
        self.assertNotIn(["volume", "rm", p.state_volume],
                         [a for a, note in cb.planned_commands(p) if note.startswith("teardown")])


def volume_create_argv(p, volume) -> list:
    """The `volume create` a start runs for `volume`, as DockerEngine runs it."""
    engine = cb.RecordingEngine()
    engine.create_volume(cb.state_volume_spec(p, volume))
    return engine.calls[0][0]


class BuiltInImage(unittest.TestCase):
    def test_dockerfile_fails_loudly(self):
        text = cb.AGENT_DOCKERFILE
        code = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
        self.assertNotRegex(code, r"curl[^\n]*\|\s*(ba)?sh", "no `curl | sh`: a failed download would pass")
        self.assertIn('SHELL ["/bin/bash", "-o", "pipefail", "-c"]', text)
        self.assertIn("claude --version", text)
        self.assertIn(f"ARG CLAUDE_INSTALLER_URL={cb.INSTALLER_URL}", text)

    def test_defaults_pass_no_build_argument(self):
        p = plan()
        self.assertEqual(p.build_args, ())
        self.assertEqual(p.image, cb.AGENT_IMAGE)
        self.assertEqual(guard.DOCKER.build_argv(p.image, p.build_args, {"claude-bottle.image": "agent"}),
                         ["build", "--force-rm", "--tag", cb.AGENT_IMAGE, "--label", "claude-bottle.image=agent",
                          "-"])

    def test_installer_url_and_base_are_build_arguments_and_part_of_the_tag(self):
        url = "http://172.17.0.5:8080/install.sh"
        p = plan({cb.INSTALLER_URL_ENV: url, cb.BASE_IMAGE_ENV: "claude-bottle-test/debian:x"})
        argv = guard.DOCKER.build_argv(p.image, p.build_args)
        self.assertEqual(values_after(argv, "--build-arg"),
                         ["BASE_IMAGE=claude-bottle-test/debian:x", f"CLAUDE_INSTALLER_URL={url}"])
        self.assertNotEqual(p.image, cb.AGENT_IMAGE, "a stand-in-built image never poses as the real one")
        self.assertRegex(p.image, r"^claude-bottle/agent:[0-9a-f]{12}$")
        other = plan({cb.INSTALLER_URL_ENV: url.replace("5", "6")})
        self.assertNotIn(other.image, (p.image, cb.AGENT_IMAGE))

    def test_a_custom_image_ignores_them(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "claude-bottle.toml")
            path.write_text('[agents.x]\nimage = "example.test/agent:1"\n')
            p = cb.resolve_plan(cb.load_config(path), "x", cwd=Path(d),
                                environ={"HOME": "/nonexistent", cb.INSTALLER_URL_ENV: "http://h/i.sh"}, suffix="a")
        self.assertEqual((p.image, p.build_args), ("example.test/agent:1", ()))


# ---- The CLI ----

class StateStart(CliTest):
    def test_new_volume_is_created_and_made_the_agents(self):
        rules = [{"match": ["volume", "inspect"], "rc": 1, "stderr": "Error: No such volume: x\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        calls = self.fake.argvs()
        kinds = [a[:2] for a in calls]
        create = kinds.index(["volume", "create"])
        init = next(i for i, a in enumerate(calls) if a[:2] == ["run", "--rm"])
        agent = next(i for i, a in enumerate(calls) if a[0] == "create")
        self.assertLess(kinds.index(["volume", "inspect"]), create)
        self.assertLess(create, init)
        self.assertLess(init, agent)
        volume = calls[create][-1]
        self.assertIn(f"type=volume,source={volume},target={cb.AGENT_STATE_DIR}", calls[init])
        self.assertIn(f"type=volume,source={volume},target={cb.AGENT_STATE_DIR}", calls[agent])
        self.assertNotIn(["volume", "rm"], kinds, "the kept state outlives the session")

    def test_failed_init_removes_the_half_made_volume(self):
        rules = [{"match": ["volume", "inspect"], "rc": 1, "stderr": "Error: No such volume: x\n"},
                 {"match": ["run", "--rm"], "rc": 126, "stderr": "exec: /bin/sh: not found\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        calls = self.fake.argvs()
        volume = next(a for a in calls if a[:2] == ["volume", "create"])[-1]
        self.assertIn(["volume", "rm", volume], calls)
        self.assertFalse([a for a in calls if a[0] == "create"], "no agent without its state")
        self.assertEqual(calls[-1][:2], ["network", "rm"])

    def test_second_session_of_the_agent_gets_a_fresh_state_removed_at_teardown(self):
        rules = [{"match": ["ps", "--all", "--filter"], "contains": "volume=", "stdout": "claude-bottle-claude-1\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("in use by claude-bottle-claude-1", proc.stderr)
        self.assertIn("fresh state", proc.stderr)
        calls = self.fake.argvs()
        fresh = f"claude-bottle-{self.sid()}-state"
        self.assertFalse([a for a in calls if a[:2] == ["volume", "inspect"]])
        self.assertEqual(next(a for a in calls if a[:2] == ["volume", "create"])[-1], fresh)
        agent = next(a for a in calls if a[0] == "create")
        self.assertIn(f"type=volume,source={fresh},target={cb.AGENT_STATE_DIR}", agent)
        self.assertNotIn("claude-bottle-state-", " ".join(agent), "never the state another session holds")
        self.assertIn(["volume", "rm", fresh], calls)
        self.assertLess(calls.index(next(a for a in calls if a[:2] == ["rm", "--force"])),
                        calls.index(["volume", "rm", fresh]))

    def test_fresh_dry_run_and_run(self):
        proc = self.cli("start", "--fresh", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("state:      fresh", proc.stdout)
        self.assertIn("docker volume rm claude-bottle-claude-", proc.stdout)
        self.assertEqual(self.fake.calls(), [])
        proc = self.cli("start", "--fresh", "--yes", "--", "true", env=self.env(start_rc=0))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        calls = self.fake.argvs()
        fresh = f"claude-bottle-{self.sid()}-state"
        self.assertIn(["volume", "rm", fresh], calls)
        self.assertFalse([a for a in calls if "claude-bottle-state-" in " ".join(a)], "the kept state is untouched")

    def test_dry_run_shows_the_state_volume(self):
        proc = self.cli("start", "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        volume = cb.state_volume_name(str(self.project), "claude")
        self.assertIn(f"state:      {volume}", proc.stdout)
        self.assertIn("docker volume create --label claude-bottle.state=1", proc.stdout)
        self.assertNotIn(f"docker volume rm {volume}", proc.stdout)


class Build(CliTest):
    def test_unreachable_installer_fails_with_one_line_and_nothing_left(self):
        rules = [{"match": ["image", "inspect"], "rc": 1, "stderr": "Error: No such image\n"},
                 {"match": ["build"], "rc": 1, "stderr": "The command '/bin/bash -o pipefail -c curl -fsSL --retry 2 "
                  "-o /tmp/claude-bottle-install.sh \"${CLAUDE_INSTALLER_URL}\"' returned a non-zero code: 7\n"}]
        url = "http://127.0.0.1:1/install.sh"
        env = self.env(rules, start_rc=0, CLAUDE_BOTTLE_INSTALLER_URL=url)
        proc = self.cli("start", "--yes", "--", "true", env=env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("claude-bottle: error: "), last)
        self.assertIn(f"installer {url} could not be fetched", last)
        self.assertIn("image =", last)
        calls = self.fake.argvs()
        build = next(a for a in calls if a[0] == "build")
        self.assertIn(f"CLAUDE_INSTALLER_URL={url}", build)
        self.assertFalse([a for a in calls if a[0] in ("run", "create") or a[:2] in (["network", "create"],
                                                                                       ["volume", "create"])],
                         "nothing is created when the image cannot be had")

    def test_other_build_failure_says_what_failed(self):
        rules = [{"match": ["image", "inspect"], "rc": 1, "stderr": "Error: No such image\n"},
                 {"match": ["build"], "rc": 1, "stderr": "pull access denied for debian\n"}]
        proc = self.cli("start", "--yes", "--", "true", env=self.env(rules, start_rc=0))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        self.assertIn("was not built (pull access denied for debian)", last)
        self.assertNotIn("installer", last)

    def test_bad_installer_url_is_a_config_error(self):
        proc = self.cli("start", "--dry-run", env=self.env(CLAUDE_BOTTLE_INSTALLER_URL="file:///etc/passwd"))
        self.assertOneLineError(proc, 2, "CLAUDE_BOTTLE_INSTALLER_URL", "http(s) URL")


def state_ls_rule(*volumes) -> dict:
    return {"match": ["volume", "ls", "--filter", "label=claude-bottle.state=1"],
            "stdout": "".join(json.dumps(dict(zip(("name", "project", "agent"), v))) + "\n" for v in volumes)}


class StateCommand(CliTest):
    def volumes(self):
        mine = str(self.project)
        return [("claude-bottle-state-claude-aaa", mine, "claude"),
                ("claude-bottle-state-reviewer-bbb", mine + "/sub", "reviewer"),
                ("claude-bottle-state-claude-ccc", "/elsewhere/project", "claude")]

    def test_ls_lists_this_projects_volumes(self):
        proc = self.cli("state", "ls", env=self.env([state_ls_rule(*self.volumes())]))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("claude-bottle-state-claude-aaa", proc.stdout)
        self.assertIn("claude-bottle-state-reviewer-bbb", proc.stdout)
        self.assertNotIn("ccc", proc.stdout, "another project's state is not listed")
        self.assertEqual([a[:2] for a in self.fake.argvs()], [["volume", "ls"]])

    def test_rm_agent_removes_only_its_volume(self):
        proc = self.cli("state", "rm", "claude", env=self.env([state_ls_rule(*self.volumes())]))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        removals = [a for a in self.fake.argvs() if a[:2] == ["volume", "rm"]]
        self.assertEqual(removals, [["volume", "rm", "claude-bottle-state-claude-aaa"]])

    def test_rm_all_removes_this_projects_volumes(self):
        proc = self.cli("state", "rm", "--all", env=self.env([state_ls_rule(*self.volumes())]))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        removals = [a[-1] for a in self.fake.argvs() if a[:2] == ["volume", "rm"]]
        self.assertEqual(removals, ["claude-bottle-state-claude-aaa", "claude-bottle-state-reviewer-bbb"])

    def test_rm_refuses_a_volume_in_use(self):
        rules = [state_ls_rule(*self.volumes()),
                 {"match": ["ps", "--all", "--filter"], "contains": "volume=claude-bottle-state-claude-aaa",
                  "stdout": "claude-bottle-claude-123456\n"}]
        proc = self.cli("state", "rm", "--all", env=self.env(rules))
        self.assertOneLineError(proc, 1, "in use by claude-bottle-claude-123456")
        self.assertFalse([a for a in self.fake.argvs() if a[:2] == ["volume", "rm"]], "none removed, not even one")

    def test_rm_unknown_agent_and_usage(self):
        proc = self.cli("state", "rm", "nobody", env=self.env([state_ls_rule(*self.volumes())]))
        self.assertOneLineError(proc, 2, "no state kept for agent 'nobody'")
        self.assertOneLineError(self.cli("state", "rm"), 2, "name an AGENT")


class GcKeepsState(CliTest):
    def test_gc_removes_a_dead_sessions_fresh_state_and_never_a_kept_one(self):
        sid = "impl-dead00"
        fresh = f"claude-bottle-{sid}-state"
        rules = merge(session_rules(sid, gone_owner(self)))
        rules += [{"match": ["volume", "ls", "--quiet", "--filter", f"label=claude-bottle.session={sid}"],
                   "stdout": fresh + "\n"},
                  state_ls_rule(("claude-bottle-state-impl-aaa", str(self.project), "impl"))]
        proc = self.cli("gc", env=self.env(rules))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        calls = self.fake.argvs()
        self.assertEqual([a for a in calls if a[:2] == ["volume", "rm"]], [["volume", "rm", fresh]])
        for argv in calls:
            self.assertNotIn("claude-bottle-state-impl-aaa", argv)
            if argv[:2] == ["volume", "ls"]:
                self.assertIn(f"label=claude-bottle.session={sid}", argv, "only the session's own volumes")


if __name__ == "__main__":
    unittest.main()
