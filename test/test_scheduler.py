"""The inference worker (issue 10): one worker per session, publication errors survived, a dead
worker restarted. Driven by events the test controls, never by timing."""
import threading

import pytest
from sensor_msgs.msg import Image

from svlm_ros.config import EngineConfig, NodeConfig
from svlm_ros.cameras.scheduler import Scheduler
from svlm_ros.synthetic import moving_shapes

CAMERA = "/cam"


@pytest.fixture
def make_scheduler(tiny_model):
    made = []

    def make(publish):
        engine = EngineConfig()
        engine.frames.min_pixels = 3136
        engine.generation.max_new_tokens = 2
        scheduler = Scheduler(tiny_model, engine, NodeConfig(image_topics=[CAMERA], max_queued_windows=8), publish,
                              [CAMERA])
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=60)


def image(frame):
    return Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", step=frame.shape[1] * 3,
                 data=frame.tobytes())


def feed_windows(scheduler, count, start=100.0, camera=CAMERA, rate=4):
    """Frames at `rate` Hz for `count` whole windows plus the frame that closes the last one, through the
    path the node's image callback takes."""
    stream = scheduler.cameras[camera]
    for k in range(count * rate + 1):
        assert stream.feed(start + k / rate, image(moving_shapes(k / rate, 48, 64))) == []
    scheduler.notify()


def wait(event, what):
    assert event.wait(timeout=120), f"timed out waiting for {what}"


def test_a_second_worker_is_refused_while_the_first_is_busy(make_scheduler):
    entered, release = threading.Event(), threading.Event()
    published = []

    def publish(described):
        entered.set()
        wait(release, "the test to release the worker")
        published.append(described)

    scheduler = make_scheduler(publish)
    scheduler.start()
    feed_windows(scheduler, 1)
    wait(entered, "the first window")
    assert scheduler.stop(timeout=0.01) is False  # still inside its window: it cannot have stopped
    with pytest.raises(RuntimeError, match="still running"):
        scheduler.start()
    release.set()
    scheduler.start(wait_s=120)  # the old worker finishes its window, then a new one starts
    assert scheduler.worker_alive() and len(published) == 1


def test_a_failed_publication_is_counted_and_the_worker_goes_on(make_scheduler):
    published, second = [], threading.Event()

    def publish(described):
        published.append(described.window.index)
        if len(published) == 1:
            raise RuntimeError("the publisher is gone")
        second.set()

    scheduler = make_scheduler(publish)
    scheduler.start()
    feed_windows(scheduler, 2)
    wait(second, "the second window")
    assert published == [0, 1] and scheduler.publish_errors == 1
    assert "publishing failed" in scheduler.last_error


def test_a_dead_worker_is_restarted(make_scheduler, monkeypatch):
    described = threading.Event()
    scheduler = make_scheduler(lambda result: described.set())
    died = threading.Event()
    original = Scheduler._next_batch

    def dies_once(self, wait):
        if not died.is_set():
            died.set()
            raise MemoryError("simulated: the worker thread dies outside a window")
        return original(self, wait)

    monkeypatch.setattr(Scheduler, "_next_batch", dies_once)
    scheduler.start()
    wait(died, "the worker to die")
    scheduler._thread.join(timeout=120)
    assert not scheduler.worker_alive() and "MemoryError" in scheduler.last_error
    assert scheduler.ensure_worker() is True and scheduler.worker_restarts == 1
    feed_windows(scheduler, 1)
    wait(described, "a window after the restart")
    assert scheduler.ensure_worker() is False  # alive: nothing to do


# ----- batched cameras (issue 20) ---------------------------------------------------------------
CAMERAS = ["/a", "/b", "/c"]
SIZES = {"/a": (48, 64), "/b": (64, 96), "/c": (56, 56)}  # different resolutions, different vision grids


def small_engine(max_new_tokens=3):
    engine = EngineConfig()
    engine.frames.min_pixels = 3136
    engine.generation.max_new_tokens = max_new_tokens
    engine.generation.seed = 7  # sampled, each camera with its own generator: the same words batched or not
    engine.cache.vision_windows, engine.cache.text_windows = 2, 3  # eviction within a few windows
    return engine


def feed_camera(scheduler, camera, stamps):
    height, width = SIZES[camera]
    for stamp in stamps:
        scheduler.cameras[camera].feed(stamp, image(moving_shapes(stamp, height, width)))


def camera_stamps(camera):
    """Different rates and ages per camera; /c's time jumps back and goes on (a fresh stream)."""
    if camera == "/a":
        return [100 + k / 4 for k in range(4 * 7 + 1)]
    if camera == "/b":
        return [3.0 + k / 2 for k in range(2 * 5 + 1)]
    return [50 + k / 4 for k in range(4 * 4)] + [20 + k / 4 for k in range(4 * 3 + 1)]


def texts_by_camera(published):
    out = {}
    for described in published:
        out.setdefault(described.camera, []).append((described.window.start_s, described.result.index,
                                                     described.result.text, described.result.generated_tokens))
    return out


def test_batched_cameras_are_described_as_each_camera_alone(tiny_model):
    """Three cameras in batched steps (offline, as a replay) give every camera exactly what it gets in a
    scheduler of its own: same windows, same words, through eviction and one camera's time jump."""
    node = NodeConfig(image_topics=CAMERAS)
    batched = []
    scheduler = Scheduler(tiny_model, small_engine(), node, batched.append, CAMERAS, offline=True)
    streams = {camera: iter(camera_stamps(camera)) for camera in CAMERAS}
    while streams:  # interleaved, one frame of each camera at a time, as a bag holds them
        for camera in list(streams):
            stamp = next(streams[camera], None)
            if stamp is None:
                del streams[camera]
                continue
            feed_camera(scheduler, camera, [stamp])
            scheduler.drain(due_only=True)
    scheduler.drain()
    assert max(scheduler.batches.steps) == 3  # the windows were described in batches of all three
    assert scheduler.cameras["/c"].stats.restarts == 1
    alone = {}
    for camera in CAMERAS:
        published = []
        single = Scheduler(tiny_model, small_engine(), NodeConfig(image_topics=[camera]), published.append, [camera],
                           offline=True)
        feed_camera(single, camera, camera_stamps(camera))
        single.drain()
        alone.update(texts_by_camera(published))
    assert texts_by_camera(batched) == alone
    assert [start for start, *_ in alone["/c"]] == [50, 51, 52, 53, 20, 21, 22]
    assert [index for _, index, *_ in alone["/c"]] == [0, 1, 2, 3, 0, 1, 2]
    assert [len(alone[c]) for c in CAMERAS] == [7, 5, 7]


def test_a_backlog_on_one_camera_starves_no_other(tiny_model):
    """max_batch=2 of three cameras, each with two windows waiting: the camera that sat out goes first."""
    published = []
    scheduler = Scheduler(tiny_model, small_engine(1), NodeConfig(image_topics=CAMERAS, max_batch=2),
                          published.append, CAMERAS, offline=True)
    for camera in CAMERAS:
        feed_camera(scheduler, camera, [10 + k / 4 for k in range(2 * 4 + 1)])
    scheduler.drain()
    order = [(d.camera, d.result.index) for d in published]
    assert order == [("/a", 0), ("/b", 0), ("/c", 0), ("/a", 1), ("/b", 1), ("/c", 1)]
    assert scheduler.batches.steps == {2: 3}


def test_max_batch_one_describes_one_camera_per_step(tiny_model):
    published = []
    scheduler = Scheduler(tiny_model, small_engine(1), NodeConfig(image_topics=CAMERAS, max_batch=1),
                          published.append, CAMERAS, offline=True)
    for camera in CAMERAS:
        feed_camera(scheduler, camera, [10 + k / 4 for k in range(4 + 1)])
    scheduler.drain()
    assert [d.camera for d in published] == CAMERAS and scheduler.batches.steps == {1: 3}


def test_a_batch_waits_for_a_live_camera_and_a_question_goes_first(tiny_model):
    """batch_wait_s is long: /a's window waits for /b's (a live camera); a question asked meanwhile is
    answered at once, and /a's window is then described in one step with /b's."""
    published, both = [], threading.Event()

    def publish(described):
        published.append(described.camera)
        if len(published) == 2:
            both.set()

    # An hour: longer than any machine takes to answer; only /b's window (or the stop) ends the wait.
    node = NodeConfig(image_topics=["/a", "/b"], batch_wait_s=3600.0, camera_timeout_s=3600.0)
    scheduler = Scheduler(tiny_model, small_engine(1), node, publish, ["/a", "/b"])
    try:
        feed_camera(scheduler, "/b", [10.0])  # /b is live, its window still open
        scheduler.start()
        feed_camera(scheduler, "/a", [10 + k / 4 for k in range(4 + 1)])
        scheduler.notify()
        answer = scheduler.ask("/a", "What do you see?").result(timeout=120)
        assert answer.window == -1 and published == []  # answered before /a's window, which still waits
        feed_camera(scheduler, "/b", [10.5, 11.0])
        scheduler.notify()
        wait(both, "both windows")
        assert sorted(published) == ["/a", "/b"] and scheduler.batches.steps == {2: 1}
    finally:
        assert scheduler.stop(timeout=60)


def test_a_stop_ends_a_batch_wait_and_starts_no_background_job(tiny_model):
    """Shutdown while a batch waits for a straggler: the worker stops without running the summary queued."""
    node = NodeConfig(image_topics=["/a", "/b"], batch_wait_s=3600.0, camera_timeout_s=3600.0)
    scheduler = Scheduler(tiny_model, small_engine(1), node, lambda described: None, ["/a", "/b"])
    feed_camera(scheduler, "/b", [10.0])
    feed_camera(scheduler, "/a", [10 + k / 4 for k in range(4 + 1)])
    ran = []
    job = scheduler.when_idle(lambda: ran.append("summary"))
    scheduler.start()
    assert scheduler.stop(timeout=60)
    assert ran == [] and not job.done() and len(scheduler.cameras["/a"].queue) == 1


def test_a_30_hz_and_a_1_hz_camera_take_turns_one_window_per_sensor_second(tiny_model):
    """max_batch=1, both cameras backlogged: the 30-Hz camera's many frames win it nothing."""
    published = []
    scheduler = Scheduler(tiny_model, small_engine(1), NodeConfig(image_topics=["/a", "/b"], max_batch=1),
                          published.append, ["/a", "/b"], offline=True)
    feed_camera(scheduler, "/a", [10 + k / 30 for k in range(3 * 30 + 1)])
    feed_camera(scheduler, "/b", [500.0 + k for k in range(3 + 1)])
    scheduler.drain()
    assert [(d.camera, d.window.start_s) for d in published] == [
        ("/a", 10.0), ("/b", 500.0), ("/a", 11.0), ("/b", 501.0), ("/a", 12.0), ("/b", 502.0)]


def test_a_refused_window_costs_only_its_camera_and_a_failed_step_restarts_only_its_cameras(tiny_model,
                                                                                           monkeypatch):
    published = []
    scheduler = Scheduler(tiny_model, small_engine(1), NodeConfig(image_topics=["/a", "/b"]), published.append,
                          ["/a", "/b"], offline=True)
    session_b = scheduler.cameras["/b"].session
    check = session_b._check_window
    refusals = iter([ValueError("a refused window")])

    def refuse_once(*args, **kwargs):
        error = next(refusals, None)
        if error is not None:
            raise error
        return check(*args, **kwargs)

    session_b._check_window = refuse_once
    for camera in ("/a", "/b"):
        feed_camera(scheduler, camera, [10 + k / 4 for k in range(2 * 4 + 1)])
    scheduler.drain()
    assert [(d.camera, d.result.index) for d in published] == [("/a", 0), ("/a", 1), ("/b", 0)]
    assert scheduler.cameras["/b"].stats.failed_windows == 1 and scheduler.cameras["/a"].stats.failed_windows == 0
    assert "a refused window" in scheduler.last_error

    prefill = session_b._prefill_window
    failures = iter([RuntimeError("out of memory in /b's prefill")])

    def fail_once(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return prefill(*args, **kwargs)

    session_b._prefill_window = fail_once
    for camera in ("/a", "/b"):
        feed_camera(scheduler, camera, [12 + k / 4 for k in range(1, 5)])
    scheduler.drain()
    assert published[-1].camera == "/a" and published[-1].result.index == 2  # /a went on in the same step
    assert session_b.window_count == 0 and scheduler.cameras["/b"].stats.failed_windows == 2  # /b alone restarted
    assert "out of memory" in scheduler.last_error
    session_b._prefill_window = prefill

    decode = scheduler.batch._decode
    monkeypatch.setattr(scheduler.batch, "_decode", lambda logits: (_ for _ in ()).throw(RuntimeError("decode broke")))
    feed_camera(scheduler, "/a", [13 + k / 4 for k in range(1, 5)])
    scheduler.drain()
    assert scheduler.batches.failed_steps == 1 and scheduler.cameras["/a"].session.window_count == 0  # restarted
    assert session_b.window_count == 0 and scheduler.cameras["/b"].stats.failed_windows == 2  # not in that step
    monkeypatch.setattr(scheduler.batch, "_decode", decode)
    feed_camera(scheduler, "/a", [14 + k / 4 for k in range(1, 5)])
    scheduler.drain()
    assert published[-1].camera == "/a" and published[-1].result.index == 0  # a fresh stream goes on
