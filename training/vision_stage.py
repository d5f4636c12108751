"""The synthetic narrator's vision stage: its vision tower trained on the scenes' truth, before the
decoder learns to narrate.

A random tower, frozen, hands the decoder colour and, with `PatchStem`, motion; but its shape
features come with the colour they were seen in, so a decoder trained on some colour-shape pairs
names a held-out pair (a red triangle, when red came only as circles and squares) as a trained one
(training/README.md, "Does it see?"). This stage trains the tower, patch embedding included, with
small linear heads on its output tokens (pooled per second) to read what the scene's truth says of
the one shape in view: its shape, its motion (still, right, left), its colour as RGB and where it
is. Most shapes are drawn in random hues far from the four colours the sentences name
(`random_hue_share`, `min_hue_distance`): a triangle is then a triangle in any colour. The rest
are the trained pairs in their named colours. The held-out pairs (`--holdout`, as narrator.sh's)
appear in none of its scenes; they only score the shape head afterwards, as a diagnostic.

The heads are then dropped and the model is written as a directory that `svlm train` starts from
(`model.model: DIR`) and the engine loads; its decoder is the random one it was given. Settings:
the `vision_stage:` section of the narrator's training config (training/config.py,
VisionStageConfig); the frames' size from the node's parameter file, as the dataset's.

    .venv/bin/python -m training.vision_stage --config training/configs/narrator_cpu.yaml \\
        --params config/narrator.yaml --holdout red:triangle,green:circle,blue:square --out runs/narrator/vision
"""
from __future__ import annotations

import argparse
import colorsys
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from svlm_ros.config import ModelConfig
from svlm_ros.engine.frames import VisionInput, preprocess_frames
from svlm_ros.engine.models import LoadedModel, load_model
from svlm_ros.engine.session import vision_features
from svlm_ros.params import load_node_configs, parse_assignments
from svlm_ros.progress import progress
from svlm_ros.replay import grounded
from svlm_ros.replay.synth import COLORS, Pair, Scene, allowed_pairs, parse_pairs
from training import command
from training.config import VisionStageConfig, as_dict, from_dict
from training.naming_probe import direction_class, second_frames
from training.train import write_processor_files

log = logging.getLogger(__name__)
RGB = Tuple[int, int, int]


def random_hue(rng: np.random.Generator, min_distance: float) -> RGB:
    """A saturated, bright colour farther than `min_distance` (RGB) from every named colour."""
    named = np.array(list(COLORS.values()), float)
    while True:
        hsv = rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.55, 1.0)
        rgb = np.round(np.array(colorsys.hsv_to_rgb(*hsv)) * 255)  # the distance of the colour drawn
        if np.linalg.norm(named - rgb, axis=1).min() > min_distance:
            return tuple(int(v) for v in rgb)


def truth_seconds(loaded: LoadedModel, config: VisionStageConfig, seeds: Sequence[int],
                  pairs: Optional[Sequence[Pair]], pixels: int, hue_share: float, rng: np.random.Generator,
                  label: str) -> Tuple[List[VisionInput], np.ndarray]:
    """The seconds of one-shape scenes with a shape in view, through the engine's frame path, and
    their truth, a row each: shape, direction (0 still, 1 right, 2 left), R, G, B (0-1), x (0-1);
    a `hue_share` of them with the shape in a random unnamed hue."""
    inputs: List[VisionInput] = []
    truth: List[Tuple[float, ...]] = []
    for seed in progress(seeds, desc=label, unit="scene"):
        scene = Scene(config.scene_seconds, seed, pairs=pairs, max_objects=1, shape_size=config.shape_size)
        for second, shapes in enumerate(scene.keyframes):
            if not shapes:
                continue
            shape = shapes[0]
            rgb = COLORS[shape.color]
            if rng.random() < hue_share:
                rgb = random_hue(rng, config.min_hue_distance)
            frames = second_frames(scene, second, palette={shape.color: rgb})
            inputs.append(preprocess_frames(frames, pixels, pixels, loaded.normalization))
            truth.append((grounded.SHAPES.index(shape.kind), direction_class(shape), *(np.array(rgb) / 255.0),
                          shape.x))
    return inputs, np.array(truth, np.float32)


class TruthHeads(torch.nn.Module):
    """Linear reads of a second's truth from its vision tokens, pooled (mean and max over tokens)."""

    def __init__(self, width: int):
        super().__init__()
        self.shape = torch.nn.Linear(2 * width, len(grounded.SHAPES))
        self.direction = torch.nn.Linear(2 * width, 3)
        self.colour = torch.nn.Linear(2 * width, 3)
        self.x = torch.nn.Linear(2 * width, 1)

    @staticmethod
    def pool(features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.cat([f.mean(0), f.amax(0)]) for f in features])

    def losses(self, pooled: torch.Tensor, truth: torch.Tensor) -> Dict[str, torch.Tensor]:
        cross_entropy, mse = torch.nn.functional.cross_entropy, torch.nn.functional.mse_loss
        # The regressions' squared errors (0-1 units) are scaled to weigh about as much as a class's loss.
        return {"shape": cross_entropy(self.shape(pooled), truth[:, 0].long()),
                "direction": cross_entropy(self.direction(pooled), truth[:, 1].long()),
                "colour": 10 * mse(self.colour(pooled), truth[:, 2:5]),
                "x": 10 * mse(self.x(pooled)[:, 0], truth[:, 5])}


def head_accuracy(loaded: LoadedModel, heads: TruthHeads, inputs: Sequence[VisionInput], truth: np.ndarray
                  ) -> Tuple[float, float]:
    """(shape, direction) accuracy of the heads on `inputs`."""
    right = np.zeros(2)
    with torch.no_grad():
        for start in range(0, len(inputs), 256):
            pooled = heads.pool(vision_features(loaded, inputs[start:start + 256]))
            labels = truth[start:start + 256]
            right += [(heads.shape(pooled).argmax(1).numpy() == labels[:, 0]).sum(),
                      (heads.direction(pooled).argmax(1).numpy() == labels[:, 1]).sum()]
    return tuple(float(v) for v in right / max(len(inputs), 1))


def train_stage(config: VisionStageConfig, loaded: LoadedModel, pixels: int, held_out: Sequence[Pair]
                ) -> Dict[str, object]:
    """Trains `loaded`'s vision tower in place; returns what it measured."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    trained = allowed_pairs(exclude=held_out) if held_out else None
    inputs, truth = truth_seconds(loaded, config, range(config.scenes), trained, pixels, config.random_hue_share,
                                  rng, "vision stage: scenes")
    visual = loaded.model.model.visual
    heads = TruthHeads(loaded.text_config.hidden_size)
    parameters = list(visual.parameters()) + list(heads.parameters())
    for parameter in visual.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    visual.train()
    recent: Dict[str, List[float]] = {}
    for _ in progress(range(config.steps), desc="vision stage: steps", unit="step"):
        batch = rng.integers(len(inputs), size=config.batch_size)
        losses = heads.losses(heads.pool(vision_features(loaded, [inputs[i] for i in batch])),
                              torch.from_numpy(truth[batch]))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        for name, value in losses.items():
            recent[name] = (recent.get(name, []) + [value.item()])[-50:]
    visual.eval()
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
    report: Dict[str, object] = {"samples": len(inputs),
                                 "final_losses": {k: round(float(np.mean(v)), 4) for k, v in recent.items()}}
    # The heads on new seeds: of the trained pairs in their named colours, and of the held-out pairs.
    for name, pairs in (("seen", trained), ("novel", held_out or None)):
        if pairs is None:
            continue
        test_inputs, test_truth = truth_seconds(loaded, config, range(50_000, 50_010), pairs, pixels, 0.0, rng,
                                                f"vision stage: {name} pairs")
        shape, direction = head_accuracy(loaded, heads, test_inputs, test_truth)
        report[f"{name}_pairs"] = {"seconds": len(test_inputs), "shape": round(shape, 3),
                                   "direction": round(direction, 3)}
    return report


def export(loaded: LoadedModel, out: Path, record: Dict[str, object]) -> Path:
    """`out/model`: a Hugging Face directory `svlm train` and the engine load by path."""
    path = out / "model"
    if path.exists():
        shutil.rmtree(path)
    loaded.model.save_pretrained(str(path), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(path))
    write_processor_files(path, loaded)
    (path / "svlm_vision_stage.json").write_text(json.dumps(record, indent=2))
    return path


def load_stage_config(path: Optional[str], overrides: Sequence[str]) -> VisionStageConfig:
    values: Dict[str, object] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"config {path} does not exist; see training/configs/narrator_cpu.yaml")
        values = dict((yaml.safe_load(file.read_text()) or {}).get("vision_stage") or {})
    values.update(parse_assignments(overrides, example="steps=500"))
    return from_dict(VisionStageConfig, values, f"{path or 'vision_stage'}: vision_stage.").validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a training config with a `vision_stage:` section (its defaults: "
                                         "training/config.py, VisionStageConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override one setting")
    parser.add_argument("--params", help="the node's parameter file: the frames' size (config/narrator.yaml)")
    parser.add_argument("--holdout", default="", help="COLOUR:SHAPE pairs no scene of the stage shows")
    parser.add_argument("--out", required=True, help="the directory to write (its model/ is the result)")


def run(args: argparse.Namespace) -> int:
    config = load_stage_config(args.config, args.set)
    _, engine, _ = load_node_configs(args.params, [])
    held_out = parse_pairs(args.holdout, "--holdout") if args.holdout else ()
    pixels = engine.frames.max_pixels
    if engine.frames.min_pixels != pixels:
        log.warning("the frames' min_pixels (%d) and max_pixels (%d) differ; the stage uses max_pixels",
                    engine.frames.min_pixels, pixels)
    loaded = load_model(ModelConfig(model=config.model, device="cpu", dtype="float32", seed=config.seed))
    report = train_stage(config, loaded, pixels, held_out)
    record = {"vision_stage": as_dict(config), "pixels": pixels,
              "held_out_pairs": [f"{c}:{k}" for c, k in held_out], **report}
    path = export(loaded, Path(args.out), record)
    print(json.dumps(record, indent=2))
    log.info("wrote %s", path)
    return 0


def main(argv=None) -> int:
    return command.main("training.vision_stage", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
