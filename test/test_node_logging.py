"""Engine and scheduler messages (Python `logging`) reach /rosout through the node's logger."""
import logging

from rcl_interfaces.msg import Log
from rclpy.qos import QoSDurabilityPolicy, QoSProfile

from test_node import harness, wait_for  # noqa: F401 - the fixture is used by name


def test_engine_log_records_reach_rosout(harness):  # noqa: F811
    h = harness()
    received = []
    qos = QoSProfile(depth=100, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    h.peer.create_subscription(Log, "/rosout", received.append, qos)
    wait_for(lambda: h.peer.count_publishers("/rosout") > 0)
    probe = "probe from the engine: cache compacted"

    def arrived():
        # Discovery may still be going on: repeat the record until one copy arrives.
        logging.getLogger("svlm_ros.engine.session").warning(probe)
        return any(probe in m.msg and m.name.endswith("svlm") and m.level == Log.WARN for m in received)

    wait_for(arrived, interval=0.2)


def test_a_setting_read_at_configure_says_when_it_applies(harness):  # noqa: F811
    """Issue Hardening II, item 15: unconfigured, the log said "changed: deferred, they apply now"."""
    from rclpy.parameter import Parameter

    h = harness()
    received = []
    qos = QoSProfile(depth=100, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    h.peer.create_subscription(Log, "/rosout", received.append, qos)
    wait_for(lambda: h.peer.count_publishers("/rosout") > 0)

    def logged(value, level, text):
        def arrived():
            # Discovery may still be going on: set again until one line arrives.
            assert h.node.set_parameters([Parameter("frames.fps", value=value)])[0].successful
            return any(text in m.msg and m.level == level for m in received)
        return arrived

    wait_for(logged(3.0, Log.INFO, "['frames.fps'] set: used by the next configure"), interval=0.2)
    assert not any("deferred" in m.msg for m in received)
