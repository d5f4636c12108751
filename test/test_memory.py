"""The memory store: a day of descriptions recalled by word, meaning, time and place (issue 13)."""
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from svlm_ros.config import MemoryConfig
from svlm_ros.memory import ranking, schema, store as store_module
from svlm_ros.memory.errors import StoreCorrupt, StoreError
from svlm_ros.memory.records import Entry, Pose
from svlm_ros.memory.store import MemoryStore
from svlm_ros.memory.summaries import TIERS, SummaryJob, SummaryStore, Summarizer, period_start
from svlm_ros.memory.vectors import Embedder, quantize
from svlm_ros.memory.writer import MemoryWriter

from test_node import wait_for

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


def test_a_corrupt_store_is_named_to_a_reader_and_moved_aside_by_its_writer(tmp_path):
    path = tmp_path / "memory.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt, match=f"{path} is corrupt.*move it aside"):
        MemoryStore(path, MemoryConfig(), Hashed())
    assert path.read_bytes() == garbage  # a reader leaves the file alone
    store = MemoryStore(path, MemoryConfig(), Hashed(), check=True)  # the writer's owner, at its start
    assert store.moved_aside.name.startswith("memory.sqlite.corrupt-") and store.moved_aside.read_bytes() == garbage
    store.add([Entry("/cam", DAY0, DAY0 + 1, "a new start", False)])
    assert store.count() == 1
    store.close()


def test_the_writer_never_blocks_and_counts_what_it_drops(tmp_path, embedder):
    path = tmp_path / "memory.sqlite"
    path.write_bytes(b"corrupt" * 100)
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), embedder), queue_size=4)
    for k in range(50):  # the store cannot open: offers still return at once
        writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, "text", False))
    assert writer.flush() is False  # answered, not hung: nothing could be committed
    assert writer.close() == writer.accepted  # every entry it took is reported as not written
    assert "is corrupt" in writer.last_error and writer.dropped >= 46


def test_kill_9_during_writes_loses_no_committed_entry(tmp_path):
    path = tmp_path / "memory.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from svlm_ros.config import MemoryConfig
        from svlm_ros.memory.records import Entry
        from svlm_ros.memory.store import MemoryStore
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
                 "--device", "cpu", "--set", "frames.min_pixels=3136", "--set", "generation.max_new_tokens=4",
                 "--set", "memory.summary_max_tokens=6"]) == 0
    described = [json.loads(line) for line in (tmp_path / "run" / "descriptions.jsonl").read_text().splitlines()
                 if line]
    stored = MemoryStore(db, MemoryConfig(), Embedder())
    windows = sqlite3.connect(db).execute("SELECT SUM(windows) FROM entries").fetchone()[0]
    assert windows == len(described) == 6  # every window stored (repeats merged into runs)
    # The runs the store makes of the windows: a window repeating the text before it (silence
    # included) extends that run; whatever the random-weight model said.
    runs = []
    for window in described:
        text = "" if window["silent"] else window["text"].strip()
        if runs and runs[-1][0] == text:
            runs[-1][2] = window["end"]
        else:
            runs.append([text, window["start"], window["end"]])
    # The bag's periods (its 10 minutes, hour and day) were still open when it ended: each is
    # summarized, once, and each tier's notes are what the tier below holds.
    camera, start = "/cam0/image_raw", START_NS / 1e9
    summaries = SummaryStore(db)
    assert summaries.count() == 3
    summarizer = Summarizer(stored, summaries, MemoryConfig(), len, None)
    below = [text for text, _, _ in runs if text]  # the minutes' notes: the runs that said something
    for tier, period in zip(TIERS, (600.0, 3600.0, 86400.0)):
        [summary] = summaries.between(tier, None, None, camera, with_empty=True)
        assert summary.start <= start < start + 6 <= summary.end
        assert (summary.start, summary.end) == (period_start(start, period), period_start(start, period) + period)
        assert summary.text == summary.text.strip()
        notes = summarizer.notes(SummaryJob(camera, tier, summary.start, summary.end))
        assert [line.split("] ", 1)[1] for line in notes] == below, tier
        below = [summary.text] if summary.text else []  # an empty summary is no note for the tier above
    summaries.close()
    stored.close()
    capsys.readouterr()
    assert svlm(["recall", str(db), "--since", str(start + 2), "--until", str(start + 3.5), "--silent"]) == 0
    hit_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\d+ s\] /cam0/image_raw: (.*)  \(score 0\.000\)$", re.S)
    found = [hit_line.match(line) for line in re.split(r"\n(?=\d{4}-\d\d-\d\d )", capsys.readouterr().out.strip())]
    # The runs overlapping (start + 2, start + 3.5), newest first: one or two, as the model spoke.
    overlapping = [text or "(silent)" for text, begin, end in reversed(runs) if end > start + 2 and begin < start + 3.5]
    assert all(found) and [m.group(1) for m in found] == overlapping
    assert svlm(["recall", str(tmp_path / "none.sqlite"), "cart"]) == 2
    assert "no memory store" in capsys.readouterr().err


# ----- layout 2: scale (texts ranked, then expanded to entries), retention in bounded steps -----------

LAYOUT_1 = """
CREATE TABLE texts (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, vector BLOB);
CREATE TABLE entries (id INTEGER PRIMARY KEY, camera TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    text_id INTEGER NOT NULL REFERENCES texts(id), silent INTEGER NOT NULL, x REAL, y REAL, z REAL, frame TEXT,
    windows INTEGER NOT NULL DEFAULT 1);
CREATE VIRTUAL TABLE entries_fts USING fts5(text, content='');
"""


class Hashed:
    """A tiny deterministic embedder (bag of hashed words): tests about the store, not the model."""

    def __call__(self, texts):
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in ranking.tokens(text):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 384] += 1.0
        out[:, 383] += 0.01
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_a_store_of_an_older_or_newer_layout_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript(LAYOUT_1)
    db.execute("INSERT INTO texts(text) VALUES ('a cart')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"old\.sqlite has the layout of an older svlm_ros.*Move the file aside"):
        MemoryStore(old, MemoryConfig(), Hashed())
    assert sqlite3.connect(old).execute("SELECT text FROM texts").fetchone() == ("a cart",)  # untouched
    newer = tmp_path / "newer.sqlite"
    MemoryStore(newer, MemoryConfig(), Hashed()).close()
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="layout 99, written by a newer svlm_ros"):
        MemoryStore(newer, MemoryConfig(), Hashed())


def test_a_new_store_beside_the_summaries_table_still_gets_incremental_vacuum(tmp_path):
    path = tmp_path / "memory.sqlite"
    SummaryStore(path).close()  # the summaries' table came first
    store = MemoryStore(path, MemoryConfig(), Hashed())
    assert store.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    store.add([Entry("/cam", DAY0, DAY0 + 1, "a red cart", False)])
    assert store.recall("cart")[0].text == "a red cart"


def busy_week(store, cameras=("/front", "/rear"), hours=6, step=10.0):
    """Two cameras, a window every `step` s: a common sentence most of the time, a rare one once an
    hour on /rear only, a quiet stretch now and then; the robot drives along x (1 m per minute)."""
    batch = []
    for k in range(int(hours * 3600 / step)):
        t = DAY0 + k * step
        for camera in cameras:
            minute = int(k * step // 60)
            if camera == "/rear" and (k * step) % 3600 == 1800:
                text = f"A blue forklift drops a crate in hour {int(k * step // 3600)}."
            elif minute % 11 == 5:
                text = ""
            else:
                text = ["A person walks past the shelves.", "A pallet waits by the door."][minute % 2]
            batch.append(Entry(camera, t, t + step, text, not text, Pose(float(minute), 0.0)))
    for start in range(0, len(batch), 64):
        store.add(batch[start:start + 64])


@pytest.mark.parametrize("narrow_max", [0, 100_000], ids=["expand-texts-through-the-index", "rank-inside-filter"])
def test_keyword_ranking_over_texts_returns_the_entries_under_the_filters(tmp_path, monkeypatch, narrow_max):
    """Both ways of answering (rank the texts, then expand each to its entries under the filters; or
    rank only the texts of the entries inside a narrow filter) give filtered entries, best first."""
    monkeypatch.setattr(store_module, "NARROW_MAX", narrow_max)
    monkeypatch.setattr(store_module, "NARROW_PLACE_MAX", narrow_max)
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    busy_week(store)
    hits = store.recall("blue forklift", limit=10)
    assert sorted(h.text for h in hits[:6]) == [f"A blue forklift drops a crate in hour {h}." for h in range(6)]
    # Camera: the rare sentence is only on /rear.
    assert not any("forklift" in h.text for h in store.recall("blue forklift", camera="/front", limit=20))
    rear = store.recall("blue forklift", camera="/rear", limit=3)
    assert rear and all(h.camera == "/rear" and "forklift" in h.text for h in rear)
    # Time: hour 2 only.
    since, until = DAY0 + 2 * 3600, DAY0 + 3 * 3600 - 1
    timed = store.recall("forklift crate", since=since, until=until, limit=5)
    assert timed[0].text == "A blue forklift drops a crate in hour 2."
    assert all(h.end >= since and h.start <= until for h in timed)
    # Place: the robot was at x = minute; minute 150 is in hour 2.
    placed = store.recall("forklift", near=(150.0, 0.0, 0.5), limit=5)
    assert placed[0].text == "A blue forklift drops a crate in hour 2."
    assert all(abs(h.pose.x - 150.0) <= 0.5 for h in placed)
    # A common sentence is returned newest first within its text, and many entries of it fill the list.
    people = store.recall("person walks", camera="/front", since=DAY0 + 3600, until=DAY0 + 7200, limit=10)
    assert len(people) == 10 and all(h.text == "A person walks past the shelves." and h.camera == "/front"
                                     for h in people)
    assert all(DAY0 + 3600 - 10 <= h.start <= DAY0 + 7200 for h in people)


def test_a_word_in_most_texts_does_not_drown_the_rare_one(tmp_path):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    store.add([Entry("/cam", DAY0 + k, DAY0 + k + 1, f"the box {k} is on the shelf", False) for k in range(0, 200, 2)])
    store.add([Entry("/cam", DAY0 + 500, DAY0 + 501, "the dog sleeps", False)])
    assert store.recall("the dog", limit=1)[0].text == "the dog sleeps"
    assert store.recall("the", limit=3)  # every word common: still answered


def test_runs_stop_at_max_run_and_time_ranges_find_long_entries(tmp_path):
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    quiet = [Entry("/cam", DAY0 + k, DAY0 + k + 1, "", True) for k in range(int(2.5 * 3600))]
    for start in range(0, len(quiet), 500):
        store.add(quiet[start:start + 500])
    assert store.count() == 3  # 3,600 s, 3,600 s and the rest
    # One window that lasts 5 hours (no merge can make it; a caller can): a range in its middle finds it.
    store.add([Entry("/long", DAY0, DAY0 + 5 * 3600, "a crane stands still", False)])
    assert [h.text for h in store.recall(since=DAY0 + 4 * 3600, until=DAY0 + 4 * 3600 + 1, camera="/long")] == \
        ["a crane stands still"]
    middle = store.recall(since=DAY0 + 5000, until=DAY0 + 5001, camera="/cam", include_silent=True)
    assert len(middle) == 1 and middle[0].start <= DAY0 + 5000 <= middle[0].end


def test_retention_works_in_bounded_steps_and_gives_the_space_back(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "RETENTION_CHUNK", 50)
    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig(retention_days=3 / 24), Hashed())
    busy_week(store, hours=6, step=5.0)
    reader = MemoryStore(path, MemoryConfig(), Hashed())  # another connection, as the node's services have
    assert reader.recall("forklift hour 0", limit=1)[0].text == "A blue forklift drops a crate in hour 0."
    commits = []
    store.db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    rows_before = store.count()
    removed = store.apply_retention(now=DAY0 + 6 * 3600)
    assert removed == rows_before - store.count() and removed > 100
    assert len(commits) >= removed // 50  # one transaction per chunk, not one for all
    oldest = store.recall(since=DAY0, until=DAY0 + 6 * 3600, limit=100000, include_silent=True)
    assert min(h.start for h in oldest) >= DAY0 + 3 * 3600
    texts = {r[0] for r in store.db.execute("SELECT text FROM texts")}
    assert "A blue forklift drops a crate in hour 1." not in texts  # no entry left: the text went too
    assert "A blue forklift drops a crate in hour 4." in texts
    # Neither ranking of the other connection returns a text that is gone.
    for hit in reader.recall("blue forklift drops a crate in hour 1", limit=20):
        assert hit.start >= DAY0 + 3 * 3600
    # The size bound: the oldest go first until the store fits, and the file shrinks (incremental vacuum).
    size = store.size_bytes()
    store.config = MemoryConfig(retention_days=3 / 24, max_bytes=int(size * 0.7))
    store.apply_retention(now=DAY0 + 6 * 3600)
    assert store.size_bytes() <= int(size * 0.7)
    assert store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    newest = store.recall(since=DAY0, until=DAY0 + 7 * 3600, limit=1, include_silent=True)[0]
    assert newest.end == DAY0 + 6 * 3600  # the newest stay
    assert reader.recall("pallet", limit=5)


def test_the_meaning_index_is_trained_as_texts_grow_and_finds_what_an_exact_scan_finds(tmp_path, monkeypatch):
    monkeypatch.setattr(MemoryStore, "IVF_MIN", 300)
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    words = ["cart", "box", "dog", "van", "crate", "ladder", "drone", "pallet", "barrel", "cone"]
    colours = ["red", "blue", "green", "white", "black", "grey", "pink", "brown"]
    places = ["dock", "gate", "aisle", "door", "ramp", "yard", "office", "bay"]
    texts = [f"a {c} {w} at the {p}" for w in words for c in colours for p in places]  # 640 distinct texts
    for start in range(0, len(texts), 64):
        store.add([Entry("/cam", DAY0 + k, DAY0 + k + 1, texts[k], False) for k in range(start, start + 64)])
    meta = store._meta("ivf_centroids", "ivf_trained_on")
    assert meta.get("ivf_centroids") is not None and int(meta["ivf_trained_on"]) >= 300
    assert store.db.execute("SELECT COUNT(*) FROM texts WHERE cell < 0 AND text != ''").fetchone()[0] == 0
    assert store.recall("green drone at the ramp", limit=1)[0].text == "a green drone at the ramp"
    index = store._index
    cells = len(index.centroids)
    query = quantize(Hashed()(["pink barrel yard"])[0]).astype(np.float32)
    similarity = index.similarity(query)
    exact = sorted(similarity.tolist(), reverse=True)[:10]
    found = index.search(query, 10, nprobe=cells - 1)  # nearly every cell: as good as the exact scan
    assert similarity[found].tolist() == exact
    # A reader that opens the file later uses the stored cells (no training of its own).
    reader = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    assert reader.recall("red van at the gate", limit=1)[0].text == "a red van at the gate"
    assert reader._index.centroids is not None and len(reader._index.centroids) == cells


def test_vectors_cells_and_kmeans_are_plain_numpy():
    """The meaning index's arithmetic, without a store: four tight clusters become four cells."""
    from svlm_ros.memory.vectors import kmeans, nearest_cells

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 384))
    points = np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(200, 384))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    stored = quantize(points)
    assert stored.dtype == np.int8 and np.abs(stored.astype(int)).max() <= 127
    centroids = kmeans(stored, 4, seed=0)
    assert centroids.shape == (4, 384) and np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    cells = nearest_cells(stored, centroids)
    per_cluster = [set(cells[k * 50:(k + 1) * 50].tolist()) for k in range(4)]
    assert all(len(cell) == 1 for cell in per_cluster) and set.union(*per_cluster) == {0, 1, 2, 3}
    assert (nearest_cells(points, centroids) == cells).all()  # float32 rows land where their int8 copies do


def test_running_out_of_memory_while_training_the_meaning_index_keeps_the_store_working(tmp_path, monkeypatch,
                                                                                        caplog):
    """Python's own MemoryError from k-means is caught as what it is (the store's errors are
    StoreError): the vectors stay stored, words and meaning still find the texts, and training is
    tried again only once a quarter more texts have come, not at every embedding step."""
    monkeypatch.setattr(MemoryStore, "IVF_MIN", 300)
    tries = []

    def out_of_memory(vectors, k, **options):
        tries.append(len(vectors))
        raise MemoryError()

    real_kmeans = store_module.kmeans
    monkeypatch.setattr(store_module, "kmeans", out_of_memory)
    store = MemoryStore(tmp_path / "memory.sqlite", MemoryConfig(), Hashed())
    texts = [f"event {k} by the {['dock', 'gate', 'ramp'][k % 3]}" for k in range(400)]
    with caplog.at_level(logging.ERROR, logger="svlm_ros.memory.store"):
        for start in range(0, 350, 50):
            store.add([Entry("/cam", DAY0 + k, DAY0 + k + 1, texts[k], False) for k in range(start, start + 50)])
    assert tries == [300]  # at IVF_MIN; not again at 350 (held until 300 + 300 // 4 = 375)
    [record] = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert "training the meaning index over 300 texts" in record.getMessage()
    assert "tried again at 375 texts" in record.getMessage() and "give this process more memory" in record.getMessage()
    assert store.awaiting_embedding() == 0 and store._meta("ivf_centroids") == {}
    assert store.recall("event 123", limit=1)[0].text == "event 123 by the dock"
    monkeypatch.setattr(store_module, "kmeans", real_kmeans)  # memory again
    store.add([Entry("/cam", DAY0 + k, DAY0 + k + 1, texts[k], False) for k in range(350, 400)])
    assert tries == [300] and int(store._meta("ivf_trained_on")["ivf_trained_on"]) == 400
    assert store.recall("event 377", limit=1)[0].text == "event 377 by the ramp"
    store.close()


def test_two_stores_on_one_file_see_each_others_writes(tmp_path):
    """The node opens the file twice (the writer thread's store and the services' store)."""
    path = tmp_path / "memory.sqlite"
    writer, reader = MemoryStore(path, MemoryConfig(), Hashed()), MemoryStore(path, MemoryConfig(), Hashed())
    writer.add([Entry("/cam", DAY0, DAY0 + 1, "a red cart by the door", False)])
    assert reader.recall("cart", limit=1)[0].text == "a red cart by the door"  # loads the texts
    writer.add([Entry("/cam", DAY0 + 5, DAY0 + 6, "a dog on the ramp", False)])
    assert reader.recall("dog", limit=1)[0].text == "a dog on the ramp"  # and then the new ones
    # Repeats merge across the two connections (each one's memory of the last entry is dropped
    # when the other commits).
    for k in range(2, 8):
        (writer if k % 2 else reader).add([Entry("/cam", DAY0 + 4 + k, DAY0 + 5 + k, "a dog on the ramp", False)])
    assert writer.count() == 2
    assert sqlite3.connect(path).execute("SELECT windows, end FROM entries WHERE id = 2").fetchone() == \
        (7, DAY0 + 12)


# ----- embedding after the commit: a slow model never holds entries back ----------------------------

class Gated(Hashed):
    """Hashed embeddings that wait for `open` (a starved or stalled embedding model)."""

    def __init__(self):
        self.open = threading.Event()
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        assert self.open.wait(120), "the test never opened the gate"
        return super().__call__(texts)


def test_a_stalled_embedding_model_delays_search_by_words_never_the_entries(tmp_path):
    path = tmp_path / "memory.sqlite"
    embedder = Gated()
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), embedder), queue_size=8, batch=4)
    reader = MemoryStore(path, MemoryConfig(), Hashed())
    try:
        for k in range(40):  # five times the queue, each offer waiting for the one before to commit
            assert writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, f"crate number {k} on the belt", False))
            assert writer.flush(timeout=120, embedded=False) and writer.written == k + 1
        assert writer.dropped == 0 and not embedder.open.is_set()  # the model is still stalled on its first texts
        by_time = reader.recall(since=DAY0, until=DAY0 + 100, limit=100)
        assert len(by_time) == 40
        assert reader.awaiting_embedding() == 40
        assert reader.recall("crate belt", limit=100) == []  # not embedded, so not ranked yet
        embedder.open.set()
        assert writer.flush(timeout=120)  # committed and embedded
        assert reader.awaiting_embedding() == 0 and writer.awaiting_embedding == 0
        found = reader.recall("crate number 17", limit=5)
        assert found and found[0].text == "crate number 17 on the belt"
    finally:
        embedder.open.set()
        writer.close()
        reader.close()


def test_texts_left_unembedded_by_a_stopped_writer_are_embedded_by_the_next(tmp_path):
    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig(), Hashed())
    store.add([Entry("/cam", DAY0 + k, DAY0 + k + 1, f"pallet {k} wrapped", False) for k in range(5)], embed=False)
    store.close()  # the node stopped before its embedding thread got to them
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), Hashed()))
    assert writer.flush(timeout=120)
    writer.close()
    store = MemoryStore(path, MemoryConfig(), Hashed())
    assert store.awaiting_embedding() == 0 and store.recall("pallet 3", limit=1)[0].text == "pallet 3 wrapped"
    store.close()


def test_a_store_written_before_deferred_embedding_is_searched_whole(tmp_path):
    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig(), Hashed())
    store.add([Entry("/cam", DAY0, DAY0 + 1, "a blue bin by the dock", False)])
    store.db.execute("DELETE FROM meta WHERE key = 'embedded_upto'")  # as the previous version wrote it
    store.db.commit()
    store.close()
    store = MemoryStore(path, MemoryConfig(), Hashed())
    assert store.awaiting_embedding() == 0 and store.recall("blue bin")[0].text == "a blue bin by the dock"
    store.add([Entry("/cam", DAY0 + 1, DAY0 + 2, "a green bin by the dock", False)])
    assert {hit.text for hit in store.recall("bin dock")} == {"a blue bin by the dock", "a green bin by the dock"}
    store.close()


class KeepsTalking(Hashed):
    """Every embedding call first offers one more window with a new text and waits for its commit,
    so texts keep arriving faster than they are embedded (up to `extra` of them)."""

    def __init__(self, extra=60):
        self.writer = None
        self.extra = extra
        self.offered = 0

    def __call__(self, texts):
        if self.writer is not None and self.offered < self.extra:
            self.offered += 1
            k = 100 + self.offered
            self.writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, f"late box {k}", False))
            assert self.writer.flush(timeout=120, embedded=False)  # committed, by the writer's event
        return super().__call__(texts)


def test_flush_waits_for_what_was_offered_before_it_not_for_a_stream_that_never_ends(tmp_path):
    path = tmp_path / "memory.sqlite"
    embedder = KeepsTalking()
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), embedder), batch=4)
    try:
        assert writer.flush(timeout=120)  # the store is open, nothing offered yet
        embedder.writer = writer
        for k in range(3):
            writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, f"early box {k}", False))
        assert writer.flush(timeout=120)
        # Returned while the stream still had new texts to embed: each embedding call adds one.
        assert embedder.offered < embedder.extra
        reader = MemoryStore(path, MemoryConfig(), Hashed())
        assert {h.text for h in reader.recall("early box", limit=10)} >= {f"early box {k}" for k in range(3)}
        reader.close()
    finally:
        embedder.offered = embedder.extra
        writer.close()


def test_a_text_id_freed_by_retention_is_never_given_again(tmp_path):
    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig(retention_days=1.0), Hashed())
    store.add([Entry("/cam", DAY0 + 10 * 86400, DAY0 + 10 * 86400 + 1, "a steady shelf", False)])
    store.add([Entry("/boot_clock_cam", 5.0, 6.0, "a once seen ladder", False)])  # the newest text, stamped at boot
    newest = store.newest_text_id()
    assert store.apply_retention(DAY0 + 10 * 86400 + 1) == 1  # the ladder's entry, and so its text, are gone
    store.add([Entry("/cam", DAY0 + 10 * 86400 + 1, DAY0 + 10 * 86400 + 2, "a new red ladder", False)])
    assert store.newest_text_id() == newest + 1 and store.awaiting_embedding() == 0
    assert store.recall("red ladder", limit=1)[0].text == "a new red ladder"
    store.close()


def test_a_locked_store_keeps_the_entries_until_it_is_released(tmp_path):
    path = tmp_path / "memory.sqlite"
    MemoryStore(path, MemoryConfig(), Hashed()).close()  # the node's store, from an earlier run
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock (an open sqlite3 shell)
    writer = MemoryWriter(lambda: MemoryStore(path, MemoryConfig(), Hashed()))
    try:
        for k in range(3):
            assert writer.offer(Entry("/cam", DAY0 + k, DAY0 + k + 1, f"tote {k} on the rack", False))
        wait_for(lambda: writer.errors >= 1, timeout=120)  # one try ran into the lock (the busy timeout)
        assert "is locked by another connection" in writer.last_error and writer.written == 0
        holder.execute("ROLLBACK")
        assert writer.flush(timeout=120)
        assert writer.written == 3 and writer.last_error is None and writer.dropped == 0
    finally:
        holder.close()
        writer.close()
    store = MemoryStore(path, MemoryConfig(), Hashed())
    assert store.count() == 3 and store.recall("tote 2 rack", limit=1)[0].text == "tote 2 on the rack"
    store.close()
