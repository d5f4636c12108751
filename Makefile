# The two commands a user needs: `make demo` (the main job) and `make test` (the whole suite).
# Both run `make setup` first, which installs everything into .venv and is a no-op when done.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= tiny-random

.PHONY: setup test demo bench bench-gpu clean

setup:
	@VENV=$(VENV) scripts/setup.sh

test: setup
	@scripts/run_tests.sh

demo: setup
	@MODEL=$(MODEL) $(PY) -m svlm_ros.demo

bench: setup
	$(VENV)/bin/svlm bench --model small-random --seconds 600 --out bench-out

clean:
	rm -rf .build bench-out
