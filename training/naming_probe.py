"""A probe for the narrator's first obstacle: can a recipe teach a random model to *name* what it sees?

Each sample is one second of a synthetic scene in which one shape appears ("A red circle appears on
the left."), built by the training pipeline's own SequenceBuilder and scored through WindowLoss, so
a recipe that fails here fails in `training/narrator.sh` too, in minutes instead of half an hour.
Every `--eval-every` steps it prints, on fresh held-out samples:

- colour / shape: the model's argmax among the scene's colours (shapes) at the word's position,
  teacher-forced, against a constant answer's score (the held-out majority's share, printed first);
- hidden probe: a least-squares read of the colour from the final hidden state at that position
  (fit on two thirds of the held-out samples, scored on the rest): whether the colour is still
  *in* the model, whether or not its head reads it out.

With `--holdout COLOUR:SHAPE,...` those pairs never reach training, and each score is given twice:
`seen` (new seeds of the trained pairs) and `novel` (the held-out pairs): does it name a shape in a
colour it never saw that shape in? At the last step it also scores the shape with the sentence's colour
word replaced by each other colour: whether the colour word, not the frames, decides the shape.
`--steps 0 --model DIR` scores a trained narrator as it is.

    .venv/bin/python -m training.naming_probe --batch 16 --learning-rate 5e-4 --steps 300
    .venv/bin/python -m training.naming_probe --pixels 18816 --shape-size 56 --samples 600 --steps 500 \
        --holdout red:triangle,green:circle,blue:square     # the narrator's frames and held-out pairs
    .venv/bin/python -m training.naming_probe --model runs/narrator/train_grounded/model --steps 0 \
        --shape-size 56 --holdout red:triangle,green:circle,blue:square   # the trained narrator

training/README.md ("Does it see?") records what it measured.
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from svlm_ros.config import ModelConfig
from svlm_ros.engine.models import load_model
from svlm_ros.replay import grounded
from svlm_ros.replay.synth import Pair, Scene, allowed_pairs, parse_pairs
from training.samples import IGNORE, Built, SequenceBuilder
from training.train import WindowLoss, to_inputs

CAMERA_HEIGHT, CAMERA_WIDTH = 112, 168  # the narrator's synthetic camera (narrator.sh)


def second_frames(scene: Scene, second: int, palette=None) -> List[np.ndarray]:
    """The camera's two frames of a second at the engine's 2 fps (its start and its middle)."""
    return [scene.frame(second + f, CAMERA_HEIGHT, CAMERA_WIDTH, palette) for f in (0.0, 0.5)]


def direction_class(shape) -> int:
    """0 still, 1 moving right, 2 moving left."""
    return 0 if shape.speed == 0 else (1 if shape.speed > 0 else 2)


def appearing_second(seed: int, shape_size: int, pairs: Optional[Sequence[Pair]] = None) -> Scene:
    """The first scene from `seed` on whose first second one shape (of `pairs`, None: any) appears."""
    for candidate in range(seed * 1000, seed * 1000 + 1000):
        scene = Scene(2, candidate, pairs=pairs, max_objects=1, shape_size=shape_size)
        if scene.events[0] is not None:
            return scene
    raise RuntimeError(f"no scene from seed {seed} starts with an event")


def build_samples(builder: SequenceBuilder, seeds: range, shape_size: int,
                  pairs: Optional[Sequence[Pair]] = None) -> List[Tuple[Built, object]]:
    samples = []
    for seed in seeds:
        scene = appearing_second(seed, shape_size, pairs)
        frames = second_frames(scene, 0)
        meta = {"previous_ids": [], "stream_start": True,
                "seconds": [{"start_s": 0.0, "end_s": 1.0, "text": scene.texts[0]}]}
        samples.append((builder.build(meta, [frames]), scene.events[0]))
    return samples


class Probe:
    def __init__(self, args: argparse.Namespace):
        torch.manual_seed(args.seed)
        self.loaded = load_model(ModelConfig(model=args.model, device="cpu", dtype="float32", seed=args.seed))
        tokenizer = self.loaded.tokenizer
        engine = {"frames": {"min_pixels": args.pixels, "max_pixels": args.pixels, "fps": 2.0},
                  "prompt": {"system": "You are a helpful assistant.",
                             "instruction": "Describe what the camera shows, second by second."},
                  "silence_marker": " ..."}
        self.builder = SequenceBuilder(tokenizer, engine, self.loaded.time_step(2.0), self.loaded.normalization)
        self.colour_ids = [tokenizer.encode(" " + c)[0] for c in grounded.COLORS]
        self.shape_ids = [tokenizer.encode(" " + s)[0] for s in grounded.SHAPES]
        held_out = parse_pairs(args.holdout, "--holdout") if args.holdout else None
        seen = allowed_pairs(exclude=held_out) if held_out else None
        self.train = build_samples(self.builder, range(args.samples), args.shape_size, seen)
        test_seeds = range(100_000, 100_000 + args.test_samples)
        # Held-out samples of the training pairs (new seeds); with --holdout also of pairs never trained on.
        self.tests = {"seen": build_samples(self.builder, test_seeds, args.shape_size, seen)}
        if held_out:
            self.tests["novel"] = build_samples(self.builder, test_seeds, args.shape_size, held_out)
        model = self.loaded.model
        model.train()
        self.loss = WindowLoss(model, train_vision=args.vision_lr_scale > 0)
        vision = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
        text = [p for n, p in model.named_parameters() if ".visual." not in f".{n}"]
        groups = [{"params": text, "lr": args.learning_rate}]
        if args.vision_lr_scale > 0:
            groups.append({"params": vision, "lr": args.learning_rate * args.vision_lr_scale})
        else:
            for p in vision:
                p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.args = args

    def word_positions(self, built: Built) -> Tuple[int, int]:
        """Where the colour and the shape word are targets."""
        labelled = np.flatnonzero(built.labels != IGNORE)
        colour = next(i for i in labelled if built.labels[i] in self.colour_ids)
        shape = next(i for i in labelled if built.labels[i] in self.shape_ids)
        return int(colour), int(shape)

    def step(self, rng: np.random.Generator) -> float:
        self.optimizer.zero_grad()
        # `batch` samples in one forward, their labels' mean loss: as training.train takes a step
        windows = [to_inputs(self.train[i][0], torch.device("cpu"))
                   for i in rng.integers(len(self.train), size=self.args.batch)]
        loss = self.loss(windows) / sum(len(w["targets"]) for w in windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.loaded.model.parameters(), 1.0)
        self.optimizer.step()
        return loss.item()

    def predictions(self, inputs, tokens: torch.Tensor, at: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The final hidden states of `tokens` (with the sample's frames), and the logits at `at`."""
        states = self.loss.hidden_states(tokens, inputs["positions"], inputs["pixel_values"], inputs["grid_thw"],
                                         inputs["video_slots"])
        return states, self.loaded.model.get_output_embeddings()(states[at])

    @torch.no_grad()
    def evaluate(self, samples) -> Tuple[float, float, float]:
        model = self.loaded.model
        model.eval()
        colour_right = shape_right = 0
        hidden, colours = [], []
        for built, event in samples:
            inputs = to_inputs(built, torch.device("cpu"))
            colour_at, shape_at = self.word_positions(built)
            states, logits = self.predictions(inputs, inputs["tokens"], [colour_at - 1, shape_at - 1])
            colour_right += self.colour_ids[int(logits[0, self.colour_ids].argmax())] == built.tokens[colour_at]
            shape_right += self.shape_ids[int(logits[1, self.shape_ids].argmax())] == built.tokens[shape_at]
            hidden.append(states[colour_at - 1].numpy())
            colours.append(grounded.COLORS.index(event.color))
        model.train()
        count = len(samples)
        return colour_right / count, shape_right / count, hidden_probe(np.stack(hidden), np.array(colours))

    @torch.no_grad()
    def shape_after_other_colour_words(self, samples) -> float:
        """Shape right, teacher-forced, with the sentence's colour word replaced by each other colour:
        beside `evaluate`'s shape, whether the colour *word* before it, not the frames, decides the shape
        (a decoder that learned colour-shape pairs as wholes names a held-out pair's shape only here)."""
        model = self.loaded.model
        model.eval()
        right = []
        for built, _ in samples:
            inputs = to_inputs(built, torch.device("cpu"))
            colour_at, shape_at = self.word_positions(built)
            for colour_id in self.colour_ids:
                if colour_id == built.tokens[colour_at]:
                    continue
                tokens = inputs["tokens"].clone()
                tokens[colour_at] = colour_id
                _, logits = self.predictions(inputs, tokens, [shape_at - 1])
                right.append(self.shape_ids[int(logits[0, self.shape_ids].argmax())] == built.tokens[shape_at])
        model.train()
        return float(np.mean(right))


def hidden_probe(states: np.ndarray, classes: np.ndarray) -> float:
    """Held-out accuracy of a ridge least-squares read of `classes` from `states`."""
    split = 2 * len(states) // 3
    design = np.c_[states, np.ones(len(states))]
    targets = np.eye(classes.max() + 1)[classes]
    gram = design[:split].T @ design[:split] + 1e-4 * np.eye(design.shape[1])
    weights = np.linalg.solve(gram, design[:split].T @ targets[:split])
    return float(((design[split:] @ weights).argmax(1) == classes[split:]).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="narrator-random")
    parser.add_argument("--samples", type=int, default=300, help="training samples (one second each)")
    parser.add_argument("--test-samples", type=int, default=60)
    parser.add_argument("--steps", type=int, default=300, help="0: score --model as it is (a trained narrator)")
    parser.add_argument("--batch", type=int, default=16, help="samples averaged into one optimizer step")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--vision-lr-scale", type=float, default=0.0,
                        help="the vision tower's rate as a multiple of --learning-rate (0: frozen)")
    parser.add_argument("--pixels", type=int, default=4704, help="frame pixels after resizing (4704: 56x84)")
    parser.add_argument("--shape-size", type=int, default=28, help="shape size in the 112x168 camera frame")
    parser.add_argument("--holdout", default="",
                        help="COLOUR:SHAPE pairs kept out of training and scored apart (e.g. red:triangle,green:circle)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    probe = Probe(args)
    for name, samples in probe.tests.items():
        colours = [event.color for _, event in samples]
        shapes = [event.shape for _, event in samples]
        print(f"{name}: constant answer (the held-out majority): colour "
              f"{max(map(colours.count, colours)) / len(colours):.2f}  "
              f"shape {max(map(shapes.count, shapes)) / len(shapes):.2f}", flush=True)
    rng = np.random.default_rng(args.seed)
    start, recent = time.monotonic(), []
    for step in range(0 if args.steps == 0 else 1, args.steps + 1):  # --steps 0: the model as it is
        if step:
            recent = (recent + [probe.step(rng)])[-args.eval_every:]
        if step % args.eval_every == 0 or step == args.steps:
            scores = []
            for name, samples in probe.tests.items():
                colour, shape, hidden = probe.evaluate(samples)
                scores.append(f"{name}: colour {colour:.2f} shape {shape:.2f} hidden {hidden:.2f}")
                if step == args.steps:
                    other = probe.shape_after_other_colour_words(samples)
                    scores[-1] += f" shape-after-another-colour-word {other:.2f}"
            loss = f"{np.mean(recent):.3f}" if recent else "-"
            print(f"step {step:5d}  loss {loss}  {'  '.join(scores)}  "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
