# Sourced by tools/slurm_train.sh and tools/slurm_test.sh after ROOT is set: mmdetection's SLURM arguments and
# environment variables, for the classification configs (.yaml) and the downstream configs (.py).
#   GPUS           processes in all, one per GPU (default 8)
#   GPUS_PER_NODE  processes and GPUs a node (default GPUS, at most 8); 0 asks for no GPU: CPU processes (gloo)
#   CPUS_PER_TASK  CPU cores a process (default 5)
#   SRUN_ARGS      more srun options (e.g. "--time=24:00:00 --signal=USR1@120")
#   PYTHON         the interpreter (default the repository's .venv/bin/python, else python)
. "$ROOT/tools/common.sh"
GPUS=${GPUS:-8}
require_positive_int "$GPUS" GPUS
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "GPUS_PER_NODE must be a whole number (0: no GPU), got '$GPUS_PER_NODE'"
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
require_positive_int "$CPUS_PER_TASK" CPUS_PER_TASK
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}

# srun_tasks PARTITION JOB_NAME COMMAND...: run COMMAND as GPUS tasks and wait for them; SIGUSR1 and SIGTERM that
# reach this script (sbatch --signal=B:USR1@120, a preemption) are passed on to every task. Sets $status.
srun_tasks() {
  local partition=$1 job_name=$2
  shift 2
  command -v srun >/dev/null ||
    die "srun not found: $(basename "$0") runs on a SLURM cluster (tools/dist_train.sh runs on this machine)"
  local options=(-p "$partition" --job-name="$job_name" --ntasks="$GPUS" --cpus-per-task="$CPUS_PER_TASK"
                 --kill-on-bad-exit=1)
  [ "$GPUS_PER_NODE" -eq 0 ] || options+=(--gres=gpu:"$GPUS_PER_NODE" --ntasks-per-node="$GPUS_PER_NODE")
  # shellcheck disable=SC2086  # SRUN_ARGS is a list of options, as in mmdetection's scripts
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" srun "${options[@]}" ${SRUN_ARGS:-} "$@" &
  local pid=$!
  trap 'kill -USR1 "$pid" 2>/dev/null || true' USR1
  trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
  status=0
  while :; do  # a trapped signal ends `wait` early: wait again until srun itself has ended
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1 TERM
}
