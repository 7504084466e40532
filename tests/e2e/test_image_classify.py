"""The image classification pipeline end to end, as a user runs it: `python -m dataflow run` on
the pipeline's YAML (pointed at a small data set under tmp_path), and the sink's top-5 checked
against a direct torch computation on the same images, written here without the example's stages.

Skipped, with the reason, when torch, Pillow or safetensors are missing (the `vision` extra), or
when this dataflow build cannot validate the pipeline's `stages:` yet."""

from __future__ import annotations

import glob
import io
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

torch = pytest.importorskip("torch", reason="the image pipeline needs torch (pip install torch)")
pytest.importorskip("PIL", reason="the image pipeline needs Pillow: pip install 'ddsf[vision]'")
pytest.importorskip("safetensors", reason="the image pipeline needs safetensors: pip install 'ddsf[vision]'")

from PIL import Image  # noqa: E402

from examples.images import make_data, resnet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The pipeline lives in pipelines/ once dataflow validates it; examples/images/ holds it until then.
PIPELINE = next(p for p in (os.path.join(ROOT, "pipelines", "image_classify.yaml"),
                            os.path.join(ROOT, "examples", "images", "image_classify.yaml")) if os.path.exists(p))
IMAGES = 40
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def dataflow(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflow", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=600)


def small_pipeline(tmp_path) -> str:
    """The pipeline's YAML with its data, weights, sink and spill under tmp_path. The data and
    the weights are made here (not through `generate`), so that only `stages:` is needed."""
    spec = yaml.safe_load(open(PIPELINE))
    spec["source"]["parquet"] = str(tmp_path / "images")
    spec["source"].pop("generate", None)
    (classify,) = [s for s in spec["stages"] if s["name"] == "classify"]
    classify["model"] = {"path": str(tmp_path / "resnet18.safetensors")}
    for stage in spec["stages"]:
        stage["batch_size"] = min(stage.get("batch_size", 8), 8)  # several batches per shard
    spec["sink"] = {"parquet": str(tmp_path / "out")}
    spec["runtime"] |= {"spill": str(tmp_path / "spill"), "object_store_memory": "512MB"}
    path = tmp_path / "image_classify.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def skip_without_stages(path: str, cwd) -> None:
    r = dataflow("validate", path, cwd=cwd)
    if r.returncode != 0 and re.search(r"\bstages: unknown key|\bstages\b.*not supported", r.stderr):
        pytest.skip(f"this dataflow build has no multi-stage pipelines yet: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr


def reference_top5(images: list[bytes], weights: str) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet evaluation preprocessing and ResNet-18, written directly with Pillow and torch."""
    model = resnet.build_resnet18()
    model.load_state_dict(resnet.load_weights(weights))
    model.eval()
    batch = []
    for data in images:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        img = img.resize((256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256), Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - 224) / 2)), int(round((h - 224) / 2))
        x = torch.from_numpy(np.array(img.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)
        batch.append((x.float() / 255 - MEAN) / STD)
    with torch.inference_mode():
        probs = torch.softmax(model(torch.stack(batch)), dim=1)
    scores, ids = torch.topk(probs, 5, dim=1)
    return ids.numpy(), scores.numpy()


def test_sink_top5_equal_a_direct_torch_computation(tmp_path):
    make_data.make_image_shards(str(tmp_path / "images"), images=IMAGES, files=3, seed=0,
                                row_group_size=8, processes=1)
    weights = resnet.ensure_weights(str(tmp_path / "resnet18.safetensors"), seed=0)
    path = small_pipeline(tmp_path)
    skip_without_stages(path, tmp_path)

    r = dataflow("run", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    parts = sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))
    got = pa.concat_tables(pq.read_table(p) for p in parts).sort_by("image_id")
    assert got["image_id"].to_pylist() == list(range(IMAGES))  # every image once
    ids = np.stack([got[f"class_{k}"].to_numpy() for k in range(1, 6)], axis=1)
    scores = np.stack([got[f"score_{k}"].to_numpy() for k in range(1, 6)], axis=1)
    assert ids.dtype == np.int64 and scores.dtype == np.float32

    source = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(str(tmp_path / "images" / "*.parquet"))))
    want_ids, want_scores = reference_top5(source.sort_by("image_id")["image"].to_pylist(), weights)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-3, atol=1e-6)
    # A class id must match unless its score is tied (within tolerance) with a neighbour's.
    gap = np.abs(np.diff(want_scores, axis=1))
    tied = np.zeros_like(want_ids, dtype=bool)
    tied[:, :-1] |= gap < 1e-5
    tied[:, 1:] |= gap < 1e-5
    assert (ids == want_ids)[~tied].all()
    assert (~tied).sum() > IMAGES  # the comparison is not vacuous
