# The two commands a user needs: `make demo` (the main job) and `make test` (the whole suite).
# Both run `make setup` first, which installs everything into .venv and is a no-op when done.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= tiny-random
PARAMS ?=

.PHONY: setup test demo bench bench-gpu narrator clean

setup:
	@VENV=$(VENV) scripts/setup.sh

test: setup
	@scripts/run_tests.sh

demo: setup
	@MODEL=$(MODEL) PARAMS=$(PARAMS) $(PY) -m svlm_ros.demo

bench: setup
	$(VENV)/bin/svlm bench --model small-random --seconds 600 --out bench-out

# On a CUDA machine: Qwen2.5-VL-7B dimensions, random weights, bf16, 720p at 2 fps.
bench-gpu: setup
	$(VENV)/bin/svlm bench --config config/qwen2_5_vl_7b.json --device cuda --dtype bfloat16 \
		--width 1280 --height 720 --seconds 1800 --baseline-seconds 120 --out bench-gpu-out

# The synthetic narrator loop (training/README.md, "Does it see?"): about 30 min on 2 CPU cores;
# resumable. It trains a grounded and a video-blind model and scores both against the scenes' truth.
narrator: setup
	training/narrator.sh $(or $(WORK),runs/narrator)

clean:
	rm -rf .build bench-out
