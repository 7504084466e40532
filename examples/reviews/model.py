"""The three stages: `tokenize` (stateless), `Sentiment` (stateful: an embedding table, built
once per actor), `to_label` (stateless); and `load_weights`, the model the driver builds once.

    text ─tokenize─► tokens (N x max_length int32, hashed words) ─Sentiment─► score, embedding (N x dim) ─to_label─► label
"""

from __future__ import annotations

import time
import zlib

import numpy as np

VOCAB = 4096
POSITIVE = {"good", "great", "fine", "love", "solid", "fast", "nice", "excellent", "works", "ok"}


def word_id(word: str) -> int:
    return zlib.crc32(word.encode()) % VOCAB


def tokenize(batch: dict, max_length: int = 16) -> dict:
    """Words to ids, padded with 0: an N x max_length array (one block, no per-row objects after)."""
    texts = batch["text"]
    tokens = np.zeros((len(texts), max_length), dtype=np.int32)
    for i, text in enumerate(texts):
        ids = [word_id(w) + 1 for w in str(text).split()[:max_length]]
        tokens[i, :len(ids)] = ids
    return {"review_id": batch["review_id"], "tokens": tokens}


def load_weights(dim: int = 16, mb: float = 0, seed: int = 0) -> dict:
    """The model: an embedding per word id (sentiment in column 0) and, with `mb`, a filled block
    of extra weights of that size (real bytes, not zeros: as a real model's would be)."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((VOCAB + 1, dim)).astype(np.float32) * 0.1
    emb[0] = 0
    for w in POSITIVE:
        emb[word_id(w) + 1, 0] = 1.0
    for w in ("bad", "awful", "broken", "hate", "slow", "poor", "terrible", "fails", "cheap", "meh"):
        emb[word_id(w) + 1, 0] = -1.0
    extra = rng.standard_normal(int(mb * 1_000_000) // 4, dtype=np.float32) if mb else np.zeros(0, np.float32)
    return {"embedding": emb, "extra": extra}


class Sentiment:
    """Built once per actor with the weights the driver put once (mapped, not copied)."""

    def __init__(self, weights: dict, scale: float = 1.0, delay: float = 0.0):
        self.delay = delay  # seconds per batch: a slower model, for demonstrations and tests
        self.embedding = weights["embedding"]
        self.extra = weights["extra"]
        self.scale = scale
        # A real model would touch its weights on load; this reads each page once.
        self.checksum = float(self.extra[::1024].sum()) if self.extra.size else 0.0

    def __call__(self, batch: dict) -> dict:
        if self.delay:
            time.sleep(self.delay)
        tokens = batch["tokens"]
        vectors = self.embedding[tokens]                      # N x L x dim
        count = np.maximum((tokens > 0).sum(axis=1, keepdims=True), 1)
        mean = vectors.sum(axis=1) / count                    # N x dim
        return {"review_id": batch["review_id"], "score": mean[:, 0] * self.scale, "embedding": mean}


def to_label(batch: dict, threshold: float = 0.0) -> dict:
    score = batch["score"]
    label = np.where(score > threshold, "positive", np.where(score < -threshold, "negative", "neutral"))
    return {"review_id": batch["review_id"], "score": score, "label": label,
            "embedding": batch["embedding"]}


_BUILT: dict[int, Sentiment] = {}


def sentiment(weights: dict, batch: dict) -> dict:
    """The model as a function of (model, batch), for a stateless stage (it then fuses with its
    neighbours): a Sentiment built once per process for these weights."""
    emb, extra = weights["embedding"], weights["extra"]
    key = hash((emb.shape, extra.size, emb.tobytes()[:4096]))  # the same weights, however delivered
    model = _BUILT.get(key)
    if model is None:
        _BUILT.clear()
        model = _BUILT[key] = Sentiment(weights)
    return model(batch)
