"""Ray's contract at its edges: `wait([])`, and how functions travel to workers (by name when
the worker can import them, by value otherwise) with tracebacks that show the failing line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import core
from core.exceptions import TaskError
from tests.core import _shipping_helpers as helpers


def test_wait_on_an_empty_list_returns_two_empty_lists(session):
    assert core.wait([]) == ([], [])
    assert core.wait([], num_returns=3, timeout=0) == ([], [])


def test_function_of_an_importable_module_goes_by_name_and_shows_its_failing_line(session):
    assert core.get(helpers.divide.remote(6, 3)) == 2.0
    with pytest.raises(TaskError) as info:
        core.get(helpers.divide.remote(1, 0))
    text = str(info.value)
    assert "_shipping_helpers.py" in text and "return a / b  # the failing line" in text
    assert isinstance(info.value.cause, ZeroDivisionError)
    # by name: a few bytes per worker, not the pickled code
    rt = core._private.runtime.current()
    shipped = [w["function_bytes"] for w in rt.worker_stats() if w["function_bytes"]]
    assert shipped and max(shipped) < 200, shipped


def test_actor_class_of_an_importable_module_goes_by_name(session):
    counter = helpers.Counter.remote()
    assert core.get([counter.add.remote(2), counter.add.remote(3)]) == [2, 5]
    with pytest.raises(TaskError, match="counter-failure") as info:
        core.get(counter.fail.remote())
    assert 'raise KeyError("counter-failure")  # the failing method line' in str(info.value)
    rt = core._private.runtime.current()
    assert max(w["function_bytes"] for w in rt.worker_stats() if w["actor"]) < 200


def test_function_defined_in_a_test_body_goes_by_value_and_shows_its_failing_line(session):
    limit = 3

    @core.remote(max_retries=0)
    def check(x):
        if x > limit:
            raise ValueError(f"{x} is over the limit")  # the line the traceback shows
        return x

    assert core.get(check.remote(2)) == 2
    with pytest.raises(TaskError) as info:
        core.get(check.remote(5))
    text = str(info.value)
    assert __file__ in text
    assert 'raise ValueError(f"{x} is over the limit")  # the line the traceback shows' in text


def test_function_defined_in_main_shows_its_failing_line(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent('''
        import core

        @core.remote(max_retries=0)
        def parse(s):
            return int(s)  # parse-line

        core.init(num_cpus=1)
        try:
            core.get(parse.remote("x"))
        except core.exceptions.TaskError as exc:
            print(exc)
        finally:
            core.shutdown()
    '''))
    root = str(__import__("pathlib").Path(core.__file__).parent.parent)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert str(script) in out.stdout and "return int(s)  # parse-line" in out.stdout, out.stdout
