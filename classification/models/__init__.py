"""vHeat, the ground floor of the project and the installable library ``vheat`` (``pip install .``): the models,
heat conduction as a layer for any network, and vHeat weights into any model. It imports torch and timm alone.
Importing it registers vheat_tiny/small/base and vheat3d_tiny/small/base with timm."""
import importlib.util
import os
import sys


def _share_checkout_modules() -> None:
    """Inside a checkout these files are both ``classification.models`` and, through ``pip install -e .``, ``vheat``:
    imported as ``vheat``, they take the modules of ``classification.models``, so that each module exists once and
    no model is registered with timm twice. An installed wheel (another folder) is left alone."""
    if __name__ != 'vheat':
        return
    project = importlib.util.find_spec('classification')
    if project is None or os.path.dirname(os.path.dirname(os.path.abspath(__file__))) not in (
            project.submodule_search_locations or []):
        return
    import classification.models
    for name, module in list(sys.modules.items()):
        if name.startswith('classification.models.'):
            sys.modules.setdefault('vheat' + name[len('classification.models'):], module)
    sys.modules['vheat'] = classification.models


_share_checkout_modules()

from .backbone import vHeatBackbone  # noqa: E402
from .cpu_streaming import disable_cpu_streaming, enable_cpu_streaming  # noqa: E402
from .errors import VHeatError  # noqa: E402
from .fpn import VHeatFPN, fpn_backbone  # noqa: E402
from .layers import HeatConduction1d, HeatConduction2d, HeatConduction3d  # noqa: E402
from .pretrained import PretrainedReport, load_pretrained  # noqa: E402
from .serialization import (CheckpointDownloadError, CheckpointFormatError, IncompatibleCheckpointError,  # noqa: E402
                            UnsafeCheckpointError, find_state_dict, load_checkpoint)
from .vheat import MODEL_ARGS, checkpoint_filter_fn, rename_official_key, vHeat  # noqa: E402
from .vheat3d import inflate_state_dict, vHeat3D  # noqa: E402

__all__ = ['vHeat', 'vHeat3D', 'vHeatBackbone', 'HeatConduction1d', 'HeatConduction2d', 'HeatConduction3d',
           'load_pretrained', 'PretrainedReport', 'fpn_backbone', 'VHeatFPN', 'inflate_state_dict',
           'checkpoint_filter_fn', 'rename_official_key', 'MODEL_ARGS', 'enable_cpu_streaming',
           'disable_cpu_streaming', 'load_checkpoint', 'find_state_dict', 'VHeatError', 'CheckpointFormatError',
           'IncompatibleCheckpointError', 'UnsafeCheckpointError', 'CheckpointDownloadError']
