"""Evaluate a checkpoint of a detection (COCO bbox/segm mAP) or segmentation (mIoU) config; see
tools/dist_test.sh. Official checkpoints (the release's ``vHeat_*_det.pth``, ``vHeat_*_seg.pth``) and ours load
alike, strictly.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--out FILE.pkl] [--show-dir DIR] [--work-dir DIR]
                         [--cfg-options k=v ...] [--launcher pytorch|slurm]
"""
import argparse
import os

from classification.core.cli import exit_on_errors, freeze_startup_objects, require_file
from classification.core.errors import UsageError
from classification.mm.runner import StrictRunner, add_common_args, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='checkpoint file (official layout or ours)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model and tta_pipeline (segmentation)")
    parser.add_argument('--out', help='dump the predictions to this .pkl file for offline comparison (mmdet\'s '
                        'DumpDetResults, masks as RLE; segmentation: mmengine\'s DumpResults, logits included)')
    parser.add_argument('--show-dir', help='paint the prediction on each test image into DIR/<image name> (with '
                        'several processes, as in mmdet and mmseg, only the main process\'s images)')
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must name a .pkl or .pickle file, got {args.out}')
    return args, parser


def paint_predictions(cfg, show_dir: str) -> None:
    """Paint each test image's prediction into ``show_dir/<image name>``: mmdet's visualisation hook turned on as
    its test.py does (with an absolute folder: mmdet joins a relative one to the work dir again at every
    iteration), for segmentation SegPaintEveryImageHook (segmentation/vheat/visualization.py; mmseg's paints one
    image in 50). As in both libraries only the main process paints: with several processes, its shard only."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise UsageError(f'--show-dir: {cfg.filename} has no default_hooks.visualization to paint predictions with')
    show_dir = os.path.abspath(show_dir)
    if cfg.get('default_scope') == 'mmseg':
        cfg.default_hooks.visualization = dict(hook, type='SegPaintEveryImageHook', out_dir=show_dir)
    else:
        hook.update(draw=True, test_out_dir=show_dir)


def dump_metric(cfg, out: str):
    if cfg.get('default_scope') == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


def main(argv=None):
    args, parser = parse_args(argv)
    with exit_on_errors():
        require_file(args.config, 'CONFIG', 'config file')
        require_file(args.checkpoint, 'CHECKPOINT', 'checkpoint')

    def test():
        cfg = load_config(args)
        cfg.load_from = args.checkpoint  # read by StrictRunner.load_checkpoint: converted, then strict
        if args.tta:
            if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
                parser.error(f'{args.config} defines no tta_model/tta_pipeline')
            cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
            cfg.tta_model.module = cfg.model
            cfg.model = cfg.tta_model
        if args.show_dir:
            paint_predictions(cfg, args.show_dir)
        runner = StrictRunner.from_cfg(cfg)
        if args.out:
            runner.test_evaluator.metrics.append(dump_metric(cfg, args.out))
        freeze_startup_objects()
        runner.test()
    with exit_on_errors():
        test()


if __name__ == '__main__':
    main()
