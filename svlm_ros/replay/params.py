"""The node's parameter file for `svlm replay`: read by svlm_ros/params.py, as for every tool.

`load_replay_configs` keeps its name here for training/label.py, the one caller left.
"""
from __future__ import annotations

from ..params import load_node_configs as load_replay_configs

__all__ = ["load_replay_configs"]
