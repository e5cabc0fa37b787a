"""Putting a state dict into a model: the one implementation behind every loader of the project.

``vHeat.load_pretrained`` (timm's ``pretrained=True``), ``vHeatBackbone.load_pretrained`` (mmdet/mmseg
``init_cfg``), :func:`vheat.load_pretrained` (a vHeat inside any module), the trainer's ``--resume`` /
``--pretrained`` and the downstream Runner's strict loading all call :func:`load_weights`; what differs between
them is a parameter: how keys are converted, whether the stem adapts to ``in_chans``, which classifier keys may be
skipped, which stages were pruned, and the error each entry point raises.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm.models._helpers import clean_state_dict
from timm.models._manipulate import adapt_input_conv

from .serialization import IncompatibleCheckpointError, key_mismatch

__all__ = ['load_weights', 'LoadedWeights']


@dataclass
class LoadedWeights:
    """What :func:`load_weights` put into the model."""
    loaded: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)      # 'key from->to input channels'
    skipped: Dict[str, torch.Size] = field(default_factory=dict)  # checkpoint keys left out, with their shapes
    initialised: List[str] = field(default_factory=list)  # model keys the checkpoint did not fill
    result: Optional[nn.modules.module._IncompatibleKeys] = None


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str, target: str, *,
                 convert: Optional[Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = None,
                 adapt_stem: Optional[str] = None, skip_unfit: Sequence[str] = (),
                 allowed_missing: Sequence[str] = (), pruned: Sequence[str] = (),
                 error: Type[Exception] = IncompatibleCheckpointError) -> LoadedWeights:
    """Convert ``state_dict`` for ``model`` and load it, or raise ``error`` naming every key that does not fit.

    Args:
        source: the checkpoint, as errors name it; ``target``: the model, as errors name it.
        convert: the key conversion (official names, frequency embeddings); by default the model's
            ``convert_state_dict``, else timm's ``clean_state_dict`` (DDP and compile prefixes).
        adapt_stem: the first convolution's key, adapted to the model's input channels (timm's ``adapt_input_conv``).
        skip_unfit: checkpoint keys (or key prefixes) left out where the model lacks them or has another shape
            (a classifier of another number of classes); the model keeps its own.
        allowed_missing: key prefixes the model may keep as initialised (output norms a classifier lacks).
        pruned: key prefixes of parts the model dropped (stages after the last output): ignored in the checkpoint.
    """
    convert = convert or getattr(model, 'convert_state_dict', clean_state_dict)
    try:
        converted = convert(dict(state_dict))
    except (ValueError, KeyError, AttributeError) as e:
        raise error(f'{source}: {e.args[0] if e.args else e}') from None
    own = model.state_dict()
    loaded = LoadedWeights()
    if adapt_stem and adapt_stem in converted and adapt_stem in own \
            and converted[adapt_stem].shape[1] != own[adapt_stem].shape[1]:
        loaded.adapted.append(f'{adapt_stem} {converted[adapt_stem].shape[1]}->{own[adapt_stem].shape[1]} input '
                              'channels')
        converted[adapt_stem] = adapt_input_conv(own[adapt_stem].shape[1], converted[adapt_stem])
    order = {key: i for i, key in enumerate(own)}  # the model's order, whatever the file's (safetensors sorts)
    for key in sorted((k for k in converted if k.startswith(tuple(skip_unfit))),
                      key=lambda k: (order.get(k, len(order)), k)):
        if key not in own or converted[key].shape != own[key].shape:
            loaded.skipped[key] = converted.pop(key).shape
    skipped_in_model = tuple(k for k in loaded.skipped if k in own)
    mismatch = key_mismatch(converted, own, allowed_missing=tuple(allowed_missing) + skipped_in_model,
                            allowed_unexpected=tuple(pruned))
    if mismatch:
        raise error(f'{source} does not fit {target}: {mismatch}')
    converted = {k: v for k, v in converted.items() if not k.startswith(tuple(pruned))}
    loaded.result = model.load_state_dict(converted, strict=False)
    loaded.loaded = list(converted)
    loaded.initialised = [k for k in own if k not in converted]
    return loaded
