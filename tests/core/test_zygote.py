"""Workers forked from a zygote that imported their modules once (core.preload_workers,
init(worker_preload=...)): same behaviour as fresh workers, crashes and clean-up included."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

import core
from core.exceptions import WorkerCrashedError
from core._private.runtime import current as current_runtime
from tests.services import descendants


@core.remote
def where() -> dict:
    me = psutil.Process()
    return {"pid": os.getpid(), "ppid": os.getppid(), "name": me.name(),
            "json_loaded": "json.decoder" in sys.modules, "pkg": "email.mime.text" in sys.modules}


@core.remote(max_retries=0)
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@core.remote
def import_it(name: str) -> str:
    import importlib

    return importlib.import_module(name).__name__


def _zygote_of(info: dict) -> psutil.Process:
    parent = psutil.Process(info["ppid"])
    assert parent.name() == "core-zygote" and parent.ppid() == os.getpid()
    return parent


def test_preloaded_workers_are_forked_from_one_zygote_with_the_modules_loaded(make_session):
    core.preload_workers(["email.mime.text"])
    make_session(num_cpus=2)
    infos = core.get([where.remote() for _ in range(6)])
    assert {i["name"] for i in infos} == {"core-worker"}
    assert all(i["pkg"] for i in infos), "the preloaded module is imported before the task runs"
    assert len({i["ppid"] for i in infos}) == 1
    _zygote_of(infos[0])


def test_init_worker_preload_starts_the_zygote_itself(make_session):
    make_session(num_cpus=1, worker_preload=["email.mime.text"])
    info = core.get(where.remote())
    assert info["pkg"]
    _zygote_of(info)


def test_a_module_that_fails_to_import_is_skipped_and_the_task_reports_it(make_session):
    make_session(num_cpus=1, worker_preload=["no_such_module_xyz", "email.mime.text"])
    assert core.get(where.remote())["pkg"]
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        core.get(import_it.remote("no_such_module_xyz"))


def test_a_killed_forked_worker_is_reported_with_its_signal_and_replaced(make_session):
    make_session(num_cpus=1, worker_preload=["email.mime.text"])
    before = core.get(where.remote())
    with pytest.raises(WorkerCrashedError, match="signal 9"):
        core.get(die.remote())
    after = core.get(where.remote())
    assert after["pid"] != before["pid"] and after["ppid"] == before["ppid"]


def test_without_the_zygote_workers_start_as_fresh_interpreters(make_session):
    make_session(num_cpus=1, worker_preload=["email.mime.text"])
    zygote = _zygote_of(core.get(where.remote()))
    zygote.kill()  # its worker dies with it (PR_SET_PDEATHSIG)
    zygote.wait(5)
    deadline = time.monotonic() + 10
    while True:  # the first call may land on the dying worker and be retried
        info = core.get(where.remote())
        if info["ppid"] == os.getpid() or time.monotonic() > deadline:
            break
    assert info["ppid"] == os.getpid() and info["name"] == "core-worker"
    assert not info["pkg"]


def test_shutdown_stops_the_workers_and_the_zygote(make_session):
    make_session(num_cpus=2, worker_preload=["email.mime.text"])
    core.get([where.remote() for _ in range(4)])
    processes = descendants()
    assert {p.name() for p in processes} == {"core-zygote", "core-worker"}
    core.shutdown()
    # Gone by the time shutdown returns: the zygote reaps its workers, and shutdown the zygote.
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not descendants()


def test_a_zygote_told_to_stop_forking_exits_right_after_its_workers(make_session):
    """What a shutdown does: the workers are told to exit, and the zygote to stop forking; it
    reports their (clean) exits, then exits itself, instead of waiting to be told after them."""
    from core._private import api
    from core._private.local import messages as M

    make_session(num_cpus=2, worker_preload=["email.mime.text"])
    core.get([where.remote() for _ in range(4)])
    pool = api._backend.pool
    workers = list(pool.workers.values())
    pool.zygote.stop_forking()
    time.sleep(0.3)
    assert pool.zygote.proc.returncode is None and psutil.pid_exists(pool.zygote.proc.pid), \
        "the zygote waits while its workers run"
    for w in workers:
        w.chan.send(M.Exit(M.EXIT))
    pool.wake()
    assert [w.proc.wait(timeout=5) for w in workers] == [0] * len(workers)
    assert pool.zygote.proc.wait(timeout=5) == 0


def test_an_unused_preload_is_stopped_by_the_next_one_and_at_exit(tmp_path):
    import subprocess

    script = ("import core, psutil, os\n"
              "core.preload_workers(['json'])\n"
              "core.preload_workers(['json'])\n"
              "kids = psutil.Process().children()\n"
              "print(len(kids), ' '.join(str(k.pid) for k in kids))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    count, *pids = out.stdout.split()
    assert count == "1"  # the first zygote was stopped when the second started
    time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(int(p)) and psutil.Process(int(p)).status() != "zombie"]


@pytest.mark.parametrize("threaded", [False, True], ids=["forked-zygote", "spawned-zygote"])
def test_the_zygote_is_forked_when_single_threaded_and_spawned_otherwise(threaded):
    """Forked from a single-threaded driver (no interpreter start), else a fresh interpreter;
    either way the workers run tasks and nothing of the driver's open files reaches them."""
    import subprocess

    script = (
        "import core, os, sys, threading, psutil\n"
        f"if {threaded}:\n"
        "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "import tempfile\n"
        "secret = tempfile.NamedTemporaryFile()\n"
        "core.preload_workers(['email.mime.text'])\n"
        "core.init(num_cpus=1)\n"
        "@core.remote\n"
        "def probe(path):\n"
        "    import sys, os\n"
        "    fds = []\n"
        "    for fd in os.listdir('/proc/self/fd'):\n"
        "        try:\n"
        "            fds.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
        "        except OSError:  # the listing's own descriptor, closed by now\n"
        "            pass\n"
        "    return 'email.mime.text' in sys.modules, path in fds\n"
        "loaded, leaked = core.get(probe.remote(os.path.realpath(secret.name)))\n"
        "zygote = [p for p in psutil.Process().children() if p.name() == 'core-zygote'][0]\n"
        "print(loaded, leaked, zygote.cmdline() != psutil.Process().cmdline())\n"
        "core.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    loaded, leaked, spawned = out.stdout.split()
    assert loaded == "True" and leaked == "False"
    assert spawned == str(threaded)


def _leave_a_thread() -> int:
    import threading

    threading.Thread(target=threading.Event().wait, daemon=True).start()  # as an OpenMP pool
    return 1


def test_after_a_factory_left_threads_the_zygote_spawns_fresh_workers_it_still_reaps(make_session):
    """Forking a process that runs threads is unsafe: its later workers are fresh interpreters
    (posix_spawn), still its children, and their deaths are reported as before."""
    make_session(num_cpus=1, worker_preload=["email.mime.text"])
    core.get(where.remote())
    assert core.get(core.build(_leave_a_thread)) == 1
    _zygote_of(core.get(where.remote()))
    with pytest.raises(WorkerCrashedError, match="signal 9"):
        core.get(die.remote())
    info = core.get(where.remote())           # a worker started after the build
    assert psutil.Process(info["pid"]).cmdline()[1:2] == ["-c"], "a fresh interpreter, not a fork"
    _zygote_of(info)


def test_workers_asked_for_while_the_preload_imports_hold_no_sockets_but_their_own(make_session, tmp_path,
                                                                                   monkeypatch):
    """Workers asked for while the zygote still imports are forked one after the other once it is
    done. The first must not keep the second's socket open: the driver learns of a death from its
    socket's end, so the second's death would go unseen and its tasks would wait forever."""
    go = tmp_path / "go"
    (tmp_path / "preload_until_go.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.005)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    make_session(num_cpus=2, worker_preload=["preload_until_go"])
    refs = [where.remote() for _ in range(2)]
    zygote = current_runtime().pool.zygote
    deadline = time.monotonic() + 60
    while len(zygote._children) < 2 and time.monotonic() < deadline:   # both asked for, none forked
        time.sleep(0.005)
    assert not psutil.Process(zygote.proc.pid).children()
    go.touch()
    pids = sorted({i["pid"] for i in core.get(refs)} | {c.pid for c in zygote._children.values()})
    os.kill(pids[-1], signal.SIGKILL)         # the one forked last
    infos = core.get([where.remote() for _ in range(4)], timeout=60)
    assert pids[-1] not in {i["pid"] for i in infos}


def test_the_zygotes_import_thread_has_left_the_process_before_it_may_fork():
    """A fork must not catch the helper thread in its exit: OpenSSL's exit handler holds a global
    lock there, and a child forked meanwhile hangs at its first SSL context (zygote_imports)."""
    from core._private.local.zygote_imports import Imports

    r, w = os.pipe()
    try:
        imports = Imports(w)
        imports.add(["json", "ssl"])
        thread = imports._thread
        assert os.read(r, 1) == b"\0"           # done: the helper wrote its byte on the way out
        assert not imports.busy()
        assert str(thread.native_id) not in os.listdir("/proc/self/task")
    finally:
        os.close(r)
        os.close(w)
