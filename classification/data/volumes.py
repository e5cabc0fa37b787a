"""Generated 3-D data for the vHeat3D demos: clips of moving digits, and volumes of shapes with voxel masks.

- ``moving_digits``: scikit-learn's 8x8 digits (scaled to 16x16) crossing a 32x32 frame over 8 frames in one of
  four directions (up, down, left, right), labelled by the direction. Start positions are drawn so that the set of
  frames of a clip says nothing about the direction, only their order does.
- ``shape_volumes``: a sphere, cube, cylinder, cone or torus at a random position, size and orientation in a 32^3
  volume, with random intensity and Gaussian noise, labelled by the shape, with its voxel mask.
"""
from typing import Tuple

import numpy as np
import torch
from scipy.spatial.transform import Rotation

DIRECTIONS = ('up', 'down', 'left', 'right')
SHAPES = ('sphere', 'cube', 'cylinder', 'cone', 'torus')


def moving_digits(count: int, frames: int = 8, size: int = 32, speed: int = 2, seed: int = 0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(clips (count, 1, frames, size, size) in [0, 1], direction labels (count,))."""
    from sklearn.datasets import load_digits
    digits = np.kron(load_digits().images / 16.0, np.ones((2, 2)))  # (1797, 16, 16)
    rng = np.random.default_rng(seed)
    side, travel = digits.shape[1], speed * (frames - 1)
    clips = np.zeros((count, 1, frames, size, size), np.float32)
    labels = rng.integers(0, len(DIRECTIONS), count)
    for i, label in enumerate(labels):
        digit = digits[rng.integers(len(digits))]
        along = rng.integers(0, size - side - travel + 1)   # where the path starts along the motion...
        across = rng.integers(0, size - side + 1)           # ...and where it lies across it
        step = speed if DIRECTIONS[label] in ('down', 'right') else -speed
        start = along if step > 0 else along + travel       # the same stretch of path, run one way or the other
        for t in range(frames):
            pos = start + step * t
            y, x = (pos, across) if DIRECTIONS[label] in ('up', 'down') else (across, pos)
            clips[i, 0, t, y:y + side, x:x + side] = digit
    clips += rng.normal(0, 0.05, clips.shape).astype(np.float32)
    return torch.from_numpy(clips), torch.from_numpy(labels)


def _inside(shape: str, x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float) -> np.ndarray:
    """Voxels inside a shape of size ``scale`` (voxels) centred at the origin of the (rotated) coordinates."""
    radial = np.sqrt(x ** 2 + y ** 2)
    if shape == 'sphere':
        return x ** 2 + y ** 2 + z ** 2 <= scale ** 2
    if shape == 'cube':
        return np.maximum(np.maximum(abs(x), abs(y)), abs(z)) <= 0.8 * scale
    if shape == 'cylinder':  # a rod, so that it is told from a cone by more than its taper
        return (radial <= 0.45 * scale) & (abs(z) <= 1.2 * scale)
    if shape == 'cone':
        return (abs(z) <= scale) & (radial <= 0.9 * scale * (scale - z) / (2 * scale))
    if shape == 'torus':
        return (radial - 0.75 * scale) ** 2 + z ** 2 <= (0.35 * scale) ** 2
    raise ValueError(f'unknown shape {shape!r}')


def shape_volumes(count: int, size: int = 32, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(volumes (count, 1, size, size, size), shape labels (count,), voxel masks (count, size, size, size))."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size) + 0.5] * 3, indexing='ij'), -1).reshape(-1, 3)
    volumes = np.zeros((count, 1, size, size, size), np.float32)
    masks = np.zeros((count, size, size, size), np.int64)
    labels = rng.integers(0, len(SHAPES), count)
    for i, label in enumerate(labels):
        scale = rng.uniform(0.2, 0.3) * size
        centre = rng.uniform(scale + 1, size - scale - 1, 3)
        x, y, z = (Rotation.random(random_state=rng).inv().apply(grid - centre)).T
        mask = _inside(SHAPES[label], x, y, z, scale).reshape(size, size, size)
        masks[i] = mask
        volumes[i, 0] = mask * rng.uniform(0.6, 1.0)
    volumes += rng.normal(0, 0.1, volumes.shape).astype(np.float32)
    return torch.from_numpy(volumes), torch.from_numpy(labels), torch.from_numpy(masks)
