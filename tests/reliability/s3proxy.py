"""An HTTP proxy in front of the moto S3 server that injects faults, on 127.0.0.1.

The same idea as `FlakyProxy` in tests/connectors/test_s3_http.py, with more faults. For
requests whose path contains `match` (all requests when it is empty):

    fail_503   answer this many next requests with ``503 SlowDown`` (S3 throttling); -1: all
    drop       answer this many next GETs with the headers and half of the body, then close
               the connection (a connection dropped in the middle of a read); -1: all

`stop()` closes the listening socket and the open connections (clients get "connection
refused", as from a server that went away) and `start()` listens again on the same port.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.match = ""
        self.fail_503 = 0
        self.drop = 0
        self.failed = 0          # 503s sent
        self.dropped = 0         # connections dropped mid-body
        self.forwarded = 0
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _fault(self, command: str, path: str) -> str | None:
        with self.lock:
            if self.match and self.match not in path:
                return None
            if self.fail_503:
                self.fail_503 -= self.fail_503 > 0
                self.failed += 1
                return "503"
            if self.drop and command == "GET":
                self.drop -= self.drop > 0
                self.dropped += 1
                return "drop"
            return None

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections.add(self.connection)

            def finish(self) -> None:
                with proxy.lock:
                    proxy.connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._fault(self.command, self.path)
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD answer has no body: bytes sent after
                        self.wfile.write(SLOW_DOWN)  # one would be read as the next answer
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                # A HEAD answer has no body but gives the object's size: pass that on.
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" \
                    else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "drop" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                with proxy.lock:
                    proxy.forwarded += 1
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and cut the open (keep-alive) connections too."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            self.server = None
        with self.lock:
            open_now = list(self.connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def reset(self) -> None:
        with self.lock:
            self.match, self.fail_503, self.drop = "", 0, 0
