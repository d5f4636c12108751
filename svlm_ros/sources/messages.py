"""Message types for reading and writing bags with `rosbags`, without a ROS install.

`svlm_ros/msg/Description` comes from this package's own msg/Description.msg; the Foxglove
annotation types (so Foxglove draws a second's text over its camera image) are the public
foxglove_msgs schema, written out here because no PyPI package ships their ROS 2 .msg text.
Writers embed these definitions in the bag, so readers need neither this package nor ROS.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.msg import get_types_from_msg

DESCRIPTION = "svlm_ros/msg/Description"
IMAGE_ANNOTATIONS = "foxglove_msgs/msg/ImageAnnotations"
TEXT_ANNOTATION = "foxglove_msgs/msg/TextAnnotation"

# foxglove_msgs 3.4.3 (foxglove-sdk ros/src/foxglove_msgs/ros2/; unchanged since 3.2.5, which
# added the timestamp and metadata fields), fields only. Foxglove decodes by the embedded text.
FOXGLOVE_MSGS = {
    "foxglove_msgs/msg/Color": "float64 r\nfloat64 g\nfloat64 b\nfloat64 a\n",
    "foxglove_msgs/msg/Point2": "float64 x\nfloat64 y\n",
    "foxglove_msgs/msg/KeyValuePair": "string key\nstring value\n",
    "foxglove_msgs/msg/CircleAnnotation": (
        "builtin_interfaces/Time timestamp\nfoxglove_msgs/Point2 position\nfloat64 diameter\n"
        "float64 thickness\nfoxglove_msgs/Color fill_color\nfoxglove_msgs/Color outline_color\n"
        "foxglove_msgs/KeyValuePair[] metadata\n"),
    "foxglove_msgs/msg/PointsAnnotation": (
        "builtin_interfaces/Time timestamp\n"
        "uint8 UNKNOWN=0\nuint8 POINTS=1\nuint8 LINE_LOOP=2\nuint8 LINE_STRIP=3\nuint8 LINE_LIST=4\n"
        "uint8 type\nfoxglove_msgs/Point2[] points\n"
        "foxglove_msgs/Color outline_color\nfoxglove_msgs/Color[] outline_colors\n"
        "foxglove_msgs/Color fill_color\nfloat64 thickness\nfoxglove_msgs/KeyValuePair[] metadata\n"),
    TEXT_ANNOTATION: (
        "builtin_interfaces/Time timestamp\nfoxglove_msgs/Point2 position\nstring text\nfloat64 font_size\n"
        "foxglove_msgs/Color text_color\nfoxglove_msgs/Color background_color\n"
        "foxglove_msgs/KeyValuePair[] metadata\n"),
    IMAGE_ANNOTATIONS: (
        "builtin_interfaces/Time timestamp\n"
        "foxglove_msgs/CircleAnnotation[] circles\nfoxglove_msgs/PointsAnnotation[] points\n"
        "foxglove_msgs/TextAnnotation[] texts\nfoxglove_msgs/KeyValuePair[] metadata\n"),
}


def msg_directory() -> Path:
    """Where Description.msg lives: the source tree, or an ament install's share folder."""
    source = Path(__file__).resolve().parents[2] / "msg"
    if (source / "Description.msg").exists():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("svlm_ros")) / "msg"
    except Exception as error:  # not installed with ament either
        raise FileNotFoundError(
            f"cannot find svlm_ros's msg/Description.msg (looked in {source} and the ament index); "
            "run from a source checkout or an installed svlm_ros workspace") from error


@lru_cache(maxsize=1)
def typestore():
    """A ROS 2 Jazzy typestore that also knows svlm_ros and foxglove_msgs annotation types."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    types.update(get_types_from_msg((msg_directory() / "Description.msg").read_text(), DESCRIPTION))
    for name, text in FOXGLOVE_MSGS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store
