"""Effective receptive fields (ERF) of vHeat-T, Swin-T and ConvNeXt-T, stage by stage, as a PNG grid.

    python tools/visualization/visualize_erf.py [--images 8] [--size 224] [--checkpoint vheat_tiny=vHeat_tiny.pth ...]

The ERF of a stage is the gradient of its centre output pixel (summed over channels) with respect to the input:
|d out[c, h/2, w/2] / d x| summed over input channels and averaged over images, normalised to sum 1. For
display it is log-scaled (log10(1 + map / max * 1e3) / 3), as in the ERF literature (Luo et al. 2016;
Ding et al., RepLKNet). Inputs are random crops of the sample photograph; weights are timm's random
initialisation unless a checkpoint is given, so the pictures show what the architecture alone allows.
"""
import argparse
import io
from typing import Dict, Sequence

import numpy as np
import timm
import torch
from PIL import Image

import classification.models  # noqa: F401  (registers vheat_* with timm)
from classification.core.cli import exit_on_errors, require_choice, require_file, require_positive
from classification.core.fileio import write_output
from classification.data.images import SAMPLE_IMAGE, load_float_image

MODELS = {'vheat_tiny': 'vHeat-T', 'swin_tiny_patch4_window7_224': 'Swin-T', 'convnext_tiny': 'ConvNeXt-T'}
STAGES = (0, 1, 2, 3)


def effective_receptive_field(model: torch.nn.Module, images: torch.Tensor, stage: int) -> torch.Tensor:
    """ERF of ``stage`` over ``images`` (N, 3, H, W): an (H, W) map that sums to 1."""
    x = images.clone().requires_grad_(True)
    out = model.forward_intermediates(x, indices=[stage], intermediates_only=True)[0]
    centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
    grad, = torch.autograd.grad(centre.sum(), x)  # images are independent: one pass serves the whole batch
    erf = grad.abs().sum(dim=1).mean(dim=0)
    return erf / erf.sum()


def log_scaled(erf: torch.Tensor) -> np.ndarray:
    """Map to [0, 1] for display: log10(1 + 1e3 * erf / max) / 3."""
    return (torch.log10(1 + 1e3 * erf / erf.max()) / 3).numpy()


def crops(image: torch.Tensor, count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` random size x size crops of an (H, W, 3) image (upsampled if smaller), ImageNet-normalised."""
    gen = torch.Generator().manual_seed(seed)
    img = image.permute(2, 0, 1).float().unsqueeze(0)
    scale = size / min(img.shape[2:])
    if scale > 1:
        img = torch.nn.functional.interpolate(img, scale_factor=scale * 1.25, mode='bilinear', align_corners=False)
    out = []
    for _ in range(count):
        top = int(torch.randint(0, img.shape[2] - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, img.shape[3] - size + 1, (1,), generator=gen))
        out.append(img[0, :, top:top + size, left:left + size])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (torch.stack(out) - mean) / std


def build(name: str, size: int, checkpoint: str = None) -> torch.nn.Module:
    kwargs = {'img_size': size} if name.startswith('swin') else {}
    if checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    return timm.create_model(name, **kwargs).eval()


def render(erfs: Dict[str, Dict[int, torch.Tensor]], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    stages = sorted(next(iter(erfs.values())))
    fig, axes = plt.subplots(len(erfs), len(stages), figsize=(2.3 * len(stages), 2.3 * len(erfs)), squeeze=False)
    for row, (label, by_stage) in enumerate(erfs.items()):
        for col, stage in enumerate(stages):
            ax = axes[row, col]
            ax.imshow(log_scaled(by_stage[stage]), cmap='RdYlGn', vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f'stage {stage + 1} (stride {4 * 2 ** stage})', fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90)
    plt.close(fig)
    # 256-colour palette: the gradient noise makes a full-colour PNG several times larger for no visible gain
    png = io.BytesIO()
    Image.open(buf).convert('RGB').quantize(256).save(png, format='png', optimize=True)
    write_output(path, png.getvalue())


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', default=SAMPLE_IMAGE, help='photograph to take the random crops from')
    parser.add_argument('--images', type=int, default=8, help='number of crops averaged')
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--checkpoint', action='append', default=[], metavar='MODEL=PATH',
                        help='load weights for a model (timm name), e.g. vheat_tiny=vHeat_tiny.pth')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random initialisation and crops')
    parser.add_argument('--out', default='docs/erf.png')
    args = parser.parse_args(argv)
    with exit_on_errors():
        require_file(args.image, '--image', 'image')
        require_positive(args.images, '--images')
        require_positive(args.size, '--size', minimum=32)
        checkpoints = {}
        for item in args.checkpoint:
            name, _, path = item.partition('=')
            require_choice(name, '--checkpoint MODEL=PATH', MODELS)
            checkpoints[name] = require_file(path, f'--checkpoint {name}=PATH', 'checkpoint')
        run(args, checkpoints)


def run(args, checkpoints: Dict[str, str]) -> None:
    images = crops(load_float_image(args.image), args.images, args.size, args.seed)
    erfs = {}
    for name, label in MODELS.items():
        torch.manual_seed(args.seed)
        model = build(name, args.size, checkpoints.get(name))
        erfs[label + (' (loaded)' if name in checkpoints else ' (random init)')] = {
            stage: effective_receptive_field(model, images, stage) for stage in STAGES}
    render(erfs, args.out, f'Effective receptive field of the centre output pixel, {args.images} crops of '
                           f'{args.size}x{args.size}, log-scaled (log10(1 + 1000 g / max g) / 3)')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
