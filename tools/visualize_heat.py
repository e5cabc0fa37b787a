"""What vHeat's heat conduction operator does to an image: its channels diffused for several values of k*t.

    python tools/visualize_heat.py [--image assets/sample.jpg] [--kt 0 2 8 32 128] [--out docs/heat_conduction.png]

Each channel of the image is a heat source; ``u = heat_conduction(x, exp(-kt * frequency_distance))`` solves
the heat equation with Neumann (insulated) boundaries through the DCT, as the HCO does per block. Lengths are
in pixels, so k*t acts like a Gaussian blur of variance 2*k*t per axis (std sqrt(2 k t) px). The second row
starts from a point source, where that Gaussian shows directly.
"""
import argparse
import os
import sys
from typing import Sequence

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.models.dct import frequency_distance, heat_conduction  # noqa: E402

DEFAULT_IMAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets', 'sample.jpg')


def conduct(image: torch.Tensor, kts: Sequence[float], impl: str = 'matmul') -> torch.Tensor:
    """Heat conduction of a channels-last (H, W, C) image for every k*t: a (len(kts), H, W, C) tensor."""
    height, width, _ = image.shape
    dist = frequency_distance(height, width, image.device, image.dtype)
    x = image.unsqueeze(0)
    return torch.cat([heat_conduction(x, torch.exp(-kt * dist), impl) for kt in kts])


def point_source(height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """A unit of heat at the centre pixel of an (H, W, 1) map."""
    src = torch.zeros(height, width, 1, dtype=dtype)
    src[height // 2, width // 2] = 1.0
    return src


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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_image(path: str) -> torch.Tensor:
    """An RGB image as a float64 (H, W, 3) tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert('RGB'), dtype=np.float64) / 255.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', default=DEFAULT_IMAGE)
    parser.add_argument('--kt', type=float, nargs='+', default=[0, 2, 8, 32, 128])
    parser.add_argument('--dct-impl', default='matmul', choices=['matmul', 'fft'])
    parser.add_argument('--out', default='docs/heat_conduction.png')
    args = parser.parse_args(argv)
    render(load_image(args.image), args.kt, args.out, args.dct_impl)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
