"""Memory for questions, without ROS: time words, summaries' plan and budget, and the question turn.

Times are read on the local clock; each test builds its `now` with the local time zone, so the
expectations hold wherever the suite runs.
"""
from datetime import datetime, timedelta

import numpy as np
import pytest

from svlm_ros.config import EngineConfig, GenerationConfig, MemoryConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession
from svlm_ros.memory.questions import recollect
from svlm_ros.memory.records import Entry, Pose
from svlm_ros.memory.store import MemoryStore
from svlm_ros.memory.summaries import Summarizer, SummaryJob, SummaryPlanner, SummaryStore, period_start, seed_text
from svlm_ros.memory.timewords import parse

NOW = datetime(2026, 11, 21, 14, 30, 0)  # local time, a Saturday afternoon
NOW_S = NOW.timestamp()


def at(hour, minute=0, days_back=0):
    return (NOW.replace(hour=hour, minute=minute, second=0) - timedelta(days=days_back)).timestamp()


@pytest.mark.parametrize("question, since, until, rest", [
    ("What happened between 10:00 and 10:15?", at(10), at(10, 15), "What happened ?"),
    ("where was the pallet jack this morning?", at(5), at(12), "where was the pallet jack ?"),
    ("what did you see an hour ago", NOW_S - 5400, NOW_S - 1800, "what did you see"),
    ("any people in the last 10 minutes?", NOW_S - 600, NOW_S, "any people ?"),
    ("what was there 2 hours ago?", NOW_S - 9000, NOW_S - 5400, "what was there ?"),
    ("who came in since 9:30", at(9, 30), NOW_S, "who came in"),
    ("anything yesterday afternoon?", at(12, days_back=1), at(17, days_back=1), "anything ?"),
    ("what happened yesterday", at(0, days_back=1), at(0), "what happened"),
    ("what was on the dock at 11:05?", at(11) , at(11, 10), "what was on the dock ?"),
    ("what happened at 3pm", at(14, 55, days_back=1), at(15, 5, days_back=1), "what happened"),
    ("the red cart in the past hour", NOW_S - 3600, NOW_S, "the red cart"),
])
def test_time_words_become_a_range_and_leave_the_rest_of_the_question(question, since, until, rest):
    time_range, remaining = parse(question, NOW_S)
    assert time_range is not None, question
    assert (time_range.since, time_range.until) == pytest.approx((since, until)), time_range.describe()
    assert remaining == rest


def test_a_question_without_time_words_has_no_range():
    assert parse("when did you last see the red cart?", NOW_S) == (None, "when did you last see the red cart?")
    assert parse("is it at 3 places?", NOW_S)[0] is None  # "at 3" without minutes or am/pm is not a time


def test_impossible_clock_times_are_refused_by_name():
    with pytest.raises(ValueError, match="25:00"):
        parse("what happened at 25:00?", NOW_S)


def test_periods_align_on_the_local_clock_and_lower_tiers_come_first():
    planner = SummaryPlanner(MemoryConfig(summary_minutes=10))
    start = at(9, 55)
    jobs = []
    for second in range(0, 2 * 3600, 1):  # 09:55 to 11:55, one window per second
        jobs += planner.observe("/cam", start + second + 1)
    minutes = [j for j in jobs if j.tier == "minutes"]
    hours = [j for j in jobs if j.tier == "hour"]
    assert [datetime.fromtimestamp(j.start).strftime("%H:%M") for j in minutes[:3]] == ["09:50", "10:00", "10:10"]
    assert all(j.end - j.start == 600 for j in minutes)
    assert [datetime.fromtimestamp(j.start).strftime("%H:%M") for j in hours] == ["09:00", "10:00"]
    # The hour's summary reads its minute summaries: its last one is planned before it.
    last_minutes_of_ten = next(i for i, j in enumerate(jobs) if j.tier == "minutes" and j.start == at(10, 50))
    assert last_minutes_of_ten < jobs.index(hours[1])
    assert period_start(at(10, 7), 600) == at(10)


def test_no_summaries_when_switched_off():
    planner = SummaryPlanner(MemoryConfig(summary_minutes=0))
    assert not any(planner.observe("/cam", NOW_S + s) for s in range(0, 4000, 10))
    assert planner.close() == []


def test_a_log_that_ends_closes_every_open_period_lower_tiers_first():
    planner = SummaryPlanner(MemoryConfig(summary_minutes=10))
    for second in range(0, 300):  # 10:02 to 10:07 on two cameras
        planner.observe("/a", at(10, 2) + second + 1)
        planner.observe("/b", at(10, 2) + second + 1)
    jobs = planner.close()
    day = period_start(at(10, 2), 86400)
    assert [(j.camera, j.tier, j.start, j.end) for j in jobs] == [
        ("/a", "minutes", at(10), at(10, 10)), ("/a", "hour", at(10), at(11)), ("/a", "day", day, day + 86400),
        ("/b", "minutes", at(10), at(10, 10)), ("/b", "hour", at(10), at(11)), ("/b", "day", day, day + 86400)]
    assert planner.close() == []  # each open period once


class Words:
    """A stand-in embedder: a vector per word, so meaning follows shared words (deterministic)."""

    def __call__(self, texts):
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, hash(word) % 384] += 1
            out[row] /= max(np.linalg.norm(out[row]), 1e-9)
        return out


@pytest.fixture
def store(tmp_path):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Words())
    yield store
    store.close()


def count_words(text):
    return len(text.split())


def test_summaries_read_their_period_and_fit_the_budget(tmp_path, store):
    store.add([Entry("/cam", at(10) + s, at(10) + s + 1, f"box {s} moves", False) for s in range(0, 600, 5)])
    store.add([Entry("/cam", at(10, 20), at(10, 20) + 1, "outside the period", False)])
    summaries = SummaryStore(tmp_path / "memory.sqlite")
    seen = []

    def generate(notes, instruction, limit):
        seen.append(notes)
        return "boxes moved all morning"

    config = MemoryConfig(summary_input_tokens=200)
    summarizer = Summarizer(store, summaries, config, count_words, generate)
    summary = summarizer.run(SummaryJob("/cam", "minutes", at(10), at(10, 10)))
    assert summary.text == "boxes moved all morning"
    notes = seen[0].splitlines()
    assert sum(count_words(line) + 1 for line in notes) <= 200 < 120 * 5  # thinned to the budget
    assert notes[0].endswith("box 0 moves") and notes[-1].endswith("box 595 moves")  # spread over the period
    assert not any("outside" in line for line in notes)
    # An empty period is stored without asking the model.
    summarizer.run(SummaryJob("/cam", "minutes", at(11), at(11, 10)))
    assert len(seen) == 1 and summarizer.empty == 1
    # The hour reads the minute summaries.
    summarizer.run(SummaryJob("/cam", "hour", at(10), at(11)))
    assert seen[1].endswith("boxes moved all morning")
    assert "boxes moved all morning" in seed_text(summaries, "/cam")
    summaries.close()


def test_a_question_recollects_entries_within_its_time_words_and_budget(tmp_path, store):
    store.add([Entry("/front", at(13, 30), at(13, 30) + 4, "a red cart passes the dock", False, Pose(3.0, 1.0)),
               Entry("/front", at(9), at(9) + 2, "a red cart is parked", False, Pose(8.0, 2.0)),
               Entry("/back", at(13, 35), at(13, 35) + 1, "a forklift lifts a pallet", False)])
    summaries = SummaryStore(tmp_path / "memory.sqlite")
    recollection = recollect("where was the red cart an hour ago?", NOW_S, store, summaries, MemoryConfig(),
                             count_words)
    assert recollection.query == "where was the red cart ?"
    assert [s.text for s in recollection.sources][0] == "a red cart passes the dock"
    assert all(at(12, 30) <= s.start <= at(13, 59) for s in recollection.sources)  # 9:00 is outside
    assert recollection.lines[0].startswith("[13:30:00-13:30:04 /front at (3.0, 1.0)] a red cart")
    tight = recollect("where was the red cart an hour ago?", NOW_S, store, summaries,
                      MemoryConfig(ask_context_tokens=12), count_words)
    assert len(tight.sources) == 1  # one line of 11 words fits in 12 tokens, two do not
    off = recollect("where was the red cart?", NOW_S, store, summaries, MemoryConfig(ask_entries=0), count_words)
    assert off.sources == []
    summaries.close()


def test_recalled_lines_sit_in_the_question_turn_before_the_question(tiny_model):
    config = EngineConfig(generation=GenerationConfig(do_sample=False, max_new_tokens=3, answer_max_new_tokens=3))
    session = StreamSession(tiny_model, config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(2)]
    session.step(frames, 100.0, 101.0)
    lines = ["[13:30:00-13:30:04 /front at (3.0, 1.0)] a red cart passes the dock"]
    session.ask("where was the red cart?", recalled=lines)
    kinds = [s.kind for s in session.table.segments]
    turn = kinds[len(kinds) - 1 - kinds[::-1].index(Kind.USER_OPEN):]
    assert turn[:3] == [Kind.USER_OPEN, Kind.RECALLED, Kind.QUERY]
    prompt = session.prompt
    question_turn = [s for s in session.table.segments if s.turn == session.table.segments[-1].turn]
    text = prompt.tokenizer.decode(np.concatenate([s.tokens for s in question_turn[:4]]).tolist())
    assert text == ("<|im_start|>user\nTime=1.0s\n"
                    "Memory (what the cameras saw before; cite the times and places you use):\n"
                    f"{lines[0]}\nQuestion: where was the red cart?<|im_end|>\n")
    # The ids are exactly the tokenizer's for that text: nothing is lost or glued at the seams.
    assert np.concatenate([s.tokens for s in question_turn[1:3]]).tolist() == prompt.encode(
        "Memory (what the cameras saw before; cite the times and places you use):\n"
        f"{lines[0]}\nQuestion: where was the red cart?")
