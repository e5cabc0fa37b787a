"""ImageNet in zip files, as the official trainer (Swin-Transformer's) reads it with ``--zip``.

``<data-path>/train.zip`` with ``<data-path>/train_map.txt``, and ``val.zip`` with ``val_map.txt``; each map line
is ``relative/path<TAB>label``, the path a member of the zip. ``tools/dataset_converters/folder_to_zip.py`` writes
this layout from an ImageNet folder. On shared file systems one large file reads much faster than a million small ones.

Cache modes (``--cache-mode``): ``no`` reads every image from the zip when it is needed; ``full`` reads every
image into memory first; ``part`` reads only the images of this process's shard (every ``world_size``-th image
from ``rank``), and the training sampler then gives each process only its own shard, as officially. Cached bytes
live in one NumPy buffer, shared by the loader workers without copies.
"""
import os
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .images import DataError, decode_image

CACHE_MODES = ('no', 'full', 'part')


def read_map(map_path: str, members: set, zip_path: str, num_classes: int) -> List[Tuple[str, int]]:
    """The (member, label) pairs of a map file; a malformed line, a member missing from the zip or a label out of
    range is a DataError naming the file and the line."""
    if not os.path.isfile(map_path):
        raise DataError(f'zip map file not found: {map_path} (expected next to {zip_path}; '
                        'tools/dataset_converters/folder_to_zip.py writes both)')
    samples = []
    with open(map_path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip('\n').split('\t')
            if len(parts) != 2 or not parts[1].strip().lstrip('-').isdigit():
                raise DataError(f'{map_path} line {number}: expected "relative/path<TAB>label", got {line.strip()!r}')
            member, label = parts[0], int(parts[1])
            if member not in members:
                raise DataError(f'{map_path} line {number}: {member} is not in {zip_path}')
            if not 0 <= label < num_classes:
                raise DataError(f'{map_path} line {number}: label {label} is out of range for MODEL.NUM_CLASSES '
                                f'{num_classes} (0 to {num_classes - 1})')
            samples.append((member, label))
    if not samples:
        raise DataError(f'{map_path} lists no images')
    return samples


def open_zip(path: str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise DataError(f'zip file not found: {path}')
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f'{path} is not a readable zip file ({e})') from None


class ZipImageDataset(torch.utils.data.Dataset):
    """The images a map file lists from a zip, as ``(image, label)`` with ``transform`` applied.

    ``cache``: (first, step): the samples first, first + step, ... are read into memory now ((0, 1) for 'full',
    (rank, world size) for 'part'); None reads every image from the zip when it is asked for.
    """

    def __init__(self, zip_path: str, map_path: str, num_classes: int, transform=None,
                 cache: Optional[Tuple[int, int]] = None, mode: str = 'RGB'):
        self.zip_path, self.transform, self.mode = zip_path, transform, mode
        archive = open_zip(zip_path)
        self.samples = read_map(map_path, set(archive.namelist()), zip_path, num_classes)
        self.targets = [label for _, label in self.samples]
        self.classes = _class_names(self.samples, num_classes)
        self._archive, self._pid = archive, os.getpid()
        self._offsets: Dict[int, Tuple[int, int]] = {}
        self._buffer = np.empty(0, np.uint8)
        if cache is not None:
            self._cache(archive, list(range(cache[0], len(self.samples), cache[1])))

    def _cache(self, archive: zipfile.ZipFile, indices: List[int]) -> None:
        sizes = [archive.getinfo(self.samples[i][0]).file_size for i in indices]
        self._buffer = np.empty(sum(sizes), np.uint8)
        start = 0
        for index, size in zip(indices, sizes):
            self._buffer[start:start + size] = np.frombuffer(self._read_member(archive, index), np.uint8)
            self._offsets[index] = (start, size)
            start += size

    @property
    def cached_images(self) -> int:
        return len(self._offsets)

    @property
    def cached_bytes(self) -> int:
        return int(self._buffer.nbytes)

    def _read_member(self, archive: zipfile.ZipFile, index: int) -> bytes:
        member = self.samples[index][0]
        try:
            return archive.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f'cannot read {member} from {self.zip_path}: {e}') from None

    def _bytes(self, index: int) -> bytes:
        if index in self._offsets:
            start, size = self._offsets[index]
            return self._buffer[start:start + size].tobytes()
        if self._pid != os.getpid():  # a loader worker: its own handle, not the parent's file position
            self._archive, self._pid = open_zip(self.zip_path), os.getpid()
        return self._read_member(self._archive, index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        member, label = self.samples[index]
        image = decode_image(self._bytes(index), f'{self.zip_path}@{member}', self.mode)
        return (self.transform(image) if self.transform is not None else image), label

    def __getstate__(self):  # spawned workers reopen the zip
        state = dict(self.__dict__)
        state['_archive'], state['_pid'] = None, -1
        return state


def _class_names(samples: List[Tuple[str, int]], num_classes: int) -> Optional[List[str]]:
    """Class names from the members' top folders when every label has exactly one (ImageNet's layout), else
    None."""
    names: Dict[int, set] = {}
    for member, label in samples:
        names.setdefault(label, set()).add(member.split('/', 1)[0] if '/' in member else '')
    if len(names) != num_classes or any(len(n) != 1 or '' in n for n in names.values()):
        return None
    return [next(iter(names[label])) for label in range(num_classes)]
