"""Real servers on 127.0.0.1 for the object-storage tests: an S3 server (moto's standalone server, a subprocess), an
HTTP file server with Range requests, and a proxy, both of which inject faults on request.

Faults (:class:`Faults`): ``every=N`` answers every N-th request with ``503 Service Unavailable`` (counted per
server);
``always`` answers every request whose path contains one of its strings with 503; ``cut_every=N`` sends the
headers and half the body of every N-th GET, then closes the connection. ``log`` records ``(method, path, status)``
of every request.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Faults:
    every: int = 0
    always: tuple[str, ...] = ()
    cut_every: int = 0
    log: list = field(default_factory=list)
    injected: int = 0
    cut: int = 0
    _n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, method: str, path: str) -> str:
        """``"503"``, ``"cut"`` or ``"ok"`` for this request (and log it)."""
        with self._lock:
            self._n += 1
            if any(s in path for s in self.always) or (self.every and self._n % self.every == 0):
                self.injected += 1
                self.log.append((method, path, 503))
                return "503"
            if self.cut_every and method == "GET" and self._n % self.cut_every == 0:
                self.cut += 1
                self.log.append((method, path, "cut"))
                return "cut"
            self.log.append((method, path, 200))
            return "ok"

    def requests(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for m, p, _ in self.log if (method is None or m == method) and contains in p)


def _slow_down(handler: BaseHTTPRequestHandler) -> None:
    # not "SlowDown": s3fs retries that one itself, and the tests count the retries audiossl makes
    body = b"<Error><Code>ServiceUnavailable</Code><Message>injected by the test server</Message></Error>"
    handler.send_response(503)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class _Server:
    def __init__(self, handler_class):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def file_server(directory: str, faults: Faults | None = None, ranges: bool = True) -> _Server:
    """Serves ``directory`` over HTTP (GET/HEAD, Range requests unless ``ranges=False``), with ``faults``."""
    faults = faults or Faults()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _serve(self):
            verdict = faults.decide(self.command, self.path)
            if verdict == "503":
                return _slow_down(self)
            path = os.path.join(directory, self.path.split("?", 1)[0].lstrip("/"))
            if not os.path.isfile(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = open(path, "rb").read()
            start, end, status = 0, len(data), 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if ranges and m:
                start = int(m.group(1))
                end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
                status = 206
            body = data[start:end]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if self.command == "GET":
                if verdict == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        do_GET = do_HEAD = _serve

    server = _Server(Handler)
    server.faults = faults
    return server


def proxy(upstream: str, faults: Faults) -> _Server:
    """An HTTP proxy in front of ``upstream`` (``http://host:port``) that injects ``faults``."""
    host, port = upstream.split("//", 1)[1].split(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            verdict = faults.decide(self.command, self.path)
            if verdict == "503":
                return _slow_down(self)
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server",
                                     "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                if verdict == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    server = _Server(Handler)
    server.faults = faults
    return server


def require_s3() -> None:
    """Skip (naming what is missing) unless the S3 test server and client are installed (``audiossl[test]``)."""
    for module, package in (("moto", "moto[server]"), ("flask", "moto[server]"), ("s3fs", "s3fs")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed (pip install 'audiossl[test]'): no local S3 server or client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    """moto's standalone S3 server on 127.0.0.1, as a subprocess; yields its endpoint URL."""
    require_s3()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)


def reset_fsspec() -> None:
    """Forget cached file-system instances (an instance keeps the endpoint it was made with)."""
    import fsspec

    for protocol in ("s3", "http", "https"):
        try:
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
        except ImportError:
            pass
