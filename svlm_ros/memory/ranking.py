"""Ranking a memory store's distinct texts for a query: keyword and meaning evidence, fused by score.

Pure numpy (no SQLite): `TextIndex` holds the texts in memory (word postings, int8 vectors and
their inverted-file cells); `rank` turns a query into the texts that match it, best first.

Two kinds of evidence, each on a fixed scale that means the same for every query:
- keyword *coverage*: the text's BM25 over the query's weight (what a text of average length holding
  each query word once scores, `TextIndex.keyword`), at most 1. Words weigh by their IDF, so a
  text holding the query's rare words (a name, a number, an unusual object) covers nearly all of
  it, one holding only its common words ("a", "the", "at") nearly none; and a query word no text
  holds (a paraphrase's own words) counts against every text. Only coverage above KEYWORD_FLOOR is
  evidence (rescaled to 0..1): a few shared common words are no evidence at all.
- meaning: the cosine of the MiniLM vectors (stored as int8, `vectors.quantize`); it is evidence when
  it beats what the best of that many unrelated texts would reach (`meaning_floor`).
A text matches when either is evidence; the matching texts are ordered by
`(1 - KEYWORD_WEIGHT) * cosine + KEYWORD_WEIGHT * keyword evidence`, ties by text id. A query that
matches no text gets none (recall answers [], "no entry matches").

Why not reciprocal rank fusion (what the store did before): ranks forget how strong the evidence
is. A paraphrase shares only common words with the stored texts, yet BM25 still ranks thousands of
texts by them, and RRF gave the first of those as much weight as meaning's best hit: over a 2-hour
store, 30 planted sentences queried by paraphrase were first 4 times fused against 21 by meaning
alone (docs/benchmarks.md, "Retrieval quality: planted sentences"). Here those texts' coverage is
under the floor and adds nothing, while a keyword query's rare words still lift the text that holds
them.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .vectors import DIMENSIONS, INT8_SCALE
BM25_K1, BM25_B = 1.2, 0.75  # the usual BM25 constants
KEYWORD_WEIGHT = 0.5  # of keyword evidence in the fused score; the rest is the cosine
# The cosine of a query with texts unrelated to it: about normal, mean NULL_MEAN, spread NULL_SPREAD
# (MiniLM; the no-match queries of scripts/bench_retrieval.py over 20,000 texts: medians 0.0-0.08,
# 99th percentiles 0.11-0.21). A text matches by meaning when it beats what the best of n such texts
# reaches, about NULL_MEAN + NULL_SPREAD * sqrt(2 ln n) (the maximum of n normal draws): 0.15 over 6
# texts, 0.25 over 3,000, 0.27 over 20,000, 0.29 over 120,000 (`meaning_floor`). Higher floors cut
# more nonsense but also one-word synonyms ("crimson pylon": cosines 0.25-0.35); docs/benchmarks.md.
NULL_MEAN, NULL_SPREAD = 0.05, 0.05
KEYWORD_FLOOR = 0.30  # a text holding more than this share of the query's keyword weight matches
CANDIDATES = 2000  # texts taken from each side (best BM25, nearest vectors) before fusing


WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> List[str]:
    """Words as FTS5's unicode61 tokenizer cuts them: letters and digits, lower case, no diacritics.
    Only words: search syntax in a user's query (quotes, AND, *, NEAR) is just text."""
    plain = text.lower()
    if not plain.isascii():
        plain = "".join(c for c in unicodedata.normalize("NFKD", plain) if not unicodedata.combining(c))
    return WORD.findall(plain)



class TextIndex:
    """The distinct texts of a store, in memory, by row (text ids increase with the row): int8
    vectors with their inverted-file cells, and word postings for BM25. Grown in place (capacity
    doubling); built again from the file when retention deleted texts."""

    def __init__(self, dimensions: int = DIMENSIONS):
        self.n = 0
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, dimensions), dtype=np.int8)
        self.cells = np.zeros(0, dtype=np.int32)
        self.lengths = np.zeros(0, dtype=np.float32)  # words per text
        self.centroids: Optional[np.ndarray] = None
        self.words: Dict[str, int] = {}
        # Postings (word, row, count) sorted by word for rows < built_rows; later rows in a tail.
        self.offsets = np.zeros(1, dtype=np.int64)
        self.posting_rows = np.zeros(0, dtype=np.int32)
        self.posting_counts = np.zeros(0, dtype=np.float32)
        self.built_rows = 0
        self.pairs_word: List[np.ndarray] = []  # every (word, row) occurrence, to build the postings from
        self.pairs_row: List[np.ndarray] = []
        self.tail: Dict[int, List[int]] = {}  # word -> rows (repeated per occurrence) of rows >= built_rows
        self.tail_size = 0
        self.total_words = 0

    def append(self, ids: np.ndarray, vectors: np.ndarray, cells: np.ndarray, texts: Sequence[str]) -> None:
        need = self.n + len(ids)
        if need > len(self.ids):
            capacity = max(need, 2 * len(self.ids), 1024)
            for name in ("ids", "vectors", "cells", "lengths"):
                old = getattr(self, name)
                new = np.zeros((capacity,) + old.shape[1:], dtype=old.dtype)
                new[:self.n] = old[:self.n]
                setattr(self, name, new)
        self.ids[self.n:need], self.vectors[self.n:need], self.cells[self.n:need] = ids, vectors, cells
        pair_words: List[int] = []
        pair_rows: List[int] = []
        for row, text in enumerate(texts, start=self.n):
            found = tokens(text)
            self.lengths[row] = len(found)
            for word in found:
                word_id = self.words.setdefault(word, len(self.words))
                pair_words.append(word_id)
                pair_rows.append(row)
                self.tail.setdefault(word_id, []).append(row)
        self.pairs_word.append(np.array(pair_words, dtype=np.int32))
        self.pairs_row.append(np.array(pair_rows, dtype=np.int32))
        self.total_words += len(pair_rows)
        self.tail_size += len(pair_rows)
        self.n = need
        if self.tail_size > max(50_000, len(self.posting_rows) // 4):
            self._build_postings()

    def _build_postings(self) -> None:
        words = np.concatenate(self.pairs_word).astype(np.int64)
        rows = np.concatenate(self.pairs_row).astype(np.int64)
        self.pairs_word, self.pairs_row = [words.astype(np.int32)], [rows.astype(np.int32)]
        keys, counts = np.unique(words * (self.n + 1) + rows, return_counts=True)
        by_word = keys // (self.n + 1)
        self.posting_rows = (keys % (self.n + 1)).astype(np.int32)
        self.posting_counts = counts.astype(np.float32)
        self.offsets = np.searchsorted(by_word, np.arange(len(self.words) + 1)).astype(np.int64)
        self.built_rows, self.tail, self.tail_size = self.n, {}, 0

    def postings(self, word: str) -> Tuple[np.ndarray, np.ndarray]:
        """Rows holding the word, and how many times."""
        word_id = self.words.get(word)
        if word_id is None:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        rows, counts = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        if word_id + 1 < len(self.offsets):
            lo, hi = self.offsets[word_id], self.offsets[word_id + 1]
            rows, counts = self.posting_rows[lo:hi], self.posting_counts[lo:hi]
        tail = self.tail.get(word_id)
        if tail:
            more, times = np.unique(np.array(tail, dtype=np.int32), return_counts=True)
            rows, counts = np.concatenate([rows, more]), np.concatenate([counts, times.astype(np.float32)])
        return rows, counts

    def bm25(self, query: str) -> np.ndarray:
        """BM25 of every row for the query's words (0: no word in common)."""
        return self.keyword(query)[0]

    def keyword(self, query: str) -> Tuple[np.ndarray, float]:
        """BM25 of every row, and the query's weight: what a text of average length holding each
        of its words once scores (words no text holds included, at the IDF of a word in no text)."""
        scores = np.zeros(self.n, dtype=np.float32)
        weight = 0.0
        if not self.n:
            return scores, weight
        average = max(1.0, self.total_words / self.n)
        for word in dict.fromkeys(tokens(query)):
            rows, counts = self.postings(word)
            # Lucene's IDF: never negative, so a word in most texts weighs little instead of nothing.
            idf = math.log(1 + (self.n - len(rows) + 0.5) / (len(rows) + 0.5))
            weight += idf
            if len(rows):
                norm = BM25_K1 * (1 - BM25_B + BM25_B * self.lengths[rows] / average)
                scores[rows] += idf * counts * (BM25_K1 + 1) / (counts + norm)
        return scores, weight

    def rows_of(self, text_ids: np.ndarray) -> np.ndarray:
        """Rows of these text ids; ids not loaded (silence, texts newer than the index) are left out."""
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids[:self.n], text_ids), self.n - 1)
        return rows[self.ids[rows] == text_ids]

    def similarity(self, query: np.ndarray, rows: Optional[np.ndarray] = None, chunk: int = 32768) -> np.ndarray:
        """Dot products of the query with these rows (all rows when None). einsum reads the int8
        rows as they are (no float32 copy of the matrix) and stays on this thread: a BLAS call
        here would start its own threads, which fight the embedder's (torch) on a small CPU."""
        if rows is None:
            return np.einsum("ij,j->i", self.vectors[:self.n], query)
        out = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            out[start:start + chunk] = np.einsum("ij,j->i", self.vectors[rows[start:start + chunk]], query)
        return out

    def search(self, query: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        """Rows of the `k` vectors most similar to the query, best first: the exact scan, or only
        the `nprobe` cells nearest to the query when there are cells."""
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        rows: Optional[np.ndarray] = None
        if self.centroids is not None and nprobe < len(self.centroids):
            probe = np.argpartition(-np.einsum("ij,j->i", self.centroids, query), nprobe)[:nprobe]
            wanted = np.zeros(len(self.centroids) + 1, dtype=bool)  # the last slot: cell -1, not assigned yet
            wanted[probe] = True
            wanted[-1] = True
            rows = np.flatnonzero(wanted[self.cells[:self.n]])
        scores = self.similarity(query, rows)
        chosen = top(scores, k)
        return chosen if rows is None else rows[chosen]


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k highest scores, highest first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.argsort(-scores[best], kind="stable")]


def meaning_floor(texts: int) -> float:
    """The cosine a text must reach to match by meaning when the best of `texts` was looked for."""
    return NULL_MEAN + NULL_SPREAD * math.sqrt(2 * math.log(max(texts, 2)))


def rank(index: "TextIndex", query: str, query_vector: np.ndarray, rows: Optional[np.ndarray] = None,
         nprobe: int = 32, candidates: int = CANDIDATES) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of the texts matching the query, best first, and their fused scores. `query_vector`:
    the query's int8 vector (as float32); `rows`: rank only these (the texts inside narrow
    filters), else the best `candidates` by BM25 and by meaning (through the inverted file)."""
    if not index.n or (rows is not None and not len(rows)):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    keyword, weight = index.keyword(query)
    wide = rows is None
    if wide:
        found = np.flatnonzero(keyword > 0)
        rows = np.union1d(found[top(keyword[found], candidates)], index.search(query_vector, candidates, nprobe))
    rows = np.asarray(rows, dtype=np.int64)
    ranked = index.n if wide else len(rows)  # how many texts the best could have come from
    cosine = index.similarity(query_vector, rows) / INT8_SCALE ** 2
    coverage = np.minimum(keyword[rows] / weight, 1.0) if weight > 0 else np.zeros(len(rows), dtype=np.float32)
    evidence = np.maximum(coverage - KEYWORD_FLOOR, 0.0) / (1 - KEYWORD_FLOOR)
    matched = (cosine >= meaning_floor(ranked)) | (evidence > 0)
    rows, cosine, evidence = rows[matched], cosine[matched], evidence[matched]
    scores = ((1 - KEYWORD_WEIGHT) * cosine + KEYWORD_WEIGHT * evidence).astype(np.float32)
    order = np.lexsort((index.ids[rows], -scores))
    return rows[order], scores[order]
