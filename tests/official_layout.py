"""Our weights in the official release's layouts, to build official-format files from seeded weights in tests.

The inverse of the conversion the loaders do (``checkpoint_filter_fn``, ``vHeatBackbone.convert_state_dict``): names
of the official ``vHeat`` (``patch_embed``, ``freq_embed.i``, ``layers.i.j``, the downsampling as the last entry
of stage i, ``classifier``), 1x1-convolution MLP weights, and the official mmdet/mmseg wrapper's ``outnorm{i}``;
keys in the official order (the order of its ``named_parameters``). ``tests/test_release.py`` checks it against
``official_vheat_layout.json`` (keys, order and shapes of the official vHeat-T).
"""
import re
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch

_STAGE = re.compile(r'^stages\.(\d+)\.(.+)$')


def _official_key(key: str, depths: Sequence[int]) -> Tuple[Tuple[int, ...], str]:
    """(position in the official order, official name) of one of our classifier/backbone keys."""
    if key.startswith('stem.'):
        return (0,), re.sub(r'^stem\.norm(\d)\.', r'patch_embed.norm\1.1.', key).replace('stem.', 'patch_embed.', 1)
    if key.startswith('head.'):
        return (3,), key.replace('head.norm.', 'classifier.0.').replace('head.fc.', 'classifier.3.')
    if key.startswith('out_norms.'):
        return (4,), re.sub(r'^out_norms\.(\d+)\.', r'outnorm\1.', key)
    stage, rest = _STAGE.match(key).groups()
    stage = int(stage)
    if rest == 'freq_embed':
        return (1, stage), f'freq_embed.{stage}'
    if rest.startswith('downsample.'):  # officially the last entry of the previous stage
        part = '0' if rest.startswith('downsample.conv.') else '1'
        return (2, stage - 1, depths[stage - 1]), f'layers.{stage - 1}.{depths[stage - 1]}.{part}.' + \
            rest.split('.', 2)[2]
    block, rest = re.match(r'^blocks\.(\d+)\.(.+)$', rest).groups()
    return (2, stage, int(block)), f'layers.{stage}.{block}.{rest}'


def to_official(state_dict: Dict[str, torch.Tensor], depths: Sequence[int], prefix: str = '') -> 'OrderedDict':
    """Our vHeat (or vHeatBackbone) state dict with the official names, order and MLP weight shapes; ``prefix``
    (e.g. 'backbone.') is put before every official name."""
    entries = []
    for index, (key, value) in enumerate(state_dict.items()):
        order, name = _official_key(key, depths)
        if re.search(r'\.mlp\.fc\d\.weight$', key):
            value = value[:, :, None, None]  # the official MLP is 1x1 convolutions
        entries.append((order, index, prefix + name, value))
    return OrderedDict((name, value) for _, _, name, value in sorted(entries, key=lambda e: (e[0], e[1])))


def to_official_detector(state_dict: Dict[str, torch.Tensor], depths: Sequence[int]) -> 'OrderedDict':
    """A Mask R-CNN / UperNet state dict of ours with its ``backbone.*`` weights in the official wrapper's names
    (MMDET_VHEAT, MMSEG_VHEAT), the neck and heads unchanged."""
    backbone = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    out = OrderedDict(to_official(backbone, depths, prefix='backbone.'))
    out.update((k, v) for k, v in state_dict.items() if not k.startswith('backbone.'))
    return out


def official_param_groups(official_state_dict: Dict[str, torch.Tensor]):
    """The official trainer's optimizer groups (``set_weight_decay``: 1-D weights and biases without weight decay,
    in ``named_parameters`` order), as lists of official names."""
    decay = [k for k, v in official_state_dict.items() if not (v.ndim == 1 or k.endswith('.bias'))]
    no_decay = [k for k, v in official_state_dict.items() if v.ndim == 1 or k.endswith('.bias')]
    return decay, no_decay
