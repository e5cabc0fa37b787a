#!/usr/bin/env bash
# The lower end of the support window, proven: a second environment ($VHEAT_MIN_VENV, default .venv-min) with the
# oldest torch and timm the library supports and pytest alone (requirements-minimum.txt), the library installed
# into it as a user adds it to an existing environment (`pip install .`, which keeps the environment's torch), and
# the library's tests (tests/library) run there. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/common.sh
venv=${VHEAT_MIN_VENV:-.venv-min}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q -r requirements-minimum.txt
versions() { "$py" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)'; }
before=$(versions)
"$py" -m pip install -q .
after=$(versions)
[ "$before" = "$after" ] || die "pip install . changed the environment's $before to $after"
echo "library installed into an environment with $after (kept)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$py" -m pytest -q -p no:cacheprovider tests/library "$@"
