"""Replaying rosbags through the node's own code path, and judging what comes out.

This subpackage owns everything between a recorded bag and a verdict on the node: which bags and
which part of them (`bags.py`; opening and reading them is svlm_ros/sources, shared with
training), synthetic bags with known text (`synth.py`) and perturbed copies of a bag
(`perturb.py`: red and blue swapped, frames delayed), the replay itself (`run.py`, which
drives the node's ROS-free scheduler and the engine, never a copy of them), what a replay
writes (`outputs.py`: descriptions.jsonl, WebVTT, an output bag; `report.py`: metrics, plots,
the HTML report), and quality against a reference (`quality.py`, `compare.py`, `judge.py`,
`evaluate.py`; the timed text itself is svlm_ros/sources/timed_text.py) and against a synthetic
scene's truth (`grounded.py`).
"""
