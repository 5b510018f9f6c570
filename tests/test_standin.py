"""Tests of the pipelock stand-in (tests/e2e/standin/pipelock), on the host, without Docker.

The stand-in replaces the real pipelock in the end-to-end tests, so these tests pin it to the real one's contract
(shared/reference/pipelock.md) and its event lines to the real 2.3.0's (fixtures/pipelock-2.3.0-events.jsonl, copied
verbatim from shared/reference/pipelock-events.md): same event names, same keys in the same order, same constant
values. Each proxy runs as a subprocess on 127.0.0.1; upstream servers run in this process
on 127.0.0.1 too, so no traffic leaves the loopback interface and no name outside /etc/hosts is ever resolved.
"""

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
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
REAL_EVENTS = Path(__file__).resolve().parent.parent / "fixtures" / "pipelock-2.3.0-events.jsonl"
PYTHON = None  # an interpreter with PyYAML, found by setUpModule
WEB_BODY = b"hello from web\n"


def _find_python():
    for candidate in ("/usr/bin/python3", sys.executable, shutil.which("python3")):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import yaml"], capture_output=True)
            if probe.returncode == 0:
                return candidate
    return None


# ---- The real pipelock's event lines ----

REAL = [json.loads(line) for line in REAL_EVENTS.read_text().splitlines()]
# Keys whose value is the same on every line of one kind, whatever the request; the rest (addresses, ids, hosts,
# sizes, times, hashes) vary, so only their JSON type is compared.
RELOAD = "CONFIG_RELOAD"
CONSTANT = ("level", "component", "event", "message", "method", "scanner", "mitre_technique", "agent", "mode",
            "status", "detail", "category")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # zerolog's RFC 3339, UTC, whole seconds


def real(event, **fields):
    """The real line of this kind: the fixture's line with this event name and these field values."""
    [line] = [e for e in REAL if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]
    return line


def json_type(value):
    return {str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), type(value).__name__)


def assert_like_real(test, event, model, constant=()):
    """`event` (a stand-in line) has exactly `model`'s keys (a real line) in the same order, the same values for
    the keys that are constant for a kind, values of the same JSON types, and a time written the same way."""
    test.assertEqual(list(event), list(model), f"keys of {event} differ from the real {model}")
    for key in (*CONSTANT, *constant):
        if key in model:
            test.assertEqual(event[key], model[key], f"{key} of {event}")
    test.assertEqual({k: json_type(v) for k, v in event.items()}, {k: json_type(v) for k, v in model.items()})
    test.assertRegex(event["time"], TIME)


def like(model, rename=None, **values):
    """A real line with keys renamed ({old: new}, order kept) and some values changed: the model for a stand-in line
    of a kind the recorded log has no line of (a plain-HTTP dial error)."""
    rename = rename or {}
    return {rename.get(k, k): values.get(rename.get(k, k), v) for k, v in model.items()}


# ---- Upstream servers (in this process, loopback only) ----

class _WebHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(WEB_BODY)))
        self.end_headers()
        self.wfile.write(WEB_BODY)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

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


def config_text(allowlist, trusted=(), forward=True, max_tunnel=60, idle=60, rate=6000, dlp=None):
    lines = ["version: 1", "mode: strict", f"api_allowlist: {json.dumps(list(allowlist))}"]
    if trusted:
        lines.append(f"trusted_domains: {json.dumps(list(trusted))}")
    lines += ["fetch_proxy:", '  listen: "127.0.0.1:1"', "  monitoring:", f"    max_requests_per_minute: {rate}"]
    if forward:
        lines += ["forward_proxy:", "  enabled: true", f"  max_tunnel_seconds: {max_tunnel}",
                  f"  idle_timeout_seconds: {idle}"]
    if dlp:
        lines += ["request_body_scanning:", *(f"  {k}: {v}" for k, v in dlp.items())]
    return "\n".join(lines) + "\n"


class StandIn:
    """One running stand-in; its stdout event lines and stderr lines are collected as they come."""

    def __init__(self, text, host="127.0.0.1"):
        self.dir = tempfile.mkdtemp(prefix="standin-test-")
        self.path = os.path.join(self.dir, "pipelock.yaml")
        self.write(text)
        self.port = free_port()
        self.lines, self.errors = [], []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [PYTHON, str(STANDIN), "run", "--config", self.path, "--listen", f"{host}:{self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=_env())
        self.readers = [threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))]
        for reader in self.readers:
            reader.start()
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

    def _collect(self, stream, lines):
        for line in stream:
            with self.cond:
                lines.append(line)
                self.cond.notify_all()

    def _wait_healthy(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.readers[1].join(5)
                raise AssertionError(f"stand-in exited {self.proc.returncode}: {''.join(self.errors)}")
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
        def match(line):
            event = json.loads(line)
            return event if event["event"] == name and all(event.get(k) == v for k, v in fields.items()) else None
        return self._wait(self.lines, match, timeout, after, f"no {name} event with {fields}")

    def wait_stderr(self, text, timeout=5.0, after=0):
        """The first stderr line (from index `after` on) that contains `text`."""
        return self._wait(self.errors, lambda line: line if text in line else None, timeout, after,
                          f"no stderr line with {text!r}")

    def _wait(self, lines, match, timeout, after, failure):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in lines[after:]:
                    if found := match(line):
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{failure} in {lines[after:]}")
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
            for reader in self.readers:
                reader.join(5)
            self.proc.stdout.close()
            self.proc.stderr.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def read_all(sock):
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def http_via(port, url, method="GET", headers=(), body=None):
    """Send one absolute-URI request through the proxy: (status, body)."""
    host = url.split("/")[2]
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body is not None:
        extra += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n{extra}\r\n".encode()
                     + (body or b""))
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
        assert_like_real(self, startup, real("startup"))
        self.assertEqual(startup["listen"], f"127.0.0.1:{self.pl.port}")
        self.assertTrue(startup["version"].startswith("2.3.0"))
        self.assertEqual(startup["config_hash"], hashlib.sha256(self.config.encode()).hexdigest())
        self.assertEqual(self.pl.events("anomaly"), [], "a loopback listener is no anomaly")

    def test_event_lines_are_json_with_the_common_fields(self):
        http_via(self.pl.port, f"http://127.0.0.2:{WEB}/")
        self.pl.wait_event("blocked", url=f"http://127.0.0.2:{WEB}/")
        for event in self.pl.events():
            self.assertEqual(list(event)[:3], ["level", "component", "event"])
            self.assertEqual(list(event)[-2:], ["time", "message"])
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
        assert_like_real(self, event, real("forward_http"))
        self.assertEqual((event["status_code"], event["size_bytes"], event["client_ip"]),
                         (200, len(WEB_BODY), "127.0.0.1"))
        self.assertGreater(event["duration_ms"], 0)

    def test_plain_http_blocked(self):
        url = f"http://127.0.0.2:{WEB}/blocked"
        status, body = http_via(self.pl.port, url)
        self.assertEqual((status, body.strip()), (403, "blocked: domain not in allowlist: 127.0.0.2"))
        event = self.pl.wait_event("blocked", url=url)
        assert_like_real(self, event, real("blocked", method="GET", scanner="allowlist"))
        self.assertEqual((event["client_ip"], event["reason"]), ("127.0.0.1", "domain not in allowlist: 127.0.0.2"))
        self.assertRegex(event["request_id"], r"^req-\d+$")

    def test_wildcard_covers_the_apex_in_any_case(self):
        self.assertEqual(http_via(self.pl.port, f"http://LocalHost.:{WEB}/")[0], 200)

    def test_connect_allowed_tunnels_bytes(self):
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")
        opened = self.pl.wait_event("tunnel_open", target=f"127.0.0.1:{ECHO}")
        assert_like_real(self, opened, real("tunnel_open"))
        close = self.pl.wait_event("tunnel_close", target=f"127.0.0.1:{ECHO}", total_bytes=8)
        assert_like_real(self, close, real("tunnel_close"))
        self.assertEqual(close["request_id"], opened["request_id"])
        self.assertGreater(close["duration_ms"], 0)

    def test_connect_blocked(self):
        status, body, sock = connect_via(self.pl.port, f"127.0.0.2:{ECHO}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertEqual(body.strip(), "CONNECT blocked: domain not in allowlist: 127.0.0.2")
        event = self.pl.wait_event("blocked", target=f"127.0.0.2:{ECHO}")
        assert_like_real(self, event, real("blocked", method="CONNECT", scanner="allowlist"))

    def test_host_port_entry_and_bare_star_never_match(self):
        status, body, sock = connect_via(self.pl.port, f"127.0.0.3:{WEB}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertIn("domain not in allowlist: 127.0.0.3", body)

    def test_ssrf_refuses_allowed_but_untrusted_private_address(self):
        url = f"http://127.0.0.4:{WEB}/"
        status, body = http_via(self.pl.port, url)
        self.assertEqual((status, body.strip()),
                         (403, "blocked: SSRF blocked: 127.0.0.4 resolves to internal IP 127.0.0.4"))
        assert_like_real(self, self.pl.wait_event("blocked", url=url), real("blocked", url="http://notrusted:8000/"))
        status, body, sock = connect_via(self.pl.port, f"127.0.0.4:{ECHO}")
        sock.close()
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertEqual(body.strip(), "CONNECT blocked: SSRF blocked: 127.0.0.4 resolves to internal IP 127.0.0.4")
        event = self.pl.wait_event("blocked", target=f"127.0.0.4:{ECHO}")
        assert_like_real(self, event, real("blocked", method="CONNECT", scanner="ssrf"))

    def test_dial_failure_is_a_request_error(self):
        closed = free_port()
        status, body, sock = connect_via(self.pl.port, f"127.0.0.1:{closed}")
        sock.close()
        self.assertEqual((status, body.strip()), ("HTTP/1.1 502 Bad Gateway", "tunnel dial failed"))
        event = self.pl.wait_event("error", target=f"127.0.0.1:{closed}")
        assert_like_real(self, event, real("error", method="CONNECT"))
        self.assertEqual(event["error"], f"dial tcp 127.0.0.1:{closed}: connect: connection refused")
        url = f"http://127.0.0.1:{closed}/x"
        self.assertEqual(http_via(self.pl.port, url), (502, "forward proxy fetch failed\n"))
        event = self.pl.wait_event("error", url=url)
        assert_like_real(self, event, like(real("error", method="CONNECT"), {"target": "url"}, method="GET"))
        self.assertEqual(event["error"], f'Get "{url}": dial tcp 127.0.0.1:{closed}: connect: connection refused')

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

    def assert_sni_failure(self, category, sni_host, send=None, hold=False):
        """A CONNECT to the echo server whose client sends `send` (or nothing, and closes unless `hold`) is closed
        with one sni_mismatch event and no tunnel events."""
        mark = len(self.pl.events())
        status, _, sock = connect_via(self.pl.port, f"127.0.0.1:{ECHO}")
        with sock:
            self.assertEqual(status, "HTTP/1.1 200 Connection Established")
            if send:
                sock.sendall(send)
            elif not hold:
                sock.shutdown(socket.SHUT_WR)
            waited = time_until_closed(sock)
        event = self.pl.wait_event("sni_mismatch", after=mark, category=category, sni_host=sni_host,
                                   connect_host="127.0.0.1")
        assert_like_real(self, event, like(real("sni_mismatch", category="mismatch"), category=category))
        time.sleep(0.2)
        self.assertEqual([e for e in self.pl.events() if e.get("request_id") == event["request_id"]], [event],
                         "an SNI failure closes the tunnel without tunnel_open or tunnel_close")
        return waited

    def test_tls_client_hello_with_other_sni_is_closed(self):
        self.assert_sni_failure("mismatch", "elsewhere.example", send=client_hello("elsewhere.example"))

    def test_malformed_tls_record_is_closed(self):
        # A handshake record, but not a ClientHello.
        self.assert_sni_failure("malformed_tls", "", send=b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")

    def test_client_closing_before_any_byte_is_an_sni_timeout(self):
        self.assertLess(self.assert_sni_failure("timeout", ""), 2, "an early close is no reason to wait 5 s")

    def test_silent_client_is_closed_after_the_sni_peek(self):
        self.assertGreater(self.assert_sni_failure("timeout", "", hold=True), 4)


class RealLinesTests(unittest.TestCase):
    """Each line of fixtures/pipelock-2.3.0-events.jsonl has a stand-in counterpart with the same shape."""

    def test_non_loopback_listener_logs_anomaly_then_startup(self):
        # Bound to every interface for a moment, with nothing allowed to be reached through it.
        pl = StandIn(config_text(["nothing.invalid"], forward=False), host="0.0.0.0")
        try:
            pl.wait_event("startup")
            anomaly, startup = pl.events()[:2]
        finally:
            pl.stop()
        assert_like_real(self, anomaly, real("anomaly"), constant=("reason", "score"))
        self.assertEqual(anomaly["resource"], f"0.0.0.0:{pl.port}")
        assert_like_real(self, startup, real("startup"))

    def test_every_real_line_has_a_counterpart(self):
        pl = StandIn(config_text(["127.0.0.1", "localhost"], ["127.0.0.1"], rate=8, dlp=DLP_BLOCK))
        try:
            # The scenario of pipelock-events.md, on the loopback interface.
            http_via(pl.port, f"http://127.0.0.1:{WEB}/")
            http_via(pl.port, f"http://127.0.0.2:{WEB}/")
            http_via(pl.port, f"http://localhost:{WEB}/")
            # A secret leaving in a header (any, with header_mode all), the body, the URL.
            http_via(pl.port, f"http://127.0.0.1:{WEB}/", headers=[("X-Custom", TOKEN)])
            http_via(pl.port, f"http://127.0.0.1:{WEB}/", headers=[("Authorization", f"Bearer {TOKEN}")])
            http_via(pl.port, f"http://127.0.0.1:{WEB}/", "POST", body=f"token={TOKEN}".encode())
            http_via(pl.port, f"http://127.0.0.1:{WEB}/?k={TOKEN}")
            status, _, sock = connect_via(pl.port, f"127.0.0.1:{ECHO}")
            with sock:
                sock.sendall(b"SSH-2.0-test\r\n")
                sock.recv(100)
            connect_via(pl.port, f"127.0.0.2:{ECHO}")[2].close()
            connect_via(pl.port, f"localhost:{ECHO}")[2].close()  # allowed, not trusted: an SSRF refusal
            connect_via(pl.port, f"127.0.0.1:{free_port()}")[2].close()
            for hello in (client_hello("evil.example"), None):
                _, _, sock = connect_via(pl.port, f"127.0.0.1:{ECHO}")
                with sock:
                    if hello:
                        sock.sendall(hello)
                    else:
                        sock.shutdown(socket.SHUT_WR)  # nothing, then EOF: a timeout without the 5 s wait
                    read_all(sock)
            for _ in range(6):
                http_via(pl.port, f"http://127.0.0.1:{WEB}/")
            pl.write(config_text(["127.0.0.1", "localhost", "127.0.0.5"], ["127.0.0.1"], rate=8, dlp=DLP_BLOCK))
            pl.wait_event("config_reload")
            pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1", "localhost"], rate=8, dlp=DLP_BLOCK))
            pl.wait_event("error", method="CONFIG_RELOAD")
            pl.wait_event("tunnel_close")
            ours = pl.events()
        finally:
            pl.stop()
        first = next(e for e in ours if "request_id" in e)
        self.assertEqual(first["request_id"], "req-1", "health checks take no request id")
        for model in REAL:
            if model["event"] == "anomaly":
                continue  # a loopback listener logs none: see the test above
            kind = {k: model[k] for k in ("event", "method", "scanner", "category") if k in model}
            with self.subTest(**kind):
                counterpart = next((e for e in ours if all(e.get(k) == v for k, v in kind.items())), None)
                self.assertIsNotNone(counterpart, f"no stand-in line like {model}")
                # The reload refusal's error text is the same whatever the change; a dial error's is not.
                constant = ("error",) if model.get("method") == RELOAD else ()
                assert_like_real(self, counterpart, model, constant=constant)


TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2
TOKEN = TOKEN[:40]  # GitHub-token shaped: ghp_ and 36 letters and digits
DLP_BLOCK = {"enabled": "true", "action": "block", "scan_headers": "true", "header_mode": "all"}


class DlpTests(unittest.TestCase):
    """request_body_scanning and core DLP, with the one pattern the stand-in knows (as pipelock 2.3.0 answers)."""

    def run_with(self, dlp):
        pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"], dlp=dlp))
        self.addCleanup(pl.stop)
        return pl

    def test_block_refuses_a_secret_in_any_header_the_body_or_the_url(self):
        pl = self.run_with(DLP_BLOCK)
        url = f"http://127.0.0.1:{WEB}/"
        self.assertEqual(http_via(pl.port, url, headers=[("X-Custom", TOKEN)]),
                         (403, "blocked: request header contains secret\n"))
        self.assertEqual(http_via(pl.port, url, "POST", body=f"token={TOKEN}".encode()),
                         (403, "blocked: request body contains secret: GitHub Token\n"))
        self.assertEqual(http_via(pl.port, url + f"?k={TOKEN}"),
                         (403, "blocked: core DLP match: GitHub Token (critical)\n"))
        self.assertEqual(http_via(pl.port, url, headers=[("X-Custom", TOKEN[:-1] + "!")])[0], 200)
        self.assertEqual(http_via(pl.port, url, "POST", body=b"token=ghp_short")[0], 200)
        header = pl.wait_event("header_dlp")
        self.assertEqual((header["header"], header["action"], header["patterns"]),
                         ("X-Custom", "block", ["GitHub Token"]))
        self.assertEqual(pl.wait_event("body_dlp")["action"], "block")
        self.assertEqual(pl.wait_event("blocked", scanner="core_dlp")["url"], url + f"?k={TOKEN}")

    def test_warn_logs_and_lets_it_through_but_core_dlp_refuses_the_url_anyway(self):
        pl = self.run_with({"action": "warn", "header_mode": "all"})
        url = f"http://127.0.0.1:{WEB}/"
        self.assertEqual(http_via(pl.port, url, headers=[("X-Custom", TOKEN)])[0], 200)
        self.assertEqual(pl.wait_event("header_dlp")["action"], "warn")
        self.assertEqual(http_via(pl.port, url + f"?k={TOKEN}")[0], 403)

    def test_sensitive_mode_scans_only_the_listed_headers(self):
        pl = self.run_with({"action": "block", "header_mode": "sensitive"})
        url = f"http://127.0.0.1:{WEB}/"
        self.assertEqual(http_via(pl.port, url, headers=[("X-Custom", TOKEN)])[0], 200)
        self.assertEqual(http_via(pl.port, url, headers=[("Authorization", f"token {TOKEN}")])[0], 403)

    def test_disabled_body_scanning_lets_body_and_headers_through(self):
        pl = self.run_with({"enabled": "false", "action": "block", "header_mode": "all"})
        url = f"http://127.0.0.1:{WEB}/"
        self.assertEqual(http_via(pl.port, url, "POST", headers=[("X-Custom", TOKEN)], body=TOKEN.encode())[0], 200)


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
        event = self.pl.wait_event("blocked", scanner="ratelimit", url=f"http://127.0.0.1:{WEB}/3")
        assert_like_real(self, event, real("blocked", scanner="ratelimit"))
        self.assertEqual(event["reason"], "rate limit exceeded for 127.0.0.1")


class DetectOnlyTests(unittest.TestCase):
    """`enforce: false` (claude-bottle's learn mode): the first finding is logged as an `anomaly` and the request goes
    on; pipelock's dialer still refuses an internal address of an untrusted host."""

    @staticmethod
    def learn(trusted=()):
        text = config_text(["example.test"], trusted)
        return StandIn(text.replace("mode: strict\n", "mode: strict\nenforce: false\n"))

    def test_findings_are_logged_and_passed(self):
        pl = self.learn(trusted=["localhost"])
        try:
            url = f"http://localhost:{WEB}/learn"
            status, body = http_via(pl.port, url)
            self.assertEqual(status, 200, body)
            event = pl.wait_event("anomaly", url=url, scanner="allowlist")
            self.assertEqual(event["reason"], "domain not in allowlist: localhost")
            self.assertEqual(list(event)[:4], ["level", "component", "event", "method"])
            self.assertEqual(list(event)[-5:], ["mitre_technique", "reason", "score", "time", "message"])
            self.assertEqual(event["message"], "anomaly detected")
            pl.wait_event("forward_http", url=url)
        finally:
            pl.stop()

    def test_an_untrusted_private_address_is_refused_by_the_dialer(self):
        # Real 2.3.0, enforce: false, a container on the same network (names changed):
        # {"level":"warn",...,"event":"anomaly","method":"GET","url":"http://db:8000/",...,"scanner":"allowlist",...}
        # {"level":"error",...,"event":"error","method":"GET","url":"http://db:8000/",...,
        #  "error":"Get \"http://db:8000/\": SSRF blocked: db resolves to internal IP 172.26.0.2",...}
        pl = self.learn()
        try:
            url = f"http://localhost:{WEB}/learn"
            status, _ = http_via(pl.port, url)
            self.assertEqual(status, 502)
            pl.wait_event("anomaly", url=url, scanner="allowlist")
            error = pl.wait_event("error", url=url)
            self.assertRegex(error["error"], rf'^Get "{re.escape(url)}": SSRF blocked: localhost resolves to '
                                             rf'internal IP (127\.0\.0\.1|::1)$')
            self.assertEqual([e["scanner"] for e in pl.events() if e.get("event") == "anomaly" and e.get("url")],
                             ["allowlist"], "one anomaly a request, the first finding's")
            self.assertFalse([e for e in pl.events() if e.get("event") == "forward_http"], "nothing was fetched")
        finally:
            pl.stop()

    def test_enforced_by_default(self):
        self.assertIn("mode: strict", config_text(["example.test"]))
        pl = StandIn(config_text(["example.test"]))
        try:
            self.assertEqual(http_via(pl.port, f"http://127.0.0.1:{WEB}/")[0], 403)
        finally:
            pl.stop()


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
    def setUp(self):
        self.pl = StandIn(config_text(["127.0.0.1"], ["127.0.0.1"]))
        self.addCleanup(self.pl.stop)
        self.url = f"http://localhost:{WEB}/"

    def reloads(self, after, count=0):
        """The reload events from index `after` on, once there are at least `count` of them (within 5 s)."""
        deadline = time.monotonic() + 5
        while True:
            found = [e for e in self.pl.events()[after:] if e["event"] == "config_reload" or e.get("method") == RELOAD]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def test_reload_on_sighup_and_when_the_file_is_replaced(self):
        pl = self.pl
        pl.proc.send_signal(signal.SIGHUP)
        event = pl.wait_event("config_reload")
        assert_like_real(self, event, real("config_reload"))
        self.assertEqual(event["config_hash"], hashlib.sha256(Path(pl.path).read_bytes()).hexdigest())
        self.assertIn("domain not in allowlist", http_via(pl.port, self.url)[1])
        # Adding a host: noticed without a signal, and applied to the next request.
        mark = len(pl.events())
        text = config_text(["127.0.0.1", "localhost"], ["127.0.0.1"])
        pl.write(text)
        # No signal was sent: the watch on the directory saw the rename.
        event = pl.wait_event("config_reload", after=mark, config_hash=hashlib.sha256(text.encode()).hexdigest())
        self.assertIn("SSRF blocked: localhost", http_via(pl.port, self.url)[1])
        # The same bytes again within 2 s (a SIGHUP stacked on the file change) are skipped silently.
        pl.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertEqual(self.reloads(mark), [event])
        # Removing a host applies to new requests too.
        mark = len(pl.events())
        pl.write(config_text(["127.0.0.1"], ["127.0.0.1"]))
        pl.wait_event("config_reload", after=mark)
        self.assertIn("domain not in allowlist", http_via(pl.port, self.url)[1])

    def test_strict_mode_refuses_new_trusted_domains_and_an_invalid_file_changes_nothing(self):
        pl = self.pl
        pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1"]))
        pl.wait_event("config_reload")
        mark, errors = len(pl.events()), len(pl.errors)
        pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1", "LocalHost", "other.example"]))
        warning = pl.wait_stderr("WARNING: config reload:", after=errors)
        self.assertEqual(warning, "WARNING: config reload: trusted_domains - trusted domains added: LocalHost, "
                                  "other.example — SSRF internal-IP check bypassed for these hosts\n")
        self.reloads(mark, count=2)
        time.sleep(0.3)
        refused = self.reloads(mark)
        self.assertEqual(len(refused), 2, "logged twice, as the real one does for one rename")
        for event in refused:
            assert_like_real(self, event, real("error", method=RELOAD), constant=("error",))
            self.assertEqual(event["resource"], pl.path)
        self.assertEqual(*({k: v for k, v in event.items() if k != "time"} for event in refused))
        self.assertEqual(len([e for e in pl.errors[errors:] if e.startswith("WARNING:")]), 1)
        self.assertIn("SSRF blocked: localhost", http_via(pl.port, self.url)[1], "the old config stays")
        # An invalid file: said on stderr only, and the running config stays.
        mark, errors = len(pl.events()), len(pl.errors)
        pl.write("mode: strict\napi_allowlist: [a]\nbogus: 1\n")
        line = pl.wait_stderr("pipelock: config reload failed: ", after=errors)
        self.assertIn("field bogus not found in type config.Config", line)
        self.assertEqual(self.reloads(mark), [])
        self.assertIn("SSRF blocked: localhost", http_via(pl.port, self.url)[1])
        # Turning the forward proxy off is a downgrade too.
        mark, errors = len(pl.events()), len(pl.errors)
        pl.write(config_text(["127.0.0.1", "localhost"], ["127.0.0.1"], forward=False))
        self.assertEqual(pl.wait_stderr("WARNING:", after=errors),
                         "WARNING: config reload: forward_proxy.enabled - forward proxy disabled\n")
        pl.wait_event("error", after=mark, error="rejected: security downgrade from strict mode")
        self.assertEqual(http_via(pl.port, f"http://127.0.0.1:{WEB}/")[0], 200)

    def test_sigterm_exits_promptly_and_cleanly(self):
        pl = self.pl
        started = time.monotonic()
        self.assertEqual(pl.stop(), 0)
        self.assertLess(time.monotonic() - started, 3)
        # Not in the recorded log; the shape of pipelock 2.3.0's LogShutdown.
        shutdown = pl.events()[-1]
        self.assertEqual(list(shutdown), ["level", "component", "event", "reason", "time", "message"])
        self.assertEqual((shutdown["event"], shutdown["reason"], shutdown["message"]),
                         ("shutdown", "signal received", "pipelock stopping"))


if __name__ == "__main__":
    unittest.main()
