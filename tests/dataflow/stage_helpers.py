"""Stage functions and classes for the multi-stage tests; importable by the workers (by name)."""

from __future__ import annotations

import os

import numpy as np


def add_one(batch: dict) -> dict:
    return {"id": batch["id"], "x": batch["x"] + 1}


def images(batch: dict, size: int = 8) -> dict:
    """An N x 3 x size x size float32 array per batch: decoded images, as a parse stage makes."""
    n = len(batch["id"])
    img = np.broadcast_to(batch["x"].astype(np.float32)[:, None, None, None], (n, 3, size, size)).copy()
    return {"id": batch["id"], "image": img}


class MeanModel:
    """image -> mean (and the weights' checksum); records each construction in $COUNT_FILE."""

    def __init__(self, weights=None, offset: float = 0.0):
        self.weights = weights
        self.offset = offset
        if os.environ.get("COUNT_FILE"):
            with open(os.environ["COUNT_FILE"], "a") as f:
                f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")

    def __call__(self, batch: dict) -> dict:
        if "DIE_ONCE" in os.environ and not os.path.exists(os.environ["DIE_ONCE"]):
            open(os.environ["DIE_ONCE"], "w").close()
            os._exit(3)  # the actor's process dies in the middle of a block
        w = float(self.weights.sum()) if self.weights is not None else 0.0
        mean = batch["image"].reshape(len(batch["id"]), -1).mean(axis=1)
        return {"id": batch["id"], "mean": mean + self.offset, "w": np.full(len(mean), w)}


class BadModel:
    def __init__(self):
        raise RuntimeError("no weights here")

    def __call__(self, batch):
        return batch


def fail_on_bad(batch: dict) -> dict:
    if (batch["mean"] < 0).any():
        raise ValueError(f"negative mean in {int((batch['mean'] < 0).sum())} rows")
    return {"id": batch["id"], "y": batch["mean"] * 2}


def devices(batch: dict) -> dict:
    n = len(batch["id"])
    return {"id": batch["id"], "cuda": np.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n)}


class DeviceModel:
    def __init__(self, log: str | None = None):
        if log:  # each actor notes its devices once, built: whichever actor gets the blocks
            with open(log, "a") as f:
                f.write(os.environ.get("CUDA_VISIBLE_DEVICES", "") + "\n")

    def __call__(self, batch: dict) -> dict:
        n = len(batch["id"])
        return {"id": batch["id"], "cuda": batch["cuda"],
                "actor_cuda": np.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n)}


def weights(mb: float = 1) -> np.ndarray:
    return np.arange(int(mb * 1_000_000) // 8, dtype=np.float64)


def count_calls(batch: dict) -> dict:
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(f"{int(batch['id'][0]) // 1000}\n")
    if os.environ.get("FAIL_SHARD") and (batch["id"] // 1000 == int(os.environ["FAIL_SHARD"])).any():
        raise ValueError("this shard fails today")
    return batch


not_a_function = 42


def broken_weights():
    raise RuntimeError("disk on fire")


def torch_threads(batch: dict, column: str = "threads") -> dict:
    """Passes the batch on with what its worker's torch and OMP_NUM_THREADS say (torch imported
    here, on first use: the stage itself does not need it)."""
    import torch

    n = len(batch["id"])
    return {**batch, column: np.full(n, torch.get_num_threads()),
            f"{column}_env": np.full(n, int(os.environ.get("OMP_NUM_THREADS", "0")))}


class TorchThreads:
    """As torch_threads, as an actor pool; `set_in_init` sets torch's threads in the constructor
    (a stage's own choice, which the worker's fitting must leave alone)."""

    def __init__(self, column: str = "pool_threads", set_in_init: int | None = None):
        import torch

        if set_in_init is not None:
            torch.set_num_threads(set_in_init)
        self.column = column

    def __call__(self, batch: dict) -> dict:
        return torch_threads(batch, self.column)


def torch_loaded(batch: dict) -> dict:
    """Whether torch is loaded in this worker, and its OMP_NUM_THREADS (touches no torch)."""
    import sys

    n = len(batch["id"])
    return {"id": batch["id"], "threads_env": np.full(n, int(os.environ.get("OMP_NUM_THREADS", "0"))),
            "torch_loaded": np.full(n, "torch" in sys.modules)}
