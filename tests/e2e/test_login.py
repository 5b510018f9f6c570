"""End to end: `claude-bottle login` keeps the subscription token on the host only, and a later session brokers it.

The login runs a stand-in `claude` (below, in an image made from the test Debian image) that behaves as Claude
Code's documentation describes `claude setup-token`: it prints a URL, reads the code pasted back on stdin, prints a
one-year `sk-ant-oat01-...` token. The stand-in makes its token from the code, so the token is in no image: only in
the test's stdin and in what the login prints. The API is the HTTPS test server of servers.py under the name
api.anthropic.com on the World's network (the bottle's egress_network, trusted), its CA given to the CLI with
SSL_CERT_FILE: nothing leaves for the real host.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from tests.e2e import images, servers
from tests.e2e.harness import CLI, STARTED, E2ETest, docker, module_fixtures
import claude_bottle as cb

world = None
setUpModule, tearDownModule = module_fixtures(globals())

STAND_IN = r"""#!/bin/sh
# Stand-in for Claude Code's `claude setup-token`: claude-bottle test equipment, not Claude Code.
[ "$1" = setup-token ] || { echo "claude (stand-in): $*"; exit 0; }
echo "Browser didn't open? Use the url below to sign in:"
echo
echo "https://claude.ai/oauth/authorize?code=true&client_id=stand-in&response_type=code"
echo
printf 'Paste code here if prompted > '
read -r code || exit 1
case "$code" in FAIL*) echo "OAuth error: Request failed with status code 400" >&2; exit 1 ;; esac
echo
echo "Long-lived authentication token created successfully!"
echo
echo "Your OAuth token (valid for 1 year):"
echo
echo "sk-ant-oat01-$code"
echo
echo "Store this token securely. You won't be able to see it again."
echo
echo "Use this token by setting: export CLAUDE_CODE_OAUTH_TOKEN=<token>"
"""


def login_image() -> str:
    parent = world.debian
    tag = f"claude-bottle-test/login:{images._digest(parent, STAND_IN)}"
    with images.build_lock():
        if not images.image_exists(tag):
            images._docker_build(tag, f"FROM {parent}\nCOPY claude /usr/local/bin/claude\n"
                                      "RUN chmod 0755 /usr/local/bin/claude\n", {"claude": STAND_IN.encode()})
    return tag


class Login(E2ETest):
    @classmethod
    def setUpClass(cls):
        cls.image = login_image()
        tmp = tempfile.mkdtemp(prefix="cbtest-login-ca-")
        cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        os.chmod(tmp, 0o755)
        cls.ca = servers.make_ca(tmp, ["api.anthropic.com"])
        os.chmod(cls.ca.ca_cert, 0o644)
        cls.code = "E2E" + os.urandom(24).hex()
        cls.token = "sk-ant-oat01-" + cls.code
        cls.api = servers.https_upstream(world.network, ["api.anthropic.com"], cls.ca)
        cls.addClassCleanup(cls.api.close)

    def setUp(self):
        super().setUp()
        self.config_home = world.tmp / f"config-{os.urandom(3).hex()}"
        self.project = world.project(
            f'[bottles.e2e]\negress_network = "{world.network}"\ntrusted = ["api.anthropic.com"]\n'
            f'[agents.e2e]\nbottle = "e2e"\nimage = "{self.image}"\n')
        self.token_file = self.config_home / "claude-bottle" / "oauth-token"

    def env(self, **extra) -> dict:
        return world.env(XDG_CONFIG_HOME=str(self.config_home), SSL_CERT_FILE=str(self.ca.ca_cert), **extra)

    def login(self, code: str) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([sys.executable, str(CLI), "login", "e2e"], cwd=self.project, env=self.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        world.started.append(proc)
        STARTED[proc.pid] = cb.process_start(proc.pid) or ""
        out, err = proc.communicate(code + "\n", timeout=180)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def engine_text(self) -> str:
        """What the engine holds that anyone with docker access could read: every container, volume and image."""
        texts = []
        for kind, ls in (("container", ["ps", "--all", "--quiet", "--no-trunc"]),
                         ("volume", ["volume", "ls", "--quiet"]), ("image", ["image", "ls", "--quiet", "--no-trunc"])):
            ids = docker(*ls).stdout.split()
            if ids:
                texts.append(docker(kind, "inspect", *ids, check=False).stdout)
        return "\n".join(texts)

    def test_login_keeps_the_token_on_the_host_and_a_session_brokers_it(self):
        proc = self.login(self.code)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout + proc.stderr
        self.assertIn("https://claude.ai/oauth/authorize?code=true", out, "the user sees the URL")
        self.assertIn(cb.TOKEN_SHOWN, out)
        self.assertNotIn(self.code[3:], out, "no part of the token on the terminal")
        self.assertIn(f"egress only to {', '.join(cb.LOGIN_HOSTS)}", out)
        # On the host: the token, 0600, in a 0700 directory.
        self.assertEqual(self.token_file.read_text(), self.token + "\n")
        self.assertEqual(os.stat(self.token_file).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.token_file.parent).st_mode & 0o777, 0o700)
        # On the engine: nothing of the login left, and the token in no container, volume or image.
        self.assertFalse(self.code[3:] in self.engine_text(), "the token is somewhere on the engine")

        # A session brokers it: Bearer and the OAuth beta upstream, the placeholder in the bottle, tool search on.
        script = ("echo TOKEN=$CLAUDE_CODE_OAUTH_TOKEN TS=$ENABLE_TOOL_SEARCH; "
                  "curl -sS -H 'X-Marker: login-e2e' -H 'anthropic-beta: claude-code-20250219' -d '{}' "
                  "\"$ANTHROPIC_BASE_URL/v1/messages\" -o /dev/null -w 'status=%{http_code}\\n'")
        proc = world.start(self.project, script, env=self.env())
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"TOKEN={cb.BROKER_PLACEHOLDER} TS=true", proc.stdout)
        self.assertIn("login:      brokered: your subscription login from `claude-bottle login`", proc.stdout)
        self.assertIn("connectors: off", proc.stdout)
        self.assertNotIn(cb.CONNECTORS_HOST, open_yaml_hosts(proc.stdout))
        self.assertIn("status=404", proc.stdout, "the stand-in API answered")
        (seen,) = [r for r in self.api.requests() if ["X-Marker", "login-e2e"] in r["headers"]]
        headers = [(n.lower(), v) for n, v in seen["headers"]]
        self.assertEqual([v for n, v in headers if n == "authorization"], [f"Bearer {self.token}"])
        self.assertIn(cb.OAUTH_BETA, ",".join(v for n, v in headers if n == "anthropic-beta"))
        self.assertNotIn(self.code[3:], proc.stdout + proc.stderr)
        self.assertFalse(self.code[3:] in self.engine_text(), "the token is somewhere on the engine")

    def test_a_failing_or_malformed_login_stores_nothing_and_leaves_nothing(self):
        for code, needle in (("FAIL-now", "`claude setup-token` failed (exit 1)"), ("short", "malformed")):
            proc = self.login(code)
            self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("claude-bottle: error:")]
            self.assertEqual(len(errors), 1, proc.stderr)
            self.assertIn(needle, errors[0])
            self.assertIn("nothing was stored", errors[0])
            self.assertFalse(self.token_file.exists())


def open_yaml_hosts(text: str) -> str:
    """The egress line of a preflight (the hosts are in pipelock's config, not printed whole)."""
    return "\n".join(ln for ln in text.splitlines() if "egress:" in ln)
