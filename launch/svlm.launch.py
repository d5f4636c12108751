"""Launch the svlm node: `ros2 launch svlm_ros svlm.launch.py [image_topics:=...] [model:=...]`."""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def parse_topics(text: str) -> list:
    """`image_topics:=/cam/image_raw` (one topic) or `image_topics:="['/a', '/b']"` (a YAML list)."""
    text = text.strip()
    value = yaml.safe_load(text) if text.startswith("[") else text
    topics = value if isinstance(value, list) else [value]
    if not topics or any(not isinstance(t, str) or not t.strip() for t in topics):
        raise ValueError(f"image_topics: expected a topic or a YAML list of topics, got {text!r}")
    return [t.strip() for t in topics]


def parse_bool(text: str) -> bool:
    if text.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if text.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"use_sim_time: expected true or false, got {text!r}")


def _node(context):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    return [LifecycleNode(
        package="svlm_ros",
        executable="svlm_node",
        name="svlm",
        namespace=value("namespace"),
        output="screen",
        parameters=[
            value("params_file"),
            {
                "image_topics": parse_topics(value("image_topics")),
                "model": value("model"),
                "device": value("device"),
                "use_sim_time": parse_bool(value("use_sim_time")),
            },
        ],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("svlm_ros"), "config", "svlm.yaml")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameters YAML"),
        DeclareLaunchArgument("image_topics", default_value="['/camera/image_raw']",
                              description="camera topics: one topic, or a YAML list; names ending in /compressed "
                                          "are CompressedImage"),
        DeclareLaunchArgument("model", default_value="tiny-random",
                              description="StreamingVLM checkpoint directory, cached hub id, or tiny-random"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
