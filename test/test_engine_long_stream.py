"""Test 4: 800 windows with the default policy: cache length, positions and buffers stay flat.

The previous-text block fills within ~300 windows; the next 500 must not grow anything. (2,000
windows came near pytest's per-test limit on a loaded 2-core machine; the process's memory over
hours of video is a benchmark's figure: `svlm bench --seconds N` records it, docs/benchmarks.md.)"""
import numpy as np

from conftest import random_frames
from svlm_ros.config import EngineConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession

WINDOWS = 800


def test_default_policy_is_flat_over_800_windows(tiny_model):
    config = EngineConfig()  # the reference's default cache policy
    config.frames.min_pixels = 56 * 56
    config.generation.max_new_tokens = 4  # keeps the windows quick on 2 cores
    config.generation.seed = 7
    session = StreamSession(tiny_model, config)
    rng = np.random.default_rng(7)
    frames = random_frames(rng)
    lengths, positions = [], []
    for index in range(WINDOWS):
        result = session.step(frames, index, index + 1)
        # "Time=999.0-1000.0s" grows by a digit token now and then; everything else must not grow.
        time_text = sum(len(s) for s in session.table.of_kind(Kind.USER_OPEN))
        lengths.append(result.cache_tokens - time_text)
        positions.append(result.max_position - time_text)
    lengths, positions = np.array(lengths), np.array(positions)
    assert session.table.prev_text_length() == config.cache.sink_tokens + config.cache.recent_tokens
    # The previous-text block fills within ~300 windows; from then on nothing may grow.
    assert lengths[550:].max() <= lengths[300:550].max()
    assert positions[550:].max() <= positions[300:550].max()
    assert session.cache.memory_bytes() < 4 * lengths.max() * 2 * 2 * 16 * 4 * 2  # buffers stay near the need
