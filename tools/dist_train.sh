#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [tools/train.py args]. Without a GPU, GPUS is the number of CPU
# processes (gloo). PORT (default 29500) and PYTHON (default .venv/bin/python or python) can be set.
set -euo pipefail
CONFIG=$1
GPUS=$2
shift 2
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m torch.distributed.run \
  --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
  tools/train.py "$CONFIG" --launcher pytorch "$@"
