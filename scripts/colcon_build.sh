#!/usr/bin/env bash
# colcon-builds this package (msg/, srv/, the Python package, launch, config) with the rosidl
# toolchain in $VENV, from a staged copy of the sources in OUT_DIR/src: CMake refuses include
# paths inside the source tree, and the venv lives inside the repository.
# Usage: scripts/colcon_build.sh VENV OUT_DIR   (the result is OUT_DIR/install/svlm_ros)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "$1" && pwd)
OUT=$2
rm -rf "$OUT"
mkdir -p "$OUT/src/svlm_ros"
for item in package.xml CMakeLists.txt msg srv svlm_ros launch config scripts; do
  cp -r "$ROOT/$item" "$OUT/src/svlm_ros/"
done
find "$OUT/src" -name __pycache__ -prune -exec rm -rf {} +
cd "$OUT"
export PATH=$VENV/bin:$PATH CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV
colcon --log-base log build --base-paths src --build-base build --install-base install \
  --packages-select svlm_ros --event-handlers console_direct- \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
