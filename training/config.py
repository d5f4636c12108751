"""Every default of the dataset builder and the trainer, and reading them from YAML.

training/configs/*.yaml mirror these dataclasses (a key a dataclass does not have is refused by
name). The engine's own settings (frames, prompt, cache policy numbers) are not repeated here:
the builder takes them from svlm_ros.config, through the node's parameter file when given, so
a dataset is cut exactly as the robot will see its video.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from svlm_ros.config import ModelConfig


@dataclass
class DatasetConfig:
    """How sources become samples (svlm build-dataset)."""

    window_seconds: int = 24  # seconds per sample (one user + assistant turn each)
    stride_seconds: int = 12  # between sample starts: consecutive samples overlap by the difference
    min_window_seconds: int = 4  # a shorter tail of a stream makes no sample
    keep_silent_windows: bool = False  # a window in which nobody says anything teaches only " ..."
    max_missing_fraction: float = 0.25  # a window missing more of its seconds' frames is skipped
    samples_per_shard: int = 64  # fixed: a reader finds sample i in shard i // samples_per_shard
    compress: bool = True  # zlib inside the .npz (lossless; frames are the bulk of the bytes)

    def validate(self) -> "DatasetConfig":
        if not 1 <= self.stride_seconds <= self.window_seconds:
            raise ValueError(f"need 1 <= stride_seconds <= window_seconds, got {self.stride_seconds}, "
                             f"{self.window_seconds}")
        if not 1 <= self.min_window_seconds <= self.window_seconds:
            raise ValueError(f"need 1 <= min_window_seconds <= window_seconds, got {self.min_window_seconds}")
        if not 0 <= self.max_missing_fraction < 1:
            raise ValueError(f"max_missing_fraction must be in [0, 1), got {self.max_missing_fraction}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        return self


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the language model; merged into the weights on export."""

    enabled: bool = False
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    # The attention and MLP projections of the language model only: the vision tower stays frozen.
    target_modules: List[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainConfig:
    """One training run (svlm train --config FILE)."""

    data: str = ""  # a dataset directory written by svlm build-dataset
    output_dir: str = "runs/train"
    # fp32 master weights by default (bf16 compute comes from mixed_precision): AdamW updates
    # at lr 1e-5 vanish when added to bf16 weights. LoRA configs load the frozen base in bf16.
    model: ModelConfig = field(default_factory=lambda: ModelConfig(device="auto", dtype="float32"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_vision: bool = True  # the reference freezes the vision tower and trains the LLM
    # A baseline, not a recipe: every frame reaches the model blanked (all pixel values equal), so
    # what it learns comes from the text alone (the video-blind run of training/narrator.sh).
    blank_frames: bool = False
    train_embeddings: bool = True  # the LLM's token embeddings (tied to the head in small models)
    # Optimisation (the reference recipe: lr 1e-5, cosine, 3% warmup, 1 epoch, 512 samples a step)
    learning_rate: float = 1e-5
    min_learning_rate_ratio: float = 0.0  # cosine ends at learning_rate * this
    # The vision tower's rate is learning_rate * this (when it trains): a random tower trained at the
    # LLM's rate stays a while where the text alone explains the loss (training/README.md).
    vision_learning_rate_scale: float = 1.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    per_device_batch_size: int = 1  # samples per forward; they are not padded together
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, none on CPU), bf16, fp16, no
    # Held-out data: whole sources (bags) go to eval, so overlapping windows never leak across.
    eval_fraction: float = 0.1
    eval_sources: List[str] = field(default_factory=list)  # or name them (bag names, or globs of them)
    eval_every: int = 50  # optimizer steps; 0: only at the end
    max_eval_samples: int = 200
    save_every: int = 20  # optimizer steps (the reference saves every 20)
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    num_workers: int = 2  # data-loader processes reading shards
    export: bool = True  # write output_dir/model, a Hugging Face directory the engine loads

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise ValueError("the training config needs `data:` (a directory written by svlm build-dataset)")
        if self.learning_rate <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"need learning_rate > 0 and 0 <= warmup_ratio < 1, got {self.learning_rate}, "
                             f"{self.warmup_ratio}")
        if self.vision_learning_rate_scale <= 0:
            raise ValueError(f"vision_learning_rate_scale must be > 0, got {self.vision_learning_rate_scale}")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("per_device_batch_size and gradient_accumulation_steps must be >= 1")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ValueError(f"mixed_precision must be auto, bf16, fp16 or no, got {self.mixed_precision!r}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null: epochs decide), got {self.max_steps}")
        return self


@dataclass
class VisionStageConfig:
    """The synthetic narrator's vision stage (training/vision_stage.py): its vision tower trained on
    the scenes' truth before the decoder learns to narrate; the `vision_stage:` section of a config."""

    model: str = "narrator-random"  # the random model whose tower it trains (its decoder is left as it is)
    scenes: int = 200  # one-shape synthetic scenes it draws its seconds from
    scene_seconds: int = 40
    shape_size: int = 56  # in the camera's 112x168 frame, as narrator.sh's bags
    # Most shapes in a random hue no sentence names (farther than min_hue_distance in RGB from every
    # named colour): a triangle is then a triangle in any colour, not the colours it comes in.
    random_hue_share: float = 0.8
    min_hue_distance: float = 90.0
    steps: int = 1000
    batch_size: int = 64  # seconds a step
    learning_rate: float = 1.0e-3
    seed: int = 0

    def validate(self) -> "VisionStageConfig":
        if min(self.scenes, self.scene_seconds, self.steps, self.batch_size, self.shape_size) < 1:
            raise ValueError("vision_stage: scenes, scene_seconds, steps, batch_size and shape_size must be >= 1")
        if not 0 <= self.random_hue_share <= 1:
            raise ValueError(f"vision_stage.random_hue_share must be in [0, 1], got {self.random_hue_share}")
        if self.learning_rate <= 0 or self.min_hue_distance < 0:
            raise ValueError("vision_stage: learning_rate must be > 0 and min_hue_distance >= 0")
        return self


@dataclass
class LabelConfig:
    """The teacher of `svlm label` (training/label.py): what it is asked about each second, and how.

    Every second is asked on its own (see training/label.py for why the previous second's answer
    is not part of the prompt); the teacher sees the end of the second before as a picture instead.
    In the texts, {start} and {end} are the second's times (stream seconds), {count} its number of
    frames, and {marker} the engine's silence marker without its leading space ("...")."""

    system: str = (
        "You write the training captions of a live video narrator for a robot's camera. You are shown one "
        "second of video at a time, as a few frames in order, and you answer for that second alone.")
    context_text: str = "For comparison, the end of the second before:"  # before the previous second's frames
    frames_text: str = "Second {start}-{end} s of the video, {count} frames in order:"
    instruction: str = (
        "In one short sentence (at most 12 words), say what is new in this second: something appears, "
        "leaves, starts or stops moving, turns, or an action starts or ends. Do not describe what is the "
        "same as in the second before. If nothing changes, answer exactly {marker}")
    previous_frames: int = 1  # last frames of the second before, shown first (0: none)
    max_tokens: int = 48
    temperature: float = 0.0  # the same question gets the same answer, so caching it is sound
    concurrency: int = 8  # requests in flight
    retries: int = 4  # after the first attempt: 429, 408, 5xx, time-outs, connection failures
    backoff_s: float = 1.0  # the first retry waits this long (plus up to 25% jitter), doubling each time
    max_backoff_s: float = 60.0  # no wait is longer, a server's Retry-After included
    timeout_s: float = 120.0  # per request
    jpeg_quality: int = 90  # frames go as base64 JPEG data URLs
    cache: str = ""  # answer cache file; empty: beside the output (BAG.labels.cache.jsonl)

    def validate(self) -> "LabelConfig":
        if self.concurrency < 1 or self.retries < 0 or self.previous_frames < 0:
            raise ValueError(f"need concurrency >= 1, retries >= 0 and previous_frames >= 0, got "
                             f"{self.concurrency}, {self.retries}, {self.previous_frames}")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"need timeout_s > 0, backoff_s >= 0 and max_backoff_s >= 0, got {self.timeout_s}, "
                             f"{self.backoff_s}, {self.max_backoff_s}")
        if self.max_tokens < 1 or self.temperature < 0:
            raise ValueError(f"need max_tokens >= 1 and temperature >= 0, got {self.max_tokens}, {self.temperature}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        return self


# Keys that are no longer the training config's, and where their setting lives now.
MOVED = {key: ("the previous-text cut is the engine's own (cache.sink_tokens, cache.recent_tokens), read from the "
               "robot's parameter file: set them there (--params config/svlm.yaml) or with --set cache.sink_tokens=N")
         for key in ("previous_sink_tokens", "previous_recent_tokens")}


def from_dict(cls, values: Dict[str, Any], where: str = ""):
    """A dataclass from nested dicts, every value checked against its field's type; an unknown key
    is refused with the known ones. Unset fields keep the defaults of `cls()`, nested ones too
    (TrainConfig's fp32 `model.dtype` survives a `model:` section that names only the model)."""
    return _from_dict(cls(), values, where)


def _from_dict(defaults, values: Dict[str, Any], where: str):
    cls = type(defaults)
    if values is None:
        return defaults
    if not isinstance(values, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    moved = [key for key in unknown if key in MOVED]
    if moved:
        raise ValueError(f"{where or cls.__name__}: {', '.join(moved)}: {MOVED[moved[0]]}")
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                fields = [f.name for f in dataclasses.fields(current)]
                raise ValueError(f"{where}{name}: expected a mapping with keys {fields}, got {_show(value)}; "
                                 f"set one field as {name}.{fields[0]}=VALUE")
            kwargs[name] = _from_dict(current, value, f"{where}{name}.")
        else:
            kwargs[name] = checked(value, hints[name], f"{where}{name}")
    return dataclasses.replace(defaults, **kwargs)


# YAML 1.1 (PyYAML) reads 1e-5 as a string: it needs a dot (1.0e-5) to be a float.
_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _show(value) -> str:
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return f"{yaml.safe_dump(value, default_flow_style=True).splitlines()[0]} ({type(value).__name__})"


def checked(value, hint, key: str):
    """`value` as the type `hint` declares (int -> float, "1e-5" -> 1e-05), or a ValueError naming
    the key, the value and the type expected."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        optional = " or null"
    else:
        optional = ""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list):
            return [checked(v, item, f"{key}[{k}]") for k, v in enumerate(value)]
        raise ValueError(f"{key}: expected a list of {_EXPECTED[item].removeprefix('a ')}s, got {_show(value)}")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            return float(value)
    if hint is str and isinstance(value, str):
        return value
    note = ""
    if hint is str and isinstance(value, bool):
        note = '; YAML reads an unquoted yes/no/on/off as true/false: quote it ("no")'
    raise ValueError(f"{key}: expected {_EXPECTED[hint]}{optional}, got {_show(value)}{note}")


def load_train_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """A TrainConfig from YAML; `dataset:` holds the DatasetConfig the builder used and `vision_stage:`
    the narrator's vision stage (both ignored here)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"training config {path} does not exist; see training/configs/ for examples")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"training config {path} is not valid YAML: {error}") from None
    values.pop("dataset", None)
    values.pop("vision_stage", None)
    for name, value in (overrides or {}).items():
        target = values
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return from_dict(TrainConfig, values, f"training config {path}: ").validate()


def as_dict(config) -> Dict[str, Any]:
    return dataclasses.asdict(config)
