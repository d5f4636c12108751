"""Configuration objects, one per component, with every default in this file.

config/svlm.yaml and the node's ROS parameters mirror these fields; `None` means unlimited
wherever a limit is described as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_INSTRUCTION = "Describe what the camera shows, second by second."
# auto: cuda_graph on CUDA with sdpa/eager attention, dynamic otherwise (engine/decoding.py explains each)
DECODE_MODES = ("auto", "dynamic", "static", "cuda_graph")


@dataclass
class CachePolicy:
    """StreamingVLM's KV-cache policy (defaults from the reference)."""

    vision_windows: Optional[int] = 16  # keep the vision tokens of the last N windows
    text_windows: Optional[int] = 16  # keep the assistant text of the last N windows in place
    sink_tokens: Optional[int] = 512  # previous-text block: first N content tokens kept
    recent_tokens: Optional[int] = 512  # previous-text block: last N content tokens kept

    def validate(self) -> None:
        for name in ("vision_windows", "text_windows", "sink_tokens", "recent_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"CachePolicy.{name} must be a non-negative int or None (unlimited), got {value!r}")

    @classmethod
    def unlimited(cls) -> "CachePolicy":
        return cls(vision_windows=None, text_windows=None, sink_tokens=None, recent_tokens=None)


@dataclass
class FrameConfig:
    """How camera frames become vision tokens."""

    fps: float = 2.0  # frames sampled per second of video
    window_seconds: float = 1.0  # one step of the stream
    min_pixels: int = 78_400  # per frame, after resizing
    max_pixels: int = 602_112  # per frame (768 * 28 * 28)

    def validate(self) -> None:
        if self.fps <= 0 or self.window_seconds <= 0:
            raise ValueError(f"fps and window_seconds must be positive, got {self.fps}, {self.window_seconds}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")

    @property
    def frames_per_window(self) -> int:
        """Frames per window, rounded up to the temporal patch (2 frames form one grid step)."""
        count = max(1, round(self.fps * self.window_seconds))
        return count + (count % 2)


@dataclass
class GenerationConfig:
    """Decoding per window and per question."""

    max_new_tokens: int = 20
    answer_max_new_tokens: int = 128  # for ask()
    do_sample: bool = True
    temperature: float = 0.9
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: float = 1.05
    seed: Optional[int] = None
    # The model's last word for "nothing new this window"; it follows a space (`marker_text`).
    # Written without that space: ROS parameter files and `ros2 param set` strip a leading one.
    silence_marker: str = "..."
    ignore_end_of_turn: bool = False  # benchmarks force exactly max_new_tokens
    decode_mode: str = "auto"  # one of DECODE_MODES

    @property
    def marker_text(self) -> str:
        """The silence marker as the model writes it after its words: ` ...` (empty: none)."""
        marker = self.silence_marker.strip()
        return f" {marker}" if marker else ""

    def validate(self) -> None:
        if self.decode_mode not in DECODE_MODES:
            raise ValueError(f"decode_mode must be one of {', '.join(DECODE_MODES)}, got {self.decode_mode!r}")
        if self.max_new_tokens < 1 or self.answer_max_new_tokens < 1:
            raise ValueError("max_new_tokens and answer_max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


@dataclass
class PromptConfig:
    system: str = DEFAULT_SYSTEM_PROMPT
    context: str = ""  # initial text of the `previous text` block
    instruction: str = DEFAULT_INSTRUCTION  # standing query, in the first user turn
    max_question_tokens: int = 512  # a longer ~/ask question is refused with the reason

    def validate(self) -> None:
        if self.max_question_tokens < 1:
            raise ValueError(f"prompt.max_question_tokens must be >= 1, got {self.max_question_tokens}")


@dataclass
class ModelConfig:
    """Which model, where it runs."""

    model: str = "tiny-random"  # local HF directory, hub id (cached), tiny-random or small-random
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    attn_implementation: str = "auto"  # auto (flash_attention_2 if importable on CUDA, else sdpa), sdpa, eager
    random_config: Optional[str] = None  # JSON config for random weights at real dimensions
    seed: int = 0  # for random-weight models

    def validate(self) -> "ModelConfig":
        """The spelling of each setting (whether a CUDA device is there is checked when the model loads)."""
        # Devices the engine is tested on; `auto` picks cuda when there is one.
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N (N: the GPU's index)")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, float32, bfloat16, float16")
        if self.attn_implementation not in ("auto", "sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"attn_implementation {self.attn_implementation!r} is not one of auto, sdpa, eager, "
                             "flash_attention_2")
        return self


@dataclass
class EngineConfig:
    """Everything a streaming session needs."""

    cache: CachePolicy = field(default_factory=CachePolicy)
    frames: FrameConfig = field(default_factory=FrameConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def validate(self) -> "EngineConfig":
        self.cache.validate()
        self.frames.validate()
        self.generation.validate()
        self.prompt.validate()
        return self


POSE_TYPES = ("odometry", "pose_stamped", "pose_with_covariance_stamped")


@dataclass
class MemoryConfig:
    """Long-term memory: the store of every described window, recall, summaries (svlm_ros/memory/)."""

    enabled: bool = True  # the node stores every described window
    path: str = ""  # SQLite file; empty: per node, $ROS_HOME/svlm/<namespace>/<name>/memory.sqlite (one writer a file)
    retention_days: float = 14.0  # entries older than this are deleted
    max_bytes: int = 8 * 2**30  # and the oldest are deleted while the file and its WAL are larger (kept as writes go)
    queue_size: int = 1000  # pending writes; when full, new entries are dropped and counted
    merge_gap_s: float = 1.5  # a window this close after the last one with the same text extends it
    # Where the robot was: a pose topic matched to each window by time, or tf (when tf2_ros imports).
    pose_topic: str = ""  # empty: no pose topic
    pose_type: str = "odometry"  # one of POSE_TYPES: nav_msgs Odometry, geometry_msgs PoseStamped / ...WithCovariance...
    map_frame: str = "map"  # tf: the frame poses are given in
    base_frame: str = ""  # tf: the robot's frame; empty: no tf lookup (use pose_topic)
    pose_tolerance_s: float = 1.0  # a pose further than this from a window's end is not used
    # ~/ask with memory: retrieved entries and summaries go into the question turn as timed text.
    ask_entries: int = 8  # entries retrieved per question (0: questions see only the live stream)
    ask_context_tokens: int = 768  # token budget of that timed text
    # Summaries in tiers, written by the model itself when the cameras leave it idle.
    summary_minutes: float = 10.0  # a summary of each camera's last N minutes (0: no summaries)
    summary_input_tokens: int = 1024  # at most this much text goes into one summary
    summary_max_tokens: int = 96  # the summary's length
    # No ": " in the default: rclpy reads a parameter file's or `ros2 param set`'s string as YAML.
    summary_instruction: str = ("Summarize the notes above in two or three sentences (what was seen, "
                                "where and when), and keep the times.")
    resume_context: bool = False  # at configure, seed each camera's previous text from its latest summaries

    def validate(self) -> None:
        if self.retention_days <= 0 or self.max_bytes <= 0 or self.queue_size < 1 or self.merge_gap_s < 0:
            raise ValueError("memory: retention_days and max_bytes must be > 0, queue_size >= 1, merge_gap_s >= 0; "
                             f"got {self.retention_days}, {self.max_bytes}, {self.queue_size}, {self.merge_gap_s}")
        if self.pose_type not in POSE_TYPES:
            raise ValueError(f"memory.pose_type must be one of {', '.join(POSE_TYPES)}, got {self.pose_type!r}")
        if self.pose_tolerance_s <= 0:
            raise ValueError(f"memory.pose_tolerance_s must be > 0, got {self.pose_tolerance_s}")
        if self.ask_entries < 0 or self.ask_context_tokens < 1:
            raise ValueError("memory.ask_entries must be >= 0 and memory.ask_context_tokens >= 1, got "
                             f"{self.ask_entries}, {self.ask_context_tokens}")
        if self.summary_minutes < 0 or self.summary_input_tokens < 1 or self.summary_max_tokens < 1:
            raise ValueError("memory.summary_minutes must be >= 0 (0: off), summary_input_tokens and "
                             f"summary_max_tokens >= 1; got {self.summary_minutes}, {self.summary_input_tokens}, "
                             f"{self.summary_max_tokens}")


@dataclass
class NodeConfig:
    """The ROS node's own settings (the engine's come from EngineConfig)."""

    image_topics: list = field(default_factory=lambda: ["/camera/image_raw"])
    reliable_qos: bool = False  # default: sensor-data QoS (best effort), which hears both kinds of publisher
    qos_depth: int = 5  # image subscription history depth
    publish_silent: bool = True  # publish silent windows with silent=true
    publish_text: bool = True  # also publish the text alone on ~/text
    autostart: bool = True  # configure and activate on start, without a lifecycle manager
    warm_up: bool = True  # at configure, describe one blank window per camera and forget it
    max_queued_windows: int = 1  # per camera; when inference falls behind, older windows are skipped
    camera_timeout_s: float = 5.0  # WARN when a camera sends nothing for this long
    restart_after_s: float = 2.0  # a jump in sensor time larger than this (back or forward) is a jump ...
    jump_confirm_s: float = 1.0  # ... believed once the new timeline goes on this long (back: a fresh stream)
    ask_timeout_s: float = 30.0  # ~/ask gives up after this long
    diagnostics_period_s: float = 1.0
    # Cameras are described in batches (one model step for several cameras' windows): a batch waits
    # at most this long after its oldest window became ready for the other live cameras' windows ...
    batch_wait_s: float = 0.05
    max_batch: int = 8  # ... and holds at most this many cameras (1: one camera per step, round-robin)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
