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

if __package__ in (None, ''):  # the official command line runs this file as a script: `classification` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.core.cli import exit_on_errors, require_file, require_positive
from classification.core.errors import UsageError
from classification.core.fileio import save_checkpoint
from classification.models import IncompatibleCheckpointError, find_state_dict, load_checkpoint
from classification.models.vheat import resize_freq_embed

FREQ_EMBED = re.compile(r'^(?:freq_embed\.(\d+)|stages\.(\d+)\.freq_embed)$')
MIN_SIZE = 32  # the last of 4 stages has stride 32: its embedding needs at least one cell


def interpolate(state_dict: dict, pt_size: int, tg_size: int, mode: str) -> dict:
    """The state dict with each stage's (pt_size / 4 / 2^i)^2 frequency embedding brought to tg_size."""
    stages = {}
    for key, value in state_dict.items():
        match = FREQ_EMBED.match(key)
        if match:
            stages[key] = int(match.group(1) or match.group(2))
    if not stages:
        inference = any(k.endswith('k_exp') for k in state_dict)
        raise IncompatibleCheckpointError(
            'the checkpoint is in inference layout (decay maps folded): use a training-layout checkpoint'
            if inference else 'the checkpoint has no vHeat frequency embeddings (freq_embed.<i> or '
            'stages.<i>.freq_embed): not a vHeat classification checkpoint')
    out = dict(state_dict)
    for key, stage in stages.items():
        value = state_dict[key]
        expected = pt_size // 4 // 2 ** stage
        if not isinstance(value, torch.Tensor) or value.ndim != 3 or tuple(value.shape[:2]) != (expected, expected):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise IncompatibleCheckpointError(f'{key} is {shape}, not {expected}x{expected}xC: is --pt_size right?')
        out[key] = resize_freq_embed(value, (tg_size // 4 // 2 ** stage,) * 2, mode)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pt_pth', required=True, help='classification checkpoint (official or ours)')
    parser.add_argument('--pt_size', type=int, default=224, help='its training resolution')
    parser.add_argument('--tg_pth', required=True, help='output checkpoint')
    parser.add_argument('--tg_size', type=int, default=512, help='downstream resolution (the model img_size)')
    parser.add_argument('--mode', choices=['zero', 'bicubic'], default='zero')
    args = parser.parse_args(argv)
    with exit_on_errors():
        for flag, size in (('--pt_size', args.pt_size), ('--tg_size', args.tg_size)):
            require_positive(size, flag, minimum=MIN_SIZE)  # one cell of frequency embedding at stride 32
        checkpoint = load_checkpoint(require_file(args.pt_pth, '--pt_pth', 'checkpoint'))
        state_dict = find_state_dict(checkpoint, 'model', f'--pt_pth {args.pt_pth}')
        try:
            state_dict = interpolate(state_dict, args.pt_size, args.tg_size, args.mode)
        except IncompatibleCheckpointError as e:
            raise UsageError(f'--pt_pth {args.pt_pth}: {e}') from None
        save_checkpoint(args.tg_pth, {'model': state_dict})
    print(f'wrote {args.tg_pth}: frequency embeddings {args.pt_size} -> {args.tg_size} ({args.mode})')


if __name__ == '__main__':
    main()
