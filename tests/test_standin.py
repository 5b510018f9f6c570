"""Tests of the pipelock stand-in (tests/e2e/standin/pipelock), on the host, without Docker.

The stand-in replaces the real pipelock in the end-to-end tests, so these tests pin it to the real one's contract
(shared/reference/pipelock.md). Each proxy runs as a subprocess on 127.0.0.1; upstream servers run in this process
on 127.0.0.1 too, so no traffic leaves the loopback interface and no name outside /etc/hosts is ever resolved.
"""

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "e2e" / "standin" / "pipelock"
PYTHON = None  # an interpreter with PyYAML, found by setUpModule
WEB_BODY = b"hello from web\n"


def _find_python():
    for candidate in ("/usr/bin/python3", sys.executable, shutil.which("python3")):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import yaml"], capture_output=True)
            if probe.returncode == 0:
                return candidate
    return None


# ---- Upstream servers (in this process, loopback only) ----

class _WebHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(WEB_BODY)))
        self.end_headers()
        self.wfile.write(WEB_BODY)

    def log_message(self, *args):
        pass


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _DiscardHandler(socketserver.BaseRequestHandler):
    def handle(self):
        with contextlib.suppress(OSError):
            while self.request.recv(65536):
                pass


class _Servers:
    def __init__(self):
        self.servers = []

    def start(self, server):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.servers.append(server)
        return server.server_address[1]

    def stop(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


SERVERS = _Servers()
WEB = ECHO = DISCARD = 0


def setUpModule():
    global PYTHON, WEB, ECHO, DISCARD
    PYTHON = _find_python()
    if PYTHON is None:
        reason = "no python3 with PyYAML to run the pipelock stand-in (apt-get install python3-yaml)"
        if os.environ.get("CI"):
            raise RuntimeError(reason)
        raise unittest.SkipTest(reason)
    WEB = SERVERS.start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WebHandler))
    ECHO = SERVERS.start(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler))
    DISCARD = SERVERS.start(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DiscardHandler))


def tearDownModule():
    SERVERS.stop()


# ---- Driving the stand-in ----

def _env():
    return dict(os.environ, PYTHONDONTWRITEBYTECODE="1")


def pipelock(*args, timeout=10):
    return subprocess.run([PYTHON, str(STANDIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env())


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_text(allowlist, trusted=(), forward=True, max_tunnel=60, idle=60, rate=6000):
    lines = ["version: 1", "mode: strict", f"api_allowlist: {json.dumps(list(allowlist))}"]
    if trusted:
        lines.append(f"trusted_domains: {json.dumps(list(trusted))}")
    lines += ["fetch_proxy:", '  listen: "127.0.0.1:1"', "  monitoring:", f"    max_requests_per_minute: {rate}"]
    if forward:
        lines += ["forward_proxy:", "  enabled: true", f"  max_tunnel_seconds: {max_tunnel}",
                  f"  idle_timeout_seconds: {idle}"]
    return "\n".join(lines) + "\n"


class StandIn:
    """One running stand-in; its stdout event lines are collected as they come."""

    def __init__(self, text):
        self.dir = tempfile.mkdtemp(prefix="standin-test-")
        self.path = os.path.join(self.dir, "pipelock.yaml")
        self.write(text)
        self.port = free_port()
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [PYTHON, str(STANDIN), "run", "--config", self.path, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def write(self, text):
        # Write-then-rename, as pipelock's docs ask for hot reload.
        tmp = self.path + ".new"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, self.path)

    def _collect(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def _wait_healthy(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}: {self.proc.stderr.read()}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.02)
        raise AssertionError("stand-in not healthy within 10 s")

    def events(self, name=None):
        with self.cond:
            lines = list(self.lines)
        return [e for e in map(json.loads, lines) if name is None or e["event"] == name]

    def wait_event(self, name, timeout=5.0, after=0, **fields):
        """The first event `name` with these fields among the event lines from index `after` on."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    event = json.loads(line)
                    if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {name} event with {fields} in {self.lines[after:]}")
                self.cond.wait(remaining)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(5)
            self.proc.stdout.close()
            self.proc.stderr.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def read_all(sock):
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def http_via(port, url, method="GET"):
    """Send one absolute-URI request through the proxy: (status, body)."""
    host = url.split("/")[2]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n".encode())
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def connect_via(port, target):
    """CONNECT through the proxy: (status line, body, socket); the socket is the tunnel when the status is 200."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n")[0].decode()
    body = "" if " 200 " in status else read_all(sock).decode()
    return status, body, sock


def client_hello(server_name):
    """The bytes of a real TLS ClientHello carrying `server_name` as SNI."""
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def time_until_closed(sock, limit=10.0, send=None, every=0.1):
    """Seconds until the proxy closes the tunnel, optionally sending `send` every `every` s meanwhile."""
    started = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - started < limit:
        try:
            if send:
                sock.sendall(send)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"tunnel still open after {limit} s")


# ---- Config and CLI ----

class ConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="standin-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def check(self, text, *args):
        path = os.path.join(self.dir, "pipelock.yaml")
        with open(path, "w") as fh:
            fh.write(text)
        return pipelock("check", "--config", path, *args)

    def assert_invalid(self, text, message):
        result = self.check(text)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(message, result.stderr)
        self.assertNotIn("Config validation: OK", result.stdout)

    def test_valid_config_prints_ok_and_summary(self):
        result = self.check(config_text(["a.example"], ["a.example"], max_tunnel=14400, idle=1800))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[0], "Config validation: OK")
        self.assertIn("max tunnel 14400s, idle 1800s", result.stdout)

    def test_defaults_when_absent(self):
        result = self.check("mode: strict\napi_allowlist: [a.example]\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        for text in ("listen: 127.0.0.1:8888", "rate limit: 60/min", "forward_proxy: disabled",
                     "max tunnel 300s, idle 120s"):
            self.assertIn(text, result.stdout)

    def test_unknown_field_is_an_error_with_line(self):
        self.assert_invalid("version: 1\nmode: strict\nbogus_field: 1\napi_allowlist: [a]\n",
                            "yaml: unmarshal errors: line 3: field bogus_field not found in type config.Config")

    def test_unknown_nested_field_is_an_error(self):
        self.assert_invalid("mode: strict\napi_allowlist: [a]\nforward_proxy:\n  enabled: true\n  sni: false\n",
                            "line 5: field sni not found in type config.ForwardProxy")

    def test_second_document_is_an_error(self):
        self.assert_invalid("mode: strict\napi_allowlist: [a]\n---\nmode: strict\n", "multiple YAML documents")

    def test_mode_must_be_strict(self):
        self.assert_invalid("mode: balanced\napi_allowlist: [a]\n", 'mode "balanced" is not supported')
        self.assert_invalid("api_allowlist: [a]\n", 'mode "" is not supported')

    def test_allowlist_must_be_a_non_empty_list_of_strings(self):
        self.assert_invalid("mode: strict\napi_allowlist: []\n", "requires a non-empty api_allowlist")
        self.assert_invalid("mode: strict\n", "requires a non-empty api_allowlist")
        self.assert_invalid("mode: strict\napi_allowlist: a.example\n", "cannot unmarshal !!str `a.example` into []")
        self.assert_invalid("mode: strict\napi_allowlist: [[a]]\n", "cannot unmarshal !!seq into string")

    def test_wrong_scalar_type_is_an_error(self):
        self.assert_invalid("mode: strict\napi_allowlist: [a]\nforward_proxy:\n  max_tunnel_seconds: long\n",
                            "line 4: cannot unmarshal !!str `long` into int")

    def test_unreadable_file(self):
        result = pipelock("check", "--config", os.path.join(self.dir, "missing.yaml"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("missing.yaml: no such file or directory", result.stderr)

    def test_run_refuses_an_invalid_config(self):
        path = os.path.join(self.dir, "pipelock.yaml")
        with open(path, "w") as fh:
            fh.write("mode: strict\napi_allowlist: [a]\nbogus: 1\n")
        result = pipelock("run", "--config", path, "--listen", f"127.0.0.1:{free_port()}")
        self.assertEqual(result.returncode, 1)
        self.assertIn("field bogus not found in type config.Config", result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(pipelock("run").returncode, 1)

    def test_check_url_allowlist_semantics(self):
        allowlist = ["api.example.com", "*.Example.org", "git.example.net:22", "*", "a.*.com", "10.0.0.1",
                     "dotted.example.io."]
        text = config_text(allowlist)
        cases = {
            "https://api.example.com/": True,
            "https://API.Example.COM./x": True,  # case-insensitive, trailing dot ignored
            "https://sub.api.example.com/": False,  # a plain entry does not cover subdomains
            "https://example.org/": True,  # `*.domain` covers the apex
            "https://deep.sub.example.ORG/": True,
            "https://badexample.org/": False,
            "ssh://git.example.net:22": False,  # `host:port` entries never match
            "https://anything.example/": False,  # neither does a bare `*`
            "https://a.b.com/": False,  # nor an inner wildcard
            "http://10.0.0.1/": True,  # IP entries match the exact IP
            "http://10.0.0.2/": False,
            "dotted.example.io": True,
        }
        for url, allowed in cases.items():
            with self.subTest(url=url):
                result = self.check(text, "--url", url)
                self.assertEqual(result.returncode, 0 if allowed else 1, result.stdout + result.stderr)
                self.assertIn(f"{'ALLOWED' if allowed else 'BLOCKED'}: {url}", result.stdout)

    def test_healthcheck_without_a_listener_fails(self):
        addr = f"127.0.0.1:{free_port()}"
        result = pipelock("healthcheck", "--addr", addr)
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("health check failed: "), result.stderr)
        self.assertIn("connection refused", result.stderr)


# ---- The proxy ----

class ProxyTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        allowlist = ["127.0.0.1", "127.0.0.4", "*.LocalHost", "*", f"127.0.0.3:{WEB}"]
        cls.config = config_text(allowlist, trusted=["127.0.0.1", "localhost"])
        cls.pl = StandIn(cls.config)

    @classmethod
    def tearDownClass(cls):
        cls.pl.stop()

    def test_startup_event_and_listen_override(self):
        startup = self.pl.wait_event("startup")
        self.assertEqual(startup["listen"], f"127.0.0.1:{self.pl.port}")
        self.assertEqual(startup["mode"], "strict")
        self.assertTrue(startup["version"])
        self.assertEqual(startup["config_hash"], hashlib.sha256(self.config.encode()).hexdigest())
        self.assertEqual(self.pl.events("anomaly"), [], "a loopback listener is no anomaly")

    def test_event_lines_are_json_with_the_common_fields(self):
        http_via(self.pl.port, f"http://127.0.0.2:{WEB}/")
        self.pl.wait_event("blocked", url=f"http://127.0.0.2:{WEB}/")
        for event in self.pl.events():
            for key in ("level", "component", "event", "time", "message"):
                self.assertIn(key, event)
            self.assertEqual(event["component"], "pipelock")

    def test_health_endpoint_and_healthcheck_command(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.pl.port, timeout=5)
        conn.request("GET", "/health")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.read())["status"], "healthy")
        result = pipelock("healthcheck", "--addr", f"127.0.0.1:{self.pl.port}")
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))

    def test_plain_http_allowed(self):
        url = f"http://127.0.0.1:{WEB}/allowed"
        self.assertEqual(http_via(self.pl.port, url), (200, WEB_BODY.decode()))
        event = self.pl.wait_event("forward_http", url=url)
        self.assertEqual((event["method"], event["status"]), ("GET", 200))

    def test_plain_http_blocked(self):
        url = f"http://127.0.0.2:{WEB}/blocked"
        status, body = http_via(self.pl.port, url)
        self.assertEqual((status, body.strip()), (403, "blocked: domain not in allowlist: 127.0.0.2"))
        event = self.pl.wait_event("blocked", url=url)
        self.assertEqual((event["method"], event["scanner"], event["client_ip"]), ("GET", "allowlist", "127.0.0.1"))
        self.assertEqual(event["reason"], "domain not in allowlist: 127.0.0.2")
        self.assertTrue(event["request_id"].startswith("req-"))

    def test_wildcard_covers_the_apex_in_any_case(self):
        self.assertEqual(http_via(self.pl.port, f"http://LocalHost.:{WEB}/")[0], 200)

    def test_connect_allowed_tunnels_bytes(self):
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")
        self.pl.wait_event("tunnel_open", target=f"127.0.0.1:{ECHO}")
        close = self.pl.wait_event("tunnel_close", target=f"127.0.0.1:{ECHO}", total_bytes=8)
        self.assertIsInstance(close["duration_ms"], int)

    def test_connect_blocked(self):
        status, body, sock = connect_via(self.pl.port, f"127.0.0.2:{ECHO}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertEqual(body.strip(), "CONNECT blocked: domain not in allowlist: 127.0.0.2")
        event = self.pl.wait_event("blocked", target=f"127.0.0.2:{ECHO}")
        self.assertEqual((event["method"], event["scanner"]), ("CONNECT", "allowlist"))

    def test_host_port_entry_and_bare_star_never_match(self):
        status, body, sock = connect_via(self.pl.port, f"127.0.0.3:{WEB}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertIn("domain not in allowlist: 127.0.0.3", body)

    def test_ssrf_refuses_allowed_but_untrusted_private_address(self):
        status, body = http_via(self.pl.port, f"http://127.0.0.4:{WEB}/")
        self.assertEqual((status, body.strip()),
                         (403, "blocked: SSRF blocked: 127.0.0.4 resolves to internal IP 127.0.0.4"))
        status, body, sock = connect_via(self.pl.port, f"127.0.0.4:{ECHO}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertEqual(body.strip(), "CONNECT blocked: SSRF blocked: 127.0.0.4 resolves to internal IP 127.0.0.4")
        event = self.pl.wait_event("blocked", target=f"127.0.0.4:{ECHO}")
        self.assertEqual(event["scanner"], "ssrf")

    def test_tls_client_hello_with_matching_sni_passes(self):
        hello = client_hello("localhost")
        status, _, sock = connect_via(self.pl.port, f"localhost:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            sock.sendall(hello)
            echoed = b""
            while len(echoed) < len(hello):
                echoed += sock.recv(65536)
        self.assertEqual(echoed, hello)

    def test_tls_client_hello_with_other_sni_is_closed(self):
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            sock.sendall(client_hello("elsewhere.example"))
            self.assertEqual(read_all(sock), b"")
        self.pl.wait_event("sni_mismatch", category="mismatch", connect_host="127.0.0.1")

    def test_malformed_tls_record_is_closed(self):
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            sock.sendall(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # a handshake record, not a ClientHello
            self.assertEqual(read_all(sock), b"")
        self.pl.wait_event("sni_mismatch", category="malformed_tls", connect_host="127.0.0.1")

    def test_silent_client_is_closed_after_the_sni_peek(self):
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{DISCARD}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            waited = time_until_closed(sock)
        self.assertGreater(waited, 4)
        self.pl.wait_event("sni_mismatch", category="timeout", connect_host="127.0.0.1")


class NameAndRateTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pl = StandIn(config_text(["localhost", "127.0.0.1"], rate=3))

    @classmethod
    def tearDownClass(cls):
        cls.pl.stop()

    def test_ssrf_checks_what_a_name_resolves_to(self):
        status, body = http_via(self.pl.port, f"http://localhost:{WEB}/")
        self.assertEqual((status, body.strip()), (403, "blocked: SSRF blocked: localhost resolves to internal IP "
                                                       "127.0.0.1"))

    def test_rate_limit_per_domain(self):
        statuses = [http_via(self.pl.port, f"http://127.0.0.1:{WEB}/{n}")[0] for n in range(4)]
        self.assertEqual(statuses, [403, 403, 403, 429])
        self.pl.wait_event("blocked", scanner="ratelimit", url=f"http://127.0.0.1:{WEB}/3")


class DisabledForwardProxyTests(unittest.TestCase):
    def test_forward_proxy_off_by_default(self):
        pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"], forward=False))
        try:
            self.assertEqual(http_via(pl.port, f"http://127.0.0.1:{WEB}/")[0], 405)
            status, _, sock = connect_via(pl.port, f"127.0.0.1:{ECHO}")
            sock.close()
            self.assertIn(" 405 ", status)
        finally:
            self.assertEqual(pl.stop(), 0)


class TunnelLifetimeTests(unittest.TestCase):
    def test_max_tunnel_seconds_cuts_a_busy_tunnel(self):
        pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"], max_tunnel=1, idle=30))
        try:
            status, _, sock = connect_via(pl.port, f"127.0.0.1:{ECHO}")
            with sock:
                self.assertEqual(status, "HTTP/1.1 200 Connection Established")
                lasted = time_until_closed(sock, send=b"x")
            self.assertTrue(0.5 < lasted < 3, lasted)
            close = pl.wait_event("tunnel_close")
            self.assertGreaterEqual(close["duration_ms"], 900)
            self.assertGreater(close["total_bytes"], 0)
        finally:
            pl.stop()

    def test_idle_timeout_cuts_a_quiet_tunnel_and_counts_per_direction(self):
        pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"], max_tunnel=30, idle=1))
        try:
            status, _, sock = connect_via(pl.port, f"127.0.0.1:{ECHO}")
            with sock:
                self.assertEqual(status, "HTTP/1.1 200 Connection Established")
                sock.sendall(b"hello")
                self.assertEqual(sock.recv(5), b"hello")
                quiet = time_until_closed(sock)
            self.assertTrue(0.5 < quiet < 3, quiet)
            # Upload only: the upstream-to-client direction idles, which closes the tunnel however busy the other.
            status, _, sock = connect_via(pl.port, f"127.0.0.1:{DISCARD}")
            with sock:
                self.assertEqual(status, "HTTP/1.1 200 Connection Established")
                lasted = time_until_closed(sock, send=b"x")
            self.assertTrue(0.5 < lasted < 3, lasted)
        finally:
            pl.stop()


class ReloadAndSignalTests(unittest.TestCase):
    def test_reload_applies_allowlist_but_refuses_new_trusted_domains(self):
        pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"]))
        try:
            url = f"http://localhost:{WEB}/"
            self.assertIn("domain not in allowlist", http_via(pl.port, url)[1])
            mark = len(pl.events())
            pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1"]))
            pl.proc.send_signal(signal.SIGHUP)
            pl.wait_event("config_reload", after=mark, status="applied")
            self.assertIn("SSRF blocked: localhost", http_via(pl.port, url)[1])
            mark = len(pl.events())
            pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1", "localhost"]))
            pl.proc.send_signal(signal.SIGHUP)
            pl.wait_event("config_reload", after=mark, status="rejected")
            self.assertIn("SSRF blocked: localhost", http_via(pl.port, url)[1])
            mark = len(pl.events())
            pl.write("mode: strict\napi_allowlist: [a]\nbogus: 1\n")
            pl.proc.send_signal(signal.SIGHUP)
            pl.wait_event("config_reload", after=mark, status="error")
            self.assertIn("SSRF blocked: localhost", http_via(pl.port, url)[1])
        finally:
            pl.stop()

    def test_sigterm_exits_promptly_and_cleanly(self):
        pl = StandIn(config_text(["127.0.0.1"]))
        started = time.monotonic()
        self.assertEqual(pl.stop(), 0)
        self.assertLess(time.monotonic() - started, 3)


if __name__ == "__main__":
    unittest.main()
