"""The segments of a stream, turn by turn: the one place the prompt's structure is assembled.

The streaming session appends these one window at a time as it describes video; training
builds a whole window of seconds at once from reference text. Both call the same functions, so
a training sample is, token for token and position for position, what the engine holds after
streaming that window with no eviction (test_training checks it).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .prompt import PromptBuilder
from .segments import Kind, Segment, SegmentTable


def head_segments(table: SegmentTable, prompt: PromptBuilder, system: str,
                  previous_text: Sequence[int]) -> List[Segment]:
    """System turn and the `previous text` block (its content may be empty)."""
    head = [table.new_segment(Kind.SYSTEM, prompt.system(system)),
            table.new_segment(Kind.PREV_OPEN, prompt.prev_open())]
    if len(previous_text):
        head.append(table.new_segment(Kind.PREV_TEXT, previous_text))
    head.append(table.new_segment(Kind.PREV_CLOSE, prompt.turn_close()))
    return head


def window_turn(table: SegmentTable, prompt: PromptBuilder, turn: int, window: int, start_s: float,
                end_s: float, vision_tokens: int, grid: Tuple[int, int, int], time_step: float,
                query: str = "") -> List[Segment]:
    """A window's user turn and the opening of its answer.

    `start_s`/`end_s` are stream seconds (the time text); `grid` is (t, h, w) in merged vision
    tokens; `query` (the standing instruction or a user's text) follows the video."""
    segments = [
        table.new_segment(Kind.USER_OPEN, prompt.user_open(start_s, end_s), turn, window),
        table.new_segment(Kind.VISION, prompt.vision(vision_tokens), turn, window, grid=grid, time_step=time_step),
    ]
    if query:
        segments.append(table.new_segment(Kind.QUERY, prompt.encode(query), turn, window))
    segments.append(table.new_segment(Kind.USER_CLOSE, prompt.turn_close(), turn, window))
    segments.append(table.new_segment(Kind.ASSISTANT_OPEN, prompt.assistant_open(), turn, window))
    return segments


def question_turn(table: SegmentTable, prompt: PromptBuilder, turn: int, window: int, at_s: float,
                  question_ids: Sequence[int], recalled_ids: Sequence[int] = ()) -> List[Segment]:
    """A question's user turn (no video) and the opening of its answer.

    `question_ids` are PromptBuilder.question's (the labelled question).
    `recalled_ids` (PromptBuilder.recalled: timed text from the long-term memory) sit between the
    turn's time and the question, as their own segment, and age with the turn."""
    segments = [table.new_segment(Kind.USER_OPEN, prompt.question_open(at_s), turn, window)]
    if len(recalled_ids):
        segments.append(table.new_segment(Kind.RECALLED, recalled_ids, turn, window))
    return segments + [
        table.new_segment(Kind.QUERY, question_ids, turn, window),
        table.new_segment(Kind.USER_CLOSE, prompt.turn_close(), turn, window),
        table.new_segment(Kind.ASSISTANT_OPEN, prompt.assistant_open(), turn, window),
    ]


def answer_segments(table: SegmentTable, prompt: PromptBuilder, turn: int, window: int,
                    words: Sequence[int], marker: Sequence[int]) -> List[Segment]:
    """An answer's words, its silence marker, and the end of the turn."""
    segments = []
    if len(words):
        segments.append(table.new_segment(Kind.ASSISTANT_TEXT, words, turn, window))
    if len(marker):
        segments.append(table.new_segment(Kind.SILENCE_MARKER, marker, turn, window))
    segments.append(table.new_segment(Kind.ASSISTANT_CLOSE, prompt.turn_close(), turn, window))
    return segments


def standing_query(instruction: str, pending: bool, user_text: Optional[str]) -> str:
    """What follows a window's video: the instruction when it is due, then any user text."""
    query = instruction if pending else ""
    if user_text:
        query = f"{query}\n{user_text}" if query else user_text
    return query
