#!/usr/bin/env bash
# Runs the whole test suite. pytest exits 5 when it collected no test: that is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "make test: pytest ran no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
