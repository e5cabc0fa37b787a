"""The downstream engine of tools/train.py, tools/test.py and tools/misc/image_demo.py: config loading, CPU/gloo and
srun set-up, and mmengine's Runner with strict loading of official and own checkpoints. Runner checkpoints are read
weights-only (:mod:`classification.mm.checkpoints`, registered at import)."""
import argparse
import os
from functools import partial
from typing import Dict

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner

from classification.core.errors import UsageError
from classification.core.launch import started_by_srun, use_srun_environment
from classification.models import find_state_dict
from classification.models.backbone import vHeatBackbone
from classification.models.serialization import load_checkpoint
from classification.models.weights import load_weights

from . import checkpoints  # noqa: F401  (Runner checkpoints weights-only)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The detector/segmentor under DDP and test-time-augmentation wrappers."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def convert_checkpoint_keys(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The checkpoint's keys as the model names them: DDP's ``module.`` prefix removed, and each vHeat backbone
    converts the keys under its prefix (the official wrapper's names: ``patch_embed``, ``layers.i.j``,
    ``freq_embed.i``, ``outnorm{i}``, 1x1-convolution MLP weights)."""
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    for name, module in model.named_modules():
        if isinstance(module, vHeatBackbone):
            prefix = f'{name}.' if name else ''
            own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
            state_dict.update({prefix + k: v for k, v in module.convert_state_dict(own).items()})
    return state_dict


def load_weights_strictly(model: torch.nn.Module, checkpoint: dict, path: str) -> None:
    """Load a Runner checkpoint (official layout or ours) or a plain state dict into the model under its wrappers;
    after conversion every key must fit."""
    model = unwrap(model)
    load_weights(model, find_state_dict(checkpoint, 'state_dict', path), path,
                 f'the {type(model).__name__} of the config', convert=partial(convert_checkpoint_keys, model))


class StrictRunner(Runner):
    """mmengine's Runner whose ``load_checkpoint`` (``load_from``, ``resume``, tools/test.py) reads weights-only,
    converts official checkpoints, and refuses one that does not fit, naming the keys (mmengine loads
    non-strictly: what does not fit would stay at its initialisation, and only a log line would say so)."""

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False, revise_keys=()):
        checkpoint = load_checkpoint(filename)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        load_weights_strictly(self.model, checkpoint, filename)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename} (strict, official names converted)')
        return checkpoint


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. train_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='pytorch: started by torchrun (tools/dist_train.sh); slurm: started by srun '
                        '(tools/slurm_train.sh)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read the config (the task, mmdet or mmseg, comes from its custom_imports and default_scope)."""
    if not os.path.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.launcher == 'slurm':
        join_srun_group()
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    if not torch.cuda.is_available():
        run_on_cpu(cfg)
    return cfg


def join_srun_group() -> None:
    """``--launcher slurm``: the process-group variables of this srun task (``classification/core/launch.py``), also
    for a step of one task, before mmengine reads them (its own SLURM set-up keeps MASTER_PORT from the
    environment, so every launcher of a job agrees on the port derived from the job id)."""
    if not started_by_srun():
        raise UsageError('--launcher slurm: this process was not started by srun (no SLURM_STEP_ID); use '
                         'tools/slurm_train.sh or tools/slurm_test.sh, or --launcher pytorch with torchrun')
    use_srun_environment(alone=True)


def run_on_cpu(cfg: Config) -> None:
    """Without a GPU: gloo instead of NCCL, DDP on CPU modules (device_ids=None), and plain BatchNorm, as
    SyncBatchNorm needs CUDA (each process then normalises over its own batch)."""
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('launcher', 'none') != 'none':
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
