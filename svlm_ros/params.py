"""The node's parameters, ROS-free: their table, and settings from command lines and files.

The table: every parameter's name, default, description and range, which take effect while
the node runs (RUNTIME) or only at start (AT_START), and `build_configs`, which turns values into
the configuration dataclasses or refuses a bad one with a message naming it. Names are `field`
for the node and model settings and `section.field` for the engine's (cache., frames.,
generation., prompt.) and for the node's long-term memory (memory.). ROS parameters cannot be
null: for limits -1 means unlimited, and for seed/top_k/top_p -1 means unset. The node declares
them with ROS descriptors built from this table (node/parameters.py, the rclpy side); the tools
read the same table, so a tool and the node accept and refuse the same values.

`--set` is parsed here for every command that takes it (`svlm replay`, `build-dataset`, `label`:
node parameters; `svlm train`: training config keys), values read as YAML (`12`, `true`, `[a, b]`).

`config/svlm.yaml` is a ROS 2 parameters file (`NODE: ros__parameters: ...`, nested sections);
a tool reads it, applies `--set` overrides, and builds the same configuration objects the node
builds from its ROS parameters, refused with the same messages when a value is bad.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

from .config import EngineConfig, ModelConfig, NodeConfig

# ----- the table ---------------------------------------------------------------------------------
UNSET = -1
# Settings that take effect while the node runs; the rest apply at the next configure (the node
# says so in its log when one is changed).
RUNTIME = {"prompt.instruction", "publish_silent", "publish_text", "camera_timeout_s", "batch_wait_s",
           "max_batch", "ask_timeout_s", "diagnostics_period_s", "memory.ask_entries", "memory.ask_context_tokens",
           "memory.pose_tolerance_s", "memory.summary_instruction", "memory.summary_input_tokens",
           "memory.summary_max_tokens"}
# Read once when the process starts.
AT_START = {"autostart"}
OPTIONAL_INT = {"cache.vision_windows", "cache.text_windows", "cache.sink_tokens", "cache.recent_tokens",
                "generation.seed", "generation.top_k"}
OPTIONAL_FLOAT = {"generation.top_p"}
BIG = 2**31 - 1
# name: (what it does, (min, max) or None). `ros2 param describe` shows both.
DESCRIPTIONS: Dict[str, Tuple[str, Optional[Tuple[float, float]]]] = {
    "model": ("StreamingVLM checkpoint: a local Hugging Face directory, a hub id already in the local cache, "
              "or tiny-random / small-random (random weights, meaningless words)", None),
    "device": ("where the model runs: auto, cpu, cuda, cuda:N", None),
    "dtype": ("auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16", None),
    "attn_implementation": ("auto (flash_attention_2 if installed on CUDA, else sdpa), sdpa, eager, "
                            "flash_attention_2", None),
    "seed": ("seed of the random weights of tiny-random / small-random", (0, BIG)),
    "cache.vision_windows": ("keep the vision tokens of the last N windows (-1: all)", (-1, BIG)),
    "cache.text_windows": ("keep the answers of the last N windows in their turns (-1: all)", (-1, BIG)),
    "cache.sink_tokens": ("previous-text block: first N tokens kept (-1: all)", (-1, BIG)),
    "cache.recent_tokens": ("previous-text block: last N tokens kept (-1: all)", (-1, BIG)),
    "frames.fps": ("frames sampled per second of video", (0.1, 60.0)),
    "frames.window_seconds": ("seconds of video per description", (0.1, 60.0)),
    "frames.min_pixels": ("per frame after resizing, at least", (784, 2**26)),
    "frames.max_pixels": ("per frame after resizing, at most", (784, 2**26)),
    "generation.max_new_tokens": ("most tokens per window's description", (1, 4096)),
    "generation.answer_max_new_tokens": ("most tokens per ~/ask answer", (1, 4096)),
    "generation.do_sample": ("sample (true) or greedy decoding (false)", None),
    "generation.temperature": ("sampling temperature", (0.0, 10.0)),
    "generation.top_p": ("nucleus sampling (-1: off)", (-1.0, 1.0)),
    "generation.top_k": ("top-k sampling (-1: off)", (-1, BIG)),
    "generation.repetition_penalty": ("penalty on repeated tokens (1: none)", (0.01, 10.0)),
    "generation.seed": ("sampling seed (-1: unseeded)", (-1, BIG)),
    "generation.silence_marker": ("an answer ending in this word (after a space) means nothing new: published with "
                                  "silent=true", None),
    "generation.ignore_end_of_turn": ("benchmarks: always generate max_new_tokens", None),
    "generation.decode_mode": ("auto, dynamic, static, cuda_graph (see README: How the streaming cache works)", None),
    "prompt.system": ("system prompt", None),
    "prompt.context": ("initial text of the previous-text block", None),
    "prompt.instruction": ("the standing instruction, in the stream's first turn", None),
    "prompt.max_question_tokens": ("a longer ~/ask question is refused", (1, 65536)),
    "image_topics": ("camera topics; a name ending in /compressed is sensor_msgs/CompressedImage", None),
    "reliable_qos": ("false: sensor-data QoS (best effort, hears both kinds of camera); true: reliable", None),
    "qos_depth": ("image subscription history depth", (1, 1000)),
    "publish_silent": ("publish windows with nothing new, with silent=true", None),
    "publish_text": ("also publish the words alone on ~/text", None),
    "autostart": ("configure and activate on start, without a lifecycle manager", None),
    "warm_up": ("at configure, describe one blank window per camera and forget it", None),
    "max_queued_windows": ("windows waiting per camera; when inference falls behind older ones are skipped",
                           (1, 1000)),
    "camera_timeout_s": ("diagnostics WARN when a camera sends nothing for this long", (0.01, 86400.0)),
    "restart_after_s": ("a jump in sensor time larger than this (back, or forward past the newest frame) is "
                        "only believed once it goes on for jump_confirm_s; back: a fresh stream", (0.01, 86400.0)),
    "jump_confirm_s": ("seconds a new timeline must go on before a jump is believed; a shorter one is a "
                       "glitch and its frames are dropped", (0.0, 3600.0)),
    "ask_timeout_s": ("~/ask gives up after this long", (0.01, 3600.0)),
    "diagnostics_period_s": ("seconds between /diagnostics messages (wall time)", (0.01, 3600.0)),
    "batch_wait_s": ("seconds a batch of cameras' windows waits, after its oldest became ready, for the other "
                     "live cameras' windows (one model step describes them all)", (0.0, 10.0)),
    "max_batch": ("most cameras described in one model step; 1: one camera per step (round-robin)", (1, 256)),
    "memory.enabled": ("store every described window in the long-term memory (~/recall, ~/ask about the past)",
                       None),
    "memory.path": ("the memory's SQLite file; empty: per node, $ROS_HOME/svlm/<namespace>/<name>/memory.sqlite "
                    "(one node writes a file: a second writer is refused)", None),
    "memory.retention_days": ("entries older than this are deleted", (0.001, 36500.0)),
    "memory.max_bytes": ("the oldest entries are deleted while the file and its WAL are larger (checked after "
                         "every commit)", (2**20, 2**62)),
    "memory.queue_size": ("windows waiting to be written; when full, new ones are dropped and counted", (1, 10**6)),
    "memory.merge_gap_s": ("a window this close after the last one with the same text extends it", (0.0, 3600.0)),
    "memory.pose_topic": ("the robot's pose, matched to each window by time (empty: none)", None),
    "memory.pose_type": ("the pose topic's type: odometry (nav_msgs/Odometry), pose_stamped, "
                         "pose_with_covariance_stamped (geometry_msgs)", None),
    "memory.map_frame": ("tf: the frame poses are stored in", None),
    "memory.base_frame": ("tf: the robot's frame, looked up in map_frame when tf2_ros is importable "
                          "(empty: use pose_topic)", None),
    "memory.pose_tolerance_s": ("a pose further than this in time from a window's end is not used", (0.001, 3600.0)),
    "memory.ask_entries": ("remembered entries put into each ~/ask question (0: only the live stream)", (0, 1000)),
    "memory.ask_context_tokens": ("token budget of the remembered text in a question", (1, 65536)),
    "memory.summary_minutes": ("each camera's last N minutes condensed by the model when it is idle, then per "
                               "hour and per day (0: no summaries)", (0.0, 1440.0)),
    "memory.summary_input_tokens": ("at most this much text goes into one summary", (1, 65536)),
    "memory.summary_max_tokens": ("a summary's length in tokens", (1, 4096)),
    "memory.summary_instruction": ("what the model is asked to do with the notes", None),
    "memory.resume_context": ("at configure, start each camera's previous text from its latest summaries", None),
}
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
    """Every parameter's name and default value, as the node declares them."""
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
    if node.jump_confirm_s < 0:
        raise ValueError(f"jump_confirm_s must be >= 0, got {node.jump_confirm_s}")
    if node.qos_depth < 1:
        raise ValueError(f"qos_depth must be >= 1, got {node.qos_depth}")
    if node.max_queued_windows < 1:
        raise ValueError(f"max_queued_windows must be >= 1, got {node.max_queued_windows}")
    if not 0 <= node.batch_wait_s <= 10:
        raise ValueError(f"batch_wait_s must be within 0..10 s, got {node.batch_wait_s}")
    if node.max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {node.max_batch}")
    node.memory.validate()
    model.validate()
    return model, engine, node


def _locate(name: str, model, engine, node):
    if "." in name:
        section, field = name.split(".", 1)
        owner = engine if hasattr(engine, section) else node
        if not hasattr(owner, section) or not hasattr(getattr(owner, section), field):
            raise ValueError(f"unknown parameter {name!r}")
        return getattr(owner, section), field
    for target in (node, model):
        if hasattr(target, name):
            return target, name
    raise ValueError(f"unknown parameter {name!r}")


# ----- command lines and files -------------------------------------------------------------------
def parse_assignments(items: Sequence[str], example: str = "generation.max_new_tokens=12",
                      empty: Any = "") -> Dict[str, Any]:
    """{name: value} of `--set NAME=VALUE` items. An empty VALUE is `empty`: the empty string
    for node parameters (ROS parameters have no null), None (YAML's null) for training configs."""
    values = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects NAME=VALUE (e.g. {example}), got {item!r}")
        values[name.strip()] = yaml.safe_load(text) if text.strip() else empty
    return values


def flatten(section: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    values = {}
    for key, value in section.items():
        if isinstance(value, dict):
            values.update(flatten(value, f"{prefix}{key}."))
        else:
            values[f"{prefix}{key}"] = value
    return values


def read_parameters_file(path: Path) -> Dict[str, Any]:
    """Dotted parameter names and values from a ROS 2 parameters YAML file."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--params {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ValueError(f"--params {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"--params {path}: expected `NODE_NAME: ros__parameters: ...` at the top")
    sections = [v["ros__parameters"] for v in document.values()
                if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)]
    if not sections:
        raise ValueError(f"--params {path} has no `ros__parameters` section under a node name (e.g. `/**:`)")
    values: Dict[str, Any] = {}
    for section in sections:  # later entries win, as when ROS applies several
        values.update(flatten(section))
    return values


def load_node_configs(params: Optional[str], overrides: Sequence[str], model: Optional[str] = None,
                      device: Optional[str] = None, seed: Optional[int] = None
                      ) -> Tuple[ModelConfig, EngineConfig, NodeConfig]:
    """The node's configs from its parameter file (`--params`), `--set` and the usual flags."""
    values = defaults()
    if params:
        from_file = read_parameters_file(Path(params))
        unknown = sorted(set(from_file) - set(values))
        if unknown:
            raise ValueError(f"--params {params}: unknown parameter(s) {unknown}")
        values.update(from_file)
    extra = parse_assignments(overrides)
    unknown = sorted(set(extra) - set(values))
    if unknown:
        raise ValueError(f"--set: unknown parameter(s) {unknown}; see config/svlm.yaml for the names")
    values.update(extra)
    if model is not None:
        values["model"] = model
    if device is not None:
        values["device"] = device
    if seed is not None:
        values["generation.seed"] = seed
    return build_configs(values)
