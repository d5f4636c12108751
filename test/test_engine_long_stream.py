"""Test 4: 2,000 windows with the default policy: cache length and process memory stay flat."""
import resource

import numpy as np

from conftest import random_frames
from svlm_ros.config import EngineConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession

WINDOWS = 2000


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_default_policy_is_flat_over_2000_windows(tiny_model):
    config = EngineConfig()  # the reference's default cache policy
    config.frames.min_pixels = 56 * 56
    config.generation.max_new_tokens = 4  # keeps 2,000 windows quick on 2 cores
    config.generation.seed = 7
    session = StreamSession(tiny_model, config)
    rng = np.random.default_rng(7)
    frames = random_frames(rng)
    lengths, positions, memory = [], [], {}
    for index in range(WINDOWS):
        result = session.step(frames, index, index + 1)
        # "Time=999.0-1000.0s" grows by a digit token now and then; everything else must not grow.
        time_text = sum(len(s) for s in session.table.of_kind(Kind.USER_OPEN))
        lengths.append(result.cache_tokens - time_text)
        positions.append(result.max_position - time_text)
        if index in (499, 999, 1499, WINDOWS - 1):
            memory[index] = rss_bytes()
    lengths, positions = np.array(lengths), np.array(positions)
    # The previous-text block fills within ~300 windows; from then on nothing may grow.
    assert lengths[1000:].max() <= lengths[500:1000].max()
    assert positions[1000:].max() <= positions[500:1000].max()
    assert session.table.prev_text_length() == config.cache.sink_tokens + config.cache.recent_tokens
    growth = memory[WINDOWS - 1] - memory[499]
    assert growth < 32 * 2**20, f"process memory grew by {growth / 2**20:.1f} MiB from window 500 to 2000"
    assert session.cache.memory_bytes() < 4 * lengths.max() * 2 * 2 * 16 * 4 * 2  # buffers stay near the need
