"""StreamingVLM's prompt layout, built as token ids per segment from the tokenizer.

Every special id comes from the tokenizer. Text between special tokens is encoded piece by piece,
which gives the same ids as encoding the whole prompt: the tokenizer splits on special tokens first.

Times in the prompt are seconds since the stream started (`Time=0.0-1.0s` for its first window),
as StreamingVLM was trained; sensor stamps never enter the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

PREVIOUS_TEXT_ROLE = "previous text"
QUESTION_LABEL = "Question: "
RECALLED_LABEL = "Memory (what the cameras saw before; cite the times and places you use):\n"


def time_span(start_s: float, end_s: float) -> str:
    """The time text of a window, in seconds since the stream started."""
    return f"Time={start_s:.1f}-{end_s:.1f}s"


@dataclass(frozen=True)
class SpecialTokens:
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    video_pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        names = {
            "im_start": "<|im_start|>",
            "im_end": "<|im_end|>",
            "vision_start": "<|vision_start|>",
            "vision_end": "<|vision_end|>",
            "video_pad": "<|video_pad|>",
        }
        ids = {}
        for field, token in names.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token} token; a Qwen2-VL/Qwen2.5-VL tokenizer is required")
            ids[field] = int(token_id)
        return cls(**ids)


class PromptBuilder:
    """Token ids of each piece of the streaming prompt."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.newline = self.encode("\n")

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def system(self, text: str) -> List[int]:
        return [self.special.im_start, *self.encode(f"system\n{text}"), self.special.im_end, *self.newline]

    def prev_open(self) -> List[int]:
        return [self.special.im_start, *self.encode(f"{PREVIOUS_TEXT_ROLE}\n")]

    def turn_close(self) -> List[int]:
        """<|im_end|>\\n, closing any turn (and the previous-text block)."""
        return [self.special.im_end, *self.newline]

    def user_open(self, start_s: float, end_s: float) -> List[int]:
        """A window's user turn up to its video: `<|im_start|>user\nTime=12.0-13.0s`."""
        return [self.special.im_start, *self.encode(f"user\n{time_span(start_s, end_s)}")]

    def question_open(self, at_s: float) -> List[int]:
        """A question's user turn up to its body: `<|im_start|>user\nTime=13.0s\n`.

        A question has no video and no span, so it carries the instant it was asked on a line of
        its own, instead of a zero-length `Time=13.0-13.0s` glued to the question's first word."""
        return [self.special.im_start, *self.encode(f"user\nTime={at_s:.1f}s\n")]

    def question(self, text: str) -> List[int]:
        """The question after its label, `Question: when did ...`, encoded as one piece (the label's
        space joins the first word, as in any text the tokenizer reads)."""
        return self.encode(QUESTION_LABEL + text)

    def recalled(self, lines) -> List[int]:
        """Remembered text for a question, one timed line each, between the time and the question:
        `Memory (...):\n[10:03:12-10:03:20 /front at (3.2, 1.0)] a red cart passes\n`."""
        lines = [line.strip() for line in lines if line.strip()]
        return self.encode(RECALLED_LABEL + "".join(f"{line}\n" for line in lines)) if lines else []

    def vision(self, token_count: int) -> np.ndarray:
        ids = np.full(token_count + 2, self.special.video_pad, dtype=np.int64)
        ids[0], ids[-1] = self.special.vision_start, self.special.vision_end
        return ids

    @staticmethod
    def vision_pads(segment_length: int) -> slice:
        """Where the video pads sit in a vision segment of this length (see vision())."""
        return slice(1, segment_length - 1)

    def assistant_open(self) -> List[int]:
        return [self.special.im_start, *self.encode("assistant\n")]
