"""Launch the svlm node: `ros2 launch svlm_ros svlm.launch.py [image_topics:=...] [model:=...]`."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("svlm_ros"), "config", "svlm.yaml")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameters YAML"),
        DeclareLaunchArgument("image_topics", default_value="['/camera/image_raw']",
                              description="camera topics, a YAML list; names ending in /compressed are "
                                          "CompressedImage"),
        DeclareLaunchArgument("model", default_value="tiny-random",
                              description="StreamingVLM checkpoint directory, cached hub id, or tiny-random"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    node = LifecycleNode(
        package="svlm_ros",
        executable="svlm_node",
        name="svlm",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "image_topics": PythonExpression(LaunchConfiguration("image_topics")),
                "model": LaunchConfiguration("model"),
                "device": LaunchConfiguration("device"),
                "use_sim_time": PythonExpression(["'", LaunchConfiguration("use_sim_time"), "'.lower() == 'true'"]),
            },
        ],
    )
    return LaunchDescription(arguments + [node])
