"""Logging, distributed set-up and checkpoints for the trainer."""
import contextlib
import glob
import io
import logging
import os
import sys
from typing import NoReturn, Optional, Tuple

import torch
import torch.distributed as dist
from termcolor import colored

from classification.models import UnsafeCheckpointError, checkpoint_filter_fn, load_checkpoint
from classification.models.serialization import key_mismatch, read_bytes


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model built from the config."""


def exit_with_error(message: str) -> NoReturn:
    """``error: message`` on stderr in one write, then exit status 1. ``sys.exit(message)`` writes the message and
    its newline separately, so the ranks of one launch, sharing stderr, could join their lines into one."""
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()
    raise SystemExit(1)


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


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` atomically and durably: a crash, a kill or a power loss leaves the old file or the new one.

    The state is serialised in memory, written to ``<path>.tmp``, flushed and fsynced, renamed over ``path``, and
    the folder is fsynced. If the write fails (a full disk, say) the temporary file is removed and a
    CheckpointError names the path and the cause; the previous checkpoint is untouched.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_durably(path, buffer.getbuffer())


def write_durably(path: str, data) -> None:
    """Atomic, durable replacement of ``path`` by ``data`` (bytes-like); see :func:`save_checkpoint`."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
        commit_file(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise CheckpointError(f'cannot write checkpoint {path}: {e.strerror or e}') from None


def commit_file(tmp: str, path: str) -> None:
    """Make the finished file ``tmp`` durable and rename it over ``path``, then make the rename durable."""
    handle = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # some file systems refuse to fsync a folder
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def auto_resume_file(output_dir: str):
    """The newest ``ckpt_epoch_*.pth`` / ``ckpt_latest.pth`` in ``output_dir``, or None."""
    candidates = glob.glob(os.path.join(output_dir, 'ckpt_epoch_*.pth'))
    candidates += glob.glob(os.path.join(output_dir, 'ckpt_latest.pth'))
    return max(candidates, key=os.path.getmtime) if candidates else None


def load_weights(model: torch.nn.Module, state_dict, source: str) -> None:
    """``load_state_dict(strict=True)`` that names the mismatched keys instead of a long torch message."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'{source}: expected a state dict of tensors, got {type(state_dict).__name__}')
    try:
        converted = checkpoint_filter_fn(dict(state_dict), model)
    except (ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f'{source}: {e.args[0] if e.args else e}') from None
    mismatch = key_mismatch(converted, model.state_dict())
    if mismatch:
        raise CheckpointError(f'{source} does not fit the configured model (another architecture?): {mismatch}')
    model.load_state_dict(converted, strict=True)


def read_checkpoint(path: str, data: Optional[bytes] = None) -> dict:
    """``load_checkpoint`` (weights_only), with a plain state dict accepted as ``{'model': state_dict}``."""
    try:
        checkpoint = load_checkpoint(path, data=data)
    except UnsafeCheckpointError:
        raise
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if 'model' not in checkpoint:
        checkpoint = {'model': checkpoint}
    if not isinstance(checkpoint['model'], dict):
        raise CheckpointError(f"{path}: 'model' holds a {type(checkpoint['model']).__name__}, not a state dict")
    return checkpoint


def shared_checkpoint(path: Optional[str], device: torch.device) -> Tuple[Optional[str], Optional[dict]]:
    """(file name, checkpoint) of the checkpoint rank 0 chose (``path`` on rank 0; ignored elsewhere), on every
    rank, or (None, None).

    Rank 0 reads and checks the file and broadcasts its name and bytes; every rank loads them weights-only. No rank
    reads its own file system, so nodes without a shared one still start from the same state; if rank 0 cannot
    use the file, every rank raises the same CheckpointError.
    """
    if not dist.is_initialized():
        return (path, read_checkpoint(path)) if path else (None, None)
    name, data, failed = (path or '').encode(), b'', False
    if dist.get_rank() == 0 and path:
        try:
            data = read_bytes(path)
            read_checkpoint(path, data)
        except (CheckpointError, UnsafeCheckpointError, FileNotFoundError) as e:
            data, failed = str(e.args[0] if e.args else e).encode(), True
    header = torch.tensor([len(name), len(data), int(failed)], dtype=torch.int64, device=device)
    dist.broadcast(header, 0)
    sizes, failed = header[:2].tolist(), bool(header[2])
    payload = torch.frombuffer(bytearray(name + data), dtype=torch.uint8) if dist.get_rank() == 0 and sum(sizes) \
        else torch.empty(sum(sizes), dtype=torch.uint8)
    if sum(sizes):
        payload = payload.to(device)
        dist.broadcast(payload, 0)
    received = payload.cpu().numpy().tobytes()
    name, data = received[:sizes[0]].decode(), received[sizes[0]:]
    if failed:
        raise CheckpointError(data.decode())
    return (name, read_checkpoint(name, data)) if name else (None, None)
