"""Resize the frequency embeddings of a classification checkpoint to a downstream resolution.

    python classification/interpolate4downstream.py --pt_pth vHeat_tiny.pth --pt_size 224 \
        --tg_pth vHeat_tiny_512.pth --tg_size 512 [--mode zero|bicubic]

``zero`` (the official script's behaviour) copies the pretrained embedding into the top-left corner of a
zero map (low frequencies keep their values, new high frequencies start at zero); ``bicubic`` stretches it as
the loaders do. The output is ``{'model': state_dict}`` of plain tensors, loadable with weights_only=True;
key names (official or ours) are kept, the rest of the checkpoint (optimizer, config) is dropped.
"""
import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.models import load_checkpoint  # noqa: E402
from classification.models.vheat import resize_freq_embed  # noqa: E402

FREQ_EMBED = re.compile(r'^(?:freq_embed\.(\d+)|stages\.(\d+)\.freq_embed)$')


def interpolate(state_dict: dict, pt_size: int, tg_size: int, mode: str) -> dict:
    out = {}
    for key, value in state_dict.items():
        match = FREQ_EMBED.match(key)
        if match:
            stage = int(match.group(1) or match.group(2))
            expected = pt_size // 4 // 2 ** stage
            if tuple(value.shape[:2]) != (expected, expected):
                raise ValueError(f'{key} is {tuple(value.shape)}, not {expected}x{expected}: is --pt_size right?')
            value = resize_freq_embed(value, (tg_size // 4 // 2 ** stage,) * 2, mode)
        out[key] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pt_pth', required=True, help='classification checkpoint (official or ours)')
    parser.add_argument('--pt_size', type=int, default=224, help='its training resolution')
    parser.add_argument('--tg_pth', required=True, help='output checkpoint')
    parser.add_argument('--tg_size', type=int, default=512, help='downstream resolution (the model img_size)')
    parser.add_argument('--mode', choices=['zero', 'bicubic'], default='zero')
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.pt_pth)
    state_dict = checkpoint.get('model', checkpoint)
    state_dict = interpolate(state_dict, args.pt_size, args.tg_size, args.mode)
    torch.save({'model': state_dict}, args.tg_pth)
    print(f'wrote {args.tg_pth}: frequency embeddings {args.pt_size} -> {args.tg_size} ({args.mode})')


if __name__ == '__main__':
    main()
