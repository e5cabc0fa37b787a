"""ImageNet-style folders (``train/`` and ``val/``, one sub-folder per class) with timm's transforms and mixup.

The order of the training samples and every random choice of their augmentation depend only on (SEED, epoch,
sample index), never on the worker that loads them or on where a run stopped: a run resumed mid-epoch sees the
same batches and the same augmented images as an uninterrupted one.
"""
import contextlib
import os
import random
import signal
from typing import Dict, Iterator, List, Optional, Tuple

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
    """Open an image as 8-bit RGB; a broken or truncated file is an error that names it (never skipped silently).

    16-bit images are scaled by their bit depth (65535 becomes 255) instead of being clipped; images whose values
    have no defined range (32-bit integer or float) are refused.
    """
    try:
        with open(path, 'rb') as f:
            image = Image.open(f)
            if image.mode.startswith('I;16'):
                pixels = np.asarray(image, dtype=np.uint32)
                return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8)).convert('RGB')
            if image.mode in ('I', 'F'):
                kind = '32-bit integer' if image.mode == 'I' else 'floating point'
                raise DataError(f'cannot read image {path}: mode {image.mode} ({kind}) has no defined value range; '
                                'convert it to 8 or 16 bits')
            return image.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f'cannot read image {path}: {e}') from None


class CheckedImageFolder(ImageFolder):
    """``ImageFolder`` that follows directory links but stops at a link loop with an error naming it.

    torchvision's walk (``os.walk(followlinks=True)``) would go round a loop until the path is too long, listing
    its images again and again, under the wrong class.
    """

    @staticmethod
    def make_dataset(directory: str, class_to_idx: Dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> List[Tuple[str, int]]:
        for class_name in sorted(class_to_idx):
            _check_link_loops(os.path.join(directory, class_name))
        return ImageFolder.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)


def _check_link_loops(folder: str, ancestors: Tuple[str, ...] = ()) -> None:
    real = os.path.realpath(folder)
    if real in ancestors:
        raise DataError(f'directory link loop: {folder} leads back to {real}')
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                _check_link_loops(entry.path, ancestors + (real,))


def build_dataset(config, split: str, is_training: bool) -> ImageFolder:
    root = os.path.join(config.DATA.DATA_PATH, split)
    if not config.DATA.DATA_PATH or not os.path.isdir(root):
        raise DataError(f'data folder not found: {root or "(DATA.DATA_PATH is empty; pass --data-path)"}')
    try:
        dataset = CheckedImageFolder(root, transform=build_transform(config, is_training), loader=load_image)
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


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (SEED, epoch, index...), from numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


class EpochSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (shuffled with SEED + epoch) that can start an epoch at a given batch, and that hands
    the dataset ``(index, epoch)`` keys so that :class:`SeededSamples` can seed each sample's augmentation."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.start_batch = 0
        self.batches_per_epoch = self.num_samples // batch_size  # the loader drops the last partial batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self):
        indices = list(super().__iter__())[self.start_batch * self.batch_size:]
        return iter([(index, self.epoch) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start_batch * self.batch_size


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose sample ``(index, epoch)`` is transformed with torch, numpy and ``random`` seeded from
    (SEED, epoch, index): the same augmentation whichever worker loads it, and after any resume."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, epoch = key
        seed_everything(derived_seed(self.seed, epoch, index))
        return self.dataset[index]


def init_worker(worker_id: int) -> None:
    """Loader workers leave SIGTERM and SIGUSR1 to the trainer (which stops at a step boundary and then ends
    them, see :func:`batches`); the default action would kill them first and fail the next batch."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@contextlib.contextmanager
def batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """Iterate ``loader`` and always end its workers peacefully afterwards, an error included: they ignore SIGTERM
    (``init_worker``), which is how multiprocessing would end them at exit."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, '_shutdown_workers', None)
        if shutdown is not None:
            shutdown()


def build_loader(config, eval_only: bool = False):
    """Datasets, distributed loaders and the mixup function.

    The training order depends only on (SEED, epoch) (``EpochSampler.set_epoch``), each sample's augmentation on
    (SEED, epoch, index) (``SeededSamples``).
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
                       torch.cuda.is_available(), worker_init_fn=init_worker, persistent_workers=False)
    sampler_val = ShardSampler(dataset_val, world_size, rank)
    loader_val = torch.utils.data.DataLoader(dataset_val, sampler=sampler_val, batch_size=config.DATA.BATCH_SIZE,
                                             drop_last=False, **loader_args)
    if dataset_train is None:
        return None, dataset_val, None, loader_val, None
    sampler_train = EpochSampler(dataset_train, world_size, rank, config.SEED, config.DATA.BATCH_SIZE)
    loader_train = torch.utils.data.DataLoader(SeededSamples(dataset_train, config.SEED), sampler=sampler_train,
                                               batch_size=config.DATA.BATCH_SIZE, drop_last=True, **loader_args)
    batches = sampler_train.batches_per_epoch
    if batches == 0:
        raise DataError(f'{config.DATA.DATA_PATH}/train has {len(dataset_train)} images, {len(sampler_train)} per '
                        f'process: fewer than one batch of {config.DATA.BATCH_SIZE}')
    if config.TRAIN.ACCUMULATION_STEPS > batches:
        raise DataError(f'TRAIN.ACCUMULATION_STEPS {config.TRAIN.ACCUMULATION_STEPS} is more than the {batches} '
                        'batches of an epoch per process: the optimizer would never step')
    return dataset_train, dataset_val, loader_train, loader_val, build_mixup(config)


def build_mixup(config) -> Optional[Mixup]:
    """timm's batch mixup/cutmix (soft targets, label smoothing included), or None when both are off."""
    if not (config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None):
        return None
    return Mixup(mixup_alpha=config.AUG.MIXUP, cutmix_alpha=config.AUG.CUTMIX, cutmix_minmax=config.AUG.CUTMIX_MINMAX,
                 prob=config.AUG.MIXUP_PROB, switch_prob=config.AUG.MIXUP_SWITCH_PROB, mode=config.AUG.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=config.MODEL.NUM_CLASSES)
