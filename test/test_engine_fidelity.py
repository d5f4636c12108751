"""The text a real checkpoint sees matches its training data (issue 9): time text in stream
seconds, previous text as a plain transcript, the silence marker and nothing else stripped, and
question turns a chat model reads naturally."""
import numpy as np
import pytest
import torch

from conftest import random_frames
from svlm_ros.engine.segments import Kind
from test_engine_behaviour import ScriptedSampler, make_session

EPOCH = 1763740802.0  # a sensor stamp, as a ROS camera sends them


class FailingSampler(ScriptedSampler):
    """Scripted tokens, then an error part-way through an answer."""

    def draw(self, logits, banned=None):
        if not self.script:
            raise RuntimeError("decoding failed part-way")
        return super().draw(logits, banned)



def decode_kind(session, kind, turn=None):
    ids = [t for s in session.table.of_kind(kind) if turn is None or s.turn == turn for t in s.tokens.tolist()]
    return session.prompt.tokenizer.decode(ids)


def script(session, text):
    return ScriptedSampler(session.prompt.encode(text) + [session.prompt.special.im_end])


def test_time_text_counts_seconds_since_the_stream_started(tiny_model, rng):
    session = make_session(tiny_model)
    results = [session.step(random_frames(rng), EPOCH + k, EPOCH + k + 1) for k in range(3)]
    opens = [session.prompt.tokenizer.decode(s.tokens) for s in session.table.of_kind(Kind.USER_OPEN)]
    assert opens == ["<|im_start|>user\nTime=0.0-1.0s", "<|im_start|>user\nTime=1.0-2.0s",
                     "<|im_start|>user\nTime=2.0-3.0s"]
    # A window of sensor time costs as few tokens as one of stream time, and results keep sensor time.
    assert len(next(session.table.of_kind(Kind.USER_OPEN)).tokens) == len(session.prompt.user_open(0.0, 1.0))
    assert [(r.start_s, r.end_s) for r in results] == [(EPOCH + k, EPOCH + k + 1) for k in range(3)]
    session.reset()  # a fresh stream starts at 0 again
    session.step(random_frames(rng), EPOCH + 500, EPOCH + 501)
    assert session.prompt.tokenizer.decode(next(session.table.of_kind(Kind.USER_OPEN)).tokens).endswith(
        "Time=0.0-1.0s")


def test_skipped_seconds_show_in_the_time_text(tiny_model, rng):
    session = make_session(tiny_model)
    session.step(random_frames(rng), EPOCH, EPOCH + 1)
    session.step(random_frames(rng), EPOCH + 5, EPOCH + 6)  # the node skipped four windows
    last = list(session.table.of_kind(Kind.USER_OPEN))[-1]
    assert session.prompt.tokenizer.decode(last.tokens).endswith("Time=5.0-6.0s")
    with pytest.raises(ValueError, match="reset"):
        session.step(random_frames(rng), EPOCH - 10, EPOCH - 9)  # time went back within one stream


def test_moved_text_is_a_plain_transcript(tiny_model, rng):
    session = make_session(tiny_model, text_windows=1, vision_windows=1, sink_tokens=None, recent_tokens=None)
    answers = [" Hello ...", " ...", " Wait...", " a cart", " Hello ..."]
    for k, answer in enumerate(answers):
        session.sampler = script(session, answer)
        session.step(random_frames(rng), float(k), float(k + 1))
    session.step(random_frames(rng), 5.0, 6.0)  # every scripted answer is now older than its window
    # The marker's tokens stay behind; a word ending in '...' and an answer with no marker (the
    # model ended the turn early, or was cut off) move whole.
    assert decode_kind(session, Kind.PREV_TEXT) == " Hello Wait... a cart Hello"
    session.table.check()
    assert session.cache_tokens == session.table.length


def test_a_truncated_answer_moves_every_word(tiny_model, rng):
    session = make_session(tiny_model, text_windows=1, vision_windows=1)
    limit = session.config.generation.max_new_tokens
    words = session.prompt.encode(" one two three four five six seven eight nine ten eleven twelve thirteen "
                                  "fourteen fifteen sixteen seventeen eighteen nineteen twenty twenty-one")
    session.sampler = ScriptedSampler(words)
    assert session.step(random_frames(rng), 0.0, 1.0).truncated
    session.step(random_frames(rng), 1.0, 2.0)
    assert decode_kind(session, Kind.PREV_TEXT) == session.prompt.tokenizer.decode(words[:limit])


@pytest.mark.parametrize("answer,text,silent", [
    (" Wait...", "Wait...", False),  # an ellipsis that belongs to the words is kept
    (" Wait... ...", "Wait...", False),
    (" The door opens ...", "The door opens", False),
    (" ...", "", True),
    ("...", "", True),  # the whole answer is the marker without its space
    (" Loading...please", "Loading...please", False),
])
def test_only_the_silence_marker_is_stripped(tiny_model, rng, answer, text, silent):
    session = make_session(tiny_model)
    session.sampler = script(session, answer)
    result = session.step(random_frames(rng), 0.0, 1.0)
    assert (result.text, result.silent) == (text, silent)


def test_question_turns_read_naturally(tiny_model, rng):
    session = make_session(tiny_model)
    for k in range(3):
        session.step(random_frames(rng), EPOCH + k, EPOCH + k + 1)
    answer = session.ask("  Is the door open?  ")
    turn = session.table.segments[-1].turn
    user = [s for s in session.table.segments if s.turn == turn and s.kind in (Kind.USER_OPEN, Kind.QUERY,
                                                                               Kind.USER_CLOSE)]
    text = session.prompt.tokenizer.decode(np.concatenate([s.tokens for s in user]))
    assert text == "<|im_start|>user\nTime=3.0s\nQuestion: Is the door open?<|im_end|>\n"
    assert answer.end_s == EPOCH + 3  # the answer's stamp stays in sensor time


def test_a_too_long_question_is_refused_with_the_limit(tiny_model, rng):
    session = make_session(tiny_model)
    session.config.prompt.max_question_tokens = 8
    session.step(random_frames(rng), 0.0, 1.0)
    before = session.table.tokens().tolist()
    with pytest.raises(ValueError, match="max_question_tokens=8"):
        session.ask("what " * 20)
    assert session.table.tokens().tolist() == before


def test_a_question_that_fails_part_way_leaves_the_stream_as_it_was(tiny_model, rng):
    asked, untouched = make_session(tiny_model), make_session(tiny_model)
    for session in (asked, untouched):
        session.config.generation.do_sample = False
    windows = [random_frames(rng) for _ in range(3)]
    for session in (asked, untouched):
        for k in range(2):
            session.step(windows[k], float(k), float(k + 1))
    asked.sampler = FailingSampler(asked.prompt.encode(" It is"))
    with pytest.raises(RuntimeError, match="part-way"):
        asked.ask("What is on the table?")
    asked.sampler = untouched.sampler
    asked.table.check()
    assert asked.cache_tokens == untouched.cache_tokens == asked.table.length
    assert asked.table.tokens().tolist() == untouched.table.tokens().tolist()
    for session in (asked, untouched):
        session.step(windows[2], 2.0, 3.0)
    assert torch.allclose(asked.last_logits, untouched.last_logits, atol=1e-5)
    assert asked.table.position_ids().tolist() == untouched.table.position_ids().tolist()
