"""The NYC taxi tip models, after Ray's "Batch Prediction with Ray Core" tutorial (the DDSF pattern:
different data, same function).

The tutorial's model is a fake: it predicts a tip when 2 or more passengers rode, and carries a
dummy weight payload (`np.zeros(100_000_000)`, 800 MB) so that shipping the model costs what
shipping real weights would. The tutorial builds that payload inside every call, which allocates
800 MB per shard; here it is built ONCE, when the model is loaded, and held as a numpy array, so
`core.put` stores it out of band in shared memory once and every worker maps the same pages.

    model = load_trained_model()            # built once in the driver
    model(batch)  ->  DataFrame({"score": batch["passenger_count"] >= 2})

The real variant is a small torch MLP (examples/nyc_taxi/mlp.py) trained on the sample data by
examples/nyc_taxi/train.py and saved next to this file as tip_mlp.pt; `predict_tips` scores a
batch of tensors with it (pipelines/nyc_taxi_torch.yaml). torch is imported only by that path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PAYLOAD_MB = 800  # the tutorial's np.zeros(100_000_000) float64
HERE = os.path.dirname(os.path.abspath(__file__))
MLP_PATH = os.path.join(HERE, "tip_mlp.pt")
DATA_DIR = os.path.join(HERE, "data")


class TipModel:
    """score = passenger_count >= 2, with a `payload_mb` weight payload built at load time."""

    def __init__(self, payload_mb: float = PAYLOAD_MB, fill: float = 0.0):
        # A numpy array, so the object store keeps it out of band: one copy in shared memory,
        # mapped read-only by every worker, never pickled into each task. Zeros, as in the
        # tutorial, are mapped lazily by the OS until something copies them; `fill` makes the
        # payload real memory from the start, as trained weights would be.
        n = int(payload_mb * 1_000_000) // 8
        self.payload = np.full(n, fill) if fill else np.zeros(n, dtype=np.float64)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        # pandas is imported here, not at the top: the driver builds the model but never calls it,
        # and importing pandas there would delay the start of every run by a few tenths of a second.
        import pandas as pd

        # Give a tip if 2 or more passengers.
        return pd.DataFrame({"score": batch["passenger_count"] >= 2})

    def __repr__(self) -> str:
        return f"TipModel(payload={self.payload.nbytes / 1e6:.0f} MB)"


def load_model(payload_mb: float = PAYLOAD_MB, fill: float = 0.0) -> TipModel:
    """The tutorial's `load_model()`: a dummy model carrying a weight payload."""
    return TipModel(payload_mb, fill)


def load_trained_model(payload_mb: float = PAYLOAD_MB, fill: float = 0.0) -> TipModel:
    """The tutorial's `load_trained_model()`: predicts a tip when 2 or more passengers rode."""
    return TipModel(payload_mb, fill)


# -- the torch variant -----------------------------------------------------------------------

FEATURES = ("passenger_count", "trip_distance", "fare_amount")


def load_tip_mlp(path: str = MLP_PATH):
    """The trained MLP (torch.save'd by train.py)."""
    import torch

    from . import mlp  # noqa: F401  (the class torch.load unpickles)

    model = torch.load(path, map_location="cpu", weights_only=False)
    model.eval()
    return model


def predict_tips(model, batch: dict) -> dict:
    """Predict the tip of each ride in a batch of tensors (batch_format: torch), in dollars."""
    import torch

    x = torch.stack([batch[c].to(torch.float32) for c in FEATURES], dim=1)
    return {"predicted_tip": model(x).clamp_min(0.0)}
