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
