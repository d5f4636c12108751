"""The memory store: a day of descriptions recalled by word, meaning, time and place (issue 13)."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from svlm_ros.config import MemoryConfig
from svlm_ros.memory.store import Embedder, Entry, MemoryError, MemoryStore, Pose
from svlm_ros.memory.writer import MemoryWriter

DAY0 = 1_763_683_200.0  # 2025-11-21 00:00 UTC
SCENES = ["A forklift carries a pallet to the loading bay.", "A person in a yellow vest walks past the shelves.",
          "The red cart is parked by the door.", "A robot arm picks a box from the conveyor."]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()  # MiniLM, loaded once for the module


def day_of_entries(hours=24, step=1.0):
    """One camera, one window per `step` seconds; quiet stretches, the scenes in turn, and two
    events that happen once: in hour 1 and in hour 24."""
    for k in range(int(hours * 3600 / step)):
        t = DAY0 + k * step
        hour = int(k * step // 3600)
        minute = int(k * step // 60)
        if hour == 0 and minute % 60 == 12:
            text = "A white van unloads crates at gate four."
        elif hour == 23 and minute % 60 == 52:
            text = "A dog runs across the parking lot."
        elif minute % 7 == 3:
            text = ""  # a quiet minute
        else:
            text = SCENES[minute % len(SCENES)]
        yield Entry("/cam0/image_raw", t, t + step, text, not text, Pose(x=float(hour), y=float(minute % 60)))


def test_a_day_is_recalled_by_word_meaning_time_and_place(tmp_path, embedder):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), embedder)
    batch = []
    for entry in day_of_entries():
        batch.append(entry)
        if len(batch) == 500:
            store.add(batch)
            batch = []
    store.add(batch)
    assert store.count() < 24 * 60 * 2  # repeated seconds are merged: about one row per minute
    van = store.recall("white van", limit=3)[0]
    assert "van" in van.text and DAY0 + 720 <= van.start < DAY0 + 780
    dog = store.recall("dog running", limit=3)[0]
    assert "dog" in dog.text and dog.start >= DAY0 + 23 * 3600
    # By meaning: no word in common with the stored text.
    assert "van" in store.recall("truck dropping off goods", limit=3)[0].text
    assert "red cart" in store.recall("trolley left near the entrance", limit=3)[0].text
    canine = store.recall("puppy", limit=3)
    assert "dog" in canine[0].text
    # By time range: only that range, newest first without a query.
    window = store.recall(since=DAY0 + 3600, until=DAY0 + 3660, limit=50)
    assert window and all(hit.end >= DAY0 + 3600 and hit.start <= DAY0 + 3660 for hit in window)
    # By place: the robot is at (hour, minute of the hour); near (5, 30) it saw the cart at minute 30.
    place = store.recall("red cart", near=(5.0, 30.0, 1.5), limit=20)
    assert place and all((hit.pose.x - 5.0) ** 2 + (hit.pose.y - 30.0) ** 2 <= 1.5 ** 2 for hit in place)
    assert "red cart" in place[0].text and place[0].pose.y == 30.0


def test_retention_keeps_the_store_within_its_bounds(tmp_path, embedder):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(retention_days=0.5), embedder)
    store.add(list(day_of_entries(hours=24, step=10.0)))
    removed = store.apply_retention(now=DAY0 + 24 * 3600)
    assert removed > 0
    oldest = store.recall(since=DAY0, until=DAY0 + 24 * 3600, limit=100000, include_silent=True)
    assert min(hit.start for hit in oldest) >= DAY0 + 12 * 3600 - 60
    assert store.recall("dog", limit=1)[0].text.startswith("A dog")  # hour 24 is still there
    assert not any("van" in hit.text for hit in store.recall("white van", limit=5))  # hour 1 is gone


@pytest.mark.parametrize("arguments,message", [
    (dict(query="x" * 2000), "characters"),
    (dict(query="cart", since=DAY0 + 10, until=DAY0), "reversed"),
    (dict(), "give a query"),
    (dict(query="cart", near=(0.0, 0.0, 1.0)), "no entry has a pose"),
    (dict(query="cart", near=(0.0, 0.0, -1.0)), "radius"),
])
def test_bad_queries_are_refused_with_the_reason(tmp_path, embedder, arguments, message):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), embedder)
    store.add([Entry("/cam", DAY0, DAY0 + 1, "The red cart is parked.", False)])
    with pytest.raises(ValueError, match=message):
        store.recall(**arguments)


def test_fts_syntax_in_a_query_is_just_text(tmp_path, embedder):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), embedder)
    store.add([Entry("/cam", DAY0, DAY0 + 1, "The red cart is parked.", False)])
    for query in ['red" OR cart', "cart*", "NEAR(red cart)", "-cart", "(cart"]:
        assert store.recall(query, limit=1)[0].text == "The red cart is parked."


def test_a_corrupt_store_is_named(tmp_path):
    path = tmp_path / "memory.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(MemoryError, match="cannot be opened.*move it aside"):
        MemoryStore(path, MemoryConfig(), Embedder())


def test_the_writer_never_blocks_and_counts_what_it_drops(tmp_path, embedder):
    path = tmp_path / "memory.sqlite"
    path.write_bytes(b"corrupt" * 100)
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), embedder), queue_size=4)
    for k in range(50):  # the store cannot open: offers still return at once
        writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, "text", False))
    writer.close()
    assert "cannot be opened" in writer.last_error and writer.dropped >= 46


def test_kill_9_during_writes_loses_no_committed_entry(tmp_path):
    path = tmp_path / "memory.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from svlm_ros.config import MemoryConfig
        from svlm_ros.memory.store import Entry, MemoryStore
        import numpy as np

        class Zeros:  # no model: this test is about durability
            def __call__(self, texts):
                return np.ones((len(texts), 384), np.float32) / 384 ** 0.5

        store = MemoryStore({str(path)!r}, MemoryConfig(), Zeros())
        k = 0
        while True:
            store.add([Entry("/cam", {DAY0} + k, {DAY0} + k + 1, f"event {{k}}", False)])
            print(k, flush=True)  # after the commit returned
            k += 1
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = -1
    try:
        for line in process.stdout:
            committed = int(line)
            if committed >= 200:
                break
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert committed >= 200
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert rows >= committed + 1


def test_replay_fills_a_store_that_svlm_recall_searches(tmp_path, capsys):
    from svlm_ros.cli import main as svlm
    from svlm_ros.replay.synth import START_NS, write_synthetic_bag

    bag, db = tmp_path / "shapes", tmp_path / "memory.sqlite"
    write_synthetic_bag(bag, 6, "mcap", height=48, width=64, fps=4)
    assert svlm(["replay", str(bag), "--out", str(tmp_path / "run"), "--memory", str(db), "--model", "tiny-random",
                 "--device", "cpu", "--set", "frames.min_pixels=3136", "--set", "generation.max_new_tokens=4"]) == 0
    described = [line for line in (tmp_path / "run" / "descriptions.jsonl").read_text().splitlines() if line]
    stored = MemoryStore(db, MemoryConfig(), Embedder())
    windows = sqlite3.connect(db).execute("SELECT SUM(windows) FROM entries").fetchone()[0]
    assert windows == len(described) == 6  # every window stored (repeats merged into runs)
    stored.close()
    capsys.readouterr()
    start = START_NS / 1e9
    assert svlm(["recall", str(db), "--since", str(start + 2), "--until", str(start + 3.5), "--silent"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 1 <= len(lines) <= 3 and all("/cam0/image_raw" in line for line in lines)
    assert svlm(["recall", str(tmp_path / "none.sqlite"), "cart"]) == 2
    assert "no memory store" in capsys.readouterr().err
