"""What vHeat's heat conduction operator does to an image, or a volume, for several values of k*t.

    python tools/visualization/visualize_heat.py [--image assets/sample.jpg] [--kt 0 2 8 32 128] \
        [--out docs/heat_conduction.png]
    python tools/visualization/visualize_heat.py --volume [--kt 0 4 16 64] [--out docs/heat_conduction_3d.png]

Each channel of the image is a heat source; ``u = heat_conduction(x, exp(-kt * frequency_distance))`` solves
the heat equation with Neumann (insulated) boundaries through the DCT, as the HCO does per block. Lengths are
in pixels, so k*t acts like a Gaussian blur of variance 2*k*t per axis (std sqrt(2 k t) px). The second row
starts from a point source, where that Gaussian shows directly. ``--volume`` diffuses two heat sources in a 48^3
volume with the 3-D operator (one more DCT axis) and shows slices at several depths: the heat reaches slices it
did not start in, and spreads as a 3-D Gaussian (variance 2*k*t along each of the three axes).
"""
import argparse
from typing import Sequence

import numpy as np
import torch

from classification.core.cli import exit_on_errors, require_file
from classification.core.errors import UsageError
from classification.core.fileio import save_figure
from classification.data.images import SAMPLE_IMAGE, load_float_image
from classification.models.dct import frequency_distance, heat_conduction


def conduct(field: torch.Tensor, kts: Sequence[float], impl: str = 'matmul') -> torch.Tensor:
    """Heat conduction of a channels-last (H, W, C) image or (D, H, W, C) volume for every k*t: a
    (len(kts), *field.shape) tensor."""
    dist = frequency_distance(tuple(field.shape[:-1]), field.device, field.dtype)
    x = field.unsqueeze(0)
    return torch.cat([heat_conduction(x, torch.exp(-kt * dist), impl) for kt in kts])


def point_source(*size: int, dtype=torch.float64) -> torch.Tensor:
    """A unit of heat at the centre pixel (voxel) of an (H, W, 1) map or (D, H, W, 1) volume."""
    src = torch.zeros(*size, 1, dtype=dtype)
    src[tuple(n // 2 for n in size)] = 1.0
    return src


def two_sources(size: int = 48, dtype=torch.float64) -> torch.Tensor:
    """A (size, size, size, 1) volume: a point of heat in one half and, in the other, a small cube near a wall
    holding as much heat."""
    volume = torch.zeros(size, size, size, 1, dtype=dtype)
    volume[size // 4, size // 2, size // 2] = 1.0
    third = size // 3
    volume[2 * third:2 * third + 4, size - 8:size - 4, 4:8] = 1.0 / 64  # as much heat as the point
    return volume


def render_volume(kts: Sequence[float], path: str, impl: str = 'matmul', size: int = 48) -> None:
    """PNG grid: one row per k*t, one column per depth slice of the conducted volume."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm
    volumes = conduct(two_sources(size), kts, impl)[..., 0].numpy()
    depths = [size // 12, size // 4, 5 * size // 12, 7 * size // 12, 2 * (size // 3) + 2, 11 * size // 12]
    fig, axes = plt.subplots(len(kts), len(depths), figsize=(1.7 * len(depths), 1.8 * len(kts)), squeeze=False)
    for row, kt in enumerate(kts):
        peak = volumes[row].max()
        for col, depth in enumerate(depths):
            ax = axes[row, col]
            ax.imshow(volumes[row, depth].clip(min=0), cmap='inferno', norm=PowerNorm(0.5, vmin=0, vmax=peak))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f'depth {depth}', fontsize=8)
        axes[row, 0].set_ylabel(f'k·t = {kt:g}', fontsize=8)
    fig.suptitle('3-D heat conduction u = IDCT3D(DCT3D(x) · exp(-k·t·(ω_d² + ω_h² + ω_w²))), slices of a '
                 f'{size}³ volume (square-root colour scale per row)', fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def render(image: torch.Tensor, kts: Sequence[float], path: str, impl: str = 'matmul') -> None:
    """PNG strip: the conducted image (top) and a conducted point source (bottom), one column per k*t."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    photo = conduct(image, kts, impl).clamp(0, 1).numpy()
    point = conduct(point_source(*image.shape[:2]), kts, impl)[..., 0].numpy()
    fig, axes = plt.subplots(2, len(kts), figsize=(2.4 * len(kts), 4.2), squeeze=False)
    for col, kt in enumerate(kts):
        axes[0, col].imshow(photo[col])
        axes[0, col].set_title(f'k·t = {kt:g}  (σ = {np.sqrt(2 * kt):.1f} px)', fontsize=8)
        axes[1, col].imshow(point[col], cmap='inferno')
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel('image channels', fontsize=8)
    axes[1, 0].set_ylabel('point source', fontsize=8)
    fig.suptitle('Heat conduction u = IDCT2D(DCT2D(x) · exp(-k·t·(ω_n² + ω_m²))), Neumann boundaries', fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', default=SAMPLE_IMAGE)
    parser.add_argument('--volume', action='store_true', help='the 3-D operator on a volume instead of an image')
    parser.add_argument('--kt', type=float, nargs='+')
    parser.add_argument('--dct-impl', default='matmul', choices=['matmul', 'fft'])
    parser.add_argument('--out')
    args = parser.parse_args(argv)
    with exit_on_errors():
        if not args.volume:
            require_file(args.image, '--image', 'image')
        if args.kt and min(args.kt) < 0:
            raise UsageError(f'--kt: k*t must be >= 0 (no diffusion at 0), got {min(args.kt)}')
        run(args)


def run(args) -> None:
    if args.volume:
        out = args.out or 'docs/heat_conduction_3d.png'
        render_volume(args.kt or [0, 4, 16, 64], out, args.dct_impl)
    else:
        out = args.out or 'docs/heat_conduction.png'
        render(load_float_image(args.image), args.kt or [0, 2, 8, 32, 128], out, args.dct_impl)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
