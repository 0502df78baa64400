"""A stub Triton replica for soak tests (no tests here).

It answers the KServe v2 control endpoints that publishing and reconciling use (liveness,
load, unload, readiness, statistics, repository index) from a table of loaded models, over
plain HTTP, so that tritonclient's real HTTP client (geventhttpclient, gevent hubs, sockets)
runs exactly as against tritonserver, at a fraction of the cost per call. It loads nothing:
use it where the test is about the client's process (descriptors, threads, memory), and
the embedded stack where it is about what Triton serves.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/ready$")
_CONTROL = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


class StubTriton:
    """One stub replica on a free loopback port; ``with StubTriton() as replica: replica.url``."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.requests = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                stub._count()
                ready = _MODEL.match(self.path)
                if self.path == "/v2/health/live" or self.path == "/v2/health/ready":
                    self._reply(200, None)
                elif self.path == "/v2/models/stats":
                    self._reply(200, {"model_stats": []})  # callers then ask per model
                elif ready:
                    self._reply(200 if ready["name"] in stub.loaded else 400, None)
                else:
                    self._reply(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                stub._count()
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                control = _CONTROL.match(self.path)
                if self.path == "/v2/repository/index":
                    self._reply(200, [{"name": name, "version": "1", "state": "READY"} for name in sorted(stub.loaded)])
                elif control:
                    with stub._lock:
                        (stub.loaded.add if control["action"] == "load" else stub.loaded.discard)(control["name"])
                    self._reply(200, None)
                else:
                    self._reply(404, {"error": f"no route {self.path}"})

            def _reply(self, status: int, body: Any) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def __enter__(self) -> "StubTriton":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
