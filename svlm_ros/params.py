"""Settings from command lines and files: `--set NAME=VALUE`, and the node's parameter file for tools.

`--set` is parsed here for every command that takes it (`svlm replay`, `build-dataset`, `label`:
node parameters; `svlm train`: training config keys), values read as YAML (`12`, `true`, `[a, b]`).

`config/svlm.yaml` is a ROS 2 parameters file (`NODE: ros__parameters: ...`, nested sections);
a tool reads it, applies `--set` overrides, and builds the same configuration objects the node
builds from its ROS parameters, refused with the same messages when a value is bad.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

from .config import EngineConfig, ModelConfig, NodeConfig


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
    # The parameter table (names, defaults, checks) sits beside its ROS descriptors in
    # node/parameters.py, which imports rcl_interfaces: loaded only when a tool builds node
    # configs, so that `svlm train`, which only parses `--set`, needs no ROS messages.
    from .node.parameters import build_configs, defaults

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
