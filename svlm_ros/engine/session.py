"""A streaming session: one camera's endless stream, one window (default 1 s) per step.

Each step evicts by age (segments.py), closes position gaps in the KV cache (kv_cache.py), runs
the vision tower on the new window only, prefills the new user turn and decodes the answer, all
through the model's public forward with explicit 3-D position_ids and our Cache passed as `cache`.

Callers pass windows in their own clock (sensor stamps, seconds of a file); the prompt's time text
counts seconds since the stream's first window, as StreamingVLM was trained, and every result
keeps the caller's clock.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..config import EngineConfig
from .decoding import DynamicDecoder, StaticDecoder, resolve_decode_mode
from .frames import GRID_UNIT, MERGE_SIZE, VisionInput, preprocess_frames
from .kv_cache import StreamingKVCache
from .models import LoadedModel, check_cache_argument
from . import sequence
from .prompt import PromptBuilder
from .sampling import Sampler
from .segments import Kind, SegmentTable

log = logging.getLogger(__name__)


@dataclass
class WindowResult:
    index: int  # windows since the stream started
    start_s: float  # in the caller's clock (sensor time in the node)
    end_s: float
    text: str  # the words, without the silence marker
    silent: bool  # the model said nothing new
    truncated: bool  # max_new_tokens was hit before the end of turn
    generated_tokens: int
    vision_s: float
    prefill_s: float
    decode_s: float
    cache_tokens: int
    max_position: int

    @property
    def latency_s(self) -> float:
        return self.vision_s + self.prefill_s + self.decode_s


@dataclass
class Answer:
    text: str
    window: int  # the latest window the answer is based on (-1: no video yet)
    end_s: float  # end of that window in the caller's clock
    generated_tokens: int
    truncated: bool


@dataclass
class StageTimer:
    """Seconds per stage (vision, prefill, decode), synchronized with the device so GPU work is counted."""
    device: torch.device
    seconds: List[float] = field(default_factory=list)

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class _CheckedWindow:
    """A checked and preprocessed window, not yet part of the stream."""
    vision_input: VisionInput
    start_s: float
    end_s: float
    user_text: Optional[str]


@dataclass
class _Answering:
    """An answer being decoded: `token` was drawn and is not yet fed."""
    limit: int
    banned: Optional[int]
    force_length: bool
    token: torch.Tensor
    generated: List[int] = field(default_factory=list)
    truncated: bool = False

    @property
    def fed(self) -> int:
        """Decoded tokens fed to the cache: every word, except the last one when the limit cut the answer."""
        return len(self.generated) - (len(self.generated) >= self.limit)


class StreamSession:
    def __init__(self, loaded: LoadedModel, config: Optional[EngineConfig] = None,
                 cache: Optional[StreamingKVCache] = None):
        """`cache`: this stream's row of a StreamBatch's BatchedKVCache (its own cache by default)."""
        self.loaded = loaded
        self.config = (config or EngineConfig()).validate()
        self.model = loaded.model
        self.prompt = PromptBuilder(loaded.tokenizer)
        self.device = loaded.device
        text_config = loaded.text_config
        self._decoder_model = self.model.get_decoder()  # the text model, through the public accessor
        check_cache_argument(self._decoder_model)
        self._lm_head = self.model.get_output_embeddings()
        rotary = self._decoder_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise ValueError("RoPE with attention scaling is not supported (keys are re-rotated on eviction)")
        self._inv_freq = rotary.inv_freq.to(self.device, torch.float32)
        self._num_layers = text_config.num_hidden_layers
        self._embed = self.model.get_input_embeddings()
        self._time_step = loaded.time_step(self.config.frames.fps)
        self.sampler = Sampler(self.config.generation, text_config.vocab_size, self.device)
        decode_mode = resolve_decode_mode(self.config.generation.decode_mode, self.device,
                                          text_config._attn_implementation)
        if decode_mode == "dynamic":
            self.decoder = DynamicDecoder(self._forward, self._embed)
        else:
            self.decoder = StaticDecoder(self._decoder_model, self._lm_head, self._embed,
                                         self.device, use_cuda_graph=decode_mode == "cuda_graph")
        self.last_logits: Optional[torch.Tensor] = None
        self.cache = cache
        self.reset()

    # ----- public API -------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a fresh stream: empty cache, window 0, the standing instruction in the next turn."""
        self.table = SegmentTable()
        if getattr(self, "cache", None) is None:
            self.cache = StreamingKVCache(self._num_layers, self._inv_freq)
        else:
            for layer in self.cache.layers:
                layer.reset()
        self.window_count = 0
        self._turn_count = 0
        self._last_end_s = 0.0
        self._origin_s: Optional[float] = None  # the first window's start, in the caller's clock
        self._instruction_pending = True
        self.last_logits = None

    def warm_up(self) -> float:
        """Describe one blank window and forget it; returns the seconds it took.

        The first window of a process pays one-time costs (allocator growth, kernel selection,
        CUDA graph capture); paying them here keeps them out of the first real window. The
        stream then starts fresh, with the standing instruction still to be sent."""
        started = time.perf_counter()
        blank = np.zeros((GRID_UNIT, GRID_UNIT, 3), dtype=np.uint8)  # scaled up to min_pixels
        self.step([blank] * self.config.frames.frames_per_window, 0.0, self.config.frames.window_seconds)
        self.reset()
        return time.perf_counter() - started

    def set_instruction(self, text: str) -> None:
        """Replace the standing instruction; it is sent with the next window's user turn."""
        self.config.prompt.instruction = text
        self._instruction_pending = True

    @property
    def decode_mode(self) -> str:
        """The decode mode in use (cuda_graph turns into static if its capture failed)."""
        return self.decoder.mode

    @property
    def cache_tokens(self) -> int:
        return self.cache.get_seq_length()

    def step(self, frames: Sequence[np.ndarray], start_s: float, end_s: float,
             user_text: Optional[str] = None) -> WindowResult:
        """Describe one window of video (its frames, RGB uint8) from start_s to end_s."""
        window = self._check_window(frames, start_s, end_s, user_text)
        timer = StageTimer(self.device)
        with torch.inference_mode():
            with timer:
                features = self._vision_features(window.vision_input)
            with timer:  # cache upkeep (eviction, compaction) counts with the prefill it serves
                logits = self._prefill_window(window, features)
            with timer:
                words, generated, truncated = self._generate(logits, self._turn_count - 1, self.window_count,
                                                             self.config.generation.max_new_tokens)
        return self._finish_window(window, words, generated, truncated, timer.seconds)

    def _check_window(self, frames: Sequence[np.ndarray], start_s: float, end_s: float,
                      user_text: Optional[str]) -> _CheckedWindow:
        """Everything about a window that can be refused, before the stream changes."""
        if not end_s >= start_s:
            raise ValueError(f"window end {end_s} is before its start {start_s}")
        if self._origin_s is not None and start_s < self._origin_s:
            raise ValueError(f"window start {start_s} is before this stream's first window ({self._origin_s}); "
                             "call reset() to start a new stream when time goes back")
        frames_config = self.config.frames
        vision_input = preprocess_frames(frames, frames_config.min_pixels, frames_config.max_pixels,
                                         self.loaded.normalization)
        return _CheckedWindow(vision_input, start_s, end_s, user_text)

    def _prefill_window(self, window: _CheckedWindow, features: torch.Tensor) -> torch.Tensor:
        """Evict by age, append the window's turn and forward it; returns the last token's logits."""
        if self._origin_s is None:
            self._origin_s = window.start_s
        self._evict(self.window_count)
        self._append_turn(window.vision_input, window.start_s, window.end_s, window.user_text)
        return self._forward_new(features)

    def _finish_window(self, window: _CheckedWindow, words: List[int], generated: int, truncated: bool,
                       seconds: Sequence[float]) -> WindowResult:
        index = self.window_count
        self.window_count += 1
        self._last_end_s = window.end_s
        text = self.prompt.decode(words).strip()
        vision_s, prefill_s, decode_s = seconds
        return WindowResult(index, window.start_s, window.end_s, text, not text, truncated, generated,
                            vision_s, prefill_s, decode_s, self.cache_tokens, self.table.end_position)

    def stream_seconds(self, clock_s: float) -> float:
        """Seconds since the stream's first window of a time in the caller's clock (0 before it)."""
        return 0.0 if self._origin_s is None else clock_s - self._origin_s

    def _append_turn(self, vision_input: VisionInput, start_s: float, end_s: float,
                     user_text: Optional[str]) -> None:
        index = self.window_count
        turn = self._new_turn()
        query = sequence.standing_query(self.config.prompt.instruction, self._instruction_pending, user_text)
        self._instruction_pending = False
        grid_t, grid_h, grid_w = vision_input.grid_thw
        new = self._head_segments() if not self.table.segments else []
        new += sequence.window_turn(self.table, self.prompt, turn, index, self.stream_seconds(start_s),
                                    self.stream_seconds(end_s), vision_input.token_count,
                                    (grid_t, grid_h // MERGE_SIZE, grid_w // MERGE_SIZE), self._time_step, query)
        self.table.append(new)

    def set_context(self, text: str) -> None:
        """The `previous text` a fresh stream starts with (prompt.context), from the next reset on.

        The node seeds it from the long-term memory's latest summaries when it restarts."""
        self.config = dataclasses.replace(self.config, prompt=dataclasses.replace(self.config.prompt, context=text))

    def ask(self, question: str, max_new_tokens: Optional[int] = None, recalled: Sequence[str] = ()) -> Answer:
        """Answer a question from the current cache; the turn then ages like the current window.

        `recalled`: timed lines from the long-term memory, placed in the question turn before the
        question (PromptBuilder.recalled). A question that fails part-way leaves the stream as it
        was before it was asked."""
        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        question_ids = self.prompt.encode(question)
        limit_tokens = self.config.prompt.max_question_tokens
        if len(question_ids) > limit_tokens:
            raise ValueError(f"the question is {len(question_ids)} tokens long, more than "
                             f"prompt.max_question_tokens={limit_tokens}; shorten it or raise that limit")
        window = max(self.window_count - 1, 0)
        saved = (list(self.table.segments), self.table.next_uid, self._turn_count, self.cache_tokens)
        try:
            with torch.inference_mode():
                turn = self._new_turn()
                new = self._head_segments() if not self.table.segments else []
                new += sequence.question_turn(self.table, self.prompt, turn, window,
                                              self.stream_seconds(self._last_end_s),
                                              self.prompt.question(question),
                                              self.prompt.recalled(recalled))
                self.table.append(new)
                logits = self._forward_new(None)
                limit = max_new_tokens or self.config.generation.answer_max_new_tokens
                words, generated, truncated = self._generate(logits, turn, window, limit)
        except BaseException:
            # Nothing before the question moved (a question evicts nothing), so dropping what it
            # appended restores the table, and cutting the cache back to its old length its K/V.
            self.table.segments, self.table.next_uid, self._turn_count, length = saved
            self.cache.set_length(length)
            self.last_logits = None
            raise
        text = self.prompt.decode(words).strip()
        return Answer(text, self.window_count - 1, self._last_end_s, generated, truncated)

    # ----- internals --------------------------------------------------------------------------
    def _new_turn(self) -> int:
        self._turn_count += 1
        return self._turn_count - 1

    def _head_segments(self):
        return sequence.head_segments(self.table, self.prompt, self.config.prompt.system,
                                      self.prompt.encode(self.config.prompt.context))

    def _evict(self, window: int) -> None:
        if not self.table.segments:
            return
        self.table.apply_policy(self.config.cache, window)
        self.cache.apply(self.table.commit())

    def _vision_features(self, vision_input: VisionInput) -> torch.Tensor:
        return vision_features(self.loaded, [vision_input])[0]

    def _forward_new(self, video_features: Optional[torch.Tensor]) -> torch.Tensor:
        """Forward every table token past the cache's end; returns the last token's logits."""
        start = self.cache_tokens
        tokens, positions = self.table.tail(start)
        embeds = self._embed(torch.from_numpy(tokens).to(self.device))
        if video_features is not None:
            used = 0
            for segment in self.table.of_kind(Kind.VISION):  # slices, not a mask: no device-to-host sync
                if segment.slot >= start:
                    pads = self.prompt.vision_pads(len(segment))
                    count = pads.stop - pads.start
                    first = segment.slot - start + pads.start
                    embeds[first:first + count] = video_features[used:used + count].to(embeds.dtype)
                    used += count
            if used != video_features.shape[0]:
                raise RuntimeError(f"{video_features.shape[0]} vision features for {used} video tokens")
        return self._forward(embeds, torch.from_numpy(positions).to(self.device))

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        output = self._decoder_model(
            inputs_embeds=embeds[None], position_ids=positions[:, None, :],
            cache=self.cache, use_cache=True,
        )
        logits = self._lm_head(output.last_hidden_state[0, -1])
        self.last_logits = logits
        return logits

    def _generate(self, logits: torch.Tensor, turn: int, window: int, limit: int):
        """Decode up to `limit` tokens; then record the answer and close the turn in the cache.

        Returns (the answer's word ids without a trailing silence marker, tokens generated,
        truncated)."""
        decoder = self.decoder
        answering = self._start_answer(logits, limit)
        decoder.begin(self.cache, self.table.end_position, budget=limit)
        while True:
            # On a GPU step n+1 is queued before token n is read back here, so the device never
            # waits on the host; if token n ends the turn, end() drops that step's key/value.
            ahead = (self._feed(answering.token, answering.banned)
                     if decoder.queues_ahead and len(answering.generated) + 1 < limit else None)
            if not self._take(answering):
                break
            answering.token = ahead if ahead is not None else self._feed(answering.token, answering.banned)
        decoder.end(answering.fed)
        return self._close_answer(answering, turn, window)

    def _start_answer(self, logits: torch.Tensor, limit: int) -> _Answering:
        """Start the repetition penalty over the cache's text and draw the answer's first token."""
        force_length = self.config.generation.ignore_end_of_turn
        banned = self.prompt.special.im_end if force_length else None
        self.sampler.start(torch.from_numpy(self.table.tokens()).to(self.device))
        return _Answering(limit, banned, force_length, self.sampler.draw(logits, banned))

    def _take(self, answering: _Answering) -> bool:
        """Read the drawn token back; False when the answer is complete (end of turn, or the limit)."""
        value = int(answering.token)
        if value == self.prompt.special.im_end:
            return False
        answering.generated.append(value)
        if len(answering.generated) >= answering.limit:
            answering.truncated = not answering.force_length
            return False
        return True

    def _close_answer(self, answering: _Answering, turn: int, window: int):
        """Record the answer in the table and the cache; returns (words, tokens generated, truncated)."""
        # The words and <|im_end|>\n join the table; what decoding has not fed yet (the last
        # word when truncated, and the turn's end) is fed in one forward so the cache matches.
        words, marker = self._split_marker(answering.generated)
        self.table.append(sequence.answer_segments(self.table, self.prompt, turn, window, words, marker))
        self._forward_new(None)
        return words, len(answering.generated), answering.truncated

    def _draw_after(self, token: torch.Tensor, logits: torch.Tensor, banned: Optional[int]) -> torch.Tensor:
        """`token` was fed and gave `logits`: count it for the repetition penalty, draw the next one."""
        self.sampler.add(token)
        return self.sampler.draw(logits, banned)

    def _feed(self, token: torch.Tensor, banned: Optional[int]) -> torch.Tensor:
        """Feed a sampled token (device tensor) and draw the next one."""
        return self._draw_after(token, self.decoder.step(token), banned)

    def _split_marker(self, generated: List[int]):
        """(words, marker): the trailing tokens that decode exactly to the silence marker.

        Only whole tokens that spell the marker (` ...`; bare `...` when it is the whole answer)
        are split off, so an answer ending in `Wait...` or cut short by the token limit keeps
        every word."""
        marker = self.config.generation.marker_text
        if not marker:
            return generated, []
        for count in range(1, len(generated) + 1):
            tail = self.prompt.decode(generated[-count:])
            whole_answer = count == len(generated)
            if tail == marker or (whole_answer and tail.strip() == marker.strip()):
                return generated[:-count], generated[-count:]
            if len(tail) > len(marker):
                break
        return generated, []


def vision_features(loaded: LoadedModel, vision_inputs: Sequence[VisionInput]) -> List[torch.Tensor]:
    """The vision tower once over several windows (resolutions may differ); features per window."""
    device = loaded.device
    pixels = torch.from_numpy(np.concatenate([v.pixel_values for v in vision_inputs])).to(device, loaded.dtype)
    grid = torch.tensor([v.grid_thw for v in vision_inputs], device=device)
    output = loaded.model.get_video_features(pixels, grid)
    pooled = output.pooler_output if hasattr(output, "pooler_output") else output
    if isinstance(pooled, (list, tuple)) and len(pooled) == len(vision_inputs):
        return list(pooled)
    features = torch.cat(list(pooled), dim=0) if isinstance(pooled, (list, tuple)) else pooled
    return list(features.split([v.token_count for v in vision_inputs]))
