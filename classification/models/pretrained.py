"""vHeat weights into any model that holds a vHeat: ``load_pretrained(module, file_or_url)``.

For the networks people build around vHeat: a detector or a segmenter whose encoder it is, a remote-sensing model
fed 1-channel SAR or 4-band images, a classifier of 5 classes at 512 px. The checkpoint may be the official
release's, this project's, a bare state dict or a ``.safetensors`` file, saved under a wrapper (``module.``,
``backbone.``, ``encoder.``, ``model.`` or any other prefix, found or named). Read weights-only as everywhere else.
"""
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .serialization import IncompatibleCheckpointError, find_state_dict, load_checkpoint
from .vheat import FREQ_EMBED_RESIZE, vHeat
from .weights import load_weights

__all__ = ['load_pretrained', 'PretrainedReport']

_logger = logging.getLogger(__name__)
# the first key of a vHeat state dict, in this project's names and in the official ones
STEM_KEYS = ('stem.conv1.weight', 'patch_embed.conv1.weight')


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did; ``str()`` is its one line."""
    source: str
    target: str
    prefix: str
    loaded: int
    resized: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f'loaded {self.loaded} tensors of {self.source}' + (f" (prefix '{self.prefix}')" if self.prefix
                                                                       else '') + f' into {self.target}']
        for label, items in (('resized', self.resized), ('adapted', self.adapted), ('skipped', self.skipped),
                             ('newly initialised', self.initialised)):
            if items:
                parts.append(f'{label} {", ".join(items)}')
        return '; '.join(parts)


def find_vheat(module: nn.Module, target: Optional[str] = None) -> Tuple[str, vHeat]:
    """(name, module) of the vHeat inside ``module``: ``module`` itself, its one vHeat sub-module, or the one named
    ``target``."""
    if target is not None:
        found = dict(module.named_modules()).get(target)
        if not isinstance(found, vHeat):
            raise ValueError(f'target {target!r} is not a vHeat sub-module of {type(module).__name__} '
                             f'(found {type(found).__name__ if found is not None else "nothing"})')
        return target, found
    candidates = [(name, m) for name, m in module.named_modules() if isinstance(m, vHeat)]
    if len(candidates) != 1:
        names = ', '.join(repr(name) for name, _ in candidates) or 'none'
        raise ValueError(f'{type(module).__name__} holds {len(candidates)} vHeat modules ({names}); name one with '
                         'target=')
    return candidates[0]


def find_prefix(state_dict: Dict[str, torch.Tensor], source: str) -> str:
    """The wrapper prefix in front of a vHeat's keys (``''``, ``'encoder.'``, ``'module.backbone.'`` ...)."""
    prefixes = sorted({key[:-len(stem)] for key in state_dict for stem in STEM_KEYS if key.endswith(stem)
                       and (len(key) == len(stem) or key[-len(stem) - 1] == '.')})
    if len(prefixes) == 1:
        return prefixes[0]
    if not prefixes:
        raise IncompatibleCheckpointError(f'{source} holds no vHeat weights (no key ends with '
                                          f'{" or ".join(STEM_KEYS)})')
    raise IncompatibleCheckpointError(f'{source} holds several vHeat models ({", ".join(map(repr, prefixes))}); '
                                      'name one with prefix=')


def _take_prefix(state_dict: Dict[str, torch.Tensor], prefix: str, source: str) -> Dict[str, torch.Tensor]:
    taken = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not taken:
        raise IncompatibleCheckpointError(f'{source}: no key starts with {prefix!r} (its keys: '
                                          f'{", ".join(list(state_dict)[:4])}, ...)')
    return taken


def _shape(shape: torch.Size) -> str:
    return 'x'.join(map(str, shape))


def load_pretrained(module: nn.Module, source: str, prefix: Optional[str] = None, weights: str = 'model',
                    freq_embed_resize: str = 'bicubic', target: Optional[str] = None) -> PretrainedReport:
    """Load vHeat weights from ``source`` (a file or an https URL) into the vHeat that ``module`` holds.

    Args:
        module: a vHeat, or any module with one vHeat inside (``target`` names it when there are several).
        prefix: the wrapper prefix of the vHeat's keys in the checkpoint; found when None.
        weights: ``'model'`` or ``'model_ema'`` of a training checkpoint.
        freq_embed_resize: frequency embeddings of another resolution are resized to the model's, ``'bicubic'``
            or the official downstream rule ``'zero'`` (low frequencies kept, new ones zero).

    The stem's first convolution is adapted to the model's ``in_chans`` (timm's ``adapt_input_conv``); a
    classifier of another number of classes, or one the model does not have, is skipped and the model's kept as
    initialised. Anything else that does not fit is an IncompatibleCheckpointError naming the keys. Logs and
    returns one line saying what was loaded, resized, adapted and skipped.
    """
    if freq_embed_resize not in FREQ_EMBED_RESIZE:
        raise ValueError(f'freq_embed_resize must be one of {FREQ_EMBED_RESIZE}, got {freq_embed_resize!r}')
    name, model = find_vheat(module, target)
    state_dict = find_state_dict(load_checkpoint(source), weights, source)
    prefix = find_prefix(state_dict, source) if prefix is None else prefix
    state_dict = _take_prefix(state_dict, prefix, source) if prefix else state_dict
    embeds = {i: state_dict.get(f'stages.{i}.freq_embed', state_dict.get(f'freq_embed.{i}'))
              for i in range(len(model.depths))}
    report = PretrainedReport(source, name or type(model).__name__, prefix, 0)
    loaded = load_weights(model, state_dict, source, f'{report.target} (another architecture or size?)',
                          convert=partial(model.convert_state_dict, freq_embed_resize=freq_embed_resize),
                          adapt_stem='stem.conv1.weight', skip_unfit=('head.',),
                          allowed_missing=('head.fc.', 'out_norms.'),
                          pruned=tuple(f'stages.{i}.' for i in range(len(model.stages), len(model.depths))))
    own = model.state_dict()
    for i, embed in embeds.items():
        key = f'stages.{i}.freq_embed'
        if embed is not None and key in own and embed.shape != own[key].shape:
            report.resized.append(f'{key} {_shape(embed.shape)}->{_shape(own[key].shape)} ({freq_embed_resize})')
    report.adapted = loaded.adapted
    report.skipped = [f'{key} {_shape(shape)}' for key, shape in loaded.skipped.items()]
    report.loaded, report.initialised = len(loaded.loaded), loaded.initialised
    _logger.info('%s', report)
    return report
