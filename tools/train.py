"""Train a detection (mmdet) or segmentation (mmseg) config with mmengine's Runner; see tools/dist_train.sh.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp] [--auto-scale-lr]
                          [--cfg-options k=v ...] [--launcher pytorch|slurm]

``--resume`` alone continues from the work dir's last checkpoint; ``--resume PATH`` from that checkpoint (official
layout or ours). ``load_from=PATH`` (config or --cfg-options) starts from its weights. Both load strictly.
"""
import argparse

import torch

from classification.core.cli import exit_on_errors, freeze_startup_objects, require_file
from classification.core.errors import UsageError
from classification.mm.runner import StrictRunner, add_common_args, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='PATH',
                        help='resume from PATH, or (no PATH) from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (AmpOptimWrapper; needs CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the learning rate by the total batch against the config's auto_scale_lr")
    add_common_args(parser)
    return parser.parse_args(argv)


def apply_args(cfg, args) -> None:
    """mmdet's meanings of --resume, --amp and --auto-scale-lr."""
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.amp:
        if not torch.cuda.is_available():
            raise UsageError('--amp: mixed-precision training (mmengine\'s AmpOptimWrapper) needs a CUDA GPU')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise UsageError(f'--amp: the config\'s optim_wrapper is {cfg.optim_wrapper.type}, not OptimWrapper')
        cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale = 'AmpOptimWrapper', 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise UsageError(f'--auto-scale-lr: {args.config} sets no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True


def main(argv=None):
    args = parse_args(argv)
    with exit_on_errors():
        require_file(args.config, 'CONFIG', 'config file')
        if args.resume not in (None, 'auto'):
            require_file(args.resume, '--resume', 'checkpoint')

    def train():
        cfg = load_config(args)
        apply_args(cfg, args)
        runner = StrictRunner.from_cfg(cfg)
        freeze_startup_objects()
        runner.train()
    with exit_on_errors():
        train()


if __name__ == '__main__':
    main()
