"""Train a detection (mmdet) or segmentation (mmseg) config with mmengine's Runner; see tools/dist_train.sh.

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse

from mm_runner import add_common_args, allow_runner_checkpoints, load_config, run_or_exit
from mmengine.runner import Runner


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--resume', action='store_true', help='resume from the latest checkpoint in work-dir')
    add_common_args(parser)
    args = parser.parse_args()
    allow_runner_checkpoints()
    cfg = load_config(args)
    cfg.resume = args.resume
    run_or_exit(lambda: Runner.from_cfg(cfg).train())


if __name__ == '__main__':
    main()
