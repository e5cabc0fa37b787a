"""ImageNet-style folders (``train/`` and ``val/``, one sub-folder per class) with timm's transforms and mixup."""
import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from timm.data import Mixup, create_transform
from torchvision.datasets import ImageFolder

from . import augment  # noqa: F401  (registers the official RandAugment posterize, see augment.py)


class DataError(RuntimeError):
    """The dataset folder is missing, malformed, or holds an unreadable image."""


def load_image(path: str) -> Image.Image:
    """Open an image as RGB; a broken or truncated file is an error that names it (never skipped silently)."""
    try:
        with open(path, 'rb') as f:
            return Image.open(f).convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f'cannot read image {path}: {e}') from None


def build_dataset(config, split: str, is_training: bool) -> ImageFolder:
    root = os.path.join(config.DATA.DATA_PATH, split)
    if not config.DATA.DATA_PATH or not os.path.isdir(root):
        raise DataError(f'data folder not found: {root or "(DATA.DATA_PATH is empty; pass --data-path)"}')
    try:
        dataset = ImageFolder(root, transform=build_transform(config, is_training), loader=load_image)
    except FileNotFoundError as e:
        raise DataError(f'{root}: {e}') from None
    return dataset


def build_transform(config, is_training: bool):
    auto_augment = config.AUG.AUTO_AUGMENT
    if is_training:
        return create_transform(
            config.DATA.IMG_SIZE, is_training=True, scale=tuple(config.AUG.SCALE), hflip=config.AUG.HFLIP,
            color_jitter=config.AUG.COLOR_JITTER or None,
            auto_augment=auto_augment if auto_augment and auto_augment != 'none' else None,
            re_prob=config.AUG.REPROB, re_mode=config.AUG.REMODE, re_count=config.AUG.RECOUNT,
            interpolation=config.DATA.INTERPOLATION)
    return create_transform(config.DATA.IMG_SIZE, is_training=False, crop_pct=0.875 if config.TEST.CROP else 1.0,
                            interpolation=config.DATA.INTERPOLATION)


class ShardSampler(torch.utils.data.Sampler):
    """Every ``num_replicas``-th index from ``rank``, in order: each image on exactly one process.

    ``DistributedSampler`` pads the split to a multiple of the processes by repeating images, which would count
    some validation images twice; here the shards differ by at most one image and the totals are summed.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a loader worker from the seed torch gave it (derived from the epoch's seed)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(config, eval_only: bool = False):
    """Datasets, distributed loaders and the mixup function.

    The training order depends only on (SEED, epoch): ``DistributedSampler.set_epoch`` shuffles with
    ``SEED + epoch``, and workers are seeded from the global torch seed, which the trainer resets every epoch.
    """
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    dataset_val = build_dataset(config, 'val', is_training=False)
    dataset_train = None if eval_only else build_dataset(config, 'train', is_training=True)
    if dataset_train is not None and dataset_train.classes != dataset_val.classes:
        only_train = sorted(set(dataset_train.classes) - set(dataset_val.classes))
        only_val = sorted(set(dataset_val.classes) - set(dataset_train.classes))
        raise DataError(f'class folders differ between train and val (only in train: {only_train[:5]}, '
                        f'only in val: {only_val[:5]})')
    if len(dataset_val.classes) != config.MODEL.NUM_CLASSES:
        raise DataError(f'{config.DATA.DATA_PATH} has {len(dataset_val.classes)} classes but '
                        f'MODEL.NUM_CLASSES is {config.MODEL.NUM_CLASSES}')
    loader_args = dict(num_workers=config.DATA.NUM_WORKERS, pin_memory=config.DATA.PIN_MEMORY and
                       torch.cuda.is_available(), worker_init_fn=seed_worker,
                       persistent_workers=False)
    sampler_val = ShardSampler(dataset_val, world_size, rank)
    loader_val = torch.utils.data.DataLoader(dataset_val, sampler=sampler_val, batch_size=config.DATA.BATCH_SIZE,
                                             drop_last=False, **loader_args)
    if dataset_train is None:
        return None, dataset_val, None, loader_val, None
    sampler_train = torch.utils.data.distributed.DistributedSampler(
        dataset_train, num_replicas=world_size, rank=rank, shuffle=True, seed=config.SEED)
    loader_train = torch.utils.data.DataLoader(dataset_train, sampler=sampler_train,
                                               batch_size=config.DATA.BATCH_SIZE, drop_last=True, **loader_args)
    if len(loader_train) == 0:
        raise DataError(f'{config.DATA.DATA_PATH}/train has {len(dataset_train)} images per process '
                        f'({len(sampler_train)}), fewer than one batch of {config.DATA.BATCH_SIZE}')
    return dataset_train, dataset_val, loader_train, loader_val, build_mixup(config)


def build_mixup(config) -> Optional[Mixup]:
    """timm's batch mixup/cutmix (soft targets, label smoothing included), or None when both are off."""
    if not (config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None):
        return None
    return Mixup(mixup_alpha=config.AUG.MIXUP, cutmix_alpha=config.AUG.CUTMIX, cutmix_minmax=config.AUG.CUTMIX_MINMAX,
                 prob=config.AUG.MIXUP_PROB, switch_prob=config.AUG.MIXUP_SWITCH_PROB, mode=config.AUG.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=config.MODEL.NUM_CLASSES)
