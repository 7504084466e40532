"""The image classification stages: decode → classify → top5, on numpy batches.

    {"image_id": int64[N], "image": JPEG bytes[N], ...}
        │ decode            (stateless task)  Pillow: RGB, shorter side to 256, centre 224x224 crop,
        ▼                                     ImageNet mean/std ─► float32 N x 3 x 224 x 224
    {"image_id", "image": float32[N, 3, 224, 224]}
        │ Classifier        (actor: built once) ResNet-18 from a state_dict (or a weights file),
        ▼                                     torch threads fitted, eval + inference_mode, on its device
    {"image_id", "logits": float32[N, 1000]}
        │ top5              (stateless task)  softmax, the five best classes
        ▼
    {"image_id", "class_1".."class_5": int64, "score_1".."score_5": float32}

The preprocessing is torchvision's ImageNet evaluation transform (Resize(256), CenterCrop(224),
ToTensor, Normalize) written with Pillow and numpy: torchvision does not import here. Each stage
takes and returns a dict of numpy arrays (Ray Data's and dataflow's "numpy" batch format), so the
same functions run in a dataflow pipeline, in Ray Data's `map_batches`, and by hand.

The Classifier is GPU-ready: on a device other than the CPU the model is moved there once, and
each batch is copied from page-locked (pinned) memory asynchronously (`Placement`).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

RESIZE = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TOP_K = 5


# ---------------------------------------------------------------------------------------------
# decode


def decode(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """JPEG bytes → normalized float32 arrays N x 3 x 224 x 224, with their image ids."""
    images = batch["image"]
    pixels = np.empty((len(images), CROP, CROP, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        pixels[i] = crop_image(data)
    return {"image_id": np.asarray(batch["image_id"], dtype=np.int64), "image": normalize(pixels)}


def crop_image(data: bytes) -> np.ndarray:
    """One image's 224 x 224 x 3 uint8 centre crop after resizing its shorter side to 256
    (bilinear with antialiasing: what torchvision's Resize does to a PIL image)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img = img.resize(resized_size(img.size), Image.BILINEAR)
        left, top = crop_origin(img.size)
        return np.asarray(img.crop((left, top, left + CROP, top + CROP)))


def resized_size(size: tuple[int, int], shorter: int = RESIZE) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter` and the aspect ratio kept, rounded down
    on the longer side as torchvision does: (500, 375) -> (341, 256)."""
    w, h = size
    if w <= h:
        return shorter, int(shorter * h / w)
    return int(shorter * w / h), shorter


def crop_origin(size: tuple[int, int], crop: int = CROP) -> tuple[int, int]:
    """Top-left corner of torchvision's CenterCrop: round((side - crop) / 2) on each axis."""
    w, h = size
    return int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 → float32 N x 3 x H x W, (x / 255 - mean) / std, in one pass per
    channel straight into the channels-first output (no float32 HWC intermediate)."""
    n, h, w, _ = pixels.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    scale, shift = 1.0 / (255.0 * STD), MEAN / STD
    for c in range(3):
        np.multiply(pixels[..., c], scale[c], out=out[:, c], dtype=np.float32)
        out[:, c] -= shift[c]
    return out


# ---------------------------------------------------------------------------------------------
# classify


def fitted_threads(num_threads: int | None, env: Mapping[str, str]) -> int | None:
    """The torch thread count a worker should use: the one asked for, or else the runtime's
    OMP_NUM_THREADS (the share of cores a scheduler gives the worker: dataflow sets it in each
    stage's worker to the stage's fitted threads, Ray to the task's num_cpus), or None: torch's
    default.

    Set explicitly even when OMP_NUM_THREADS is set, because torch reads the variable only when
    it starts, and a worker forked from a process that had already imported torch never sees it."""
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be at least 1, found {num_threads!r}")
        return int(num_threads)
    value = env.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


@dataclass(frozen=True)
class Placement:
    """Where the model runs, and how a batch gets there: to an accelerator, from page-locked
    memory and asynchronously (the copy overlaps with the host's next work); on the CPU as is."""

    device: Any  # torch.device
    pin: bool

    @classmethod
    def choose(cls, requested: str | None, cuda_available: bool) -> "Placement":
        import torch

        if requested in (None, "auto"):
            requested = "cuda" if cuda_available else "cpu"
        device = torch.device(requested)
        return cls(device, pin=device.type == "cuda")

    def move(self, x: Any) -> Any:
        if self.pin:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=self.pin)


class Classifier:
    """ResNet-18 as an actor: built once from `weights` (a state_dict, as `model.path` loads it,
    or the path of a safetensors / torch.save file), then called once per batch.

    The model's parameters are the given tensors themselves (no copy per actor when they are
    shared or memory-mapped); on an accelerator they are copied to it once. `output="logits"`
    returns {"image_id", "logits"} for the `top5` stage; `output="top5"` applies it here."""

    def __init__(self, weights: Any, *, num_threads: int | None = None, device: str | None = None,
                 output: str = "logits"):
        import torch

        from .resnet import load_weights, model_from_weights

        if output not in ("logits", "top5"):
            raise ValueError(f"Classifier output must be 'logits' or 'top5', found {output!r}")
        threads = fitted_threads(num_threads, os.environ)
        if threads is not None:
            torch.set_num_threads(threads)
        if isinstance(weights, (str, os.PathLike)):
            weights = load_weights(os.fspath(weights))
        self.placement = Placement.choose(device, torch.cuda.is_available())
        model = model_from_weights(_tensors(weights))
        if self.placement.device.type != "cpu":
            model = model.to(self.placement.device)  # once, not per batch
        self.model = model
        self.output = output

    def forward(self, images: Any) -> Any:
        """Logits, as a tensor on the model's device."""
        import torch

        with torch.inference_mode():
            return self.model(self.placement.move(_tensor(images)))

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        logits = self.forward(batch["image"]).float().cpu().numpy()
        out = {"image_id": np.asarray(batch["image_id"], dtype=np.int64), "logits": logits}
        return top5(out) if self.output == "top5" else out


def _tensor(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():
        # A batch from shared memory is read-only; the model only reads it.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.ascontiguousarray(x))


def _tensors(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A state_dict of torch tensors; numpy arrays (an .npz, a store's zero-copy views) are
    wrapped, not copied."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"Classifier weights must be a state_dict (a mapping of tensors) or a "
                        f"file path, found {type(weights).__name__}")
    return {k: _tensor(v) for k, v in weights.items()}


# ---------------------------------------------------------------------------------------------
# top5


def top5(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The five most probable classes per image: `class_1..5` (int64) and their softmax
    probabilities `score_1..5` (float32), best first; ties go to the lower class id."""
    logits = np.asarray(batch["logits"], dtype=np.float32)
    ids, scores = top_k(logits, TOP_K)
    out: dict[str, np.ndarray] = {"image_id": np.asarray(batch["image_id"], dtype=np.int64)}
    for k in range(TOP_K):
        out[f"class_{k + 1}"] = ids[:, k]
    for k in range(TOP_K):
        out[f"score_{k + 1}"] = scores[:, k]
    return out


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids int64 N x k, softmax probabilities float32 N x k), best first."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int64)
    return ids, np.take_along_axis(probs, ids, axis=1).astype(np.float32)
