"""Seeds that depend only on (SEED, epoch, sample index): what makes a resumed run see the same batches and the
same augmented images as an uninterrupted one, on any worker."""
import random

import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (SEED, epoch, index...), from numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int, cuda: bool = True) -> None:
    """Seed torch, numpy and ``random``. ``cuda=False`` leaves the CUDA generators alone: loader samples need only
    the CPU one, and ``torch.manual_seed`` (which queues a CUDA seeding, with a stack trace, until CUDA starts)
    costs about 0.7 ms, more than the transform of a small image."""
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
