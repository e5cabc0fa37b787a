"""Train and evaluate vHeat (or a timm model, with the same recipe) on ImageNet or a standard data set; after
Swin-Transformer's main.py, with the official vHeat trainer's command line.

    python classification/main.py --cfg classification/configs/vHeat/vHeat_tiny_224.yaml --data-path DATA
    python -m torch.distributed.launch --nproc_per_node=8 classification/main.py ...   # or torchrun
    srun --ntasks-per-node=8 --gres=gpu:8 python classification/main.py ...           # one task per GPU (SLURM)
    python classification/main.py --cfg ... --data-path DATA --eval --resume vHeat_tiny.pth [--model_ema False]
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # the official command line runs this file as a script: `classification` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist

from classification.config import get_config, scale_learning_rates, total_batch
from classification.core.cli import exit_on_errors, freeze_startup_objects
from classification.core.launch import describe_launch, init_distributed
from classification.data.build import check_data_path
from classification.engine.logger import create_logger
from classification.engine.preemption import Preempted
from classification.engine.trainer import Trainer


def str2bool(value: str) -> bool:
    if value.lower() in ('true', '1', 'yes', 't', 'y'):
        return True
    if value.lower() in ('false', '0', 'no', 'f', 'n'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def parse_args(argv=None):
    """Every flag of the official trainer (same names and meanings), and this trainer's own (--compile,
    --cpu-streaming). An unknown flag is an error naming it (the official trainer ignored it)."""
    parser = argparse.ArgumentParser('vHeat training and evaluation', add_help=True)
    parser.add_argument('--cfg', type=str, metavar='FILE', help='path to a config file')
    parser.add_argument('--opts', nargs='+', default=None, help='override config options: KEY VALUE ...')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str, help='folder with train/ and val/ (or the zip layout, or the '
                        'files of DATA.DATASET)')
    parser.add_argument('--zip', action='store_true', help='read train.zip/val.zip with their map files')
    parser.add_argument('--cache-mode', choices=['no', 'full', 'part'],
                        help='zip mode: no cache, all images in memory, or only this process\'s shard (default '
                        'part, as officially)')
    parser.add_argument('--resume', help='resume from (or, with --eval, evaluate) this checkpoint file or https URL')
    parser.add_argument('--pretrained', help='initialise the weights from this checkpoint file or https URL '
                        '(another number of classes: the classifier starts new)')
    parser.add_argument('--accumulation-steps', type=int, help='gradient accumulation steps')
    parser.add_argument('--use-checkpoint', action='store_true', help='gradient checkpointing to save memory')
    parser.add_argument('--disable_amp', action='store_true', help='no mixed precision')
    parser.add_argument('--amp-opt-level', choices=['O0', 'O1', 'O2'],
                        help='deprecated (apex), as officially: O0 turns mixed precision off, O1/O2 change nothing')
    parser.add_argument('--output', type=str, help='root of the outputs: <output>/<MODEL.NAME>/<tag>/')
    parser.add_argument('--tag', help='tag of the experiment')
    parser.add_argument('--eval', action='store_true', help='evaluate on val only')
    parser.add_argument('--throughput', action='store_true', help='measure inference throughput only')
    parser.add_argument('--fused_layernorm', action='store_true',
                        help='official flag of Swin\'s fused LayerNorm; vHeat never reads it (no effect)')
    parser.add_argument('--optim', help='optimizer instead of the config\'s: adamw, sgd, fused_adam, fused_lamb')
    parser.add_argument('--model_ema', type=str2bool, help='keep (and evaluate) an EMA of the weights')
    parser.add_argument('--model_ema_decay', type=float, help='EMA decay')
    parser.add_argument('--model_ema_force_cpu', type=str2bool, help='keep the EMA weights on the CPU')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (training and evaluation)')
    parser.add_argument('--cpu-streaming', action='store_true',
                        help='CPU inference through the streaming engine (enable_cpu_streaming)')
    parser.add_argument('--local-rank', '--local_rank', dest='local_rank', type=int, default=0,
                        help='set by torch.distributed.launch (torchrun sets LOCAL_RANK instead)')
    return parser.parse_args(argv)


def log_setup(config, logger, rank: int, world_size: int, device: torch.device) -> None:
    """The total batch and effective rates, the full config (saved by rank 0), and what official flags do here."""
    logger.info(f'total batch {total_batch(config, world_size)} = {config.DATA.BATCH_SIZE} per process x {world_size} '
                f'processes x {config.TRAIN.ACCUMULATION_STEPS} accumulation steps; effective (per-512 rule) '
                f'BASE_LR {config.TRAIN.BASE_LR:.6g} WARMUP_LR {config.TRAIN.WARMUP_LR:.6g} '
                f'MIN_LR {config.TRAIN.MIN_LR:.6g}')
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w') as f:
            f.write(config.dump())
        logger.info(f'Full config saved to {config.OUTPUT}/config.yaml\n{config.dump()}')
    if config.AMP_OPT_LEVEL:
        logger.warning(f'--amp-opt-level {config.AMP_OPT_LEVEL}: apex amp is deprecated (as officially); '
                       + ('mixed precision is off' if config.AMP_OPT_LEVEL == 'O0' else 'nothing changes'))
    if config.FUSED_LAYERNORM or config.FUSED_WINDOW_PROCESS:
        logger.info('FUSED_LAYERNORM / FUSED_WINDOW_PROCESS (--fused_layernorm): no effect, vHeat never reads them '
                    '(nor did the official vHeat)')
    if config.TRAIN.LAYER_DECAY != 1.0:
        logger.info('TRAIN.LAYER_DECAY: no effect (read only by SimMIM fine-tuning, as officially)')
    launch = describe_launch()
    logger.info(f'rank {rank} of {world_size} on {device} (pid {os.getpid()}{", " + launch if launch else ""})')


def run(args) -> None:
    config = get_config(args)
    check_data_path(config, eval_only=config.EVAL_MODE or config.THROUGHPUT_MODE)
    rank, world_size, device = init_distributed(config.LOCAL_RANK)
    config = scale_learning_rates(config, world_size)
    logger = create_logger(config.OUTPUT, rank, config.MODEL.NAME)
    log_setup(config, logger, rank, world_size, device)
    trainer = Trainer(config, rank, world_size, device, logger)
    trainer.start()
    trainer.prepare()
    freeze_startup_objects()
    if config.THROUGHPUT_MODE:
        trainer.throughput()
    elif config.EVAL_MODE:
        trainer.evaluate()
    else:
        trainer.fit()


def main(argv=None):
    args = parse_args(argv)
    try:
        with exit_on_errors():
            run(args)
    except Preempted as e:  # the log says where the run stopped; the exit status says which signal stopped it
        sys.exit(128 + e.signum)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
