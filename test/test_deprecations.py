"""The engine's hot path uses no deprecated transformers (or torch) API.

A deprecation is a removal with a date: `setup.py` admits later versions than the one installed,
so a fresh install after the removal would break the engine. transformers announces some through
`warnings` (FutureWarning) and some through its `logging` loggers, often only once per process, so
both are watched here, with the once-only memory cleared first.
"""
import logging
import warnings
from contextlib import contextmanager

import pytest
import torch

from conftest import random_frames
from svlm_ros.config import EngineConfig
from svlm_ros.engine.models import check_cache_argument
from svlm_ros.engine.session import StreamSession


class _DeprecationRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(f"{record.name}: {message}")


@contextmanager
def watch_deprecations():
    """Deprecation warnings raise; deprecation log records from transformers are collected."""
    # transformers' logger.warning_once/info_once remember what they said (an lru_cache on the
    # function): forget it, or a message emitted by an earlier test would go unseen here.
    for once in (logging.Logger.warning_once, logging.Logger.info_once):
        once.cache_clear()
    records = _DeprecationRecords()
    transformers_logger = logging.getLogger("transformers")  # does not propagate to the root
    level = transformers_logger.level
    transformers_logger.addHandler(records)
    transformers_logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.simplefilter("error", category)
            yield records
    finally:
        transformers_logger.removeHandler(records)
        transformers_logger.setLevel(level)


@pytest.fixture
def deprecations_raise():
    with watch_deprecations() as records:
        yield records


def test_the_watch_sees_a_deprecation_logged_once_earlier():
    # A deprecation transformers logs through warning_once (the old name of an output field),
    # already logged once in this process before the watch starts.
    from transformers.modeling_outputs import BaseModelOutputWithPast

    BaseModelOutputWithPast().past_key_values
    with watch_deprecations() as records:
        BaseModelOutputWithPast().past_key_values
    assert any("deprecated" in message for message in records.messages), records.messages


@pytest.mark.parametrize("decode_mode", ["dynamic", "static"])
def test_prefill_and_decode_use_no_deprecated_api(tiny_model, rng, deprecations_raise, decode_mode):
    config = EngineConfig()
    config.frames.min_pixels = 56 * 56
    config.generation.seed = 3
    config.generation.max_new_tokens = 4
    config.generation.ignore_end_of_turn = True  # every step decodes: the decode path always runs
    config.generation.decode_mode = decode_mode
    session = StreamSession(tiny_model, config)
    for window in range(3):
        result = session.step(random_frames(rng), float(window), window + 1.0)
        assert result.generated_tokens == 4
    session.ask("What is in view?", max_new_tokens=2)
    assert deprecations_raise.messages == []


class _TextModelBefore5_24(torch.nn.Module):
    """The text model's forward signature up to transformers 5.23: the cache as past_key_values."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        raise AssertionError("never run: the check reads the signature only")


def test_a_transformers_without_the_cache_argument_is_refused_by_name(tiny_model):
    check_cache_argument(tiny_model.model.get_decoder())
    with pytest.raises(RuntimeError, match=r"takes no `cache` argument.*transformers>=5.24"):
        check_cache_argument(_TextModelBefore5_24())
