"""Loading checkpoints without unpickling code.

Every checkpoint is read with ``torch.load(weights_only=True)``. Official vHeat checkpoints also hold the
trainer's yacs ``CfgNode``; it is read as a plain ``OrderedDict`` (same keys and values), so no yacs code runs.
Anything else that is not a tensor, number, string or container is refused, naming the offending globals.
"""
import collections
import os
import pickle
from typing import Any, Dict

import torch

# Read the official trainer's CfgNode as the dict it is: allow-listed for every weights-only load,
# timm's ``pretrained_cfg_overlay=dict(file=...)`` included.
torch.serialization.add_safe_globals([(collections.OrderedDict, 'yacs.config.CfgNode')])


class UnsafeCheckpointError(RuntimeError):
    """The file needs code beyond plain data to be unpickled."""


def load_checkpoint(path: str, map_location: Any = 'cpu') -> Dict[str, Any]:
    """Load a checkpoint written by this project, the official vHeat trainer, or ``torch.save(state_dict)``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: the message of the first error says what is wrong
            unsafe = []
        detail = f'it needs {", ".join(unsafe)} to be unpickled' if unsafe else str(e).splitlines()[0]
        raise UnsafeCheckpointError(f'refusing to load {path}: {detail} (only tensors and plain data are '
                                    'loaded; nothing in the file was run)') from None
    except (RuntimeError, EOFError) as e:
        raise RuntimeError(f'cannot read checkpoint {path}: {str(e).splitlines()[0]}') from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(checkpoint).__name__}')
    return checkpoint
