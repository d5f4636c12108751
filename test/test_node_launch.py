"""The launch file's arguments: one topic as a plain string, or a YAML list."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "svlm.launch.py"


def load_launch_module():
    """The launch file as a module; without launch/launch_ros installed, minimal stand-ins let it import."""
    stubs = {}
    try:
        import launch_ros.actions  # noqa: F401
    except ImportError:
        for name in ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions",
                     "ament_index_python", "ament_index_python.packages"):
            if name not in sys.modules or name.startswith("launch"):
                stubs[name] = types.ModuleType(name)
        for module, attrs in {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument",
                              "OpaqueFunction"], "launch.substitutions": ["LaunchConfiguration"],
                              "launch_ros.actions": ["LifecycleNode"],
                              "ament_index_python.packages": ["get_package_share_directory"]}.items():
            if module in stubs:
                for attr in attrs:
                    setattr(stubs[module], attr, lambda *a, **k: (a, k))
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("svlm_launch", LAUNCH_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


@pytest.mark.parametrize("text,topics", [
    ("/camera/color/image_raw", ["/camera/color/image_raw"]),
    ("['/a/image_raw', '/b/image_raw/compressed']", ["/a/image_raw", "/b/image_raw/compressed"]),
    ("[/a/image_raw]", ["/a/image_raw"]),
    (" /cam/image_raw ", ["/cam/image_raw"]),
])
def test_image_topics_accepts_one_topic_or_a_list(text, topics):
    assert load_launch_module().parse_topics(text) == topics


@pytest.mark.parametrize("text", ["", "[]", "['']", "[1, 2]"])
def test_bad_image_topics_are_refused_with_the_reason(text):
    with pytest.raises(ValueError, match="image_topics"):
        load_launch_module().parse_topics(text)


def test_use_sim_time_argument():
    module = load_launch_module()
    assert module.parse_bool("True") is True and module.parse_bool("false") is False
    with pytest.raises(ValueError, match="use_sim_time"):
        module.parse_bool("maybe")


def test_the_launch_description_builds_the_node_from_the_arguments():
    launch_ros = pytest.importorskip("launch_ros.actions")
    from launch import LaunchContext
    from launch.actions import OpaqueFunction

    module = load_launch_module()
    description = module.generate_launch_description()
    context = LaunchContext()
    for action in description.entities:
        if not isinstance(action, OpaqueFunction):
            action.visit(context)
    context.launch_configurations.update({"image_topics": "/cam/image_raw", "params_file": "p.yaml"})
    node = module._node(context)[0]
    assert isinstance(node, launch_ros.LifecycleNode)
