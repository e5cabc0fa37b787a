#!/usr/bin/env bash
# The README's test command: installs everything (tools/install.sh) and runs the test suite on CPU, its files
# shared by VHEAT_TEST_WORKERS pytest-xdist workers (default 2; 0 runs them in this process), one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q -n "${VHEAT_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder tests "$@"
