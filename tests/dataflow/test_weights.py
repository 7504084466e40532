"""Weights files mapped from the page cache (torch.save, safetensors, .npy, .npz), the remote
cache (downloaded once, size- and ETag-checked), and a real run whose workers map the file."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dataflow import ModelError, Pipeline
from dataflow.models import PerWorker, check_picklable, load_model
from dataflow.spec import ModelSpec
from dataflow.weights import MappedWeights, check_weights, local_copy, map_weights, sniff_file
from tests.dataflow import helpers

W = np.arange(250_000, dtype=np.float32).reshape(500, 500) / 7  # 1 MB, every page different
B = np.linspace(-1, 1, 77, dtype=np.float64)


@pytest.fixture(autouse=True)
def _weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFLOW_CACHE_DIR", str(tmp_path / "cache"))


def mapped_files() -> set[str]:
    """The files this process maps (/proc/self/maps): proof that an array is a view of its file."""
    with open("/proc/self/maps") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}


def save_safetensors(path, tensors: dict) -> None:
    pytest.importorskip("safetensors", reason="the safetensors extra: pip install 'ddsf[safetensors]'")
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def test_npy_is_mapped_read_only(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, W)
    src = load_model(ModelSpec(path=str(path)))
    assert isinstance(src, PerWorker)
    check_picklable(src)  # only the recipe (a path) travels
    w = src.build()
    assert isinstance(w, np.memmap) and str(path) in mapped_files()
    np.testing.assert_array_equal(w, W)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1


def test_npz_stored_members_are_mapped_in_place(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, w=W, b=B, fortran=np.asfortranarray(W[:10, :20]))
    model = map_weights(str(path), sniff_file(str(path)))
    assert set(model) == {"w", "b", "fortran"}
    for name, want in (("w", W), ("b", B), ("fortran", W[:10, :20])):
        assert isinstance(model[name], np.memmap) and model[name].filename == str(path)
        np.testing.assert_array_equal(model[name], want)
    assert model["fortran"].flags.f_contiguous


def test_npz_compressed_members_are_expanded_once_into_the_cache(tmp_path):
    path = tmp_path / "w.npz"
    np.savez_compressed(path, w=W)
    first = map_weights(str(path), "numpy")["w"]
    again = map_weights(str(path), "numpy")["w"]
    assert first.filename.startswith(str(tmp_path / "cache")) and again.filename == first.filename
    np.testing.assert_array_equal(first, W)


def test_safetensors_torch_tensors_are_views_of_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_safetensors(path, {"w": W, "b": B})
    assert sniff_file(str(path)) == "safetensors"
    model = load_model(ModelSpec(path=str(path))).build()
    assert isinstance(model["w"], torch.Tensor) and str(path) in mapped_files()
    np.testing.assert_array_equal(model["w"].numpy(), W)
    np.testing.assert_array_equal(model["b"].numpy(), B)


def test_safetensors_without_torch_are_numpy_memmaps(tmp_path):
    from dataflow.weights import _map_safetensors_numpy

    path = tmp_path / "weights.bin"  # no telling extension: sniffed from the bytes
    save_safetensors(path, {"w": W, "b": B, "empty": np.zeros((0, 3), np.int32)})
    assert sniff_file(str(path)) == "safetensors"
    model = _map_safetensors_numpy(str(path))
    assert isinstance(model["w"], np.memmap) and model["w"].filename == str(path)
    np.testing.assert_array_equal(model["w"], W)
    np.testing.assert_array_equal(model["b"], B)
    assert model["empty"].shape == (0, 3)


def test_torch_save_state_dict_is_mapped(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "state.pt"
    torch.save({"w": torch.from_numpy(W), "b": torch.from_numpy(B)}, path)
    model = load_model(ModelSpec(path=str(path))).build()
    assert str(path) in mapped_files()
    assert torch.equal(model["w"], torch.from_numpy(W))


def test_broken_files_are_named(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_safetensors(path, {"w": W})
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ModelError, match=r"cut\.safetensors is not a valid safetensors file: .*ends past the end"):
        load_model(ModelSpec(path=str(path)))
    fake = tmp_path / "fake.pt"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("hello.txt", "not torch")
    with pytest.raises(ModelError, match=r"fake\.pt is not a valid torch file: .*without data\.pkl"):
        check_weights(str(fake), "torch")


def test_remote_file_is_downloaded_once_and_again_when_it_changes(s3_bucket):
    import fsspec

    uri = f"s3://{s3_bucket}/models/w.npy"
    with fsspec.open(uri, "wb") as f:
        np.save(f, W)
    src = load_model(ModelSpec(path=uri))
    recipe = src.build
    assert isinstance(recipe, MappedWeights) and recipe.path != uri and os.path.exists(recipe.path)
    inode = os.stat(recipe.path).st_ino
    np.testing.assert_array_equal(src.build(), W)
    assert os.stat(local_copy(uri)).st_ino == inode  # same size and ETag: not downloaded again
    with fsspec.open(uri, "wb") as f:  # same size, other bytes: another ETag
        np.save(f, W + 1)
    again = local_copy(uri)
    assert again == recipe.path and os.stat(again).st_ino != inode
    np.testing.assert_array_equal(map_weights(again, "numpy"), W + 1)


def test_a_worker_without_the_file_fetches_the_remote_source(s3_bucket, tmp_path):
    import fsspec

    uri = f"s3://{s3_bucket}/models/w.safetensors"
    save_safetensors(tmp_path / "w.safetensors", {"w": W})
    fsspec.filesystem("s3").put_file(str(tmp_path / "w.safetensors"), uri)
    # As on another machine of a cluster: the driver's cache path does not exist there.
    recipe = MappedWeights(str(tmp_path / "elsewhere" / "w.safetensors"), "safetensors", uri,
                           size=os.path.getsize(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(np.asarray(recipe()["w"]), W)
    local = MappedWeights(str(tmp_path / "gone.npy"), "numpy", str(tmp_path / "gone.npy"), size=10)
    with pytest.raises(ModelError, match=r"gone\.npy: no such file on this machine .*10 bytes when the run started"):
        local()


class Probe:
    """predict.fn for the run below: touches every weight once, and reports from each worker
    whether its weights are a mapping of the file (not a copy)."""

    def __init__(self, weights):
        arrays = weights.values() if isinstance(weights, dict) else [weights]
        self.total = float(sum(np.asarray(a, dtype=np.float64).sum() for a in arrays))
        self.mapped = any(f.endswith(("w.npz", "w.safetensors")) for f in mapped_files())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        n = len(batch)
        return pd.DataFrame({"y": batch["x"] * 2, "mapped": [self.mapped] * n,
                             "total": [self.total] * n, "pid": [os.getpid()] * n})


@pytest.mark.parametrize("kind", ["npz", "safetensors"])
def test_a_run_maps_the_file_in_every_worker(tmp_path, kind):
    if kind == "safetensors":
        pytest.importorskip("safetensors")
        save_safetensors(tmp_path / "w.safetensors", {"w": W, "b": B})
    else:
        np.savez(tmp_path / "w.npz", w=W, b=B)
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=500)
    summary = Pipeline(source={"parquet": data}, model={"path": str(tmp_path / f"w.{kind}")},
                       predict={"fn": "tests.dataflow.test_weights:Probe", "keep_columns": ["id"]},
                       sink=str(tmp_path / "out"),
                       runtime={"num_cpus": 2, "object_store_memory": "64MB",
                                "spill": str(tmp_path / "spill")}).run()
    assert summary.status == "done" and summary.rows == 2000
    out = pq.read_table(tmp_path / "out").to_pandas()
    assert out["mapped"].all() and out["pid"].ne(os.getpid()).all()
    assert np.allclose(out["total"], float(W.astype(np.float64).sum() + B.sum()))
    assert sorted(out["y"]) == sorted(out["id"] % 7 * 2)


@pytest.mark.parametrize("path, wanted", [("w.safetensors", {"torch", "safetensors.torch"}),
                                          ("w.pt", {"torch"}), ("w.npz", set())])
def test_the_workers_import_what_maps_the_weights_once_before_forking(tmp_path, path, wanted):
    """What maps a weights file is imported by the zygote, once, not by each worker into its own
    memory (a safetensors file is mapped through torch when it is installed)."""
    from dataflow._run import worker_modules
    from dataflow.spec import from_python

    spec = from_python(source=str(tmp_path), model={"path": str(tmp_path / path)},
                       predict={"fn": "tests.dataflow.test_weights:Probe"}, sink=str(tmp_path / "out"))
    mods = set(worker_modules(spec))
    assert wanted <= mods and not ({"torch", "safetensors.torch"} - wanted) & mods
