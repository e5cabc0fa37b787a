#!/usr/bin/env bash
# Regenerates the README's figures under docs/: the resolution sweep (JSON + plot), the heat strip, the ERF grid.
# Pass --full for the full sweep (7 timed rounds, every model at every size) instead of --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SWEEP=--quick
if [[ "${1:-}" == "--full" ]]; then SWEEP=; fi
PYTHONPATH=. "$PY" tools/benchmark.py --sweep $SWEEP --json docs/scaling.json --plot docs/scaling.png
PYTHONPATH=. "$PY" tools/visualize_heat.py --out docs/heat_conduction.png
PYTHONPATH=. "$PY" tools/visualize_erf.py --out docs/erf.png
