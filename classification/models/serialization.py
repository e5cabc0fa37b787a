"""Loading checkpoints without unpickling code.

Every checkpoint is read with ``torch.load(weights_only=True)``. Official vHeat checkpoints also hold the
trainer's yacs ``CfgNode``; it is read as a plain ``OrderedDict`` (same keys and values), so no yacs code runs.
Anything else that is not a tensor, number, string or container is refused, naming the offending globals.
A file that is not a checkpoint at all (empty, truncated, other bytes) gets a one-line description instead.
"""
import collections
import io
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional

import torch

# Read the official trainer's CfgNode as the dict it is: allow-listed for every weights-only load,
# timm's ``pretrained_cfg_overlay=dict(file=...)`` included.
torch.serialization.add_safe_globals([(collections.OrderedDict, 'yacs.config.CfgNode')])

_ZIP_MAGIC = b'PK\x03\x04'


class UnsafeCheckpointError(RuntimeError):
    """The file needs code beyond plain data to be unpickled."""


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch checkpoint (empty, truncated, other data)."""


class IncompatibleCheckpointError(ValueError):
    """The checkpoint's weights do not fit the model (another architecture or size)."""


def key_mismatch(state_dict: Mapping[str, Any], own: Mapping[str, torch.Tensor], allowed_missing=(),
                 allowed_unexpected=()) -> Optional[str]:
    """What keeps ``state_dict`` from loading into a model whose state dict is ``own``, in one line (None if it
    fits). Keys starting with one of ``allowed_missing`` / ``allowed_unexpected`` are not reported."""
    missing = [k for k in own if k not in state_dict and not k.startswith(tuple(allowed_missing))]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(tuple(allowed_unexpected))]
    not_tensors = [k for k in state_dict if k in own and not isinstance(state_dict[k], torch.Tensor)]
    wrong_shape = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}' for k in own
                   if k in state_dict and k not in not_tensors and state_dict[k].shape != own[k].shape]
    parts = [f'{label} ({len(keys)}): {", ".join(keys[:4])}{", ..." if len(keys) > 4 else ""}'
             for label, keys in (('missing', missing), ('unexpected', unexpected), ('not tensors', not_tensors),
                                 ('shape mismatch', wrong_shape)) if keys]
    return '; '.join(parts) or None


def read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    with open(path, 'rb') as f:
        return f.read()


def load_checkpoint(path: str, map_location: Any = 'cpu', data: Optional[bytes] = None) -> Dict[str, Any]:
    """Load a checkpoint written by this project, the official vHeat trainer, or ``torch.save(state_dict)``.

    ``data``: the file's bytes, when they were read already (``path`` then only names the file in errors).
    """
    data = read_bytes(path) if data is None else data
    if not data:
        raise CheckpointFormatError(f'checkpoint {path} is empty (0 bytes)')
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(data)
        if unsafe:
            raise UnsafeCheckpointError(
                f'refusing to load {path}: it needs {", ".join(unsafe)} to be unpickled (only tensors and plain '
                'data are loaded; nothing in the file was run)') from None
        raise CheckpointFormatError(f'{path} is not a checkpoint of tensors and plain data') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, UnicodeDecodeError):
        what = 'a truncated or corrupt PyTorch checkpoint' if data.startswith(_ZIP_MAGIC) else \
            'not a PyTorch checkpoint file'
        raise CheckpointFormatError(f'cannot read checkpoint {path}: {what} ({len(data)} bytes)') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f'{path}: expected a dict checkpoint, got {type(checkpoint).__name__}')
    return checkpoint


def _unsafe_globals(data: bytes) -> list:
    """The globals a zip checkpoint would need beyond the allow-list ([] for anything else)."""
    if not data.startswith(_ZIP_MAGIC):
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # an unreadable archive: the caller reports the file as not a checkpoint
        return []
