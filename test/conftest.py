import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DDS discovery stays on this machine, in a domain of its own for this test run.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 50))


@pytest.fixture(scope="session")
def tiny_model():
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.models import load_model

    return load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32"))


def random_frames(rng, height=56, width=56, count=2):
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
