"""The run's memory sampler: PSS over the driver and its children, measured only when RSS moves."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from dataflow import memory
from dataflow.memory import MemorySampler, tree_memory, tree_rss

GROW = ("import sys, time\n"
        "blocks = []\n"
        "for _ in range(6):\n"
        "    blocks.append(bytearray(40_000_000))  # 40 MB, written: real memory\n"
        "    time.sleep(0.1)\n"
        "sys.stdout.write('full\\n'); sys.stdout.flush()\n"
        "time.sleep(60)\n")


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_tree_figures_include_the_children():
    before_pss, before_rss = tree_memory(), tree_rss()
    child = _child(GROW)
    try:
        assert child.stdout.readline() == "full\n"
        assert tree_memory() - before_pss > 200e6
        assert tree_rss() - before_rss > 200e6
    finally:
        child.kill()
        child.wait()


def test_the_sampler_finds_a_childs_peak_and_measures_pss_only_as_rss_rises(monkeypatch):
    calls = []
    real = memory.process_memory
    monkeypatch.setattr(memory, "process_memory", lambda *a: calls.append(time.monotonic()) or real(*a))

    child = _child(GROW)
    try:
        with MemorySampler(interval=0.05) as sampler:
            assert child.stdout.readline() == "full\n"
            time.sleep(0.5)  # ~10 ticks of flat memory
            measured_while_flat = len(calls)
            time.sleep(0.5)
            assert len(calls) == measured_while_flat, "flat RSS: no new PSS measurement"
            child.kill()
            child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert sampler.peak > psutil.Process().memory_full_info().pss + 200e6
