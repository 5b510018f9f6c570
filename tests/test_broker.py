"""The credential broker: secrets stay on the host, the bottle gets a placeholder and the broker's address.

No docker: a test CA and server certificate made with the `openssl` CLI, a local threaded HTTPS upstream that
records every request, and a local CONNECT proxy that records every target (standing in for pipelock) prove what
reaches the upstream, over which tunnel, and what never does.

`python3 tests/test_broker.py bench` prints the added latency per request: the median of 50 requests through
broker and proxy against 50 straight through the proxy, both over one kept connection.
"""

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard  # noqa: E402
from tests.test_hostile import toml_str, toml_value  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

SECRET = "sk-test-SECRET-0123456789abcdef"
OAUTH = "sk-ant-oat01-TEST-SECRET-fedcba9876543210"
UPSTREAM_NAME = "upstream.test"
WHERE = "/cfg/claude-bottle.toml: [[bottles.web.credentials]]"


# ---- Helpers ----

def credential(**kw) -> cb.Credential:
    fields = dict(env="GITHUB_TOKEN", host="api.github.test", header="Authorization", format="Bearer {}",
                  base_url_env="GITHUB_API_URL", upstream=None, ca_file=None, git=False)
    fields.update(kw)
    return cb.Credential(**fields)


def headers_named(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


# ---- Validation: every mistake is one line naming the entry and the key ----

GOOD = {"env": "GITHUB_TOKEN", "host": "api.github.com", "header": "Authorization", "format": "Bearer {}",
        "base_url_env": "GITHUB_API_URL"}
BAD_NAMES = ["A-B", "1X", "", "A B", "A\nB", "$A", "\u00c4B", "A" * 129, 1, True, ["X"]]
CASES = []  # (class, label, entries or a TOML value, needle)


def case(cls, label, entries, needle):
    CASES.append((cls, label, entries, needle))


def with_(**kw):
    return [{**GOOD, **kw}]


for key in ("hots", "value", "secret", "url", "Host", "headers", "verify"):
    case("unknown key", key, [{**GOOD, key: "x"}], f"#1: unknown key '{key}'")
for key in ("env", "host", "header", "base_url_env"):
    case("missing key", key, [{k: v for k, v in GOOD.items() if k != key}], f"#1: missing {key}")
for value in BAD_NAMES + ["HTTPS_PROXY", "HOME", "PATH", "LD_PRELOAD", "GIT_CONFIG_KEY_0", "ANTHROPIC_BASE_URL"]:
    case("env", repr(value), with_(env=value), "#1 env:")
for value in ["https://api.github.com", "api.github.com:443", "*.github.com", "", "api.github.com/x", "user@gh.com",
              "\uff41pi.github.com", "api.github.com\n", "api..github.com", "[::1]", 1, ["a"]]:
    case("host", repr(value), with_(host=value), "#1 host:")
for value in ["Authorization:", "x api key", "", "X-Key\r\nX-Evil: 1", "Host", "content-length", "Transfer-Encoding",
              "Connection", "Proxy-Authorization", "Upgrade", "te", "Expect", "\u00e4", 1]:
    case("header", repr(value), with_(header=value), "#1 header:")
for value in ["Bearer", "{} {}", "Bearer {}\r\n", "Bearer {}\n", "Bearer {}\x00", "\x1b{}", "\u00e9{}", "", "{0}",
              "Bearer {}\r\nX-Evil: 1", 1, ["{}"]]:
    case("format", repr(value), with_(format=value), "#1 format:")
for value in BAD_NAMES + ["GITHUB_TOKEN", "HTTP_PROXY", "NO_PROXY", "SSH_AUTH_SOCK", "ANTHROPIC_BASE_URL",
                          "ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "LD_PRELOAD", "GIT_CONFIG_COUNT",
                          "GIT_CONFIG_VALUE_3", "NODE_OPTIONS"]:
    case("base_url_env", repr(value), with_(base_url_env=value), "#1 base_url_env:")
for value in ["http://10.1.2.3", "10.1.2.3:8443", "https://user:pw@10.1.2.3", "https://10.1.2.3/v1",
              "https://10.1.2.3?x=1", "https://10.1.2.3#f", "https://10.1.2.3:0", "https://10.1.2.3:65536",
              "https://10.1.2.3:", "https://10.1.2.3:+443", "https://10.1.2.3: 443", "https://[::1]:443",
              "https://*.example.com", "https://evil.example\\@good.example", "HTTPS://10.1.2.3", "https://",
              "https://10.1.2.3:443:1", "https://a b", "https://256.1.1.1", "https://x.example//", "ftp://x.example",
              "https://x.example\n", 1, ["https://x.example"]]:
    case("upstream", repr(value), with_(upstream=value), "#1 upstream:")
for value in ["missing.pem", ".", "notpem.txt", "", 1, "a\nb"]:
    case("ca_file", repr(value), with_(ca_file=value), "#1 ca_file:")
for value in ["yes", "true", 1, 0, ["x"]]:
    case("git", repr(value), with_(git=value), "#1 git:")
case("twice", "same env", [GOOD, {**GOOD, "base_url_env": "OTHER_URL"}], "#2 env:")
case("twice", "same base_url_env", [GOOD, {**GOOD, "env": "OTHER_TOKEN"}], "#2 base_url_env:")
case("twice", "env of #2 is base_url_env of #1", [GOOD, {**GOOD, "env": "GITHUB_API_URL", "base_url_env": "X_URL"}],
     "#2 env:")
case("twice", "git twice for one host", [{**GOOD, "git": True}, {**GOOD, "env": "T2", "base_url_env": "U2",
                                                                 "git": True}], "#2 git:")
OAUTH_ENTRY = {"env": "CLAUDE_CODE_OAUTH_TOKEN", "header": "Authorization", "base_url_env": "ANTHROPIC_BASE_URL"}
case("subscription token", "to another host", [{**OAUTH_ENTRY, "host": "llm.corp.example"}], "#1 host:")
case("subscription token", "to a mirror",
     [{**OAUTH_ENTRY, "host": "api.anthropic.com", "upstream": "https://10.1.2.3"}], "#1 host:")
case("replacing a built-in", "with another base_url_env",
     with_(env="ANTHROPIC_API_KEY", header="x-api-key", base_url_env="CORP_LLM_URL"), "#1 base_url_env:")
case("structure", "credentials is a string", "x", WHERE + ": expected an array")
case("structure", "credentials is a table", {"env": "X"}, WHERE + ": expected an array")
case("structure", "an entry is a string", ["x"], WHERE + " #1: expected a table")


class ValidationTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-broker-cfg-")
        self.addCleanup(tmp.cleanup)
        self.base = Path(tmp.name).resolve()
        (self.base / "notpem.txt").write_text("not a certificate\n")
        (self.base / "corp-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

    def parse(self, value):
        """`value` as the TOML a user writes: [[bottles.web.credentials]] tables, or `credentials = value`."""
        if isinstance(value, list) and all(isinstance(e, dict) for e in value):
            doc = "".join("[[bottles.web.credentials]]\n" + "".join(f"{toml_str(k)} = {toml_value(v)}\n"
                                                                      for k, v in e.items()) for e in value)
        else:
            doc = f"[bottles.web]\ncredentials = {toml_value(value)}\n"
        entries = tomllib.loads(doc)["bottles"]["web"]["credentials"] if value else []
        return cb.parse_credentials(entries, WHERE, self.base)

    def test_the_table_is_large_enough(self):
        self.assertGreaterEqual(len(CASES), 120)

    def test_every_case_is_a_one_line_config_error_naming_the_field(self):
        for cls, label, value, needle in CASES:
            with self.subTest(cls=cls, case=label):
                with self.assertRaises(cb.ConfigError) as e:
                    self.parse(value)
                msg = str(e.exception)
                self.assertEqual(e.exception.status, 2)
                self.assertNotIn("\n", msg)
                self.assertTrue(msg.isprintable(), repr(msg))
                self.assertIn(needle, msg)
                self.assertTrue(msg.startswith(WHERE), msg)

    def test_the_documented_example(self):
        (c,) = self.parse([{**GOOD, "upstream": "https://10.1.2.3:8443", "ca_file": "corp-ca.pem", "git": True}])
        self.assertEqual(c, cb.Credential("GITHUB_TOKEN", "api.github.com", "Authorization", "Bearer {}",
                                          "GITHUB_API_URL", ("10.1.2.3", 8443), str(self.base / "corp-ca.pem"), True))
        (c,) = self.parse([{k: v for k, v in GOOD.items() if k != "format"} | {"upstream": "https://Mirror.test/"}])
        self.assertEqual((c.format, c.upstream, c.ca_file, c.git), ("{}", ("mirror.test", 443), None, False))
        (c,) = self.parse([GOOD])
        self.assertEqual(c.upstream, ("api.github.com", 443))
        self.assertEqual(self.parse([]), ())

    def test_a_builtin_may_be_replaced(self):
        (c,) = self.parse([{"env": "ANTHROPIC_API_KEY", "host": "llm.corp.example", "header": "x-api-key",
                            "base_url_env": "ANTHROPIC_BASE_URL"}])
        self.assertEqual((c.env, c.host), ("ANTHROPIC_API_KEY", "llm.corp.example"))


# ---- Pure parts: endpoints, headers, the bottle's environment ----

class EndpointTest(unittest.TestCase):
    def test_the_api_key_wins_over_the_oauth_token(self):
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        self.assertEqual(ep, cb.Endpoint(
            index=0, host="api.anthropic.com", upstream=("https", "api.anthropic.com", 443), header="x-api-key",
            format="{}", strip=("authorization", "x-api-key"), beta=None, base_url_env="ANTHROPIC_BASE_URL",
            env="ANTHROPIC_API_KEY", placeholder=cb.BROKER_PLACEHOLDER, git=False, ca_file=None))
        self.assertEqual(cb.broker_secrets([ep], {"ANTHROPIC_API_KEY": SECRET, "X": "y"}),
                         {"ANTHROPIC_API_KEY": SECRET})

    def test_the_oauth_token_alone(self):
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": "", "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        self.assertEqual((ep.env, ep.header, ep.format, ep.beta, ep.strip),
                         ("CLAUDE_CODE_OAUTH_TOKEN", "Authorization", "Bearer {}", "oauth-2025-04-20",
                          ("authorization", "x-api-key")))

    def test_unset_variables_make_no_endpoint(self):
        self.assertEqual(cb.brokered_endpoints([credential()], {}), [])
        self.assertEqual(cb.brokered_endpoints([credential()], {"GITHUB_TOKEN": ""}), [])

    def test_user_credentials_follow_and_one_with_a_builtin_env_replaces_it(self):
        gateway = credential(env="ANTHROPIC_API_KEY", host="llm.corp.example", header="x-api-key", format="{}",
                             base_url_env="ANTHROPIC_BASE_URL", upstream=("llm.corp.example", 8443))
        environ = {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH, "GITHUB_TOKEN": "gh"}
        eps = cb.brokered_endpoints([credential(git=True, upstream=("api.github.test", 443)), gateway], environ)
        self.assertEqual([(e.index, e.env, e.host, e.upstream) for e in eps],
                         [(0, "ANTHROPIC_API_KEY", "llm.corp.example", ("https", "llm.corp.example", 8443)),
                          (1, "GITHUB_TOKEN", "api.github.test", ("https", "api.github.test", 443))])
        self.assertEqual(eps[1].strip, ("authorization",))
        # Without the gateway's key, the subscription token goes to Anthropic, never to the gateway.
        (ep, _) = cb.brokered_endpoints([credential(upstream=("api.github.test", 443)), gateway],
                                        {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH, "GITHUB_TOKEN": "gh"})
        self.assertEqual((ep.env, ep.upstream), ("CLAUDE_CODE_OAUTH_TOKEN", ("https", "api.anthropic.com", 443)))

    def test_a_secret_that_cannot_be_a_header_value_is_refused_without_showing_it(self):
        for value in ("abc\r\nX-Evil: 1", "abc\n", "abc\x00", "ab\u00e9c"):
            with self.subTest(value=value):
                with self.assertRaises(cb.ConfigError) as e:
                    cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": value})
                self.assertIn("ANTHROPIC_API_KEY", str(e.exception))
                self.assertNotIn("abc", str(e.exception))

    def test_inject_headers(self):
        (ep,) = cb.brokered_endpoints([], {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        sent = [("X-Api-Key", "p"), ("authorization", "Bearer p"), ("anthropic-beta", "a"), ("anthropic-beta", "b"),
                ("Accept", "*/*")]
        self.assertEqual(cb.inject_headers(sent, ep, "T"),
                         [("anthropic-beta", "a"), ("anthropic-beta", "b,oauth-2025-04-20"), ("Accept", "*/*"),
                          ("Authorization", "Bearer T")])
        self.assertEqual(cb.inject_headers([("anthropic-beta", " oauth-2025-04-20 ")], ep, "T"),
                         [("anthropic-beta", " oauth-2025-04-20 "), ("Authorization", "Bearer T")])
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": SECRET})
        self.assertEqual(cb.inject_headers(sent, ep, "K"),
                         [("anthropic-beta", "a"), ("anthropic-beta", "b"), ("Accept", "*/*"), ("x-api-key", "K")])

    def test_upstream_headers(self):
        (ep,) = cb.brokered_endpoints([credential(upstream=("10.1.2.3", 8443))], {"GITHUB_TOKEN": "T"})
        sent = [("Host", "127.0.0.1:4000"), ("Connection", "close, X-A"), ("X-A", "1"), ("Content-Length", "9"),
                ("Proxy-Connection", "x"), ("Accept", "a")]
        self.assertEqual(cb.upstream_headers(sent, ep, "T", 3),
                         [("Host", "10.1.2.3:8443"), ("Accept", "a"), ("Authorization", "Bearer T"),
                          ("Content-Length", "3")])
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": "K"})
        self.assertEqual(cb.upstream_headers([], ep, "K", None), [("Host", "api.anthropic.com"), ("x-api-key", "K")])

    def test_agent_env_for(self):
        eps = cb.brokered_endpoints([credential(git=True), credential(env="GL", host="gitlab.test", git=True,
                                                                      base_url_env="GL_URL")],
                                    {"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": "g", "GL": "l"})
        self.assertEqual(cb.agent_env_for(eps, [41000, 41001, 41002]), [
            ("ANTHROPIC_API_KEY", "brokered-by-claude-bottle"), ("ANTHROPIC_BASE_URL", "http://127.0.0.1:41000"),
            ("GITHUB_TOKEN", "brokered-by-claude-bottle"), ("GITHUB_API_URL", "http://127.0.0.1:41001"),
            ("GL", "brokered-by-claude-bottle"), ("GL_URL", "http://127.0.0.1:41002"),
            ("GIT_CONFIG_COUNT", "2"),
            ("GIT_CONFIG_KEY_0", "url.http://127.0.0.1:41001/.insteadOf"),
            ("GIT_CONFIG_VALUE_0", "https://api.github.test/"),
            ("GIT_CONFIG_KEY_1", "url.http://127.0.0.1:41002/.insteadOf"),
            ("GIT_CONFIG_VALUE_1", "https://gitlab.test/"),
        ])
        self.assertEqual(cb.agent_env_for(eps[:1], [41000]), [
            ("ANTHROPIC_API_KEY", "brokered-by-claude-bottle"), ("ANTHROPIC_BASE_URL", "http://127.0.0.1:41000")])
        self.assertEqual(cb.credential_env_names([credential()]),
                         {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "GITHUB_TOKEN"})

    def test_describe_endpoint_and_socket_name(self):
        eps = cb.brokered_endpoints([credential(git=True, upstream=("10.1.2.3", 8443))],
                                    {"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": "g"})
        self.assertEqual([cb.describe_endpoint(e) for e in eps], [
            "ANTHROPIC_API_KEY as x-api-key to https://api.anthropic.com (ANTHROPIC_BASE_URL)",
            "GITHUB_TOKEN as Authorization to https://10.1.2.3:8443 (GITHUB_API_URL, git https://api.github.test/)"])
        self.assertEqual([cb.broker_socket_name(e) for e in eps], ["broker-0.sock", "broker-1.sock"])

    def test_importing_the_module_loads_no_network_code(self):
        code = "import sys, claude_bottle; print(sorted({'ssl', 'socket', 'http.client', 'select'} & set(sys.modules)))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")


# ---- Test equipment: certificates, an HTTPS upstream, a CONNECT proxy ----

def make_certs(d: Path) -> None:
    """ca.pem signs server.pem (upstream.test, 127.0.0.1); other-ca.pem signs nothing we serve."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=claude-bottle test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={UPSTREAM_NAME}")
    (d / "server.ext").write_text(
        f"subjectAltName=DNS:{UPSTREAM_NAME},IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")


class Upstream(http.server.BaseHTTPRequestHandler):
    """Records (method, path, headers, body); /stream sends 5 events 0.3 s apart; /redirect points at evil."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # or 40 ms of delayed ACK sits in every measured request

    def log_message(self, *args):
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        # The target as sent: http.server folds a leading "//" in self.path.
        self.server.requests.append((self.command, self.requestline.split(" ")[1], list(self.headers.items()), body))
        path = self.path.split("?")[0]
        if path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                if i == 4:
                    self.server.last_event.set()
                data = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if i < 4:
                    time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "https://evil.example/x")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/close-delimited":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
        else:
            data = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Set-Cookie", "a=1")
            self.send_header("Set-Cookie", "b=2")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            if path == "/drop":  # closes the kept connection without saying so
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle


class ConnectProxy(socketserver.BaseRequestHandler):
    """A CONNECT-only proxy: records each target; tunnels to 127.0.0.1 for names it knows, 403 otherwise."""

    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
        self.server.targets.append(f"{method} {target}")
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in self.server.names:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection((self.server.names[host], int(port))) as up:
            for s in (up, self.request):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            up.sendall(rest)
            t = threading.Thread(target=pipe, args=(up, self.request), daemon=True)
            t.start()
            pipe(self.request, up)
            t.join()


def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Equipment:
    """Certificates, the upstream and the proxy, for the tests and the bench."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="cb-broker-")
        self.dir = Path(self.tmp.name)
        make_certs(self.dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.dir / "server.pem", self.dir / "server.key")
        self.upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        self.upstream.daemon_threads = True
        self.upstream.socket = context.wrap_socket(self.upstream.socket, server_side=True)
        self.upstream.requests, self.upstream.last_event = [], threading.Event()
        self.proxy = ThreadingTCP(("127.0.0.1", 0), ConnectProxy)
        self.proxy.targets, self.proxy.names = [], {UPSTREAM_NAME: "127.0.0.1"}
        self.port = self.upstream.server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in (self.upstream, self.proxy)]
        for t in self.threads:
            t.start()

    def close(self):
        for server in (self.upstream, self.proxy):
            server.shutdown()
            server.server_close()
        self.tmp.cleanup()


class UnixHTTPConnection(http.client.HTTPConnection):
    """The bottle's side: HTTP to the broker's socket (the forwarder's job in the container)."""

    def __init__(self, socket_path: str):
        super().__init__("127.0.0.1", timeout=10)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def raw_exchange(path: str, request: bytes, method: str = "GET"):
    """Send `request` as bytes on a new connection; return (status, headers, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        resp = http.client.HTTPResponse(s, method=method)
        resp.begin()
        return resp.status, resp.getheaders(), resp.read()


def openssl_or_skip():
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            raise AssertionError("the openssl CLI is needed to make the test certificates")
        raise unittest.SkipTest("the openssl CLI is missing: no test certificates")


# ---- The broker against a real TLS upstream, through a CONNECT proxy ----

class BrokerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        openssl_or_skip()
        cls.eq = Equipment()
        cls.ca = str(cls.eq.dir / "ca.pem")

    @classmethod
    def tearDownClass(cls):
        cls.eq.close()

    def setUp(self):
        self.eq.upstream.requests.clear()
        self.eq.proxy.targets.clear()
        self.lines = []
        tmp = tempfile.TemporaryDirectory(prefix="cb-broker-sock-")
        self.addCleanup(tmp.cleanup)
        self.sockdir = tmp.name

    def endpoint(self, cred=None, environ=None, **kw):
        """The session's endpoints for `cred` (default: the API key built-in) pointed at the test upstream."""
        upstream = (UPSTREAM_NAME, self.eq.port)
        creds = [c._replace(upstream=upstream, ca_file=self.ca) for c in cb.builtin_credentials()]
        if cred is not None:
            creds = [cred._replace(**{"upstream": upstream, "ca_file": self.ca, **kw})]
        environ = environ if environ is not None else {c.env: SECRET for c in creds[:1]}
        # brokered_endpoints merges the built-ins; here the test's credentials stand in for them.
        with mock.patch.object(cb, "builtin_credentials", lambda: tuple(creds)):
            return cb.brokered_endpoints([], environ)

    def start(self, endpoints, secrets=None, proxy=True):
        broker = cb.CredentialBroker(endpoints, secrets or {ep.env: SECRET for ep in endpoints}, self.sockdir,
                                     log=self.lines.append)
        self.addCleanup(broker.close)
        paths = broker.start()
        if proxy:
            broker.set_proxy(self.eq.proxy.server_address)
        self.addCleanup(self.assertSecretNowhere, broker)
        return broker, paths

    def assertSecretNowhere(self, broker):
        for secret in (SECRET, OAUTH):
            for line in self.lines:
                self.assertNotIn(secret, line)
            self.assertNotIn(secret, repr(broker.stats()))
            self.assertNotIn(secret, repr(broker))
            self.assertNotIn(secret, repr(broker.endpoints))

    def only_request(self):
        self.assertEqual(len(self.eq.upstream.requests), 1, self.eq.upstream.requests)
        return self.eq.upstream.requests[0]

    def get(self, path, url, headers=None, method="GET", body=None):
        conn = UnixHTTPConnection(path)
        self.addCleanup(conn.close)
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()

    def test_api_key_replaces_the_placeholders_and_host_is_the_upstream(self):
        _, (path,) = self.start(self.endpoint())
        resp, body = self.get(path, "/echo?x=1", {"x-api-key": cb.BROKER_PLACEHOLDER,
                                                  "Authorization": f"Bearer {cb.BROKER_PLACEHOLDER}",
                                                  "Host": "evil.example", "anthropic-version": "2023-06-01"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(json.loads(body), {"path": "/echo?x=1"})
        self.assertEqual(headers_named(resp.getheaders(), "Set-Cookie"), ["a=1", "b=2"])
        method, got_path, headers, _ = self.only_request()
        self.assertEqual((method, got_path), ("GET", "/echo?x=1"))
        self.assertEqual(headers_named(headers, "x-api-key"), [SECRET])
        self.assertEqual(headers_named(headers, "Authorization"), [])
        self.assertEqual(headers_named(headers, "Host"), [f"{UPSTREAM_NAME}:{self.eq.port}"])
        self.assertEqual(headers_named(headers, "anthropic-version"), ["2023-06-01"])
        self.assertNotIn(cb.BROKER_PLACEHOLDER, repr(headers))
        self.assertEqual(self.eq.proxy.targets, [f"CONNECT {UPSTREAM_NAME}:{self.eq.port}"])

    def test_custom_format_sets_the_header_exactly_once(self):
        _, (path,) = self.start(self.endpoint(credential()))
        resp, _ = self.get(path, "/echo", {"authorization": "token placeholder", "AUTHORIZATION": "x"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(headers_named(self.only_request()[2], "Authorization"), [f"Bearer {SECRET}"])

    def test_subscription_token_is_a_bearer_with_the_oauth_beta(self):
        endpoints = self.endpoint(environ={"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        self.assertEqual([ep.env for ep in endpoints], ["CLAUDE_CODE_OAUTH_TOKEN"])
        _, (path,) = self.start(endpoints, {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        for sent, expected in ((None, ["oauth-2025-04-20"]),
                               ("claude-code-20250219", ["claude-code-20250219,oauth-2025-04-20"]),
                               ("oauth-2025-04-20,x", ["oauth-2025-04-20,x"])):
            with self.subTest(sent=sent):
                self.eq.upstream.requests.clear()
                headers = {"x-api-key": "placeholder", "Authorization": "Bearer placeholder"}
                if sent:
                    headers["anthropic-beta"] = sent
                resp, _ = self.get(path, "/v1/messages", headers, method="POST", body=b"{}")
                self.assertEqual(resp.status, 200)
                _, _, got, body = self.only_request()
                self.assertEqual(body, b"{}")
                self.assertEqual(headers_named(got, "Authorization"), [f"Bearer {OAUTH}"])
                self.assertEqual(headers_named(got, "x-api-key"), [])
                self.assertEqual(headers_named(got, "anthropic-beta"), expected)

    def test_tricks_reach_only_the_configured_upstream(self):
        _, (path,) = self.start(self.endpoint())
        refused = [
            (b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400, b"paths only"),
            (b"GET https://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400, b"paths only"),
            (b"GET https://u@evil.example/ HTTP/1.1\r\n\r\n", 400, b"paths only"),
            (b"GET evil.example:443 HTTP/1.1\r\n\r\n", 400, b"paths only"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", 400, b"paths only"),
            (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 405, b"CONNECT"),
            (b"TRACE / HTTP/1.1\r\n\r\n", 405, b"forwards"),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n folded: b\r\n\r\n", 400, b"malformed"),
            (b"GET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400, b"malformed"),
            (b"GET /x\x1b HTTP/1.1\r\n\r\n", 400, b"ASCII"),
            (b"GET /x HTTP/2.0\r\n\r\n", 505, b"HTTP/1.1"),
            (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, b"both"),
            (b"POST /x HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400, b"Content-Length"),
            (b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, b"chunked"),
            (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (cb.BROKER_MAX_BODY + 1), 413, b"over"),
        ]
        for request, status, words in refused:
            with self.subTest(request=request[:40]):
                got, headers, body = raw_exchange(path, request)
                self.assertEqual(got, status)
                self.assertIn(words, body)
                self.assertEqual(body.count(b"\n"), 1)
                self.assertEqual(headers_named(headers, "Connection"), ["close"])
        self.assertEqual(self.eq.upstream.requests, [])
        self.assertEqual(self.eq.proxy.targets, [])
        # Paths that look like other hosts are just paths on the configured one.
        for target in (b"/@evil.example/x", b"//evil.example/x", b"/%40evil.example:443/x"):
            with self.subTest(target=target):
                got, _, _ = raw_exchange(path, b"GET %s HTTP/1.1\r\nHost: evil.example\r\n"
                                               b"X-Forwarded-Host: evil.example\r\n\r\n" % target)
                self.assertEqual(got, 200)
        self.assertEqual([r[1] for r in self.eq.upstream.requests],
                         ["/@evil.example/x", "//evil.example/x", "/%40evil.example:443/x"])
        for _, _, headers, _ in self.eq.upstream.requests:
            self.assertEqual(headers_named(headers, "Host"), [f"{UPSTREAM_NAME}:{self.eq.port}"])
        self.assertEqual(set(self.eq.proxy.targets), {f"CONNECT {UPSTREAM_NAME}:{self.eq.port}"})

    def test_a_redirect_comes_back_unchanged_and_is_not_followed(self):
        _, (path,) = self.start(self.endpoint())
        resp, body = self.get(path, "/redirect")
        self.assertEqual((resp.status, resp.getheader("Location"), body), (302, "https://evil.example/x", b""))
        self.assertEqual(len(self.eq.upstream.requests), 1)
        self.assertEqual(self.eq.proxy.targets, [f"CONNECT {UPSTREAM_NAME}:{self.eq.port}"])

    def test_server_sent_events_arrive_as_they_are_sent(self):
        _, (path,) = self.start(self.endpoint())
        self.eq.upstream.last_event.clear()
        conn = UnixHTTPConnection(path)
        self.addCleanup(conn.close)
        conn.request("POST", "/stream", body=b'{"stream": true}')
        resp = conn.getresponse()
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(resp.getheader("Content-Type"), "text/event-stream")
        first = resp.read1(100)
        self.assertEqual(first, b"data: 0\n\n")
        self.assertFalse(self.eq.upstream.last_event.is_set(), "the first event came only after the last was sent")
        rest = resp.read()
        self.assertEqual(first + rest, b"".join(b"data: %d\n\n" % i for i in range(5)))

    def test_keep_alive_carries_many_requests_over_one_tunnel(self):
        _, (path,) = self.start(self.endpoint())
        conn = UnixHTTPConnection(path)
        self.addCleanup(conn.close)
        for i in range(3):
            conn.request("GET", f"/echo/{i}", headers={"x-api-key": "placeholder"})
            resp = conn.getresponse()
            self.assertEqual((resp.status, json.loads(resp.read())), (200, {"path": f"/echo/{i}"}))
        conn.request("HEAD", "/echo/head")
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b""))
        self.assertEqual(len(self.eq.upstream.requests), 4)
        self.assertEqual(len(self.eq.proxy.targets), 1)

    def test_a_kept_connection_the_upstream_closed_is_replaced(self):
        _, (path,) = self.start(self.endpoint())
        conn = UnixHTTPConnection(path)
        self.addCleanup(conn.close)
        for target in ("/drop", "/echo", "/close-delimited", "/echo"):
            conn.request("GET", target)
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            resp.read()
        self.assertEqual(len(self.eq.upstream.requests), 4)
        self.assertEqual(len(self.eq.proxy.targets), 3)

    def test_a_body_without_length_is_reframed_as_chunked(self):
        _, (path,) = self.start(self.endpoint())
        status, headers, body = raw_exchange(path, b"GET /close-delimited HTTP/1.1\r\n\r\n")
        self.assertEqual((status, body), (200, b"until the end"))
        self.assertEqual(headers_named(headers, "Transfer-Encoding"), ["chunked"])
        status, headers, body = raw_exchange(path, b"GET /close-delimited HTTP/1.0\r\n\r\n")
        self.assertEqual((status, body), (200, b"until the end"))
        self.assertEqual(headers_named(headers, "Transfer-Encoding"), [])
        self.assertEqual(headers_named(headers, "Connection"), ["close"])

    def test_a_chunked_request_body_goes_up_with_its_length_and_hop_by_hop_headers_do_not(self):
        _, (path,) = self.start(self.endpoint())
        request = (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Drop\r\n"
                   b"X-Drop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n"
                   b"Upgrade: websocket\r\nExpect: 100-continue\r\nX-Keep: 2\r\n\r\n"
                   b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(request)
            reader = s.makefile("rb")
            self.assertEqual(reader.readline(), b"HTTP/1.1 100 Continue\r\n")
            self.assertEqual(reader.readline(), b"\r\n")
            self.assertTrue(reader.readline().startswith(b"HTTP/1.1 200 "))
        _, _, headers, body = self.only_request()
        self.assertEqual(body, b"hello world")
        self.assertEqual(headers_named(headers, "Content-Length"), ["11"])
        self.assertEqual(headers_named(headers, "X-Keep"), ["2"])
        for name in ("Transfer-Encoding", "Connection", "X-Drop", "Keep-Alive", "Proxy-Authorization", "TE",
                     "Upgrade", "Expect", "X-Trailer"):
            self.assertEqual(headers_named(headers, name), [], name)

    def test_a_certificate_from_an_unknown_ca_is_a_502_that_names_the_host(self):
        endpoints = self.endpoint(credential(), ca_file=str(self.eq.dir / "other-ca.pem"))
        _, (path,) = self.start(endpoints)
        resp, body = self.get(path, "/echo", {"Authorization": "Bearer placeholder"})
        self.assertEqual(resp.status, 502)
        text = body.decode()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertIn(f"https://{UPSTREAM_NAME}:{self.eq.port}", text)
        self.assertIn("certificate verify failed", text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn("Bearer", text)
        self.assertEqual(self.eq.upstream.requests, [])

    def test_a_refused_tunnel_is_a_502(self):
        endpoints = self.endpoint(credential(), upstream=("elsewhere.test", 443))
        _, (path,) = self.start(endpoints)
        resp, body = self.get(path, "/echo")
        self.assertEqual(resp.status, 502)
        self.assertIn(b"https://elsewhere.test:443", body)
        self.assertIn(b"403", body)
        self.assertEqual(self.eq.proxy.targets, ["CONNECT elsewhere.test:443"])

    def test_the_system_trust_store_honours_ssl_cert_file(self):
        endpoints = self.endpoint(credential(), ca_file=None)
        _, (path,) = self.start(endpoints)
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": self.ca}):  # read when the first request loads the CAs
            resp, _ = self.get(path, "/echo")
        self.assertEqual(resp.status, 200)

    def test_no_proxy_yet_is_a_503_and_nothing_leaves(self):
        _, (path,) = self.start(self.endpoint(), proxy=False)
        resp, body = self.get(path, "/echo")
        self.assertEqual(resp.status, 503)
        self.assertIn(b"no proxy", body)
        self.assertEqual(self.eq.proxy.targets, [])

    def test_stats_and_log_lines_count_requests_without_secrets(self):
        endpoints = self.endpoint(environ={"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        broker, (path,) = self.start(endpoints, {"ANTHROPIC_API_KEY": SECRET})
        self.get(path, "/echo/a")
        self.get(path, "/redirect")
        raw_exchange(path, b"GET http://evil.example/ HTTP/1.1\r\n\r\n")
        self.assertEqual(broker.stats(), [{"host": "api.anthropic.com", "env": "ANTHROPIC_API_KEY", "requests": 3,
                                           "status": {200: 1, 302: 1, 400: 1}}])
        self.assertEqual(self.lines, ["broker: GET api.anthropic.com /echo/a 200",
                                      "broker: GET api.anthropic.com /redirect 302",
                                      "broker: GET api.anthropic.com http://evil.example/ 400"])

    def test_sockets_are_named_by_endpoint_private_and_removed_at_close(self):
        endpoints = self.endpoint(environ={"ANTHROPIC_API_KEY": SECRET})
        endpoints += [e._replace(index=1) for e in self.endpoint(credential())]
        broker, paths = self.start(endpoints)
        self.assertEqual(paths, [os.path.join(self.sockdir, "broker-0.sock"),
                                 os.path.join(self.sockdir, "broker-1.sock")])
        expected = 0o600  # the agent is the user running claude-bottle: the socket stays private to it
        for p in paths:
            self.assertEqual((os.stat(p).st_mode & 0o777, os.stat(p).st_uid), (expected, os.getuid()))
        resp, _ = self.get(paths[1], "/echo")
        self.assertEqual(headers_named(self.only_request()[2], "Authorization"), [f"Bearer {SECRET}"])
        broker.close()
        broker.close()
        self.assertFalse(any(os.path.exists(p) for p in paths))
        with self.assertRaises(OSError):
            raw_exchange(paths[0], b"GET / HTTP/1.1\r\n\r\n")

    def test_a_broker_without_a_secret_for_an_endpoint_refuses_to_start(self):
        with self.assertRaises(cb.BottleError) as e:
            cb.CredentialBroker(self.endpoint(), {}, self.sockdir)
        self.assertIn("ANTHROPIC_API_KEY", str(e.exception))


# ---- The forwarder in the bottle: 127.0.0.1:PORT to a Unix socket ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EchoServer:
    """A Unix socket that echoes what it gets and, when the client half-closes, adds b"|eof" and closes."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.sendall(b"|eof")
            except OSError:
                pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ForwarderTest(unittest.TestCase):
    def test_every_tool_on_this_machine_forwards_both_ways_with_half_close(self):
        for tool in cb.FORWARDER_TOOLS:
            with self.subTest(tool=tool):
                if shutil.which(tool) is None:
                    self.skipTest(f"{tool} is not installed here")
                self.check_tool(tool)

    def check_tool(self, tool):
        tmp = tempfile.TemporaryDirectory(prefix="cb-fwd-")
        self.addCleanup(tmp.cleanup)
        pairs = []
        for i in range(2):
            path = os.path.join(tmp.name, f"broker {i}.sock")  # a space: the paths are quoted
            server = EchoServer(path)
            self.addCleanup(server.close)
            pairs.append((free_port(), path))
        proc = subprocess.Popen(["/bin/sh", "-c", cb.forwarder_script(tool, pairs)], start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.stop_group, proc.pid)
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 0, err)
        for port, _ in pairs:
            # The script returned, so the port accepts now; a connection carries bytes both ways, twice.
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"hello")
                    self.assertEqual(c.recv(5), b"hello")
                    c.sendall(b" again")
                    c.shutdown(socket.SHUT_WR)
                    got = b""
                    while data := c.recv(65536):
                        got += data
                    self.assertEqual(got, b" again|eof")

    @staticmethod
    def stop_group(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def test_a_port_that_never_comes_up_fails_the_script(self):
        # A bound socket that does not listen: the forwarder cannot bind the port and nothing accepts on it.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            for tool in cb.FORWARDER_TOOLS:
                with self.subTest(tool=tool):
                    if shutil.which(tool) is None:
                        self.skipTest(f"{tool} is not installed here")
                    script = cb.forwarder_script(tool, [(port, "/nonexistent/broker.sock")], wait=0.3)
                    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=20,
                                          start_new_session=True)
                    self.assertEqual(proc.returncode, 1)
                    self.assertEqual(proc.stderr, f"claude-bottle: the broker forwarder on 127.0.0.1:{port} "
                                                  f"did not start\n")

    def test_the_socat_script(self):
        self.assertEqual(cb.forwarder_script("socat", [(41000, "/run/claude-bottle/broker 0.sock")], wait=0.1), (
            "socat TCP-LISTEN:41000,bind=127.0.0.1,fork,reuseaddr 'UNIX-CONNECT:/run/claude-bottle/broker 0.sock' "
            ">/dev/null 2>&1 &\n"
            "i=0\n"
            "until socat -u /dev/null TCP:127.0.0.1:41000 >/dev/null 2>&1; do\n"
            '  i=$((i + 1)); if [ "$i" -gt 2 ]; then\n'
            "    echo 'claude-bottle: the broker forwarder on 127.0.0.1:41000 did not start' >&2; exit 1\n"
            "  fi; sleep 0.05\n"
            "done\n"))

    def test_an_unknown_tool_is_refused(self):
        with self.assertRaises(ValueError):
            cb.forwarder_script("bash", [(1, "/x")])


# ---- The bench: added latency per request ----

def bench(n: int = 50) -> None:
    eq = Equipment()
    tmp = tempfile.TemporaryDirectory(prefix="cb-broker-bench-")
    try:
        cred = credential(upstream=(UPSTREAM_NAME, eq.port), ca_file=str(eq.dir / "ca.pem"))
        endpoints = cb.brokered_endpoints([cred], {"GITHUB_TOKEN": SECRET})
        broker = cb.CredentialBroker(endpoints, {"GITHUB_TOKEN": SECRET}, tmp.name, log=lambda line: None)
        (path,) = broker.start()
        broker.set_proxy(eq.proxy.server_address)
        direct = http.client.HTTPSConnection(*eq.proxy.server_address, context=ssl.create_default_context(
            cafile=str(eq.dir / "ca.pem")))
        direct.set_tunnel(UPSTREAM_NAME, eq.port)
        conns = {"direct": direct, "broker": UnixHTTPConnection(path)}
        times = {name: [] for name in conns}
        for i in range(n + 5):
            for name, conn in conns.items():  # interleaved, so a busy moment weighs on both alike
                start = time.perf_counter()
                conn.request("GET", "/echo", headers={"Authorization": "Bearer x"})
                conn.getresponse().read()
                if i >= 5:  # the first requests open the tunnels
                    times[name].append(time.perf_counter() - start)
        for conn in conns.values():
            conn.close()
        timings = {name: statistics.median(t) for name, t in times.items()}
        broker.close()
        print(f"median of {n} requests over one kept connection: straight through the proxy "
              f"{timings['direct'] * 1000:.3f} ms, through broker and proxy {timings['broker'] * 1000:.3f} ms, "
              f"added {(timings['broker'] - timings['direct']) * 1000:.3f} ms")
    finally:
        eq.close()
        tmp.cleanup()


if __name__ == "__main__":
    if sys.argv[1:] == ["bench"]:
        bench()
    else:
        unittest.main()
