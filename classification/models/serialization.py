"""Loading checkpoints without unpickling code.

Every checkpoint is read with ``torch.load(weights_only=True)``. Official vHeat checkpoints also hold the
trainer's yacs ``CfgNode``; it is read as a plain ``OrderedDict`` (same keys and values), so no yacs code runs.
Anything else that is not a tensor, number, string or container is refused, naming the offending globals.
A file that is not a checkpoint at all (empty, truncated, other bytes) gets a one-line description instead.
"""
import collections
import http.client
import io
import os
import pickle
import re
import urllib.parse
from typing import Any, Dict, Mapping, Optional

import torch

from .errors import VHeatError

# Read the official trainer's CfgNode as the dict it is: allow-listed for every weights-only load,
# timm's ``pretrained_cfg_overlay=dict(file=...)`` included.
torch.serialization.add_safe_globals([(collections.OrderedDict, 'yacs.config.CfgNode')])

_ZIP_MAGIC = b'PK\x03\x04'


class UnsafeCheckpointError(VHeatError, RuntimeError):
    """The file needs code beyond plain data to be unpickled."""


class CheckpointFormatError(VHeatError, ValueError):
    """The file is not a readable PyTorch checkpoint (empty, truncated, other data)."""


class IncompatibleCheckpointError(VHeatError, ValueError):
    """The checkpoint's weights do not fit the model (another architecture or size)."""


class CheckpointDownloadError(VHeatError, RuntimeError):
    """A checkpoint URL could not be fetched into torch's hub cache (offline, say)."""


# what a download that cannot happen raises: urllib's URLError, socket errors (all OSError), http.client's errors
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException)
_HASH_IN_NAME = re.compile(r'-([a-f0-9]*)\.')  # torch.hub's convention: name-<sha256 prefix>.ext


def is_url(path: str) -> bool:
    return isinstance(path, str) and path.startswith(('https://', 'http://'))


def hub_cache_file(url: str) -> str:
    """Where torch.hub (and timm) keep the download of ``url``: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urllib.parse.urlparse(url).path))


def download_failure(url: str, error: BaseException) -> str:
    """One line for a download that failed: the URL, the cause, and where to put the file by hand."""
    reason = getattr(error, 'reason', None) or error
    return (f'cannot download {url} ({str(reason).splitlines()[0] if str(reason) else type(reason).__name__}); '
            f'without network access, put the file at {hub_cache_file(url)} (torch hub cache folder '
            f'{os.path.dirname(hub_cache_file(url))})')


def cached_download(url: str) -> str:
    """The local copy of ``url`` in torch's hub cache, downloaded first if it is not there (torch.hub's own file
    naming and hash check: a file named ``name-<sha256 prefix>.ext`` must match that prefix)."""
    path = hub_cache_file(url)
    if os.path.isfile(path):
        return path
    match = _HASH_IN_NAME.search(os.path.basename(path))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None, progress=False)
    except DOWNLOAD_ERRORS as e:
        raise CheckpointDownloadError(download_failure(url, e)) from None
    except RuntimeError as e:  # torch.hub's hash mismatch
        raise CheckpointDownloadError(f'{url}: {e}') from None
    return path


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
    """The bytes of a checkpoint file, or of an https URL's copy in torch's hub cache (downloaded once)."""
    if is_url(path):
        path = cached_download(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    with open(path, 'rb') as f:
        return f.read()


def load_checkpoint(path: str, map_location: Any = 'cpu', data: Optional[bytes] = None) -> Dict[str, Any]:
    """Load a checkpoint written by this project, the official vHeat trainer, ``torch.save(state_dict)`` or, named
    ``*.safetensors``, a safetensors file; ``path`` may be an https URL (read from torch's hub cache, downloaded once).

    ``data``: the file's bytes, when they were read already (``path`` then only names the file in errors).
    """
    data = read_bytes(path) if data is None else data
    if not data:
        raise CheckpointFormatError(f'checkpoint {path} is empty (0 bytes)')
    if str(path).endswith('.safetensors'):
        return _load_safetensors(path, data, map_location)
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


STATE_DICT_KEYS = ('model', 'model_ema', 'state_dict')


def find_state_dict(checkpoint: Mapping[str, Any], weights: str = 'model', source: str = 'checkpoint'
                    ) -> Dict[str, Any]:
    """The state dict ``weights`` of a checkpoint, the one lookup every reader of a checkpoint uses.

    ``'model'`` or ``'model_ema'``: that entry of a training checkpoint (the official trainer's and ours); for
    ``'model'`` also mmengine's and timm's ``state_dict`` entry, then a bare state dict (a checkpoint with neither,
    nor a ``model_ema``). ``'state_dict'``: an mmengine Runner checkpoint's entry, or the checkpoint as it is (what
    the downstream tools load strictly: a classification checkpoint is then refused, naming its keys). Anything else
    is an IncompatibleCheckpointError naming ``source`` and what it holds.
    """
    if weights not in STATE_DICT_KEYS:
        raise ValueError(f'weights must be one of {STATE_DICT_KEYS}, got {weights!r}')
    if checkpoint.get(weights) is not None:  # a run without EMA saves model_ema None
        key = weights
    elif weights == 'model' and 'state_dict' in checkpoint:
        key = 'state_dict'
    elif weights == 'state_dict' or (weights == 'model' and 'model_ema' not in checkpoint):
        return dict(checkpoint)  # a bare state dict
    else:
        raise IncompatibleCheckpointError(f'{source} holds no {weights!r} weights (its keys: '
                                          f'{", ".join(list(map(str, checkpoint))[:8])})')
    if not isinstance(checkpoint[key], Mapping):
        raise IncompatibleCheckpointError(f'{source}: {key!r} holds a {type(checkpoint[key]).__name__}, not a '
                                          'state dict')
    return dict(checkpoint[key])


def _load_safetensors(path: str, data: bytes, map_location: Any) -> Dict[str, Any]:
    """A ``.safetensors`` file (timm's ``save_for_hf``, the hub's): tensors only, by design nothing to run."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointFormatError(f'cannot read {path}: not a readable safetensors file ({e})') from None
    return {k: v.to(map_location) for k, v in tensors.items()} if map_location not in (None, 'cpu') else tensors


def _unsafe_globals(data: bytes) -> list:
    """The globals a zip checkpoint would need beyond the allow-list ([] for anything else)."""
    if not data.startswith(_ZIP_MAGIC):
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # an unreadable archive: the caller reports the file as not a checkpoint
        return []
