"""Token-by-token decoding over the streaming cache, in three modes.

  dynamic     each token goes through the model's forward over exactly the cached tokens; shapes
              change every token. The CPU default (static measured the same there).
  static      every step has the same shapes and buffers: the new key/value is written at a slot
              held in a device tensor, attention runs over the whole preallocated buffer with a
              mask of live slots, and the slot and position advance on the device. Needs sdpa or
              eager attention in the language model (flash kernels take no such mask).
  cuda_graph  the static step captured once as a CUDA graph and replayed per token: no Python or
              kernel-launch overhead per token. Captured again only when the cache's buffers are
              reallocated (they grow by doubling, so rarely). Each capture is replayed once against
              the uncaptured step; a capture that fails or disagrees falls back to static with a
              warning.

All three feed the same tokens at the same positions, so they leave the same cache (test:
test_engine_oracle.py runs the oracle against dynamic and static).

Batches (a StreamBatch's streams, one row each of a BatchedKVCache): one forward per token for
all the streams still answering, inputs (rows, 1, hidden), position_ids (3, rows, 1) and a 4-D
additive mask of each row's live slots; row b's new key/value go to row b's own slot. Dynamic
runs the smallest contiguous range of rows still answering, over the slots the longest of them
uses (a finished row inside the range is fed a dead token whose key/value land past its end and
are dropped); static and cuda_graph always run every row over the whole buffer, so that shapes
stay fixed (one graph per batch size).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import torch

from ..config import DECODE_MODES
from .kv_cache import BatchedKVCache, StreamingKVCache

log = logging.getLogger(__name__)

GRAPH_WARMUP_STEPS = 2  # CUDA graphs are captured after a few eager runs on a side stream


# Static steps pass a 4-D additive mask of live slots; flash-attention kernels take no such mask.
MASKED_ATTENTION = ("sdpa", "eager")


def resolve_decode_mode(name: str, device: torch.device, text_attention: str = "sdpa") -> str:
    if name not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {name!r}; use one of {', '.join(DECODE_MODES)}")
    masked = text_attention in MASKED_ATTENTION
    if name == "auto":
        if device.type != "cuda":
            return "dynamic"
        if not masked:
            log.info("decode mode auto: %s attention takes no slot mask, so decoding is dynamic "
                     "(attn_implementation sdpa enables CUDA graphs)", text_attention)
            return "dynamic"
        return "cuda_graph"
    if name == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"decode mode 'cuda_graph' needs a CUDA device, the model is on {device}; "
                         "use 'static' or 'dynamic'")
    if name in ("static", "cuda_graph") and not masked:
        raise ValueError(f"decode mode {name!r} needs the language model's attention to be one of "
                         f"{', '.join(MASKED_ATTENTION)} (it is {text_attention!r}); set attn_implementation "
                         "to sdpa, or use decode mode 'dynamic'")
    return name


class _Decoder:
    """begin() before a turn's first step, step() per token, end() after the last."""

    queues_ahead = False  # True: the loop queues step n+1 before reading token n back

    def begin(self, cache: StreamingKVCache, position: int, budget: int) -> None:
        """Prepare up to `budget` steps after the cache's current end, at RoPE position `position`."""
        self._cache = cache
        self._start = cache.get_seq_length()

    def end(self, fed: int) -> None:
        """`fed`: how many decoded tokens the cache keeps (steps beyond are dropped)."""
        self._cache.set_length(self._start + fed)


class DynamicDecoder(_Decoder):
    """One forward per token over exactly the cached tokens (see the module docstring)."""

    mode = "dynamic"

    def __init__(self, forward, embed):
        self._forward = forward  # (embeds (n, hidden), positions (3, n)) -> last logits
        self._embed = embed

    def begin(self, cache: StreamingKVCache, position: int, budget: int) -> None:
        super().begin(cache, position, budget)
        self._position = position

    def step(self, token: torch.Tensor) -> torch.Tensor:
        positions = torch.full((3, 1), self._position, dtype=torch.long, device=token.device)
        self._position += 1
        return self._forward(self._embed(token), positions)


class StaticDecoder(_Decoder):
    """Fixed-shape decode steps over the whole buffer; optionally captured as a CUDA graph.

    `rows` > 1: the batched form (BatchStaticDecoder), one row per stream."""

    def __init__(self, language_model, lm_head, embed, device: torch.device, use_cuda_graph: bool, rows: int = 1):
        self._language_model = language_model
        self._lm_head = lm_head
        self._embed = embed
        self.use_cuda_graph = use_cuda_graph
        self.queues_ahead = device.type == "cuda"  # queue step n+1 before reading token n back
        self._token = torch.zeros(rows, dtype=torch.long, device=device)
        self._slot = torch.zeros(rows, dtype=torch.long, device=device)
        self._position = torch.zeros(3, rows, 1, dtype=torch.long, device=device)
        self._slots: Optional[torch.Tensor] = None  # arange(capacity), for the live-slot mask
        self._graph = None
        self._graph_key = None
        self._logits: Optional[torch.Tensor] = None

    @property
    def mode(self) -> str:
        return "cuda_graph" if self.use_cuda_graph else "static"

    def begin(self, cache: StreamingKVCache, position: int, budget: int) -> None:
        super().begin(cache, position, budget)
        self._prepare(cache, self._start + budget + 1)  # + 1: the capture check writes one slot further
        self._slot.fill_(self._start)
        self._position.fill_(position)
        self._capture_if_needed()

    def _prepare(self, cache, needed: int) -> None:
        self._dtype = cache.layers[0].dtype
        cache.reserve(needed)
        if self._slots is None or self._slots.shape[0] != cache.capacity:
            self._slots = torch.arange(cache.capacity, device=self._token.device)

    def _capture_if_needed(self) -> None:
        if self.use_cuda_graph and self._graph_key != self._cache.buffers_key():
            self._capture()

    def _writes(self):
        return self._cache.static_writes(self._slot)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self._token.copy_(token)
        if self._graph is not None:
            self._graph.replay()
            return self._logits
        return self._run()

    def _run(self) -> torch.Tensor:
        # Additive, in the model's dtype: the form both sdpa and eager attention add to scores.
        rows = self._slot.shape[0]
        dead = torch.full((rows, 1, 1, self._slots.shape[0]), torch.finfo(self._dtype).min, dtype=self._dtype,
                          device=self._slots.device)
        live = dead.masked_fill((self._slots[None, :] <= self._slot[:, None]).view(rows, 1, 1, -1), 0.0)
        with self._writes():
            output = self._language_model(
                inputs_embeds=self._embed(self._token)[:, None], position_ids=self._position,
                attention_mask=live, cache=self._cache, use_cache=True,
            )
        logits = self._lm_head(output.last_hidden_state[:, -1])
        self._slot.add_(1)
        self._position.add_(1)
        return logits[0] if rows == 1 and not isinstance(self._cache, BatchedKVCache) else logits

    def _capture(self) -> None:
        self._graph = None
        saved = (self._slot.clone(), self._position.clone())

        def rewind(offset: int = 0):  # warm-up and check steps write past the cache's end only
            self._slot.copy_(saved[0] + offset)
            self._position.copy_(saved[1] + offset)

        try:
            side = torch.cuda.Stream(self._token.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._run()
                    rewind()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._logits = self._run()
            # A graph that froze a value instead of reading its input would decode wrongly
            # without failing: check one replay against the uncaptured step, on inputs (token,
            # slot, position) other than those seen at capture.
            self._token.bitwise_xor_(1)
            rewind(offset=1)
            expected = self._run().float()
            rewind(offset=1)
            graph.replay()
            if not torch.allclose(self._logits.float(), expected, rtol=1e-3, atol=1e-3):
                raise RuntimeError("the replayed graph's logits differ from the uncaptured step's")
        except Exception as error:  # a model or torch build that cannot be captured still decodes
            log.warning("CUDA graph capture failed (%s); decoding without a graph (decode mode 'static')", error)
            self.use_cuda_graph = False
            self._logits = None
        else:
            self._graph = graph
            self._graph_key = self._cache.buffers_key()
            log.info("captured the decode step as a CUDA graph over %d cache slots", self._cache.capacity)
        finally:
            rewind()


class BatchDynamicDecoder:
    """Batched dynamic steps: the rows still answering, over the slots the longest of them uses."""

    mode = "dynamic"

    def __init__(self, language_model, lm_head, embed, device: torch.device):
        self._language_model = language_model
        self._lm_head = lm_head
        self._embed = embed
        self._device = device

    def begin(self, cache: BatchedKVCache, starts: Sequence[int], positions: Sequence[int], budget: int) -> None:
        """Row b's first token goes to slot starts[b] at RoPE position positions[b]."""
        self._cache = cache
        self._starts_host = list(starts)
        self._starts = torch.tensor(starts, dtype=torch.long, device=self._device)
        self._positions = torch.tensor(positions, dtype=torch.long, device=self._device)
        self._steps = 0
        cache.reserve(max(starts) + budget + 1)
        self._slot_range = torch.arange(cache.capacity, device=self._device)

    def step(self, tokens: torch.Tensor, live: slice) -> Tuple[torch.Tensor, slice]:
        """Feed tokens[b] to every row b in `live`; returns their logits (rows, vocab) and the rows run."""
        slots = self._starts[live] + self._steps
        kv_length = max(self._starts_host[live]) + self._steps + 1
        rows = slots.shape[0]
        dtype = self._cache.dtype
        dead = torch.full((rows, 1, 1, kv_length), torch.finfo(dtype).min, dtype=dtype, device=self._device)
        mask = dead.masked_fill((self._slot_range[None, :kv_length] <= slots[:, None]).view(rows, 1, 1, -1), 0.0)
        positions = (self._positions[live] + self._steps).view(1, rows, 1).expand(3, rows, 1)
        with self._cache.batch_writes(slots, live, kv_length):
            output = self._language_model(
                inputs_embeds=self._embed(tokens[live])[:, None], position_ids=positions,
                attention_mask=mask, cache=self._cache, use_cache=True,
            )
        self._steps += 1
        return self._lm_head(output.last_hidden_state[:, -1]), live

    def end(self, fed: Sequence[int]) -> None:
        """fed[b]: how many decoded tokens row b keeps (steps beyond are dropped)."""
        for row, (start, count) in enumerate(zip(self._starts_host, fed, strict=True)):
            self._cache.row(row).set_length(start + count)


class BatchStaticDecoder(StaticDecoder):
    """Batched static (and cuda_graph) steps: every row, over the whole buffer, fixed shapes."""

    def __init__(self, language_model, lm_head, embed, device: torch.device, use_cuda_graph: bool, rows: int):
        super().__init__(language_model, lm_head, embed, device, use_cuda_graph, rows=rows)

    def begin(self, cache: BatchedKVCache, starts: Sequence[int], positions: Sequence[int], budget: int) -> None:
        self._cache = cache
        self._starts_host = list(starts)
        self._prepare(cache, max(starts) + budget + 1)
        self._slot.copy_(torch.tensor(starts, dtype=torch.long))
        self._position.copy_(torch.tensor(positions, dtype=torch.long).view(1, -1, 1).expand(3, -1, 1))
        self._capture_if_needed()

    def _writes(self):
        return self._cache.batch_writes(self._slot)

    def step(self, tokens: torch.Tensor, live: slice) -> Tuple[torch.Tensor, slice]:
        """Feed tokens[b] to every row (finished rows too: fixed shapes); returns (rows, vocab) logits."""
        return super().step(tokens), slice(0, self._slot.shape[0])

    def end(self, fed: Sequence[int]) -> None:
        for row, (start, count) in enumerate(zip(self._starts_host, fed, strict=True)):
            self._cache.row(row).set_length(start + count)
