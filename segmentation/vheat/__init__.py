"""Registers the vHeat backbone in mmseg's MODELS as ``type='vHeat'``, and ``DurableCheckpointHook`` in mmengine's
HOOKS (config: ``custom_imports``)."""
from mmseg.registry import MODELS

from classification import mmengine_hooks  # noqa: F401
from classification.models.mm_backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
