"""A synthetic task where training must help, and the small models it trains.

Two embedding spaces related by a fixed random rotation plus noise: each document has `x` (its
"image" vector) and `q` = R x + noise (its "caption" vector). The query model reads `q` as it is;
the document model is a linear projection of `x`, randomly initialised, so before training a
query finds its own document by chance only. Trained with the ranking loss on the train fold,
the projection learns R and P@k on the validation set climbs towards 1.

For imputation: tags of a document are the coordinates of A x above a threshold (A fixed and
random); the tagger (a linear layer) predicts them from x, trained with BCE, measured by Jaccard.
"""

from __future__ import annotations

import numpy as np
import torch

TAGS = [f"tag{i}" for i in range(8)]


def documents(n: int = 2000, dim: int = 32, noise: float = 0.3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    mixing = rng.normal(size=(len(TAGS), dim)) / np.sqrt(dim)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    q = x @ rotation.T + noise * rng.normal(size=(n, dim))
    scores = x @ mixing.T
    docs = []
    for i in range(n):
        tags = [TAGS[j] for j in range(len(TAGS)) if scores[i, j] > 0.5]
        docs.append({"x": x[i].round(5).tolist(), "q": q[i].astype(np.float32).round(5).tolist(), "tags": tags})
    return docs


class Projection(torch.nn.Module):
    """A linear map with a seeded initialisation, so every process starts from the same weights."""

    def __init__(self, dim: int = 32, out: int | None = None, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(dim, out or dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) / dim ** 0.5)
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def identity(vector) -> np.ndarray:
    """The query model: the caption vector as it is."""
    return np.asarray(vector, dtype=np.float32)


class Tagger(Projection):
    """Logits per tag; postprocess keeps the tags whose logit is positive (probability above one half)."""

    def __init__(self, dim: int = 32, tags: list[str] | None = None, seed: int = 0):
        self.tags = list(tags or TAGS)
        super().__init__(dim, len(self.tags), seed)

    def postprocess(self, logits) -> list[str]:
        return [t for t, v in zip(self.tags, logits.tolist()) if v > 0]


class FewHot:
    """The tutorial's target model: a list of tags as a few-hot vector (preprocess only)."""

    def __init__(self, tokens: list[str] | None = None):
        self.tokens = list(tokens or TAGS)
        self.lookup = {t: i for i, t in enumerate(self.tokens)}

    def preprocess(self, tags) -> torch.Tensor:
        out = torch.zeros(len(self.tokens))
        out[[self.lookup[t] for t in tags if t in self.lookup]] = 1
        return out
