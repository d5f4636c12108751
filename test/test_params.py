"""svlm_ros/params.py: the node's parameter table without ROS, the same table the node declares."""
import subprocess
import sys
from pathlib import Path

import pytest

from svlm_ros import params

ROOT = Path(__file__).resolve().parents[1]


def test_the_parameter_table_and_the_tools_configs_need_no_ros():
    """A tool (replay, build-dataset, label, train) builds the node's configs without rclpy or ROS messages."""
    script = """
import sys
from svlm_ros import params
params.defaults()
model, engine, node = params.load_node_configs("config/svlm.yaml", ["frames.fps=1.5"])
assert engine.frames.fps == 1.5, engine.frames.fps
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "rcl_interfaces", "builtin_interfaces")
             or m.startswith(("svlm_ros.node", "svlm_ros.replay")))
assert not bad, f"the parameter table imported {bad}"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_every_parameter_has_a_description_and_its_range_holds_its_default():
    values = params.defaults()
    assert set(params.DESCRIPTIONS) == set(values)
    assert not set(values) & params.HIDDEN
    assert (params.RUNTIME | params.AT_START | params.OPTIONAL_INT | params.OPTIONAL_FLOAT) <= set(values)
    for name, (text, bounds) in params.DESCRIPTIONS.items():
        assert text.strip(), name
        if bounds is not None:
            assert bounds[0] <= values[name] <= bounds[1], (name, values[name], bounds)


def test_unset_optional_values_are_minus_one_as_parameters_and_none_in_the_configs():
    values = params.defaults()
    assert values["generation.seed"] == params.UNSET and values["generation.top_p"] == float(params.UNSET)
    _, engine, _ = params.build_configs({**values, "generation.seed": 7})
    assert engine.generation.seed == 7 and engine.generation.top_p is None


@pytest.mark.parametrize("name, value, message", [
    ("frames.nonsense", 1, "unknown parameter 'frames.nonsense'"),
    ("max_batch", 0, "max_batch must be >= 1"),
    ("image_topics", [], "image_topics must name at least one"),
])
def test_bad_values_are_refused_naming_the_setting(name, value, message):
    with pytest.raises(ValueError, match=message):
        params.build_configs({**params.defaults(), name: value})


def test_the_node_describes_its_parameters_from_the_same_table():
    pytest.importorskip("rcl_interfaces")
    from svlm_ros.node.parameters import descriptor

    fps = descriptor("frames.fps", params.defaults()["frames.fps"])
    assert fps.description == params.DESCRIPTIONS["frames.fps"][0]
    assert (fps.floating_point_range[0].from_value, fps.floating_point_range[0].to_value) == \
        params.DESCRIPTIONS["frames.fps"][1]
    assert descriptor("publish_text", True).additional_constraints == "changes apply at once"
    assert descriptor("autostart", True).additional_constraints == "read when the node starts"
