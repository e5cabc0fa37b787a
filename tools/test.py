"""Evaluate a checkpoint of a detection (COCO bbox/segm mAP) or segmentation (mIoU) config; see
tools/dist_test.sh.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse

from mm_runner import add_common_args, allow_runner_checkpoints, load_config, load_weights_strictly, run_or_exit
from mmengine.runner import Runner


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model and tta_pipeline (segmentation)")
    add_common_args(parser)
    args = parser.parse_args()
    allow_runner_checkpoints()
    cfg = load_config(args)
    cfg.load_from = None  # loaded below, strictly: mmengine would only log the keys of a checkpoint that does not fit
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            parser.error(f'{args.config} defines no tta_model/tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    def test():
        runner = Runner.from_cfg(cfg)
        load_weights_strictly(runner.model, args.checkpoint)
        runner.test()
    run_or_exit(test)


if __name__ == '__main__':
    main()
