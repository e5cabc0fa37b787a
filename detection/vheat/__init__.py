"""Registers the vHeat backbone in mmdet's MODELS as ``type='vHeat'``, and ``DurableCheckpointHook`` in mmengine's
HOOKS (config: ``custom_imports``)."""
from mmdet.registry import MODELS

from classification import mmengine_hooks  # noqa: F401
from classification.models.mm_backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
