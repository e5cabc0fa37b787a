#!/usr/bin/env bash
# Usage: [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] \
#          tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [args]
# mmdetection's slurm_train.sh for every trainer here (variables: tools/slurm_common.sh):
#   CONFIG.yaml  classification/main.py --cfg CONFIG --output WORK_DIR [args]       (the ImageNet trainer)
#   CONFIG.py    tools/train.py CONFIG --work-dir WORK_DIR --launcher slurm [args]   (Mask R-CNN, UperNet)
# From a login node srun allocates the job; inside an sbatch job (`sbatch [--requeue --signal=B:USR1@120] ...
# tools/slurm_train.sh ...`) it runs in the job's allocation. Preemption: the classification trainer stops at a
# step boundary on SIGUSR1 or SIGTERM, saving where it was, and exits 128 + signal. A job stopped by SIGUSR1 (the
# time limit's warning, scancel --signal=USR1) requeues itself when it was submitted with --requeue; after SIGTERM
# (a preemption, scancel) requeueing is SLURM's decision. A requeued job resumes in WORK_DIR: the classification
# trainer auto-resumes, and a downstream run gets --resume (its last checkpoint).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$ROOT/tools/slurm_common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then  # sbatch runs a copy of the script
  ROOT=$(cd "$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")/.." && pwd)
fi
usage='usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [args]'
[ $# -ge 4 ] || { printf 'error: %s\n' "$usage" >&2; exit 1; }
. "$ROOT/tools/slurm_common.sh"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
require_file "$CONFIG" CONFIG
restarts=${SLURM_RESTART_COUNT:-0}
case "$CONFIG" in
  *.yaml|*.yml)
    command=("$ROOT/classification/main.py" --cfg "$CONFIG" --output "$WORK_DIR" "$@") ;;
  *.py)
    command=("$ROOT/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" --launcher slurm "$@")
    if [ "$restarts" -gt 0 ] && [[ " $* " != *" --resume"* ]]; then
      echo "requeued job (restart $restarts): resuming from the last checkpoint in $WORK_DIR"
      command+=(--resume)
    fi ;;
  *) die "CONFIG: expected a classification .yaml or a downstream .py config, got $CONFIG" ;;
esac
srun_tasks "$PARTITION" "$JOB_NAME" "$PYTHON" -u "${command[@]}"
if [ "$status" -eq 138 ] && [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${SLURM_STEP_ID:-}" ]; then  # 128 + SIGUSR1
  if scontrol show job "$SLURM_JOB_ID" | grep -q 'Requeue=1'; then
    echo "stopped by SIGUSR1: requeueing job $SLURM_JOB_ID, which resumes in $WORK_DIR"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "stopped by SIGUSR1; job $SLURM_JOB_ID was not submitted with --requeue: the same command resumes"
  fi
fi
exit "$status"
