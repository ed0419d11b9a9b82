"""Captioning, as in the tutorial: a word vocabulary (SimpleTokenizer) and a GRU language model
conditioned on image features (ConditionalLM), trained autoregressively, decoding greedily at inference.

    models:
      captioner: {object: "modelstream.models.captioning:ConditionalLM", key: img, features: {img: effnet},
                  args: {vocabulary: vocab.txt, n_condition: 1280}}
      caption_tokens: {object: "modelstream.models.captioning:SimpleTokenizer", key: caption, active: false,
                       args: {vocabulary: vocab.txt}}
    trainings:
      captions: {kind: imputation, model: captioner, target: caption_tokens, loss: autoregressive,
                 metrics: [jaccard], validation_set: captions_valid}

Token ids: the vocabulary's words are 0..V-1 (the last one `<unk>`), V is the start token, V+1 the stop
token, which also pads. The tokenizer's `preprocess` is the training target (max_length ids, always
ending in at least one stop); the language model's `train_forward(features, targets)` is the
teacher-forced pass the autoregressive loss reads, and its `forward(features)` the greedy decoding the
daemon runs, so the stored output is the caption text (`postprocess`).

A vocabulary file is one word per line; a relative path is read from the working directory, so
run the daemon and `modelstream train` from the same folder (or give an absolute path).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

UNKNOWN = "<unk>"
_NOT_A_WORD = re.compile(r"[^a-z ]")


def words(sentence: str) -> list[str]:
    """Lower case, letters only, split on spaces (the tutorial's normalisation)."""
    return [w for w in _NOT_A_WORD.sub(" ", sentence.lower()).split(" ") if w]


def build_vocabulary(sentences: Iterable[str], min_count: int = 1) -> list[str]:
    """The sorted words seen at least `min_count` times (build it from the train fold only)."""
    counts = Counter(w for s in sentences for w in words(s))
    return sorted(w for w, c in counts.items() if c >= min_count and w != UNKNOWN)


def write_vocabulary(path: str | Path, tokens: list[str]) -> None:
    Path(path).write_text("".join(f"{t}\n" for t in tokens))


def _read_tokens(vocabulary: str | None, tokens: list[str] | None) -> list[str]:
    if (vocabulary is None) == (tokens is None):
        raise ValueError("give either `vocabulary` (a file, one word per line) or `tokens` (a list of words)")
    if vocabulary is not None:
        path = Path(vocabulary)
        if not path.exists():
            raise FileNotFoundError(f"vocabulary file {str(path)!r} not found (relative to {Path.cwd()})")
        tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    tokens = [t for t in tokens if t != UNKNOWN]
    if not tokens:
        raise ValueError("the vocabulary is empty")
    return tokens + [UNKNOWN]


class SimpleTokenizer:
    """Sentence -> `max_length` word ids: words outside the vocabulary become `<unk>`, then stop tokens."""

    def __init__(self, vocabulary: str | None = None, tokens: list[str] | None = None, max_length: int = 16):
        if max_length < 2:
            raise ValueError("max_length must be at least 2 (one word and the stop token)")
        self.tokens = _read_tokens(vocabulary, tokens)
        self.lookup = {t: i for i, t in enumerate(self.tokens)}
        self.max_length = max_length
        self.start = len(self.tokens)
        self.stop = len(self.tokens) + 1

    def __len__(self) -> int:
        return len(self.tokens)

    def preprocess(self, sentence: str) -> torch.Tensor:
        if not isinstance(sentence, str):
            raise TypeError(f"SimpleTokenizer reads text, got {type(sentence).__name__}")
        unknown = self.lookup[UNKNOWN]
        ids = [self.lookup.get(w, unknown) for w in words(sentence)][:self.max_length - 1]
        return torch.tensor(ids + [self.stop] * (self.max_length - len(ids)), dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids up to the first stop token -> words (start tokens skipped)."""
        out = []
        for i in ids:
            if i == self.stop:
                break
            if i < len(self.tokens):
                out.append(self.tokens[i])
        return " ".join(out)


class ConditionalLM(nn.Module):
    """A GRU whose first hidden state is a projection of the image features."""

    def __init__(self, vocabulary: str | None = None, tokens: list[str] | None = None, n_condition: int = 1280,
                 n_hidden: int = 256, max_length: int = 16, seed: int = 0):
        super().__init__()
        self.tokenizer = SimpleTokenizer(vocabulary, tokens, max_length)
        n_tokens = len(self.tokenizer) + 2  # the words, start, stop
        self.max_length = max_length
        with torch.random.fork_rng():  # seeded: the daemon and `modelstream train` start from the same weights
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(n_tokens, n_hidden)
            self.conditioning = nn.Linear(n_condition, n_hidden)
            self.rnn = nn.GRU(n_hidden, n_hidden, batch_first=True)
            self.prediction = nn.Linear(n_hidden, n_tokens)

    def preprocess(self, features: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(features, dtype=np.float32)).flatten()

    def _initial_state(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conditioning(features)).unsqueeze(0)

    def train_forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: position i sees the start token and the true words before i.
        N x F, N x L -> logits N x L x tokens."""
        start = torch.full((targets.shape[0], 1), self.tokenizer.start, dtype=torch.long, device=targets.device)
        inputs = torch.cat([start, targets[:, :-1]], dim=1)
        outputs, _ = self.rnn(self.embedding(inputs), self._initial_state(features))
        return self.prediction(outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy decoding: N x F -> N x max_length word ids."""
        hidden = self._initial_state(features)
        token = torch.full((features.shape[0],), self.tokenizer.start, dtype=torch.long, device=features.device)
        out = torch.empty((features.shape[0], self.max_length), dtype=torch.long, device=features.device)
        for i in range(self.max_length):
            step, hidden = self.rnn(self.embedding(token).unsqueeze(1), hidden)
            token = self.prediction(step[:, 0]).argmax(dim=1)
            out[:, i] = token
        return out

    def postprocess(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids.tolist())
