"""Tiny generated data sets of rectangles and ellipses, in COCO instance format and in ADE20K format, and
small configs that inherit the project's vHeat configs and train on them (tests, learning check).
"""
import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

CLASSES = ('rectangle', 'ellipse')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _draw_image(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """A noisy background with 1-3 non-overlapping coloured shapes; returns the image and (class, mask) pairs."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    occupied = np.zeros((size, size), bool)
    shapes = []
    for _ in range(rng.integers(1, 4)):
        for _ in range(20):  # find a free place
            w, h = rng.integers(size // 5, size // 2, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            mask = np.zeros((size, size), np.uint8)
            label = int(rng.integers(0, len(CLASSES)))
            if label == 0:
                cv2.rectangle(mask, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), 1, -1)
            else:
                cv2.ellipse(mask, (int(x + w // 2), int(y + h // 2)), (int(w // 2), int(h // 2)), 0, 0, 360, 1, -1)
            mask = mask.astype(bool)
            if not (mask & occupied).any():
                break
        else:
            continue
        occupied |= mask
        image[mask] = rng.integers(120, 256, 3)
        shapes.append((label, mask))
    return image, shapes


def make_coco(root: str, num_train: int, num_val: int, size: int = 128, seed: int = 0) -> Dict[str, str]:
    """Writes root/{train,val}/*.jpg and root/annotations/{train,val}.json with boxes and polygon masks."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = _draw_image(rng, size)
            name = f'{i:05d}.jpg'
            cv2.imwrite(os.path.join(root, split, name), image)
            images.append(dict(id=i + 1, file_name=name, width=size, height=size))
            for label, mask in shapes:
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=label + 1, iscrowd=0,
                    bbox=[x, y, w, h], area=float(mask.sum()),
                    segmentation=[c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]))
        os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
        with open(os.path.join(root, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)]), f)
    return dict(root=root)


def make_ade(root: str, num_train: int, num_val: int, size: int = 128, seed: int = 0) -> Dict[str, str]:
    """Writes root/images/{training,validation}/*.jpg and root/annotations/.../*.png in ADE20K's convention:
    0 is 'unlabelled' (ignored through reduce_zero_label), 1 background, 2 rectangle, 3 ellipse."""
    rng = np.random.default_rng(seed)
    for split, count in (('training', num_train), ('validation', num_val)):
        os.makedirs(os.path.join(root, 'images', split), exist_ok=True)
        os.makedirs(os.path.join(root, 'annotations', split), exist_ok=True)
        for i in range(count):
            image, shapes = _draw_image(rng, size)
            label_map = np.ones((size, size), np.uint8)
            for label, mask in shapes:
                label_map[mask] = label + 2
            cv2.imwrite(os.path.join(root, 'images', split, f'{i:05d}.jpg'), image)
            cv2.imwrite(os.path.join(root, 'annotations', split, f'{i:05d}.png'), label_map)
    return dict(root=root)


TINY_BACKBONE = dict(dims=16, depths=[1, 1, 1, 1], img_size=64, drop_path_rate=0.0, init_cfg=None)


def detection_config(path: str, data_root: str, max_iters: int, size: int = 128, batch_size: int = 2,
                     lr: float = 1e-4, backbone: Dict = TINY_BACKBONE) -> str:
    """Writes a config inheriting mask_rcnn_fpn_coco_tiny.py with a small backbone on the shapes set."""
    dims = backbone['dims']
    pipeline_train = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(size, size), keep_ratio=True), dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')]
    pipeline_test = [
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(size, size), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]

    def loader(split, pipeline, shuffle):
        return dict(batch_size=batch_size if shuffle else 1, num_workers=0, persistent_workers=False,
                    sampler=dict(type='DefaultSampler', shuffle=shuffle), batch_sampler=None,
                    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=CLASSES),
                                 ann_file=f'annotations/{split}.json', data_prefix=dict(img=f'{split}/'),
                                 filter_cfg=dict(filter_empty_gt=shuffle), pipeline=pipeline))

    evaluator = dict(type='CocoMetric', ann_file=os.path.join(data_root, 'annotations/val.json'),
                     metric=['bbox', 'segm'], format_only=False)
    cfg = dict(
        _base_=[os.path.join(REPO, 'detection/configs/vheat/mask_rcnn_fpn_coco_tiny.py')],
        model=dict(backbone=backbone, neck=dict(in_channels=[dims * 2 ** i for i in range(4)]),
                   roi_head=dict(bbox_head=dict(num_classes=len(CLASSES)),
                                 mask_head=dict(num_classes=len(CLASSES))),
                   test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100))),
        train_dataloader=loader('train', pipeline_train, True),
        test_dataloader=loader('val', pipeline_test, False), test_evaluator=evaluator,
        **_short_schedule(max_iters, lr))
    return _write(path, cfg)


def segmentation_config(path: str, data_root: str, max_iters: int, size: int = 128, batch_size: int = 2,
                        lr: float = 1e-4, backbone: Dict = TINY_BACKBONE) -> str:
    """Writes a config inheriting upernet_vheat_160k_ade20k_512x512_tiny.py with a small backbone and heads."""
    dims = backbone['dims']
    pipeline_train = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    pipeline_test = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]
    tta_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='TestTimeAug', transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]

    def loader(split, pipeline, shuffle):
        return dict(batch_size=batch_size if shuffle else 1, num_workers=0, persistent_workers=False,
                    sampler=dict(type='DefaultSampler', shuffle=shuffle),
                    dataset=dict(type='BaseSegDataset', data_root=data_root, reduce_zero_label=True,
                                 img_suffix='.jpg', seg_map_suffix='.png',
                                 metainfo=dict(classes=('background',) + CLASSES),
                                 data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
                                 pipeline=pipeline))

    evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    cfg = dict(
        _base_=[os.path.join(REPO, 'segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_tiny.py')],
        model=dict(data_preprocessor=dict(size=(size, size)), backbone=backbone,
                   decode_head=dict(in_channels=[dims * 2 ** i for i in range(4)], channels=64,
                                    num_classes=len(CLASSES) + 1),
                   auxiliary_head=dict(in_channels=dims * 4, channels=32, num_classes=len(CLASSES) + 1)),
        train_dataloader=loader('training', pipeline_train, True),
        test_dataloader=loader('validation', pipeline_test, False),
        tta_pipeline=tta_pipeline, test_evaluator=evaluator,
        **_short_schedule(max_iters, lr))
    return _write(path, cfg)


def _short_schedule(max_iters: int, lr: float) -> Dict:
    return dict(
        train_cfg=dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters),
        val_cfg=None, val_dataloader=None, val_evaluator=None,  # evaluation: tools/test.py
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                              end=max(1, min(max_iters // 10, 50)))],
        optim_wrapper=dict(optimizer=dict(lr=lr)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=max(1, max_iters // 20)),
                           checkpoint=dict(type='DurableCheckpointHook', by_epoch=False, interval=max_iters,
                                           max_keep_ckpts=1)),
        log_processor=dict(by_epoch=False), randomness=dict(seed=0))


def _write(path: str, cfg: Dict) -> str:
    with open(path, 'w') as f:
        f.write(''.join(f'{key} = {value!r}\n' for key, value in cfg.items()))
    return path
