"""The package surface: what `import connectors` exports, costs, and depends on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import connectors

ROOT = Path(__file__).resolve().parents[2]


def test_every_name_in_all_resolves():
    for name in connectors.__all__:
        assert getattr(connectors, name) is not None


def test_exceptions_share_one_root_and_match_builtins():
    from connectors import (ConnectorError, SchemaError, SinkError, SourceError,
                            StorageError)

    for error in (SchemaError, SinkError, SourceError, StorageError):
        assert issubclass(error, ConnectorError)
    assert issubclass(StorageError, OSError) and issubclass(SchemaError, ValueError)


def test_import_is_light_and_independent_of_core_and_dataflow():
    code = ("import sys, connectors; "
            "heavy = [m for m in ('pyarrow', 's3fs', 'fsspec', 'boto3', 'numpy', 'core', "
            "'dataflow') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_module_imports_core_or_dataflow():
    for path in (ROOT / "connectors").glob("*.py"):
        text = path.read_text()
        for package in ("core", "dataflow"):
            assert f"from {package}" not in text and f"import {package}" not in text, path


def _plan_in_a_fresh_process(uri: str, storage_options: dict | None = None) -> str:
    """Plan `uri` in a new interpreter: "<shards> [<heavy modules it imported>]"."""
    code = ("import sys, connectors; "
            f"shards = connectors.plan_shards({uri!r}, columns=['id'], "
            f"storage_options={storage_options!r}); "
            "print(len(shards), [m for m in ('pyarrow.dataset', 'pandas') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_planning_local_files_without_filters_imports_neither_pyarrow_dataset_nor_pandas(
        tmp_path):
    # pyarrow.dataset imports pandas (~0.3 s): planning runs in every driver, before anything.
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(3):
        pq.write_table(pa.table({"id": [i, i + 1], "name": ["a", "b"]}), tmp_path / f"{i}.parquet")

    assert _plan_in_a_fresh_process(str(tmp_path)) == "3 []"


def test_planning_a_few_s3_files_imports_neither_pyarrow_dataset_nor_pandas(s3_dataset, s3_server):
    assert _plan_in_a_fresh_process(s3_dataset, {"endpoint_url": s3_server}) == "3 []"
