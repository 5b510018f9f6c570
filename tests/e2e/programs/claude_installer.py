#!/usr/bin/env python3
"""A stand-in for Claude Code's native installer and release bucket (claude-bottle test equipment; stdlib only).

tests/e2e/servers.py runs it in a container of the debian test image:

    claude_installer.py [--port 8080] [--latest VERSION]

    /install.sh                                    install.sh from this directory, pointed at this server
    /claude-code-releases/latest, .../stable       VERSION (--latest)
    /claude-code-releases/<v>/manifest.json        {"version": v, "platforms": {"linux-x64": {"checksum", "size"},
                                                    "linux-arm64": ...}}
    /claude-code-releases/<v>/<platform>/claude    the stand-in `claude` (this directory) for version v
    /requests                                      JSON list of every other request so far: {method, path, status}
"""

import argparse
import hashlib
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PLATFORMS = ("linux-x64", "linux-arm64")
VERSION = r"\d+\.\d+\.\d+(?:-[^/\s]+)?"
MANIFEST = re.compile(rf"^/claude-code-releases/({VERSION})/manifest\.json$")
BINARY = re.compile(rf"^/claude-code-releases/({VERSION})/([a-z0-9-]+)/claude$")

log = []
log_lock = threading.Lock()


def read(name: str) -> str:
    with open(os.path.join(HERE, name)) as fh:
        return fh.read()


def binary(version: str) -> bytes:
    return read("claude").replace("@VERSION@", version).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    latest = None

    def do_GET(self):
        path = self.path.split("?")[0]
        record = None
        if path != "/requests":
            record = {"method": self.command, "path": self.path, "status": None}
            with log_lock:
                log.append(record)
        code, body, kind = self.route(path)
        if record:
            record["status"] = code
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self, path: str):
        if path == "/install.sh":
            releases = f"http://{self.headers.get('Host', self.server.server_address[0])}/claude-code-releases"
            return 200, read("install.sh").replace("@RELEASES@", releases).encode(), "text/x-shellscript"
        if path in ("/claude-code-releases/latest", "/claude-code-releases/stable"):
            return 200, f"{self.latest}\n".encode(), "text/plain"
        if m := MANIFEST.match(path):
            data = binary(m.group(1))
            entry = {"checksum": hashlib.sha256(data).hexdigest(), "size": len(data)}
            manifest = {"version": m.group(1), "platforms": {p: entry for p in PLATFORMS}}
            return 200, json.dumps(manifest, indent=2).encode(), "application/json"
        if (m := BINARY.match(path)) and m.group(2) in PLATFORMS:
            return 200, binary(m.group(1)), "application/octet-stream"
        if path == "/requests":
            with log_lock:
                return 200, json.dumps(log, indent=1).encode(), "application/json"
        return 404, b"not found\n", "text/plain"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--latest", default="2.1.114")
    args = parser.parse_args()
    Handler.latest = args.latest
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print(f"claude_installer: listening on {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
