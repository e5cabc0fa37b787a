"""What tools/train.py and tools/test.py share: config loading, CPU/gloo set-up, safe checkpoint globals,
strict checkpoint loading and one-line errors."""
import argparse
import os
import sys
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging.history_buffer import HistoryBuffer  # noqa: E402
from mmengine.model import BaseTTAModel, is_model_wrapper  # noqa: E402

from classification.models.serialization import (CheckpointFormatError, IncompatibleCheckpointError,  # noqa: E402
                                                 UnsafeCheckpointError, key_mismatch, load_checkpoint)
from classification.cli import exit_with_error  # noqa: E402
from classification.utils import CheckpointError  # noqa: E402

ONE_LINE_ERRORS = (IncompatibleCheckpointError, CheckpointFormatError, UnsafeCheckpointError, CheckpointError,
                   FileNotFoundError)


def run_or_exit(fn: Callable[[], object]) -> None:
    """Run ``fn``; a checkpoint that cannot be used, or cannot be written, ends it with one line on stderr."""
    try:
        fn()
    except ONE_LINE_ERRORS as e:
        exit_with_error(e.args[0] if e.args else str(e))


def load_weights_strictly(model: torch.nn.Module, path: str) -> None:
    """Load a Runner checkpoint (or a plain state dict) into the model under its wrappers; every key must fit."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    checkpoint = load_checkpoint(path)
    state_dict = checkpoint.get('state_dict', checkpoint)
    mismatch = key_mismatch(state_dict, model.state_dict())
    if mismatch:
        raise IncompatibleCheckpointError(f'{path} does not fit the {type(model).__name__} of the config: {mismatch}')
    model.load_state_dict(state_dict, strict=True)


def allow_runner_checkpoints() -> None:
    """mmengine loads checkpoints with torch.load's default weights_only=True (torch >= 2.6); its Runner
    checkpoints also hold the message hub's HistoryBuffers, numpy arrays and scalars: allow exactly those."""
    multiarray = np._core.multiarray
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    torch.serialization.add_safe_globals(
        [HistoryBuffer, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes])
    HistoryBuffer.__getstate__ = _history_buffer_state


def _history_buffer_state(buffer: HistoryBuffer) -> dict:
    """HistoryBuffer pickles its statistics functions (``getattr(HistoryBuffer, 'min')``...), which a weights-only
    load must refuse; __setstate__ restores the default ones, so checkpoints written here leave them out."""
    return {k: v for k, v in buffer.__dict__.items() if k != 'statistics_methods'}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. train_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read the config (the task, mmdet or mmseg, comes from its custom_imports and default_scope)."""
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    if not torch.cuda.is_available():
        _run_on_cpu(cfg)
    return cfg


def _run_on_cpu(cfg: Config) -> None:
    """Without a GPU: gloo instead of NCCL, DDP on CPU modules (device_ids=None), and plain BatchNorm, as
    SyncBatchNorm needs CUDA (each process then normalises over its own batch)."""
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.launcher != 'none':
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
        if not dist.is_initialized():  # mmengine's init_dist calls torch.cuda.set_device first
            dist.init_process_group('gloo')
    _replace_sync_bn(cfg.model)


def _replace_sync_bn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)
