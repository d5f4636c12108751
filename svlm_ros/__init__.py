"""svlm_ros: StreamingVLM for ROS 2.

The generated interfaces (svlm_ros.msg, svlm_ros.srv) may live in another directory than these
sources (a dev venv installs them apart); extend_path joins every svlm_ros directory on sys.path.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
