"""Does a small vHeat detector / segmentor learn? Trains on generated shapes within a CPU time budget and
evaluates: passes when bbox mAP >= 0.5 (detection) or mIoU >= 0.7 (segmentation). Not part of the test suite.

    python tools/analysis_tools/downstream_learning_check.py --task det|seg [--minutes 15] [--work-dir DIR]
"""
import argparse
import os
import sys
import time

from mmengine.hooks import Hook
from mmengine.runner import Runner

from classification.core.cli import exit_on_errors
from classification.core.errors import UsageError
from classification.data import shapes as shapes_dataset
from classification.mm.runner import load_config

BACKBONE = dict(dims=32, depths=[1, 1, 2, 1], img_size=128, drop_path_rate=0.0, init_cfg=None)
# Narrow neck and heads (64 channels, fewer sampled RoIs): the full-width heads take several seconds an
# iteration on 2 CPU cores and would not get through enough iterations in the budget.
LIGHT_DETECTION_HEADS = dict(
    neck=dict(out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=64), bbox_head=dict(in_channels=64, fc_out_channels=256),
                  mask_roi_extractor=dict(out_channels=64), mask_head=dict(in_channels=64, conv_out_channels=64)),
    train_cfg=dict(rpn=dict(sampler=dict(num=128)), rcnn=dict(sampler=dict(num=128))))
THRESHOLDS = {'det': ('coco/bbox_mAP', 0.5), 'seg': ('mIoU', 70.0)}


class TimeBudgetHook(Hook):
    """Stops training once the budget is spent (the schedule's max_iters is only an upper bound)."""

    def __init__(self, seconds: float):
        self.deadline = time.time() + seconds

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if time.time() > self.deadline:
            runner.logger.info(f'time budget spent after {runner.iter + 1} iterations')
            runner.train_loop.stop_training = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=['det', 'seg'], required=True)
    parser.add_argument('--minutes', type=float, default=15., help='training time budget (evaluation not included)')
    parser.add_argument('--work-dir', default=None)
    args = parser.parse_args(argv)
    with exit_on_errors():
        if args.minutes <= 0:
            raise UsageError(f'--minutes must be positive, got {args.minutes}')
    run(args)


def run(args) -> None:
    work_dir = os.path.abspath(args.work_dir or f'work_dirs/learning_check_{args.task}')
    os.makedirs(work_dir, exist_ok=True)
    data_root = os.path.join(work_dir, 'data')
    if args.task == 'det':
        shapes_dataset.make_coco(data_root, num_train=200, num_val=50, size=128)
        config = shapes_dataset.detection_config(os.path.join(work_dir, 'config.py'), data_root, max_iters=100000,
                                                 size=128, batch_size=4, lr=5e-4, backbone=BACKBONE)
    else:
        shapes_dataset.make_ade(data_root, num_train=200, num_val=50, size=128)
        config = shapes_dataset.segmentation_config(os.path.join(work_dir, 'config.py'), data_root,
                                                    max_iters=100000, size=128, batch_size=4, lr=5e-4,
                                                    backbone=BACKBONE)
    cfg = load_config(argparse.Namespace(config=config, cfg_options={}, launcher='none', work_dir=work_dir))
    if args.task == 'det':
        cfg.merge_from_dict(dict(model=LIGHT_DETECTION_HEADS))
    cfg.default_hooks.checkpoint.interval = -1  # only the in-process evaluation below matters
    cfg.default_hooks.logger.interval = 20
    runner = Runner.from_cfg(cfg)
    runner.register_hook(TimeBudgetHook(args.minutes * 60))
    runner.train()
    metrics = runner.test()
    name, threshold = THRESHOLDS[args.task]
    passed = metrics[name] >= threshold
    print(f'learning check {args.task}: {name} = {metrics[name]:.3f} after {runner.iter} iterations '
          f'(threshold {threshold}): {"PASS" if passed else "FAIL"}')
    sys.exit(0 if passed else 1)


if __name__ == '__main__':
    main()
