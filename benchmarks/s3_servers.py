"""S3 servers for the benchmarks: each on 127.0.0.1 at a free port, in a process of its own.

    with S3Server("moto") as server:       # or "moto-cached", or "s3rver"
        server.client().create_bucket(...)  # boto3, with the server's credentials
        subprocess.run(cmd, env={**os.environ, **server.env})   # or server.activate()

A real S3 endpoint is never inside the client's process; an in-process moto would share the
client's interpreter lock and slow down the very code being timed.

- "moto": moto's server mode, as the tests use it.
- "moto-cached": the same with moto's list of its own service modules cached; stock moto lists
  and stats the ~180 folders of its package on every request. This changes the stand-in
  server's speed only, not what it answers.
- "s3rver": a Node.js S3 server, when installed (`npm install --prefix benchmarks s3rver@3.7.1`,
  ignored by git); its bucket is created at start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

S3RVER = shutil.which("s3rver") or str(Path(__file__).resolve().parent / "node_modules" / ".bin" / "s3rver")

_MOTO = [sys.executable, "-m", "moto.server"]
_MOTO_CACHED = [sys.executable, "-c", "import sys; from moto import backends; "
                "m = tuple(backends.list_of_moto_modules()); "
                "backends.list_of_moto_modules = lambda: m; "
                "from moto.server import main; main(sys.argv[1:])"]


def have_s3rver() -> bool:
    return os.path.exists(S3RVER)


class S3Server:
    """One S3 server process; `env` points clients at it, `stop()` (or `with`) ends it."""

    def __init__(self, kind: str = "moto", bucket: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.kind, self.port = kind, port
        self.url = f"http://127.0.0.1:{port}"
        self._data_dir = None
        if kind == "s3rver":
            self._data_dir = tempfile.mkdtemp(prefix="bench-s3rver-")
            cmd = [S3RVER, "-a", "127.0.0.1", "-p", str(port), "-d", self._data_dir, "--silent"]
            cmd += ["--configure-bucket", bucket] if bucket else []
            keys = ("S3RVER", "S3RVER")                    # s3rver's fixed test credentials
        elif kind in ("moto", "moto-cached"):
            cmd = (_MOTO if kind == "moto" else _MOTO_CACHED) + ["-H", "127.0.0.1", "-p", str(port)]
            keys = ("testing", "testing")
        else:
            raise ValueError(f"unknown S3 server kind {kind!r}: expected moto, moto-cached or s3rver")
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": keys[0],
                    "AWS_SECRET_ACCESS_KEY": keys[1], "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self._wait_listening()
        if bucket and kind != "s3rver":
            self.client().create_bucket(Bucket=bucket)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self):
        """A boto3 S3 client with this server's keys (boto3's default session would keep the
        first credentials it resolved, whichever server they were for)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def activate(self) -> None:
        """Point every S3 client of this process (s3fs, pyarrow, smart_open) at this server."""
        os.environ.update(self.env)

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def _wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the {self.kind} S3 server did not start on {self.url}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
