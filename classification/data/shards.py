"""ImageNet as WebDataset tar shards (``DATA.DATASET wds``), streamed: each sample is ``<key>.jpg`` (or .jpeg, .png,
.webp) with ``<key>.cls`` (the label as text), as timm's and the hub's WebDataset copies of ImageNet hold them.

``DATA.WDS.TRAIN`` / ``DATA.WDS.VAL``: brace patterns of each split's shards under ``DATA.DATA_PATH``
(``imagenet-train-{000000..001023}.tar``); empty: the splits of ``<DATA_PATH>/_info.json`` (timm's format, which
``tools/dataset_converters/folder_to_shards.py`` writes), which also gives each shard's sample count (otherwise the
shards' headers are read once to count them).

Distribution: each process keeps the shards ``rank, rank + world_size, ...`` of a split, and each loader worker of it
every ``workers``-th of those; the order of a worker's shards and of its samples (within a buffer of
``DATA.WDS.SHUFFLE_BUFFER``) change every epoch, seeded from (SEED, epoch, rank, worker), and each sample's
augmentation is seeded from (SEED, epoch, its index in the split), as for folders. Every process takes the same
number of steps: that of the process with the fewest full batches, so an epoch sees every image once when the
shards divide evenly among the processes (the log says how many it leaves out otherwise). Evaluation reads every
image exactly once. A stream cannot be entered mid-epoch: a run stopped mid-epoch resumes at the start of that
epoch (the trainer logs it).
"""
import itertools
import json
import os
import random
import tarfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import default_collate

from .images import SPLIT_NAMES, DataError, decode_image
from .seeding import derived_seed, seed_everything

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
INFO_FILE = '_info.json'


def read_info(root: str) -> Dict:
    path = os.path.join(root, INFO_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f'{path} is not a readable JSON file ({e})') from None


def split_shards(root: str, split: str, pattern: str) -> Tuple[List[str], Optional[List[int]], Optional[List[str]]]:
    """(shard paths, their sample counts or None, class names or None) of ``split``, from the brace ``pattern`` or
    from ``_info.json``."""
    from webdataset.shardlists import expand_urls
    info = read_info(root)
    entry = next((info['splits'][n] for n in SPLIT_NAMES[split] if n in info.get('splits', {})), None)
    if pattern:
        names = expand_urls(pattern)
    elif entry is not None:
        names = list(entry['filenames'])
    else:
        key = 'DATA.WDS.TRAIN' if split == 'train' else 'DATA.WDS.VAL'
        raise DataError(f'{root}: no {INFO_FILE} listing a {SPLIT_NAMES[split][0]} split, and {key} (a brace pattern '
                        'of tar shards, e.g. imagenet-train-{000000..000127}.tar) is not set')
    paths = [os.path.join(root, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f'{len(missing)} shard(s) of the {split} split not found, e.g. {missing[0]}')
    lengths = None
    if entry is not None and entry.get('shard_lengths'):
        known = dict(zip(entry['filenames'], entry['shard_lengths']))
        lengths = [known[n] for n in names] if all(n in known for n in names) else None
    classes = entry.get('classes') if entry is not None else None
    return paths, lengths, classes


def split_key(name: str) -> Tuple[str, str]:
    """(key, extension) of a member, webdataset's way: the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition('/')
    stem, _, extension = base.partition('.')
    return (f'{folder}/{stem}' if folder else stem), extension.lower()


def count_samples(path: str) -> int:
    """The samples of one shard (keys with an image member), from its headers."""
    return len({key for key, extension in (split_key(name) for name, _ in _members(path, headers_only=True))
                if extension in IMAGE_EXTENSIONS})


def _members(path: str, headers_only: bool = False) -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of each file in a tar shard, in order; a corrupt shard is a DataError naming it."""
    try:
        with tarfile.open(path, mode='r:' if headers_only else 'r|') as archive:
            for info in archive:
                if info.isfile():
                    yield info.name, (b'' if headers_only else archive.extractfile(info).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f'{path}: corrupt tar shard ({e})') from None


def shard_samples(path: str, num_classes: int) -> Iterator[Tuple[str, bytes, int]]:
    """(key, image bytes, label) of each sample of a shard, in order. A sample without an image or a label, or with a
    label out of range, is a DataError naming the shard and the key."""
    key, parts = None, {}

    def finish():
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        if image is None:
            raise DataError(f'{path}: sample {key} has no image (.jpg, .jpeg, .png or .webp)')
        if 'cls' not in parts:
            raise DataError(f'{path}: sample {key} has no label (.cls)')
        text = parts['cls'].decode('utf-8', 'replace').strip()
        if not text.lstrip('-').isdigit() or not 0 <= int(text) < num_classes:
            raise DataError(f'{path}: sample {key}: label {text!r} is out of range for MODEL.NUM_CLASSES '
                            f'{num_classes} (0 to {num_classes - 1})')
        return key, image, int(text)

    for name, data in _members(path):
        stem, extension = split_key(name)
        if stem != key and key is not None:
            yield finish()
            parts = {}
        key = stem
        parts[extension] = data
    if key is not None:
        yield finish()


class ShardStream(torch.utils.data.IterableDataset):
    """The batches of one split for this process, streamed from its shards (see the module's docstring). For a
    DataLoader with ``batch_size=None``: each loader worker makes whole batches of its own samples."""

    resumes_mid_epoch = False

    def __init__(self, shards: Sequence[str], lengths: Sequence[int], num_classes: int, transform, batch_size: int,
                 training: bool, seed: int, rank: int, world_size: int, workers: int, shuffle_buffer: int = 1024,
                 mode: str = 'RGB', classes: Optional[List[str]] = None):
        self.shards, self.lengths = list(shards), list(lengths)
        self.num_classes, self.transform, self.batch_size, self.training = num_classes, transform, batch_size, training
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers, self.shuffle_buffer, self.mode, self.classes = max(1, workers), shuffle_buffer, mode, classes
        self.starts = list(itertools.accumulate(self.lengths, initial=0))[:-1]  # each shard's first sample index
        self.epoch = 0
        per_rank = [sum(self._full_batches(r, w) for w in range(self.workers)) for r in range(world_size)]
        self.batches_per_epoch = min(per_rank) if training else per_rank[rank]
        self.images_left_out = sum(self.lengths) - self.batches_per_epoch * batch_size * world_size if training else 0

    def worker_shards(self, rank: int, worker: int) -> List[int]:
        """The shards (indices) that loader worker ``worker`` of process ``rank`` reads, every epoch."""
        return list(range(len(self.shards)))[rank::self.world_size][worker::self.workers]

    def _full_batches(self, rank: int, worker: int) -> int:
        count = sum(self.lengths[i] for i in self.worker_shards(rank, worker))
        return count // self.batch_size if self.training else -(-count // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch to stream; a stream always starts at the epoch's first batch (``start_batch`` must be 0)."""
        if start_batch:
            raise ValueError('a shard stream cannot start mid-epoch')
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _samples(self, worker: int) -> Iterator[Tuple[int, bytes, str, int]]:
        """(index in the split, image bytes, name, label) of the worker's samples, in this epoch's order."""
        shards = self.worker_shards(self.rank, worker)
        rng = random.Random(f'{self.seed}-{self.epoch}-{self.rank}-{worker}')
        if self.training:
            rng.shuffle(shards)
        buffer: List[Tuple[int, bytes, str, int]] = []
        for shard in shards:
            for offset, (key, image, label) in enumerate(shard_samples(self.shards[shard], self.num_classes)):
                sample = (self.starts[shard] + offset, image, f'{self.shards[shard]}@{key}', label)
                if not self.training:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise DataError(f'the shard stream was planned for {self.workers} loader workers, the loader has '
                            f'{info.num_workers}')
        batch, made, limit = [], 0, self._full_batches(self.rank, worker)
        for index, data, name, label in self._samples(worker):
            seed_everything(derived_seed(self.seed, self.epoch, index), cuda=False)
            image = decode_image(data, name, self.mode)
            batch.append((self.transform(image) if self.transform is not None else image, label))
            if len(batch) == self.batch_size:
                yield default_collate(batch)
                batch, made = [], made + 1
                if made == limit:
                    return
        if batch and not self.training:
            yield default_collate(batch)
