#!/usr/bin/env bash
# The lower end of the support window, and an existing environment kept: a second environment ($VHEAT_MIN_VENV,
# default .venv-min) with the oldest torch and timm the library supports and pytest alone
# (requirements-minimum.txt). The library goes in as a user adds it to an environment of theirs (`pip install .`,
# which keeps the environment's torch) and its tests (tests/library) run there; then the trainer's stack goes in
# with `tools/install.sh --core --keep-torch` and trains the digits for two epochs on that same torch.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/common.sh
venv=${VHEAT_MIN_VENV:-.venv-min}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q -r requirements-minimum.txt
torch_version() { "$py" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'; }
minimum=$(torch_version)
before="$minimum timm $("$py" -c 'import timm; print(timm.__version__)')"
"$py" -m pip install -q .
after="$(torch_version) timm $("$py" -c 'import timm; print(timm.__version__)')"
[ "$before" = "$after" ] || die "pip install . changed the environment's $before to $after"
echo "the library installed into an environment of $after (kept)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$py" -m pytest -q -p no:cacheprovider tests/library "$@"

VHEAT_VENV="$venv" bash tools/install.sh --core --keep-torch
[ "$(torch_version)" = "$minimum" ] || die "tools/install.sh --keep-torch changed $minimum to $(torch_version)"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
"$py" classification/data/make_digits.py "$data/digits" >/dev/null
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$py" classification/main.py --cfg classification/configs/vHeat/vHeat_digits.yaml \
  --data-path "$data/digits" --output "$data/output" --opts TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1 |
  grep -E 'Training time|accuracy' | tail -2
echo "the trainer's stack installed beside $minimum (kept) and trained"
