"""End to end, without claude-bottle: the second Docker engine (remote.py) the remote-engine tests stand on.

One engine for the module, reached over tcp:// and ssh://; the teardown tests start three more at once (one closed
here, one in a process stopped by SIGTERM, one in a process killed by SIGKILL and reaped) and check that nothing of
them is left on the local engine.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from tests.e2e import remote

tags = None
engine: remote.RemoteEngine = None
VIAS = (("tcp", False), ("ssh", True))
BRIDGE_GATEWAY = remote.BIP.partition("/")[0]
# The busybox image's wget crashes on a 200 and its resolver knows no names: nc and addresses instead.
HTTPD = "mkdir /www && echo {body} > /www/f && exec httpd -f -p 8080 -h /www"
GET_ONCE = "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"
GET = "(for i in $(seq 50); do " + GET_ONCE + " && exit 0; sleep 0.2; done; exit 1)"  # until the server is up


def setUpModule():
    global tags, engine
    tags = remote.require_remote()
    engine = remote.start_or_skip()
    unittest.addModuleCleanup(engine.close)
    engine.load([tags["busybox"]])


def run(*args, ssh=False, check=True):
    return engine.docker("run", "--rm", "--pull", "never", *args, ssh=ssh, check=check)


class Reach(unittest.TestCase):
    def test_docker_answers_over_tcp_and_ssh_and_it_is_the_second_engine(self):
        local = remote._local("info", "--format", "{{.ID}}").stdout.strip()
        for via, ssh in VIAS:
            with self.subTest(via=via):
                out = engine.docker("info", "--format", "{{.ID}} {{.Name}} {{.ServerVersion}}", ssh=ssh).stdout.split()
                self.assertNotEqual(out[0], local, "that is this machine's engine")
                self.assertEqual(out[1], "remote-engine")
                self.assertTrue(out[2].startswith("20.10."), out)

    def test_the_environments_point_only_at_it(self):
        self.assertEqual(engine.env_tcp()["DOCKER_HOST"], f"tcp://127.0.0.1:{engine.api_port}")
        env = engine.env_ssh()
        self.assertEqual(env["DOCKER_HOST"], f"ssh://{engine.alias}")
        self.assertEqual(shutil.which("ssh", path=env["PATH"]), str(engine.tmp / "bin" / "ssh"))
        for key in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.assertNotIn(key, env)

    def test_ssh_reads_and_writes_only_the_rigs_own_files(self):
        """The wrapper's -F config names every file ssh would otherwise take from ~/.ssh."""
        for multiplex in (False, True):
            with self.subTest(multiplex=multiplex):
                env = engine.env_ssh(multiplex)
                out = subprocess.run(["ssh", "-G", engine.alias], env=env, capture_output=True, text=True,
                                     check=True).stdout
                conf = {}
                for line in out.splitlines():
                    key, _, value = line.partition(" ")
                    conf.setdefault(key, []).append(value)
                self.assertEqual(conf["identityfile"], [str(engine.tmp / "id_ed25519")])
                self.assertEqual(conf["userknownhostsfile"], [str(engine.tmp / "known_hosts")])
                self.assertEqual(conf["globalknownhostsfile"], ["/dev/null"])
                self.assertEqual(conf["identityagent"], ["none"])
                self.assertEqual(conf["stricthostkeychecking"], ["true"])
                self.assertEqual(conf["batchmode"], ["yes"])
                self.assertEqual((conf["port"], conf["user"]), ([str(engine.ssh_port)], ["root"]))
                if multiplex:
                    self.assertTrue(conf["controlpath"][0].startswith(str(engine.tmp / "mux-")), conf["controlpath"])
                else:
                    self.assertEqual(conf.get("controlmaster"), ["false"])

    @unittest.skipUnless(shutil.which("strace"), "needs strace")
    def test_docker_over_ssh_touches_nothing_in_the_users_ssh_dir(self):
        """Every file the docker CLI and its ssh open, stat or create, traced: none in the passwd home's ~/.ssh. With
        a ControlMaster, the master (which strace -f would wait for) is started first, then a client is traced."""
        home = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"
        for multiplex in (False, True):
            with self.subTest(multiplex=multiplex):
                if multiplex:
                    engine.docker("version", ssh=True, multiplex=True)
                trace = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "docker", "version"],
                                       env=engine.env_ssh(multiplex), capture_output=True, text=True, timeout=120)
                touched = sorted({line for line in trace.stderr.splitlines() if str(home) in line})
                self.assertEqual(touched, [], "ssh reached for the user's ~/.ssh")
                self.assertEqual(trace.returncode, 0, trace.stderr[-2000:])
                config = engine.tmp / ("ssh_config-mux" if multiplex else "ssh_config")
                self.assertIn(f'openat(AT_FDCWD, "{config}"', trace.stderr, "the trace saw ssh at work")

    def test_an_unknown_host_key_is_refused(self):
        """Strict checking against the rig's known_hosts: another key for the alias and ssh refuses to connect."""
        config = engine.tmp / "ssh_config"
        tmp = Path(tempfile.mkdtemp(prefix="cbtest-"))
        self.addCleanup(shutil.rmtree, tmp)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "k")], check=True)
        wrong = (tmp / "k.pub").read_text().split()
        (tmp / "known_hosts").write_text(f"{engine.alias} {wrong[0]} {wrong[1]}\n")
        proc = subprocess.run([remote.SSH_BIN, "-F", str(config), "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
                               engine.alias, "true"], capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 255, proc.stderr)
        ok = subprocess.run([remote.SSH_BIN, "-F", str(config), engine.alias, "echo", "in"], capture_output=True,
                            text=True, timeout=60)
        self.assertEqual((ok.returncode, ok.stdout), (0, "in\n"), ok.stderr)


class Containers(unittest.TestCase):
    def test_a_container_runs_there_and_not_here(self):
        for via, ssh in VIAS:
            with self.subTest(via=via):
                name = f"cbtest-rig-{os.urandom(3).hex()}"
                proc = engine.docker("run", "--pull", "never", "--name", name, tags["busybox"], "hostname",
                                     ssh=ssh)
                self.addCleanup(engine.docker, "rm", "--force", name, check=False)
                self.assertTrue(proc.stdout.strip())
                self.assertEqual(engine.docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip(),
                                 "0")
                self.assertNotEqual(remote._local("inspect", name, check=False).returncode, 0,
                                    "the container is on this machine's engine")

    def test_a_host_path_is_an_empty_dir_there(self):
        tmp = Path(tempfile.mkdtemp(prefix="cbtest-rig-"))
        self.addCleanup(shutil.rmtree, tmp)
        (tmp / "here").write_text("on this machine\n")
        for via, ssh in VIAS:
            with self.subTest(via=via):
                proc = run("-v", f"{tmp}:/m", tags["busybox"], "ls", "-A", "/m", ssh=ssh)
                self.assertEqual(proc.stdout, "", "the engine sees this machine's files")
        self.assertFalse(engine.host_path_visible(tmp))
        self.assertFalse(engine.host_path_visible(tmp / "here"))

    def test_host_path_visible_sees_what_the_engines_host_has(self):
        """The control: the same bytes at the same path on the engine's host are visible."""
        tmp = Path(tempfile.mkdtemp(prefix="cbtest-rig-"))
        self.addCleanup(shutil.rmtree, tmp)
        (tmp / "both").write_text("same\n")
        engine.exec(f"mkdir -p {tmp} && printf 'same\\n' > {tmp}/both")
        self.assertTrue(engine.host_path_visible(tmp / "both"))
        self.assertTrue(engine.host_path_visible(tmp))
        engine.exec(f"printf 'other\\n' > {tmp}/both")
        self.assertFalse(engine.host_path_visible(tmp / "both"))

    def network(self, name, *options):
        engine.docker("network", "create", *options, name)
        self.addCleanup(engine.docker, "network", "rm", name, check=False)
        return name

    def server(self, network, body):
        name = f"cbtest-rig-{os.urandom(3).hex()}-{body}"
        engine.docker("run", "--pull", "never", "--detach", "--name", name, "--network", network, tags["busybox"],
                      "sh", "-c", HTTPD.format(body=body))
        self.addCleanup(engine.docker, "rm", "--force", name, check=False)
        fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return engine.docker("inspect", "--format", fmt, name).stdout.strip()

    def test_an_internal_network_works_inside(self):
        b, tag = tags["busybox"], os.urandom(3).hex()
        internal = self.network(f"cbtest-rig-{tag}-internal", "--internal")
        bridge = self.network(f"cbtest-rig-{tag}-bridge")
        no_host = self.network(f"cbtest-rig-{tag}-nohost", "--internal",
                               "--opt", "com.docker.network.bridge.inhibit_ipv4=true")
        inside, outside = self.server(internal, "inside"), self.server(bridge, "outside")
        get = GET_ONCE.format(ip=outside, port=8080, path="/f")
        # As on this machine's engine (PRD 0001): an --internal network still has its gateway on the engine's host,
        # whose services (here the engine's own API, on every address) answer it, unless inhibit_ipv4 is set.
        ping = GET_ONCE.format(ip=BRIDGE_GATEWAY, port=remote.API_PORT, path="/_ping")
        script = (GET.format(ip=inside, port=8080, path="/f") + "; echo; echo ==; " + get + " 2>&1; echo rc=$?; "
                  "echo ==; " + ping)
        sees = run("--network", internal, b, "sh", "-c", script).stdout.split("==\n")
        self.assertIn("\n\ninside\n", sees[0], "an --internal network does not work inside")
        self.assertNotIn("outside", sees[1], "an --internal network reached another network")
        self.assertIn("rc=1", sees[1])
        self.assertIn("\n\nOK", sees[2])
        control = run("--network", bridge, b, "sh", "-c", GET.format(ip=outside, port=8080, path="/f")).stdout
        self.assertIn("\n\noutside\n", control)
        cut = run("--network", no_host, b, "sh", "-c", ping + " 2>&1; echo rc=$?", check=False).stdout
        self.assertNotIn("OK", cut)
        self.assertIn("rc=1", cut)

    def test_nothing_on_it_leaves_this_machine(self):
        """New connections out of the engine's container are refused, from its host and from its containers: a
        server beside it on this machine's engine answers this machine, and neither of them."""
        server = f"cbtest-rig-{os.urandom(3).hex()}-beside"
        remote._local("run", "--detach", "--pull", "never", "--name", server, "--label", remote.LABEL,
                      "--network", engine.network, tags["busybox"], "sh", "-c", HTTPD.format(body="beside"))
        self.addCleanup(remote._local, "rm", "--force", server, check=False)
        ip = remote._local("inspect", "--format",
                           f'{{{{(index .NetworkSettings.Networks "{engine.network}").IPAddress}}}}',
                           server).stdout.strip()
        beside = remote._local("run", "--rm", "--pull", "never", "--network", engine.network, tags["busybox"],
                               "sh", "-c", GET.format(ip=ip, port=8080, path="/f"))
        self.assertIn("\n\nbeside\n", beside.stdout, "the control: the server answers")
        once = GET_ONCE.format(ip=ip, port=8080, path="/f")
        out = run(tags["busybox"], "sh", "-c", once + " 2>&1; echo rc=$?", check=False)
        self.assertIn("Connection refused", out.stdout)
        self.assertNotIn("beside", out.stdout)
        host = engine.exec(f"timeout 5 bash -c 'echo > /dev/tcp/{ip}/8080' 2>&1; echo rc=$?", check=False)
        self.assertIn("Connection refused", host.stdout)
        self.assertIn("rc=1", host.stdout)

    def test_load_skips_what_is_there(self):
        self.assertEqual(engine.load([tags["busybox"]]), [])
        engine.docker("tag", tags["busybox"], "cbtest-rig/other:1")
        self.addCleanup(engine.docker, "rmi", "cbtest-rig/other:1", check=False)
        self.assertEqual(engine.load([tags["busybox"]]), [])


class Restart(unittest.TestCase):
    """restart_engine() stops dockerd and starts it again; what that does to running containers."""

    def state(self, name):
        return engine.docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}}",
                             name).stdout.split()

    def test_restart_stops_containers_without_live_restore_and_keeps_them_with_it(self):
        pid = engine.exec("cat /run/docker.pid").stdout
        trap = "trap 'exit 3' TERM; while :; do sleep 0.1; done"
        names = [f"cbtest-rig-{os.urandom(3).hex()}" for _ in range(2)]
        for name in names:
            self.addCleanup(engine.docker, "rm", "--force", name, check=False)
        self.addCleanup(engine.set_live_restore, False)
        engine.docker("run", "--pull", "never", "--detach", "--name", names[0], tags["busybox"], "sh", "-c", trap)
        engine.restart_engine()
        self.assertNotEqual(engine.exec("cat /run/docker.pid").stdout, pid, "dockerd was not restarted")
        self.assertEqual(self.state(names[0])[:2], ["exited", "3"], "dockerd stops its containers (SIGTERM)")
        engine.set_live_restore(True)
        engine.docker("run", "--pull", "never", "--detach", "--name", names[1], tags["busybox"], "sh", "-c", trap)
        before = self.state(names[1])
        engine.restart_engine()
        self.assertEqual(self.state(names[1]), before, "with live-restore the container runs on, untouched")
        for via, ssh in VIAS:
            engine.docker("version", ssh=ssh)


# ---- Teardown ----

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from tests.e2e import remote
engine = remote.RemoteEngine()
engine.load([{busybox!r}])
engine.docker("volume", "create", "inner")
engine.docker("network", "create", "inner")
engine.docker("run", "--pull", "never", "--detach", "--network", "inner", "-v", "inner:/v", {busybox!r}, "sleep", "600")
print(engine.tag, remote._local("inspect", "--format", "{{{{.Id}}}}", engine.name).stdout.strip(), flush=True)
time.sleep(600)
"""


def cgroup_dirs(container_id: str) -> list:
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/docker/{container_id}")]


class Teardown(unittest.TestCase):
    """Nothing of an engine stays on this machine's engine: after close(), after SIGTERM, after kill -9 and reaping."""

    @classmethod
    def setUpClass(cls):
        root = str(Path(__file__).resolve().parents[2])
        script = CHILD.format(root=root, busybox=tags["busybox"])
        cls.children = {}
        for how in ("term", "kill"):
            cls.children[how] = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True)
        for proc in cls.children.values():
            cls.addClassCleanup(cls.stop, proc)
        cls.mine = remote.RemoteEngine()
        cls.addClassCleanup(cls.mine.close)
        cls.mine_id = remote._local("inspect", "--format", "{{.Id}}", cls.mine.name).stdout.strip()
        cls.started = {}
        for how, proc in cls.children.items():
            line = proc.stdout.readline().split()
            if len(line) != 2:
                raise AssertionError(f"the {how} child never got its engine up: {proc.stderr.read()[-2000:]}")
            cls.started[how] = line

    @staticmethod
    def stop(proc):
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    def test_close_leaves_nothing(self):
        self.mine.load([tags["busybox"]])
        self.mine.docker("volume", "create", "inner")
        self.mine.docker("run", "--pull", "never", "--detach", "-v", "inner:/v", tags["busybox"], "sleep", "600")
        tmp = self.mine.tmp
        self.assertTrue(remote.leftovers(self.mine.tag))
        self.assertTrue(cgroup_dirs(self.mine_id), "the check below would see nothing anyway")
        self.mine.close()
        self.assertEqual(remote.leftovers(self.mine.tag), [])
        self.assertFalse(tmp.exists())
        self.assertEqual(cgroup_dirs(self.mine_id), [])
        self.mine.close()  # idempotent

    def test_sigterm_leaves_nothing_whatever_comes_during_the_teardown(self):
        tag, ctr = self.started["term"]
        proc = self.children["term"]
        self.assertTrue(remote.leftovers(tag))
        proc.send_signal(signal.SIGTERM)
        for sig in (signal.SIGINT, signal.SIGTERM):  # while it removes its engine (a second or two)
            time.sleep(0.3)
            proc.send_signal(sig)
        proc.wait(timeout=180)
        self.assertEqual(remote.leftovers(tag), [])
        self.assertEqual(cgroup_dirs(ctr), [])
        self.assertEqual(list(Path(tempfile.gettempdir()).glob(f"{remote.PREFIX}{tag}-*")), [])

    def test_kill_9_leaves_it_to_reap_stale(self):
        tag, ctr = self.started["kill"]
        proc = self.children["kill"]
        proc.kill()
        proc.wait()
        left = remote.leftovers(tag)
        self.assertEqual(left, sorted([f"{remote.PREFIX}{tag}", f"{remote.PREFIX}{tag}-docker"]), "before the reaping")
        self.assertIn(tag, remote.reap_stale())
        self.assertEqual(remote.leftovers(tag), [])
        self.assertEqual(cgroup_dirs(ctr), [])
        self.assertEqual(list(Path(tempfile.gettempdir()).glob(f"{remote.PREFIX}{tag}-*")), [],
                         "its keys and configs")

    def test_a_live_owner_is_never_reaped(self):
        self.assertNotIn(self.mine.tag, remote.reap_stale())
        self.assertNotIn(engine.tag, remote.reap_stale())
        self.assertTrue(remote.leftovers(engine.tag))


if __name__ == "__main__":
    unittest.main()
