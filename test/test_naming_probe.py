"""The naming probe (training/naming_probe.py) measures what it says: its targets are the scene's words,
its hidden-state read finds a class that is there and not one that is not."""
import argparse

import numpy as np

from training.naming_probe import Probe, hidden_probe


def test_the_hidden_probe_reads_a_class_that_is_linearly_there_and_not_noise():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 90)
    coded = rng.normal(size=(90, 16)) * 0.1
    coded[np.arange(90), classes] += 1.0
    assert hidden_probe(coded, classes) == 1.0
    assert hidden_probe(rng.normal(size=(90, 16)), classes) < 0.6


def test_the_probe_scores_the_colour_and_shape_words_of_each_scene_and_trains():
    args = argparse.Namespace(model="tiny-random", samples=3, test_samples=6, batch=2, learning_rate=1e-3,
                              vision_lr_scale=1.0, pixels=4704, shape_size=28, seed=0,
                              holdout="red:triangle,green:circle")
    probe = Probe(args)
    tokenizer = probe.loaded.tokenizer
    held_out = {("red", "triangle"), ("green", "circle")}
    assert set(probe.tests) == {"seen", "novel"}
    for name, samples in [("train", probe.train), *probe.tests.items()]:
        for built, event in samples:
            colour_at, shape_at = probe.word_positions(built)
            assert tokenizer.decode([built.tokens[colour_at]]).strip() == event.color
            assert tokenizer.decode([built.tokens[shape_at]]).strip() == event.shape
            assert ((event.color, event.shape) in held_out) == (name == "novel")
            assert len(built.video_slots) == 6  # 56x84 frames: the pixels asked for reach the model
    before = [p.detach().clone() for p in probe.loaded.model.parameters()]
    loss = probe.step(np.random.default_rng(0))
    assert np.isfinite(loss) and loss > 0
    assert any(not np.array_equal(a.numpy(), b.detach().numpy()) for a, b in zip(before, probe.loaded.model.parameters()))
    colour, shape, hidden = probe.evaluate(probe.tests["novel"])
    assert all(0.0 <= x <= 1.0 for x in (colour, shape, hidden))
    assert 0.0 <= probe.shape_after_other_colour_words(probe.tests["novel"]) <= 1.0


def test_the_feature_read_scores_balanced_accuracy_and_labels_each_second_as_the_scene_drew_it():
    """training/feature_read.py: a class that is linearly there reads at 1.0, noise near chance (balanced:
    a majority answer scores 1 / classes however lopsided the classes); every second's classes are its
    shape's colour, kind, and whether and which way it moves."""
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.models import load_model
    from svlm_ros.replay import grounded
    from svlm_ros.replay.synth import Scene
    from training.feature_read import balanced_read, scene_features

    rng = np.random.default_rng(0)
    classes = rng.permutation(np.r_[np.zeros(150, int), rng.integers(1, 3, 50)])  # three in four are class 0
    coded = rng.normal(size=(200, 8)) * 0.1
    coded[np.arange(200), classes] += 1.0
    assert balanced_read(coded[:120], classes[:120], coded[120:], classes[120:], ridge=1.0) == 1.0
    noise = rng.normal(size=(200, 8))
    assert balanced_read(noise[:120], classes[:120], noise[120:], classes[120:], ridge=1.0) < 0.6

    loaded = load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32"))
    features, labels = scene_features(loaded, [3], None, pixels=4704, seconds=12, shape_size=56, label="test")
    scene = Scene(12, 3, max_objects=1, shape_size=56)
    shapes = [s[0] for s in scene.keyframes if s]
    assert len(features) == len(labels) == len(shapes) and features.shape[1] == 6 * 64  # 6 tokens of 64
    for shape, (colour, kind, moving, direction) in zip(shapes, labels):
        assert (grounded.COLORS[colour], grounded.SHAPES[kind]) == (shape.color, shape.kind)
        assert moving == (shape.speed != 0) and direction == (0 if not shape.speed else 1 if shape.speed > 0 else 2)
