"""The narrator's vision stage (training/vision_stage.py): its scenes hold no held-out pair and draw the
unnamed hues they say, it trains the tower and nothing else, and what it writes is a model the engine
and `svlm train` load."""
from pathlib import Path

import numpy as np
import pytest
import torch

from svlm_ros.config import ModelConfig
from svlm_ros.engine.models import load_model
from svlm_ros.replay.synth import COLORS, Scene, allowed_pairs, background, parse_pairs
from training.config import VisionStageConfig, load_train_config
from training.vision_stage import export, load_stage_config, main, random_hue, train_stage, truth_seconds

ROOT = Path(__file__).resolve().parents[1]
NARRATOR_CONFIG = str(ROOT / "training" / "configs" / "narrator_cpu.yaml")
HELD_OUT = parse_pairs("red:triangle,green:circle,blue:square")


def test_a_palette_redraws_the_shapes_pixels_and_nothing_else():
    scene = Scene(6, 4, max_objects=1, shape_size=56)
    second = next(s for s, shapes in enumerate(scene.keyframes) if shapes)
    colour = scene.keyframes[second][0].color
    named = scene.frame(second, 112, 168)
    recoloured = scene.frame(second, 112, 168, palette={colour: (10, 200, 190)})
    shape = (named != background(112, 168)).any(-1)
    assert shape.sum() > 500  # a 56-px shape
    assert (named[shape] == COLORS[colour]).all() and (recoloured[shape] == (10, 200, 190)).all()
    assert (recoloured[~shape] == named[~shape]).all()


def test_random_hues_are_bright_and_far_from_every_named_colour():
    rng = np.random.default_rng(0)
    hues = np.array([random_hue(rng, 90.0) for _ in range(300)], float)
    named = np.array(list(COLORS.values()), float)
    distances = np.linalg.norm(hues[:, None] - named[None], axis=2)
    assert distances.min() > 90
    assert hues.max(1).min() >= 0.55 * 255 - 1  # never near the dark background
    assert len({tuple(h) for h in hues}) > 250


def test_the_stage_trains_the_tower_alone_on_scenes_without_the_held_out_pairs_and_writes_a_loadable_model(
        tmp_path):
    config = VisionStageConfig(model="tiny-random", scenes=2, scene_seconds=10, steps=3, batch_size=4,
                               random_hue_share=0.5)
    loaded = load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32"))
    trained = allowed_pairs(exclude=HELD_OUT)

    inputs, truth = truth_seconds(loaded, config, range(6), trained, 4704, 0.5, np.random.default_rng(0), "test")
    named = {tuple(rgb): name for name, rgb in COLORS.items()}
    hued = 0
    for (kind, direction, *rgb, x) in truth:
        rgb = tuple(int(v) for v in np.round(np.array(rgb) * 255))
        name = named.get(rgb)
        if name is None:  # an unnamed hue: far from every named colour
            hued += 1
            assert min(np.linalg.norm(np.subtract(rgb, c)) for c in COLORS.values()) > 90
        else:
            assert (name, ("circle", "square", "triangle")[int(kind)]) not in HELD_OUT
        assert direction in (0, 1, 2) and 0 <= x <= 1
    assert len(inputs) == len(truth) and 0 < hued < len(truth)
    assert all(v.token_count == 6 for v in inputs)  # the narrator's 56x84 frames

    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    report = train_stage(config, loaded, 4704, HELD_OUT)
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".visual." in f".{n}" for n in changed)
    assert "model.visual.patch_embed.proj.weight" in changed
    assert set(report) >= {"samples", "final_losses", "seen_pairs", "novel_pairs"}
    assert 0 <= report["novel_pairs"]["shape"] <= 1

    path = export(loaded, tmp_path, {"steps": config.steps})
    assert (path / "svlm_vision_stage.json").exists()
    again = load_model(ModelConfig(model=str(path), device="cpu", dtype="float32"))
    for name, parameter in again.model.named_parameters():
        assert torch.equal(parameter, dict(loaded.model.named_parameters())[name]), name


def test_the_narrators_config_holds_the_stage_and_a_wrong_type_is_named(capsys, tmp_path):
    config = load_stage_config(NARRATOR_CONFIG, [])
    assert config.model == "narrator-random" and config.random_hue_share == 0.8
    load_train_config(NARRATOR_CONFIG)  # the trainer reads the same file, its vision_stage section aside
    assert load_stage_config(NARRATOR_CONFIG, ["learning_rate=1e-4"]).learning_rate == 1e-4
    with pytest.raises(ValueError, match=r"vision_stage\.steps: expected an integer, got 'ten'"):
        load_stage_config(NARRATOR_CONFIG, ["steps=ten"])
    with pytest.raises(ValueError, match="random_hue_share"):
        load_stage_config(None, ["random_hue_share=1.5"])
    assert main(["--config", NARRATOR_CONFIG, "--set", "steps=ten", "--out", str(tmp_path)]) == 2
    assert "vision_stage.steps: expected an integer, got 'ten'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before a model is loaded or anything is written
