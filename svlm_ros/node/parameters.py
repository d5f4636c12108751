"""ROS parameters mirroring the configuration dataclasses, with descriptors and validation.

Names are `field` for the node and model settings and `section.field` for the engine's
(cache., frames., generation., prompt.). ROS parameters cannot be null: for limits -1 means
unlimited, and for seed/top_k/top_p -1 means unset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from rcl_interfaces.msg import ParameterDescriptor, ParameterType

from ..config import EngineConfig, ModelConfig, NodeConfig

UNSET = -1
# Settings that take effect while the node runs; the rest apply at the next configure.
RUNTIME = {"prompt.instruction", "publish_silent", "publish_text", "camera_timeout_s", "inference_delay_s"}
OPTIONAL_INT = {"cache.vision_windows", "cache.text_windows", "cache.sink_tokens", "cache.recent_tokens",
                "generation.seed", "generation.top_k"}
OPTIONAL_FLOAT = {"generation.top_p"}
HIDDEN = {"random_config"}


def _fields(obj, prefix="") -> Dict[str, Any]:
    values = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            values.update(_fields(value, f"{prefix}{f.name}."))
        else:
            values[f"{prefix}{f.name}"] = value
    return values


def defaults() -> Dict[str, Any]:
    values = {}
    values.update(_fields(ModelConfig()))
    values.update(_fields(EngineConfig()))
    values.update(_fields(NodeConfig()))
    for name in HIDDEN:
        values.pop(name, None)
    for name in OPTIONAL_INT:
        values[name] = UNSET if values[name] is None else values[name]
    for name in OPTIONAL_FLOAT:
        values[name] = float(UNSET) if values[name] is None else values[name]
    return values


def descriptor(name: str, value: Any) -> ParameterDescriptor:
    kinds = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
             list: ParameterType.PARAMETER_STRING_ARRAY}
    text = f"svlm_ros setting {name}; see config/svlm.yaml"
    if name in OPTIONAL_INT or name in OPTIONAL_FLOAT:
        text += " (-1: unlimited/unset)"
    constraint = "changes apply at once" if name in RUNTIME else "changes apply at the next configure"
    return ParameterDescriptor(name=name, type=kinds[type(value)], description=text,
                               additional_constraints=constraint)


def build_configs(values: Dict[str, Any]) -> Tuple[ModelConfig, EngineConfig, NodeConfig]:
    """Configs from parameter values; raises ValueError naming the bad setting."""
    model, engine, node = ModelConfig(), EngineConfig(), NodeConfig()
    for name, value in values.items():
        if name in OPTIONAL_INT or name in OPTIONAL_FLOAT:
            value = None if value is not None and value < 0 else value
        if name in OPTIONAL_FLOAT and value is not None:
            value = float(value)
        target, field = _locate(name, model, engine, node)
        current = getattr(target, field)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(target, field, value)
    engine.validate()
    if not node.image_topics or any(not isinstance(t, str) or not t.strip() for t in node.image_topics):
        raise ValueError(f"image_topics must name at least one non-empty topic, got {node.image_topics}")
    if len(set(node.image_topics)) != len(node.image_topics):
        raise ValueError(f"image_topics has duplicates: {node.image_topics}")
    for name in ("camera_timeout_s", "restart_after_s", "ask_timeout_s", "diagnostics_period_s"):
        if getattr(node, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(node, name)}")
    if node.qos_depth < 1:
        raise ValueError(f"qos_depth must be >= 1, got {node.qos_depth}")
    if node.max_queued_windows < 1:
        raise ValueError(f"max_queued_windows must be >= 1, got {node.max_queued_windows}")
    if node.inference_delay_s < 0:
        raise ValueError("inference_delay_s must be >= 0")
    if model.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise ValueError(f"dtype {model.dtype!r} is not one of auto, float32, bfloat16, float16")
    if model.attn_implementation not in ("auto", "sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn_implementation {model.attn_implementation!r} is not one of auto, sdpa, eager, "
                         "flash_attention_2")
    return model, engine, node


def _locate(name: str, model, engine, node):
    if "." in name:
        section, field = name.split(".", 1)
        return getattr(engine, section), field
    for target in (node, model):
        if hasattr(target, name):
            return target, name
    raise ValueError(f"unknown parameter {name!r}")

