#!/usr/bin/env bash
# Usage: [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] \
#          tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [args]
# mmdetection's slurm_test.sh for every config here (variables: tools/slurm_common.sh):
#   CONFIG.yaml  classification/main.py --cfg CONFIG --resume CHECKPOINT --eval [args, e.g. --data-path DATA]
#   CONFIG.py    tools/test.py CONFIG CHECKPOINT --launcher slurm [args, e.g. --tta, --out FILE.pkl]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$ROOT/tools/slurm_common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then  # sbatch runs a copy of the script
  ROOT=$(cd "$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")/.." && pwd)
fi
usage='usage: tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [args]'
[ $# -ge 4 ] || { printf 'error: %s\n' "$usage" >&2; exit 1; }
. "$ROOT/tools/slurm_common.sh"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
require_file "$CONFIG" CONFIG
require_file "$CHECKPOINT" CHECKPOINT
case "$CONFIG" in
  *.yaml|*.yml) command=("$ROOT/classification/main.py" --cfg "$CONFIG" --resume "$CHECKPOINT" --eval "$@") ;;
  *.py) command=("$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher slurm "$@") ;;
  *) die "CONFIG: expected a classification .yaml or a downstream .py config, got $CONFIG" ;;
esac
srun_tasks "$PARTITION" "$JOB_NAME" "$PYTHON" -u "${command[@]}"
exit "$status"
