"""Weights-only reading of mmengine Runner checkpoints, for every reader: registered at import.

mmengine loads checkpoints with ``torch.load``'s default ``weights_only=True`` (torch >= 2.6): ``init_detector``,
``DetInferencer``, mmseg's ``init_model`` and ``MMSegInferencer``, the Runner's ``load_from`` and ``resume``, and
this project's tools. A Runner checkpoint also holds the message hub: mmengine's ``HistoryBuffer`` (pickled with
its statistics methods), numpy arrays, scalars and dtypes. Exactly those are allowed, under numpy 2's names and
under the numpy 1.x names of checkpoints written by the official runs (``numpy.core.multiarray``); nothing that
could run code. ``detection/vheat`` and ``segmentation/vheat`` (the configs' ``custom_imports``) import this
module, so every library entry point that reads one of the configs reads its checkpoints too.
"""
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_statistic(owner, name: str):
    """``getattr`` as a Runner checkpoint may use it: pickle stores a HistoryBuffer's statistics methods as
    ``getattr(HistoryBuffer, 'mean')`` (mmengine's ``__getstate__``). Only those four resolve; anything else is
    refused, so the allow-listed name cannot reach any other attribute."""
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint')


def allow_runner_checkpoints() -> None:
    """Add the message hub's classes to torch's weights-only allow-list (done once, at import)."""
    multiarray = np._core.multiarray
    # numpy.dtype(...) builds instances of these classes (numpy 2), which the unpickler then sets the state of
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    torch.serialization.add_safe_globals([
        HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr'), np.ndarray, np.dtype, *dtypes,
        multiarray.scalar, multiarray._reconstruct,
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct')])


allow_runner_checkpoints()
