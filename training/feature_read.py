"""What the frozen vision tower hands the narrator's decoder: linear reads of its features.

For every second of one-shape synthetic scenes it takes the tower's features (the engine's frame
path, the narrator's 56x84 frames: 6 tokens a second) and fits a ridge read, on scenes of the
trained colour-shape pairs, of four things about the shape in view: its colour, its shape,
whether it moves in that second, and which way. Each read is scored, as balanced accuracy (the
mean of the per-class recalls; a constant answer scores 1 / classes), on new seeds of the trained
pairs (`seen`) and on scenes of the held-out pairs (`novel`): is a shape in a colour it was never
read in still read as that shape?

    .venv/bin/python -m training.feature_read                                  # narrator-random
    .venv/bin/python -m training.feature_read --model narrator-random-plain    # without its stem

training/README.md ("Does it see?") records what it measured. About a minute on one core.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from svlm_ros.config import ModelConfig
from svlm_ros.engine.frames import preprocess_frames
from svlm_ros.engine.models import LoadedModel, load_model
from svlm_ros.engine.session import vision_features
from svlm_ros.progress import progress
from svlm_ros.replay import grounded
from svlm_ros.replay.synth import Pair, Scene, allowed_pairs, parse_pairs
from training.naming_probe import direction_class, second_frames
READS = ("colour", "shape", "moving", "direction")


def scene_features(loaded: LoadedModel, seeds: Sequence[int], pairs: Optional[Sequence[Pair]], pixels: int,
                   seconds: int, shape_size: int, label: str) -> Tuple[np.ndarray, np.ndarray]:
    """(features, classes): one row per second with a shape in view, its tokens' features flattened;
    classes per READS (colour, shape, moving 0/1, direction still/right/left)."""
    rows: List[np.ndarray] = []
    classes: List[Tuple[int, int, int, int]] = []
    for seed in progress(seeds, desc=label, unit="scene"):
        scene = Scene(seconds, seed, pairs=pairs, max_objects=1, shape_size=shape_size)
        inputs = [preprocess_frames(second_frames(scene, s),
                                    pixels, pixels, loaded.normalization) for s in range(seconds)]
        with torch.no_grad():
            features = vision_features(loaded, inputs)
        for second, shapes in enumerate(scene.keyframes):
            if not shapes:
                continue
            shape = shapes[0]
            rows.append(features[second].float().numpy().ravel())
            classes.append((grounded.COLORS.index(shape.color), grounded.SHAPES.index(shape.kind),
                            int(shape.speed != 0), direction_class(shape)))
    return np.stack(rows), np.array(classes)


def balanced_read(train: np.ndarray, train_classes: np.ndarray, test: np.ndarray, test_classes: np.ndarray,
                  ridge: float) -> float:
    """Balanced accuracy on `test` of a ridge least-squares read fit on `train` (standardized features)."""
    mean, scale = train.mean(0), train.std(0) + 1e-6

    def design(x: np.ndarray) -> np.ndarray:
        return np.c_[(x - mean) / scale, np.ones(len(x))]

    a, b = design(train), design(test)
    targets = np.eye(train_classes.max() + 1)[train_classes]
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
    predicted = (b @ weights).argmax(1)
    return float(np.mean([np.mean(predicted[test_classes == c] == c) for c in np.unique(test_classes)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="narrator-random", help="a random preset or a trained narrator")
    parser.add_argument("--holdout", default="red:triangle,green:circle,blue:square",
                        help="COLOUR:SHAPE pairs kept out of the read's fit and scored apart (narrator.sh's)")
    parser.add_argument("--scenes", type=int, default=40, help="scenes the read is fit on (40 s each)")
    parser.add_argument("--test-scenes", type=int, default=15, help="scenes of each test set")
    parser.add_argument("--pixels", type=int, default=4704, help="frame pixels after resizing (4704: 56x84)")
    parser.add_argument("--shape-size", type=int, default=56, help="shape size in the 112x168 camera frame")
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    loaded = load_model(ModelConfig(model=args.model, device="cpu", dtype="float32", seed=args.seed))
    held_out = parse_pairs(args.holdout, "--holdout")
    seen = allowed_pairs(exclude=held_out)
    common = dict(pixels=args.pixels, seconds=40, shape_size=args.shape_size)
    fit = scene_features(loaded, range(args.scenes), seen, label="fit", **common)
    tests: Dict[str, Tuple[np.ndarray, np.ndarray]] = {
        "seen": scene_features(loaded, range(500, 500 + args.test_scenes), seen, label="seen", **common),
        "novel": scene_features(loaded, range(900, 900 + args.test_scenes), held_out, label="novel", **common)}
    print(f"{args.model}: a ridge read of the frozen tower's features, fit on {len(fit[0])} seconds of the trained "
          f"pairs; balanced accuracy (chance: 1 / classes)")
    print(f"| read | classes | seen ({len(tests['seen'][0])} s) | novel ({len(tests['novel'][0])} s) |")
    print("|---|---|---|---|")
    for k, read in enumerate(READS):
        scores = [balanced_read(fit[0], fit[1][:, k], x, y[:, k], args.ridge) for x, y in tests.values()]
        print(f"| {read} | {fit[1][:, k].max() + 1} | {scores[0]:.2f} | {scores[1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
