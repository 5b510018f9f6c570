"""End to end: git over SSH through pipelock, authenticated by the host's ssh-agent."""

import unittest

from tests.e2e.harness import E2ETest, docker, module_fixtures, session_of

world = None
setUpModule, tearDownModule = module_fixtures(globals())


class GitOverSsh(E2ETest):
    def test_clone_and_push_by_alias(self):
        project = world.project(world.config())
        script = r"""
set -e
cd /tmp
git clone -q gitserver:/srv/git/repo.git repo
cd repo && cat README
echo from-the-bottle > BOTTLE && git add BOTTLE
git -c user.name=agent -c user.email=agent@example.test commit -qm "from the bottle"
git push -q origin main && echo pushed
echo "ssh_dir: $(ls -A ~/.ssh | tr '\n' ' ')"
echo "keys: $(grep -rlI -e '-----BEGIN OPENSSH PRIVATE KEY' / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | wc -l)"
"""
        proc = world.start(project, script, env=world.env(SSH_AUTH_SOCK=world.agent_sock))
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("seed", proc.stdout)
        self.assertIn("pushed", proc.stdout)
        self.assertRegex(proc.stdout, r"ssh_dir: config known_hosts ")
        self.assertNotRegex(proc.stdout, r"ssh_dir: .*id_", "no key file in ~/.ssh")
        self.assertIn("keys: 0", proc.stdout, "no private key file may enter the container")
        log = docker("exec", world.git, "git", "--git-dir=/srv/git/repo.git", "log", "--format=%s", "main").stdout
        self.assertEqual(log.split("\n")[0], "from the bottle")
        self.assertRegex(proc.stderr, r"reached: .*git \(\d+\)")
        self.assertNoLeftovers(session_of(proc.stdout))

    def test_ssh_to_host_not_in_the_bottle_is_refused(self):
        project = world.project(world.config())
        script = (
            # Not in the SSH config: a direct connection, which the internal network cannot make.
            "ssh -o BatchMode=yes -o ConnectTimeout=5 git@other true; echo direct=$?; "
            # Forced through pipelock anyway: refused, `other` is not allowed.
            "ssh -o BatchMode=yes -o 'ProxyCommand socat - PROXY:claude-bottle-$CLAUDE_BOTTLE_SESSION-pipelock"
            ":%h:%p,proxyport=8888' git@other true; echo proxied=$?")
        proc = world.start(project, script, env=world.env(SSH_AUTH_SOCK=world.agent_sock))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("direct=255", proc.stdout)
        self.assertIn("proxied=255", proc.stdout)
        self.assertIn("Forbidden", proc.stdout + proc.stderr)
        self.assertIn("other (1) allowlist: domain not in allowlist: other", proc.stderr)

    def test_without_ssh_agent_no_key_reaches_the_server(self):
        project = world.project(world.config())
        proc = world.start(project, "git ls-remote gitserver:/srv/git/repo.git; echo rc=$?")
        self.assertIn("rc=128", proc.stdout, proc.stderr)


if __name__ == "__main__":
    unittest.main()
