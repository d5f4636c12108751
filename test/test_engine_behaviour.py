"""Test 5: silence, truncation, ask, reset, set_instruction, resolution change, bad frames."""
import numpy as np
import pytest
import torch

from conftest import random_frames
from svlm_ros.config import CachePolicy, EngineConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession


class ScriptedSampler:
    """Chooses a scripted token sequence, so the engine's handling of answers is observable."""

    def __init__(self, script):
        self.script = list(script)

    def start(self, context_tokens):
        pass

    def add(self, token):
        pass

    def draw(self, logits, banned=None):
        # The queue-ahead loop draws one token past the end of the script; it is never used.
        return torch.tensor([self.script.pop(0) if self.script else 0])


@pytest.fixture(params=["dynamic", "static-queued"])
def decode_mode(request):
    """Each answer-handling test runs with plain decoding and with the GPU's queue-ahead loop."""
    return request.param


def make_session(model, decode_mode="dynamic", **policy):
    config = EngineConfig(cache=CachePolicy(**policy) if policy else CachePolicy())
    config.frames.min_pixels = 56 * 56
    config.generation.seed = 3
    config.generation.decode_mode = decode_mode.removesuffix("-queued")
    session = StreamSession(model, config)
    if decode_mode.endswith("-queued"):  # as on a GPU: step n+1 is queued before token n is read
        session.decoder.queues_ahead = True
    return session


def last_turn_tokens(session):
    turn = session.table.segments[-1].turn
    return {s.kind: s.tokens.tolist() for s in session.table.segments if s.turn == turn}


def test_silence_is_reported_and_the_turn_closed(tiny_model, rng, decode_mode):
    session = make_session(tiny_model, decode_mode)
    silence = session.prompt.encode(" ...")
    im_end = session.prompt.special.im_end
    session.sampler = ScriptedSampler(silence + [im_end])
    result = session.step(random_frames(rng), 0.0, 1.0)
    assert result.silent and result.text == "" and not result.truncated
    turn = last_turn_tokens(session)
    assert Kind.ASSISTANT_TEXT not in turn and turn[Kind.SILENCE_MARKER] == silence
    assert turn[Kind.ASSISTANT_CLOSE] == session.prompt.turn_close()
    assert session.cache_tokens == session.table.length


def test_words_before_the_silence_marker_are_kept(tiny_model, rng, decode_mode):
    session = make_session(tiny_model, decode_mode)
    words = session.prompt.encode(" A person walks in ...")
    session.sampler = ScriptedSampler(words + [session.prompt.special.im_end])
    result = session.step(random_frames(rng), 0.0, 1.0)
    assert result.text == "A person walks in" and not result.silent


def test_truncation_keeps_every_word_and_closes_the_turn(tiny_model, rng, decode_mode):
    session = make_session(tiny_model, decode_mode)
    limit = session.config.generation.max_new_tokens
    words = session.prompt.encode(" one two three four five six seven eight nine ten eleven twelve "
                                  "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty")
    assert len(words) >= limit
    session.sampler = ScriptedSampler(words)
    result = session.step(random_frames(rng), 0.0, 1.0)
    assert result.truncated and result.generated_tokens == limit
    assert result.text == session.prompt.decode(words[:limit]).strip()
    assert result.text.endswith("twenty")
    turn = last_turn_tokens(session)
    assert turn[Kind.ASSISTANT_TEXT] == words[:limit]
    assert turn[Kind.ASSISTANT_CLOSE] == session.prompt.turn_close()
    assert session.cache_tokens == session.table.length  # the last word and <|im_end|> are in the cache


def test_ask_answers_then_ages_out(tiny_model, rng):
    session = make_session(tiny_model, vision_windows=2, text_windows=2, sink_tokens=64, recent_tokens=64)
    for index in range(3):
        session.step(random_frames(rng), index, index + 1)
    answer = session.ask("What is on the table?")
    assert answer.window == 2 and answer.generated_tokens > 0
    question = session.prompt.question("What is on the table?")  # "Question: What is on the table?"
    queries = [s.tokens.tolist() for s in session.table.of_kind(Kind.QUERY)]
    assert question in queries
    for index in range(3, 6):
        session.step(random_frames(rng), index, index + 1)
    assert question not in [s.tokens.tolist() for s in session.table.of_kind(Kind.QUERY)]
    session.table.check()
    with pytest.raises(ValueError, match="empty"):
        session.ask("  ")


def test_reset_starts_a_fresh_stream(tiny_model, rng):
    session = make_session(tiny_model)
    for index in range(3):
        session.step(random_frames(rng), index, index + 1)
    session.reset()
    assert session.cache_tokens == 0 and session.window_count == 0
    result = session.step(random_frames(rng), 100.0, 101.0)
    assert result.index == 0
    instruction = session.prompt.encode(session.config.prompt.instruction)
    assert [s.tokens.tolist() for s in session.table.of_kind(Kind.QUERY)] == [instruction]
    assert sum(1 for _ in session.table.of_kind(Kind.SYSTEM)) == 1


def test_set_instruction_goes_into_the_next_turn(tiny_model, rng):
    session = make_session(tiny_model)
    session.step(random_frames(rng), 0, 1)
    session.step(random_frames(rng), 1, 2)
    session.set_instruction("Count the people.")
    session.step(random_frames(rng), 2, 3)
    assert last_turn_tokens(session)[Kind.QUERY] == session.prompt.encode("Count the people.")
    session.step(random_frames(rng), 3, 4)
    assert Kind.QUERY not in last_turn_tokens(session)


def test_resolution_change_gets_its_own_grid(tiny_model, rng):
    session = make_session(tiny_model)
    session.step(random_frames(rng, 56, 56), 0, 1)
    session.step(random_frames(rng, 112, 56), 1, 2)
    grids = [s.grid for s in session.table.of_kind(Kind.VISION)]
    assert grids == [(1, 2, 2), (1, 4, 2)]
    session.table.check()


@pytest.mark.parametrize("frame", [
    np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32)])
def test_bad_frames_are_refused_without_touching_the_stream(tiny_model, rng, frame):
    session = make_session(tiny_model)
    session.step(random_frames(rng), 0, 1)
    before = (session.cache_tokens, session.window_count)
    with pytest.raises(ValueError):
        session.step([frame], 1, 2)
    assert (session.cache_tokens, session.window_count) == before
    session.step(random_frames(rng), 1, 2)  # the stream goes on


def test_queued_decoding_leaves_the_same_cache_as_plain_decoding(tiny_model, rng):
    """The queue-ahead loop feeds one step past the end of turn; that step must leave no trace."""
    frames = [random_frames(rng) for _ in range(3)]
    caches = {}
    for mode in ("dynamic", "static-queued"):
        session = make_session(tiny_model, mode)
        for index, window in enumerate(frames):
            words = session.prompt.encode([" a red cube", " ...", " the arm moves left"][index])
            session.sampler = ScriptedSampler(words + [session.prompt.special.im_end])
            session.step(window, float(index), float(index + 1))
        assert session.cache_tokens == session.table.length
        caches[mode] = session
    plain, queued = caches["dynamic"], caches["static-queued"]
    assert torch.allclose(plain.last_logits, queued.last_logits, atol=1e-5)
    for plain_layer, queued_layer in zip(plain.cache.layers, queued.cache.layers, strict=True):
        assert torch.allclose(plain_layer.keys, queued_layer.keys, atol=1e-5)
        assert torch.allclose(plain_layer.values, queued_layer.values, atol=1e-5)


def test_warm_up_leaves_a_fresh_stream(tiny_model, rng):
    warmed, fresh = make_session(tiny_model), make_session(tiny_model)
    warmed.config.generation.do_sample = fresh.config.generation.do_sample = False
    assert warmed.warm_up() > 0
    assert warmed.window_count == 0 and warmed.cache_tokens == 0 and not warmed.table.segments
    frames = random_frames(rng)
    first, expected = warmed.step(frames, 0.0, 1.0), fresh.step(frames, 0.0, 1.0)
    assert first.index == 0 and first.text == expected.text
    assert warmed.table.tokens().tolist() == fresh.table.tokens().tolist()  # the instruction is sent
