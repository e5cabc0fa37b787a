"""torchvision's standard data sets read from their distributed files, never downloaded: Fashion-MNIST and MNIST
(the four IDX files, gzipped as distributed or not) and CIFAR-10/100 (the python pickle batches).

The test split is the trainer's validation split. Greyscale images are given as 'L' or expanded to 'RGB', as the
model's input channels ask.
"""
import gzip
import os
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST, MNIST

from .images import DataError

IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'val': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
HOW_TO_GET = {
    'fashion_mnist': "Debian's package dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist "
                     '(apt-get install dataset-fashion-mnist); or get them from '
                     'https://github.com/zalandoresearch/fashion-mnist',
    'mnist': 'get them from https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision\'s mirror)',
    'cifar10': 'extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there',
    'cifar100': 'extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there',
}
CLASSES = {'fashion_mnist': FashionMNIST.classes, 'mnist': MNIST.classes}
STANDARD_DATASETS = ('fashion_mnist', 'mnist', 'cifar10', 'cifar100')


def _idx_path(root: str, name: str, dataset: str) -> str:
    """``name`` (.gz or not) in ``root``, or in torchvision's layout (``root/FashionMNIST/raw``)."""
    folders = [root, os.path.join(root, {'fashion_mnist': 'FashionMNIST', 'mnist': 'MNIST'}[dataset], 'raw')]
    for folder in folders:
        for candidate in (name + '.gz', name):
            if os.path.isfile(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
    raise DataError(f'{dataset}: {os.path.join(root, name + ".gz")} not found; {HOW_TO_GET[dataset]}')


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's format: big-endian magic, dimension sizes, then the data) as a NumPy array."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f'cannot read {path}: {e}') from None
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
        raise DataError(f'{path} is not an IDX file of unsigned bytes')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f'{path}: {len(data) - offset} bytes of data for shape {shape} (truncated?)')
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


class ArrayImages(torch.utils.data.Dataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, 3) and their labels, as ``(transform(image), label)``."""

    def __init__(self, images: np.ndarray, targets: List[int], classes: List[str], transform=None,
                 mode: str = 'RGB'):
        self.images, self.targets, self.classes = images, list(targets), list(classes)
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert(self.mode)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def standard_dataset(name: str, root: str, split: str, transform=None, mode: str = 'RGB',
                     limit: Optional[int] = None) -> ArrayImages:
    """The ``split`` ('train' or 'val', the test set) of a standard data set from the files in ``root``;
    ``limit``: only its first images."""
    if not root or not os.path.isdir(root):
        raise DataError(f'{name}: data folder not found: {root or "(DATA.DATA_PATH is empty; pass --data-path)"}; '
                        f'{HOW_TO_GET[name]}')
    if name in ('fashion_mnist', 'mnist'):
        images_file, labels_file = (_idx_path(root, f, name) for f in IDX_FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f'{images_file} and {labels_file} do not hold matching images and labels')
        classes = CLASSES[name]
    else:
        cls = CIFAR10 if name == 'cifar10' else CIFAR100
        folder = os.path.join(root, cls.base_folder)
        if not os.path.isdir(folder) and os.path.basename(os.path.normpath(root)) == cls.base_folder:
            root = os.path.dirname(os.path.normpath(root))
        try:
            dataset = cls(root, train=split == 'train', download=False)
        except RuntimeError:
            raise DataError(f'{name}: {folder} not found or incomplete; {HOW_TO_GET[name]}') from None
        images, labels, classes = dataset.data, np.asarray(dataset.targets), dataset.classes
    if limit:
        images, labels = images[:limit], labels[:limit]
    return ArrayImages(images, labels.tolist(), classes, transform, mode)
