#!/usr/bin/env python3
"""An HTTPS upstream for claude-bottle's end-to-end tests (test equipment; standard library only).

tests/e2e/servers.py runs it in a container of the debian test image:

    https_upstream.py --cert server.pem --key server.key [--token TOKEN] [--port 443] [--git-root /srv/git]

HTTP/1.1, one thread per connection (the TLS handshake too, so a silent client blocks nobody). Endpoints:

    /echo                          any method: JSON {method, path, headers: [[name, value], ...] in the order
                                   received, body (text)}
    /stream?seconds=N&interval=S   server-sent events, chunked: "data: <i>" every S seconds for N seconds, then
                                   "data: done"; each event is flushed as it is written
    /redirect?to=URL               302 to URL
    /requests                      JSON list of every other request so far: {method, path, headers, status}
    /<name>.git/...                git smart HTTP through `git http-backend` (clone, fetch, push) for the bare
                                   repositories under --git-root; with --token only when the Authorization header
                                   is exactly "Bearer TOKEN", otherwise 401
    anything else                  404
"""

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GIT_PATH = re.compile(r"^/[^/]+\.git(/|$)")
# Headers a CGI server hands over in CONTENT_* variables, or keeps to itself, rather than as HTTP_*.
NOT_CGI_HEADERS = {"content-length", "content-type", "authorization"}

log = []  # one dict per request but /requests, in arrival order
log_lock = threading.Lock()


def make_repository(root: str) -> None:
    """A bare repository `repo.git` under `root`, branch main with one commit; pushes over HTTP allowed."""
    bare = os.path.join(root, "repo.git")
    if os.path.exists(bare):
        return
    env = dict(os.environ, GIT_AUTHOR_NAME="seed", GIT_AUTHOR_EMAIL="seed@example.test",
               GIT_COMMITTER_NAME="seed", GIT_COMMITTER_EMAIL="seed@example.test")
    seed = tempfile.mkdtemp()
    try:
        for argv in (["git", "init", "-q", "--bare", "-b", "main", bare],
                     ["git", "-C", bare, "config", "http.receivepack", "true"],
                     ["git", "init", "-q", "-b", "main", seed]):
            subprocess.run(argv, check=True, env=env)
        with open(os.path.join(seed, "README"), "w") as fh:
            fh.write("seed\n")
        for argv in (["git", "add", "README"], ["git", "commit", "-qm", "seed"], ["git", "push", "-q", bare, "main"]):
            subprocess.run(argv, check=True, env=env, cwd=seed)
    finally:
        shutil.rmtree(seed, ignore_errors=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120
    token = None
    git_root = "/srv/git"
    record = None  # this request's entry in the log

    def setup(self):
        super().setup()
        self.request.do_handshake()

    # BaseHTTPRequestHandler calls do_<METHOD>; every method goes to the same place.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def send_response(self, code, message=None):
        if self.record is not None:
            self.record["status"] = code
        super().send_response(code, message)

    def dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path != "/requests":
            self.record = {"method": self.command, "path": self.path,
                           "headers": [[k, v] for k, v in self.headers.items()], "status": None}
            with log_lock:
                log.append(self.record)
        if GIT_PATH.match(url.path):
            return self.git(url)
        body = self.read_body()
        if url.path == "/echo":
            self.reply(200, {"method": self.command, "path": self.path, "body": body.decode(errors="replace"),
                             "headers": [[k, v] for k, v in self.headers.items()]})
        elif url.path == "/stream":
            try:
                seconds, interval = float(self.query.get("seconds", 3)), float(self.query.get("interval", 1))
            except ValueError:
                return self.reply(400, {"error": "seconds and interval are numbers"})
            self.stream(seconds, max(interval, 0.01))
        elif url.path == "/redirect" and "to" in self.query:
            self.send_response(302)
            self.send_header("Location", self.query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/requests":
            with log_lock:
                self.reply(200, log)
        else:
            self.reply(404, {"error": f"no such endpoint: {url.path}"})

    # ---- Plumbing ----

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self.chunks())
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def chunks(self):
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def reply(self, code: int, obj, headers=()) -> None:
        data = (json.dumps(obj, indent=1) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- Endpoints ----

    def stream(self, seconds: float, interval: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        start, i = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            self.write_chunk(b"data: %d\n\n" % i)
            i += 1
            time.sleep(max(0.0, start + i * interval - time.monotonic()))
        self.write_chunk(b"data: done\n\n")
        self.write_chunk(b"")

    def git(self, url) -> None:
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            # The request body is not read: close the connection rather than parse it as the next request.
            self.close_connection = True
            return self.reply(401, {"error": "a bearer token is required"},
                              [("WWW-Authenticate", 'Bearer realm="cbtest"'), ("Connection", "close")])
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": self.git_root, "GIT_HTTP_EXPORT_ALL": "1",
               "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": self.command,
               "PATH_INFO": url.path, "QUERY_STRING": url.query, "REMOTE_ADDR": self.client_address[0],
               "CONTENT_TYPE": self.headers.get("Content-Type", "")}
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        length = 0 if chunked else int(self.headers.get("Content-Length") or 0)
        if not chunked:
            env["CONTENT_LENGTH"] = str(length)  # with none, http-backend reads to the end of its input
        for name, value in self.headers.items():
            if name.lower() not in NOT_CGI_HEADERS:
                env["HTTP_" + name.upper().replace("-", "_")] = value
        proc = subprocess.Popen(["git", "http-backend"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        feeder = threading.Thread(target=self.feed, args=(proc.stdin, chunked, length), daemon=True)
        feeder.start()
        status, headers = 200, []
        for line in iter(proc.stdout.readline, b""):
            line = line.rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while data := proc.stdout.read1(65536):
            self.write_chunk(data)
        self.write_chunk(b"")
        proc.wait()
        feeder.join()

    def feed(self, pipe, chunked: bool, length: int) -> None:
        try:
            if chunked:
                for data in self.chunks():
                    pipe.write(data)
            else:
                while length > 0:
                    data = self.rfile.read(min(length, 65536))
                    if not data:
                        break
                    pipe.write(data)
                    length -= len(data)
        except BrokenPipeError:
            pass
        finally:
            try:
                pipe.close()
            except BrokenPipeError:
                pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext = None

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        print(f"https_upstream: {client_address[0]}: {sys.exc_info()[1]!r}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--git-root", default="/srv/git")
    args = parser.parse_args()
    os.makedirs(args.git_root, exist_ok=True)
    make_repository(args.git_root)
    Handler.token, Handler.git_root = args.token, args.git_root
    server = Server(("0.0.0.0", args.port), Handler)
    server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.context.load_cert_chain(args.cert, args.key)
    print(f"https_upstream: listening on {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
