"""Our weights in the official release's layouts, to build official-format files from seeded weights in tests.

The inverse of the conversion the loaders do (``checkpoint_filter_fn``, ``vHeatBackbone.convert_state_dict``): names
of the official ``vHeat`` (``patch_embed``, ``freq_embed.i``, ``layers.i.j``, the downsampling as the last entry
of stage i, ``classifier``), 1x1-convolution MLP weights, and the official mmdet/mmseg wrapper's ``outnorm{i}``;
keys in the official order (the order of its ``named_parameters``). ``tests/test_release.py`` checks it against
``official_vheat_layout.json`` (keys, order and shapes of the official vHeat-T).
"""
import pickle
import re
from collections import OrderedDict
from types import SimpleNamespace
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


class _Numpy1Pickler(pickle._Pickler):
    """Pickles numpy's globals under their numpy 1.x names (``numpy.core.multiarray``), as files written by the
    official runs (numpy 1.x) name them; numpy 2 writes ``numpy._core.multiarray``."""

    def save_global(self, obj, name=None):
        module, qualname = getattr(obj, '__module__', None), name or getattr(obj, '__qualname__', None)
        if module and module.startswith('numpy._core') and qualname and '.' not in qualname:
            self.write(pickle.GLOBAL + module.replace('numpy._core', 'numpy.core').encode() + b'\n' +
                       qualname.encode() + b'\n')
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_as_numpy1(obj, path) -> None:
    """``torch.save`` whose pickle names numpy's globals as numpy 1.x did."""
    torch.save(obj, path, pickle_module=SimpleNamespace(Pickler=_Numpy1Pickler, __name__='pickle'))


def official_runner_checkpoint(checkpoint: dict, depths: Sequence[int]) -> dict:
    """An mmengine Runner checkpoint of ours as the official runs wrote it: the backbone in the official wrapper's
    names (MMDET_VHEAT / MMSEG_VHEAT), everything else (meta, optimizer, schedulers, message hub) as it is."""
    return dict(checkpoint, state_dict=to_official_detector(checkpoint['state_dict'], depths))
