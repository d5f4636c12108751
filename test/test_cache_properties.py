"""Test 3: invariants of the streaming cache under random policies and stream lengths."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_frames
from svlm_ros.config import CachePolicy, EngineConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession

SMALL_FRAME_PIXELS = 56 * 56  # 4 vision tokens per window keeps 25 examples fast


def limit(low, high):
    return st.one_of(st.none(), st.integers(low, high))


def turn_bound(session, config, max_time_digits=8):
    """Most tokens one retained turn can hold (questions excluded)."""
    prompt = session.prompt
    user_open = len(prompt.user_open(10.0 ** max_time_digits, 10.0 ** max_time_digits))
    query = len(prompt.encode(config.prompt.instruction))
    text = config.generation.max_new_tokens
    return user_open + query + 2 + 3 + text + 2


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    vision_windows=limit(0, 4),
    text_windows=limit(1, 4),
    sink=limit(0, 8),
    recent=limit(0, 8),
    windows=st.integers(1, 25),
    max_new_tokens=st.integers(1, 4),
    sizes=st.lists(st.sampled_from([(56, 56), (56, 84), (84, 56)]), min_size=1, max_size=4),
    ask_every=st.integers(0, 7),
    seed=st.integers(0, 2**16),
)
def test_cache_invariants(tiny_model, vision_windows, text_windows, sink, recent, windows, max_new_tokens,
                          sizes, ask_every, seed):
    policy = CachePolicy(vision_windows, text_windows, sink, recent)
    config = EngineConfig(cache=policy)
    config.frames.min_pixels = SMALL_FRAME_PIXELS
    config.generation.max_new_tokens = max_new_tokens
    config.generation.answer_max_new_tokens = 2
    config.generation.seed = seed
    session = StreamSession(tiny_model, config)
    rng = np.random.default_rng(seed)
    head = None
    for index in range(windows):
        result = session.step(random_frames(rng, *sizes[index % len(sizes)]), index, index + 1)
        assert result.cache_tokens == session.cache_tokens == session.table.length
        if ask_every and index % ask_every == ask_every - 1:
            session.ask("Anything new?")
        table = session.table
        # The table tiles the cache: gap-free slots and positions, one length everywhere.
        table.check()
        assert all(layer.get_seq_length() == table.length for layer in session.cache.layers)
        assert session.cache_tokens == table.length
        uids = table.uids()
        assert len(np.unique(uids)) == len(uids), "a token appears twice"
        # Positions are gap-free: each segment starts where the previous one's extent ends,
        # and the largest position is below the sequence's extent.
        positions = table.position_ids()
        assert positions.min() == 0 and positions.max() < table.end_position
        # Windows are retained by age alone.
        ages = [index - s.window for s in table.segments if s.window is not None]
        vision_ages = [index - s.window for s in table.of_kind(Kind.VISION)]
        if vision_windows is not None:
            assert all(age < max(vision_windows, 1) for age in vision_ages)
        if text_windows is not None and vision_windows is not None:
            assert all(age < max(vision_windows, text_windows, 1) for age in ages)
        if sink is not None and recent is not None:
            context = len(session.prompt.encode(config.prompt.context))
            assert table.prev_text_length() <= max(sink + recent, context)
        if head is None:
            head = sum(len(s) for s in table.segments if s.window is None)
        if None not in (vision_windows, text_windows, sink, recent) and not ask_every:
            retained = max(vision_windows, text_windows, 1)
            vision_max = max(len(s) for s in table.of_kind(Kind.VISION))
            bound = head + sink + recent + retained * (turn_bound(session, config) + vision_max)
            assert session.cache_tokens <= bound
            assert table.end_position <= bound
