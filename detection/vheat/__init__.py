"""Registers the vHeat backbone in mmdet's MODELS as ``type='vHeat'`` (config: ``custom_imports``)."""
from mmdet.registry import MODELS

from classification.models.mm_backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
