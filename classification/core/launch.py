"""Process groups: torch.distributed.launch, torchrun, and tasks that SLURM's ``srun`` started, set up as torchrun
would.

``srun -n N python classification/main.py ...`` (or ``tools/train.py --launcher slurm``) starts N copies of one
command; each learns its place from SLURM: rank ``SLURM_PROCID``, world size ``SLURM_NTASKS``, local rank
``SLURM_LOCALID``, and the address of the step's first node. torchrun's own variables, where set, win.
"""
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from classification.models.errors import VHeatError

TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE')
# Ports derived from the job id lie below Linux's ephemeral range (32768 and up), where connections of other
# programs get their local ports.
PORT_BASE, PORT_SPAN = 20000, 12000


class LaunchError(VHeatError, RuntimeError):
    """The processes of one run were started in a way that cannot form one process group."""


def started_by_srun() -> bool:
    """A task of an ``srun`` step (the batch script of ``sbatch`` is not: it has no step id)."""
    return 'SLURM_STEP_ID' in os.environ and 'SLURM_PROCID' in os.environ


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,7]`` means node03, ...), as ``scontrol show hostnames``
    expands it."""
    if '[' not in nodelist:
        return nodelist.split(',')[0]
    scontrol = shutil.which('scontrol')
    if scontrol is None:
        raise LaunchError(f'cannot expand the SLURM node list {nodelist!r}: scontrol not found; set MASTER_ADDR')
    result = subprocess.run([scontrol, 'show', 'hostnames', nodelist], capture_output=True, text=True)
    hosts = result.stdout.split()
    if result.returncode != 0 or not hosts:
        raise LaunchError(f'scontrol show hostnames {nodelist} failed: {result.stderr.strip() or "no hosts"}; '
                          'set MASTER_ADDR')
    return hosts[0]


def job_port(job_id: int, step_id: int) -> int:
    """A rendezvous port for one step of one job: steps 0 to 7 of a job get their own; jobs whose ids differ by a
    multiple of 1500 get the same ones."""
    return PORT_BASE + (job_id * 8 + step_id) % PORT_SPAN


def srun_environment(alone: bool = False) -> Optional[Dict[str, str]]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for this srun task, or None
    when srun did not start it, when torchrun's variables are set already, or when it is the step's only task
    (``alone``: a group of one then, for launchers that always make one). MASTER_ADDR and MASTER_PORT set by the
    user are kept.

    A task started by srun whose launcher (torchrun inside srun, say) made a process group smaller than the step
    would run beside the other tasks' groups, each with its own rank 0 writing the same files: refused.
    """
    if not started_by_srun():
        return None
    tasks = int(os.environ.get('SLURM_STEP_NUM_TASKS', os.environ.get('SLURM_NTASKS', '1')))
    if all(v in os.environ for v in TORCHRUN_VARIABLES):
        if int(os.environ['WORLD_SIZE']) < tasks:
            raise LaunchError(f'srun started {tasks} tasks, but this one belongs to a process group of '
                              f'{os.environ["WORLD_SIZE"]} (set by its launcher): each task would have its own rank 0. '
                              'Start one task per process (srun -n N python ...) or one launcher per node')
        return None
    if tasks <= 1 and not alone:
        return None
    nodelist = os.environ.get('SLURM_STEP_NODELIST') or os.environ.get('SLURM_JOB_NODELIST') or \
        os.environ.get('SLURM_NODELIST', '')
    job, step = int(os.environ.get('SLURM_JOB_ID', '0')), int(os.environ.get('SLURM_STEP_ID', '0'))
    return {
        'RANK': os.environ['SLURM_PROCID'],
        'WORLD_SIZE': str(tasks),
        'LOCAL_RANK': os.environ.get('SLURM_LOCALID', '0'),
        'MASTER_ADDR': os.environ.get('MASTER_ADDR') or first_host(nodelist),
        'MASTER_PORT': os.environ.get('MASTER_PORT') or str(job_port(job, step)),
    }


def use_srun_environment(alone: bool = False) -> Optional[Dict[str, str]]:
    """Put :func:`srun_environment` into ``os.environ`` (what ``init_process_group('env://')`` reads); it, or
    None."""
    variables = srun_environment(alone)
    if variables:
        os.environ.update(variables)
    return variables


def describe_launch() -> str:
    """For the log: which srun task this process is, and where its group meets ('' when srun did not start it)."""
    if not started_by_srun():
        return ''
    return (f'srun job {os.environ.get("SLURM_JOB_ID")} step {os.environ.get("SLURM_STEP_ID")} task '
            f'{os.environ["SLURM_PROCID"]}, rendezvous {os.environ.get("MASTER_ADDR", "-")}:'
            f'{os.environ.get("MASTER_PORT", "-")}')


def init_distributed(local_rank_flag: int) -> Tuple[int, int, torch.device]:
    """Join the process group that torch.distributed.launch, torchrun or srun set up; a plain run gets none.

    Returns (rank, world_size, device). Backend: nccl on GPUs, gloo on CPU. The GPU is the local rank's among the
    visible ones (SLURM may show each task only its own).
    """
    use_srun_environment()
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        device = torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
        return 0, 1, device
    local_rank = int(os.environ.get('LOCAL_RANK', local_rank_flag))
    if torch.cuda.is_available():
        device = torch.device('cuda', local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group('nccl', device_id=device)
    else:
        device = torch.device('cpu')
        dist.init_process_group('gloo')
    return dist.get_rank(), dist.get_world_size(), device


def last_json_line(command: List[str]) -> Any:
    """Run ``command`` (a measuring worker, in a process of its own) and return the JSON its last output line holds;
    a failed worker is a RuntimeError with its last error line."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(command[1:])}: {done.stderr.strip().splitlines()[-1:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])
