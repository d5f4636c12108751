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
from typing import List, Optional

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


class KVStorage:
    """One layer's key and value buffers, (rows, heads, capacity, head_dim): one row per stream.

    A single stream has one row; a StreamBatch's streams sit side by side in the rows of one
    buffer, so that a batched decode step attends to all of them without copying. Every row has
    the same capacity; growth (by doubling) reallocates all rows at once."""

    def __init__(self, rows: int = 1, initial_capacity: int = 1024):
        self.rows = rows
        self.initial_capacity = initial_capacity
        self.keys = None
        self.values = None

    @property
    def is_initialized(self) -> bool:
        return self.keys is not None

    def initialize(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, heads, _, head_dim = key_states.shape
        self.keys = key_states.new_zeros((self.rows, heads, self.initial_capacity, head_dim))
        self.values = value_states.new_zeros((self.rows, heads, self.initial_capacity, value_states.shape[-1]))

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        # Whole old buffers are copied: a row's live length is its layer's business, and
        # doubling is rare enough that copying the dead slots too costs nothing that matters.
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:2] + (capacity,) + old.shape[3:])
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)


class StreamingKVLayer(CacheLayerMixin):
    """One stream's keys and values in one layer: row `row` of a KVStorage, compacted in place.

    Two ways to append: `update` appends after `length` and returns exactly the cached tokens
    (shapes change every token); in static mode (`static_slot` set, see decoding.py) it writes at
    the slot held in a device tensor and returns the whole buffers, so shapes and addresses stay
    the same from token to token and the attention mask says which slots are live.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, initial_capacity: int = 1024, storage: Optional[KVStorage] = None, row: int = 0):
        super().__init__()
        self.storage = storage if storage is not None else KVStorage(1, initial_capacity)
        self.row = row
        self.length = 0
        self.static_slot = None  # (1,) long tensor: the slot the next token's key/value go to
        self.is_initialized = self.storage.is_initialized

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if not self.storage.is_initialized:
            self.storage.initialize(key_states, value_states)
        self.is_initialized = True

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.storage.keys.device

    @property
    def _key_buffer(self) -> torch.Tensor:  # this stream's row, (1, heads, capacity, head_dim): a view
        return self.storage.keys[self.row : self.row + 1]

    @property
    def _value_buffer(self) -> torch.Tensor:
        return self.storage.values[self.row : self.row + 1]

    @property
    def capacity(self) -> int:
        return self.storage.capacity

    def reserve(self, needed: int) -> None:
        self.storage.reserve(needed)

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
        if not self.storage.is_initialized:
            return
        self.is_initialized = True
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
        if self.storage.is_initialized:
            self._publish_views()


class StreamingKVCache(Cache):
    """The model-facing cache (a transformers `Cache`), driven by the segment table's commits."""

    def __init__(self, num_layers: int, inv_freq: torch.Tensor, initial_capacity: int = 1024,
                 storages: Optional[List[KVStorage]] = None, row: int = 0):
        """`storages` (one per layer, shared by a StreamBatch's streams): this stream is their row `row`."""
        if storages is None:
            storages = [KVStorage(1, initial_capacity) for _ in range(num_layers)]
        if len(storages) != num_layers:
            raise ValueError(f"{len(storages)} KV storages for {num_layers} layers")
        super().__init__(layers=[StreamingKVLayer(storage=storage, row=row) for storage in storages])
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
            if not layer.storage.is_initialized:
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
            layer._key_buffer.nbytes + layer._value_buffer.nbytes
            for layer in self.layers if layer.storage.is_initialized
        )


class BatchDecodeLayer(CacheLayerMixin):
    """A batched decode step's view of one layer: rows of a KVStorage, each row's new key/value
    written at that row's own slot. Returns the rows' first `kv_length` slots (all when None);
    the step's attention mask says which of them are live in each row."""

    is_sliding = False
    is_compileable = False

    def __init__(self, storage: KVStorage):
        super().__init__()
        self.storage = storage
        self.is_initialized = True
        self.rows = slice(0, storage.rows)
        self.row_index = None  # arange over the step's rows, (rows,)
        self.slots = None  # (rows,) long tensor: each row's slot for the new token
        self.kv_length = None

    def lazy_initialization(self, key_states, value_states) -> None:
        raise RuntimeError("a batched decode step needs every stream's prompt prefilled first")

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.keys.dtype

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = self.storage.keys[self.rows], self.storage.values[self.rows]
        keys[self.row_index, :, self.slots] = key_states[:, :, 0]
        values[self.row_index, :, self.slots] = value_states[:, :, 0]
        if self.kv_length is None:
            return keys, values
        return keys[:, :, : self.kv_length], values[:, :, : self.kv_length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.storage.capacity if self.kv_length is None else self.kv_length, 0

    def get_seq_length(self) -> int:
        return self.storage.capacity if self.kv_length is None else self.kv_length

    def get_max_length(self) -> int:
        return -1


class BatchedKVCache(Cache):
    """Several streams' caches side by side, one row each in every layer's buffers.

    `row(b)` is stream b's own StreamingKVCache (its segment table's commits, prefill, questions
    and trimming act on that row alone); this object is the model-facing cache of a batched decode
    step over rows `rows`, each writing at its own slot (`batch_writes`)."""

    def __init__(self, num_layers: int, inv_freq: torch.Tensor, rows: int, initial_capacity: int = 1024):
        storages = [KVStorage(rows, initial_capacity) for _ in range(num_layers)]
        super().__init__(layers=[BatchDecodeLayer(storage) for storage in storages])
        self.inv_freq = inv_freq
        self.storages = storages
        self.rows = rows
        self.row_caches = [StreamingKVCache(num_layers, inv_freq, storages=storages, row=row) for row in range(rows)]

    def row(self, index: int) -> StreamingKVCache:
        return self.row_caches[index]

    @property
    def dtype(self) -> torch.dtype:
        return self.storages[0].keys.dtype

    @property
    def capacity(self) -> int:
        return min(storage.capacity for storage in self.storages)

    def lengths(self) -> List[int]:
        return [cache.get_seq_length() for cache in self.row_caches]

    def reserve(self, needed: int) -> None:
        for storage in self.storages:
            if not storage.is_initialized:
                raise RuntimeError("reserve() before the first forward: the cache's dtype and shapes are not known")
            storage.reserve(needed)

    def buffers_key(self) -> tuple:
        """Identifies the buffers' addresses: a captured CUDA graph is valid while this is unchanged."""
        return tuple(storage.keys.data_ptr() for storage in self.storages) + (self.capacity, self.rows)

    @contextmanager
    def batch_writes(self, slots: torch.Tensor, rows: Optional[slice] = None, kv_length: Optional[int] = None):
        """Within: rows `rows` (all by default) write their new token at `slots` (one per row);
        attention sees their first `kv_length` slots (all when None)."""
        rows = rows if rows is not None else slice(0, self.rows)
        row_index = torch.arange(rows.stop - rows.start, device=slots.device)
        for layer in self.layers:
            layer.rows, layer.row_index, layer.slots, layer.kv_length = rows, row_index, slots, kv_length
        try:
            yield self
        finally:
            for layer in self.layers:
                layer.row_index = layer.slots = None

    def memory_bytes(self) -> int:
        return sum(storage.keys.nbytes + storage.values.nbytes for storage in self.storages if storage.is_initialized)
