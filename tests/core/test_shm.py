"""Segments, mappings, pinned views, session manifests and stale-session cleanup (real processes)."""

from __future__ import annotations

import gc
import json
import mmap
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core._private.objects import shm
from core._private.objects.serialization import deserialize, serialize
from core.exceptions import CoreError, ObjectLostError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def session():
    s = shm.Session.start(cleanup_stale=False)
    yield s
    s.close()
    assert s.segments() == []
    assert not s.manifest_path.exists()


def test_segment_permissions_and_mappings(session):
    name = session.next_segment_name()
    assert name.startswith(f"ddsf-{session.token}-") and len(session.token) >= 16
    mm, ino = shm.create_segment(name, 1 << 20)
    assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600
    with pytest.raises(FileExistsError):
        shm.create_segment(name, 4096)              # O_EXCL
    mm[:5] = b"hello"

    ro = shm.map_segment(name, "read")
    assert ro[:5] == b"hello"
    with pytest.raises(TypeError):
        ro[:1] = b"x"                               # mmap refuses writes to a read-only map
    arr = np.frombuffer(ro, dtype=np.uint8)
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1

    cow = shm.map_segment(name, "copy")
    cow[:5] = b"HELLO"                              # private copy-on-write
    assert cow[:5] == b"HELLO" and mm[:5] == b"hello" and ro[:5] == b"hello"

    rw = shm.map_segment(name, "write")
    rw[:1] = b"j"
    assert ro[:5] == b"jello"                       # shared, seen by every mapping

    assert shm.segment_exists(name, ino)
    assert shm.unlink_segment(name)
    assert not shm.segment_exists(name)
    assert mm[:5] == b"jello"                       # mapping outlives the name
    with pytest.raises(ObjectLostError, match=name):
        shm.map_segment(name, "read")
    del arr
    for m in (mm, ro, cow, rw):
        m.close()


def test_bad_names_rejected():
    with pytest.raises(CoreError, match="bad segment name"):
        shm.map_segment("../etc/passwd")
    with pytest.raises(CoreError):
        shm.create_segment("other-name", 10)


def test_manifest_and_dirs_owner_only(session):
    d = shm.manifest_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(session.manifest_path).st_mode) == 0o600
    data = json.loads(session.manifest_path.read_text())
    assert data["pid"] == os.getpid()
    assert data["start_time"] == shm.process_start_time(os.getpid())
    assert data["shm_prefix"] == session.prefix
    session.add_spill_location("/tmp/somewhere/ddsf-" + session.token)
    assert json.loads(session.manifest_path.read_text())["spill"] == ["/tmp/somewhere/ddsf-" + session.token]


def test_pinned_view_releases_when_last_array_dies():
    released = []
    buf = bytearray(serialize(np.arange(1000.0)).to_bytes())
    view = shm.pinned_view(buf, 0, len(buf), lambda: released.append(1))
    arr = deserialize(view)
    part = arr[10:20]
    del view, arr
    gc.collect()
    assert released == []                           # `part` still holds the pin
    assert part[0] == 10.0 and not part.flags.writeable
    del part
    gc.collect()
    assert released == [1]


def test_pinned_view_arrow_and_torch_keep_pin():
    import pyarrow as pa

    for value in (pa.table({"x": np.arange(1000)}),):
        released = []
        buf = bytearray(serialize(value).to_bytes())
        out = deserialize(shm.pinned_view(buf, 0, len(buf), lambda: released.append(1)))
        col = out.column("x")
        del out
        gc.collect()
        assert released == []
        del col
        gc.collect()
        assert released == [1]
    torch = pytest.importorskip("torch")
    released = []
    buf = bytearray(serialize(torch.arange(100)).to_bytes())
    t = deserialize(shm.pinned_view(buf, 0, len(buf), lambda: released.append(1)))
    s = t[5:]
    del t
    gc.collect()
    assert released == []
    del s
    gc.collect()
    assert released == [1]


# ─── real processes ─────────────────────────────────────────────────────────────────────────────
CHILD_DRIVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from core._private.objects import shm
    from core._private.objects.spill import open_spill_target
    s = shm.Session.start(cleanup_stale=False)
    target = open_spill_target({spill!r}, s)
    for _ in range(3):
        mm, _ = shm.create_segment(s.next_segment_name(), 1 << 16)
        mm[:4] = b"data"
    with open(os.path.join(target.url, "spill-000001.bin"), "wb") as f:
        f.write(b"x" * 100)
    print(s.token, target.url, flush=True)
    if {mode!r} == "exit":
        sys.exit(0)                        # atexit cleans
    if {mode!r} == "fork":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)                    # a forked child exiting must not clean the driver's files
        os.waitpid(pid, 0)
        print("forked", flush=True)
    time.sleep(600)
""")


def start_child_driver(mode: str, spill_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    code = CHILD_DRIVER.format(repo=str(REPO), spill=str(spill_dir), mode=mode)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    token, url = p.stdout.readline().split()
    return p, token, Path(url)


def shm_names(token: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"ddsf-{token}-")]


def test_stale_session_of_killed_driver_is_cleaned_live_one_kept(tmp_path):
    dead, dead_token, dead_spill = start_child_driver("sleep", tmp_path / "a")
    live, live_token, live_spill = start_child_driver("sleep", tmp_path / "b")
    try:
        assert len(shm_names(dead_token)) == 3 and dead_spill.is_dir()
        assert stat.S_IMODE(os.stat(dead_spill).st_mode) == 0o700
        dead.send_signal(signal.SIGKILL)
        time.sleep(0.2)                            # not reaped yet: a zombie counts as dead
        removed = shm.cleanup_stale_sessions()   # (a concurrent session start may beat us to it)
        assert live_token not in removed
        assert shm_names(dead_token) == [] and not dead_spill.exists()
        assert len(shm_names(live_token)) == 3 and live_spill.is_dir()
        assert not (shm.manifest_dir() / f"{dead_token}.json").exists()
        assert (shm.manifest_dir() / f"{live_token}.json").exists()
    finally:
        for p in (dead, live):
            p.kill()
            p.wait()
    shm.cleanup_stale_sessions()
    assert shm_names(live_token) == [] and not live_spill.exists()


def test_reused_pid_counts_as_dead(tmp_path):
    """A manifest naming a live pid with another start time is a dead session whose pid was
    reused: cleaned."""
    token = "f" * 16
    prefix = f"ddsf-{token}-"
    mm, _ = shm.create_segment(prefix + "1", 4096)
    mm.close()
    manifest = shm.manifest_dir() / f"{token}.json"
    manifest.write_text(json.dumps({"token": token, "pid": os.getpid(), "shm_prefix": prefix,
                                    "start_time": shm.process_start_time(os.getpid()) - 1, "spill": []}))
    try:
        shm.cleanup_stale_sessions()
        assert shm_names(token) == [] and not manifest.exists()
    finally:
        shm.unlink_segment(prefix + "1")
        manifest.unlink(missing_ok=True)


def test_atexit_cleans_and_forked_child_does_not(tmp_path):
    p, token, spill = start_child_driver("exit", tmp_path / "c")
    assert p.wait(timeout=30) == 0
    assert shm_names(token) == [] and not spill.exists()
    assert not (shm.manifest_dir() / f"{token}.json").exists()

    p, token, spill = start_child_driver("fork", tmp_path / "d")
    try:
        assert p.stdout.readline().strip() == "forked"
        assert len(shm_names(token)) == 3 and spill.is_dir()
    finally:
        p.kill()
        p.wait()
    shm.cleanup_stale_sessions()
    assert shm_names(token) == []


def test_process_start_time():
    assert shm.process_start_time(os.getpid()) > 0
    assert shm.process_start_time(2**22 + 12345) is None
