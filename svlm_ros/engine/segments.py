"""The segment table: what the KV cache holds, as structure rather than token patterns.

Every token in the cache belongs to exactly one segment, and the segments, in order, tile the
cache from slot 0. Eviction and moves are operations on this table; `commit()` turns the edited
table into one gather over cache slots plus one position delta per kept token, which the KV cache
applies to every layer (see kv_cache.py). Positions are always contiguous (gap-free mRoPE).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..config import CachePolicy


class Kind(enum.Enum):
    SYSTEM = "system"
    PREV_OPEN = "prev_open"  # <|im_start|>previous text\n
    PREV_TEXT = "prev_text"  # initial context, then assistant text moved out of old turns
    PREV_CLOSE = "prev_close"  # <|im_end|>\n
    USER_OPEN = "user_open"  # <|im_start|>user\nTime=a-bs
    VISION = "vision"  # <|vision_start|> video pads <|vision_end|>
    RECALLED = "recalled"  # a question turn's timed text from the long-term memory, before the question
    QUERY = "query"  # the standing instruction (first turn) or a question
    USER_CLOSE = "user_close"  # <|im_end|>\n
    ASSISTANT_OPEN = "assistant_open"  # <|im_start|>assistant\n
    ASSISTANT_TEXT = "assistant_text"  # generated words
    SILENCE_MARKER = "silence_marker"  # the answer's trailing ` ...`, kept apart from its words
    ASSISTANT_CLOSE = "assistant_close"  # <|im_end|>\n


@dataclass
class Segment:
    kind: Kind
    tokens: np.ndarray  # int64 token ids
    uid_start: int  # serial of the first token; tokens keep their serials for life
    turn: Optional[int] = None  # serial of the user/assistant turn the segment belongs to
    window: Optional[int] = None  # window index the turn's age is counted from
    grid: Optional[Tuple[int, int, int]] = None  # VISION: (t, h, w) in merged vision tokens
    time_step: float = 1.0  # VISION: temporal position step per temporal grid
    slot: int = -1  # first cache slot
    position: int = -1  # first RoPE position (the 3 mRoPE axes start equal)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def extent(self) -> int:
        """How far the segment advances positions."""
        if self.kind is Kind.VISION:
            # As transformers' get_rope_index: text after a video block starts at its first
            # pad's position + max(h, w); the temporal axis does not advance it.
            return 2 + max(self.grid[1], self.grid[2])
        return len(self)

    def position_ids(self) -> np.ndarray:
        """(3, len) mRoPE positions (temporal, height, width) at self.position."""
        start = self.position
        if self.kind is not Kind.VISION:
            return np.broadcast_to(np.arange(start, start + len(self)), (3, len(self))).copy()
        grid_t, grid_h, grid_w = self.grid
        temporal = (np.arange(grid_t) * self.time_step).astype(np.int64)
        times, rows, cols = np.meshgrid(temporal, np.arange(grid_h), np.arange(grid_w), indexing="ij")
        inner = start + 1
        pads = inner + np.stack([times.ravel(), rows.ravel(), cols.ravel()])
        first = np.full((3, 1), start)
        last = np.full((3, 1), inner + max(grid_h, grid_w))
        return np.concatenate([first, pads, last], axis=1)


@dataclass
class Commit:
    """How the cache must change so that it matches the edited table."""

    keep_from: int  # slots before this are unchanged (same slot, same position)
    source_slots: np.ndarray  # old slot of each new slot from keep_from on
    position_delta: np.ndarray  # new - old position of each of those tokens
    length: int  # cache length after the change

    @property
    def is_noop(self) -> bool:
        return self.source_slots.size == 0 or (
            np.array_equal(self.source_slots, np.arange(self.keep_from, self.length))
            and not self.position_delta.any()
        )


@dataclass
class SegmentTable:
    segments: List[Segment] = field(default_factory=list)
    next_uid: int = 0

    # ----- building --------------------------------------------------------------------------
    def new_segment(self, kind: Kind, tokens, turn=None, window=None, grid=None, time_step=1.0) -> Segment:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        segment = Segment(kind, tokens, self.next_uid, turn, window, grid, time_step)
        self.next_uid += len(tokens)
        return segment

    def append(self, segments: List[Segment]) -> Tuple[int, int]:
        """Place new segments after the cached ones; returns (first slot, first position)."""
        slot, position = self.length, self.end_position
        first = (slot, position)
        for segment in segments:
            segment.slot, segment.position = slot, position
            slot += len(segment)
            position += segment.extent
            self.segments.append(segment)
        return first

    # ----- reading ---------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def end_position(self) -> int:
        if not self.segments:
            return 0
        last = self.segments[-1]
        return last.position + last.extent

    def tokens(self) -> np.ndarray:
        if not self.segments:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s.tokens for s in self.segments])

    def uids(self) -> np.ndarray:
        if not self.segments:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(s.uid_start, s.uid_start + len(s)) for s in self.segments])

    def position_ids(self) -> np.ndarray:
        if not self.segments:
            return np.zeros((3, 0), dtype=np.int64)
        return np.concatenate([s.position_ids() for s in self.segments], axis=1)

    def tail(self, start_slot: int) -> Tuple[np.ndarray, np.ndarray]:
        """Token ids and (3, n) positions of every token from `start_slot` on."""
        first = len(self.segments)
        while first > 0 and self.segments[first - 1].slot + len(self.segments[first - 1]) > start_slot:
            first -= 1
        pieces = self.segments[first:]
        if not pieces:
            return np.zeros(0, dtype=np.int64), np.zeros((3, 0), dtype=np.int64)
        skip = start_slot - pieces[0].slot
        return (np.concatenate([s.tokens for s in pieces])[skip:],
                np.concatenate([s.position_ids() for s in pieces], axis=1)[:, skip:])

    def of_kind(self, *kinds: Kind) -> Iterator[Segment]:
        return (s for s in self.segments if s.kind in kinds)

    def prev_text_length(self) -> int:
        return sum(len(s) for s in self.of_kind(Kind.PREV_TEXT))

    # ----- the cache policy --------------------------------------------------------------------
    def apply_policy(self, policy: CachePolicy, current_window: int) -> None:
        """Evict and move by age, as StreamingVLM does, before window `current_window` is added."""
        moved: List[Segment] = []
        kept: List[Segment] = []
        turn_state = {}
        for segment in self.segments:
            if segment.turn is None:
                kept.append(segment)
                continue
            age = current_window - segment.window
            vision_gone = policy.vision_windows is not None and age >= policy.vision_windows
            text_gone = policy.text_windows is not None and age >= policy.text_windows
            turn_state.setdefault(segment.turn, [False, False])  # [has vision, has text]
            if segment.kind is Kind.VISION:
                if vision_gone:
                    continue
                turn_state[segment.turn][0] = True
            elif segment.kind is Kind.ASSISTANT_TEXT and text_gone:
                moved.append(segment)
                continue
            elif segment.kind in (Kind.ASSISTANT_OPEN, Kind.SILENCE_MARKER, Kind.ASSISTANT_CLOSE) and text_gone:
                # Previous text is a plain transcript, as in training: words move, markers do not.
                continue
            elif segment.kind in (Kind.ASSISTANT_OPEN, Kind.ASSISTANT_TEXT, Kind.SILENCE_MARKER,
                                  Kind.ASSISTANT_CLOSE):
                turn_state[segment.turn][1] = True
            kept.append(segment)
        # A user turn whose vision and answer are both gone is deleted, its query too.
        kept = [s for s in kept if s.turn is None or any(turn_state[s.turn])]
        if moved:
            close = next(i for i, s in enumerate(kept) if s.kind is Kind.PREV_CLOSE)
            kept[close:close] = [replace(s, kind=Kind.PREV_TEXT, turn=None, window=None) for s in moved]
        self.segments = kept
        self._trim_previous_text(policy)

    def _trim_previous_text(self, policy: CachePolicy) -> None:
        """Keep the first `sink_tokens` and last `recent_tokens` content tokens; cut the middle."""
        kept = previous_text_kept(self.prev_text_length(), policy)
        if len(kept) == 1:
            return
        (_, cut_start), (cut_end, _) = kept
        result: List[Segment] = []
        offset = 0
        for segment in self.segments:
            if segment.kind is not Kind.PREV_TEXT:
                result.append(segment)
                continue
            lo, hi = offset, offset + len(segment)
            offset = hi
            if hi <= cut_start or lo >= cut_end:
                result.append(segment)
                continue
            if lo < cut_start:  # keep the head of this segment
                result.append(_slice(segment, 0, cut_start - lo))
            if hi > cut_end:  # keep the tail of this segment
                result.append(_slice(segment, cut_end - lo, len(segment)))
        self.segments = result

    # ----- turning edits into one cache operation ---------------------------------------------
    def commit(self) -> Commit:
        """Give every segment gap-free slots and positions; report what moved."""
        sources, deltas = [], []
        slot = position = 0
        keep_from = None
        for segment in self.segments:
            unchanged = segment.slot == slot and segment.position == position
            if keep_from is None and not unchanged:
                keep_from = slot
            if keep_from is not None:
                sources.append(np.arange(segment.slot, segment.slot + len(segment)))
                deltas.append(np.full(len(segment), position - segment.position))
            segment.slot, segment.position = slot, position
            slot += len(segment)
            position += segment.extent
        if keep_from is None:
            keep_from = slot
        empty = np.zeros(0, dtype=np.int64)
        return Commit(
            keep_from=keep_from,
            source_slots=np.concatenate(sources) if sources else empty,
            position_delta=np.concatenate(deltas) if deltas else empty,
            length=slot,
        )

    def check(self) -> None:
        """Raise if the table is not a gap-free tiling of slots and positions."""
        slot = position = 0
        for segment in self.segments:
            if segment.slot != slot or segment.position != position:
                raise AssertionError(f"segment {segment.kind} at slot {segment.slot}/pos {segment.position}, "
                                     f"expected {slot}/{position}")
            slot += len(segment)
            position += segment.extent


def previous_text_kept(total: int, policy: CachePolicy) -> Tuple[Tuple[int, int], ...]:
    """The [start, end) ranges of `total` previous-text tokens the cache keeps: all of them, or the
    first `sink_tokens` and the last `recent_tokens` (StreamingVLM's cut; the training data's too)."""
    sink, recent = policy.sink_tokens, policy.recent_tokens
    if sink is None or recent is None or total <= sink + recent:
        return ((0, total),)
    return ((0, sink), (total - recent, total))


def _slice(segment: Segment, start: int, stop: int) -> Segment:
    """A piece of a text segment; its slot and position move with its first token."""
    return replace(
        segment,
        tokens=segment.tokens[start:stop],
        uid_start=segment.uid_start + start,
        slot=segment.slot + start,
        position=segment.position + start,
    )
