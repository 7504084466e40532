"""examples/images: the data set generator, ResNet-18 and its weights files, and the stages
(decode, Classifier, top5) on their own, in this process. The pipeline end to end is
tests/e2e/test_image_classify.py."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch", reason="the vision example needs torch (pip install torch)")
PIL = pytest.importorskip("PIL", reason="the vision example needs Pillow: pip install 'ddsf[vision]'")
pytest.importorskip("safetensors", reason="the vision example needs safetensors: pip install 'ddsf[vision]'")

from PIL import Image  # noqa: E402

from examples.images import make_data, resnet, stages  # noqa: E402


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    return resnet.ensure_weights(str(tmp_path_factory.mktemp("w") / "resnet18.safetensors"), seed=0)


@pytest.fixture
def torch_threads():
    """Classifier sets torch's thread count for the whole process: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# -- the data set -------------------------------------------------------------------------------


def test_data_set_schema_sizes_labels_and_files(tmp_path):
    paths = make_data.make_image_shards(str(tmp_path / "images"), images=10, files=3, seed=0,
                                        row_group_size=2, processes=1)
    assert [os.path.basename(p) for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sorted(os.listdir(tmp_path)) == ["images"]  # the temporary folder was renamed, not left
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    assert table.schema == pa.schema([("image_id", pa.int64()), ("image", pa.binary()), ("label", pa.int16())])
    assert table["image_id"].to_pylist() == list(range(10))
    assert [pq.read_metadata(p).num_rows for p in paths] == [4, 3, 3]
    assert pq.read_metadata(paths[0]).num_row_groups == 2
    for data, label in zip(table["image"].to_pylist(), table["label"].to_pylist()):
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.mode == "RGB"
        assert all(120 <= side <= 500 for side in img.size)
        assert 0 <= label < make_data.NUM_LABELS
        assert np.asarray(img).std() > 5  # drawn content, not a flat colour


def test_data_set_same_bytes_for_same_seed_in_parallel_or_not(tmp_path):
    a = make_data.make_image_shards(str(tmp_path / "a"), images=8, files=2, seed=3, processes=2)
    b = make_data.make_image_shards(str(tmp_path / "b"), images=8, files=2, seed=3, processes=1)
    c = make_data.make_image_shards(str(tmp_path / "c"), images=8, files=2, seed=4, processes=1)
    read = lambda paths: [open(p, "rb").read() for p in paths]  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)


def test_data_set_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="files <= images"):
        make_data.make_image_shards(str(tmp_path / "x"), images=2, files=3)
    assert not os.path.exists(tmp_path / "x")


def test_split_ids_is_even_and_covers_every_id():
    assert make_data.split_ids(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]


# -- ResNet-18 and its weights ------------------------------------------------------------------


def test_resnet18_has_torchvisions_parameter_count_and_keys():
    model = resnet.build_resnet18()
    assert resnet.count_parameters(model) == resnet.NUM_PARAMETERS == 11_689_512
    keys = list(model.state_dict())
    assert len(keys) == 122  # torchvision's resnet18 state_dict: parameters and BN buffers
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight", "fc.bias"):
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys  # the first stage keeps its shape: no shortcut conv
    with torch.inference_mode():
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_weights_are_deterministic_by_seed(tmp_path):
    a = resnet.save_weights(resnet.make_weights(0), str(tmp_path / "a.safetensors"), 0)
    b = resnet.save_weights(resnet.make_weights(0), str(tmp_path / "b.safetensors"), 0)
    assert open(a, "rb").read() == open(b, "rb").read()
    other = resnet.make_weights(1)
    assert not torch.equal(other["conv1.weight"], resnet.make_weights(0)["conv1.weight"])
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]  # no temporary left


def test_ensure_weights_writes_once(tmp_path):
    path = str(tmp_path / "data" / "w.safetensors")
    assert resnet.ensure_weights(path) == path
    mtime = os.stat(path).st_mtime_ns
    resnet.ensure_weights(path)
    assert os.stat(path).st_mtime_ns == mtime


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    real = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_weights_load_memory_mapped_and_the_model_uses_them_without_copy(tmp_path, name):
    path = resnet.save_weights(resnet.make_weights(0), str(tmp_path / name), 0)
    state = resnet.load_weights(path)
    expected = resnet.make_weights(0)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    ranges = _mapped_ranges(path)
    ptr = state["layer4.1.conv2.weight"].data_ptr()
    assert any(lo <= ptr < hi for lo, hi in ranges), "the tensor is not a view of the mapped file"
    model = resnet.model_from_weights(state)
    assert model.layer4[1].conv2.weight.data_ptr() == ptr  # the parameter IS the mapped tensor
    assert not model.training
    del model, state


def test_model_from_weights_names_a_foreign_state_dict():
    with pytest.raises(ValueError, match="no 'fc.weight'"):
        resnet.model_from_weights({"encoder.weight": torch.zeros(2)})


# -- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, resized, origin", [
    ((500, 375), (341, 256), (58, 16)),
    ((375, 500), (256, 341), (16, 58)),
    ((256, 256), (256, 256), (16, 16)),
    ((120, 481), (256, 1026), (16, 401)),
])
def test_resize_and_crop_geometry_is_torchvisions(size, resized, origin):
    assert stages.resized_size(size) == resized
    assert stages.crop_origin(resized) == origin


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, "RGB").save(out, format="PNG")  # lossless: the values are exact
    return out.getvalue()


def test_decode_normalizes_channels_first_float32():
    red = np.zeros((300, 400, 3), np.uint8)
    red[..., 0] = 255
    grey = np.full((150, 200, 3), 128, np.uint8)
    out = stages.decode({"image_id": np.array([7, 9]), "image": np.array([_jpeg(red), _jpeg(grey)], dtype=object)})
    assert out["image"].shape == (2, 3, 224, 224) and out["image"].dtype == np.float32
    assert out["image_id"].tolist() == [7, 9] and out["image_id"].dtype == np.int64
    want_red = (np.array([1.0, 0.0, 0.0]) - stages.MEAN) / stages.STD
    want_grey = (128 / 255 - stages.MEAN) / stages.STD
    np.testing.assert_allclose(out["image"][0].mean(axis=(1, 2)), want_red, rtol=1e-5)
    np.testing.assert_allclose(out["image"][1].mean(axis=(1, 2)), want_grey, rtol=1e-5)


def test_decode_crops_the_centre():
    img = np.zeros((256, 512, 3), np.uint8)
    img[:, 144:368] = 255  # a white band exactly where the 224-wide centre crop falls
    out = stages.decode({"image_id": [0], "image": [_jpeg(img)]})["image"][0]
    white = (1.0 - stages.MEAN) / stages.STD
    np.testing.assert_allclose(out.min(axis=(1, 2)), white, rtol=1e-5)


def test_normalize_matches_the_formula():
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 5, 6, 3), dtype=np.uint8)
    want = ((pixels / 255.0 - stages.MEAN) / stages.STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(stages.normalize(pixels), want, rtol=1e-5, atol=1e-6)


# -- Classifier -----------------------------------------------------------------------------------


@pytest.mark.parametrize("asked, env, want", [
    (None, {}, None),
    (None, {"OMP_NUM_THREADS": "1"}, 1),
    (3, {"OMP_NUM_THREADS": "1"}, 3),
    (None, {"OMP_NUM_THREADS": "x"}, None),
])
def test_fitted_threads(asked, env, want):
    assert stages.fitted_threads(asked, env) == want


def test_fitted_threads_rejects_zero():
    with pytest.raises(ValueError, match="num_threads must be at least 1"):
        stages.fitted_threads(0, {})


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 224, 224)).astype(np.float32)


def test_classifier_logits_equal_the_plain_model(weights_file, torch_threads):
    images = _images(3)
    reference = resnet.build_resnet18()
    reference.load_state_dict(resnet.load_weights(weights_file))
    with torch.inference_mode():
        want = reference.eval()(torch.from_numpy(images)).numpy()
    clf = stages.Classifier(weights_file, num_threads=1)  # a path: mapped by the actor itself
    assert torch.get_num_threads() == 1
    out = clf({"image_id": np.array([4, 5, 6]), "image": images})
    assert out["image_id"].tolist() == [4, 5, 6]
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-4)
    # A state_dict of read-only numpy arrays (a store's zero-copy views) works the same.
    frozen = {k: v.numpy() for k, v in resnet.load_weights(weights_file).items()}
    for v in frozen.values():
        v.flags.writeable = False
    images.flags.writeable = False
    again = stages.Classifier(frozen, output="top5")({"image_id": np.array([4, 5, 6]), "image": images})
    assert again["class_1"].tolist() == stages.top5(out)["class_1"].tolist()


def test_classifier_rejects_bad_weights_and_output():
    with pytest.raises(TypeError, match="state_dict .* or a file path, found list"):
        stages.Classifier([1, 2])
    with pytest.raises(ValueError, match="'logits' or 'top5'"):
        stages.Classifier({}, output="probs")


# -- the device path (no GPU here: a fake device) -----------------------------------------------


@pytest.mark.parametrize("asked, cuda, device, pin", [
    (None, False, "cpu", False),
    (None, True, "cuda", True),
    ("auto", True, "cuda", True),
    ("cuda:1", True, "cuda:1", True),
    ("cpu", True, "cpu", False),
    ("meta", False, "meta", False),
])
def test_placement_choice(asked, cuda, device, pin):
    p = stages.Placement.choose(asked, cuda_available=cuda)
    assert (str(p.device), p.pin) == (device, pin)


def test_placement_pins_then_copies_asynchronously(monkeypatch):
    calls = []
    real_to = torch.Tensor.to

    def fake_pin(self):
        calls.append("pin")
        return self

    def spy_to(self, *args, **kwargs):
        calls.append(("to", str(args[0]), kwargs.get("non_blocking")))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    moved = stages.Placement(torch.device("meta"), pin=True).move(torch.zeros(2, 3))
    assert moved.device.type == "meta"
    assert calls == ["pin", ("to", "meta", True)]


def test_classifier_moves_the_model_to_its_device_once(weights_file, torch_threads, monkeypatch):
    moves = []
    real = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(a) or real(self, *a, **k))
    clf = stages.Classifier(weights_file, device="meta")
    assert moves == [(torch.device("meta"),)]
    assert {p.device.type for p in clf.model.parameters()} == {"meta"}
    logits = clf.forward(_images(2))
    assert logits.device.type == "meta" and tuple(logits.shape) == (2, 1000)
    clf.forward(_images(2))
    assert len(moves) == 1  # batches move, the model does not


# -- top5 -------------------------------------------------------------------------------------------


def test_top5_best_first_with_softmax_scores_and_ties_to_the_lower_id():
    logits = np.full((2, 10), -5.0, np.float32)
    logits[0, [3, 8, 1, 6, 2]] = [9, 8, 7, 6, 5]
    logits[1, [4, 2]] = 1.0  # a tie: class 2 comes before class 4
    out = stages.top5({"image_id": np.array([10, 11]), "logits": logits})
    assert list(out) == ["image_id"] + [f"class_{k}" for k in range(1, 6)] + [f"score_{k}" for k in range(1, 6)]
    assert [out[f"class_{k}"][0] for k in range(1, 6)] == [3, 8, 1, 6, 2]
    assert [out[f"class_{k}"][1] for k in range(1, 3)] == [2, 4]
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose([out[f"score_{k}"][0] for k in range(1, 6)], probs[[3, 8, 1, 6, 2]], rtol=1e-6)
    assert out["class_1"].dtype == np.int64 and out["score_1"].dtype == np.float32
