"""core.units: one meaning of each size unit, from a table; errors name the setting."""

from __future__ import annotations

import pytest

import core
from core.exceptions import ConfigError, CoreError
from core.units import format_bytes, parse_size

GiB = 2**30


@pytest.mark.parametrize("value, size", [
    (0, 0),
    (1000, 1000),
    (2.0 * 10**9, 2 * 10**9),
    ("1000", 1000),
    ("1000B", 1000),
    ("2K", 2 * 2**10), ("2Ki", 2 * 2**10), ("2KiB", 2 * 2**10), ("2KB", 2 * 10**3),
    ("2M", 2 * 2**20), ("2Mi", 2 * 2**20), ("2MiB", 2 * 2**20), ("2MB", 2 * 10**6),
    ("2G", 2 * GiB), ("2Gi", 2 * GiB), ("2GiB", 2 * GiB), ("2GB", 2 * 10**9),
    ("2T", 2 * 2**40), ("2Ti", 2 * 2**40), ("2TiB", 2 * 2**40), ("2TB", 2 * 10**12),
    ("2g", 2 * GiB), ("2gb", 2 * 10**9), ("512mib", 512 * 2**20),
    ("2 GB", 2 * 10**9), (" 16MiB ", 16 * 2**20),
    ("1.5G", int(1.5 * GiB)), ("0.5KB", 500), (".5K", 512),
])
def test_parse_size(value, size):
    assert parse_size(value, "x") == size


@pytest.mark.parametrize("value, match", [
    (True, "spill.buffer_size: expected .* got True"),
    (-1, "spill.buffer_size: expected a non-negative size, got -1"),
    ("-1G", "spill.buffer_size: .*got '-1G'"),
    ("2X", r"spill.buffer_size: .*got '2X' \(unknown unit 'X'\)"),
    ("2 GBB", "unknown unit 'GBB'"),
    ("lots", "spill.buffer_size: .*got 'lots'"),
    ("", "spill.buffer_size: .*got ''"),
    (1.5, "spill.buffer_size: expected a whole number of bytes, got 1.5"),
    (float("inf"), "whole number of bytes"),
    (None, "spill.buffer_size: .*got NoneType None"),
    ([1], "got list"),
])
def test_bad_sizes_raise_naming_the_setting_and_value(value, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_size(value, "spill.buffer_size")
    assert isinstance(info.value, CoreError) and isinstance(info.value, ValueError)


def test_minimum():
    assert parse_size("1K", "x", minimum=1) == 1024
    with pytest.raises(ConfigError, match="x: expected a size of at least 1 bytes, got '0G'"):
        parse_size("0G", "x", minimum=1)


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (2**20, "1.0 MiB"),
    (2 * GiB, "2.0 GiB"), (3 * 2**40, "3.0 TiB"), (5000 * 2**40, "5000.0 TiB"), (-2048, "-2.0 KiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_then_parse_round_trips_in_powers_of_two():
    for n in (2**10, 3 * 2**20, 7 * GiB):
        number, unit = format_bytes(n).split()
        assert parse_size(number + unit, "x") == n


@pytest.mark.parametrize("value, match", [
    ("lots", "object_store_memory: .*got 'lots'"),
    (0, "object_store_memory: expected a size of at least 1 bytes, got 0"),
    (True, "object_store_memory: .*got True"),
])
def test_init_rejects_bad_object_store_memory_before_starting(value, match):
    with pytest.raises(ConfigError, match=match):
        core.init(num_cpus=1, object_store_memory=value)
    assert not core.is_initialized()
