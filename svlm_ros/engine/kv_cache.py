"""A KV cache for endless streams: preallocated buffers, in-place compaction, keys re-rotated
once per eviction.

Keys are cached after RoPE, as the model produces them. When the segment table closes a gap,
every later token's three mRoPE positions move by the same delta; on each rotary frequency that
is a plain 1-D rotation by delta * inv_freq, so the cached key is rotated once, when its
position changes, and never again at decode time (the reference re-rotates the whole cache at
every decoded token). The rotation runs in float32 and rounds once back to the cache dtype.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .segments import Commit


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys (..., n, head_dim) by per-token position deltas (n,)."""
    angles = delta.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    keys32 = keys.to(torch.float32)
    rotated = keys32 * angles.cos() + rotate_half(keys32) * angles.sin()
    return rotated.to(keys.dtype)


class StreamingKVLayer(CacheLayerMixin):
    """One layer's keys and values in buffers that grow by doubling and are compacted in place.

    Two ways to append: `update` appends after `length` and returns exactly the cached tokens
    (shapes change every token); in static mode (`static_slot` set, see decoding.py) it writes at
    the slot held in a device tensor and returns the whole buffers, so shapes and addresses stay
    the same from token to token and the attention mask says which slots are live.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, initial_capacity: int = 1024):
        super().__init__()
        self.initial_capacity = initial_capacity
        self.length = 0
        self.static_slot = None  # (1,) long tensor: the slot the next token's key/value go to
        self._key_buffer = None
        self._value_buffer = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, head_dim = key_states.shape
        shape = (batch, heads, self.initial_capacity, head_dim)
        self._key_buffer = key_states.new_zeros(shape)
        self._value_buffer = value_states.new_zeros(shape[:-1] + (value_states.shape[-1],))
        self.is_initialized = True

    @property
    def capacity(self) -> int:
        return 0 if self._key_buffer is None else self._key_buffer.shape[2]

    def reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        for name in ("_key_buffer", "_value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:2] + (capacity,) + old.shape[3:])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def _publish_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        count = key_states.shape[-2]
        if self.static_slot is not None:
            self._key_buffer.index_copy_(2, self.static_slot, key_states)
            self._value_buffer.index_copy_(2, self.static_slot, value_states)
            return self._key_buffer, self._value_buffer
        self.reserve(self.length + count)
        self._key_buffer[:, :, self.length : self.length + count] = key_states
        self._value_buffer[:, :, self.length : self.length + count] = value_states
        self.length += count
        self._publish_views()
        return self.keys, self.values

    def compact(self, commit: Commit, source: torch.Tensor, delta, inv_freq: torch.Tensor) -> None:
        """Gather the kept tokens from `source` slots; rotate their keys by `delta` (None: unmoved)."""
        if not self.is_initialized:
            return
        start = commit.keep_from
        if source.numel():
            moved_keys = self._key_buffer.index_select(2, source)
            moved_values = self._value_buffer.index_select(2, source)
            if delta is not None:
                moved_keys = rotate_keys(moved_keys, delta, inv_freq)
            self._key_buffer[:, :, start : commit.length] = moved_keys
            self._value_buffer[:, :, start : commit.length] = moved_values
        self.length = commit.length
        self._publish_views()

    def set_length(self, length: int) -> None:
        if length > self.capacity:
            raise ValueError(f"cache length {length} exceeds the buffer's capacity {self.capacity}")
        self.length = length
        self._publish_views()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._publish_views()


class StreamingKVCache(Cache):
    """The model-facing cache (a transformers `Cache`), driven by the segment table's commits."""

    def __init__(self, num_layers: int, inv_freq: torch.Tensor, initial_capacity: int = 1024):
        super().__init__(layers=[StreamingKVLayer(initial_capacity) for _ in range(num_layers)])
        self.inv_freq = inv_freq

    def apply(self, commit: Commit) -> None:
        if commit.is_noop and commit.length == self.get_seq_length():
            return
        device = self.inv_freq.device
        source = torch.as_tensor(commit.source_slots, dtype=torch.long, device=device)
        delta = None  # decided on the host: a device-side test would wait for the GPU once per layer
        if commit.position_delta.any():
            delta = torch.as_tensor(commit.position_delta, dtype=torch.float32, device=device)
        for layer in self.layers:
            layer.compact(commit, source, delta, self.inv_freq)

    @property
    def capacity(self) -> int:
        return min(layer.capacity for layer in self.layers)

    def buffers_key(self) -> tuple:
        """Identifies the buffers' addresses: a captured CUDA graph is valid while this is unchanged."""
        return tuple(layer._key_buffer.data_ptr() for layer in self.layers) + (self.capacity,)

    def reserve(self, needed: int) -> None:
        """Grow every layer's buffers (by doubling) to hold `needed` tokens; needs a first prefill."""
        for layer in self.layers:
            if not layer.is_initialized:
                raise RuntimeError("reserve() before the first forward: the cache's dtype and shapes are not known")
            layer.reserve(needed)

    def set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.set_length(length)

    @contextmanager
    def static_writes(self, slot: torch.Tensor):
        """Within: every layer writes the new token's key/value at `slot` and returns whole buffers."""
        for layer in self.layers:
            layer.static_slot = slot
        try:
            yield self
        finally:
            for layer in self.layers:
                layer.static_slot = None

    def memory_bytes(self) -> int:
        return sum(
            layer._key_buffer.nbytes + layer._value_buffer.nbytes for layer in self.layers if layer.is_initialized
        )
