"""The trainer's data: ImageNet-style folders, the official zip layout (``--zip``), the Hugging Face hub's layout
(``DATA.DATASET hfds``: parquet files, a ``save_to_disk`` folder or a hub name), WebDataset tar shards
(``DATA.DATASET wds``, streamed), or torchvision's standard data sets, with timm's transforms and mixup.

The order of the training samples and every random choice of their augmentation depend only on (SEED, epoch,
sample index), never on the worker that loads them or on where a run stopped: a run resumed mid-epoch sees the
same batches and the same augmented images as an uninterrupted one. The same images give the same run whether
they come from a folder or from its zip (``tools/dataset_converters/folder_to_zip.py``), with any cache mode.
"""
import contextlib
import os
import signal
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup, create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.datasets import ImageFolder

from . import augment  # noqa: F401  (registers the official RandAugment posterize, see augment.py)
from .hub import HubImageDataset, check_source
from .images import DataError, load_image
from .seeding import derived_seed, seed_everything
from .shards import ShardStream, count_samples, split_shards
from .standard import STANDARD_DATASETS, standard_dataset
from .zipdata import ZipImageDataset

DATASETS = ('imagenet', 'hfds', 'wds') + STANDARD_DATASETS


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


def input_channels(config) -> int:
    """The model's input channels: MODEL.VHEAT.IN_CHANS, or a timm model's ``in_chans`` keyword (default 3)."""
    if config.MODEL.TYPE == 'timm':
        return int(config.MODEL.TIMM.KWARGS.get('in_chans', 3))
    return config.MODEL.VHEAT.IN_CHANS


def build_dataset(config, split: str, is_training: bool, rank: int = 0, world_size: int = 1):
    """The ``split`` ('train' or 'val') of ``DATA.DATASET``, transformed for training or for evaluation. With
    ``DATA.ZIP_MODE``, ``DATA.CACHE_MODE`` says which images this rank holds in memory: all ('full'), its shard
    ('part': every ``world_size``-th from ``rank``; evaluation reads only its shard, and so does training then, see
    EpochSampler), or none ('no')."""
    transform = build_transform(config, is_training, normalize=is_training)  # evaluation: BatchNormalize
    mode = 'L' if input_channels(config) == 1 else 'RGB'
    path = config.DATA.DATA_PATH
    if config.DATA.DATASET == 'hfds':
        return HubImageDataset(path, split, config.MODEL.NUM_CLASSES, transform, mode)
    if config.DATA.DATASET == 'wds':
        shards, lengths, classes = split_shards(path, split, shard_pattern(config, split))
        return ShardStream(shards, lengths or [count_samples(s) for s in shards], config.MODEL.NUM_CLASSES, transform,
                           config.DATA.BATCH_SIZE, is_training, config.SEED, rank, world_size,
                           config.DATA.NUM_WORKERS, config.DATA.WDS.SHUFFLE_BUFFER, mode, classes)
    if config.DATA.DATASET != 'imagenet':
        limit = config.DATA.TRAIN_SUBSET if split == 'train' else 0
        return standard_dataset(config.DATA.DATASET, path, split, transform, mode, limit)
    if config.DATA.ZIP_MODE:
        cache = {'no': None, 'full': (0, 1), 'part': (rank, world_size)}[config.DATA.CACHE_MODE]
        return ZipImageDataset(os.path.join(path, f'{split}.zip'), os.path.join(path, f'{split}_map.txt'),
                               config.MODEL.NUM_CLASSES, transform, cache, mode)
    root = os.path.join(path, split)
    if not path or not os.path.isdir(root):
        raise DataError(f'data folder not found: {root or "(DATA.DATA_PATH is empty; pass --data-path)"}')
    try:
        return CheckedImageFolder(root, transform=transform, loader=lambda p: load_image(p, mode))
    except FileNotFoundError as e:
        raise DataError(f'{root}: {e}') from None


def shard_pattern(config, split: str) -> str:
    """The brace pattern of ``split``'s WebDataset shards ('': from ``_info.json``)."""
    return config.DATA.WDS.TRAIN if split == 'train' else config.DATA.WDS.VAL


def check_data_path(config, eval_only: bool) -> None:
    """That the data are where the config says, before the run writes anything: the split folders, the zip files
    and their maps, or a standard data set's files (a DataError naming what is missing)."""
    path = config.DATA.DATA_PATH
    splits = ('val',) if eval_only else ('train', 'val')
    if not path and config.DATA.DATASET in ('hfds', 'wds'):
        raise DataError(f'{config.DATA.DATASET}: DATA.DATA_PATH is empty; pass --data-path')
    if config.DATA.DATASET == 'hfds':
        return check_source(path, eval_only)
    if config.DATA.DATASET == 'wds':
        for split in splits:
            split_shards(path, split, shard_pattern(config, split))
        return
    if config.DATA.DATASET != 'imagenet':
        from .standard import HOW_TO_GET
        if not path or not os.path.isdir(path):
            where = path or '(DATA.DATA_PATH is empty; pass --data-path)'
            raise DataError(f'{config.DATA.DATASET}: data folder not found: {where}; {HOW_TO_GET[config.DATA.DATASET]}')
        return
    for split in splits:
        wanted = [f'{split}.zip', f'{split}_map.txt'] if config.DATA.ZIP_MODE else [split]
        for name in wanted:
            full = os.path.join(path, name)
            if not path or not os.path.exists(full):
                what = 'zip data' if config.DATA.ZIP_MODE else 'data folder'
                raise DataError(f'{what} not found: {full if path else "(DATA.DATA_PATH is empty; pass --data-path)"}')


def normalization(config) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """ImageNet's mean and std; for one input channel their means (as timm adapts a 3-channel config)."""
    if input_channels(config) == 1:
        return (float(np.mean(IMAGENET_DEFAULT_MEAN)),), (float(np.mean(IMAGENET_DEFAULT_STD)),)
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def build_transform(config, is_training: bool, normalize: bool = True):
    """timm's transforms as the official trainer builds them. As there (Swin-Transformer's rule), images of at
    most 32 px are not resized: training crops at random from the image padded by 4 px (``RandomCrop`` instead of
    ``RandomResizedCrop``), evaluation takes the centre ``IMG_SIZE`` square, zero-padded where the image is
    smaller (28 px Fashion-MNIST at 32).

    ``normalize=False`` (evaluation): uint8 tensors, which :class:`BatchNormalize` turns into the same float values
    where the model is, once per batch (timm's loader does the same): a tenth less CPU time per image, a quarter of
    the bytes to collate and copy. Training keeps per-image normalisation, which its random erasing needs."""
    size, mean_std = config.DATA.IMG_SIZE, normalization(config)
    small = size <= 32
    if is_training:
        auto_augment = config.AUG.AUTO_AUGMENT
        transform = create_transform(
            size, is_training=True, scale=tuple(config.AUG.SCALE), hflip=config.AUG.HFLIP,
            color_jitter=config.AUG.COLOR_JITTER or None,
            auto_augment=auto_augment if auto_augment and auto_augment != 'none' else None,
            re_prob=config.AUG.REPROB, re_mode=config.AUG.REMODE, re_count=config.AUG.RECOUNT,
            interpolation=config.DATA.INTERPOLATION, mean=mean_std[0], std=mean_std[1])
        if small:
            transform.transforms[0] = transforms.RandomCrop(size, padding=4, pad_if_needed=True)
        return transform
    if small:
        to_tensor = [transforms.ToTensor(), transforms.Normalize(*mean_std)] if normalize else \
            [transforms.PILToTensor()]
        return transforms.Compose([transforms.CenterCrop(size), *to_tensor])
    return create_transform(size, is_training=False, crop_pct=0.875 if config.TEST.CROP else 1.0,
                            interpolation=config.DATA.INTERPOLATION, mean=mean_std[0], std=mean_std[1],
                            normalize=normalize)


class BatchNormalize(torch.nn.Module):
    """What ``ToTensor`` and ``Normalize`` do to each image, on a uint8 batch (N, C, H, W) where it is: the same
    float32 operations in the same order, so the same values; float batches pass unchanged."""

    def __init__(self, config):
        super().__init__()
        mean, std = normalization(config)
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return images.float().div(255).sub_(self.mean.to(images.device)).div_(self.std.to(images.device))


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


class EpochSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (shuffled with SEED + epoch) that can start an epoch at a given batch, and that hands
    the dataset ``(index, epoch)`` keys so that :class:`SeededSamples` can seed each sample's augmentation.

    ``rank_shards``: instead of a fresh split of the whole set every epoch, each rank trains on its fixed shard
    (every ``num_replicas``-th image from ``rank``), reshuffled each epoch; what the official trainer does with
    ``--zip --cache-mode part`` (each rank then reads only the images it holds). Every rank runs the batches of
    the smallest shard, so that no rank waits for a step the others do not take.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, batch_size: int, rank_shards: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.rank_shards = batch_size, rank_shards
        self.start_batch = 0
        per_rank = len(dataset) // num_replicas if rank_shards else self.num_samples
        self.batches_per_epoch = per_rank // batch_size  # the loader drops the last partial batch

    resumes_mid_epoch = True

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def _epoch_indices(self) -> List[int]:
        if not self.rank_shards:
            return list(super().__iter__())
        shard = torch.arange(self.rank, len(self.dataset), self.num_replicas)
        order = torch.randperm(len(shard), generator=torch.Generator().manual_seed(
            derived_seed(self.seed, self.epoch, self.rank)))
        return shard[order][:self.batches_per_epoch * self.batch_size].tolist()

    def __iter__(self):
        indices = self._epoch_indices()[self.start_batch * self.batch_size:]
        return iter([(index, self.epoch) for index in indices])

    def __len__(self) -> int:
        total = self.batches_per_epoch * self.batch_size if self.rank_shards else self.num_samples
        return total - self.start_batch * self.batch_size


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose sample ``(index, epoch)`` is transformed with torch, numpy and ``random`` seeded from
    (SEED, epoch, index): the same augmentation whichever worker loads it, and after any resume."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, epoch = key
        seed_everything(derived_seed(self.seed, epoch, index), cuda=False)
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


def build_loader(config, eval_only: bool = False, logger=None):
    """Datasets, distributed loaders and the mixup function: (train set, val set, train loader, val loader,
    mixup); the training parts are None with ``eval_only``.

    The training order depends only on (SEED, epoch) (``EpochSampler.set_epoch``), each sample's augmentation on
    (SEED, epoch, index) (``SeededSamples``).
    """
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    datasets = {}
    for split in ('val',) if eval_only else ('val', 'train'):
        datasets[split] = data = build_dataset(config, split, split == 'train', rank, world_size)
        if config.DATA.ZIP_MODE and logger is not None:
            logger.info(f'rank {rank}: {data.cached_images} of {len(data)} {split} images held in memory '
                        f'({data.cached_bytes / 2 ** 20:.1f} MiB, --cache-mode {config.DATA.CACHE_MODE})')
    dataset_val, dataset_train = datasets['val'], datasets.get('train')
    classes_val = getattr(dataset_val, 'classes', None)
    if dataset_train is not None and config.DATA.DATASET == 'imagenet' and not config.DATA.ZIP_MODE \
            and dataset_train.classes != classes_val:
        only_train = sorted(set(dataset_train.classes) - set(classes_val))
        only_val = sorted(set(classes_val) - set(dataset_train.classes))
        raise DataError(f'class folders differ between train and val (only in train: {only_train[:5]}, '
                        f'only in val: {only_val[:5]})')
    if classes_val is not None and len(classes_val) != config.MODEL.NUM_CLASSES:
        raise DataError(f'{config.DATA.DATA_PATH} has {len(classes_val)} classes but MODEL.NUM_CLASSES is '
                        f'{config.MODEL.NUM_CLASSES}')
    loader_args = dict(num_workers=config.DATA.NUM_WORKERS, pin_memory=config.DATA.PIN_MEMORY and
                       torch.cuda.is_available(), worker_init_fn=init_worker, persistent_workers=False)
    if isinstance(dataset_val, ShardStream):  # each loader worker makes its own batches
        loader_val = torch.utils.data.DataLoader(dataset_val, batch_size=None, **loader_args)
    else:
        loader_val = torch.utils.data.DataLoader(dataset_val, sampler=ShardSampler(dataset_val, world_size, rank),
                                                 batch_size=config.DATA.BATCH_SIZE, drop_last=False, **loader_args)
    if dataset_train is None:
        return None, dataset_val, None, loader_val, None
    if isinstance(dataset_train, ShardStream):
        loader_train = torch.utils.data.DataLoader(dataset_train, batch_size=None, **loader_args)
        if logger is not None:
            shards = sum(len(dataset_train.worker_shards(rank, w)) for w in range(dataset_train.workers))
            logger.info(f'rank {rank}: {shards} of {len(dataset_train.shards)} training shards; '
                        f'{dataset_train.batches_per_epoch} batches an epoch on every rank, '
                        f'{dataset_train.images_left_out} of {sum(dataset_train.lengths)} images left out each epoch')
        images = sum(dataset_train.lengths)
    else:
        rank_shards = config.DATA.RANK_SHARDS or (config.DATA.ZIP_MODE and config.DATA.CACHE_MODE == 'part')
        sampler_train = EpochSampler(dataset_train, world_size, rank, config.SEED, config.DATA.BATCH_SIZE,
                                     rank_shards)
        loader_train = torch.utils.data.DataLoader(SeededSamples(dataset_train, config.SEED), sampler=sampler_train,
                                                   batch_size=config.DATA.BATCH_SIZE, drop_last=True, **loader_args)
        images = len(dataset_train)
    per_epoch = train_epochs(loader_train).batches_per_epoch
    if per_epoch == 0:
        raise DataError(f'{config.DATA.DATA_PATH} has {images} training images: fewer than one batch of '
                        f'{config.DATA.BATCH_SIZE} per process (and loader worker, for shards)')
    if config.TRAIN.ACCUMULATION_STEPS > per_epoch:
        raise DataError(f'TRAIN.ACCUMULATION_STEPS {config.TRAIN.ACCUMULATION_STEPS} is more than the {per_epoch} '
                        'batches of an epoch per process: the optimizer would never step')
    return dataset_train, dataset_val, loader_train, loader_val, build_mixup(config)


def train_epochs(loader: torch.utils.data.DataLoader):
    """What plans the training loader's epochs: its EpochSampler, or the ShardStream itself. Both have
    ``batches_per_epoch``, ``set_epoch(epoch, start_batch)`` and ``resumes_mid_epoch``."""
    return loader.dataset if isinstance(loader.dataset, ShardStream) else loader.sampler


def build_mixup(config) -> Optional[Mixup]:
    """timm's batch mixup/cutmix (soft targets, label smoothing included), or None when both are off."""
    if not (config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None):
        return None
    return Mixup(mixup_alpha=config.AUG.MIXUP, cutmix_alpha=config.AUG.CUTMIX, cutmix_minmax=config.AUG.CUTMIX_MINMAX,
                 prob=config.AUG.MIXUP_PROB, switch_prob=config.AUG.MIXUP_SWITCH_PROB, mode=config.AUG.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=config.MODEL.NUM_CLASSES)
