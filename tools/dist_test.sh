#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args, e.g. --tta]. Without a GPU, GPUS is the
# number of CPU processes (gloo). Relative paths are the caller's (run from anywhere). PORT (default 29500) and
# PYTHON (default the repository's .venv/bin/python, else python) can be set.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tools/common.sh"
[ $# -ge 3 ] || die "usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py arguments]"
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
require_file "$CONFIG" CONFIG
require_file "$CHECKPOINT" CHECKPOINT
require_positive_int "$GPUS" GPUS
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m torch.distributed.run \
  --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
  "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
