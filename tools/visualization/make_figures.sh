#!/usr/bin/env bash
# Regenerates the README's figures under docs/: the resolution sweep (JSON + plot), the heat strip, the ERF grid,
# the 3-D heat slices and the 3-D cost sweep (JSON + plot).
# Pass --full for the full sweep (7 timed rounds, every model at every size) instead of --quick.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/common.sh
[ $# -eq 0 ] || [ "$*" = "--full" ] || die "unknown arguments: $* (tools/visualization/make_figures.sh [--full])"
PY=${PYTHON:-.venv/bin/python}
SWEEP=--quick
if [[ "${1:-}" == "--full" ]]; then SWEEP=; fi
PYTHONPATH=. "$PY" tools/analysis_tools/benchmark.py --sweep $SWEEP --json docs/scaling.json --plot docs/scaling.png
PYTHONPATH=. "$PY" tools/visualization/visualize_heat.py --out docs/heat_conduction.png
PYTHONPATH=. "$PY" tools/visualization/visualize_erf.py --out docs/erf.png
PYTHONPATH=. "$PY" tools/visualization/visualize_heat.py --volume --out docs/heat_conduction_3d.png
PYTHONPATH=. "$PY" tools/analysis_tools/benchmark.py --volume-sweep --json docs/volume_scaling.json --plot docs/volume_scaling.png
