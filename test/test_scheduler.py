"""The inference worker (issue 10): one worker per session, publication errors survived, a dead
worker restarted. Driven by events the test controls, never by timing."""
import threading

import numpy as np
import pytest

from svlm_ros.config import EngineConfig, NodeConfig
from svlm_ros.node.scheduler import Scheduler
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


def feed_windows(scheduler, count, start=100.0):
    """Frames at 4 Hz for `count` whole windows plus the frame that closes the last one."""
    stream = scheduler.cameras[CAMERA]
    for k in range(count * 4 + 1):
        stream.add_frame(start + k / 4, moving_shapes(k / 4, 48, 64))
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
    original = Scheduler._next_window

    def dies_once(self):
        if not died.is_set():
            died.set()
            raise MemoryError("simulated: the worker thread dies outside a window")
        return original(self)

    monkeypatch.setattr(Scheduler, "_next_window", dies_once)
    scheduler.start()
    wait(died, "the worker to die")
    scheduler._thread.join(timeout=120)
    assert not scheduler.worker_alive() and "MemoryError" in scheduler.last_error
    assert scheduler.ensure_worker() is True and scheduler.worker_restarts == 1
    feed_windows(scheduler, 1)
    wait(described, "a window after the restart")
    assert scheduler.ensure_worker() is False  # alive: nothing to do
