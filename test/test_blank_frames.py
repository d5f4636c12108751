"""The video-blind baseline (`blank_frames`): every frame reaches the model blanked, the rest of the
sample unchanged, and the option is type-checked like every other field. No model is loaded."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from training.config import load_train_config  # noqa: E402
from training.samples import Built  # noqa: E402
from training.train import _BuiltSamples  # noqa: E402


class _Builder:
    """Stands in for SequenceBuilder: a sample's frames become its pixel values as they are."""

    def build(self, meta, second_frames):
        pixels = np.concatenate([np.stack(frames).reshape(len(frames), -1) for frames in second_frames])
        return Built(tokens=np.arange(5), positions=np.zeros((3, 5), np.int64), labels=np.arange(5),
                     pixel_values=pixels.astype(np.float32), grid_thw=np.ones((len(second_frames), 3), np.int64),
                     video_slots=np.arange(2), table=None)


def _dataset():
    frames = np.random.default_rng(0).integers(0, 256, (2, 2, 4, 4, 3), dtype=np.uint8)  # seconds, frames, H, W, 3
    sample = SimpleNamespace(meta={"seconds": [0, 1]}, second_frames=lambda i: list(frames[i]))
    return [sample]


def test_blank_frames_feeds_equal_pixel_values_and_keeps_the_sequence():
    seen = _BuiltSamples(_dataset(), _Builder(), [0])[0]
    blind = _BuiltSamples(_dataset(), _Builder(), [0], blank=True)[0]
    assert np.unique(seen.pixel_values).size > 1
    assert blind.pixel_values.shape == seen.pixel_values.shape
    assert np.unique(blind.pixel_values).size == 1  # every pixel value equal: nothing to see
    for name in ("tokens", "positions", "labels", "grid_thw", "video_slots"):
        np.testing.assert_array_equal(getattr(blind, name), getattr(seen, name))


def test_blank_frames_is_off_by_default_and_type_checked(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: datasets/robot\n")
    assert load_train_config(path).blank_frames is False
    assert load_train_config(path, {"blank_frames": True}).blank_frames is True
    with pytest.raises(ValueError, match="blank_frames"):
        load_train_config(path, {"blank_frames": "often"})


def test_the_narrator_config_keeps_the_random_tower_and_sees_the_frames():
    import argparse

    from training.build_dataset import dataset_config

    path = str(ROOT / "training" / "configs" / "narrator_cpu.yaml")
    config = load_train_config(path)
    # The naming probe: the random tower's features already separate the colours; its updates wiped them.
    assert config.model.model == "narrator-random" and config.freeze_vision and not config.blank_frames
    assert config.min_learning_rate_ratio == 1.0  # constant after warmup: the plateau is left late
    dataset = dataset_config(path, argparse.Namespace())
    assert dataset.window_seconds == 4 and dataset.keep_silent_windows
