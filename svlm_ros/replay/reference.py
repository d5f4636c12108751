"""A replay's reference: the timed text its descriptions are scored against.

The formats, the word timing and the word -> second rule belong to every path that reads timed
text (training data, teacher labels), so they live in svlm_ros/sources/timed_text.py; this
module gives them the names the evaluation code, and the judge's and labeller's tests, use.
"""
from __future__ import annotations

from ..sources.timed_text import ABSOLUTE_THRESHOLD_S, FILE_FORMATS, RefSegment, is_absolute, word_end_times
from ..sources.timed_text import load_timed_text as load_reference

__all__ = ["ABSOLUTE_THRESHOLD_S", "FILE_FORMATS", "RefSegment", "is_absolute", "load_reference", "word_end_times"]
