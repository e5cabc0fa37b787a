"""Registers the vHeat backbone in mmseg's MODELS as ``type='vHeat'``, ``DurableCheckpointHook`` in mmengine's
HOOKS and ``SegPaintEveryImageHook`` in mmseg's (config: ``custom_imports``)."""
from mmseg.registry import MODELS

from classification import mmengine_hooks  # noqa: F401
from classification.models.mm_backbone import MMvHeat

from . import visualization  # noqa: F401

MODELS.register_module('vHeat', module=MMvHeat)
