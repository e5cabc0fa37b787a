"""Parameters and FLOPs of the downstream models at the published input sizes, beside the published figures.

    python tools/analysis_tools/downstream_complexity.py [CONFIG ...] [--no-flops] [--json FILE]
        (default: the 8 configs of detection/configs/vheat and segmentation/configs/vheat, and the Swin-T Mask R-CNN
        1x and UperNet configs that mmdet and mmseg ship, the published anchors)
    python tools/analysis_tools/downstream_complexity.py --train-step [CONFIG ...] [--json FILE]
        one training iteration at the published training input (batch 1; UperNet batch 2, the least its pyramid
        pooling's BatchNorm of 1x1 maps trains with): peak memory and time (default: vHeat-T's Mask R-CNN 1x and
        UperNet beside mmdet's and mmseg's own Swin-T configs), each model in its own process

FLOPs are multiply-adds of one forward pass on one image, counted two ways: with the project's counter
(``classification.models.flops``: fvcore with the batch dimensions of a broadcasting ``matmul`` counted, as the DCT
needs) and with mmengine's (``mmengine.analysis.get_model_complexity_info``, what the libraries' ``get_flops.py``
calls, whose matmul handle drops those dimensions, as fvcore's does). The sizes and passes are those the Swin
papers' tables were counted with (mmdet / mmseg 0.x ``get_flops.py`` and ``forward_dummy``): Mask R-CNN on a
1280 x 800 input (``--shape 1280 800``), the RPN, and the box head on 1000 proposals and the mask head on 100;
UperNet on 512 x 2048, the decode head (the auxiliary head is dropped at test time).
"""
import argparse
import glob
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch

from classification.core.cli import exit_on_errors, require_file
from classification.core.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETECTION_SHAPE, SEGMENTATION_SHAPE = (1280, 800), (512, 2048)
# The published tables (the official README): (params in M, GFLOPs)
PUBLISHED = {
    'mask_rcnn_fpn_coco_tiny.py': (53, 286), 'mask_rcnn_fpn_coco_small.py': (74, 377),
    'mask_rcnn_fpn_coco_base.py': (115, 526), 'mask_rcnn_fpn_coco_tiny_ms_3x.py': (53, 286),
    'mask_rcnn_fpn_coco_small_ms_3x.py': (74, 377), 'upernet_vheat_160k_ade20k_512x512_tiny.py': (62, 948),
    'upernet_vheat_160k_ade20k_512x512_small.py': (82, 1028), 'upernet_vheat_160k_ade20k_512x512_base.py': (129, 1219),
    'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py': (48, 267),
    'swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py': (60, 945),
}
ANCHORS = (('mmdet', 'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'),
           ('mmseg', 'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'))


def default_configs() -> List[str]:
    """The 8 configs (not the seed README's aliases of them) and the two Swin-T anchors the libraries ship."""
    ours = sorted(glob.glob(os.path.join(ROOT, 'detection/configs/vheat/mask_rcnn_fpn_coco_*.py')) +
                  glob.glob(os.path.join(ROOT, 'segmentation/configs/vheat/upernet_vheat_*.py')))
    return ours + [shipped_config(package, path) for package, path in ANCHORS]


def shipped_config(package: str, path: str) -> str:
    """A config that mmdet or mmseg ships in its wheel (``mmdet/.mim/configs/...``)."""
    import importlib
    return os.path.join(os.path.dirname(importlib.import_module(package).__file__), '.mim', 'configs', path)


def build_model(cfg):
    """The model with the registry of the library the config is for (mmseg's configs set default_scope mmseg)."""
    if cfg.get('default_scope') == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules

        import segmentation.vheat  # noqa: F401
    else:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        import detection.vheat  # noqa: F401
    register_all_modules(init_default_scope=True)
    cfg.model.backbone.pop('init_cfg', None)  # counts only: no checkpoint, no download
    cfg.model.backbone.pop('pretrained', None)
    cfg.model.pop('pretrained', None)
    return MODELS.build(cfg.model)


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


class CountedPass(torch.nn.Module):
    """The forward pass the published FLOPs counted, as a module of one image tensor (for fvcore's tracer)."""

    def __init__(self, model, proposals: int = 1000, masks: int = 100):
        super().__init__()
        self.model, self.proposals, self.masks = model, proposals, masks

    def forward(self, image: torch.Tensor):
        model = self.model
        features = model.extract_feat(image)
        if not hasattr(model, 'roi_head'):  # UperNet: the decode head
            return model.decode_head(features)
        rpn = model.rpn_head(features)
        height, width = image.shape[-2:]
        generator = torch.Generator().manual_seed(0)
        corners = torch.rand(self.proposals, 2, 2, generator=generator) * torch.tensor([width, height])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
        rois = torch.cat([torch.zeros(self.proposals, 1), boxes], dim=1).to(image)
        bbox = model.roi_head._bbox_forward(features, rois)
        mask = model.roi_head._mask_forward(features, rois[:self.masks])
        return rpn, bbox['cls_score'], bbox['bbox_pred'], mask['mask_preds']


def input_shape(model) -> Tuple[int, int]:
    return SEGMENTATION_SHAPE if not hasattr(model, 'roi_head') else DETECTION_SHAPE


def flops(model, shape: Tuple[int, int], proposals: int = 1000, masks: int = 100) -> Dict[str, float]:
    """GFLOPs of the counted pass on a (1, 3, *shape) input: the project's counter and mmengine's."""
    from mmengine.analysis import get_model_complexity_info
    from mmengine.logging import MMLogger

    from classification.models.flops import flop_count
    counted = CountedPass(model, proposals, masks).eval()
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # mmengine's counter warns of every op it has no handle for
    try:
        with torch.no_grad():
            ours = flop_count(counted, (1, 3) + tuple(shape)) / 1e9
            theirs = get_model_complexity_info(counted, inputs=(torch.zeros(1, 3, *shape),), show_table=False,
                                               show_arch=False)['flops'] / 1e9
    finally:
        logger.setLevel(level)
    return {'gflops': ours, 'gflops_mmengine': theirs}


def measure(path: str, with_flops: bool = True) -> Dict[str, object]:
    from mmengine.config import Config
    model = build_model(Config.fromfile(path)).eval()
    neck = count(model.neck) if getattr(model, 'neck', None) is not None else 0.
    row = {'config': os.path.basename(path), 'backbone': count(model.backbone), 'neck': neck,
           'total': count(model)}
    row['heads'] = row['total'] - row['backbone'] - neck
    published = PUBLISHED.get(row['config'])
    row['published_params'], row['published_gflops'] = published if published else (None, None)
    if with_flops:
        row['input'] = 'x'.join(map(str, input_shape(model)))
        row.update(flops(model, input_shape(model)))
        if row['published_gflops']:
            row['difference'] = row['gflops'] / row['published_gflops'] - 1
    return row


TRAIN_STEP_CONFIGS = ('detection/configs/vheat/mask_rcnn_fpn_coco_tiny.py', ANCHORS[0],
                      'segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_tiny.py', ANCHORS[1])
DETECTION_TRAIN_SHAPE, SEGMENTATION_TRAIN_SHAPE = (800, 1333), (512, 512)  # (H, W): the 1x resize, the crop


def _config_path(entry) -> str:
    return shipped_config(*entry) if isinstance(entry, tuple) else os.path.join(ROOT, entry)


def synthetic_batch(model, generator: torch.Generator) -> dict:
    """Training images at the published training size with their annotations, through the model's data
    preprocessor: one 1333 x 800 image with 5 boxes and their masks (Mask R-CNN 1x), or two 512 x 512 crops with
    150-class label maps (UperNet: its pyramid pooling normalises 1x1 maps, which BatchNorm cannot train on one)."""
    if hasattr(model, 'roi_head'):
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData
        height, width = DETECTION_TRAIN_SHAPE
        corners = torch.rand(5, 2, 2, generator=generator) * torch.tensor([width - 1., height - 1.])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values + 16], dim=1)
        masks = torch.zeros(5, height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            mask[y0:y1, x0:x1] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.randint(0, 80, (5,), generator=generator),
                                           masks=BitmapMasks(masks.numpy(), height, width))
        samples = [sample]
    else:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        height, width = SEGMENTATION_TRAIN_SHAPE
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, height, width), generator=generator))
        samples = [sample, sample.clone()]
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator) for _ in samples]
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)


def train_step(path: str, rounds: int) -> Dict[str, object]:
    """Peak memory added by one training iteration (losses, backward, AdamW) after a warm-up one, and the median
    time of ``rounds`` iterations, of the config's model on CPU (plain BatchNorm for SyncBN)."""
    from mmengine.config import Config

    from classification.core.memory import malloc_returns_large_blocks, peak_memory
    from classification.core.timing import interleaved
    from classification.mm.runner import run_on_cpu
    malloc_returns_large_blocks()
    cfg = Config.fromfile(path)
    run_on_cpu(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    data = synthetic_batch(model, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        torch.manual_seed(0)  # the RPN's and the samplers' draws: the same proposals every time
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        optimizer.step()
    step()
    peak = peak_memory(step, torch.device('cpu'))
    seconds = interleaved({'step': step}, rounds, 0, torch.device('cpu'))['step']
    batch, _, height, width = data['inputs'].shape
    return {'config': os.path.basename(path), 'input': f'{width}x{height}', 'batch': batch,
            'peak_memory_mib': peak / 2 ** 20, 'seconds_per_iteration': seconds}


def train_steps(configs: List[str], rounds: int, json_path: Optional[str]) -> List[Dict[str, object]]:
    import sys

    from classification.core.launch import last_json_line
    rows = []
    for path in configs:
        row = last_json_line([sys.executable, os.path.abspath(__file__), '--train-step-one', path, '--rounds',
                              str(rounds)])
        rows.append(row)
        print(f'{row["config"]:70s} {row["input"]:>9s} b{row["batch"]} {row["peak_memory_mib"]:8.0f} MiB '
              f'{row["seconds_per_iteration"]:7.2f} s/iteration', flush=True)
    if json_path:
        write_json(json_path, rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='*')
    parser.add_argument('--no-flops', action='store_true', help='parameters only (no forward pass)')
    parser.add_argument('--json', help='write the table here as well')
    parser.add_argument('--train-step', action='store_true',
                        help='one training iteration at the published training input: peak memory and time')
    parser.add_argument('--rounds', type=int, default=3, help='--train-step: timed iterations (median reported)')
    parser.add_argument('--train-step-one', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with exit_on_errors():
        if args.train_step_one:
            import json
            print(json.dumps(train_step(args.train_step_one, args.rounds)))
            return
        if args.train_step:
            configs = [require_file(path, 'CONFIG', 'config file') for path in args.configs] or [
                _config_path(entry) for entry in TRAIN_STEP_CONFIGS]
            train_steps(configs, args.rounds, args.json)
            return
        configs = [require_file(path, 'CONFIG', 'config file') for path in args.configs] or default_configs()
        rows: List[Dict[str, object]] = []
        print(f'{"config":70s} {"backbone":>8s} {"neck":>6s} {"heads":>6s} {"total":>7s} {"(publ.)":>7s}  '
              f'{"input":>9s} {"GFLOPs":>8s} {"mmengine":>8s} {"(publ.)":>7s} {"diff":>6s}')
        for path in configs:
            row = measure(path, not args.no_flops)
            rows.append(row)
            line = (f'{row["config"]:70s} {row["backbone"]:8.2f} {row["neck"]:6.2f} {row["heads"]:6.2f} '
                    f'{row["total"]:7.2f} {_or_dash(row["published_params"]):>7s}')
            if 'gflops' in row:
                line += (f'  {row["input"]:>9s} {row["gflops"]:8.1f} {row["gflops_mmengine"]:8.1f} '
                         f'{_or_dash(row["published_gflops"]):>7s} {_percent(row.get("difference")):>6s}')
            print(line, flush=True)
        if args.json:
            write_json(args.json, rows)


def _or_dash(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:g}'


def _percent(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:+.1f}%'


if __name__ == '__main__':
    main()
