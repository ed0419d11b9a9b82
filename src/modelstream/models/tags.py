"""Tags, as in the tutorial's "imputation": noun words of a caption as the target, a few-hot encoding
of them for the loss, and a tagger whose postprocess turns logits back into words.

    models:
      nouns:   {object: "modelstream.models.tags:NounWords", key: caption, args: {lexicon: [circle, ...]}}
      few_hot: {object: "modelstream.models.tags:FewHot", key: caption, features: {caption: nouns},
                active: false, args: {tokens: [circle, ...]}}
      tagger:  {object: "modelstream.models.tags:Tagger", key: img, features: {img: effnet},
                args: {n_input: 1280, tokens: [circle, ...]}}

NounWords uses spaCy's part-of-speech tags when `backend: spacy` (spaCy and an English pipeline such as
`en_core_web_sm` installed). No English pipeline installs from PyPI (spaCy's models are published on
GitHub, not PyPI), so where that is out of reach the `lexicon` backend keeps the words of a given noun
list: exact for a closed vocabulary (the rendered scenes' captions), not a tagger for open English.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelstream.models.captioning import words


class NounWords:
    """Caption -> the sorted, distinct noun words in it."""

    def __init__(self, backend: str = "lexicon", lexicon: list[str] | None = None, pipeline: str = "en_core_web_sm"):
        if backend not in ("spacy", "lexicon"):
            raise ValueError(f"backend must be spacy or lexicon, not {backend!r}")
        self.backend = backend
        if backend == "spacy":
            import spacy  # an ImportError here names the missing package at `modelstream check`

            self.nlp = spacy.load(pipeline, disable=["parser", "ner"])
        else:
            if not lexicon:
                raise ValueError("the lexicon backend needs `lexicon`, the list of nouns to keep")
            self.lexicon = {w.lower() for w in lexicon}

    def __call__(self, caption: Any) -> list[str]:
        text = " ".join(caption) if isinstance(caption, (list, tuple)) else caption
        if not isinstance(text, str):
            raise TypeError(f"NounWords reads text, got {type(caption).__name__}")
        if self.backend == "spacy":
            return sorted({t.text.lower() for t in self.nlp(text) if t.pos_ == "NOUN"})
        return sorted(set(words(text)) & self.lexicon)


class FewHot:
    """A list of tags -> a 0/1 vector over `tokens` (tags outside it are dropped). Preprocess only: the target."""

    def __init__(self, tokens: list[str]):
        self.tokens = list(tokens)
        self.lookup = {t: i for i, t in enumerate(self.tokens)}

    def preprocess(self, tags: list[str]) -> torch.Tensor:
        out = torch.zeros(len(self.tokens))
        out[[self.lookup[t] for t in tags if t in self.lookup]] = 1
        return out


class Tagger(nn.Module):
    """A linear layer from features to one logit per tag; postprocess keeps the tags whose probability is
    over one half, or the `top_k` most likely (the tutorial's TopK) when it is set."""

    def __init__(self, n_input: int, tokens: list[str], top_k: int | None = None, seed: int = 0):
        super().__init__()
        self.tokens = list(tokens)
        self.top_k = top_k
        generator = torch.Generator().manual_seed(seed)  # every process starts from the same weights
        self.linear = nn.Linear(n_input, len(self.tokens))
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) / n_input ** 0.5)
            self.linear.bias.zero_()

    def preprocess(self, features: Any) -> torch.Tensor:
        return torch.as_tensor(features, dtype=torch.float32).flatten()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def postprocess(self, logits: torch.Tensor) -> list[str]:
        if self.top_k:
            return sorted(self.tokens[i] for i in logits.topk(min(self.top_k, len(self.tokens))).indices.tolist())
        return sorted(t for t, v in zip(self.tokens, logits.tolist()) if v > 0)
