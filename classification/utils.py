"""Logging, distributed set-up and checkpoints for the trainer."""
import glob
import logging
import os
import sys

import torch
import torch.distributed as dist
from termcolor import colored

from classification.models import UnsafeCheckpointError, checkpoint_filter_fn, load_checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model built from the config."""


def create_logger(output_dir: str, rank: int, name: str) -> logging.Logger:
    """Coloured console log on rank 0, and a plain log file per rank in ``output_dir``."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    fmt = '[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s'
    color_fmt = colored('[%(asctime)s %(name)s]', 'green') + \
        colored('(%(filename)s %(lineno)d)', 'yellow') + ': %(levelname)s %(message)s'
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(color_fmt, datefmt='%Y-%m-%d %H:%M:%S'))
        logger.addHandler(console)
    os.makedirs(output_dir, exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(output_dir, f'log_rank{rank}.txt'), mode='a')
    file_handler.setFormatter(logging.Formatter(fmt, datefmt='%Y-%m-%d %H:%M:%S'))
    logger.addHandler(file_handler)
    return logger


def init_distributed(local_rank_flag: int):
    """Join the process group that torch.distributed.launch or torchrun set up; a plain run gets none.

    Returns (rank, world_size, device). Backend: nccl on GPUs, gloo on CPU.
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        device = torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
        return 0, 1, device
    local_rank = int(os.environ.get('LOCAL_RANK', local_rank_flag))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
        dist.init_process_group('nccl', device_id=device)
    else:
        device = torch.device('cpu')
        dist.init_process_group('gloo')
    return dist.get_rank(), dist.get_world_size(), device


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a reader (or a run killed mid-write) sees the old file or the new one, never half."""
    tmp = f'{path}.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)


def auto_resume_file(output_dir: str):
    """The newest ``ckpt_epoch_*.pth`` / ``ckpt_latest.pth`` in ``output_dir``, or None."""
    candidates = glob.glob(os.path.join(output_dir, 'ckpt_epoch_*.pth'))
    candidates += glob.glob(os.path.join(output_dir, 'ckpt_latest.pth'))
    return max(candidates, key=os.path.getmtime) if candidates else None


def load_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` that names the mismatched keys instead of a long torch message."""
    try:
        converted = checkpoint_filter_fn(dict(state_dict), model)
    except ValueError as e:
        raise CheckpointError(f'{source}: {e}') from None
    own = model.state_dict()
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    wrong_shape = [f'{k} {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in own if k in converted and converted[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = [f'{label} ({len(keys)}): {", ".join(keys[:4])}{", ..." if len(keys) > 4 else ""}'
                 for label, keys in (('missing', missing), ('unexpected', unexpected),
                                     ('shape mismatch', wrong_shape)) if keys]
        raise CheckpointError(f'{source} does not fit the configured model (another architecture?): '
                              + '; '.join(parts))
    model.load_state_dict(converted, strict=True)


def read_checkpoint(path: str) -> dict:
    """``load_checkpoint`` (weights_only), with a plain state dict accepted as ``{'model': state_dict}``."""
    try:
        checkpoint = load_checkpoint(path)
    except UnsafeCheckpointError:
        raise
    except (RuntimeError, ValueError) as e:  # not a torch file, truncated, or not a dict
        raise CheckpointError(str(e)) from None
    if 'model' not in checkpoint:
        checkpoint = {'model': checkpoint}
    return checkpoint
