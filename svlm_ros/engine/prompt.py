"""StreamingVLM's prompt layout, built as token ids per segment from the tokenizer.

Every special id comes from the tokenizer. Text between special tokens is encoded piece by piece,
which gives the same ids as encoding the whole prompt: the tokenizer splits on special tokens first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

PREVIOUS_TEXT_ROLE = "previous text"


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
        return [self.special.im_start, *self.encode(f"user\nTime={start_s:.1f}-{end_s:.1f}s")]

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
