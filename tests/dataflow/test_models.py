"""Model sources (factory, pickle, cloudpickle, torch.save, TorchScript, any fsspec URI), the
picklability check that names the culprit, and how predict.fn is applied."""

from __future__ import annotations

import pickle
import threading

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from dataflow import ModelError, UnpicklableModelError
from dataflow.models import PerWorker, Shared, check_picklable, load_model, make_predictor, sniff_format
from dataflow.spec import ModelSpec
from tests.dataflow import helpers

BATCH = pd.DataFrame({"x": [1, 2, 3]})


@pytest.fixture(autouse=True)
def _weights_cache(tmp_path, monkeypatch):
    """Remote model files are cached under the test's own folder (removed with it)."""
    monkeypatch.setenv("DATAFLOW_CACHE_DIR", str(tmp_path / "cache"))

# TorchScript still works in torch 2.13 but warns that it is deprecated; loading it is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def test_factory_builds_in_the_driver():
    src = load_model(ModelSpec(factory="tests.dataflow.helpers:fragile_model", args={"payload_mb": 0.5}))
    assert isinstance(src, Shared) and src.value.payload.nbytes == 500_000


def test_pickle_and_cloudpickle_files(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(helpers.FragileModel(0.01)))
    model = load_model(ModelSpec(path=str(path))).value
    assert model(BATCH)["y"].tolist() == [2, 4, 6]
    path = tmp_path / "m.cloudpickle"
    path.write_bytes(cloudpickle.dumps(lambda batch: batch["x"] + 1))
    fn = load_model(ModelSpec(path=str(path))).value
    assert fn(BATCH).tolist() == [2, 3, 4]


def test_any_fsspec_uri():
    import fsspec

    with fsspec.open("memory://models/m.pkl", "wb") as f:
        f.write(pickle.dumps(helpers.FragileModel(0.01)))
    try:
        assert isinstance(load_model(ModelSpec(path="memory://models/m.pkl")).value, helpers.FragileModel)
    finally:
        fsspec.filesystem("memory").rm("/models", recursive=True)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"model\.path: cannot read .*nope\.pkl"):
        load_model(ModelSpec(path=str(tmp_path / "nope.pkl")))


def test_torch_save_and_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    from examples.nyc_taxi.mlp import TipMLP

    model = TipMLP()
    saved, scripted = tmp_path / "m.pt", tmp_path / "m_script.pt"
    torch.save(model, saved)
    torch.jit.script(model).save(str(scripted))
    assert sniff_format(saved.read_bytes()) == "torch"
    assert sniff_format(scripted.read_bytes()) == "torchscript"
    a = load_model(ModelSpec(path=str(saved)))
    b = load_model(ModelSpec(path=str(scripted)))
    # A torch.save file is mapped in each worker; a ScriptModule does not pickle: both travel as
    # small recipes (the path; the bytes).
    assert isinstance(a, PerWorker) and isinstance(b, PerWorker)
    check_picklable(a)
    check_picklable(b)
    x = torch.rand(4, 3)
    assert torch.allclose(a.build()(x), model(x)) and torch.allclose(b.build()(x), model(x))


def test_committed_mlp_loads():
    pytest.importorskip("torch")
    from examples.nyc_taxi.model import MLP_PATH

    src = load_model(ModelSpec(path=MLP_PATH))
    assert type(src.build()).__name__ == "TipMLP"


class Holder:
    def __init__(self):
        self.weights = np.zeros(10)
        self.conn = {"pool": [1, threading.Lock()]}


def test_unpicklable_attribute_is_named():
    with pytest.raises(UnpicklableModelError, match=r"model\.conn\['pool'\]\[1\] \(a lock\) does not pickle") as info:
        check_picklable(Holder())
    assert info.value.culprit == "model.conn['pool'][1]"


def test_picklable_check_does_not_copy_big_arrays():
    import tracemalloc

    big = helpers.FragileModel(200)  # 200 MB of zeros, never touched
    tracemalloc.start()
    check_picklable(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20


def test_predict_forms():
    model = helpers.FragileModel(0)
    assert make_predictor(model, None)(BATCH)["y"].tolist() == [2, 4, 6]
    assert make_predictor(model, "tests.dataflow.helpers:double")(BATCH).tolist() == [2, 4, 6]
    assert make_predictor(model, helpers.with_model)(BATCH)["y"].tolist() == [2, 4, 6]

    class NoArg:
        def __call__(self, batch):
            return batch["x"]
    assert make_predictor(model, NoArg)(BATCH).tolist() == [1, 2, 3]

    class Sk:
        def predict(self, batch):
            return batch["x"] * 3
    assert make_predictor(Sk(), None)(BATCH).tolist() == [3, 6, 9]
    with pytest.raises(ModelError, match=r"neither callable nor has a predict\(\) method; give predict\.fn"):
        make_predictor(object(), None)


def test_model_file_on_s3(s3_bucket):
    torch = pytest.importorskip("torch")
    import fsspec

    from examples.nyc_taxi.model import MLP_PATH

    with open(MLP_PATH, "rb") as src, fsspec.open(f"s3://{s3_bucket}/models/tip_mlp.pt", "wb") as dst:
        dst.write(src.read())
    model = load_model(ModelSpec(path=f"s3://{s3_bucket}/models/tip_mlp.pt")).build()
    assert model(torch.tensor([[1.0, 2.0, 8.0]])).shape == (1,)


def _write_weights(path, scale=1.0):
    np.save(path, np.full(1000, scale, dtype=np.float32))


def test_model_generate_makes_a_missing_file_once(tmp_path):
    path = tmp_path / "w.npy"
    spec = ModelSpec(path=str(path), generate={"factory": _write_weights, "args": {"scale": 2.0}})
    load_model(spec)
    assert np.load(path)[0] == 2.0
    _write_weights(path, 3.0)  # an existing file is left alone
    load_model(spec)
    assert np.load(path)[0] == 3.0


def test_model_generate_needs_a_path_and_names_a_failing_factory(tmp_path):
    with pytest.raises(Exception, match="generate makes a missing model.path file"):
        ModelSpec(factory="tests.dataflow.helpers:fragile_model", generate={"factory": _write_weights})

    def broken(path):
        raise OSError("disk full")

    with pytest.raises(ModelError, match=r"model.generate .* could not make .*w.npy: OSError: disk full"):
        load_model(ModelSpec(path=str(tmp_path / "w.npy"), generate={"factory": broken}))
