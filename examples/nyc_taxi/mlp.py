"""A small MLP that predicts a taxi ride's tip (in dollars) from a few numeric columns.

Normalisation statistics are buffers of the module, so the saved file is the whole model: no
separate scaler to ship. Imported only when torch is installed (model.py loads it lazily).
"""

from __future__ import annotations

import torch
from torch import nn


class TipMLP(nn.Module):
    def __init__(self, n_features: int = 3, hidden: int = 16):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The expected tip for each row of x (n, n_features)."""
        return self.net((x - self.mean) / self.std).squeeze(-1)
