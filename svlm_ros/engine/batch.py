"""Many cameras, one model: several streams stepped together.

Each stream is a StreamSession and keeps everything it has alone: its segment table and cache
policy, contiguous positions, instruction, sampler (seed, repetition penalty over its own
tokens), silence and truncation handling, questions. What is shared is the work of a step:

  vision   one call of the vision tower over all the new windows (resolutions may differ);
  prefill  per stream, into its own row of the shared cache (ragged lengths: no padding);
  decode   one forward per token for all the streams still answering (decoding.py, batches).

The streams' caches sit side by side, one row each in every layer's buffers (BatchedKVCache), so
a batched decode step reads them in place; each row is compacted, rotated and trimmed by its own
stream's commits, exactly as alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ..config import EngineConfig
from .decoding import BatchDynamicDecoder, BatchStaticDecoder, resolve_decode_mode
from .kv_cache import BatchedKVCache
from .models import LoadedModel
from .frames import GRID_UNIT
from .session import Answer, StageTimer, StreamSession, WindowResult, vision_features


@dataclass
class StreamWindow:
    """One stream's window for a batched step (as StreamSession.step's arguments)."""
    frames: Sequence[np.ndarray]
    start_s: float
    end_s: float
    user_text: Optional[str] = None


class StreamFailed(RuntimeError):
    """A stream's window failed inside a batched step (its prefill); that stream was reset, the
    others went on."""


class StreamBatch:
    def __init__(self, loaded: LoadedModel, configs: Sequence[EngineConfig], initial_capacity: int = 1024):
        """One stream per config; every stream decodes in the first config's decode mode."""
        if not configs:
            raise ValueError("a StreamBatch needs at least one stream config")
        self.loaded = loaded
        text_config = loaded.text_config
        decoder_model = loaded.model.get_decoder()
        inv_freq = decoder_model.rotary_emb.inv_freq.to(loaded.device, torch.float32)
        self.cache = BatchedKVCache(text_config.num_hidden_layers, inv_freq, len(configs), initial_capacity)
        self.streams = [StreamSession(loaded, config, cache=self.cache.row(row)) for row, config in enumerate(configs)]
        modes = {stream.decode_mode for stream in self.streams}
        if len(modes) != 1:
            raise ValueError(f"the streams of one batch must share a decode mode, got {', '.join(sorted(modes))}")
        mode = resolve_decode_mode(configs[0].generation.decode_mode, loaded.device, text_config._attn_implementation)
        lm_head, embed = loaded.model.get_output_embeddings(), loaded.model.get_input_embeddings()
        if mode == "dynamic":
            self.decoder = BatchDynamicDecoder(decoder_model, lm_head, embed, loaded.device)
        else:
            self.decoder = BatchStaticDecoder(decoder_model, lm_head, embed, loaded.device,
                                              use_cuda_graph=mode == "cuda_graph", rows=len(configs))

    def __len__(self) -> int:
        return len(self.streams)

    def reset(self, stream: int) -> None:
        """Start stream `stream` afresh (a time jump, a new camera); the others are untouched."""
        self.streams[stream].reset()

    def warm_up(self) -> float:
        """One blank window for every stream in one batched step, then every stream starts afresh
        (StreamSession.warm_up for the batched path: its one-time costs, CUDA graph capture for
        this batch size included); returns the seconds it took."""
        started = time.perf_counter()
        blank = np.zeros((GRID_UNIT, GRID_UNIT, 3), dtype=np.uint8)  # scaled up to min_pixels
        windows = [StreamWindow([blank] * stream.config.frames.frames_per_window, 0.0,
                                stream.config.frames.window_seconds) for stream in self.streams]
        for outcome in self.step(windows):
            if isinstance(outcome, Exception):
                raise outcome
        for stream in self.streams:
            stream.reset()
        return time.perf_counter() - started

    def ask(self, stream: int, question: str, **kwargs) -> Answer:
        """A question to one stream, answered from its own cache alone (StreamSession.ask)."""
        return self.streams[stream].ask(question, **kwargs)

    def step(self, windows: Sequence[Optional[StreamWindow]]) -> List[Union[WindowResult, Exception, None]]:
        """Step every stream that has a window (None: that stream sits this step out).

        Returns, per stream, its WindowResult, the error that refused its window (that stream
        is left as it was, the others go on), a StreamFailed when its prefill failed (that stream
        was reset, the others go on), or None. A result's stage seconds are the whole
        batched step's (the work is shared)."""
        if len(windows) != len(self.streams):
            raise ValueError(f"{len(windows)} windows for a batch of {len(self.streams)} streams")
        outcomes: List[Union[WindowResult, Exception, None]] = [None] * len(self.streams)
        checked = {}
        for row, window in enumerate(windows):
            if window is None:
                continue
            try:
                checked[row] = self.streams[row]._check_window(window.frames, window.start_s, window.end_s,
                                                              window.user_text)
            except Exception as error:  # a bad window costs its own stream this step, no one else's
                outcomes[row] = error
        if not checked:
            return outcomes
        rows = sorted(checked)
        timer = StageTimer(self.loaded.device)
        with torch.inference_mode():
            with timer:
                features = vision_features(self.loaded, [checked[row].vision_input for row in rows])
            with timer:
                logits = {}
                for row, feature in zip(rows, features):
                    try:
                        logits[row] = self.streams[row]._prefill_window(checked[row], feature)
                    except Exception as error:  # its row may be half-written: it alone starts afresh
                        self.streams[row].reset()
                        outcomes[row] = StreamFailed(f"{type(error).__name__}: {error}")
                        outcomes[row].__cause__ = error
            with timer:
                answers = self._decode(logits) if logits else {}
        for row in answers:
            words, generated, truncated = answers[row]
            outcomes[row] = self.streams[row]._finish_window(checked[row], words, generated, truncated,
                                                             timer.seconds)
        return outcomes

    def _decode(self, logits: dict) -> dict:
        """Decode the answers of the streams in `logits` (row -> prefill logits) together."""
        streams = self.streams
        answering = {row: streams[row]._start_answer(row_logits, streams[row].config.generation.max_new_tokens)
                     for row, row_logits in logits.items()}
        budget = max(state.limit for state in answering.values())
        starts = self.cache.lengths()
        positions = [stream.table.end_position for stream in streams]
        self.decoder.begin(self.cache, starts, positions, budget)
        live = [row for row in sorted(answering) if streams[row]._take(answering[row])]
        device = self.loaded.device
        idle = torch.zeros(1, dtype=torch.long, device=device)  # fed to rows not answering; dropped
        while live:
            tokens = torch.cat([answering[row].token if row in answering else idle for row in range(len(streams))])
            step_logits, ran = self.decoder.step(tokens, slice(live[0], live[-1] + 1))
            for row in live:
                state = answering[row]
                state.token = streams[row]._draw_after(state.token, step_logits[row - ran.start], state.banned)
            live = [row for row in live if streams[row]._take(answering[row])]
        self.decoder.end([answering[row].fed if row in answering else 0 for row in range(len(streams))])
        return {row: streams[row]._close_answer(state, streams[row]._turn_count - 1, streams[row].window_count)
                for row, state in answering.items()}
