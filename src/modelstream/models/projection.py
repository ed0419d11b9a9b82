"""A trainable projection from one embedding space into another (e.g. image features into a text model's
space, the tutorial's `clip_projection`): a linear layer, or a small MLP with `hidden`.

    projection: {object: "modelstream.models.projection:Projection", key: img, features: {img: effnet},
                 args: {n_input: 1280, n_output: 384, hidden: 512}}

Seeded, so the daemon and `modelstream train` start from the same weights before any training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Projection(nn.Module):
    def __init__(self, n_input: int, n_output: int, hidden: int | None = None, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if hidden:
                self.net = nn.Sequential(nn.Linear(n_input, hidden), nn.GELU(), nn.Linear(hidden, n_output))
            else:
                self.net = nn.Linear(n_input, n_output)

    def preprocess(self, features: Any) -> torch.Tensor:
        return torch.as_tensor(features, dtype=torch.float32).flatten()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
