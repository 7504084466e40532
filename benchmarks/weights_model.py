"""The weights-file contenders' model (benchmarks/pipeline.py --weights): the tutorial's tip rule,
holding the tensors of a weights file that every worker maps (torch.save or safetensors).

torch and pandas are imported where used, not at the top: the driver validating the pipeline
imports this module (its `predict.fn`), and importing torch there (~1.5 s of CPU) would only
delay the run. The workers get torch from the zygote (`model.path` ending in .pt) or import it.
"""

from __future__ import annotations


def load(path: str, fmt: str) -> dict:
    """What a hand-written worker does: map the file (no copy), as dataflow's workers do."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, mmap=True, weights_only=True)


class WeightsTip:
    """Touches every weight once when built, as a real model's first forward pass does (each
    page comes from the page cache into the worker's mapping); then scores like the tutorial."""

    def __init__(self, weights: dict):
        self.weights = weights
        self.checksum = sum(float(t.sum()) for t in weights.values())

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame({"score": batch["passenger_count"] >= 2})
