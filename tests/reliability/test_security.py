"""The trust model of README.md ("Trust model"), checked on real runs.

- Owner-only files: shared-memory segments and the session manifest of a running
  `python -m dataflow run` are 0600 (its directory 0700), even under umask 000; spill folders
  0700 and spill files 0600. (tests/core/test_shm.py and tests/core/test_spill.py check the
  same on the store's own calls.)
- No network: a local run's process tree (driver and workers) has no internet socket at all,
  listening or not, and its Unix sockets are unnamed socket pairs: nothing another process can
  connect to.
- Only the session can attach: segment names carry a random 16-hex-digit token per session, so
  another process cannot guess them, and the 0600 mode keeps other users out. (A process of the
  same user *can* open a 0600 file whose name it learns; that is the stated limit of the model.)
- No credential in any output: distinctive fake AWS keys and session tokens, given through the
  environment, storage_options and userinfo in URIs (s3://KEY:SECRET@bucket/...), never appear
  in stdout/stderr of run/validate/plan (with --verbose and --json), in error messages, in the
  session manifest, or in `core.memory_summary()`.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import numpy as np
import psutil
import pytest

import core

from .conftest import (
    dataflow,
    env,
    make_data,
    manifest,
    segments,
    session_of,
    stop,
    wait_for,
    write_pipeline,
)

KEY = "AKIAREL1ABILITYFAKE7"
SECRET = "fAkEsEcReT/reliability+Suite0123456789xyz"
TOKEN = "FaKeSeSsIoNtOkEn//reliability==0123456789abcdef"
SECRETS = (KEY, SECRET, TOKEN)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree_pids(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def start_with_umask_000(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dataflow", *map(str, args)], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0))


def test_a_running_session_is_owner_only_and_not_on_the_network(tmp_path):
    make_data(tmp_path / "data", shards=6, scale=0.02)
    spec = write_pipeline(tmp_path / "p.yaml", model__args={"payload_mb": 8, "delay": 0.1, "leave_thread": True})
    proc = start_with_umask_000("run", spec, cwd=tmp_path)
    try:
        session = wait_for(lambda: session_of(proc.pid) if manifest(tmp_path / "out") else None,
                           what="a committed shard")
        pids = tree_pids(proc.pid)
        assert len(pids) >= 3                       # the driver and its two workers at least
        names = segments(session["shm_prefix"])
        inet = [c for c in psutil.net_connections(kind="inet") if c.pid in pids]
        unix = [c for c in psutil.net_connections(kind="unix") if c.pid in pids]
        modes = {n: mode(f"/dev/shm/{n}") for n in names if os.path.exists(f"/dev/shm/{n}")}
        manifest_mode = mode(session["_path"])
        manifest_dir_mode = mode(os.path.dirname(session["_path"]))
        spill_modes = {f: mode(f) for f in session["spill"] if os.path.exists(f)}
        assert proc.poll() is None, "the run ended before it could be inspected"
    finally:
        out, err = stop(proc)
    # owner-only, though the driver ran under umask 000
    assert modes and set(modes.values()) == {0o600}, modes
    assert manifest_mode == 0o600 and manifest_dir_mode == 0o700
    assert spill_modes and set(spill_modes.values()) == {0o700}, spill_modes
    # the session token: 16 random hex digits in every segment name
    assert re.fullmatch(r"ddsf-[0-9a-f]{16}-", session["shm_prefix"])
    assert all(re.fullmatch(r"ddsf-[0-9a-f]{16}-\d+", n) for n in names)
    # no network at all, and no Unix socket with a name someone could connect to
    assert inet == [], inet
    assert unix and all(not c.laddr and not c.raddr for c in unix), unix


def test_spill_files_are_owner_only_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        core.init(num_cpus=1, object_store_memory=4 * 2**20,
                  spill={"uri": str(tmp_path / "spill"), "min_spilling_size": 0})
        try:
            refs = [core.put(np.full(2**20 // 8, i)) for i in range(8)]
            folder = next((tmp_path / "spill").iterdir())
            files = list(folder.iterdir())
            assert files, "expected spill files"
            assert mode(folder) == 0o700 and {mode(f) for f in files} == {0o600}
            assert re.fullmatch(r"ddsf-[0-9a-f]{16}", folder.name)
            del refs
        finally:
            core.shutdown()
    finally:
        os.umask(old)
    assert list((tmp_path / "spill").iterdir()) == []


def test_segment_names_are_not_guessable_across_sessions():
    tokens = set()
    for _ in range(3):
        core.init(num_cpus=1)
        try:
            from core._private.runtime import current as current_runtime

            tokens.add(current_runtime().session.token)
        finally:
            core.shutdown()
    assert len(tokens) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)


# ─── credentials ──────────────────────────────────────────────────────────────────────────────
def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"credential {secret[:6]}... leaked in: {text[:2000]}"
        # URL-encoded forms too
        assert "fAkEsEcReT%2F" not in text and "FaKeSeSsIoNtOkEn%2F" not in text


@pytest.fixture
def secret_env(s3_server, monkeypatch):
    """The fake keys as the process's AWS credentials (moto accepts any keys by default)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    return s3_server


def test_no_credential_in_outputs_of_a_run_on_s3(tmp_path, s3_bucket, secret_env):
    data = make_data(f"s3://{s3_bucket}/data", shards=3, scale=0.005)
    spec = write_pipeline(
        tmp_path / "p.yaml", source__parquet=data, sink__parquet=f"s3://{s3_bucket}/out/",
        source__storage_options={"key": KEY, "secret": SECRET, "token": TOKEN},
        sink__storage_options={"key": KEY, "secret": SECRET, "token": TOKEN},
        runtime__spill=f"s3://{s3_bucket}/spill", runtime__object_store_memory="8MB")
    outputs = []
    for args in (["validate", spec], ["validate", spec, "--json"], ["plan", spec], ["plan", spec, "--json"],
                 ["run", spec, "--verbose", "--json"], ["run", spec, "--verbose"]):
        r = dataflow(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
    assert_no_secret(*outputs)
    assert '"status": "done"' in outputs[8]


def test_no_credential_in_errors(tmp_path, s3_bucket, secret_env, request):
    make_data(f"s3://{s3_bucket}/data", shards=1, scale=0.001)
    request.getfixturevalue("s3_auth_enforced")    # now the fake keys are refused
    outputs = []
    for where in ("source", "sink"):
        spec = write_pipeline(tmp_path / f"{where}.yaml", source__parquet=f"s3://{s3_bucket}/data/",
                              source__storage_options={"key": KEY, "secret": SECRET, "token": TOKEN},
                              **({"sink__parquet": f"s3://{s3_bucket}/out/"} if where == "sink" else {}))
        r = dataflow("run", spec, "--verbose", "--json", cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "denied" in r.stderr or "INVALID_ACCESS_KEY" in r.stderr, r.stderr
        outputs += [r.stdout, r.stderr]
    assert_no_secret(*outputs)


@pytest.mark.parametrize("section", ["source", "sink"])
def test_no_credential_from_a_uri_with_userinfo(tmp_path, s3_bucket, secret_env, section):
    """s3://KEY:SECRET@bucket/...: whatever the run makes of it, the secret is never echoed."""
    data = make_data(f"s3://{s3_bucket}/data", shards=1, scale=0.001)
    with_secret = f"s3://{KEY}:{SECRET.replace('/', '%2F')}@{s3_bucket}/"
    over = ({"source__parquet": with_secret + "data/"} if section == "source"
            else {"source__parquet": data, "sink__parquet": with_secret + "out/"})
    spec = write_pipeline(tmp_path / "p.yaml", **over)
    outputs = []
    for args in (["validate", spec], ["plan", spec, "--json"], ["run", spec, "--verbose", "--json"]):
        r = dataflow(*args, cwd=tmp_path)
        assert "Traceback" not in r.stderr, r.stderr
        outputs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr          # the run itself works (moto takes any keys)
    assert_no_secret(*outputs)


def test_no_credential_in_memory_summary_or_session_manifest(s3_bucket, secret_env):
    core.init(num_cpus=1, object_store_memory=4 * 2**20,
              spill={"uri": f"s3://{s3_bucket}/spill", "min_spilling_size": 0})
    try:
        from core._private.runtime import current as current_runtime

        refs = [core.put(np.full(2**20 // 8, i)) for i in range(8)]
        summary = core.memory_summary()
        assert "spilled" in summary and f"s3://{s3_bucket}/spill" in summary
        session = current_runtime().session
        text = session.manifest_path.read_text() + repr(session) + repr(current_runtime().store.spill)
        del refs
    finally:
        core.shutdown()
    assert_no_secret(summary, text)
