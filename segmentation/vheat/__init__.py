"""The configs' ``custom_imports``: registers the vHeat backbone in mmseg's MODELS as ``type='vHeat'``,
``DurableCheckpointHook`` in mmengine's HOOKS and ``SegPaintEveryImageHook`` in mmseg's, and lets every checkpoint
reader (``init_model``, ``MMSegInferencer``, the Runner, this project's tools) read Runner checkpoints weights-only
(``classification/mm/checkpoints.py``)."""
from mmseg.registry import MODELS

from classification.mm import checkpoints, hooks  # noqa: F401  (weights-only Runner checkpoints; the hook)
from classification.mm.backbone import MMvHeat

from . import visualization  # noqa: F401

MODELS.register_module('vHeat', module=MMvHeat)
