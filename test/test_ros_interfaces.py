"""The package's own interfaces over real rclpy, and the package itself building with colcon."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from svlm_ros.msg import Description
from svlm_ros.srv import Ask

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ros_context():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def spin_until(executor, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return condition()


def test_description_round_trip(ros_context):
    node = Node("interfaces_test", context=ros_context)
    received = []
    node.create_subscription(Description, "/svlm/description", received.append, 10)
    publisher = node.create_publisher(Description, "/svlm/description", 10)
    executor = MultiThreadedExecutor(context=ros_context)
    executor.add_node(node)
    sent = Description(camera="/camera/image_raw", text="a person opens the door", silent=False, index=42,
                       latency=0.25, generated_tokens=7, cache_tokens=12345,
                       window_start=Time(sec=100, nanosec=0), window_end=Time(sec=101, nanosec=0))
    sent.header.stamp = Time(sec=101, nanosec=0)
    sent.header.frame_id = "camera_optical_frame"
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
    publisher.publish(sent)
    assert spin_until(executor, lambda: received)
    assert received[0] == sent
    executor.shutdown()
    node.destroy_node()


def test_ask_service_round_trip(ros_context):
    server = Node("ask_server", context=ros_context)
    client_node = Node("ask_client", context=ros_context)

    def answer(request, response):
        response.success = True
        response.answer = f"you asked {request.question!r} about {request.camera}"
        response.stamp = Time(sec=7, nanosec=500)
        return response

    server.create_service(Ask, "/svlm/ask", answer)
    client = client_node.create_client(Ask, "/svlm/ask")
    executor = MultiThreadedExecutor(context=ros_context)
    executor.add_node(server)
    executor.add_node(client_node)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Ask.Request(question="what is red?", camera="/cam"))
    assert spin_until(executor, future.done)
    result = future.result()
    assert result.success and result.answer == "you asked 'what is red?' about /cam"
    assert result.stamp == Time(sec=7, nanosec=500)
    executor.shutdown()


def test_package_xml_is_valid():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "svlm_ros" and package.package_format == 3
    assert "rosidl_interface_packages" in [group.name for group in package.member_of_groups]


def test_colcon_build_from_a_clean_tree(tmp_path):
    venv = Path(sys.prefix)
    completed = subprocess.run([str(ROOT / "scripts" / "colcon_build.sh"), str(venv), str(tmp_path / "ws")],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    site = next((tmp_path / "ws" / "install" / "svlm_ros" / "lib").glob("python3*/site-packages/svlm_ros"))
    assert (site / "msg" / "_description.py").exists() and (site / "srv" / "_ask.py").exists()
    assert (site / "engine" / "session.py").exists()  # the Python package is installed beside them
    share = tmp_path / "ws" / "install" / "svlm_ros" / "share" / "svlm_ros"
    assert (share / "launch" / "svlm.launch.py").exists() and (share / "config" / "svlm.yaml").exists()
    assert (tmp_path / "ws" / "install" / "svlm_ros" / "lib" / "svlm_ros" / "svlm_node").exists()
