"""One image through a detection (Mask R-CNN) or segmentation (UperNet) model, its prediction painted on it.

    python tools/misc/image_demo.py IMAGE CONFIG CHECKPOINT --out-dir DIR [--device cpu|cuda[:N]] [--score-thr 0.3]

The checkpoint may be the official release's (``vHeat_tiny_det.pth``, ``vHeat_tiny_seg.pth``) or ours: it is read
weights-only, converted and loaded strictly; the class names and palette come from its ``meta`` when it has them.
Writes ``DIR/<image name>`` (the painted prediction) and prints what was found.
"""
import argparse
import os
from types import SimpleNamespace

from classification.core.cli import exit_on_errors, require_device, require_file, require_positive
from classification.mm.runner import load_config, load_weights_strictly, run_on_cpu
from classification.models.serialization import load_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out-dir', required=True, help='folder for the painted image')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection: boxes below this score are not drawn')
    return parser.parse_args(argv)


def _without_annotations(pipeline):
    return [step for step in pipeline if step.get('type') not in ('LoadAnnotations', 'mmdet.LoadAnnotations')]


def build(cfg, checkpoint: dict, path: str, device):
    """The config's model with the checkpoint's weights (strict), class names and palette, on ``device``."""
    from mmengine.registry import MODELS, init_default_scope
    cfg.model.backbone.init_cfg = None  # every weight comes from the checkpoint
    init_default_scope(cfg.get('default_scope'))
    model = MODELS.build(cfg.model)
    load_weights_strictly(model, checkpoint, path)
    dataset = cfg.test_dataloader.dataset
    meta = checkpoint.get('meta', {}).get('dataset_meta') or dict(dataset.get('metainfo', {}))
    model.dataset_meta = {k.lower(): v for k, v in meta.items()}
    dataset.pipeline = _without_annotations(dataset.pipeline)
    if 'test_pipeline' in cfg:
        cfg.test_pipeline = _without_annotations(cfg.test_pipeline)
    model.cfg = cfg
    return model.to(device).eval()


def predict_and_paint(model, cfg, image: str, out_file: str, score_thr: float) -> str:
    """Run the model on ``image``, write the painted prediction to ``out_file``; a one-line summary."""
    import mmcv
    if cfg.get('default_scope') == 'mmseg':
        from mmseg.apis import inference_model, show_result_pyplot
        result = inference_model(model, image)
        show_result_pyplot(model, image, result, show=False, draw_gt=False, out_file=out_file)
        found = result.pred_sem_seg.data.unique().tolist()
        names = model.dataset_meta.get('classes', ())
        return 'classes present: ' + ', '.join(names[i] if i < len(names) else str(i) for i in found)
    from mmdet.apis import inference_detector
    from mmengine.registry import VISUALIZERS
    result = inference_detector(model, image)
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='image_demo'))
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('prediction', mmcv.imread(image, channel_order='rgb'), data_sample=result,
                              draw_gt=False, show=False, out_file=out_file, pred_score_thr=score_thr)
    kept = int((result.pred_instances.scores >= score_thr).sum())
    return f'{kept} of {len(result.pred_instances)} detections with score >= {score_thr}'


def main(argv=None):
    args = parse_args(argv)
    with exit_on_errors():
        require_file(args.image, 'IMAGE', 'image')
        require_file(args.config, 'CONFIG', 'config file')
        require_file(args.checkpoint, 'CHECKPOINT', 'checkpoint')
        require_positive(args.score_thr, '--score-thr', minimum=0)
        device = require_device(args.device)

    def demo():
        cfg = load_config(SimpleNamespace(config=args.config, cfg_options={}, launcher='none', work_dir=None))
        if device.type == 'cpu':
            run_on_cpu(cfg)
        model = build(cfg, load_checkpoint(args.checkpoint), args.checkpoint, device)
        os.makedirs(args.out_dir, exist_ok=True)
        out_file = os.path.join(args.out_dir, os.path.basename(args.image))
        summary = predict_and_paint(model, cfg, args.image, out_file, args.score_thr)
        print(f'{args.image}: {summary}; painted prediction written to {out_file}')
    with exit_on_errors():
        demo()


if __name__ == '__main__':
    main()
