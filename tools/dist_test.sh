#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args, e.g. --tta]. Without a GPU, GPUS is
# the number of CPU processes (gloo). PORT (default 29500) and PYTHON can be set.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m torch.distributed.run \
  --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
  tools/test.py "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
