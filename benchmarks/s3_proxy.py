"""S3 with real latency: a loopback proxy that delays every S3 request and counts them.

moto answers on loopback in about a millisecond; AWS S3 in 10-30 ms. A benchmark that only
measures against moto hides every serial round trip. This proxy sits between the S3 clients
and moto, sleeps a fixed delay (default 20 ms) before forwarding each request, and counts the
requests by S3 operation and by client (``boto3``: the plugin, MLflow's artifact client;
``triton``: tritonserver's AWS C++ SDK). Bodies stream through in 64 KiB blocks both ways, so a
multi-GB upload or download never sits in the proxy's memory. It runs in its own process (its
own interpreter lock: the process under measurement is not slowed by the proxy's work).

Use it alone, in front of any S3 endpoint::

    with latency_proxy("http://127.0.0.1:9000", delay_ms=20) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url)
        ...
        proxy.take()   # {"boto3": {"GetObject": 12, "ListObjectsV2": 1}, ...}; counters reset

or the whole embedded stack behind it (the plugin, MLflow's clients and tritonserver all see
the delay)::

    with ProxiedStack(workdir, replicas=1) as stack:
        stack.proxy.set_delay(0)       # setup at loopback speed
        ...
        stack.proxy.set_delay(20)      # measured at S3's
        stack.proxy.take()

The control API lives under ``/_latency-proxy/`` (no bucket name starts with ``_``).
Nothing here is imported by the package or the test suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

BLOCK = 64 * 1024
CONTROL = "/_latency-proxy/"
DEFAULT_DELAY_MS = 20.0
#: Headers of one hop, never forwarded (RFC 9110 7.6.1), and Expect: the proxy answers the
#: 100-continue itself.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "expect",
}  # fmt: skip


def classify(method: str, path: str, headers: Any) -> str:
    """The S3 API operation of one request, from its method, path, query and headers.

    Conditional writes are told apart: ``PutObject (If-None-Match)`` is a create-only write
    (the lease, a version claim), ``PutObject (If-Match)`` a compare-and-swap (lease renewal,
    takeover).
    """
    parsed = urlsplit(path)
    query = parse_qs(parsed.query, keep_blank_values=True)
    object_level = "/" in parsed.path.strip("/")
    if method == "HEAD":
        return "HeadObject" if object_level else "HeadBucket"
    if method == "GET":
        return _classify_get(object_level, query, headers)
    if method == "PUT":
        return _classify_put(object_level, query, headers)
    if method == "POST":
        for marker, operation in (("delete", "DeleteObjects"), ("uploads", "CreateMultipartUpload"),
                                  ("uploadId", "CompleteMultipartUpload")):  # fmt: skip
            if marker in query:
                return operation
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return f"{method} (other)"


def _classify_get(object_level: bool, query: dict, headers: Any) -> str:
    if object_level:
        return "GetObject (range)" if headers.get("Range") else "GetObject"
    if "uploads" in query:
        return "ListMultipartUploads"
    return "ListObjectsV2" if "list-type" in query else "ListObjects"


def _classify_put(object_level: bool, query: dict, headers: Any) -> str:
    if not object_level:
        return "CreateBucket"
    copy = headers.get("x-amz-copy-source")
    if "partNumber" in query:
        return "UploadPartCopy" if copy else "UploadPart"
    if copy:
        return "CopyObject"
    if headers.get("If-None-Match"):
        return "PutObject (If-None-Match)"
    if headers.get("If-Match"):
        return "PutObject (If-Match)"
    return "PutObject"


def client_family(user_agent: str) -> str:
    """``boto3`` (Python clients), ``triton`` (the AWS C++ SDK inside tritonserver) or ``other``."""
    agent = user_agent.lower()
    if "boto3" in agent or "botocore" in agent:
        return "boto3"
    if "aws-sdk-cpp" in agent:
        return "triton"
    return "other"


class _State:
    """What the proxy's handler threads share: the delay, the upstream, the counters."""

    def __init__(self, upstream: str | None, delay_ms: float) -> None:
        self.lock = threading.Lock()
        self.upstream = upstream
        self.delay_s = delay_ms / 1000.0
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.statuses: Counter[str] = Counter()

    def record(self, family: str, operation: str) -> None:
        with self.lock:
            self.counts[family][operation] += 1

    def take(self, reset: bool) -> dict[str, Any]:
        with self.lock:
            taken = {
                "delay_ms": self.delay_s * 1000.0,
                "counts": {family: dict(ops) for family, ops in self.counts.items() if ops},
                "statuses": dict(self.statuses),
            }  # fmt: skip
            if reset:
                self.counts.clear()
                self.statuses.clear()
        return taken


class _NoDelayConnection(http.client.HTTPConnection):
    """Nagle off: a body written after its headers must not wait for the peer's delayed ACK
    (40 ms on Linux, twice the delay being simulated)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_ProxyServer"
    _upstream: http.client.HTTPConnection | None = None
    _upstream_url: str | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        super().finish()

    # -- control -----------------------------------------------------------------------------
    def _control(self) -> None:
        state = self.server.state
        parsed = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        action = parsed.path[len(CONTROL) :]
        if action == "configure":
            with state.lock:
                if "delay_ms" in query:
                    state.delay_s = float(query["delay_ms"]) / 1000.0
                if "upstream" in query:
                    state.upstream = query["upstream"]
            body = {"ok": True}
        elif action in ("counts", "take"):
            body = state.take(reset=action == "take")
        else:
            self._reply(404, b'{"error": "unknown control action"}')
            return
        self._reply(200, json.dumps(body).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- forwarding --------------------------------------------------------------------------
    def _handle(self) -> None:
        if self.path.startswith(CONTROL):
            self._control()
            return
        state = self.server.state
        with state.lock:
            upstream, delay_s = state.upstream, state.delay_s
        if upstream is None:
            self._reply(503, b'{"error": "the proxy has no upstream yet"}')
            return
        operation = classify(self.command, self.path, self.headers)
        state.record(client_family(self.headers.get("User-Agent", "")), operation)
        if delay_s > 0:
            time.sleep(delay_s)
        try:
            response = self._forward(upstream)
        except (OSError, http.client.HTTPException) as err:
            self._drop_upstream()
            self.close_connection = True
            self._reply(502, json.dumps({"error": f"upstream: {err}"}).encode())
            return
        with state.lock:
            state.statuses[f"{operation} {response.status}"] += 1
        self._relay(response)

    def _connection(self, upstream: str) -> http.client.HTTPConnection:
        """One keep-alive connection to the upstream per client connection."""
        if self._upstream is None or self._upstream_url != upstream:
            self._drop_upstream()
            parsed = urlsplit(upstream)
            self._upstream = _NoDelayConnection(parsed.hostname, parsed.port, timeout=600)
            self._upstream_url = upstream
        return self._upstream

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        self._upstream = None

    def _forward(self, upstream: str) -> http.client.HTTPResponse:
        """Send the request upstream, its body streamed as it arrives (Host kept: signed)."""
        connection = self._connection(upstream)
        connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                connection.putheader(key, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        if chunked:
            self._pipe_chunked(connection)
        else:
            remaining = int(self.headers.get("Content-Length", 0) or 0)
            while remaining > 0:
                block = self.rfile.read(min(BLOCK, remaining))
                if not block:
                    raise ConnectionError("the client closed the connection mid-body")
                connection.send(block)
                remaining -= len(block)
        response = connection.getresponse()
        if response.will_close:
            self._upstream = None  # this response owns the socket now; a new one next time
        return response

    def _pipe_chunked(self, connection: http.client.HTTPConnection) -> None:
        """Relay a chunked request body, framing and trailers included, chunk by chunk."""
        while True:
            size_line = self.rfile.readline(65537)
            connection.send(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    line = self.rfile.readline(65537)
                    connection.send(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            remaining = size + 2  # the data and its CRLF
            while remaining > 0:
                block = self.rfile.read(min(BLOCK, remaining))
                if not block:
                    raise ConnectionError("the client closed the connection mid-chunk")
                connection.send(block)
                remaining -= len(block)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Status, headers (the store's ``Date`` included) and body, streamed back."""
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        has_body = self.command != "HEAD" and response.status not in (204, 304) and response.status >= 200
        chunked = has_body and length is None
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if has_body:
            while block := response.read1(BLOCK) if chunked else response.read(BLOCK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        response.close()
        self.wfile.flush()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int, state: _State) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state


@dataclasses.dataclass
class LatencyProxy:
    """A running proxy (its child process) and its control API.

    Attributes:
        url: the S3 endpoint to give clients (``http://127.0.0.1:PORT``).
    """

    url: str
    process: subprocess.Popen

    def _call(self, action: str, **query: Any) -> dict[str, Any]:
        params = "&".join(f"{k}={urllib.request.quote(str(v), safe='')}" for k, v in query.items())
        with urllib.request.urlopen(f"{self.url}{CONTROL}{action}?{params}", timeout=30) as response:
            return json.loads(response.read())

    def set_delay(self, delay_ms: float) -> None:
        """Delay every request forwarded from now on by ``delay_ms`` milliseconds."""
        self._call("configure", delay_ms=delay_ms)

    def set_upstream(self, upstream: str) -> None:
        """Forward to ``upstream`` (``http://host:port``) from now on."""
        self._call("configure", upstream=upstream)

    def counts(self) -> dict[str, dict[str, int]]:
        """Requests per client family and operation since the last :meth:`take`."""
        return self._call("counts")["counts"]

    def take(self) -> dict[str, dict[str, int]]:
        """Like :meth:`counts`, and reset the counters."""
        return self._call("take")["counts"]

    def take_with_statuses(self) -> dict[str, Any]:
        """Counts, plus ``"<operation> <status>"`` counts of the answers, and reset."""
        return self._call("take")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_proxy(upstream: str | None = None, delay_ms: float = DEFAULT_DELAY_MS) -> LatencyProxy:
    """Start the proxy in a child process on a free loopback port; :meth:`LatencyProxy.stop` it."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--delay-ms", str(delay_ms)]
    if upstream:
        argv += ["--upstream", upstream]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http://"):
        process.kill()
        raise RuntimeError(f"the S3 latency proxy did not start: {line!r}")
    return LatencyProxy(line, process)


@contextlib.contextmanager
def latency_proxy(upstream: str | None = None, delay_ms: float = DEFAULT_DELAY_MS) -> Iterator[LatencyProxy]:
    """A proxy in front of ``upstream`` for the block (see the module docstring)."""
    proxy = start_proxy(upstream, delay_ms)
    try:
        yield proxy
    finally:
        proxy.stop()


@functools.lru_cache(maxsize=None)
def _stack_class() -> type:
    from mlflow_triton.local.stack import LocalStack

    @dataclasses.dataclass
    class ProxiedStack(LocalStack):
        """The embedded stack with its S3 behind a :class:`LatencyProxy` for every client:
        this process, the MLflow server and tritonserver. The delay starts at ``delay_ms``."""

        delay_ms: float = DEFAULT_DELAY_MS
        proxy: LatencyProxy | None = None

        @property
        def s3_endpoint(self) -> str:
            if self.proxy is None:
                self.proxy = start_proxy(delay_ms=self.delay_ms)
            return self.proxy.url

        @property
        def moto_endpoint(self) -> str:
            return f"http://127.0.0.1:{self.s3_port}"

        def create_repository(self) -> None:
            self.s3_endpoint  # noqa: B018 (starts the proxy)
            assert self.proxy is not None
            self.proxy.set_upstream(self.moto_endpoint)  # moto is up: called right after it starts
            super().create_repository()

        def stop(self) -> None:
            super().stop()
            if self.proxy is not None:
                self.proxy.stop()

    return ProxiedStack


def __getattr__(name: str) -> Any:
    if name == "ProxiedStack":  # built on first use: importing this module needs no mlflow_triton
        return _stack_class()
    raise AttributeError(name)


def main() -> None:
    import argparse

    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--upstream", help="S3 endpoint to forward to, http://host:port")
    arguments.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS)
    arguments.add_argument("--port", type=int, default=0)
    args = arguments.parse_args()
    server = _ProxyServer(args.port, _State(args.upstream, args.delay_ms))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
