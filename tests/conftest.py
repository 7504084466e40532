"""Fixtures shared by every test package.

`s3_server` starts moto in server mode (a real HTTP S3 endpoint, in a child process) on
127.0.0.1 at a free port, once per test process, and points every S3 client (boto3, s3fs, pyarrow, smart_open) at it through
the standard AWS environment. `s3_bucket` gives each test a fresh, empty bucket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.services import SERVICE_PIDS

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# A script's `cmd &` (a shell without job control) starts cmd with SIGINT ignored, and exec keeps
# it ignored, so the runs these tests interrupt (Ctrl-C; Ray's cancel) would never see theirs.
# A handler, unlike SIG_IGN, is reset to the default by exec: each child takes Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """URL of a moto S3 server on loopback; AWS_* variables set for the whole test process.

    The server is a child process, not a thread of this one: an S3 file object a test leaves
    unclosed may be garbage-collected on any thread, and its close() uploads to the server, which
    deadlocks when that thread is the server's own."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    SERVICE_PIDS.add(server.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(server, port)
    except BaseException:
        server.kill()
        server.wait()
        raise
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update({
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        SERVICE_PIDS.discard(server.pid)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_until_listening(server: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the moto server exited at start (code {server.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the moto server did not listen on 127.0.0.1:{port} within {timeout} s")
            time.sleep(0.05)


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE")


@pytest.fixture
def s3_bucket(s3_server):
    """Name of a fresh bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
